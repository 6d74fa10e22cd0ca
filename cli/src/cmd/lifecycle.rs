//! The lifecycle verbs: `start`, `stop`, `restart`, `pause`, `unpause`
//! (changes of desired state through the manager), `kill` (a signal only; the restart policy
//! then applies), `exec` (a command in a running container) and `events`.
//!
//! None of them touches a container directly: every one is a Control call.

use crate::client::{self, Control};
use crate::opts::Global;
use anyhow::{bail, Result};
use clap::Args;
use flotilla_proto::v1 as pb;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

#[derive(Args, Debug)]
pub struct ServicesArgs {
    /// Seconds to wait for the change to take effect.
    #[arg(short = 't', long, default_value_t = 60)]
    pub timeout: u64,
    /// Services (default: all).
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal to send (name or number).
    #[arg(short = 's', long, default_value = "SIGKILL")]
    pub signal: String,
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The replica (slot) when the service has several.
    #[arg(long, default_value_t = 0)]
    pub index: u32,
    /// Extra environment: KEY=VALUE.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// No pseudo-terminal (the default when stdin is not a terminal).
    #[arg(short = 'T', long = "no-TTY")]
    pub no_tty: bool,
    /// Keep stdin open (always on; accepted for Compose compatibility).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal even when stdin is not one.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run as this user (name or uid[:gid]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    pub service: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    pub services: Vec<String>,
}

pub(crate) async fn set_state(
    ctl: &mut Control,
    stack: &str,
    services: &[String],
    desired: pb::ServiceDesired,
    restart: bool,
) -> Result<()> {
    ctl.set_service_state(pb::SetServiceStateRequest {
        stack: stack.to_string(),
        services: services.to_vec(),
        desired: desired as i32,
        restart,
        timeout_ms: 0,
    })
    .await
    .map_err(|s| client::status_err(&format!("changing services of stack {stack}"), s))?;
    Ok(())
}

pub(crate) async fn tasks(
    ctl: &mut Control,
    stack: &str,
    services: &[String],
) -> Result<Vec<pb::Task>> {
    Ok(ctl
        .list_tasks(pb::ListTasksRequest {
            stack: stack.to_string(),
            services: services.to_vec(),
            all: true,
        })
        .await
        .map_err(|s| client::status_err("listing containers", s))?
        .into_inner()
        .tasks)
}

pub(crate) fn observed(t: &pb::Task) -> pb::TaskState {
    t.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(pb::TaskState::New)
}

