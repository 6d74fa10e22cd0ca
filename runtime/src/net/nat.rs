//! Kernel-side address translation for published ports and service VIPs,
//! through nftables (this kernel has no IPVS).
//!
//! Published ports ([`sync_published_ports`]) live in `table inet flotilla`
//! on the host: `nat-pre` (prerouting, traffic from other hosts and from
//! containers) and `nat-out` (output, the host's own processes, including
//! 127.0.0.1) jump to `ports` for packets addressed to a local address;
//! `ports` holds one DNAT rule per published port, spreading new
//! connections over its backends round-robin (`numgen inc`). No SNAT is done
//! for remote clients, so the server sees the client's own address.
//! Loopback clients work without a userland proxy: the bridge gets
//! `route_localnet` ([`enable_route_localnet`]) and `ports-post` masquerades
//! DNAT-ed packets whose source is 127.0.0.0/8 (the reply could not find its
//! way back to a loopback source otherwise); `localnet-guard` drops packets
//! for 127.0.0.0/8 arriving on any other interface, which `route_localnet`
//! would otherwise let containers send to the host's loopback services.
//!
//! Service VIPs ([`sync_vips`]) are translated inside each container's own
//! network namespace (`table ip flotilla-vip`, output hook), the way Swarm
//! does it with IPVS: the packet leaves the container already addressed to
//! one task, so replies need no SNAT, the server sees the real client, and
//! the VIP needs no ARP owner. A VIP with no backends is rejected at once
//! (ICMP host unreachable) instead of timing out.
//!
//! What it must never do: choose backends (the caller passes the running,
//! healthy tasks), touch rules outside its own chains, or flush any chain
//! of [`super::firewall`].

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use super::firewall::{self, nft_script};
use super::{check_ifname, netns, NetError};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published host port and the container addresses behind it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedPort {
    pub protocol: Protocol,
    /// Only traffic to this host address (None: every local address).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub target_port: u16,
    /// Container addresses; empty means the port is published but nothing
    /// runs behind it (connections are refused by the host).
    pub backends: Vec<Ipv4Addr>,
}

/// A service VIP and the task addresses it spreads over.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vip {
    pub address: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
}

const PORTS_BASE: &str = "\
add table inet flotilla
add chain inet flotilla nat-pre { type nat hook prerouting priority dstnat; policy accept; }
add chain inet flotilla nat-out { type nat hook output priority -100; policy accept; }
add chain inet flotilla ports-post { type nat hook postrouting priority srcnat; policy accept; }
add chain inet flotilla localnet-guard { type filter hook prerouting priority raw; policy accept; }
add chain inet flotilla ports
flush chain inet flotilla nat-pre
flush chain inet flotilla nat-out
flush chain inet flotilla ports-post
flush chain inet flotilla localnet-guard
add rule inet flotilla nat-pre fib daddr type local jump ports
add rule inet flotilla nat-out fib daddr type local jump ports
add rule inet flotilla ports-post ip saddr 127.0.0.0/8 ct status dnat masquerade
add rule inet flotilla localnet-guard iifname != \"lo\" ip daddr 127.0.0.0/8 drop
";

/// Prefix of the comment on an agent's published-port rules, followed by
/// the agent's owner tag (several agents may share a host in tests).
pub const PORTS_TAG_PREFIX: &str = "flotilla-ports:";

/// `{ 0 : a, 1 : b }` for a numgen map.
fn backend_map(backends: &[Ipv4Addr]) -> String {
    let entries: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b}"))
        .collect();
    format!("{{ {} }}", entries.join(", "))
}

/// The `add rule` commands for `ports`, tagged for `owner`.
pub fn published_ports_rules(owner: &str, ports: &[PublishedPort]) -> String {
    let mut script = String::new();
    for p in ports {
        if p.backends.is_empty() {
            continue;
        }
        let daddr = p
            .host_ip
            .filter(|ip| !ip.is_unspecified())
            .map(|ip| format!("ip daddr {ip} "))
            .unwrap_or_default();
        let _ = writeln!(
            script,
            "add rule inet flotilla ports {daddr}{proto} dport {hp} dnat ip to numgen inc mod {n} map {map} : {tp} comment \"{PORTS_TAG_PREFIX}{owner}\"",
            proto = p.protocol,
            hp = p.host_port,
            n = p.backends.len(),
            map = backend_map(&p.backends),
            tp = p.target_port,
        );
    }
    script
}

