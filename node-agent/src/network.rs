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
use flotilla_runtime::net::nat::{self, Protocol, PublishedPort, Vip};
use flotilla_runtime::net::{self, firewall, netns};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The bridge of a network on this node: always the manager's choice (IPAM
/// names it), so every node and every restart of the agent agree.
pub fn bridge_name(net: &pb::Network) -> Result<&str, String> {
    if net.bridge.is_empty() {
        return Err(format!(
            "network {} has no bridge name from the manager",
            net.id
        ));
    }
    Ok(&net.bridge)
}

/// The label carrying a container's name (`<stack>-<service>-<slot>` or
/// `container_name`), for `network_mode: container:NAME`.
pub const LABEL_CONTAINER_NAME: &str = "com.docker.compose.container-name";

/// Compose's `network_mode`: whose network namespace a container uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetMode {
    /// A namespace of its own, attached to its networks (the default).
    Bridge,
    /// The agent's (the host's) namespace.
    Host,
    /// A namespace of its own with only `lo`.
    None,
    /// The namespace of the first running container of service NAME of the
    /// same stack.
    Service(String),
    /// The namespace of the container named (or with id) NAME on this node.
    Container(String),
}

impl NetMode {
    pub fn parse(mode: &str) -> Result<NetMode, String> {
        Ok(match mode {
            "" | "bridge" | "default" => NetMode::Bridge,
            "host" => NetMode::Host,
            "none" => NetMode::None,
            m => match m.split_once(':') {
                Some(("service", n)) if !n.is_empty() => NetMode::Service(n.to_string()),
                Some(("container", n)) if !n.is_empty() => NetMode::Container(n.to_string()),
                _ => {
                    return Err(format!(
                        "network_mode {mode:?} is not supported (use host, none, bridge, service:NAME or container:NAME)"
                    ))
                }
            },
        })
    }

    /// Whether the container has a namespace the agent made and attached.
    pub fn is_bridge(&self) -> bool {
        *self == NetMode::Bridge
    }
}

