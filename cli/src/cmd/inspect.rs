//! `flotilla inspect [--type stack|service|task] NAME` (the manager's view
//! of a stack, service or task as JSON, like `docker inspect`) and
//! `flotilla images` (the images the stack's containers use, per node).
//!
//! Read-only: both only call List* on the Control API and render.

use crate::client::{self, Control};
use crate::opts::Global;
use anyhow::{bail, Result};
use clap::Args;
use flotilla_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// What NAME is (default: a stack, then a service, then a task).
    #[arg(long = "type", value_parser = ["stack", "service", "task"])]
    pub kind: Option<String>,
    /// Stack name, service name (in the current project), or task name or id.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// table or json.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Only image ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    pub services: Vec<String>,
}

/// A proto enum name without its prefix, in lower case ("on-failure").
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

fn ts(t: Option<&pb::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| json!(super::logs::rfc3339(t)))
}

fn list(l: &Option<pb::StringList>) -> Value {
    l.as_ref().map_or(Value::Null, |l| json!(l.values))
}

fn spec_json(s: &pb::ServiceSpec) -> Value {
    let env: BTreeMap<&String, &String> = s.environment.iter().collect();
    let rp = s.restart_policy.unwrap_or_default();
    json!({
        "Image": s.image,
        "ImageDigest": s.image_digest,
        "Entrypoint": list(&s.entrypoint),
        "Command": list(&s.command),
        "Environment": env,
        "WorkingDir": s.working_dir,
        "User": s.user,
        "Replicas": s.replicas,
        "Mode": short(s.mode().as_str_name(), "SERVICE_MODE_"),
        "RestartPolicy": {
            "Condition": short(rp.condition().as_str_name(), "RESTART_CONDITION_"),
            "DelayMs": rp.delay_ms,
            "MaxAttempts": rp.max_attempts,
            "WindowMs": rp.window_ms,
        },
        "Healthcheck": s.healthcheck.as_ref().map(|h| json!({
            "Test": h.test,
            "IntervalMs": h.interval_ms,
            "TimeoutMs": h.timeout_ms,
            "Retries": h.retries,
            "StartPeriodMs": h.start_period_ms,
            "StartIntervalMs": h.start_interval_ms,
            "Disable": h.disable,
        })),
        "DependsOn": s.depends_on.iter().map(|d| json!({
            "Service": d.service,
            "Condition": short(d.condition().as_str_name(), "DEPENDENCY_CONDITION_"),
            "Restart": d.restart,
            "Required": d.required,
        })).collect::<Vec<_>>(),
        "StopSignal": s.stop_signal,
        "StopGracePeriodMs": s.stop_grace_period_ms,
        "Ports": s.ports.iter().map(|p| json!({
            "Target": p.target,
            "Published": p.published,
            "HostIp": p.host_ip,
        })).collect::<Vec<_>>(),
        "Networks": s.networks.iter().map(|n| n.network.clone()).collect::<Vec<_>>(),
    })
}

fn task_json(t: &pb::Task, nodes: &BTreeMap<String, String>) -> Value {
    let st = t.status.clone().unwrap_or_default();
    let spec = t.spec.clone().unwrap_or_default();
    json!({
        "Type": "task",
        "Id": t.id,
        "Name": t.name,
        "Stack": t.stack,
        "Service": t.service_name,
        "Slot": t.slot,
        "OneOff": super::up::is_oneoff(t),
        "Node": { "Id": t.node_id, "Hostname": nodes.get(&t.node_id) },
        "DesiredState": t.desired_state().short_name(),
        "State": {
            "Status": st.state().short_name(),
            "Message": st.message,
            "Error": st.err,
            "ExitCode": st.exit_code,
            "OOMKilled": st.oom_killed,
            "ContainerId": st.container_id,
            "Pid": st.pid,
            "StartedAt": ts(st.started_at.as_ref()),
            "FinishedAt": ts(st.finished_at.as_ref()),
            "UpdatedAt": ts(st.timestamp.as_ref()),
            "Health": {
                "Status": st.health().short_name(),
                "FailingStreak": st.failing_streak,
                "Log": st.health_log.iter().map(|r| json!({
                    "Start": ts(r.start.as_ref()),
                    "End": ts(r.end.as_ref()),
                    "ExitCode": r.exit_code,
                    "Output": r.output,
                })).collect::<Vec<_>>(),
            },
        },
        "RestartCount": t.restart_count,
        "RestartNotBefore": ts(t.restart_not_before.as_ref()),
        "Generation": t.generation,
        "PendingReason": t.pending_reason,
        "ImageId": st.image_id,
        "AutoRemove": t.auto_remove,
        "SpecVersion": t.spec_version,
        "Networks": t.networks.iter().map(|n| json!({
            "NetworkId": n.network_id,
            "Addresses": n.addresses,
            "Aliases": n.aliases,
            "MacAddress": n.mac_address,
        })).collect::<Vec<_>>(),
        "Config": spec_json(&spec),
        "CreatedAt": ts(t.meta.as_ref().and_then(|m| m.created_at.as_ref())),
    })
}

