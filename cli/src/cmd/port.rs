//! `flotilla port SERVICE PRIVATE_PORT`: the host address a service's
//! container port is published on, like `docker compose port`.

use crate::client;
use crate::opts::Global;
use anyhow::{bail, Result};
use clap::Args;
use flotilla_proto::v1 as pb;

#[derive(Args, Debug)]
pub struct PortArgs {
    /// tcp or udp.
    #[arg(long, default_value = "tcp")]
    pub protocol: String,
    /// The replica (slot) when the service has several.
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    pub service: String,
    pub private_port: u32,
}

pub async fn run(g: &Global, a: &PortArgs) -> Result<i32> {
    let protocol = match a.protocol.as_str() {
        "tcp" => pb::Protocol::Tcp,
        "udp" => pb::Protocol::Udp,
        other => bail!("unknown --protocol {other:?}: use tcp or udp"),
    };
    let name = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let resp = ctl
        .list_tasks(pb::ListTasksRequest {
            stack: name.clone(),
            services: vec![a.service.clone()],
            all: true,
        })
        .await
        .map_err(|s| client::status_err("listing containers", s))?
        .into_inner();
    let tasks = super::ps::newest_per_slot(resp.tasks);
    let Some(task) = tasks
        .iter()
        .find(|t| t.service_name == a.service && (t.slot == a.index || t.slot == 0))
    else {
        bail!(
            "no container for service {:?} (index {}) in stack {name}",
            a.service,
            a.index
        );
    };
    let spec = task.spec.clone().unwrap_or_default();
    let Some(p) = spec
        .ports
        .iter()
        .find(|p| p.target == a.private_port && p.protocol() == protocol && p.published != 0)
    else {
        bail!(
            "service {} does not publish {}/{}",
            a.service,
            a.private_port,
            a.protocol
        );
    };
    let ip = if p.host_ip.is_empty() {
        "0.0.0.0"
    } else {
        p.host_ip.as_str()
    };
    println!("{ip}:{}", p.published);
    Ok(0)
}
