//! Real-kernel tests of the network primitives (`flotilla_runtime::net`).
//! They need root, `nsenter`/`ip` (util-linux, iproute2), `nft` and
//! /bin/busybox (ping).
//!
//! Every name starts with `ft<pid>x<n>` so leftovers of a killed run are
//! recognised (their pid is gone) and removed at the next start. Traffic
//! goes only between namespaces these tests create. Tests that change
//! forwarding or nftables run inside a private "host" namespace (a sandbox)
//! so the real host's ruleset and forwarding are never touched; only
//! `bridge_connects_two_namespaces_and_gateway` and the netns test use the
//! real host namespace, and they add no firewall rules. All tests run one at
//! a time (`SERIAL`), because some of them make traffic fail on purpose.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use flotilla_runtime::net::{firewall, mac_for, netns, NetError, Netlink};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();
const NS_DIR: &str = "/run/flotilla-test-netns";
const SIM_COMMENT: &str = "flotilla-test-docker-sim";

fn setup() -> String {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the net tests need root (netns, links, nftables)"
    );
    SWEEP.call_once(sweep_leftovers);
    format!(
        "ft{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The pid in a test name `ft<pid>x...`, if it is one.
fn test_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ft")?;
    let (pid, _) = rest.split_once('x')?;
    pid.parse().ok()
}