fn service_json(s: &pb::Service, tasks: &[pb::Task]) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    let mine: Vec<Value> = super::ps::newest_per_slot(
        tasks
            .iter()
            .filter(|t| t.service_id == s.id)
            .cloned()
            .collect(),
    )
    .iter()
    .map(|t| {
        json!({
            "Id": t.id,
            "Name": t.name,
            "Slot": t.slot,
            "State": super::lifecycle::observed(t).short_name(),
            "DesiredState": t.desired_state().short_name(),
            "RestartCount": t.restart_count,
            "ExitCode": t.status.as_ref().and_then(|s| s.exit_code),
        })
    })
    .collect();
    json!({
        "Type": "service",
        "Id": s.id,
        "Name": spec.name,
        "Stack": s.stack,
        "Desired": short(s.desired().as_str_name(), "SERVICE_DESIRED_"),
        "SpecVersion": s.spec_version,
        "SpecHash": s.spec_hash,
        "VirtualIps": s.vips.iter().map(|v| json!({"NetworkId": v.network_id, "Address": v.address})).collect::<Vec<_>>(),
        "Config": spec_json(&spec),
        "Tasks": mine,
        "CreatedAt": ts(s.meta.as_ref().and_then(|m| m.created_at.as_ref())),
        "UpdatedAt": ts(s.meta.as_ref().and_then(|m| m.updated_at.as_ref())),
    })
}

fn stack_json(st: &pb::Stack, services: &[pb::Service], networks: &[pb::Network]) -> Value {
    let spec = st.spec.clone().unwrap_or_default();
    json!({
        "Type": "stack",
        "Name": st.id,
        "SpecVersion": st.spec_version,
        "ProjectDir": spec.project_dir,
        "ComposeFiles": spec.compose_files,
        "Labels": st.meta.as_ref().map(|m| m.labels.iter().collect::<BTreeMap<_, _>>()),
        "Services": services.iter().map(|s| json!({
            "Name": s.spec.as_ref().map(|x| x.name.clone()),
            "Desired": short(s.desired().as_str_name(), "SERVICE_DESIRED_"),
        })).collect::<Vec<_>>(),
        "Networks": networks.iter().map(|n| json!({
            "Id": n.id,
            "Subnet": n.subnet,
            "Gateway": n.gateway,
            "Bridge": n.bridge,
        })).collect::<Vec<_>>(),
        "CreatedAt": ts(st.meta.as_ref().and_then(|m| m.created_at.as_ref())),
        "UpdatedAt": ts(st.meta.as_ref().and_then(|m| m.updated_at.as_ref())),
    })
}

async fn all_tasks(ctl: &mut Control, stack: &str) -> Result<pb::ListTasksResponse> {
    Ok(ctl
        .list_tasks(pb::ListTasksRequest {
            stack: stack.to_string(),
            services: Vec::new(),
            all: true,
        })
        .await
        .map_err(|s| client::status_err("listing tasks", s))?
        .into_inner())
}

async fn services(ctl: &mut Control, stack: &str) -> Result<Vec<pb::Service>> {
    Ok(ctl
        .list_services(pb::ListServicesRequest {
            stack: stack.to_string(),
        })
        .await
        .map_err(|s| client::status_err("listing services", s))?
        .into_inner()
        .services)
}

fn hostnames(nodes: &[pb::Node]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .map(|n| {
            let h = n
                .description
                .as_ref()
                .map(|d| d.hostname.clone())
                .unwrap_or_default();
            (n.id.clone(), h)
        })
        .collect()
}

