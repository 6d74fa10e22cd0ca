//! Health checks: the agent runs each running task's check inside its
//! container (through the runtime's `exec`) and reports the health state
//! (starting → healthy / unhealthy), the failing streak and the last
//! results in the task's status, which the manager's `service_healthy`
//! dependency gate reads.
//!
//! The check comes from the service (`healthcheck:`) merged over the
//! image's HEALTHCHECK field by field, as Docker does; `NONE` or
//! `disable: true` turns it off. The state machine ([`Tracker`]) is pure
//! (no clock, no I/O) so Docker's rules are unit-tested; [`run`] drives it.
//!
//! What it must never do: decide anything about the task's life (restarts
//! are the manager's), or run a check in a container that is not running.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_proto::v1 as pb;
use flotilla_runtime::container::{ContainerError, ExecError, ExecSpec, Runtime};
use flotilla_runtime::image::ImageStore;
use tokio::sync::mpsc;

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;
/// Results kept in the status (Docker keeps 5).
pub const LOG_LEN: usize = 5;
/// Output kept per result (Docker keeps 4 KiB).
const OUTPUT_MAX: usize = 4096;

/// A resolved check: what to run and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// The argv run in the container (CMD-SHELL already wrapped in `/bin/sh -c`).
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    pub start_interval: Duration,
}

/// The check a task runs: the service's fields over the image's; `None`
/// when there is none or it is disabled.
pub fn effective(
    service: Option<&pb::HealthCheck>,
    image: Option<&pb::HealthCheck>,
) -> Option<HealthConfig> {
    if service.is_some_and(|s| s.disable) {
        return None;
    }
    fn pick(h: Option<&pb::HealthCheck>) -> Option<&pb::HealthCheck> {
        h.filter(|h| !h.test.is_empty())
    }
    let test = pick(service).or(pick(image))?.test.clone();
    let argv = match test.first().map(String::as_str) {
        Some("NONE") | None => return None,
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => {
            vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")]
        }
        // A bare list (older images): an argv as given.
        Some(_) => test,
    };
    if argv.is_empty() {
        return None;
    }
    let ms = |f: fn(&pb::HealthCheck) -> Option<u64>| {
        service
            .and_then(f)
            .filter(|v| *v > 0)
            .or_else(|| image.and_then(f).filter(|v| *v > 0))
            .map(Duration::from_millis)
    };
    let retries = service
        .and_then(|s| s.retries)
        .filter(|r| *r > 0)
        .or_else(|| image.and_then(|i| i.retries).filter(|r| *r > 0))
        .unwrap_or(DEFAULT_RETRIES);
    Some(HealthConfig {
        argv,
        interval: ms(|h| h.interval_ms).unwrap_or(DEFAULT_INTERVAL),
        timeout: ms(|h| h.timeout_ms).unwrap_or(DEFAULT_TIMEOUT),
        retries,
        start_period: ms(|h| h.start_period_ms).unwrap_or_default(),
        start_interval: ms(|h| h.start_interval_ms).unwrap_or(DEFAULT_START_INTERVAL),
    })
}

/// The health state of one container, following Docker's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    pub cfg: HealthConfig,
    pub state: pb::HealthState,
    pub failing_streak: u32,
    pub log: VecDeque<pb::HealthResult>,
}

impl Tracker {
    pub fn new(cfg: HealthConfig) -> Tracker {
        Tracker {
            cfg,
            state: pb::HealthState::Starting,
            failing_streak: 0,
            log: VecDeque::new(),
        }
    }

    /// Continues from what a status already says (a re-adopted container
    /// keeps its health across an agent restart).
    pub fn resume(cfg: HealthConfig, status: &pb::TaskStatus) -> Tracker {
        let mut t = Tracker::new(cfg);
        if status.health() != pb::HealthState::None {
            t.state = status.health();
            t.failing_streak = status.failing_streak;
            t.log = status.health_log.iter().cloned().collect();
        }
        t
    }

    fn in_start_period(&self, since_start: Duration) -> bool {
        since_start < self.cfg.start_period
    }

    /// How long to wait before the next probe, `since_start` after the
    /// container started: `start_interval` while still starting inside the
    /// start period, `interval` otherwise.
    pub fn delay(&self, since_start: Duration) -> Duration {
        if self.state == pb::HealthState::Starting && self.in_start_period(since_start) {
            self.cfg.start_interval
        } else {
            self.cfg.interval
        }
    }

