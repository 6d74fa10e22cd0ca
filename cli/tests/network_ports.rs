//! Published ports end to end: a Compose `ports` entry is reachable on
//! 127.0.0.1 and on a host address from a client in a network namespace the
//! test creates (a veth pair into the host, addresses the test chose), the
//! server sees that client's own address, a port taken on the host is
//! refused before the container starts, and `down` removes the rules.
//! Needs root. Traffic goes only to loopback and into the test's namespace.

mod common;
mod network_support;

use common::*;
use network_support::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

/// A TCP port nothing on the host uses right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 GET; the response text, or None if the connection failed.
fn http_get(addr: SocketAddrV4, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Remote IPv4 addresses of established TCP connections on local port
/// `port` in the network namespace of process `pid`.
fn tcp_peers(pid: i64, port: u16) -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, st) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let lport = u16::from_str_radix(local.split(':').nth(1)?, 16).ok()?;
            if lport != port || *st != "01" {
                return None;
            }
            let rip = u32::from_str_radix(remote.split(':').next()?, 16).ok()?;
            // /proc shows the address in host byte order of the raw bytes.
            Some(Ipv4Addr::from(rip.swap_bytes()))
        })
        .collect()
}

#[test]
fn published_port_reachable_on_loopback_and_host_address_with_client_source() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("np{}", d.name);
    let dir = d.root.path().join(&project);
    let port = free_port();
    write_project(
        &dir,
        &format!(
            "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n    ports:\n      - \"{port}:6000\"\n"
        ),
    );
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let pid = rows[0]["Pid"].as_i64().unwrap();
    let shown = d.ok(&dir, &["port", "store", "6000"]);
    assert_eq!(shown.trim(), format!("0.0.0.0:{port}"));

    // 127.0.0.1 works without a userland proxy.
    let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let got = eventually(Duration::from_secs(20), || {
        http_get(lo, "/health")
            .filter(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
    });
    assert!(
        got.is_some(),
        "127.0.0.1:{port} not answering; ruleset:\n{}\n{}",
        nft_ruleset(),
        d.daemon_log()
    );

    // A client in its own namespace reaches the port on the host address
    // of its link, and the server sees the client's own address.
    let octet: String = d.pool.split('.').nth(1).unwrap().to_string();
    let base: Ipv4Addr = format!("10.{octet}.254.0").parse().unwrap();
    let client = ClientNs::new(&d.name, base);
    let target = SocketAddrV4::new(client.host_ip, port);
    let body = client.run(|| eventually(Duration::from_secs(10), || http_get(target, "/health")));
    assert!(
        body.as_deref().is_some_and(|b| b.contains(" 200 ")),
        "{target} from the client namespace: {body:?}"
    );
    let peers = client.run(|| {
        // Hold a connection open (request unfinished) and look at the
        // server's side of it.
        let mut s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)).unwrap();
        s.write_all(b"GET /health HTTP/1.0\r\n").unwrap();
        let seen = eventually(Duration::from_secs(5), || {
            let p = tcp_peers(pid, 6000);
            (!p.is_empty()).then_some(p)
        });
        drop(s);
        seen.unwrap_or_default()
    });
    assert!(
        peers.contains(&client.client_ip),
        "server saw {peers:?}, not the client {}",
        client.client_ip
    );

    d.ok(&dir, &["down"]);
    let rule = format!("dport {port} ");
    let gone = eventually(Duration::from_secs(15), || {
        (!nft_ruleset().contains(&rule)).then_some(())
    });
    assert!(
        gone.is_some(),
        "DNAT rule for {port} left after down:\n{}",
        nft_ruleset()
    );
    assert!(
        http_get(lo, "/health").is_none(),
        "port {port} still answers after down"
    );
}

