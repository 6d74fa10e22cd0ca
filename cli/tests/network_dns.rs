//! The embedded DNS server end to end: every name form a container of a
//! stack can look up, asked at 127.0.0.11 inside the container's own
//! network namespace; names of networks it does not share hidden; other
//! names forwarded to the daemon's upstream (a resolver this test runs on
//! loopback) or to the service's own `dns:` servers; resolv.conf and
//! /etc/hosts as the container sees them; answers that follow a scale-down
//! and survive a SIGKILL of the daemon. Needs root.

mod common;
mod network_support;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use network_support::{dns_query, try_dns_query, vip_with_backends, FakeUpstream};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

fn compose(own_dns: &str) -> String {
    format!(
        r#"
services:
  api:
    image: flotilla-demo:test
    command: ["store"]
    deploy:
      replicas: 2
    networks:
      default:
        aliases: ["backend"]
  db:
    image: flotilla-demo:test
    command: ["store"]
    container_name: DBNAME
  rr:
    image: flotilla-demo:test
    command: ["sleep"]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
  hidden:
    image: flotilla-demo:test
    command: ["sleep"]
    networks: ["other"]
  client:
    image: flotilla-demo:test
    command: ["sleep"]
    dns_search: ["corp.test"]
    dns_opt: ["ndots:2"]
    extra_hosts: ["gateway.test=198.51.100.7"]
  custom:
    image: flotilla-demo:test
    command: ["sleep"]
    dns: ["{own_dns}"]
networks:
  other: {{}}
"#
    )
}

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

fn pid_of(rows: &[serde_json::Value], name: &str) -> i64 {
    rows.iter()
        .find(|r| r["Name"] == name)
        .and_then(|r| r["Pid"].as_i64())
        .unwrap_or_else(|| panic!("no running {name} in {rows:?}"))
}

fn ip_of(rows: &[serde_json::Value], name: &str) -> IpAddr {
    rows.iter()
        .find(|r| r["Name"] == name)
        .and_then(|r| r["IP"].as_str())
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no IP for {name} in {rows:?}"))
}

fn a(pid: i64, name: &str) -> (ResponseCode, BTreeSet<IpAddr>) {
    let (code, ips) = dns_query(pid, name, RecordType::A);
    (code, ips.into_iter().collect())
}

fn set(ips: &[IpAddr]) -> BTreeSet<IpAddr> {
    ips.iter().copied().collect()
}

