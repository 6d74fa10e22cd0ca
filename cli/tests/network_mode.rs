//! `network_mode` end to end: `host` shares the host's namespace and
//! resolvers, `none` has only `lo`, `service:NAME` joins the namespace of
//! that service's container (and its embedded DNS), each as Docker does.
//! Needs root.

mod common;
mod network_support;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use network_support::dns_query;
use std::path::Path;

const COMPOSE: &str = r#"
services:
  store:
    image: flotilla-demo:test
    command: ["store"]
  side:
    image: flotilla-demo:test
    command: ["sleep"]
    network_mode: "service:store"
  hosted:
    image: flotilla-demo:test
    command: ["sleep"]
    network_mode: host
  alone:
    image: flotilla-demo:test
    command: ["sleep"]
    network_mode: none
"#;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

fn links_of(pid: i64) -> Vec<String> {
    let out = in_container(pid, &["/demo", "ls", "/sys/class/net"]);
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn host_none_and_service_modes_use_the_namespace_they_name() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let p = format!("nm{}", d.name);
    let dir = d.root.path().join(&p);
    write_project(&dir, COMPOSE);
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &p);
    assert_eq!(rows.len(), 4, "{rows:?}");
    let pid = |s: &str| {
        rows.iter()
            .find(|r| r["Service"] == s)
            .and_then(|r| r["Pid"].as_i64())
            .unwrap_or_else(|| panic!("no running {s}: {rows:?}"))
    };
    let me = std::process::id() as i64;

    // host: the host's own namespace, and the host's resolv.conf (no
    // embedded server there).
    assert_eq!(ns_of(pid("hosted"), "net"), ns_of(me, "net"));
    let resolv =
        std::fs::read_to_string(format!("/proc/{}/root/etc/resolv.conf", pid("hosted"))).unwrap();
    assert!(!resolv.contains("127.0.0.11"), "{resolv}");

    // none: a namespace of its own with only lo.
    assert_ne!(ns_of(pid("alone"), "net"), ns_of(me, "net"));
    assert_eq!(links_of(pid("alone")), ["lo"]);

    // service:store: the store's namespace, so its interfaces, its
    // address and its embedded DNS.
    assert_eq!(ns_of(pid("side"), "net"), ns_of(pid("store"), "net"));
    assert_eq!(links_of(pid("side")), ["eth0", "lo"]);
    let resolv =
        std::fs::read_to_string(format!("/proc/{}/root/etc/resolv.conf", pid("side"))).unwrap();
    assert!(resolv.starts_with("nameserver 127.0.0.11\n"), "{resolv}");
    let (code, ips) = dns_query(pid("side"), "tasks.store", RecordType::A);
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(ips.len(), 1, "{ips:?}");
    let out = in_container(
        pid("side"),
        &["/demo", "get", "http://127.0.0.1:6000/health"],
    );
    assert!(out.status.success(), "the store on the shared loopback");

    d.ok(&dir, &["down"]);
}
