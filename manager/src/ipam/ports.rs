//! Published host ports at deploy time: a port another service already
//! publishes (in the store) or a program on this host already holds is
//! reported before anything of the stack starts, naming the service and
//! the port.
//!
//! The store check is pure. The host check reads the kernel's socket tables
//! (/proc/net/{tcp,tcp6,udp,udp6}) of the manager's own host, which is the
//! node in the single-host daemon; sockets of this process (the agent's own
//! port reservations) are not counted. It must never bind, open or probe a
//! port itself.

use crate::orchestrator::{service_removing, StoreView};
use flotilla_proto::v1::{Protocol, ServiceSpec, StackSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use thiserror::Error;

/// A host port as the kernel sees it: protocol, address (None: every
/// address) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub udp: bool,
    pub ip: Option<Ipv4Addr>,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "{ip}:{}/{proto}", self.port)
    }
}

impl HostPort {
    /// Whether the two can not both be bound (same port and protocol, and
    /// the same address or a wildcard on either side).
    pub fn collides(&self, other: &HostPort) -> bool {
        self.udp == other.udp
            && self.port == other.port
            && (self.ip.is_none() || other.ip.is_none() || self.ip == other.ip)
    }
}

/// A published port that can not be had.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PortConflict {
    #[error("service {service}: published port {port} is already published by service {other} of stack {other_stack}")]
    Published {
        service: String,
        port: HostPort,
        other: String,
        other_stack: String,
    },
    #[error("service {service}: published port {port} is already in use on this host (a program listens on {held})")]
    Host {
        service: String,
        port: HostPort,
        held: HostPort,
    },
    #[error("service {service}: published port {value:?} is invalid: {reason}")]
    Invalid {
        service: String,
        value: String,
        reason: &'static str,
    },
}

/// The fixed host ports a service spec publishes (random ones are chosen
/// by the node and left out).
pub fn published(spec: &ServiceSpec) -> Result<Vec<HostPort>, PortConflict> {
    let mut out = Vec::new();
    for p in &spec.ports {
        if p.published == 0 {
            continue;
        }
        let invalid = |reason| PortConflict::Invalid {
            service: spec.name.clone(),
            value: format!("{}:{}", p.host_ip, p.published),
            reason,
        };
        let udp = match Protocol::try_from(p.protocol) {
            Ok(Protocol::Tcp) => false,
            Ok(Protocol::Udp) => true,
            _ => return Err(invalid("only tcp and udp can be published")),
        };
        let ip = match p.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            s => Some(
                s.parse::<Ipv4Addr>()
                    .map_err(|_| invalid("host_ip is not an IPv4 address"))?,
            ),
        };
        let port = u16::try_from(p.published).map_err(|_| invalid("port out of range"))?;
        out.push(HostPort { udp, ip, port });
    }
    Ok(out)
}

/// Checks the fixed ports the `selected` services of `spec` publish against
/// each other, against every other stored service's, and against `host`
/// (sockets held on the host; see [`host_sockets`]). Ports the same service
/// already publishes (a redeploy) are not checked against the host: its own
/// reservation holds them.
pub fn check(
    view: &impl StoreView,
    spec: &StackSpec,
    selected: &BTreeSet<String>,
    host: &[HostPort],
) -> Result<(), PortConflict> {
    // Who publishes what once this deploy is done: stored services of other
    // stacks and unselected ones of this stack, then the new specs.
    let mut book: Vec<(HostPort, String, String)> = Vec::new();
    let mut stored_by_service: BTreeMap<String, Vec<HostPort>> = BTreeMap::new();
    for s in view.all_services() {
        let Some(sspec) = s.spec.as_ref() else {
            continue;
        };
        let ports = published(sspec).unwrap_or_default();
        let same_stack = s.stack == spec.name;
        if same_stack {
            stored_by_service.insert(sspec.name.clone(), ports.clone());
        }
        if service_removing(s) || (same_stack && selected.contains(&sspec.name)) {
            continue;
        }
        for p in ports {
            book.push((p, sspec.name.clone(), s.stack.clone()));
        }
    }
    for s in spec.services.iter().filter(|s| selected.contains(&s.name)) {
        let ports = published(s)?;
        for p in &ports {
            if let Some((_, other, other_stack)) = book.iter().find(|(q, other, other_stack)| {
                q.collides(p) && !(other == &s.name && other_stack == &spec.name)
            }) {
                return Err(PortConflict::Published {
                    service: s.name.clone(),
                    port: *p,
                    other: other.clone(),
                    other_stack: other_stack.clone(),
                });
            }
            let mine = stored_by_service
                .get(&s.name)
                .is_some_and(|old| old.contains(p));
            if !mine {
                if let Some(held) = host.iter().find(|h| h.collides(p)) {
                    return Err(PortConflict::Host {
                        service: s.name.clone(),
                        port: *p,
                        held: *held,
                    });
                }
            }
        }
        for p in ports {
            book.push((p, s.name.clone(), spec.name.clone()));
        }
    }
    Ok(())
}

