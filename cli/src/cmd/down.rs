//! `flotilla down`: remove the stack through the manager and wait until its
//! containers, networks (and with `-v`, volumes) are gone. The manager stops
//! the services in reverse dependency order, each with its own
//! `stop_grace_period` and `stop_signal`.

use crate::client;
use crate::opts::{DownArgs, Global};
use anyhow::Result;
use flotilla_proto::v1 as pb;

pub async fn run(g: &Global, a: &DownArgs) -> Result<i32> {
    let name = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let before = ctl
        .list_tasks(pb::ListTasksRequest {
            stack: name.clone(),
            services: Vec::new(),
            all: true,
        })
        .await
        .map_err(|s| client::status_err("listing the stack's containers", s))?
        .into_inner();
    // Services stop in reverse dependency order, one grace period after
    // another in the worst case: allow their sum.
    let services = ctl
        .list_services(pb::ListServicesRequest {
            stack: name.clone(),
        })
        .await
        .map_err(|s| client::status_err("listing the stack's services", s))?
        .into_inner()
        .services;
    let per_service = a.timeout.map(|t| t * 1000);
    let budget: u64 = services
        .iter()
        .map(|s| {
            per_service.unwrap_or_else(|| {
                s.spec
                    .as_ref()
                    .and_then(|x| x.stop_grace_period_ms)
                    .unwrap_or(10_000)
            })
        })
        .sum();
    let resp = ctl
        .remove_stack(pb::RemoveStackRequest {
            name: name.clone(),
            remove_volumes: a.volumes,
            timeout_ms: budget.max(10_000),
            wait: true,
        })
        .await
        .map_err(|s| client::status_err(&format!("removing stack {name}"), s))?
        .into_inner();
    let mut names: Vec<&str> = before.tasks.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    names.dedup();
    let mut prog = crate::render::Progress::new(&g.progress);
    for n in names {
        prog.set(&format!("Container {n}"), "Removed", true);
    }
    for n in &before.networks {
        prog.set(&format!("Network {}", n.id), "Removed", true);
    }
    let _ = resp;
    Ok(0)
}