    /// Records one probe's result; returns whether the state or the streak
    /// changed (what the manager needs to hear).
    pub fn record(&mut self, result: pb::HealthResult, since_start: Duration) -> bool {
        let before = (self.state, self.failing_streak);
        if result.exit_code == 0 {
            self.state = pb::HealthState::Healthy;
            self.failing_streak = 0;
        } else if self.state == pb::HealthState::Starting && self.in_start_period(since_start) {
            // Failures during the start period do not count (Docker).
        } else {
            self.failing_streak += 1;
            if self.failing_streak >= self.cfg.retries {
                self.state = pb::HealthState::Unhealthy;
            }
        }
        self.log.push_back(result);
        while self.log.len() > LOG_LEN {
            self.log.pop_front();
        }
        before != (self.state, self.failing_streak)
    }

    /// Writes the health fields into a task status.
    pub fn apply(&self, status: &mut pb::TaskStatus) {
        status.set_health(self.state);
        status.failing_streak = self.failing_streak;
        status.health_log = self.log.iter().cloned().collect();
    }
}

/// The health check a task's container runs, from its spec and its image
/// (looked up in the node's store). Blocking.
pub fn config_for(images: &ImageStore, task: &pb::Task) -> Option<HealthConfig> {
    let spec = task.spec.as_ref()?;
    let image_ref = if spec.image_digest.is_empty() {
        &spec.image
    } else {
        &spec.image_digest
    };
    let image_check = images
        .resolve(image_ref)
        .ok()
        .flatten()
        .map(|i| crate::images::config_to_proto(&i.config))
        .and_then(|c| c.healthcheck);
    effective(spec.healthcheck.as_ref(), image_check.as_ref())
}

/// Runs one probe. Blocking.
pub fn probe(
    rt: &Runtime,
    container_id: &str,
    cfg: &HealthConfig,
) -> Result<pb::HealthResult, ExecError> {
    let start = SystemTime::now();
    let out = rt.exec(
        container_id,
        &ExecSpec {
            args: cfg.argv.clone(),
            timeout: Some(cfg.timeout),
            ..Default::default()
        },
    )?;
    let end = SystemTime::now();
    let (exit_code, mut output) = if out.timed_out {
        (
            -1,
            format!(
                "Health check exceeded timeout ({}s)",
                cfg.timeout.as_secs_f64()
            ),
        )
    } else {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.exit_code, text)
    };
    if output.len() > OUTPUT_MAX {
        let mut cut = OUTPUT_MAX;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
    }
    Ok(pb::HealthResult {
        start: Some(pb::Timestamp::from_system(start)),
        end: Some(pb::Timestamp::from_system(end)),
        exit_code,
        output,
    })
}

/// What the loop tells the executor after a probe that changed something.
#[derive(Debug, Clone)]
pub struct HealthUpdate {
    pub task_id: String,
    /// The container's init pid when the loop started (stale updates about
    /// an earlier container are ignored).
    pub pid: i32,
    pub state: pb::HealthState,
    pub failing_streak: u32,
    pub log: Vec<pb::HealthResult>,
}