/// The namespace path a task that does not get its own attached namespace
/// joins: `Ok(None)` for `none` (the runtime makes a fresh one with `lo`).
/// `Err` says which container to share with is missing (the task fails and
/// the restart policy tries again once it runs).
pub fn shared_netns(
    rt: &flotilla_runtime::container::Runtime,
    task: &pb::Task,
    mode: &NetMode,
) -> Result<Option<PathBuf>, String> {
    use crate::executor::{LABEL_SERVICE, LABEL_STACK};
    use flotilla_runtime::container::ContainerState;
    let running_pid = |pred: &dyn Fn(&flotilla_runtime::container::ContainerInfo) -> bool| {
        let mut found: Vec<_> = rt
            .list()
            .map_err(|e| format!("listing containers: {e}"))?
            .into_iter()
            .filter(|c| c.state == ContainerState::Running && c.pid.is_some() && pred(c))
            .collect();
        // "The first" is the one that has run longest.
        found.sort_by_key(|c| (c.started_at, c.id.clone()));
        Ok::<_, String>(found.first().and_then(|c| c.pid))
    };
    let pid = match mode {
        NetMode::Bridge => return Ok(None),
        NetMode::None => return Ok(None),
        // The agent runs in the host's namespace (or in the one it was
        // started in, on a testbed "host").
        NetMode::Host => {
            return Ok(Some(PathBuf::from(format!(
                "/proc/{}/ns/net",
                std::process::id()
            ))))
        }
        NetMode::Service(name) => running_pid(&|c| {
            c.labels.get(LABEL_STACK) == Some(&task.stack)
                && c.labels.get(LABEL_SERVICE) == Some(name)
        })?
        .ok_or_else(|| {
            format!(
                "network_mode service:{name}: no running container of service {name} on this node"
            )
        })?,
        NetMode::Container(name) => running_pid(&|c| {
            c.labels.get(LABEL_CONTAINER_NAME) == Some(name)
                || (name.len() >= 12 && c.id.starts_with(name.as_str()))
        })?
        .ok_or_else(|| {
            format!("network_mode container:{name}: no running container {name} on this node")
        })?,
    };
    Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/net"))))
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
        let bridge = bridge_name(net)?.to_string();
        let prefix = net.subnet.split('/').nth(1).unwrap_or("24");
        ctx.netlink
            .ensure_bridge(&bridge, &format!("{}/{prefix}", net.gateway), None)
            .await
            .map_err(|e| format!("setting up bridge {bridge} for network {}: {e}", net.id))?;
        let v6 = !net.subnet_v6.is_empty();
        if v6 {
            if !firewall::ipv6_available() {
                return Err(format!(
                    "network {} has enable_ipv6, but IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6 = 1)",
                    net.id
                ));
            }
            let prefix6 = net.subnet_v6.split('/').nth(1).unwrap_or("64");
            ctx.netlink
                .add_address_v6(&bridge, &format!("{}/{prefix6}", net.gateway_v6))
                .await
                .map_err(|e| {
                    format!(
                        "IPv6 gateway on bridge {bridge} for network {}: {e}",
                        net.id
                    )
                })?;
        }
        let internal = net.spec.as_ref().is_some_and(|s| s.internal);
        let (br, subnet) = (bridge.clone(), net.subnet.clone());
        let subnet_v6 = v6.then(|| net.subnet_v6.clone());
        tokio::task::spawn_blocking(move || {
            firewall::ensure_base()?;
            if subnet_v6.is_some() {
                firewall::enable_ipv6_forward()?;
            }
            firewall::add_network_dual(&br, &subnet, subnet_v6.as_deref(), internal)?;
            // Published ports reached from 127.0.0.1 are routed out here.
            nat::enable_route_localnet(&br)
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
            .attach_as(
                &bridge,
                &host_if,
                netns_path,
                &format!("eth{i}"),
                addr,
                gateway,
                &mac,
            )
            .await
            .map_err(|e| format!("attaching to network {}: {e}", net.id))?;
        if let Some(addr6) = att.addresses.iter().find(|a| a.contains(':')) {
            let gateway6 = if i == 0 { net.gateway_v6.as_str() } else { "" };
            ctx.netlink
                .attach_v6(netns_path, &format!("eth{i}"), addr6, gateway6)
                .await
                .map_err(|e| format!("IPv6 address on network {}: {e}", net.id))?;
        }
    }
    Ok(())
}

/// Removes the task's veths and network namespace (safe to repeat).
pub async fn teardown_task(ctx: &OpContext, task_id: &str) {
    teardown_netns(ctx, &short(task_id)).await;
}

/// Removes the namespace called `name` (a task's short id) and its veths.
pub async fn teardown_netns(ctx: &OpContext, name: &str) {
    // Removing one end of a veth removes both; the namespace would take
    // them along too, but only once nothing holds it.
    for i in 0..MAX_ATTACHMENTS {
        if let Some(ifname) = host_ifname_of(name, i) {
            let _ = ctx.netlink.delete_link(&ifname).await;
        }
    }
    let dir = ctx.netns_dir();
    let n = name.to_string();
    let r = tokio::task::spawn_blocking(move || netns::remove(&dir, &n)).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(netns = %name, "removing network namespace: {e}");
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

/// [`host_ifname`] from the namespace name (the task's short id).
fn host_ifname_of(netns_name: &str, i: usize) -> Option<String> {
    Some(format!("vf{}{}", netns_name.get(..10)?, i))
}

/// Writes the files the container sees as /etc/hosts, /etc/hostname and
/// /etc/resolv.conf, and returns the bind mounts for them.
///
/// A container in a namespace the agent serves DNS in (bridge mode, or
/// sharing another container's) asks the embedded server at 127.0.0.11
/// for every name, so its /etc/hosts has only itself and `extra_hosts`
/// (peers listed there would shadow the VIP and go stale on a scale). In
/// `host` and `none` mode it gets the host's resolvers.
pub fn write_task_files(
    dir: &Path,
    task: &pb::Task,
    services: &[pb::Service],
    hostname: &str,
    spec: &pb::ServiceSpec,
) -> std::io::Result<Vec<BindMount>> {
    std::fs::create_dir_all(dir)?;
    let embedded_dns = !matches!(
        NetMode::parse(&spec.network_mode),
        Ok(NetMode::Host | NetMode::None)
    );
    let hosts = dir.join("hosts");
    let peers = if embedded_dns { &[][..] } else { services };
    std::fs::write(&hosts, process::hosts_file(task, peers))?;
    let hostname_file = dir.join("hostname");
    std::fs::write(&hostname_file, format!("{hostname}\n"))?;
    let resolv = dir.join("resolv.conf");
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let conf = if embedded_dns {
        crate::dns::container_resolv_conf(&host_resolv, &spec.dns_search, &spec.dns_opt)
    } else {
        process::resolv_conf(&host_resolv, &spec.dns, &spec.dns_search, &spec.dns_opt)
    };
    std::fs::write(&resolv, conf)?;
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

// ---------------------------------------------------------------------------
// Published ports and service VIPs.
//
// The kernel's port space is one per host, so the book of reserved host
// ports is one per process (an agent is one per host).

/// A host port as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub protocol: Protocol,
    pub host_ip: Option<Ipv4Addr>,
    pub port: u16,
}

impl std::fmt::Display for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(f, "{ip}:{}/{}", self.port, self.protocol)
    }
}

