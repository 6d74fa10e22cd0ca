//! `flotilla up`: load the Compose files, make sure every image is on a
//! node, deploy the stack through the manager, and follow it until it runs
//! (`-d`) or attach to its logs until Ctrl-C (then stop it, like Compose).

use crate::client::{self, Control};
use crate::opts::{Global, UpArgs};
use anyhow::{bail, Context, Result};
use flotilla_proto::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

pub async fn run(g: &Global, a: &UpArgs) -> Result<i32> {
    let project = super::load_project(g, &a.services)?;
    for s in &a.services {
        if !project.spec.services.iter().any(|x| &x.name == s) {
            bail!("no such service: {s}");
        }
    }
    let mut spec = project.spec.clone();
    let scale = parse_scale(&a.scale, &spec)?;
    if let Some(svc) = &a.exit_code_from {
        if !spec.services.iter().any(|x| &x.name == svc) {
            bail!("--exit-code-from: no such service: {svc}");
        }
    }
    let mut ctl = client::connect_or_start(g).await?;

    super::pull::ensure_images(&mut ctl, &mut spec, a.pull.as_deref()).await?;

    // The version this deploy is based on: a concurrent `up` for the same
    // project that deploys in between makes the manager refuse this one
    // instead of interleaving the two.
    let base = current_spec_version(&mut ctl, &spec.name).await?;
    let resp = ctl
        .deploy_stack(pb::DeployStackRequest {
            spec: Some(spec.clone()),
            services: a.services.clone(),
            no_deps: a.no_deps,
            remove_orphans: a.remove_orphans,
            force_recreate: a.force_recreate,
            no_start: a.no_start,
            scale: scale.clone().into_iter().collect(),
            base_spec_version: Some(base),
            ..Default::default()
        })
        .await
        .map_err(|s| client::status_err(&format!("deploying stack {}", spec.name), s))?
        .into_inner();
    let wanted: BTreeSet<String> = if a.services.is_empty() {
        spec.services.iter().map(|s| s.name.clone()).collect()
    } else {
        a.services.iter().cloned().collect()
    };
    let wanted = replica_counts(&spec, &wanted, &scale);
    let abort = if a.abort_on_container_exit || a.exit_code_from.is_some() {
        Some(a.exit_code_from.clone())
    } else {
        None
    };
    if abort.is_some() && !a.no_start {
        // A container that exits is what is watched for here, not a
        // failure to start: attach once every service has its containers
        // placed (so the log stream knows them).
        wait_placed(
            &mut ctl,
            &spec.name,
            &wanted,
            Duration::from_secs(a.wait_timeout),
        )
        .await?;
        return attach(g, &mut ctl, &spec, abort).await;
    }
    let goal = if a.no_start {
        Goal::Created
    } else if a.wait {
        Goal::Healthy
    } else {
        Goal::Running
    };
    let code = wait_running(
        &mut ctl,
        &spec,
        &wanted,
        Duration::from_secs(a.wait_timeout),
        goal,
        &g.progress,
    )
    .await?;
    if code != 0 || a.detach || a.wait || a.no_start {
        let _ = resp;
        return Ok(code);
    }
    attach(g, &mut ctl, &spec, None).await
}