#[test]
fn port_taken_on_the_host_is_refused_before_start() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("nc{}", d.name);
    let dir = d.root.path().join(&project);
    // Another program holds the port.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    write_project(
        &dir,
        &format!(
            "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n    ports:\n      - \"127.0.0.1:{port}:6000\"\n"
        ),
    );
    let out = d.cli_in(&dir, &["up", "-d"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = format!("127.0.0.1:{port}/tcp");
    let reported = eventually(Duration::from_secs(20), || {
        let rows = d.ps(&dir, &project);
        let status: String = rows
            .iter()
            .map(|r| format!("{} {}", r["State"], r["Status"]))
            .collect();
        (text.contains(&msg) || status.contains(&msg)).then_some(status)
    });
    assert!(
        reported.is_some(),
        "conflict on {msg} not reported: up said {text:?}; ps {:?}\n{}",
        d.ps(&dir, &project),
        d.daemon_log()
    );
    // Nothing of the service ever ran.
    for r in d.ps(&dir, &project) {
        assert_ne!(r["State"], "running", "{r}");
    }
    assert!(!nft_ruleset().contains(&format!("dport {port} ")));
    drop(holder);
    let _ = d.cli_in(&dir, &["down"]);
}

/// Sends one datagram to `target` and returns the reply's text.
fn udp_ask(target: SocketAddrV4) -> Option<String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        sock.send_to(b"ping", target).ok()?;
        if let Ok(n) = sock.recv(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

#[test]
fn a_published_udp_port_answers_on_loopback_and_keeps_the_client_source() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("nu{}", d.name);
    let dir = d.root.path().join(&project);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write_project(
        &dir,
        &format!(
            "services:\n  echo:\n    image: flotilla-demo:test\n    command: [\"udp-echo\", \"7000\"]\n    ports:\n      - \"{port}:7000/udp\"\n"
        ),
    );
    d.ok(&dir, &["up", "-d"]);
    assert_eq!(
        d.ok(&dir, &["port", "--protocol", "udp", "echo", "7000"])
            .trim(),
        format!("0.0.0.0:{port}")
    );
    let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let got = eventually(Duration::from_secs(20), || udp_ask(lo));
    assert!(
        got.as_deref().is_some_and(|r| r.starts_with("from ")),
        "udp 127.0.0.1:{port}: {got:?}\n{}",
        nft_ruleset()
    );

    // From a client namespace to the host's address of its link: the
    // server sees the client's own address.
    let octet: String = d.pool.split('.').nth(1).unwrap().to_string();
    let base: Ipv4Addr = format!("10.{octet}.253.0").parse().unwrap();
    let client = ClientNs::new(&format!("{}u", d.name), base);
    let target = SocketAddrV4::new(client.host_ip, port);
    let reply = client.run(|| eventually(Duration::from_secs(10), || udp_ask(target)));
    assert!(
        reply
            .as_deref()
            .is_some_and(|r| r.starts_with(&format!("from {}:", client.client_ip))),
        "udp {target} from the client namespace: {reply:?}"
    );
    d.ok(&dir, &["down"]);
    let rule = format!("dport {port} ");
    let gone = eventually(Duration::from_secs(15), || {
        (!nft_ruleset().contains(&rule)).then_some(())
    });
    assert!(gone.is_some(), "UDP DNAT rule left after down");
}

#[test]
fn a_host_ip_binds_only_that_address_and_a_range_maps_port_by_port() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("nr{}", d.name);
    let dir = d.root.path().join(&project);
    let only_lo = free_port();
    // Two consecutive free ports for the range.
    let first = (0..50)
        .map(|_| free_port())
        .find(|p| *p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
        .expect("two consecutive free ports");
    write_project(
        &dir,
        &format!(
            "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n    ports:\n      - \"127.0.0.1:{only_lo}:6000\"\n      - \"{first}-{}:6000-6001\"\n",
            first + 1
        ),
    );
    d.ok(&dir, &["up", "-d"]);
    assert_eq!(
        d.ok(&dir, &["port", "store", "6001"]).trim(),
        format!("0.0.0.0:{}", first + 1)
    );
    let health =
        |addr: SocketAddrV4| http_get(addr, "/health").is_some_and(|r| r.contains(" 200 "));
    let lo = |p| SocketAddrV4::new(Ipv4Addr::LOCALHOST, p);
    assert!(
        eventually(Duration::from_secs(20), || health(lo(only_lo))
            .then_some(()))
        .is_some(),
        "127.0.0.1:{only_lo}\n{}",
        nft_ruleset()
    );
    // The range's first port reaches 6000 (the store); its second, 6001,
    // where nothing listens, is refused rather than sent to 6000.
    assert!(health(lo(first)), "127.0.0.1:{first} (range → 6000)");
    assert!(
        !health(lo(first + 1)),
        "127.0.0.1:{} (range → 6001)",
        first + 1
    );

    // From a client namespace, the host-IP-bound port is not published on
    // the host's other addresses; the range is.
    let octet: String = d.pool.split('.').nth(1).unwrap().to_string();
    let base: Ipv4Addr = format!("10.{octet}.252.0").parse().unwrap();
    let client = ClientNs::new(&format!("{}r", d.name), base);
    let (to_lo_port, to_range) = client.run(|| {
        (
            health(SocketAddrV4::new(client.host_ip, only_lo)),
            eventually(Duration::from_secs(10), || {
                health(SocketAddrV4::new(client.host_ip, first)).then_some(())
            })
            .is_some(),
        )
    });
    assert!(
        !to_lo_port,
        "a 127.0.0.1-bound port answered on {}",
        client.host_ip
    );
    assert!(to_range, "range port {first} on {}", client.host_ip);
    d.ok(&dir, &["down"]);
}
