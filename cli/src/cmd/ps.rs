//! `flotilla ps`: one row per service slot (its newest task), like
//! `docker compose ps`; `-a` includes exited ones.

use crate::client;
use crate::opts::{Global, PsArgs};
use crate::render;
use anyhow::{bail, Result};
use flotilla_proto::v1 as pb;
use std::collections::BTreeMap;

/// The newest task of each slot, in service then slot order.
pub fn newest_per_slot(tasks: Vec<pb::Task>) -> Vec<pb::Task> {
    let mut by_slot: BTreeMap<(String, u32), pb::Task> = BTreeMap::new();
    for t in tasks {
        let key = (t.service_name.clone(), t.slot);
        let newer = match by_slot.get(&key) {
            None => true,
            Some(old) => {
                let created = |t: &pb::Task| {
                    t.meta
                        .as_ref()
                        .and_then(|m| m.created_at.as_ref())
                        .map(|c| c.unix_nanos)
                        .unwrap_or(0)
                };
                (t.generation, created(&t)) >= (old.generation, created(old))
            }
        };
        if newer {
            by_slot.insert(key, t);
        }
    }
    by_slot.into_values().collect()
}

/// How long until the orchestrator restarts this ended task (it is in its
/// restart back-off), if it will.
pub(crate) fn restart_in(t: &pb::Task) -> Option<std::time::Duration> {
    let st = t.status.as_ref()?;
    if !st.state().is_terminal() || t.desired_state() != pb::TaskState::Running {
        return None;
    }
    let at = t.restart_not_before?;
    let now = pb::Timestamp::now();
    let left = at.unix_nanos.checked_sub(now.unix_nanos)?;
    u64::try_from(left)
        .ok()
        .map(std::time::Duration::from_nanos)
}

/// Compose's state word, plus "restarting" for a task in its back-off.
fn state_word(t: &pb::Task) -> &'static str {
    if restart_in(t).is_some() {
        "restarting"
    } else {
        render::state_word(t)
    }
}

/// The status column; a task in its restart back-off reads "Restarting (N)
/// in Xs (exit C)": N restarts so far, the next one in X seconds, C the
/// last exit code.
pub(crate) fn status_text(t: &pb::Task) -> String {
    match restart_in(t) {
        Some(d) => {
            let code = t
                .status
                .as_ref()
                .and_then(|s| s.exit_code)
                .map_or(String::new(), |c| format!(" (exit {c})"));
            format!(
                "Restarting ({}) in {}s{code}",
                t.restart_count,
                d.as_secs_f64().ceil() as u64
            )
        }
        None => render::status_text(t),
    }
}

pub async fn run(g: &Global, a: &PsArgs) -> Result<i32> {
    if a.format != "table" && a.format != "json" {
        bail!("unknown --format {:?}: use table or json", a.format);
    }
    let name = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let resp = ctl
        .list_tasks(pb::ListTasksRequest {
            stack: name.clone(),
            services: a.services.clone(),
            all: true,
        })
        .await
        .map_err(|s| client::status_err("listing containers", s))?
        .into_inner();
    let nodes: BTreeMap<String, String> = resp
        .nodes
        .iter()
        .map(|n| {
            let host = n
                .description
                .as_ref()
                .map(|d| d.hostname.clone())
                .unwrap_or_default();
            (n.id.clone(), host)
        })
        .collect();
    let tasks: Vec<pb::Task> = newest_per_slot(resp.tasks)
        .into_iter()
        .filter(|t| {
            a.all
                || matches!(state_word(t), "running" | "paused" | "restarting")
                || state_word(t) == "created" && !t.desired_state().is_terminal()
        })
        .collect();
    if a.quiet {
        for t in &tasks {
            println!(
                "{}",
                t.status
                    .as_ref()
                    .map(|s| s.container_id.clone())
                    .unwrap_or_default()
            );
        }
        return Ok(0);
    }
    if a.format == "json" {
        for t in &tasks {
            println!("{}", serde_json::to_string(&json_row(t, &name, &nodes))?);
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let spec = t.spec.clone().unwrap_or_default();
            vec![
                t.name.clone(),
                spec.image.clone(),
                spec.name.clone(),
                status_text(t),
                render::ports_text(t),
                nodes.get(&t.node_id).cloned().unwrap_or_default(),
                render::task_ip(t),
            ]
        })
        .collect();
    render::table(
        &["NAME", "IMAGE", "SERVICE", "STATUS", "PORTS", "NODE", "IP"],
        &rows,
    );
    Ok(0)
}

fn json_row(t: &pb::Task, project: &str, nodes: &BTreeMap<String, String>) -> serde_json::Value {
    let spec = t.spec.clone().unwrap_or_default();
    let status = t.status.clone().unwrap_or_default();
    let publishers: Vec<serde_json::Value> = spec
        .ports
        .iter()
        .map(|p| {
            serde_json::json!({
                "URL": if p.host_ip.is_empty() { "0.0.0.0".to_string() } else { p.host_ip.clone() },
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "Protocol": match p.protocol() { pb::Protocol::Udp => "udp", pb::Protocol::Sctp => "sctp", pb::Protocol::Tcp => "tcp" },
            })
        })
        .collect();
    serde_json::json!({
        "ID": status.container_id,
        "Name": t.name,
        "Service": t.service_name,
        "Project": project,
        "Image": spec.image,
        "State": state_word(t),
        "Status": status_text(t),
        "RestartIn": restart_in(t).map(|d| d.as_secs_f64()),
        "Health": status.health().short_name(),
        "ExitCode": status.exit_code.unwrap_or(0),
        "Publishers": publishers,
        "Node": nodes.get(&t.node_id).cloned().unwrap_or_default(),
        "IP": render::task_ip(t),
        "Task": t.id,
        "Pid": status.pid,
        "RestartCount": t.restart_count,
    })
}