/// A reserved host port: the service publishing it, and a socket bound
/// (never listening) to it so no other program can take it while the DNAT
/// rule sends its traffic to containers.
struct Reservation {
    service_id: String,
    _socket: OwnedFd,
}

static PORT_BOOK: Mutex<BTreeMap<PortKey, Reservation>> = Mutex::new(BTreeMap::new());

fn port_book() -> std::sync::MutexGuard<'static, BTreeMap<PortKey, Reservation>> {
    PORT_BOOK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The host ports a service spec publishes (random ports are not resolved
/// here and are left out).
pub fn published_keys(spec: &pb::ServiceSpec) -> Result<Vec<(PortKey, u16)>, String> {
    let mut out = Vec::new();
    // Only a container with its own attached namespace can be reached
    // through a published port (Compose ignores `ports` with host mode and
    // refuses them when sharing another container's namespace).
    if !NetMode::parse(&spec.network_mode).is_ok_and(|m| m.is_bridge()) {
        return Ok(out);
    }
    for p in &spec.ports {
        if p.published == 0 {
            continue;
        }
        let protocol = match pb::Protocol::try_from(p.protocol) {
            Ok(pb::Protocol::Tcp) => Protocol::Tcp,
            Ok(pb::Protocol::Udp) => Protocol::Udp,
            _ => {
                return Err(format!(
                    "service {}: published port {}: only tcp and udp can be published",
                    spec.name, p.published
                ))
            }
        };
        let host_ip = match p.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            s => Some(s.parse::<Ipv4Addr>().map_err(|_| {
                format!(
                    "service {}: published port {}: host_ip {s:?} is not an IPv4 address",
                    spec.name, p.published
                )
            })?),
        };
        let port = u16::try_from(p.published).map_err(|_| {
            format!(
                "service {}: published port {} is out of range",
                spec.name, p.published
            )
        })?;
        let target = u16::try_from(p.target).map_err(|_| {
            format!(
                "service {}: target port {} is out of range",
                spec.name, p.target
            )
        })?;
        out.push((
            PortKey {
                protocol,
                host_ip,
                port,
            },
            target,
        ));
    }
    Ok(out)
}

/// Binds (without listening) a socket to `key` on the host.
fn reserve(key: &PortKey) -> Result<OwnedFd, nix::Error> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let ty = match key.protocol {
        Protocol::Tcp => SockType::Stream,
        Protocol::Udp => SockType::Datagram,
    };
    let fd = socket(AddressFamily::Inet, ty, SockFlag::SOCK_CLOEXEC, None)?;
    let ip = key.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: key.port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `fd` is an open socket we own; `addr` is a fully initialised
    // sockaddr_in that outlives the call, and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(nix::Error::last());
    }
    Ok(fd)
}

/// Reserves the host ports `task` publishes, or says which one is taken
/// (by another service, or by a program on the host) before anything of the
/// task is made. Replicas of one service share their ports.
pub fn reserve_ports(task: &pb::Task) -> Result<(), String> {
    let Some(spec) = task.spec.as_ref() else {
        return Ok(());
    };
    let keys = published_keys(spec)?;
    let mut book = port_book();
    for (key, _) in keys {
        if let Some(r) = book.get(&key) {
            if r.service_id == task.service_id {
                continue;
            }
            return Err(format!(
                "cannot publish {key} for service {}: already published by service {}",
                task.service_id, r.service_id
            ));
        }
        // A wildcard and a specific address of the same port collide too.
        if let Some((other, r)) = book.iter().find(|(k, r)| {
            k.protocol == key.protocol
                && k.port == key.port
                && (k.host_ip.is_none() || key.host_ip.is_none())
                && r.service_id != task.service_id
        }) {
            return Err(format!(
                "cannot publish {key} for service {}: {other} is already published by service {}",
                task.service_id, r.service_id
            ));
        }
        let socket = reserve(&key).map_err(|e| {
            format!(
                "cannot publish {key} for service {}: the port is already in use on this host ({e})",
                task.service_id
            )
        })?;
        book.insert(
            key,
            Reservation {
                service_id: task.service_id.clone(),
                _socket: socket,
            },
        );
    }
    Ok(())
}

