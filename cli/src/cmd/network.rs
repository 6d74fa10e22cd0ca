//! `flotilla network ls|inspect|create|rm|prune`: the cluster's networks
//! (stacks' own and standalone ones), with Docker's columns and flags.
//!
//! Thin: parses, calls the Control API, renders. It never computes an
//! address or decides whether a network may go; the manager does.

use crate::client::{self, Control};
use crate::opts::Global;
use crate::render;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_manager::ipam::network_hex_id;
use flotilla_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// List networks.
    #[command(alias = "list")]
    Ls(NetworkLsArgs),
    /// Show one or more networks as JSON.
    Inspect(NetworkInspectArgs),
    /// Create a standalone network (stacks join it as `external: true`).
    Create(NetworkCreateArgs),
    /// Remove one or more standalone networks.
    #[command(alias = "remove")]
    Rm(NetworkRmArgs),
    /// Remove every standalone network no container uses.
    Prune(NetworkPruneArgs),
}

#[derive(Args, Debug)]
pub struct NetworkLsArgs {
    /// Only display network IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Do not truncate the output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format: table or json.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct NetworkInspectArgs {
    #[arg(required = true)]
    pub networks: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NetworkCreateArgs {
    /// Driver to manage the network (only bridge on one host).
    #[arg(short = 'd', long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR format.
    #[arg(long)]
    pub subnet: Option<String>,
    /// Gateway for the subnet.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Allocate container addresses from this sub-range.
    #[arg(long)]
    pub ip_range: Option<String>,
    /// Restrict external access to the network.
    #[arg(long)]
    pub internal: bool,
    /// Allow `run` containers to attach.
    #[arg(long)]
    pub attachable: bool,
    /// Enable IPv6 networking.
    #[arg(long)]
    pub ipv6: bool,
    /// Set metadata on the network (KEY=VALUE).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Driver options (KEY=VALUE).
    #[arg(short = 'o', long = "opt")]
    pub opts: Vec<String>,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct NetworkRmArgs {
    #[arg(required = true)]
    pub networks: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NetworkPruneArgs {
    /// Do not prompt for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

pub async fn run(g: &Global, c: &NetworkCmd) -> Result<i32> {
    let mut ctl = client::connect_or_start(g).await?;
    match c {
        NetworkCmd::Ls(a) => ls(&mut ctl, a).await,
        NetworkCmd::Inspect(a) => inspect(&mut ctl, a).await,
        NetworkCmd::Create(a) => create(&mut ctl, a).await,
        NetworkCmd::Rm(a) => rm(&mut ctl, a).await,
        NetworkCmd::Prune(a) => prune(&mut ctl, a).await,
    }
}

async fn all_networks(ctl: &mut Control) -> Result<Vec<pb::Network>> {
    let mut nets = ctl
        .list_networks(pb::ListNetworksRequest::default())
        .await
        .map_err(|s| client::status_err("listing networks", s))?
        .into_inner()
        .networks;
    nets.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(nets)
}

fn driver(n: &pb::Network) -> String {
    n.spec
        .as_ref()
        .map(|s| s.driver.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "bridge".to_string())
}

async fn ls(ctl: &mut Control, a: &NetworkLsArgs) -> Result<i32> {
    let nets = all_networks(ctl).await?;
    let id = |n: &pb::Network| {
        let full = network_hex_id(&n.id);
        if a.no_trunc {
            full
        } else {
            full[..12].to_string()
        }
    };
    if a.quiet {
        for n in &nets {
            println!("{}", id(n));
        }
        return Ok(0);
    }
    if a.format == "json" {
        for n in &nets {
            println!(
                "{}",
                json!({
                    "ID": id(n), "Name": n.id, "Driver": driver(n), "Scope": "local",
                    "Stack": n.stack, "Subnet": n.subnet,
                    "Internal": n.spec.as_ref().is_some_and(|s| s.internal),
                })
            );
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| vec![id(n), n.id.clone(), driver(n), "local".to_string()])
        .collect();
    render::table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows);
    Ok(0)
}

/// Every task of every stack (for the containers attached to a network).
async fn all_tasks(ctl: &mut Control) -> Result<Vec<pb::Task>> {
    Ok(ctl
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .map_err(|s| client::status_err("listing containers", s))?
        .into_inner()
        .tasks)
}

fn network_json(n: &pb::Network, tasks: &[pb::Task]) -> Value {
    let spec = n.spec.clone().unwrap_or_default();
    let ip_range = spec
        .ipam
        .iter()
        .map(|p| p.ip_range.clone())
        .find(|r| !r.is_empty())
        .unwrap_or_default();
    let aux: BTreeMap<String, String> = spec
        .ipam
        .iter()
        .flat_map(|p| p.aux_addresses.clone())
        .collect();
    let mut config = json!({"Subnet": n.subnet, "Gateway": n.gateway});
    if !ip_range.is_empty() {
        config["IPRange"] = json!(ip_range);
    }
    if !aux.is_empty() {
        config["AuxiliaryAddresses"] = json!(aux);
    }
    let mut ipam_config = vec![config];
    if !n.subnet_v6.is_empty() {
        ipam_config.push(json!({"Subnet": n.subnet_v6, "Gateway": n.gateway_v6}));
    }
    let mut containers = serde_json::Map::new();
    for t in tasks {
        if let Some(att) = t.networks.iter().find(|a| a.network_id == n.id) {
            let cid = t
                .status
                .as_ref()
                .map(|s| s.container_id.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| t.id.clone());
            containers.insert(
                cid,
                json!({
                    "Name": t.name,
                    "EndpointID": "",
                    "MacAddress": att.mac_address,
                    "IPv4Address": att.addresses.iter().find(|a| !a.contains(':')).cloned().unwrap_or_default(),
                    "IPv6Address": att.addresses.iter().find(|a| a.contains(':')).cloned().unwrap_or_default(),
                }),
            );
        }
    }
    let mut labels: BTreeMap<String, String> = spec.labels.clone().into_iter().collect();
    if !n.stack.is_empty() {
        labels.insert("com.docker.compose.project".into(), n.stack.clone());
        labels.insert("com.docker.compose.network".into(), spec.name.clone());
    }
    json!({
        "Name": n.id,
        "Id": network_hex_id(&n.id),
        "Created": n.meta.as_ref().and_then(|m| m.created_at.as_ref()).map_or(Value::Null, |t| json!(super::logs::rfc3339(t))),
        "Scope": "local",
        "Driver": driver(n),
        "EnableIPv4": true,
        "EnableIPv6": spec.enable_ipv6,
        "IPAM": {"Driver": "default", "Options": {}, "Config": ipam_config},
        "Internal": spec.internal,
        "Attachable": spec.attachable,
        "Ingress": false,
        "ConfigOnly": false,
        "Containers": containers,
        "Options": spec.driver_opts.clone().into_iter().collect::<BTreeMap<_, _>>(),
        "Labels": labels,
        "Stack": n.stack,
        "Bridge": n.bridge,
    })
}

async fn inspect(ctl: &mut Control, a: &NetworkInspectArgs) -> Result<i32> {
    let nets = all_networks(ctl).await?;
    let tasks = all_tasks(ctl).await?;
    let mut out = Vec::new();
    let mut code = 0;
    for name in &a.networks {
        // By name, or by (a prefix of) the id `ls` shows.
        let found = nets.iter().find(|n| &n.id == name).or_else(|| {
            let mut m = nets
                .iter()
                .filter(|n| name.len() >= 3 && network_hex_id(&n.id).starts_with(name.as_str()));
            match (m.next(), m.next()) {
                (Some(n), None) => Some(n),
                _ => None,
            }
        });
        match found {
            Some(n) => out.push(network_json(n, &tasks)),
            None => {
                eprintln!("Error response from daemon: network {name} not found");
                code = 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&out).context("rendering the networks as JSON")?
    );
    Ok(code)
}

fn key_values(what: &str, items: &[String]) -> Result<std::collections::HashMap<String, String>> {
    let mut out = std::collections::HashMap::new();
    for kv in items {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ if !kv.is_empty() => {
                out.insert(kv.clone(), String::new());
            }
            _ => bail!("invalid {what} {kv:?}: expected KEY=VALUE"),
        }
    }
    Ok(out)
}

async fn create(ctl: &mut Control, a: &NetworkCreateArgs) -> Result<i32> {
    if a.subnet.is_none() && (a.gateway.is_some() || a.ip_range.is_some()) {
        bail!("--gateway and --ip-range need --subnet");
    }
    let ipam = a.subnet.as_ref().map(|subnet| pb::IpamPool {
        subnet: subnet.clone(),
        gateway: a.gateway.clone().unwrap_or_default(),
        ip_range: a.ip_range.clone().unwrap_or_default(),
        aux_addresses: Default::default(),
    });
    let spec = pb::NetworkSpec {
        name: a.name.clone(),
        driver: a.driver.clone(),
        driver_opts: key_values("option", &a.opts)?,
        internal: a.internal,
        attachable: a.attachable,
        external: false,
        external_name: String::new(),
        enable_ipv6: a.ipv6,
        ipam: ipam.into_iter().collect(),
        labels: key_values("label", &a.labels)?,
    };
    let resp = ctl
        .create_network(pb::CreateNetworkRequest { spec: Some(spec) })
        .await
        .map_err(|s| client::status_err(&format!("creating network {}", a.name), s))?
        .into_inner();
    let n = resp.network.unwrap_or_default();
    println!("{}", network_hex_id(&n.id));
    Ok(0)
}

async fn rm(ctl: &mut Control, a: &NetworkRmArgs) -> Result<i32> {
    // One at a time, as Docker: each name succeeds or fails on its own.
    let mut code = 0;
    for name in &a.networks {
        match ctl
            .remove_network(pb::RemoveNetworkRequest {
                names: vec![name.clone()],
            })
            .await
        {
            Ok(r) => {
                for n in r.into_inner().removed {
                    println!("{n}");
                }
            }
            Err(s) => {
                eprintln!("Error response from daemon: {}", s.message());
                code = 1;
            }
        }
    }
    Ok(code)
}

async fn prune(ctl: &mut Control, a: &NetworkPruneArgs) -> Result<i32> {
    if !a.force {
        eprint!("WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue? [y/N] ");
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the answer")?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            return Ok(0);
        }
    }
    let resp = ctl
        .prune_networks(pb::PruneNetworksRequest {})
        .await
        .map_err(|s| client::status_err("pruning networks", s))?
        .into_inner();
    if !resp.removed.is_empty() {
        println!("Deleted Networks:");
        for n in &resp.removed {
            println!("{n}");
        }
        println!();
    }
    Ok(0)
}