/// Probes the task's container until it stops running or `tx` closes.
/// Sends an update at once (state `starting` for a fresh container) and
/// then whenever the state or the failing streak changes. `resume_from`:
/// the status of a re-adopted container, whose health carries on.
pub async fn run<T: Send + 'static>(
    rt: Arc<Runtime>,
    images: Arc<ImageStore>,
    task: pb::Task,
    container_id: String,
    resume_from: Option<pb::TaskStatus>,
    tx: mpsc::Sender<T>,
    wrap: impl Fn(HealthUpdate) -> T + Send + 'static,
) {
    let (info, cfg) = {
        let rt = rt.clone();
        let cid = container_id.clone();
        let t = task.clone();
        let found = tokio::task::spawn_blocking(move || {
            config_for(&images, &t).map(|cfg| (rt.inspect(&cid), cfg))
        })
        .await;
        match found {
            Ok(Some((Ok(info), cfg))) => (info, cfg),
            _ => return,
        }
    };
    let mut tracker = match &resume_from {
        Some(s) => Tracker::resume(cfg, s),
        None => Tracker::new(cfg),
    };
    let pid = info.pid.unwrap_or(0);
    let started = info.started_at.unwrap_or_else(SystemTime::now);
    let since_start = || {
        SystemTime::now()
            .duration_since(started)
            .unwrap_or_default()
    };
    let update = |t: &Tracker| HealthUpdate {
        task_id: task.id.clone(),
        pid,
        state: t.state,
        failing_streak: t.failing_streak,
        log: t.log.iter().cloned().collect(),
    };
    if tx.send(wrap(update(&tracker))).await.is_err() {
        return;
    }
    loop {
        tokio::time::sleep(tracker.delay(since_start())).await;
        if tx.is_closed() {
            return;
        }
        let (rt2, cid, cfg) = (rt.clone(), container_id.clone(), tracker.cfg.clone());
        // A paused container is not probed (the probe would join the frozen
        // cgroup and time out), as in Docker: neither success nor failure.
        let (rt3, cid3) = (rt.clone(), container_id.clone());
        if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || rt3.is_paused(&cid3)).await {
            continue;
        }
        let result = match tokio::task::spawn_blocking(move || probe(&rt2, &cid, &cfg)).await {
            Ok(Ok(r)) => r,
            Ok(Err(ExecError::NotRunning { .. }))
            | Ok(Err(ExecError::Container(ContainerError::NotFound { .. })))
            | Ok(Err(ExecError::Container(ContainerError::ShimGone { .. }))) => return,
            Ok(Err(e)) => pb::HealthResult {
                start: Some(pb::Timestamp::now()),
                end: Some(pb::Timestamp::now()),
                exit_code: -1,
                output: format!("running the health check: {e}"),
            },
            Err(_) => return,
        };
        if tracker.record(result, since_start()) && tx.send(wrap(update(&tracker))).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(test: &[&str]) -> pb::HealthCheck {
        pb::HealthCheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn service_fields_override_the_image_field_by_field() {
        let mut image = hc(&["CMD", "check"]);
        image.interval_ms = Some(2000);
        image.retries = Some(7);
        let mut svc = hc(&["CMD-SHELL", "curl -f localhost"]);
        svc.timeout_ms = Some(500);
        let c = effective(Some(&svc), Some(&image)).unwrap();
        assert_eq!(c.argv, vec!["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.retries, 7);
        assert_eq!(c.start_interval, DEFAULT_START_INTERVAL);

        // Only the image's.
        let c = effective(None, Some(&image)).unwrap();
        assert_eq!(c.argv, vec!["check"]);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        // NONE or disable in the service turns the image's off.
        assert!(effective(Some(&hc(&["NONE"])), Some(&image)).is_none());
        let mut off = hc(&[]);
        off.disable = true;
        assert!(effective(Some(&off), Some(&image)).is_none());
        assert!(effective(None, None).is_none());
    }

    fn result(code: i32) -> pb::HealthResult {
        pb::HealthResult {
            exit_code: code,
            output: format!("code {code}"),
            ..Default::default()
        }
    }

    #[test]
    fn docker_state_rules() {
        let cfg = HealthConfig {
            argv: vec!["x".into()],
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            retries: 2,
            start_period: Duration::from_secs(30),
            start_interval: Duration::from_secs(1),
        };
        let mut t = Tracker::new(cfg);
        // Inside the start period: fast probes, failures do not count.
        assert_eq!(t.delay(Duration::from_secs(1)), Duration::from_secs(1));
        assert!(!t.record(result(1), Duration::from_secs(1)));
        assert_eq!((t.state, t.failing_streak), (pb::HealthState::Starting, 0));
        // First success: healthy, and the normal interval from then on.
        assert!(t.record(result(0), Duration::from_secs(2)));
        assert_eq!(t.state, pb::HealthState::Healthy);
        assert_eq!(t.delay(Duration::from_secs(3)), Duration::from_secs(10));
        // Failures now count; `retries` of them make it unhealthy.
        assert!(t.record(result(1), Duration::from_secs(5)));
        assert_eq!((t.state, t.failing_streak), (pb::HealthState::Healthy, 1));
        assert!(t.record(result(2), Duration::from_secs(6)));
        assert_eq!((t.state, t.failing_streak), (pb::HealthState::Unhealthy, 2));
        // One success recovers.
        assert!(t.record(result(0), Duration::from_secs(7)));
        assert_eq!((t.state, t.failing_streak), (pb::HealthState::Healthy, 0));
        // Only the last five results are kept.
        for _ in 0..4 {
            t.record(result(0), Duration::from_secs(8));
        }
        assert_eq!(t.log.len(), LOG_LEN);
        let mut s = pb::TaskStatus::default();
        t.apply(&mut s);
        assert_eq!(s.health(), pb::HealthState::Healthy);
        assert_eq!(s.health_log.len(), LOG_LEN);
        assert_eq!(
            Tracker::resume(t.cfg.clone(), &s).state,
            pb::HealthState::Healthy
        );
    }

    #[test]
    fn failures_after_the_start_period_count_while_starting() {
        let cfg = HealthConfig {
            argv: vec!["x".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 1,
            start_period: Duration::ZERO,
            start_interval: Duration::from_secs(5),
        };
        let mut t = Tracker::new(cfg);
        assert_eq!(t.delay(Duration::ZERO), Duration::from_secs(1));
        assert!(t.record(result(1), Duration::from_secs(1)));
        assert_eq!(t.state, pb::HealthState::Unhealthy);
    }
}