fn check_owner(owner: &str) -> Result<(), NetError> {
    if owner.is_empty()
        || owner.len() > 64
        || !owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(NetError::Invalid {
            what: "published-port owner tag",
            value: owner.to_string(),
            reason: "1 to 64 ASCII letters, digits, '-' or '_'".to_string(),
        });
    }
    Ok(())
}

/// Replaces the published-port rules of `owner` (one agent) with exactly
/// `ports`, in one transaction; other owners' rules are left alone.
/// Connections already established keep their translation (conntrack).
pub fn sync_published_ports(owner: &str, ports: &[PublishedPort]) -> Result<(), NetError> {
    check_owner(owner)?;
    let _guard = firewall::ruleset_lock();
    firewall::ensure_base()?;
    let mut script = String::from(PORTS_BASE);
    script.push_str(&firewall::delete_commented(&format!(
        "{PORTS_TAG_PREFIX}{owner}"
    ))?);
    script.push_str(&published_ports_rules(owner, ports));
    nft_script(
        &format!("setting {} published port(s) of {owner}", ports.len()),
        &script,
    )
}

/// Lets packets with a 127.0.0.0/8 source be routed out of `bridge`, so a
/// published port DNAT-ed from 127.0.0.1 reaches the container (Docker
/// sets the same when its userland proxy is off).
pub fn enable_route_localnet(bridge: &str) -> Result<(), NetError> {
    check_ifname(bridge)?;
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    std::fs::write(&path, "1\n").map_err(|e| NetError::io("enabling route_localnet in", path, e))
}

const VIP_TABLE: &str = "flotilla-vip";

/// The nft script, run inside a container's namespace, that makes its VIP
/// table hold exactly `vips`.
pub fn vip_script(vips: &[Vip]) -> String {
    let mut s = format!(
        "add table ip {VIP_TABLE}\ndelete table ip {VIP_TABLE}\nadd table ip {VIP_TABLE}\n\
         add chain ip {VIP_TABLE} out {{ type nat hook output priority -100; policy accept; }}\n\
         add chain ip {VIP_TABLE} none {{ type filter hook output priority filter; policy accept; }}\n"
    );
    for v in vips {
        if !v.backends.is_empty() {
            let _ = writeln!(
                s,
                "add rule ip {VIP_TABLE} out ip daddr {} dnat to numgen inc mod {} map {}",
                v.address,
                v.backends.len(),
                backend_map(&v.backends)
            );
        }
        // After DNAT the destination is a task, so this only catches a VIP
        // with nothing behind it.
        let _ = writeln!(
            s,
            "add rule ip {VIP_TABLE} none ip daddr {} reject with icmp type host-unreachable",
            v.address
        );
    }
    s
}

/// Replaces the VIP translation inside the network namespace at `netns`
/// with exactly `vips` (one transaction).
pub fn sync_vips(netns: &Path, vips: &[Vip]) -> Result<(), NetError> {
    let script = vip_script(vips);
    let op = format!("setting {} VIP(s) in {}", vips.len(), netns.display());
    // Both the thread and the nft process it starts are in the namespace.
    netns::run_in(netns, || nft_script(&op, &script))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_script_has_one_dnat_per_port() {
        let s = published_ports_rules(
            "a1",
            &[
                PublishedPort {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    target_port: 80,
                    backends: vec![Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 0, 3)],
                },
                PublishedPort {
                    protocol: Protocol::Udp,
                    host_ip: Some(Ipv4Addr::new(127, 0, 0, 1)),
                    host_port: 5353,
                    target_port: 53,
                    backends: vec![Ipv4Addr::new(10, 1, 0, 2)],
                },
                PublishedPort {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    host_port: 9,
                    target_port: 9,
                    backends: vec![],
                },
            ],
        );
        assert!(s.contains("add rule inet flotilla ports tcp dport 8080 dnat ip to numgen inc mod 2 map { 0 : 10.1.0.2, 1 : 10.1.0.3 } : 80 comment \"flotilla-ports:a1\"\n"), "{s}");
        assert!(s.contains("add rule inet flotilla ports ip daddr 127.0.0.1 udp dport 5353 dnat ip to numgen inc mod 1 map { 0 : 10.1.0.2 } : 53 comment \"flotilla-ports:a1\"\n"), "{s}");
        assert!(!s.contains("dport 9 "), "{s}");
    }

    #[test]
    fn vip_script_rejects_empty_vips() {
        let s = vip_script(&[Vip {
            address: Ipv4Addr::new(10, 1, 0, 9),
            backends: vec![],
        }]);
        assert!(!s.contains("dnat"), "{s}");
        assert!(s.contains("ip daddr 10.1.0.9 reject"), "{s}");
    }
}