/// A task whose traffic may be sent to it: running as far as the manager
/// knows, not unhealthy, and meant to run.
/// The label the manager puts on one-off tasks (`flotilla run`): they run
/// with a service's configuration but never serve its VIP or ports.
const LABEL_ONEOFF: &str = "flotilla.oneoff";

fn is_oneoff(t: &pb::Task) -> bool {
    t.meta
        .as_ref()
        .and_then(|m| m.labels.get(LABEL_ONEOFF))
        .is_some_and(|v| v == "true")
}

fn is_backend(t: &pb::Task) -> bool {
    if is_oneoff(t) {
        return false;
    }
    let Some(st) = t.status.as_ref() else {
        return false;
    };
    st.state() == pb::TaskState::Running
        && st.health() != pb::HealthState::Unhealthy
        && t.desired_state() == pb::TaskState::Running
}

fn task_ip_on(t: &pb::Task, network_id: &str) -> Option<Ipv4Addr> {
    t.networks
        .iter()
        .find(|a| a.network_id == network_id)
        .and_then(|a| a.addresses.first())
        .and_then(|a| process::strip_prefix_len(a).parse().ok())
}

/// Everything this node's address translation should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    pub ports: Vec<PublishedPort>,
    /// Per local task's network namespace, the VIPs it can reach.
    pub vips: BTreeMap<PathBuf, Vec<Vip>>,
}

/// Computes the node's published ports and per-container VIPs from its
/// tasks (`local`), every task of their stacks (`peers`, with the manager's
/// view of their state and health) and their services.
pub fn nat_state(
    netns_dir: &Path,
    local: &[&pb::Task],
    peers: &[pb::Task],
    services: &[pb::Service],
) -> NatState {
    let node_id = local.first().map(|t| t.node_id.as_str()).unwrap_or("");
    let local_services: HashSet<&str> = local.iter().map(|t| t.service_id.as_str()).collect();
    let backends: HashMap<&str, Vec<&pb::Task>> =
        peers
            .iter()
            .filter(|t| is_backend(t))
            .fold(HashMap::new(), |mut m, t| {
                m.entry(t.service_id.as_str()).or_default().push(t);
                m
            });
    let mut state = NatState::default();
    for svc in services {
        if !local_services.contains(svc.id.as_str()) {
            continue;
        }
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Ok(keys) = published_keys(spec) else {
            continue;
        };
        let mut ips: Vec<Ipv4Addr> = backends
            .get(svc.id.as_str())
            .into_iter()
            .flatten()
            .filter(|t| t.node_id == node_id)
            .filter_map(|t| {
                let first = t.networks.first()?;
                task_ip_on(t, &first.network_id)
            })
            .collect();
        ips.sort();
        for (key, target) in keys {
            state.ports.push(PublishedPort {
                protocol: key.protocol,
                host_ip: key.host_ip,
                host_port: key.port,
                target_port: target,
                backends: ips.clone(),
            });
        }
    }
    state.ports.sort();
    for t in local {
        let nets: HashSet<&str> = t.networks.iter().map(|n| n.network_id.as_str()).collect();
        let mut vips = Vec::new();
        for svc in services.iter().filter(|s| s.stack == t.stack) {
            let dnsrr = svc
                .spec
                .as_ref()
                .is_some_and(|s| s.endpoint_mode == "dnsrr");
            if dnsrr {
                continue;
            }
            for v in svc
                .vips
                .iter()
                .filter(|v| nets.contains(v.network_id.as_str()))
            {
                let Ok(address) = process::strip_prefix_len(&v.address).parse() else {
                    continue;
                };
                let mut ips: Vec<Ipv4Addr> = backends
                    .get(svc.id.as_str())
                    .into_iter()
                    .flatten()
                    .filter_map(|b| task_ip_on(b, &v.network_id))
                    .collect();
                ips.sort();
                vips.push(Vip {
                    address,
                    backends: ips,
                });
            }
        }
        vips.sort();
        state.vips.insert(netns_dir.join(short(&t.id)), vips);
    }
    // Reservations of services with no task here any more are released.
    port_book().retain(|_, r| local_services.contains(r.service_id.as_str()));
    state
}

