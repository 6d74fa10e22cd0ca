//! Service VIPs end to end: connections from a container to a service's
//! VIP spread over all its replicas, and stop going to a replica that died,
//! through the DNAT table the agent keeps in the client container's own
//! namespace. Needs root.

mod common;
mod network_support;

use common::*;
use network_support::{vip_table, vip_with_backends};
use std::path::Path;
use std::time::Duration;

const COMPOSE: &str = r#"
services:
  store:
    image: flotilla-demo:test
    command: ["store"]
    restart: "no"
    deploy:
      replicas: 3
  client:
    image: flotilla-demo:test
    command: ["sleep"]
"#;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

#[test]
fn vip_spreads_connections_over_three_replicas() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("nv{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, COMPOSE);
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(rows.len(), 4, "{rows:?}");
    let client = rows
        .iter()
        .find(|r| r["Service"] == "client")
        .and_then(|r| r["Pid"].as_i64())
        .unwrap();
    let stores: Vec<i64> = rows
        .iter()
        .filter(|r| r["Service"] == "store")
        .filter_map(|r| r["Pid"].as_i64())
        .collect();
    assert_eq!(stores.len(), 3);

    let vip = eventually(Duration::from_secs(20), || vip_with_backends(client, 3));
    let Some(vip) = vip else {
        panic!(
            "no VIP with 3 backends in the client's namespace\n{}",
            d.daemon_log()
        );
    };
    // Every replica answers through the VIP (each keeps its own counter).
    let total = 30;
    for i in 0..total {
        let out = in_container(
            client,
            &["/demo", "post", &format!("http://{vip}:6000/incr/hits")],
        );
        assert!(
            out.status.success(),
            "request {i} to VIP {vip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut counts = Vec::new();
    for pid in &stores {
        let out = in_container(*pid, &["/demo", "get", "http://127.0.0.1:6000/kv/hits"]);
        let n: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        counts.push(n);
    }
    assert_eq!(counts.iter().sum::<u32>(), total, "{counts:?}");
    assert!(
        counts.iter().all(|c| *c > 0),
        "connections not spread over all replicas: {counts:?}"
    );

    // A replica that dies leaves the VIP: every request still succeeds.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stores[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let two = eventually(Duration::from_secs(20), || vip_with_backends(client, 2));
    assert_eq!(two.as_deref(), Some(vip.as_str()), "{}", d.daemon_log());
    for i in 0..10 {
        let out = in_container(
            client,
            &["/demo", "get", &format!("http://{vip}:6000/health")],
        );
        assert!(
            out.status.success(),
            "request {i} after a replica died: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    d.ok(&dir, &["down"]);
}

#[test]
fn an_unhealthy_replica_leaves_the_vip_and_comes_back_when_healthy() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("nh{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(
        &dir,
        r#"
services:
  store:
    image: flotilla-demo:test
    command: ["store"]
    deploy:
      replicas: 3
    healthcheck:
      test: ["CMD", "/demo", "absent", "/tmp/sick"]
      interval: 1s
      timeout: 2s
      retries: 1
  client:
    image: flotilla-demo:test
    command: ["sleep"]
"#,
    );
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    let client = rows
        .iter()
        .find(|r| r["Service"] == "client")
        .and_then(|r| r["Pid"].as_i64())
        .unwrap();
    let sick = rows
        .iter()
        .find(|r| r["Name"] == format!("{project}-store-2"))
        .unwrap()
        .clone();
    let sick_ip = sick["IP"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let sick_pid = sick["Pid"].as_i64().unwrap();
    let vip = eventually(Duration::from_secs(30), || vip_with_backends(client, 3))
        .expect("VIP with 3 healthy backends");
    assert!(vip_table(client).contains(&sick_ip));

    // Replica 2 turns unhealthy: it leaves the VIP (still running).
    std::fs::write(format!("/proc/{sick_pid}/root/tmp/sick"), "").unwrap();
    let two = eventually(Duration::from_secs(30), || vip_with_backends(client, 2));
    assert_eq!(two.as_deref(), Some(vip.as_str()), "{}", d.daemon_log());
    let table = vip_table(client);
    assert!(
        !table.contains(&format!("{sick_ip},")) && !table.contains(&format!("{sick_ip} ")),
        "{table}"
    );
    for i in 0..10 {
        let out = in_container(
            client,
            &["/demo", "get", &format!("http://{vip}:6000/health")],
        );
        assert!(out.status.success(), "request {i} with replica 2 unhealthy");
    }
    let rows = d.ps(&dir, &project);
    let still = rows.iter().find(|r| r["Name"] == sick["Name"]).unwrap();
    assert_eq!(
        still["Pid"].as_i64(),
        Some(sick_pid),
        "unhealthy is not restarted here"
    );

    // Healthy again: back in.
    std::fs::remove_file(format!("/proc/{sick_pid}/root/tmp/sick")).unwrap();
    let three = eventually(Duration::from_secs(30), || vip_with_backends(client, 3));
    assert_eq!(three.as_deref(), Some(vip.as_str()));
    d.ok(&dir, &["down"]);
}