#[test]
fn every_name_form_resolves_inside_the_container_and_follows_the_stack() {
    require_root!();
    let upstream = FakeUpstream::start(Ipv4Addr::new(192, 0, 2, 55));
    let own = FakeUpstream::start(Ipv4Addr::new(192, 0, 2, 66));
    let mut d = Daemon::new();
    d.dns_upstream = upstream.addr.to_string();
    d.start();
    d.import_demo_image();
    let p = format!("nd{}", d.name);
    let dir = d.root.path().join(&p);
    let db_name = format!("{p}-thedb");
    write_project(
        &dir,
        &compose(&own.addr.to_string()).replace("DBNAME", &db_name),
    );
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &p);
    assert_eq!(rows.len(), 8, "{rows:?}");
    let client = pid_of(&rows, &format!("{p}-client-1"));
    let api1 = ip_of(&rows, &format!("{p}-api-1"));
    let api2 = ip_of(&rows, &format!("{p}-api-2"));
    let rr = set(&[
        ip_of(&rows, &format!("{p}-rr-1")),
        ip_of(&rows, &format!("{p}-rr-2")),
    ]);
    let db = ip_of(&rows, &db_name);

    // The service name is its VIP: the address the client's DNAT table
    // spreads over both replicas, not one of theirs.
    let vip: IpAddr = eventually(Duration::from_secs(20), || vip_with_backends(client, 2))
        .expect("api's VIP in the client's DNAT table")
        .parse()
        .unwrap();
    assert!(vip != api1 && vip != api2);
    for name in [
        "api",
        "backend",
        &format!("api.{p}"),
        &format!("backend.{p}"),
    ] {
        assert_eq!(
            a(client, name),
            (ResponseCode::NoError, set(&[vip])),
            "{name}"
        );
    }
    // Task names: every running task, each slot, container names.
    assert_eq!(
        a(client, "tasks.api"),
        (ResponseCode::NoError, set(&[api1, api2]))
    );
    assert_eq!(a(client, "1.api"), (ResponseCode::NoError, set(&[api1])));
    assert_eq!(a(client, "2.api"), (ResponseCode::NoError, set(&[api2])));
    assert_eq!(
        a(client, &format!("{p}-api-2")),
        (ResponseCode::NoError, set(&[api2]))
    );
    assert_eq!(a(client, &db_name), (ResponseCode::NoError, set(&[db])));
    // dnsrr: the service name is every task's address, no VIP.
    assert_eq!(a(client, "rr"), (ResponseCode::NoError, rr.clone()));
    // A name only on a network the client does not share: NXDOMAIN, and
    // never asked upstream.
    assert_eq!(a(client, "hidden").0, ResponseCode::NXDomain);
    assert!(!upstream.asked().iter().any(|q| q.starts_with("hidden")));

    // Other names go to the daemon's upstream...
    assert_eq!(
        a(client, "www.example.test"),
        (
            ResponseCode::NoError,
            set(&[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 55))])
        )
    );
    assert!(upstream.asked().iter().any(|q| q == "www.example.test."));
    // ...or to the service's own `dns:` servers instead.
    let custom = pid_of(&rows, &format!("{p}-custom-1"));
    assert_eq!(
        a(custom, "www.example.test"),
        (
            ResponseCode::NoError,
            set(&[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66))])
        )
    );
    assert!(own.asked().iter().any(|q| q == "www.example.test."));
    // The stack's own names still answered locally for it.
    assert_eq!(a(custom, &db_name), (ResponseCode::NoError, set(&[db])));

    // What the container's resolver reads.
    let resolv = std::fs::read_to_string(format!("/proc/{client}/root/etc/resolv.conf")).unwrap();
    assert!(resolv.starts_with("nameserver 127.0.0.11\n"), "{resolv}");
    assert_eq!(resolv.matches("nameserver").count(), 1, "{resolv}");
    assert!(resolv.contains("search corp.test\n"), "{resolv}");
    assert!(resolv.contains("options ndots:2\n"), "{resolv}");
    let hosts = std::fs::read_to_string(format!("/proc/{client}/root/etc/hosts")).unwrap();
    assert!(
        hosts.contains("198.51.100.7\tgateway.test"),
        "extra_hosts: {hosts}"
    );
    assert!(
        hosts.contains(&format!("{p}-client-1")),
        "own name: {hosts}"
    );
    assert!(
        !hosts.contains(&api1.to_string()),
        "peers come from DNS, not a stale hosts file: {hosts}"
    );
    // The container's own resolver (the demo's, reading those files)
    // finds a peer through the server.
    let out = d.ok(&dir, &["exec", "-T", "client", "/demo", "lookup", &db_name]);
    assert_eq!(out.trim(), db.to_string());

    // Scale-down: the removed slot leaves tasks.api and N.api at once; the
    // VIP stays.
    d.ok(&dir, &["scale", "api=1"]);
    let gone = eventually(Duration::from_secs(20), || {
        (a(client, "tasks.api") == (ResponseCode::NoError, set(&[api1]))).then_some(())
    });
    assert!(
        gone.is_some(),
        "tasks.api after scale-down: {:?}",
        a(client, "tasks.api")
    );
    assert_ne!(a(client, "2.api").1, set(&[api2]));
    assert_eq!(a(client, "api"), (ResponseCode::NoError, set(&[vip])));

    // A daemon killed with SIGKILL: after its restart the running client
    // (same process) is served again.
    d.kill9();
    d.start();
    let back = eventually(Duration::from_secs(30), || {
        let (code, ips) = try_dns_query(client, &db_name, RecordType::A)?;
        (code == ResponseCode::NoError && ips == vec![db]).then_some(())
    });
    assert!(back.is_some(), "DNS after a daemon restart");
    assert_eq!(pid_of(&d.ps(&dir, &p), &format!("{p}-client-1")), client);
    d.ok(&dir, &["down"]);
}