/// Polls until each wanted service has as many placed (or ended) slot
/// tasks as it should.
async fn wait_placed(
    ctl: &mut Control,
    stack: &str,
    wanted: &BTreeMap<String, usize>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let ts = super::lifecycle::tasks(ctl, stack, &[]).await?;
        let ts: Vec<pb::Task> = super::ps::newest_per_slot(ts)
            .into_iter()
            .filter(|t| !is_oneoff(t) && !t.desired_state().is_terminal())
            .collect();
        let placed = wanted.iter().all(|(svc, n)| {
            ts.iter()
                .filter(|t| &t.service_name == svc)
                .filter(|t| !t.node_id.is_empty() || super::lifecycle::observed(t).is_terminal())
                .count()
                >= *n
        });
        if placed {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {}s waiting for stack {stack}'s containers to be placed",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stack's current spec version (0 when it does not exist yet).
async fn current_spec_version(ctl: &mut Control, stack: &str) -> Result<u64> {
    let resp = ctl
        .list_stacks(pb::ListStacksRequest {})
        .await
        .map_err(|s| client::status_err("listing stacks", s))?
        .into_inner();
    Ok(resp
        .stacks
        .iter()
        .filter_map(|s| s.stack.as_ref())
        .find(|s| s.id == stack)
        .map_or(0, |s| s.spec_version))
}

/// What `up` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// Every task running (or completed successfully).
    Running,
    /// As Running, and healthy where the service has a health check
    /// (`--wait`).
    Healthy,
    /// Every task created, not started (`--no-start`).
    Created,
}

fn has_check(t: &pb::Task) -> bool {
    let check = t.spec.as_ref().and_then(|s| s.healthcheck.as_ref());
    let from_image = t
        .status
        .as_ref()
        .and_then(|s| s.image_config.as_ref())
        .and_then(|c| c.healthcheck.as_ref());
    let usable = |h: &pb::HealthCheck| {
        !h.disable && !h.test.is_empty() && h.test.first().map(String::as_str) != Some("NONE")
    };
    match check {
        Some(h) => usable(h),
        None => from_image.is_some_and(usable),
    }
}

/// Whether a task has reached the goal.
fn reached(t: &pb::Task, goal: Goal) -> bool {
    let st = t.status.clone().unwrap_or_default();
    match goal {
        Goal::Created => matches!(
            st.state(),
            pb::TaskState::Created | pb::TaskState::Running | pb::TaskState::Complete
        ),
        Goal::Running => matches!(st.state(), pb::TaskState::Running | pb::TaskState::Complete),
        Goal::Healthy => match st.state() {
            pb::TaskState::Complete => st.exit_code.unwrap_or(0) == 0,
            pb::TaskState::Running => !has_check(t) || st.health() == pb::HealthState::Healthy,
            _ => false,
        },
    }
}

/// Services of the stack that depend on `service`, with how.
fn dependents_of(spec: &pb::StackSpec, service: &str) -> Vec<String> {
    spec.services
        .iter()
        .filter_map(|s| {
            let d = s.depends_on.iter().find(|d| d.service == service)?;
            let how = match d.condition() {
                pb::DependencyCondition::Started => "service_started",
                pb::DependencyCondition::Healthy => "service_healthy",
                pb::DependencyCondition::CompletedSuccessfully => "service_completed_successfully",
            };
            Some(format!("{} ({how})", s.name))
        })
        .collect()
}

/// "; blocks web (service_healthy)" when a failed service has dependents.
fn blocked_text(spec: &pb::StackSpec, service: &str) -> String {
    let deps = dependents_of(spec, service);
    if deps.is_empty() {
        String::new()
    } else {
        format!("; it blocks {}", deps.join(", "))
    }
}

/// Asks the nodes for every image the stack uses, fails if one is missing
/// anywhere it could run, and pins services to the image id found (so every
/// task runs the same bytes even if the tag moves).
pub(crate) async fn pin_images(ctl: &mut Control, spec: &mut pb::StackSpec) -> Result<()> {
    let refs: BTreeSet<String> = spec.services.iter().map(|s| s.image.clone()).collect();
    let resolved = ctl
        .resolve_images(pb::ResolveImagesRequest {
            references: refs.iter().cloned().collect(),
            node_id: String::new(),
        })
        .await
        .map_err(|s| client::status_err("looking up images", s))?
        .into_inner();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut missing: Vec<String> = Vec::new();
    for r in &resolved.images {
        match (&r.image, r.found) {
            (Some(img), true) => {
                ids.entry(r.reference.clone())
                    .or_insert_with(|| img.id.clone());
            }
            _ => {
                if !r.error.is_empty() {
                    missing.push(format!("{}: {}", r.reference, r.error));
                }
            }
        }
    }
    for r in &refs {
        if !ids.contains_key(r) && !missing.iter().any(|m| m.starts_with(&format!("{r}:"))) {
            missing.push(format!(
                "image {r} not found on any node (load it with `flotilla image load` or `flotilla image import`)"
            ));
        }
    }
    if !missing.is_empty() {
        let users: Vec<String> = spec
            .services
            .iter()
            .filter(|s| !ids.contains_key(&s.image))
            .map(|s| s.name.clone())
            .collect();
        bail!(
            "{} (needed by service {})",
            missing.join("; "),
            users.join(", ")
        );
    }
    for s in spec.services.iter_mut() {
        if let Some(id) = ids.get(&s.image) {
            s.image_digest = id.clone();
        }
    }
    Ok(())
}

/// Follows task events until every wanted service has a running (or
/// successfully completed) task; fails on a task that cannot run.
async fn wait_running(
    ctl: &mut Control,
    spec: &pb::StackSpec,
    wanted: &BTreeMap<String, usize>,
    timeout: Duration,
    goal: Goal,
    progress: &str,
) -> Result<i32> {
    let stack = spec.name.as_str();
    let mut prog = crate::render::Progress::new(progress);
    let mut events = ctl
        .events(pb::EventsRequest {
            stack: stack.to_string(),
            services: Vec::new(),
            initial: true,
        })
        .await
        .map_err(|s| client::status_err("watching the stack", s))?
        .into_inner();
    let deadline = Instant::now() + timeout;
    let mut latest: BTreeMap<(String, u32), pb::Task> = BTreeMap::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(remaining, events.next()).await {
            Err(_) => {
                let waiting: Vec<String> = wanted
                    .keys()
                    .filter(|svc| {
                        let ts: Vec<&pb::Task> = latest
                            .values()
                            .filter(|t| &t.service_name == *svc)
                            .collect();
                        ts.is_empty() || ts.iter().any(|t| !reached(t, goal))
                    })
                    .map(|svc| {
                        let t = latest.values().find(|t| &t.service_name == svc);
                        let why = match t {
                            None => "no container yet (waiting for its dependencies)".to_string(),
                            Some(t) => super::ps::status_text(t),
                        };
                        format!("{svc}: {why}")
                    })
                    .collect();
                bail!(
                    "timed out after {}s waiting for stack {stack} ({})",
                    timeout.as_secs(),
                    waiting.join("; ")
                )
            }
            Ok(None) => bail!("the daemon closed the event stream"),
            Ok(Some(ev)) => ev.map_err(|s| client::status_err("watching the stack", s))?,
        };
        let Some(task) = ev.task else { continue };
        if is_oneoff(&task) {
            continue;
        }
        if ev.action == "remove" || task.desired_state().is_terminal() {
            latest.remove(&(task.service_name.clone(), task.slot));
            continue;
        }
        let key = (task.service_name.clone(), task.slot);
        let status = task.status.clone().unwrap_or_default();
        let word = match status.state() {
            pb::TaskState::Running if goal == Goal::Healthy && has_check(&task) => {
                match status.health() {
                    pb::HealthState::Healthy => "Healthy",
                    pb::HealthState::Unhealthy => "Unhealthy",
                    _ => "Waiting",
                }
            }
            pb::TaskState::Running => "Started",
            pb::TaskState::Complete => "Exited",
            pb::TaskState::Failed => "Error",
            pb::TaskState::Rejected => "Error",
            pb::TaskState::Preparing | pb::TaskState::Starting => "Starting",
            _ => "Created",
        };
        let done = !matches!(word, "Starting" | "Waiting");
        prog.set(&format!("Container {}", task.name), word, done);
        if matches!(status.state(), pb::TaskState::Rejected)
            || (status.state() == pb::TaskState::Failed && no_restart(&task))
        {
            let why = if status.err.is_empty() {
                status.message.clone()
            } else {
                status.err.clone()
            };
            bail!(
                "service {} failed to start: {why}{}",
                task.service_name,
                blocked_text(spec, &task.service_name)
            );
        }
        if status.state() == pb::TaskState::Running
            && status.health() == pb::HealthState::Unhealthy
            && (goal == Goal::Healthy
                || spec.services.iter().any(|s| {
                    wanted.contains_key(&s.name)
                        && s.depends_on.iter().any(|d| {
                            d.service == task.service_name
                                && d.required
                                && d.condition() == pb::DependencyCondition::Healthy
                        })
                }))
        {
            let out = status
                .health_log
                .last()
                .map(|r| format!(" (last check exited {}: {})", r.exit_code, r.output.trim()))
                .unwrap_or_default();
            bail!(
                "service {} is unhealthy{out}{}",
                task.service_name,
                blocked_text(spec, &task.service_name)
            );
        }
        if goal == Goal::Healthy
            && status.state() == pb::TaskState::Complete
            && status.exit_code.unwrap_or(0) != 0
            && no_restart(&task)
        {
            bail!(
                "service {} exited with code {}{}",
                task.service_name,
                status.exit_code.unwrap_or(-1),
                blocked_text(spec, &task.service_name)
            );
        }
        latest.insert(key, task);
        let done = wanted.iter().all(|(svc, want)| {
            let tasks: Vec<&pb::Task> =
                latest.values().filter(|t| &t.service_name == svc).collect();
            tasks.len() >= *want && tasks.iter().all(|t| reached(t, goal))
        });
        if done {
            return Ok(0);
        }
    }
}