/// Whether any selected service publishes a fixed port (only then is the
/// host's socket table worth reading).
pub fn publishes_any(spec: &StackSpec, selected: &BTreeSet<String>) -> bool {
    spec.services
        .iter()
        .filter(|s| selected.contains(&s.name))
        .any(|s| s.ports.iter().any(|p| p.published != 0))
}

/// Parses one /proc/net/{tcp,udp}[6] table into (port, socket inode) rows:
/// TCP sockets that listen or are bound without a connection, every bound
/// UDP socket. IPv6 rows count when they are the wildcard (dual-stack) or a
/// v4-mapped address.
pub fn parse_proc_net(text: &str, udp: bool, v6: bool) -> Vec<(HostPort, u64)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some((addr, port)), state, inode) = (f[1].split_once(':'), f[3], f[9]) else {
            continue;
        };
        // 0A: LISTEN; 07: CLOSE (bound, unconnected; every UDP socket).
        let bound = if udp {
            state == "07"
        } else {
            state == "0A" || state == "07"
        };
        if !bound {
            continue;
        }
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        if port == 0 {
            continue;
        }
        let ip = if v6 {
            match addr {
                "00000000000000000000000000000000" => None,
                // ::ffff:a.b.c.d, each 32-bit word in host (little-endian) order.
                a if a.len() == 32
                    && &a[..16] == "0000000000000000"
                    && &a[16..24] == "FFFF0000" =>
                {
                    let Ok(w) = u32::from_str_radix(&a[24..], 16) else {
                        continue;
                    };
                    Some(Ipv4Addr::from(u32::from_be(w)))
                }
                _ => continue,
            }
        } else {
            let Ok(w) = u32::from_str_radix(addr, 16) else {
                continue;
            };
            Some(Ipv4Addr::from(u32::from_be(w))).filter(|a| !a.is_unspecified())
        };
        out.push((HostPort { udp, ip, port }, inode.parse().unwrap_or(0)));
    }
    out
}