pub async fn inspect(g: &Global, a: &InspectArgs) -> Result<i32> {
    let mut ctl = client::connect(g).await?;
    let stacks: Vec<pb::Stack> = ctl
        .list_stacks(pb::ListStacksRequest {})
        .await
        .map_err(|s| client::status_err("listing stacks", s))?
        .into_inner()
        .stacks
        .into_iter()
        .filter_map(|s| s.stack)
        .collect();
    let kind = a.kind.as_deref();
    // The current project, for service and task names (not needed for a
    // stack named outright).
    let project = || super::project_name(g);
    let mut out = Vec::new();
    for name in &a.names {
        if kind.is_none_or(|k| k == "stack") {
            if let Some(st) = stacks.iter().find(|s| &s.id == name) {
                let svcs = services(&mut ctl, &st.id).await?;
                let nets = all_tasks(&mut ctl, &st.id).await?.networks;
                out.push(stack_json(st, &svcs, &nets));
                continue;
            }
            if kind == Some("stack") {
                bail!("no such stack: {name}");
            }
        }
        let stack = project()?;
        let resp = all_tasks(&mut ctl, &stack).await?;
        if kind.is_none_or(|k| k == "service") {
            let svcs = services(&mut ctl, &stack).await?;
            if let Some(s) = svcs
                .iter()
                .find(|s| s.spec.as_ref().is_some_and(|x| &x.name == name) || &s.id == name)
            {
                out.push(service_json(s, &resp.tasks));
                continue;
            }
            if kind == Some("service") {
                bail!("no such service in stack {stack}: {name}");
            }
        }
        let nodes = hostnames(&resp.nodes);
        let found = super::ps::newest_per_slot(
            resp.tasks
                .iter()
                .filter(|t| &t.name == name)
                .cloned()
                .collect(),
        )
        .into_iter()
        .next()
        .or_else(|| resp.tasks.iter().find(|t| &t.id == name).cloned());
        match found {
            Some(t) => out.push(task_json(&t, &nodes)),
            None => bail!("no such stack, service or container: {name}"),
        }
    }
    println!("{}", serde_json::to_string_pretty(&Value::Array(out))?);
    Ok(0)
}

/// "name:tag" split into repository and tag (a digest reference keeps its
/// digest as the tag column).
fn split_ref(r: &str) -> (String, String) {
    if let Some((repo, digest)) = r.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    let slash = r.rfind('/').map_or(0, |i| i + 1);
    match r[slash..].rfind(':') {
        Some(i) => (r[..slash + i].to_string(), r[slash + i + 1..].to_string()),
        None => (r.to_string(), "latest".to_string()),
    }
}

pub async fn images(g: &Global, a: &ImagesArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let resp = ctl
        .list_tasks(pb::ListTasksRequest {
            stack: stack.clone(),
            services: a.services.clone(),
            all: false,
        })
        .await
        .map_err(|s| client::status_err("listing containers", s))?
        .into_inner();
    let nodes = hostnames(&resp.nodes);
    let on_nodes = ctl
        .list_images(pb::ListImagesRequest {
            node_id: String::new(),
        })
        .await
        .map_err(|s| client::status_err("listing images", s))?
        .into_inner()
        .nodes;
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    let mut tasks: Vec<&pb::Task> = resp
        .tasks
        .iter()
        .filter(|t| !t.node_id.is_empty())
        .collect();
    tasks.sort_by(|x, y| x.name.cmp(&y.name));
    for t in tasks {
        let spec = t.spec.clone().unwrap_or_default();
        let st = t.status.clone().unwrap_or_default();
        let id = if st.image_id.is_empty() {
            spec.image_digest.clone()
        } else {
            st.image_id.clone()
        };
        let img = on_nodes
            .iter()
            .filter(|n| n.node_id == t.node_id)
            .flat_map(|n| n.images.iter())
            .find(|i| (!id.is_empty() && i.id == id) || i.references.contains(&spec.image));
        let (repo, tag) = split_ref(&spec.image);
        let image_id = img.map(|i| i.id.clone()).unwrap_or(id);
        let size = img.map_or(0, |i| i.size);
        let node = nodes.get(&t.node_id).cloned().unwrap_or_default();
        if a.quiet {
            println!("{image_id}");
            continue;
        }
        let short = image_id
            .strip_prefix("sha256:")
            .unwrap_or(&image_id)
            .chars()
            .take(12)
            .collect::<String>();
        json_rows.push(json!({
            "ContainerName": t.name,
            "Service": t.service_name,
            "Repository": repo,
            "Tag": tag,
            "ID": image_id,
            "Size": size,
            "Node": node,
        }));
        rows.push(vec![
            t.name.clone(),
            repo,
            tag,
            short,
            human_size(size),
            node,
        ]);
    }
    if a.quiet {
        return Ok(0);
    }
    if a.format == "json" {
        println!("{}", serde_json::to_string(&Value::Array(json_rows))?);
    } else {
        crate::render::table(
            &["CONTAINER", "REPOSITORY", "TAG", "IMAGE ID", "SIZE", "NODE"],
            &rows,
        );
    }
    Ok(0)
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(
            split_ref("flotilla-demo:test"),
            ("flotilla-demo".into(), "test".into())
        );
        assert_eq!(
            split_ref("localhost:5000/app"),
            ("localhost:5000/app".into(), "latest".into())
        );
        assert_eq!(
            split_ref("r/app@sha256:ab"),
            ("r/app".into(), "sha256:ab".into())
        );
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500_000), "1.5MB");
    }
}