/// Whether the orchestrator will not restart this ended task: no restart
/// policy, or its `max_attempts` used up (without a `window`, after which
/// attempts would count again).
fn no_restart(t: &pb::Task) -> bool {
    let Some(p) = t.spec.as_ref().and_then(|s| s.restart_policy.as_ref()) else {
        return true;
    };
    if p.condition() == pb::RestartCondition::None {
        return true;
    }
    p.max_attempts
        .is_some_and(|m| m > 0 && p.window_ms.unwrap_or(0) == 0 && t.restart_count >= m)
}

/// A one-off task made by `run` (not one of a service's slots).
pub(crate) fn is_oneoff(t: &pb::Task) -> bool {
    t.meta
        .as_ref()
        .and_then(|m| m.labels.get("flotilla.oneoff"))
        .is_some_and(|v| v == "true")
}

/// Attached mode: stream logs until Ctrl-C, then stop the stack's services
/// (desired state "stopped", through the manager) like Compose. With
/// `abort` (`--abort-on-container-exit`, `--exit-code-from`), the first
/// container that exits stops them all too; the exit code is then that
/// container's, or the named service's.
async fn attach(
    g: &Global,
    ctl: &mut Control,
    spec: &pb::StackSpec,
    abort: Option<Option<String>>,
) -> Result<i32> {
    println!(
        "Attaching to {}",
        spec.services
            .iter()
            .map(|s| format!("{}-1", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let args = crate::opts::LogsArgs {
        follow: true,
        tail: "all".into(),
        timestamps: false,
        no_color: false,
        no_log_prefix: false,
        services: Vec::new(),
    };
    let mut logs_ctl = ctl.clone();
    let stack = spec.name.clone();
    let follow =
        tokio::spawn(async move { super::logs::stream(&mut logs_ctl, &stack, &args).await });
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the Ctrl-C handler")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let exited = {
        let mut c = ctl.clone();
        let stack = spec.name.clone();
        let watch = abort.is_some();
        async move {
            if watch {
                first_exit(&mut c, &stack).await
            } else {
                std::future::pending().await
            }
        }
    };
    // None: interrupted; Some(None): the code of another service is wanted.
    let mut outcome: Option<Option<i32>> = None;
    let mut follow = follow;
    let mut follow_done = false;
    tokio::pin!(exited);
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            r = &mut exited => {
                let (name, service, exit) = r?;
                println!("{name} exited with code {exit}");
                eprintln!("Aborting on container exit...");
                outcome = Some(match abort.as_ref().and_then(|a| a.as_ref()) {
                    Some(from) if from != &service => None,
                    _ => Some(exit),
                });
                break;
            }
            r = &mut follow, if !follow_done => {
                r.context("log stream")??;
                if abort.is_none() {
                    return Ok(0);
                }
                // Still watching for the first exit.
                follow_done = true;
            }
        }
    }
    if outcome.is_none() {
        eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
    }
    let _ = g;
    ctl.set_service_state(pb::SetServiceStateRequest {
        stack: spec.name.clone(),
        services: Vec::new(),
        desired: pb::ServiceDesired::Stopped as i32,
        restart: false,
        timeout_ms: 0,
    })
    .await
    .map_err(|s| client::status_err("stopping the stack", s))?;
    let Some(code) = outcome else {
        return Ok(130);
    };
    let stopped = wait_stopped(ctl, &spec.name).await?;
    Ok(match code {
        Some(c) => c,
        None => {
            // --exit-code-from names another service: its code once stopped.
            let from = abort.and_then(|a| a).unwrap_or_default();
            stopped
                .iter()
                .find(|t| t.service_name == from)
                .and_then(|t| t.status.as_ref())
                .and_then(|s| s.exit_code)
                .unwrap_or(0)
        }
    })
}