/// Socket inodes this process holds (its own port reservations).
fn own_socket_inodes() -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for e in rd.flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(n) = n.parse() {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// The ports held on this host by sockets of other processes.
pub fn host_sockets() -> Vec<HostPort> {
    let own = own_socket_inodes();
    let mut out = BTreeSet::new();
    for (file, udp, v6) in [
        ("/proc/net/tcp", false, false),
        ("/proc/net/tcp6", false, true),
        ("/proc/net/udp", true, false),
        ("/proc/net/udp6", true, true),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (p, inode) in parse_proc_net(&text, udp, v6) {
            if !own.contains(&inode) {
                out.insert(p);
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::v1::{PortConfig, Service, StoreSnapshot};

    fn svc(name: &str, ports: &[(u32, &str, Protocol)]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            ports: ports
                .iter()
                .map(|(p, ip, proto)| PortConfig {
                    target: 80,
                    published: *p,
                    host_ip: ip.to_string(),
                    protocol: *proto as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn stored(stack: &str, spec: ServiceSpec) -> Service {
        Service {
            id: format!("{stack}_{}", spec.name),
            stack: stack.into(),
            spec: Some(spec),
            ..Default::default()
        }
    }

    fn all(spec: &StackSpec) -> BTreeSet<String> {
        spec.services.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn conflicts_table() {
        let tcp = Protocol::Tcp;
        let udp = Protocol::Udp;
        let mut snap = StoreSnapshot::default();
        snap.services
            .push(stored("other", svc("db", &[(5432, "", tcp)])));
        snap.services
            .push(stored("app", svc("web", &[(8080, "", tcp)])));
        let stack = |services| StackSpec {
            name: "app".into(),
            services,
            ..Default::default()
        };
        // Another stack's port, on a wildcard vs a specific address.
        let s = stack(vec![svc("api", &[(5432, "127.0.0.1", tcp)])]);
        let err = check(&snap, &s, &all(&s), &[]).unwrap_err().to_string();
        assert_eq!(err, "service api: published port 127.0.0.1:5432/tcp is already published by service db of stack other");
        // Same port number over UDP is fine.
        let s = stack(vec![svc("api", &[(5432, "", udp)])]);
        check(&snap, &s, &all(&s), &[]).unwrap();
        // A redeploy of the service that has the port: no conflict, even
        // though the host shows the port held.
        let held = [HostPort {
            udp: false,
            ip: None,
            port: 8080,
        }];
        let s = stack(vec![svc("web", &[(8080, "", tcp)])]);
        check(&snap, &s, &all(&s), &held).unwrap();
        // Two services of the same file on one port.
        let s = stack(vec![
            svc("a", &[(9000, "", tcp)]),
            svc("b", &[(9000, "", tcp)]),
        ]);
        let err = check(&snap, &s, &all(&s), &[]).unwrap_err().to_string();
        assert!(
            err.contains("service b") && err.contains("service a of stack app"),
            "{err}"
        );
        // A program on the host.
        let host = [HostPort {
            udp: true,
            ip: Some(Ipv4Addr::LOCALHOST),
            port: 5353,
        }];
        let s = stack(vec![svc("dns", &[(5353, "", udp)])]);
        let err = check(&snap, &s, &all(&s), &host).unwrap_err().to_string();
        assert_eq!(err, "service dns: published port 0.0.0.0:5353/udp is already in use on this host (a program listens on 127.0.0.1:5353/udp)");
        let s = stack(vec![svc("dns", &[(5353, "10.0.0.1", udp)])]);
        check(&snap, &s, &all(&s), &host).unwrap();
    }

    #[test]
    fn proc_net_tables_parse() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n   1: 0100007F:A2B4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 112 1 0 100 0 0 10 0\n   2: 00000000:0050 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 113 1 0 100 0 0 10 0\n";
        let rows = parse_proc_net(tcp, false, false);
        assert_eq!(
            rows,
            vec![
                (
                    HostPort {
                        udp: false,
                        ip: Some(Ipv4Addr::LOCALHOST),
                        port: 8080
                    },
                    111
                ),
                (
                    HostPort {
                        udp: false,
                        ip: None,
                        port: 80
                    },
                    113
                ),
            ]
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 200 1\n   1: 0000000000000000FFFF00000100007F:0035 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 201 1\n   2: 00000000000000000000000001000000:0019 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 202 1\n";
        let rows: Vec<String> = parse_proc_net(tcp6, false, true)
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(rows, vec!["0.0.0.0:22/tcp", "127.0.0.1:53/tcp"]);
    }

    #[test]
    fn a_listening_socket_of_another_process_is_seen() {
        // A child process holds a port; this process's own sockets are not
        // counted.
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let own_port = own.local_addr().unwrap().port();
        let seen = host_sockets();
        assert!(!seen.iter().any(|p| !p.udp && p.port == own_port));
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ntime.sleep(30)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn();
        let Ok(child) = child.as_mut() else {
            eprintln!("skipped: python3 is not installed");
            return;
        };
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let seen = host_sockets();
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen.contains(&HostPort {
            udp: false,
            ip: Some(Ipv4Addr::LOCALHOST),
            port
        }));
    }
}