/// The tag of an agent's published-port rules: derived from its state
/// directory, so a restarted agent replaces its predecessor's rules.
pub fn owner_tag(state_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state_dir.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Keeps the kernel's address translation equal to the latest [`NatState`]:
/// a worker applies each new state, changing only what differs (per
/// container namespace, keyed by its inode so a recreated namespace is
/// programmed again).
pub struct NatSync {
    tx: tokio::sync::watch::Sender<NatState>,
}

impl NatSync {
    /// Starts the worker (on the current tokio runtime). `owner` tags this
    /// agent's published-port rules ([`owner_tag`]).
    pub fn start(owner: String) -> NatSync {
        let (tx, mut rx) = tokio::sync::watch::channel(NatState::default());
        tokio::spawn(async move {
            let owner = owner;
            let mut applied_ports: Option<Vec<PublishedPort>> = None;
            let mut applied_vips: HashMap<PathBuf, (u64, Vec<Vip>)> = HashMap::new();
            while rx.changed().await.is_ok() {
                let want = rx.borrow_and_update().clone();
                let ports =
                    (applied_ports.as_ref() != Some(&want.ports)).then(|| want.ports.clone());
                let mut todo = Vec::new();
                for (path, vips) in &want.vips {
                    let ino = match std::fs::metadata(path) {
                        Ok(m) if netns::is_netns_mount(path) => {
                            std::os::unix::fs::MetadataExt::ino(&m)
                        }
                        // Not made yet (or gone): programmed once it exists.
                        _ => continue,
                    };
                    if applied_vips.get(path) != Some(&(ino, vips.clone())) {
                        todo.push((path.clone(), ino, vips.clone()));
                    }
                }
                applied_vips.retain(|p, _| want.vips.contains_key(p));
                let owner = owner.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let ports_result = ports.map(|p| {
                        let r = nat::sync_published_ports(&owner, &p);
                        (p, r)
                    });
                    let vip_results: Vec<_> = todo
                        .into_iter()
                        .map(|(path, ino, vips)| {
                            let r = nat::sync_vips(&path, &vips);
                            (path, ino, vips, r)
                        })
                        .collect();
                    (ports_result, vip_results)
                })
                .await;
                let Ok((ports_result, vip_results)) = r else {
                    continue;
                };
                if let Some((p, r)) = ports_result {
                    match r {
                        Ok(()) => applied_ports = Some(p),
                        Err(e) => tracing::warn!("programming published ports: {e}"),
                    }
                }
                for (path, ino, vips, r) in vip_results {
                    match r {
                        Ok(()) => {
                            applied_vips.insert(path, (ino, vips));
                        }
                        // The container may have gone meanwhile.
                        Err(e) => tracing::debug!("programming VIPs in {}: {e}", path.display()),
                    }
                }
            }
        });
        NatSync { tx }
    }

    /// Asks the worker to make the kernel match `state` (cheap; the latest
    /// state wins).
    pub fn update(&self, state: NatState) {
        self.tx.send_replace(state);
    }
}