/// Waits for the first container of the stack (not a one-off) to exit on
/// its own; returns its name, service and exit code.
async fn first_exit(ctl: &mut Control, stack: &str) -> Result<(String, String, i32)> {
    let mut events = ctl
        .events(pb::EventsRequest {
            stack: stack.to_string(),
            services: Vec::new(),
            initial: true,
        })
        .await
        .map_err(|s| client::status_err("watching the stack", s))?
        .into_inner();
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|s| client::status_err("watching the stack", s))?;
        let Some(t) = ev.task else { continue };
        let st = t.status.clone().unwrap_or_default();
        let ended = matches!(st.state(), pb::TaskState::Complete | pb::TaskState::Failed);
        if ended && t.desired_state() == pb::TaskState::Running && !is_oneoff(&t) {
            return Ok((t.name, t.service_name, st.exit_code.unwrap_or(-1)));
        }
    }
    bail!("the daemon closed the event stream")
}

/// Waits until none of the stack's slot containers runs; returns the
/// newest task of each slot.
async fn wait_stopped(ctl: &mut Control, stack: &str) -> Result<Vec<pb::Task>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ts = super::lifecycle::tasks(ctl, stack, &[]).await?;
        let ts: Vec<pb::Task> = super::ps::newest_per_slot(ts)
            .into_iter()
            .filter(|t| !is_oneoff(t))
            .collect();
        let done = ts
            .iter()
            .all(|t| super::lifecycle::observed(t).is_terminal() || t.node_id.is_empty());
        if done {
            return Ok(ts);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for stack {stack} to stop");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses `SERVICE=N` pairs, checking each service exists in the file.
fn parse_scale(pairs: &[String], spec: &pb::StackSpec) -> Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let Some((svc, n)) = p.split_once('=') else {
            bail!("invalid scale {p:?}: expected SERVICE=NUM");
        };
        let n: u32 = n
            .parse()
            .with_context(|| format!("invalid scale {p:?}: {n:?} is not a number"))?;
        if !spec.services.iter().any(|s| s.name == svc) {
            bail!("no such service: {svc}");
        }
        out.insert(svc.to_string(), n);
    }
    Ok(out)
}

