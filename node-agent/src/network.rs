//! The node's side of networks: a bridge and firewall rules per network
//! this node runs tasks on, and per task a network namespace with one veth
//! per attached network, carrying the address the manager allocated.
//!
//! It never chooses addresses or names: those come from the manager (IPAM
//! through Raft). Everything it makes is removed when the last task using it
//! goes.

use crate::process;
use crate::tasks::{short, OpContext};
use flotilla_proto::v1 as pb;
use flotilla_runtime::container::BindMount;
use flotilla_runtime::net::{self, firewall, netns};
use std::path::{Path, PathBuf};

/// The bridge for a network: the manager's choice, else derived from the id
/// (a network the manager already deleted).
pub fn bridge_name(id: &str, net: Option<&pb::Network>) -> String {
    match net {
        Some(n) if !n.bridge.is_empty() => n.bridge.clone(),
        _ => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut h);
            format!("flt-{:010x}", h.finish() & 0xff_ffff_ffff)
        }
    }
}

/// Creates the task's network namespace and attaches it to each of its
/// networks (bridge and rules made on first use). Returns the namespace.
pub async fn setup_task(
    ctx: &OpContext,
    task: &pb::Task,
    networks: &[pb::Network],
) -> Result<PathBuf, String> {
    let netns_dir = ctx.netns_dir();
    let netns_name = short(&task.id);
    let netns_path = tokio::task::spawn_blocking(move || {
        // A half-made namespace from a crash mid-create is replaced.
        let _ = netns::remove(&netns_dir, &netns_name);
        netns::create(&netns_dir, &netns_name)
    })
    .await
    .map_err(|e| format!("netns worker: {e}"))?
    .map_err(|e| format!("creating network namespace: {e}"))?;
    if let Err(msg) = attach_networks(ctx, task, networks, &netns_path).await {
        teardown_task(ctx, &task.id).await;
        return Err(msg);
    }
    Ok(netns_path)
}

async fn attach_networks(
    ctx: &OpContext,
    task: &pb::Task,
    networks: &[pb::Network],
    netns_path: &Path,
) -> Result<(), String> {
    for (i, att) in task.networks.iter().enumerate() {
        let Some(net) = networks.iter().find(|n| n.id == att.network_id) else {
            return Err(format!(
                "network {} is not known to this node",
                att.network_id
            ));
        };
        let Some(addr) = att.addresses.first() else {
            return Err(format!("no address allocated on network {}", net.id));
        };
        let bridge = bridge_name(&net.id, Some(net));
        let prefix = net.subnet.split('/').nth(1).unwrap_or("24");
        ctx.netlink
            .ensure_bridge(&bridge, &format!("{}/{prefix}", net.gateway), None)
            .await
            .map_err(|e| format!("setting up bridge {bridge} for network {}: {e}", net.id))?;
        let internal = net.spec.as_ref().is_some_and(|s| s.internal);
        let (br, subnet) = (bridge.clone(), net.subnet.clone());
        tokio::task::spawn_blocking(move || {
            firewall::ensure_base()?;
            firewall::add_network(&br, &subnet, internal)
        })
        .await
        .map_err(|e| format!("firewall worker: {e}"))?
        .map_err(|e| format!("firewall rules for network {}: {e}", net.id))?;
        if i >= MAX_ATTACHMENTS {
            return Err(format!(
                "a container can join at most {MAX_ATTACHMENTS} networks"
            ));
        }
        let host_if = host_ifname(&task.id, i);
        let mac = if att.mac_address.is_empty() {
            process::strip_prefix_len(addr)
                .parse()
                .map(net::mac_for)
                .unwrap_or_default()
        } else {
            att.mac_address.clone()
        };
        // Only the first network carries the default route.
        let gateway = if i == 0 { net.gateway.as_str() } else { "" };
        ctx.netlink
            .attach(&bridge, &host_if, netns_path, addr, gateway, &mac)
            .await
            .map_err(|e| format!("attaching to network {}: {e}", net.id))?;
    }
    Ok(())
}

/// Removes the task's veths and network namespace (safe to repeat).
pub async fn teardown_task(ctx: &OpContext, task_id: &str) {
    // Removing one end of a veth removes both; the namespace would take
    // them along too, but only once nothing holds it.
    for i in 0..MAX_ATTACHMENTS {
        let _ = ctx.netlink.delete_link(&host_ifname(task_id, i)).await;
    }
    let dir = ctx.netns_dir();
    let name = short(task_id);
    let r = tokio::task::spawn_blocking(move || netns::remove(&dir, &name)).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(task = %task_id, "removing network namespace: {e}");
    }
}

/// Removes a network's rules and bridge from this node.
pub async fn remove_network(netlink: &net::Netlink, id: &str, bridge: &str) {
    let br = bridge.to_string();
    let r = tokio::task::spawn_blocking(move || firewall::remove_network(&br)).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(network = %id, "removing firewall rules: {e}");
    }
    if let Err(e) = netlink.delete_link(bridge).await {
        tracing::warn!(network = %id, "removing bridge {bridge}: {e}");
    }
}

/// How many networks one container may join (host interface names are
/// derived from the task id and this index).
pub const MAX_ATTACHMENTS: usize = 8;

/// The host end of a task's veth on its i-th network (at most 15 bytes).
fn host_ifname(task_id: &str, i: usize) -> String {
    format!("vf{}{}", &short(task_id)[..10], i)
}

/// Writes the files the container sees as /etc/hosts, /etc/hostname and
/// /etc/resolv.conf, and returns the bind mounts for them.
pub fn write_task_files(
    dir: &Path,
    task: &pb::Task,
    services: &[pb::Service],
    hostname: &str,
    spec: &pb::ServiceSpec,
) -> std::io::Result<Vec<BindMount>> {
    std::fs::create_dir_all(dir)?;
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, process::hosts_file(task, services))?;
    let hostname_file = dir.join("hostname");
    std::fs::write(&hostname_file, format!("{hostname}\n"))?;
    let resolv = dir.join("resolv.conf");
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(
        &resolv,
        process::resolv_conf(&host_resolv, &spec.dns, &spec.dns_search),
    )?;
    Ok(vec![
        BindMount {
            source: hosts,
            target: "/etc/hosts".into(),
            read_only: false,
        },
        BindMount {
            source: hostname_file,
            target: "/etc/hostname".into(),
            read_only: false,
        },
        BindMount {
            source: resolv,
            target: "/etc/resolv.conf".into(),
            read_only: false,
        },
    ])
}