/// Recomputes the node's address translation from the executor's view and
/// hands it to the worker: called after every change the executor sees.
pub fn sync_nat<'a>(
    nat_sync: &NatSync,
    netns_dir: &Path,
    local: impl Iterator<Item = &'a pb::Task>,
    peers: &[pb::Task],
    services: &[pb::Service],
) {
    let local: Vec<&pb::Task> = local
        .filter(|t| t.desired_state() == pb::TaskState::Running)
        .collect();
    nat_sync.update(nat_state(netns_dir, &local, peers, services));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, svc: &str, node: &str, ip: &str, running: bool) -> pb::Task {
        pb::Task {
            id: id.into(),
            stack: "s".into(),
            service_id: format!("s_{svc}"),
            service_name: svc.into(),
            node_id: node.into(),
            desired_state: pb::TaskState::Running as i32,
            status: Some(pb::TaskStatus {
                state: if running {
                    pb::TaskState::Running
                } else {
                    pb::TaskState::Shutdown
                } as i32,
                ..Default::default()
            }),
            networks: vec![pb::NetworkAttachment {
                network_id: "n1".into(),
                addresses: vec![format!("{ip}/24")],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn service(name: &str, vip: &str, ports: Vec<pb::PortConfig>) -> pb::Service {
        pb::Service {
            id: format!("s_{name}"),
            stack: "s".into(),
            spec: Some(pb::ServiceSpec {
                name: name.into(),
                ports,
                ..Default::default()
            }),
            vips: vec![pb::EndpointAddress {
                network_id: "n1".into(),
                address: format!("{vip}/24"),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn vips_and_ports_follow_running_tasks() {
        let web1 = task("w1", "web", "node1", "10.9.0.2", true);
        let web2 = task("w2", "web", "node1", "10.9.0.3", false);
        let web3 = task("w3", "web", "node2", "10.9.0.4", true);
        let client = task("c1", "client", "node1", "10.9.0.5", true);
        let services = vec![
            service(
                "web",
                "10.9.0.100",
                vec![pb::PortConfig {
                    target: 80,
                    published: 8080,
                    ..Default::default()
                }],
            ),
            service("client", "10.9.0.101", vec![]),
        ];
        let peers = vec![web1.clone(), web2.clone(), web3, client.clone()];
        let local = [&web1, &web2, &client];
        let st = nat_state(Path::new("/ns"), &local, &peers, &services);
        // The published port goes to this node's running task only.
        assert_eq!(
            st.ports,
            vec![PublishedPort {
                protocol: Protocol::Tcp,
                host_ip: None,
                host_port: 8080,
                target_port: 80,
                backends: vec!["10.9.0.2".parse().unwrap()],
            }]
        );
        // The VIP spreads over every running task, wherever it runs.
        let vips = &st.vips[&Path::new("/ns").join(short("c1"))];
        let web_vip = vips
            .iter()
            .find(|v| v.address == "10.9.0.100".parse::<Ipv4Addr>().unwrap())
            .unwrap();
        assert_eq!(
            web_vip.backends,
            vec![
                "10.9.0.2".parse::<Ipv4Addr>().unwrap(),
                "10.9.0.4".parse().unwrap()
            ]
        );
    }

    #[test]
    fn one_off_tasks_never_serve_the_vip_or_ports() {
        let web1 = task("w1", "web", "node1", "10.9.0.2", true);
        let mut run = task("r1", "web", "node1", "10.9.0.9", true);
        run.meta = Some(pb::Meta {
            labels: [(LABEL_ONEOFF.to_string(), "true".to_string())].into(),
            ..Default::default()
        });
        let services = vec![service(
            "web",
            "10.9.0.100",
            vec![pb::PortConfig {
                target: 80,
                published: 8080,
                ..Default::default()
            }],
        )];
        let peers = vec![web1.clone(), run.clone()];
        let local = [&web1, &run];
        let st = nat_state(Path::new("/ns"), &local, &peers, &services);
        assert_eq!(
            st.ports[0].backends,
            vec!["10.9.0.2".parse::<Ipv4Addr>().unwrap()]
        );
        let vip = &st.vips[&Path::new("/ns").join(short("w1"))][0];
        assert_eq!(vip.backends, vec!["10.9.0.2".parse::<Ipv4Addr>().unwrap()]);
    }

    #[test]
    fn published_keys_parse_host_ip_and_protocol() {
        let spec = pb::ServiceSpec {
            name: "web".into(),
            ports: vec![
                pb::PortConfig {
                    target: 53,
                    published: 5353,
                    protocol: pb::Protocol::Udp as i32,
                    host_ip: "127.0.0.1".into(),
                    ..Default::default()
                },
                pb::PortConfig {
                    target: 9,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let keys = published_keys(&spec).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].0.to_string(), "127.0.0.1:5353/udp");
        assert_eq!(keys[0].1, 53);
        let bad = pb::ServiceSpec {
            ports: vec![pb::PortConfig {
                target: 1,
                published: 1,
                host_ip: "nope".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(published_keys(&bad).unwrap_err().contains("host_ip"));
    }
}