/// `flotilla scale SERVICE=N...`: a deploy of those services from the file
/// with the new replica counts (desired state through the manager), then
/// waiting until they run.
pub async fn scale(g: &Global, a: &crate::opts::ScaleArgs) -> Result<i32> {
    let project = super::load_project(g, &[])?;
    let mut spec = project.spec.clone();
    let scale = parse_scale(&a.pairs, &spec)?;
    let mut ctl = client::connect(g).await?;
    pin_images(&mut ctl, &mut spec).await?;
    let services: Vec<String> = scale.keys().cloned().collect();
    ctl.deploy_stack(pb::DeployStackRequest {
        spec: Some(spec.clone()),
        services: services.clone(),
        no_deps: a.no_deps,
        scale: scale.clone().into_iter().collect(),
        ..Default::default()
    })
    .await
    .map_err(|s| client::status_err(&format!("scaling stack {}", spec.name), s))?;
    let wanted: BTreeSet<String> = services.into_iter().collect();
    let wanted = replica_counts(&spec, &wanted, &scale);
    wait_running(
        &mut ctl,
        &spec,
        &wanted,
        Duration::from_secs(120),
        Goal::Running,
        &g.progress,
    )
    .await
}

/// How many running tasks each wanted service should end up with: the
/// `--scale`/`scale` value, else the file's replicas (1 by default).
fn replica_counts(
    spec: &pb::StackSpec,
    wanted: &BTreeSet<String>,
    scale: &BTreeMap<String, u32>,
) -> BTreeMap<String, usize> {
    wanted
        .iter()
        .map(|svc| {
            let n = scale.get(svc).copied().unwrap_or_else(|| {
                spec.services
                    .iter()
                    .find(|s| &s.name == svc)
                    .and_then(|s| s.replicas)
                    .unwrap_or(1)
            });
            (svc.clone(), n as usize)
        })
        .collect()
}
