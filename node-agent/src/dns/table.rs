//! The embedded DNS's names: which addresses a name has on which network,
//! and the answer one asking task gets for one question.
//!
//! Built from an `AssignmentSet` (this node's tasks, every peer task of the
//! stacks it runs, the services with their VIPs, the networks) and rebuilt
//! whenever a new set arrives, so a stopped task leaves `tasks.SERVICE` and
//! dnsrr answers at the next assignment, while a VIP stays for the service's
//! lifetime. Pure: no I/O, no clock.
//!
//! Names per network (each also qualified by stack, `name.STACK`):
//! - `SERVICE`: the service's VIP on that network, or with
//!   `endpoint_mode: dnsrr` every running task's address there;
//! - each network alias of the service: same as `SERVICE`;
//! - `tasks.SERVICE`: every running task's address;
//! - `N.SERVICE`: the running task of slot N;
//! - a running task's name (`stack-service-N`) and its `container_name`.
//!
//! Never answers from a network the asking task is not attached to.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use flotilla_proto::v1 as pb;

/// The record type asked for. Anything else is forwarded when the name is
/// not ours, and answered with no records when it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    A,
    Aaaa,
    Other,
}

/// What the server should do with one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name is ours and visible to the asker: these records (possibly
    /// none, for a type the name has no address of: NOERROR/NODATA).
    Local(Vec<IpAddr>),
    /// The name is ours but only on networks the asker does not share:
    /// NXDOMAIN, and never forwarded.
    NotVisible,
    /// Not one of ours: forward upstream.
    Forward,
}

/// Names → addresses per network id, plus each known task's networks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DnsTable {
    /// network id → lower-case name → addresses (insertion order kept by
    /// sorting, so answers are deterministic).
    names: HashMap<String, BTreeMap<String, BTreeSet<IpAddr>>>,
    /// task id → the network ids it is attached to, in attachment order.
    task_networks: HashMap<String, Vec<String>>,
}

/// The address part of "10.0.0.5/24".
fn addr_of(cidr: &str) -> Option<IpAddr> {
    cidr.split('/').next()?.trim().parse().ok()
}