fn is_leftover(name: &str) -> bool {
    test_pid(name).is_some_and(|pid| {
        pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// Removes links, namespaces and firewall rules of earlier runs that were
/// killed before their guards ran.
fn sweep_leftovers() {
    for name in netns::list(Path::new(NS_DIR)).unwrap() {
        if is_leftover(&name) {
            netns::remove(Path::new(NS_DIR), &name).unwrap();
        }
    }
    let out = Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for link in links.as_array().unwrap() {
        let name = link["ifname"].as_str().unwrap_or_default();
        if is_leftover(name) {
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
    }
    for bridge in firewall::list_networks().unwrap() {
        if is_leftover(&bridge) {
            firewall::remove_network(&bridge).unwrap();
        }
    }
}

/// A network namespace under NS_DIR, removed on drop.
struct Ns {
    name: String,
    path: PathBuf,
}

impl Ns {
    fn new(name: String) -> Ns {
        let path = netns::create(Path::new(NS_DIR), &name).unwrap();
        Ns { name, path }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::remove(Path::new(NS_DIR), &self.name);
    }
}

/// A link in the dropping thread's namespace, deleted on drop.
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        // Usually already gone: removing a namespace takes its veth pair with it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Firewall rules of one bridge, removed on drop.
struct RulesGuard(String);

impl Drop for RulesGuard {
    fn drop(&mut self) {
        let _ = firewall::remove_network(&self.0);
    }
}

/// Runs `f` on a thread inside a fresh namespace that plays the host, so
/// forwarding and nftables changes stay out of the real host.
fn in_sandbox<T: Send>(p: &str, f: impl FnOnce() -> T + Send) -> T {
    let host = Ns::new(format!("{p}H"));
    netns::run_in(&host.path, f).unwrap()
}

fn ip_json(ns: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("ip")
        .arg("-j")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?} in {}: {}",
        ns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ping_cmd(ns: &Path, ip: Ipv4Addr, count: u32) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args([
            "/bin/busybox",
            "ping",
            "-q",
            "-c",
            &count.to_string(),
            "-W",
            "2",
            &ip.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Whether `ip` answers a ping from inside `ns` (a few tries: neighbour
/// resolution on a fresh link can eat the first echo).
fn ping(ns: &Path, ip: Ipv4Addr) -> bool {
    (0..4).any(|_| ping_cmd(ns, ip, 1))
}

/// Whether two echoes to `ip` from `ns` both go unanswered.
fn ping_blocked(ns: &Path, ip: Ipv4Addr) -> bool {
    !ping_cmd(ns, ip, 2)
}

/// A TCP round trip: a server in `server_ns` on `server_ip`, a client in
/// `client_ns`. Returns the client address the server saw.
fn tcp_roundtrip(server_ns: &Path, server_ip: Ipv4Addr, client_ns: &Path) -> SocketAddr {
    let listener = netns::run_in(server_ns, || TcpListener::bind((server_ip, 0)))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf)?;
        assert_eq!(&buf, b"ping!");
        conn.write_all(b"pong!")?;
        Ok(peer)
    });
    let reply = netns::run_in(client_ns, || -> std::io::Result<[u8; 5]> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(b"ping!")?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf)?;
        Ok(buf)
    })
    .unwrap()
    .unwrap();
    assert_eq!(&reply, b"pong!");
    server.join().unwrap().unwrap()
}

fn parse_v4_route(cidr: &str) -> Option<(u32, u32)> {
    let (a, l) = cidr.split_once('/')?;
    Some((u32::from(a.parse::<Ipv4Addr>().ok()?), l.parse().ok()?))
}

/// A third octet `x` such that 10.213.x.0/24 overlaps no host route.
fn pick_subnet(routes: &[String]) -> u8 {
    let start = (std::process::id() % 256) as u8;
    (0..=255u8)
        .map(|i| start.wrapping_add(i))
        .find(|&x| {
            let net = u32::from(Ipv4Addr::new(10, 213, x, 0));
            routes
                .iter()
                .filter_map(|r| parse_v4_route(r))
                .all(|(r, len)| {
                    let common = len.min(24);
                    let mask = if common == 0 {
                        0
                    } else {
                        u32::MAX << (32 - common)
                    };
                    (r & mask) != (net & mask)
                })
        })
        .expect("no free 10.213.x.0/24")
}

fn ruleset() -> String {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft script failed:\n{script}"
    );
}

fn nft_ok(args: &[&str]) -> bool {
    Command::new("nft")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A container: namespace plus veth on `bridge`, at `10.213.<x>.<host>`.
struct Container {
    ns: Ns,
    ip: Ipv4Addr,
    _veth: LinkGuard,
}

async fn container(
    nl: &Netlink,
    p: &str,
    tag: &str,
    bridge: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Container {
    let ns = Ns::new(format!("{p}{tag}"));
    let host_if = format!("{p}{tag}");
    let veth = LinkGuard(host_if.clone());
    nl.attach(
        bridge,
        &host_if,
        &ns.path,
        &format!("{ip}/{prefix}"),
        &gateway.to_string(),
        &mac_for(ip),
    )
    .await
    .unwrap();
    Container {
        ns,
        ip,
        _veth: veth,
    }
}

#[test]
fn netns_create_list_remove() {
    let _serial = SERIAL.blocking_lock();
    let p = setup();
    let dir = Path::new(NS_DIR);
    let name = format!("{p}n");
    let ns = Ns::new(name.clone());
    assert!(netns::is_netns_mount(&ns.path));
    assert!(netns::list(dir).unwrap().contains(&name));
    // lo is up inside, and it is a different namespace from ours.
    let lo = ip_json(&ns.path, &["link", "show", "dev", "lo"]);
    assert!(
        lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{lo}"
    );
    let inside = netns::run_in(&ns.path, || {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    })
    .unwrap();
    assert_ne!(
        inside,
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    );
    // Creating it again refuses rather than silently reusing a live namespace.
    assert!(matches!(
        netns::create(dir, &name),
        Err(NetError::Exists { .. })
    ));
    netns::remove(dir, &name).unwrap();
    assert!(!ns.path.exists());
    assert!(!netns::list(dir).unwrap().contains(&name));
    netns::remove(dir, &name).unwrap();
    assert!(netns::create(dir, "a/b").is_err());
}

#[test]
fn bridge_connects_two_namespaces_and_gateway() {
    let _serial = SERIAL.blocking_lock();
    let p = setup();
    rt().block_on(async {
        let nl = Netlink::connect().await.unwrap();
        let x = pick_subnet(&nl.host_routes().await.unwrap());
        let gw = Ipv4Addr::new(10, 213, x, 1);
        let br = format!("{p}b");
        let _br = LinkGuard(br.clone());
        nl.ensure_bridge(&br, &format!("{gw}/24"), None)
            .await
            .unwrap();
        assert!(nl.link_exists(&br).await.unwrap());
        assert!(nl
            .host_routes()
            .await
            .unwrap()
            .contains(&format!("10.213.{x}.0/24")));

        let c1 = container(&nl, &p, "c1", &br, Ipv4Addr::new(10, 213, x, 2), gw, 24).await;
        let c2 = container(&nl, &p, "c2", &br, Ipv4Addr::new(10, 213, x, 3), gw, 24).await;

        // eth0 inside has the MAC and address we gave, and a default route via the gateway.
        let eth0 = ip_json(&c1.ns.path, &["addr", "show", "dev", "eth0"]);
        assert_eq!(eth0[0]["address"], mac_for(c1.ip), "{eth0}");
        let addrs = eth0[0]["addr_info"].as_array().unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a["local"] == c1.ip.to_string() && a["prefixlen"] == 24),
            "{eth0}"
        );
        let default = ip_json(&c1.ns.path, &["route", "show", "default"]);
        assert_eq!(default[0]["gateway"], gw.to_string(), "{default}");
        assert_eq!(default[0]["dev"], "eth0", "{default}");
        // Host end is on the bridge.
        let host_end = ip_json(
            Path::new("/proc/self/ns/net"),
            &["link", "show", "dev", &format!("{p}c1")],
        );
        assert_eq!(host_end[0]["master"], br.as_str(), "{host_end}");

        assert!(ping(&c1.ns.path, c2.ip), "c1 -> c2");
        assert!(ping(&c2.ns.path, c1.ip), "c2 -> c1");
        assert!(ping(&c1.ns.path, gw), "c1 -> gateway");
        let peer = tcp_roundtrip(&c1.ns.path, c1.ip, &c2.ns.path);
        assert_eq!(peer.ip(), IpAddr::V4(c2.ip));

        // Deleting the host end detaches the container: its eth0 is gone too.
        nl.delete_link(&format!("{p}c1")).await.unwrap();
        assert!(!nl.link_exists(&format!("{p}c1")).await.unwrap());
        let links = ip_json(&c1.ns.path, &["link", "show"]);
        assert!(
            links
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["ifname"] != "eth0"),
            "{links}"
        );
        nl.delete_link(&format!("{p}c1")).await.unwrap();

        nl.delete_link(&br).await.unwrap();
        assert!(!nl.link_exists(&br).await.unwrap());
        assert!(!nl
            .host_routes()
            .await
            .unwrap()
            .contains(&format!("10.213.{x}.0/24")));
    });
}

