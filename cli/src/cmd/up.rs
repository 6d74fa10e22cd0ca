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
    let mut ctl = client::connect_or_start(g).await?;

    pin_images(&mut ctl, &mut spec).await?;

    let resp = ctl
        .deploy_stack(pb::DeployStackRequest {
            spec: Some(spec.clone()),
            services: a.services.clone(),
            no_deps: a.no_deps,
            remove_orphans: a.remove_orphans,
            force_recreate: a.force_recreate,
            scale: scale.clone().into_iter().collect(),
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
    let code = wait_running(
        &mut ctl,
        &spec.name,
        &wanted,
        Duration::from_secs(a.wait_timeout),
    )
    .await?;
    if code != 0 || a.detach || a.wait {
        let _ = resp;
        return Ok(code);
    }
    attach(g, &mut ctl, &spec).await
}

/// Asks the nodes for every image the stack uses, fails if one is missing
/// anywhere it could run, and pins services to the image id found (so every
/// task runs the same bytes even if the tag moves).
async fn pin_images(ctl: &mut Control, spec: &mut pb::StackSpec) -> Result<()> {
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
    stack: &str,
    wanted: &BTreeMap<String, usize>,
    timeout: Duration,
) -> Result<i32> {
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
    let mut printed: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(remaining, events.next()).await {
            Err(_) => bail!(
                "timed out after {}s waiting for stack {stack} to start",
                timeout.as_secs()
            ),
            Ok(None) => bail!("the daemon closed the event stream"),
            Ok(Some(ev)) => ev.map_err(|s| client::status_err("watching the stack", s))?,
        };
        let Some(task) = ev.task else { continue };
        if ev.action == "remove" || task.desired_state().is_terminal() {
            latest.remove(&(task.service_name.clone(), task.slot));
            continue;
        }
        let key = (task.service_name.clone(), task.slot);
        let status = task.status.clone().unwrap_or_default();
        let word = match status.state() {
            pb::TaskState::Running => "Started",
            pb::TaskState::Complete => "Exited",
            pb::TaskState::Failed => "Error",
            pb::TaskState::Rejected => "Error",
            pb::TaskState::Preparing | pb::TaskState::Starting => "Starting",
            _ => "Created",
        };
        if printed.get(&task.name).map(String::as_str) != Some(word) {
            println!(" \u{2714} Container {:<28} {word}", task.name);
            printed.insert(task.name.clone(), word.to_string());
        }
        if matches!(status.state(), pb::TaskState::Rejected)
            || (status.state() == pb::TaskState::Failed && no_restart(&task))
        {
            let why = if status.err.is_empty() {
                status.message.clone()
            } else {
                status.err.clone()
            };
            bail!("service {} failed to start: {why}", task.service_name);
        }
        latest.insert(key, task);
        let done = wanted.iter().all(|(svc, want)| {
            let tasks: Vec<&pb::Task> =
                latest.values().filter(|t| &t.service_name == svc).collect();
            tasks.len() >= *want
                && tasks.iter().all(|t| {
                    matches!(
                        t.status.as_ref().map(|s| s.state()),
                        Some(pb::TaskState::Running) | Some(pb::TaskState::Complete)
                    )
                })
        });
        if done {
            return Ok(0);
        }
    }
}

fn no_restart(t: &pb::Task) -> bool {
    t.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_ref())
        .is_none_or(|p| p.condition() == pb::RestartCondition::None)
}

/// Attached mode: stream logs until Ctrl-C, then stop the stack's services
/// (desired state "stopped", through the manager) like Compose.
async fn attach(g: &Global, ctl: &mut Control, spec: &pb::StackSpec) -> Result<i32> {
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
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        r = follow => { r.context("log stream")??; return Ok(0); }
    }
    eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
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
    Ok(130)
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
    wait_running(&mut ctl, &spec.name, &wanted, Duration::from_secs(120)).await
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