fn is_running(t: &pb::Task) -> bool {
    t.status.as_ref().map(|s| s.state()) == Some(pb::TaskState::Running)
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsTable {
    /// Builds the table from one assignment set.
    pub fn from_assignments(set: &pb::AssignmentSet) -> DnsTable {
        let mut table = DnsTable::default();
        // Tasks may appear both as this node's tasks and as peers; the last
        // copy wins, they are the same task.
        let mut tasks: BTreeMap<&str, &pb::Task> = BTreeMap::new();
        for t in set.peers.iter().chain(set.tasks.iter()) {
            tasks.insert(t.id.as_str(), t);
        }
        for t in tasks.values() {
            table.task_networks.insert(
                t.id.clone(),
                t.networks.iter().map(|n| n.network_id.clone()).collect(),
            );
        }

        for svc in &set.services {
            let Some(spec) = svc.spec.as_ref() else {
                continue;
            };
            let dnsrr = spec.endpoint_mode.eq_ignore_ascii_case("dnsrr");
            let running: Vec<&pb::Task> = tasks
                .values()
                .filter(|t| t.service_id == svc.id && is_running(t))
                .copied()
                .collect();
            // Aliases per network id, from the spec (network name inside
            // the stack → the network's id).
            let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
            for att in &spec.networks {
                if let Some(net) = set.networks.iter().find(|n| {
                    n.stack == svc.stack
                        && n.spec.as_ref().map(|s| s.name.as_str()) == Some(att.network.as_str())
                }) {
                    aliases
                        .entry(net.id.clone())
                        .or_default()
                        .extend(att.aliases.iter().cloned());
                }
            }
            // Aliases given on a task's attachment count too.
            for t in &running {
                for a in &t.networks {
                    aliases
                        .entry(a.network_id.clone())
                        .or_default()
                        .extend(a.aliases.iter().cloned());
                }
            }

            let qualify = |n: &str| -> Vec<String> {
                if svc.stack.is_empty() {
                    vec![n.to_string()]
                } else {
                    vec![n.to_string(), format!("{n}.{}", svc.stack)]
                }
            };

            // Service name and aliases.
            let mut service_addrs: HashMap<String, Vec<IpAddr>> = HashMap::new();
            if dnsrr {
                for t in &running {
                    for a in &t.networks {
                        // IPv4 and, on enable_ipv6 networks, IPv6 (AAAA).
                        service_addrs
                            .entry(a.network_id.clone())
                            .or_default()
                            .extend(a.addresses.iter().filter_map(|c| addr_of(c)));
                    }
                }
                // Networks the service is on but no task runs: the name
                // still exists (an empty answer beats forwarding it).
                for net in aliases.keys() {
                    service_addrs.entry(net.clone()).or_default();
                }
            } else {
                for vip in &svc.vips {
                    if let Some(ip) = addr_of(&vip.address) {
                        service_addrs
                            .entry(vip.network_id.clone())
                            .or_default()
                            .push(ip);
                    }
                }
            }
            for (net, ips) in &service_addrs {
                let names =
                    std::iter::once(&spec.name).chain(aliases.get(net).into_iter().flatten());
                for n in names {
                    for q in qualify(n) {
                        table.add(net, &q, ips);
                    }
                }
            }

            // tasks.SERVICE, N.SERVICE, task names, container_name.
            for t in &running {
                for a in &t.networks {
                    let ips: Vec<IpAddr> = a.addresses.iter().filter_map(|c| addr_of(c)).collect();
                    if ips.is_empty() {
                        continue;
                    }
                    let ips = &ips[..];
                    let net = &a.network_id;
                    let mut names = vec![format!("tasks.{}", spec.name)];
                    if t.slot > 0 {
                        names.push(format!("{}.{}", t.slot, spec.name));
                    }
                    for n in names {
                        for q in qualify(&n) {
                            table.add(net, &q, ips);
                        }
                    }
                    if !t.name.is_empty() {
                        table.add(net, &t.name, ips);
                    }
                    let cname = t
                        .spec
                        .as_ref()
                        .map(|s| s.container_name.as_str())
                        .unwrap_or(&spec.container_name);
                    if !cname.is_empty() {
                        table.add(net, cname, ips);
                    }
                }
            }
        }
        table
    }

    fn add(&mut self, network_id: &str, name: &str, ips: &[IpAddr]) {
        self.names
            .entry(network_id.to_string())
            .or_default()
            .entry(normalise(name))
            .or_default()
            .extend(ips.iter().copied());
    }

    /// Whether the table knows this task (it can ask questions).
    pub fn knows_task(&self, task_id: &str) -> bool {
        self.task_networks.contains_key(task_id)
    }

    /// The network ids a task is attached to.
    pub fn networks_of(&self, task_id: &str) -> &[String] {
        self.task_networks
            .get(task_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The answer `asking_task` gets for `name` of type `qtype`: addresses from
/// the networks the asker is attached to, in its attachment order.
pub fn answer(table: &DnsTable, asking_task: &str, name: &str, qtype: QueryType) -> Answer {
    let name = normalise(name);
    let mut found = false;
    let mut out: Vec<IpAddr> = Vec::new();
    for net in table.networks_of(asking_task) {
        if let Some(ips) = table.names.get(net).and_then(|m| m.get(&name)) {
            found = true;
            for ip in ips {
                let wanted = match qtype {
                    QueryType::A => ip.is_ipv4(),
                    QueryType::Aaaa => ip.is_ipv6(),
                    QueryType::Other => false,
                };
                if wanted && !out.contains(ip) {
                    out.push(*ip);
                }
            }
        }
    }
    if found {
        return Answer::Local(out);
    }
    if table.names.values().any(|m| m.contains_key(&name)) {
        Answer::NotVisible
    } else {
        Answer::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(stack: &str, name: &str) -> pb::Network {
        pb::Network {
            id: format!("{stack}_{name}"),
            stack: stack.into(),
            spec: Some(pb::NetworkSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn service(
        stack: &str,
        name: &str,
        mode: &str,
        nets: &[(&str, &[&str])],
        vips: &[(&str, &str)],
        container_name: &str,
    ) -> pb::Service {
        pb::Service {
            id: format!("{stack}_{name}"),
            stack: stack.into(),
            spec: Some(pb::ServiceSpec {
                name: name.into(),
                endpoint_mode: mode.into(),
                container_name: container_name.into(),
                networks: nets
                    .iter()
                    .map(|(n, aliases)| pb::NetworkAttachmentSpec {
                        network: n.to_string(),
                        aliases: aliases.iter().map(|a| a.to_string()).collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            vips: vips
                .iter()
                .map(|(n, a)| pb::EndpointAddress {
                    network_id: format!("{stack}_{n}"),
                    address: format!("{a}/24"),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn task(
        stack: &str,
        svc: &str,
        slot: u32,
        state: pb::TaskState,
        addrs: &[(&str, &str)],
        container_name: &str,
    ) -> pb::Task {
        pb::Task {
            id: format!("t-{svc}-{slot}"),
            stack: stack.into(),
            service_id: format!("{stack}_{svc}"),
            service_name: svc.into(),
            slot,
            name: format!("{stack}-{svc}-{slot}"),
            spec: Some(pb::ServiceSpec {
                name: svc.into(),
                container_name: container_name.into(),
                ..Default::default()
            }),
            status: Some(pb::TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            networks: addrs
                .iter()
                .map(|(n, a)| pb::NetworkAttachment {
                    network_id: format!("{stack}_{n}"),
                    addresses: vec![format!("{a}/24")],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Stack `s`: web (vip, 2 replicas, front+back, alias `www` on back),
    /// db (dnsrr on back, slot 2 stopped), cache (vip on front,
    /// container_name `mycache`). Stack `o`: api on its own network.
    fn fixture() -> pb::AssignmentSet {
        use pb::TaskState::{Running, Shutdown};
        let web_task =
            |slot, f, b| task("s", "web", slot, Running, &[("front", f), ("back", b)], "");
        pb::AssignmentSet {
            networks: vec![net("s", "front"), net("s", "back"), net("o", "default")],
            services: vec![
                service(
                    "s",
                    "web",
                    "",
                    &[("front", &[]), ("back", &["www"])],
                    &[("front", "10.1.0.2"), ("back", "10.2.0.2")],
                    "",
                ),
                service("s", "db", "dnsrr", &[("back", &[])], &[], ""),
                service(
                    "s",
                    "cache",
                    "vip",
                    &[("front", &[])],
                    &[("front", "10.1.0.3")],
                    "mycache",
                ),
                service(
                    "o",
                    "api",
                    "",
                    &[("default", &[])],
                    &[("default", "10.3.0.2")],
                    "",
                ),
            ],
            tasks: vec![web_task(1, "10.1.0.10", "10.2.0.10")],
            peers: vec![
                web_task(1, "10.1.0.10", "10.2.0.10"),
                web_task(2, "10.1.0.11", "10.2.0.11"),
                task("s", "db", 1, Running, &[("back", "10.2.0.20")], ""),
                task("s", "db", 2, Shutdown, &[("back", "10.2.0.21")], ""),
                task(
                    "s",
                    "cache",
                    1,
                    Running,
                    &[("front", "10.1.0.30")],
                    "mycache",
                ),
                task("o", "api", 1, Running, &[("default", "10.3.0.10")], ""),
            ],
            ..Default::default()
        }
    }

    fn local(ips: &[&str]) -> Answer {
        Answer::Local(ips.iter().map(|i| i.parse().unwrap()).collect())
    }

    #[test]
    fn answers_every_name_form_from_shared_networks_only() {
        use QueryType::{Aaaa, A};
        let table = DnsTable::from_assignments(&fixture());
        let nx = || Answer::NotVisible;
        let fwd = || Answer::Forward;
        let cases: Vec<(&str, &str, QueryType, Answer)> = vec![
            // web-1 is on front and back: answers from both, in its
            // attachment order.
            ("t-web-1", "web", A, local(&["10.1.0.2", "10.2.0.2"])),
            ("t-web-1", "WEB.s.", A, local(&["10.1.0.2", "10.2.0.2"])),
            ("t-web-1", "web", Aaaa, local(&[])),
            (
                "t-web-1",
                "tasks.web",
                A,
                local(&["10.1.0.10", "10.1.0.11", "10.2.0.10", "10.2.0.11"]),
            ),
            ("t-web-1", "2.web.s", A, local(&["10.1.0.11", "10.2.0.11"])),
            ("t-web-1", "s-web-2", A, local(&["10.1.0.11", "10.2.0.11"])),
            ("t-web-1", "db", A, local(&["10.2.0.20"])),
            ("t-web-1", "tasks.db.s", A, local(&["10.2.0.20"])),
            ("t-web-1", "2.db", A, fwd()),
            ("t-web-1", "cache", A, local(&["10.1.0.3"])),
            ("t-web-1", "mycache", A, local(&["10.1.0.30"])),
            ("t-web-1", "www", A, local(&["10.2.0.2"])),
            ("t-web-1", "www.s", A, local(&["10.2.0.2"])),
            ("t-web-1", "api", A, nx()),
            ("t-web-1", "api.o", A, nx()),
            ("t-web-1", "example.com", A, fwd()),
            // db-1 is only on back.
            ("t-db-1", "web", A, local(&["10.2.0.2"])),
            ("t-db-1", "www", A, local(&["10.2.0.2"])),
            ("t-db-1", "1.web", A, local(&["10.2.0.10"])),
            ("t-db-1", "cache", A, nx()),
            ("t-db-1", "mycache", A, nx()),
            ("t-db-1", "s-cache-1", A, nx()),
            // cache-1 is only on front.
            ("t-cache-1", "www", A, nx()),
            ("t-cache-1", "db", A, nx()),
            ("t-cache-1", "s-cache-1", A, local(&["10.1.0.30"])),
            ("t-cache-1", "mycache", A, local(&["10.1.0.30"])),
            ("t-cache-1", "cache.s", A, local(&["10.1.0.3"])),
            // The other stack sees only its own network.
            ("t-api-1", "api", A, local(&["10.3.0.2"])),
            ("t-api-1", "api.o", A, local(&["10.3.0.2"])),
            ("t-api-1", "tasks.api", A, local(&["10.3.0.10"])),
            ("t-api-1", "web", A, nx()),
            // A task the table does not know sees nothing of ours.
            ("t-unknown", "web", A, nx()),
            ("t-unknown", "example.com", A, fwd()),
        ];
        for (asker, name, qtype, want) in cases {
            assert_eq!(
                answer(&table, asker, name, qtype),
                want,
                "{asker} asks {name} {qtype:?}"
            );
        }
    }

    #[test]
    fn stopped_tasks_leave_task_names_and_vips_stay() {
        let mut set = fixture();
        for t in &mut set.peers {
            if t.id == "t-web-2" || t.id == "t-db-1" {
                t.status.as_mut().unwrap().state = pb::TaskState::Shutdown as i32;
            }
        }
        let table = DnsTable::from_assignments(&set);
        use QueryType::A;
        let cases: Vec<(&str, &str, Answer)> = vec![
            ("t-web-1", "web", local(&["10.1.0.2", "10.2.0.2"])),
            ("t-web-1", "tasks.web", local(&["10.1.0.10", "10.2.0.10"])),
            ("t-web-1", "2.web", Answer::Forward),
            ("t-web-1", "s-web-2", Answer::Forward),
            // dnsrr with no running task: the name is still ours, empty.
            ("t-web-1", "db", local(&[])),
            ("t-web-1", "tasks.db", Answer::Forward),
        ];
        for (asker, name, want) in cases {
            assert_eq!(answer(&table, asker, name, A), want, "{asker} asks {name}");
        }
    }

    #[test]
    fn addresses_parse_from_cidr_and_plain() {
        assert_eq!(addr_of("10.0.0.5/24"), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(addr_of("fd00::5"), Some("fd00::5".parse().unwrap()));
        assert_eq!(addr_of("bogus/24"), None);
    }
}