/// Polls until `done` holds for the service's tasks, or the timeout.
async fn wait_until(
    ctl: &mut Control,
    stack: &str,
    services: &[String],
    timeout: Duration,
    what: &str,
    done: impl Fn(&[pb::Task]) -> bool,
) -> Result<Vec<pb::Task>> {
    let deadline = Instant::now() + timeout;
    loop {
        let ts = tasks(ctl, stack, services).await?;
        if done(&ts) {
            return Ok(ts);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(ts: &[pb::Task], pred: impl Fn(&pb::Task) -> bool) -> Vec<String> {
    let mut n: Vec<String> = ts
        .iter()
        .filter(|t| pred(t))
        .map(|t| t.name.clone())
        .collect();
    n.sort();
    n.dedup();
    n
}

/// `flotilla stop`: desired Stopped; returns when none of the services'
/// containers runs.
pub async fn stop(g: &Global, a: &ServicesArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let before = tasks(&mut ctl, &stack, &a.services).await?;
    set_state(
        &mut ctl,
        &stack,
        &a.services,
        pb::ServiceDesired::Stopped,
        false,
    )
    .await?;
    wait_until(
        &mut ctl,
        &stack,
        &a.services,
        Duration::from_secs(a.timeout),
        "the containers to stop",
        |ts| {
            ts.iter()
                .all(|t| observed(t).is_terminal() || t.node_id.is_empty())
        },
    )
    .await?;
    for n in names(&before, |t| observed(t) == pb::TaskState::Running) {
        println!(" \u{2714} Container {n:<28} Stopped");
    }
    Ok(0)
}

fn all_running(ts: &[pb::Task], since: Option<&std::collections::HashSet<String>>) -> bool {
    // Created tasks wait for their dependencies before they are told to
    // run: they count too, so `start` returns once everything runs.
    let current: Vec<&pb::Task> = ts
        .iter()
        .filter(|t| {
            matches!(
                t.desired_state(),
                pb::TaskState::Running | pb::TaskState::Created
            ) && !super::up::is_oneoff(t)
        })
        .collect();
    !current.is_empty()
        && current.iter().all(|t| {
            let st = observed(t);
            let fresh = since.is_none_or(|old| !old.contains(&t.id));
            fresh && (st == pb::TaskState::Running || st == pb::TaskState::Complete)
        })
}

/// `flotilla start`: desired Running; returns when the services run.
pub async fn start(g: &Global, a: &ServicesArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    set_state(
        &mut ctl,
        &stack,
        &a.services,
        pb::ServiceDesired::Running,
        false,
    )
    .await?;
    let ts = wait_until(
        &mut ctl,
        &stack,
        &a.services,
        Duration::from_secs(a.timeout),
        "the containers to start",
        |ts| all_running(ts, None),
    )
    .await?;
    for n in names(&ts, |t| observed(t) == pb::TaskState::Running) {
        println!(" \u{2714} Container {n:<28} Started");
    }
    Ok(0)
}

/// `flotilla restart`: replaces every running container of the services
/// with a new one; returns when the new ones run.
pub async fn restart(g: &Global, a: &ServicesArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let old: std::collections::HashSet<String> = tasks(&mut ctl, &stack, &a.services)
        .await?
        .into_iter()
        .map(|t| t.id)
        .collect();
    set_state(
        &mut ctl,
        &stack,
        &a.services,
        pb::ServiceDesired::Running,
        true,
    )
    .await?;
    let ts = wait_until(
        &mut ctl,
        &stack,
        &a.services,
        Duration::from_secs(a.timeout),
        "the containers to restart",
        |ts| all_running(ts, Some(&old)),
    )
    .await?;
    for n in names(&ts, |t| observed(t) == pb::TaskState::Running) {
        println!(" \u{2714} Container {n:<28} Restarted");
    }
    Ok(0)
}

/// `flotilla pause`: desired Paused; returns when the services' running
/// containers are frozen.
pub async fn pause(g: &Global, a: &ServicesArgs) -> Result<i32> {
    freeze(g, a, true).await
}

/// `flotilla unpause`: desired Running again; returns when the paused
/// containers run.
pub async fn unpause(g: &Global, a: &ServicesArgs) -> Result<i32> {
    freeze(g, a, false).await
}

async fn freeze(g: &Global, a: &ServicesArgs, pause: bool) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let (desired, from, to, word) = if pause {
        (
            pb::ServiceDesired::Paused,
            pb::TaskState::Running,
            pb::TaskState::Paused,
            "Paused",
        )
    } else {
        (
            pb::ServiceDesired::Running,
            pb::TaskState::Paused,
            pb::TaskState::Running,
            "Unpaused",
        )
    };
    let before = tasks(&mut ctl, &stack, &a.services).await?;
    let touched: std::collections::HashSet<String> = before
        .iter()
        .filter(|t| observed(t) == from && !t.desired_state().is_terminal())
        .map(|t| t.id.clone())
        .collect();
    set_state(&mut ctl, &stack, &a.services, desired, false).await?;
    let ts = wait_until(
        &mut ctl,
        &stack,
        &a.services,
        Duration::from_secs(a.timeout),
        if pause {
            "the containers to pause"
        } else {
            "the containers to unpause"
        },
        |ts| {
            ts.iter()
                .filter(|t| touched.contains(&t.id))
                .all(|t| observed(t) == to || observed(t).is_terminal())
        },
    )
    .await?;
    for n in names(&ts, |t| touched.contains(&t.id) && observed(t) == to) {
        println!(" \u{2714} Container {n:<28} {word}");
    }
    Ok(0)
}

/// `flotilla kill`: sends the signal; nothing else.
pub async fn kill(g: &Global, a: &KillArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let resp = ctl
        .kill(pb::KillRequest {
            stack: stack.clone(),
            services: a.services.clone(),
            signal: a.signal.clone(),
            task_ids: Vec::new(),
        })
        .await
        .map_err(|s| client::status_err(&format!("killing containers of stack {stack}"), s))?
        .into_inner();
    let ts = tasks(&mut ctl, &stack, &a.services).await?;
    for n in names(&ts, |t| resp.task_ids.contains(&t.id)) {
        println!(" \u{2714} Container {n:<28} Killed");
    }
    Ok(0)
}

/// `flotilla exec SERVICE CMD...`: exits with the command's exit code.
pub async fn exec(g: &Global, a: &ExecArgs) -> Result<i32> {
    super::ops::exec(g, a).await
}

/// One event as a line of text, Compose-style.
fn event_line(e: &pb::Event) -> String {
    let time = e
        .time
        .as_ref()
        .map(super::logs::rfc3339)
        .unwrap_or_default();
    let (name, state, extra) = match &e.task {
        Some(t) => {
            let st = t.status.clone().unwrap_or_default();
            let mut extra = Vec::new();
            if let Some(c) = st.exit_code {
                extra.push(format!("exitCode={c}"));
            }
            if st.health() != pb::HealthState::None {
                extra.push(format!("health={}", st.health().short_name()));
            }
            extra.push(format!("desired={}", t.desired_state().short_name()));
            (t.name.clone(), st.state().short_name().to_string(), extra)
        }
        None => (e.id.clone(), String::new(), Vec::new()),
    };
    let mut attrs: Vec<String> = e
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    attrs.extend(extra);
    format!(
        "{time} {} {} {name} {state} ({})",
        e.kind,
        e.action,
        attrs.join(", ")
    )
}

fn event_json(e: &pb::Event) -> serde_json::Value {
    let t = e.task.clone().unwrap_or_default();
    let st = t.status.clone().unwrap_or_default();
    serde_json::json!({
        "time": e.time.map(|t| t.unix_nanos),
        "type": e.kind,
        "action": e.action,
        "id": e.id,
        "project": e.stack,
        "service": e.service,
        "name": t.name,
        "slot": t.slot,
        "state": st.state().short_name(),
        "desired": t.desired_state().short_name(),
        "health": st.health().short_name(),
        "exitCode": st.exit_code,
        "restartCount": t.restart_count,
        "attributes": e.attributes,
    })
}

/// `flotilla events`: a live stream of the stack's state changes.
pub async fn events(g: &Global, a: &EventsArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let mut stream = ctl
        .events(pb::EventsRequest {
            stack,
            services: a.services.clone(),
            initial: false,
        })
        .await
        .map_err(|s| client::status_err("watching events", s))?
        .into_inner();
    let mut out = std::io::stdout();
    while let Some(e) = stream.next().await {
        let e = e.map_err(|s| client::status_err("watching events", s))?;
        let line = if a.json {
            event_json(&e).to_string()
        } else {
            event_line(&e)
        };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    Ok(0)
}