#[test]
fn ensure_bridge_and_attach_are_idempotent() {
    let _serial = SERIAL.blocking_lock();
    let p = setup();
    in_sandbox(&p, || {
        rt().block_on(async {
            let nl = Netlink::connect().await.unwrap();
            let br = format!("{p}b");
            nl.ensure_bridge(&br, "10.213.7.1/24", Some(1400))
                .await
                .unwrap();
            nl.ensure_bridge(&br, "10.213.7.1/24", Some(1400))
                .await
                .unwrap();
            let here = Path::new("/proc/thread-self/ns/net");
            let link = ip_json(here, &["addr", "show", "dev", &br]);
            assert_eq!(link[0]["mtu"], 1400, "{link}");
            let bridge_mac = link[0]["address"].as_str().unwrap().to_string();
            let first = u8::from_str_radix(&bridge_mac[..2], 16).unwrap();
            assert_eq!(
                first & 3,
                2,
                "locally administered unicast MAC {bridge_mac}"
            );
            let v4: Vec<_> = link[0]["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["family"] == "inet")
                .collect();
            assert_eq!(v4.len(), 1, "{link}");

            // A new gateway replaces the old one rather than adding a second.
            nl.ensure_bridge(&br, "10.213.8.1/24", Some(1400))
                .await
                .unwrap();
            let link = ip_json(here, &["addr", "show", "dev", &br]);
            let v4: Vec<_> = link[0]["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["family"] == "inet")
                .collect();
            assert_eq!(v4.len(), 1, "{link}");
            assert_eq!(v4[0]["local"], "10.213.8.1", "{link}");
            let routes = nl.host_routes().await.unwrap();
            assert!(routes.contains(&"10.213.8.0/24".to_string()), "{routes:?}");
            assert!(!routes.contains(&"10.213.7.0/24".to_string()), "{routes:?}");

            // A non-bridge of that name is refused.
            let dummy = format!("{p}d");
            let peer = format!("{p}e");
            assert!(Command::new("ip")
                .args(["link", "add", &dummy, "type", "veth", "peer", "name", &peer])
                .status()
                .unwrap()
                .success());
            assert!(matches!(
                nl.ensure_bridge(&dummy, "10.213.9.1/24", None).await,
                Err(NetError::NotABridge { .. })
            ));

            // Attaching twice (a retry after a crash) replaces the old veth.
            let gw = Ipv4Addr::new(10, 213, 8, 1);
            let c1 = container(&nl, &p, "c1", &br, Ipv4Addr::new(10, 213, 8, 2), gw, 24).await;
            let c2 = container(&nl, &p, "c2", &br, Ipv4Addr::new(10, 213, 8, 3), gw, 24).await;
            nl.attach(
                &br,
                &format!("{p}c1"),
                &c1.ns.path,
                "10.213.8.2/24",
                "10.213.8.1",
                &mac_for(c1.ip),
            )
            .await
            .unwrap();
            let eth0 = ip_json(&c1.ns.path, &["link", "show", "dev", "eth0"]);
            assert_eq!(eth0[0]["mtu"], 1400, "veth takes the bridge's MTU: {eth0}");
            assert!(ping(&c2.ns.path, c1.ip));
            let link = ip_json(here, &["link", "show", "dev", &br]);
            assert_eq!(
                link[0]["address"],
                bridge_mac.as_str(),
                "the bridge keeps its MAC as ports come and go"
            );

            // Bad input is refused before anything is created.
            assert!(nl
                .attach(
                    &br,
                    "this-name-is-too-long",
                    &c1.ns.path,
                    "10.213.8.4/24",
                    "10.213.8.1",
                    "02:42:00:00:00:01"
                )
                .await
                .is_err());
            assert!(nl
                .attach(
                    &br,
                    &format!("{p}c3"),
                    &c1.ns.path,
                    "10.213.8.4",
                    "10.213.8.1",
                    "02:42:00:00:00:01"
                )
                .await
                .is_err());
            assert!(nl
                .attach(
                    "nosuchbridge0",
                    &format!("{p}c3"),
                    &c1.ns.path,
                    "10.213.8.4/24",
                    "10.213.8.1",
                    "02:42:00:00:00:01"
                )
                .await
                .is_err());
            // eth0 already exists in c1's namespace: creation fails and leaves no host end behind.
            assert!(nl
                .attach(
                    &br,
                    &format!("{p}c3"),
                    &c1.ns.path,
                    "10.213.8.4/24",
                    "10.213.8.1",
                    "02:42:00:00:00:01"
                )
                .await
                .is_err());
            assert!(!nl.link_exists(&format!("{p}c3")).await.unwrap());
        })
    });
}

#[test]
fn firewall_rules_are_added_and_removed_exactly() {
    let _serial = SERIAL.blocking_lock();
    let p = setup();
    in_sandbox(&p, || {
        firewall::ensure_base().unwrap();
        let before = ruleset();
        assert!(before.contains("table inet flotilla"), "{before}");
        let (a, b) = (format!("{p}a"), format!("{p}b"));
        let _ga = RulesGuard(a.clone());
        let _gb = RulesGuard(b.clone());

        firewall::add_network(&a, "10.213.1.0/24", false).unwrap();
        let once = ruleset();
        firewall::add_network(&a, "10.213.1.0/24", false).unwrap();
        assert_eq!(ruleset(), once, "add_network is idempotent");
        assert!(
            once.contains(&format!(
                "ip saddr 10.213.1.0/24 oifname != \"{a}\" masquerade"
            )),
            "{once}"
        );

        firewall::add_network(&b, "10.213.2.5/24", true).unwrap();
        let both = ruleset();
        assert!(
            !both.contains("10.213.2.0/24"),
            "internal networks are not masqueraded: {both}"
        );
        assert_eq!(
            firewall::list_networks().unwrap(),
            vec![a.clone(), b.clone()]
        );

        firewall::remove_network(&a).unwrap();
        assert_eq!(firewall::list_networks().unwrap(), vec![b.clone()]);
        firewall::remove_network(&b).unwrap();
        firewall::remove_network(&b).unwrap();
        assert_eq!(ruleset(), before);
        assert!(firewall::list_networks().unwrap().is_empty());

        assert!(firewall::add_network("bad\"name", "10.213.1.0/24", false).is_err());
        assert!(firewall::add_network(&a, "10.213.1.0", false).is_err());
        assert_eq!(ruleset(), before, "a refused call changes nothing");

        firewall::teardown().unwrap();
        assert_eq!(
            ruleset().trim(),
            "",
            "teardown leaves the (sandbox's empty) ruleset as it was"
        );
    });
}

/// "Outside world" for NAT tests: a namespace reached through an uplink
/// bridge in the sandbox host, at 198.18.0.2 (the host side is 198.18.0.1).
async fn outside(nl: &Netlink, p: &str) -> Container {
    let uplink = format!("{p}u");
    nl.ensure_bridge(&uplink, "198.18.0.1/24", None)
        .await
        .unwrap();
    container(
        nl,
        p,
        "o",
        &uplink,
        Ipv4Addr::new(198, 18, 0, 2),
        Ipv4Addr::new(198, 18, 0, 1),
        24,
    )
    .await
}

#[test]
fn forwarding_nat_and_isolation() {
    let _serial = SERIAL.blocking_lock();
    let p = setup();
    let host_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    in_sandbox(&p, || {
        rt().block_on(async {
            firewall::enable_ip_forward().unwrap();
            let nl = Netlink::connect().await.unwrap();
            let o = outside(&nl, &p).await;
            let (a, b) = (format!("{p}a"), format!("{p}b"));
            nl.ensure_bridge(&a, "10.213.1.1/24", None).await.unwrap();
            nl.ensure_bridge(&b, "10.213.2.1/24", None).await.unwrap();
            let c1 = container(
                &nl,
                &p,
                "c1",
                &a,
                Ipv4Addr::new(10, 213, 1, 2),
                Ipv4Addr::new(10, 213, 1, 1),
                24,
            )
            .await;
            let c2 = container(
                &nl,
                &p,
                "c2",
                &b,
                Ipv4Addr::new(10, 213, 2, 2),
                Ipv4Addr::new(10, 213, 2, 1),
                24,
            )
            .await;
            // Without rules the sandbox routes between the networks.
            assert!(
                ping(&c1.ns.path, c2.ip),
                "plain routing works before any rule"
            );

            let _ga = RulesGuard(a.clone());
            let _gb = RulesGuard(b.clone());
            firewall::add_network(&a, "10.213.1.0/24", false).unwrap();
            firewall::add_network(&b, "10.213.2.0/24", true).unwrap();

            // Non-internal: reaches the outside, masqueraded behind the uplink address.
            assert!(ping(&c1.ns.path, o.ip));
            let seen = tcp_roundtrip(&o.ns.path, o.ip, &c1.ns.path);
            assert_eq!(
                seen.ip(),
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                "source NAT"
            );
            // Networks are isolated from each other; internal has no way out.
            assert!(ping_blocked(&c1.ns.path, c2.ip), "a -> b must be dropped");
            assert!(ping_blocked(&c2.ns.path, c1.ip), "b -> a must be dropped");
            assert!(
                ping_blocked(&c2.ns.path, o.ip),
                "internal b -> outside must be dropped"
            );
            // Nothing from outside gets in unless it is a reply.
            assert!(
                ping_blocked(&o.ns.path, c1.ip),
                "outside -> a must be dropped"
            );
            // The gateway stays reachable from an internal network.
            assert!(ping(&c2.ns.path, Ipv4Addr::new(10, 213, 2, 1)));

            firewall::remove_network(&a).unwrap();
            firewall::remove_network(&b).unwrap();
            assert!(
                ping(&c1.ns.path, c2.ip),
                "rules removed: routing is back to plain"
            );
        })
    });
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forwarding,
        "the real host's forwarding setting is untouched"
    );
}

/// Simulates Docker's iptables-nft setup in the current namespace:
/// `table ip filter` with `FORWARD` (policy drop, jumping to `DOCKER-USER`
/// when `with_user`), creating only what does not exist yet and deleting
/// exactly that on drop.
struct DockerSim {
    created_table: bool,
    created_user: bool,
    created_forward: bool,
    via_iptables: bool,
}

fn has_iptables() -> bool {
    Command::new("iptables")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn iptables_rules(chain: &str) -> String {
    let out = Command::new("iptables")
        .args(["-S", chain])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iptables -S {chain}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl DockerSim {
    fn new(with_user: bool) -> DockerSim {
        let created_table = !nft_ok(&["list", "table", "ip", "filter"]);
        if created_table && with_user && has_iptables() {
            // Exactly what Docker runs, through iptables-nft.
            for args in [
                &["-P", "FORWARD", "DROP"][..],
                &["-N", "DOCKER-USER"],
                &["-A", "DOCKER-USER", "-j", "RETURN"],
                &["-A", "FORWARD", "-j", "DOCKER-USER"],
            ] {
                assert!(
                    Command::new("iptables")
                        .args(args)
                        .status()
                        .unwrap()
                        .success(),
                    "iptables {args:?}"
                );
            }
            return DockerSim {
                created_table,
                created_user: true,
                created_forward: true,
                via_iptables: true,
            };
        }
        if created_table {
            nft(&format!(
                "add table ip filter {{ comment \"{SIM_COMMENT}\"; }}\n"
            ));
        }
        let created_forward = !nft_ok(&["list", "chain", "ip", "filter", "FORWARD"]);
        if created_forward {
            nft(&format!(
                "add chain ip filter FORWARD {{ type filter hook forward priority filter; policy drop; comment \"{SIM_COMMENT}\"; }}\n"
            ));
        }
        let created_user = with_user && !nft_ok(&["list", "chain", "ip", "filter", "DOCKER-USER"]);
        if created_user {
            nft(&format!(
                "add chain ip filter DOCKER-USER {{ comment \"{SIM_COMMENT}\"; }}\n\
                 insert rule ip filter FORWARD counter jump DOCKER-USER comment \"{SIM_COMMENT}\"\n"
            ));
        }
        DockerSim {
            created_table,
            created_user,
            created_forward,
            via_iptables: false,
        }
    }
}

impl Drop for DockerSim {
    fn drop(&mut self) {
        if self.created_table {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", "filter"])
                .status();
            return;
        }
        if self.created_user {
            let _ = Command::new("nft")
                .args(["flush", "chain", "ip", "filter", "DOCKER-USER"])
                .status();
            let out = Command::new("nft")
                .args(["-a", "list", "chain", "ip", "filter", "FORWARD"])
                .output()
                .unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.contains(SIM_COMMENT) {
                    if let Some(handle) = line.rsplit("# handle ").next() {
                        let _ = Command::new("nft")
                            .args([
                                "delete",
                                "rule",
                                "ip",
                                "filter",
                                "FORWARD",
                                "handle",
                                handle.trim(),
                            ])
                            .status();
                    }
                }
            }
            let _ = Command::new("nft")
                .args(["delete", "chain", "ip", "filter", "DOCKER-USER"])
                .status();
        }
        if self.created_forward {
            let _ = Command::new("nft")
                .args(["delete", "chain", "ip", "filter", "FORWARD"])
                .status();
        }
    }
}

fn docker_forward_drop(with_user: bool) {
    let _serial = SERIAL.blocking_lock();
    let p = setup();
    in_sandbox(&p, || {
        rt().block_on(async {
            firewall::enable_ip_forward().unwrap();
            let nl = Netlink::connect().await.unwrap();
            let o = outside(&nl, &p).await;
            let br = format!("{p}a");
            nl.ensure_bridge(&br, "10.213.1.1/24", None).await.unwrap();
            let c1 = container(
                &nl,
                &p,
                "c1",
                &br,
                Ipv4Addr::new(10, 213, 1, 2),
                Ipv4Addr::new(10, 213, 1, 1),
                24,
            )
            .await;
            let c2 = container(
                &nl,
                &p,
                "c2",
                &br,
                Ipv4Addr::new(10, 213, 1, 3),
                Ipv4Addr::new(10, 213, 1, 1),
                24,
            )
            .await;
            let before = ruleset();
            {
                let sim = DockerSim::new(with_user);
                assert!(sim.created_forward, "the sandbox has no Docker of its own");
                let chain = if with_user { "DOCKER-USER" } else { "FORWARD" };
                if firewall::br_netfilter_enabled() {
                    assert!(
                        ping_blocked(&c1.ns.path, c2.ip),
                        "the simulated FORWARD drop blocks same-bridge traffic"
                    );
                }
                assert!(
                    ping_blocked(&c1.ns.path, o.ip),
                    "the simulated FORWARD drop blocks routed traffic"
                );

                let _rules = RulesGuard(br.clone());
                let docker_view = sim.via_iptables.then(|| iptables_rules(chain));
                firewall::add_network(&br, "10.213.1.0/24", false).unwrap();
                if sim.via_iptables {
                    // Docker's own tool still reads the table, and sees plain iptables rules.
                    let view = iptables_rules(chain);
                    for dir in ["-i", "-o"] {
                        let rule = format!("-A {chain} {dir} {br} -m comment --comment \"flotilla:{br}\" -j ACCEPT");
                        assert!(view.contains(&rule), "{view}");
                    }
                }
                assert!(
                    ping(&c1.ns.path, c2.ip),
                    "same bridge despite Docker's drop"
                );
                assert!(ping(&c2.ns.path, c1.ip));
                assert!(ping(&c1.ns.path, o.ip), "outbound despite Docker's drop");
                assert_eq!(
                    tcp_roundtrip(&o.ns.path, o.ip, &c2.ns.path).ip(),
                    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))
                );
                let docker_chain = String::from_utf8(
                    Command::new("nft")
                        .args(["list", "chain", "ip", "filter", chain])
                        .output()
                        .unwrap()
                        .stdout,
                )
                .unwrap();
                assert_eq!(
                    docker_chain
                        .matches(&format!("comment \"flotilla:{br}\""))
                        .count(),
                    2,
                    "{docker_chain}"
                );
                assert!(
                    docker_chain.contains("policy drop") || with_user,
                    "Docker's policy is unchanged: {docker_chain}"
                );

                firewall::remove_network(&br).unwrap();
                let docker_chain = String::from_utf8(
                    Command::new("nft")
                        .args(["list", "chain", "ip", "filter", chain])
                        .output()
                        .unwrap()
                        .stdout,
                )
                .unwrap();
                assert!(!docker_chain.contains("flotilla:"), "{docker_chain}");
                if let Some(view) = docker_view {
                    assert_eq!(iptables_rules(chain), view, "Docker's chain is back as it was");
                }
                assert!(
                    ping_blocked(&c1.ns.path, o.ip),
                    "our accepts are gone again"
                );
            }
            // The simulation removed exactly what it added; only our own base table remains.
            firewall::teardown().unwrap();
            assert_eq!(ruleset(), before);
        })
    });
}

#[test]
fn docker_forward_drop_with_docker_user_chain() {
    docker_forward_drop(true);
}

#[test]
fn docker_forward_drop_without_docker_user_chain() {
    docker_forward_drop(false);
}

/// A TCP server on `addr` inside `ns` that answers one connection with
/// "pong!" and returns the peer address it saw.
fn serve_once(ns: &Path, addr: SocketAddr) -> std::thread::JoinHandle<std::io::Result<SocketAddr>> {
    let listener = netns::run_in(ns, || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.write_all(b"pong!")?;
        Ok(peer)
    })
}

fn read_pong(mut c: TcpStream) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf)?;
    assert_eq!(&buf, b"pong!");
    Ok(())
}

#[test]
fn published_port_and_vip_dnat() {
    use flotilla_runtime::net::nat::{self, Protocol, PublishedPort, Vip};
    let _serial = SERIAL.blocking_lock();
    let p = setup();
    in_sandbox(&p, || {
        rt().block_on(async {
            firewall::enable_ip_forward().unwrap();
            let nl = Netlink::connect().await.unwrap();
            let o = outside(&nl, &p).await;
            let a = format!("{p}a");
            nl.ensure_bridge(&a, "10.213.1.1/24", None).await.unwrap();
            let gw = Ipv4Addr::new(10, 213, 1, 1);
            let c1 = container(&nl, &p, "c1", &a, Ipv4Addr::new(10, 213, 1, 2), gw, 24).await;
            let c2 = container(&nl, &p, "c2", &a, Ipv4Addr::new(10, 213, 1, 3), gw, 24).await;
            let _ga = RulesGuard(a.clone());
            firewall::add_network(&a, "10.213.1.0/24", false).unwrap();
            nat::enable_route_localnet(&a).unwrap();
            nat::sync_published_ports(
                "test",
                &[PublishedPort {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    target_port: 9000,
                    backends: vec![c1.ip],
                }],
            )
            .unwrap();
            let server = SocketAddr::from((c1.ip, 9000));

            // From outside, on the sandbox host's uplink address: the
            // server sees the outside client's own address.
            let srv = serve_once(&c1.ns.path, server);
            let host_addr = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 1), 8080));
            netns::run_in(&o.ns.path, || {
                read_pong(TcpStream::connect_timeout(
                    &host_addr,
                    Duration::from_secs(10),
                )?)
            })
            .unwrap()
            .unwrap();
            assert_eq!(srv.join().unwrap().unwrap().ip(), IpAddr::V4(o.ip));

            // From the host itself on 127.0.0.1, no proxy process anywhere.
            let srv = serve_once(&c1.ns.path, server);
            let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
            read_pong(TcpStream::connect_timeout(&lo, Duration::from_secs(10)).unwrap()).unwrap();
            assert_eq!(srv.join().unwrap().unwrap().ip(), IpAddr::V4(gw));

            // A VIP translated in the client's own namespace: the server
            // sees the client's address, not a NAT address.
            let vip = Ipv4Addr::new(10, 213, 1, 200);
            nat::sync_vips(
                &c2.ns.path,
                &[Vip {
                    address: vip,
                    backends: vec![c1.ip],
                }],
            )
            .unwrap();
            let srv = serve_once(&c1.ns.path, server);
            let to_vip = SocketAddr::from((vip, 9000));
            netns::run_in(&c2.ns.path, || {
                read_pong(TcpStream::connect_timeout(
                    &to_vip,
                    Duration::from_secs(10),
                )?)
            })
            .unwrap()
            .unwrap();
            assert_eq!(srv.join().unwrap().unwrap().ip(), IpAddr::V4(c2.ip));
            // No backend: refused at once, not a timeout.
            nat::sync_vips(
                &c2.ns.path,
                &[Vip {
                    address: vip,
                    backends: vec![],
                }],
            )
            .unwrap();
            let err = netns::run_in(&c2.ns.path, || {
                TcpStream::connect_timeout(&to_vip, Duration::from_secs(10)).map(|_| ())
            })
            .unwrap()
            .unwrap_err();
            assert_ne!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");

            // Removing the port leaves nothing of this owner behind.
            nat::sync_published_ports("test", &[]).unwrap();
            assert!(!ruleset().contains("flotilla-ports:test"));
        })
    });
}
