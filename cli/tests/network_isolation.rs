//! Isolation end to end: containers of one stack reach each other but not
//! another stack's; a container on an `internal: true` network has no way
//! out, while one on a normal network reaches a client namespace the test
//! made; and a slot keeps its address across a daemon restart. Needs root.

mod common;
mod network_support;

use common::*;
use network_support::*;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

const PAIR: &str = r#"
services:
  store:
    image: flotilla-demo:test
    command: ["store"]
  client:
    image: flotilla-demo:test
    command: ["sleep"]
"#;

fn row<'a>(rows: &'a [serde_json::Value], service: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["Service"] == service)
        .unwrap_or_else(|| panic!("no {service} in {rows:?}"))
}

fn get_ok(pid: i64, url: &str) -> bool {
    in_container(pid, &["/demo", "get", url]).status.success()
}

#[test]
fn stacks_are_isolated_from_each_other() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let (pa, pb) = (format!("ia{}", d.name), format!("ib{}", d.name));
    let (da, db) = (d.root.path().join(&pa), d.root.path().join(&pb));
    write_project(&da, PAIR);
    write_project(&db, PAIR);
    d.ok(&da, &["up", "-d"]);
    d.ok(&db, &["up", "-d"]);
    let (ra, rb) = (d.ps(&da, &pa), d.ps(&db, &pb));
    let client_a = row(&ra, "client")["Pid"].as_i64().unwrap();
    let store_a = row(&ra, "store")["IP"].as_str().unwrap().to_string();
    let store_b = row(&rb, "store")["IP"].as_str().unwrap().to_string();
    assert_ne!(store_a, store_b);
    // Same stack: reachable (by address and by name).
    let own = eventually(Duration::from_secs(20), || {
        get_ok(client_a, &format!("http://{store_a}:6000/health")).then_some(())
    });
    assert!(
        own.is_some(),
        "client of {pa} cannot reach its own store {store_a}"
    );
    assert!(get_ok(client_a, "http://store:6000/health"));
    // Other stack: not reachable.
    assert!(
        !get_ok(client_a, &format!("http://{store_b}:6000/health")),
        "client of {pa} reached {pb}'s store at {store_b}"
    );
    d.ok(&da, &["down"]);
    d.ok(&db, &["down"]);
}

#[test]
fn internal_network_has_no_way_out() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("in{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(
        &dir,
        r#"
services:
  inside:
    image: flotilla-demo:test
    command: ["sleep"]
    networks: [back]
  outside:
    image: flotilla-demo:test
    command: ["sleep"]
networks:
  back:
    internal: true
"#,
    );
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    let inside = row(&rows, "inside")["Pid"].as_i64().unwrap();
    let outside = row(&rows, "outside")["Pid"].as_i64().unwrap();

    // Somewhere "out there" the test owns: a server in its own namespace
    // behind a veth into the host.
    let octet: String = d.pool.split('.').nth(1).unwrap().to_string();
    let base: Ipv4Addr = format!("10.{octet}.253.0").parse().unwrap();
    let ns = ClientNs::new(&format!("{}i", d.name), base);
    let _server = NsServer::start(&ns, 7070);
    let url = format!("http://{}:7070/", ns.client_ip);
    let out_ok = eventually(Duration::from_secs(15), || {
        get_ok(outside, &url).then_some(())
    });
    assert!(
        out_ok.is_some(),
        "a container on a normal network cannot reach {url}\n{}",
        d.daemon_log()
    );
    assert!(
        !get_ok(inside, &url),
        "a container on an internal network reached {url}"
    );
    d.ok(&dir, &["down"]);
}

#[test]
fn slot_keeps_its_address_across_daemon_restart() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("ir{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(
        &dir,
        "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n    deploy:\n      replicas: 3\n",
    );
    d.ok(&dir, &["up", "-d"]);
    let ips = |d: &Daemon| {
        let mut v: Vec<(String, String)> = d
            .ps(&dir, &project)
            .iter()
            .map(|r| {
                (
                    r["Name"].as_str().unwrap().to_string(),
                    r["IP"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = ips(&d);
    assert_eq!(before.len(), 3);
    // `restart`: new processes, same addresses.
    let pids = |d: &Daemon| -> Vec<i64> {
        d.ps(&dir, &project)
            .iter()
            .filter_map(|r| r["Pid"].as_i64())
            .collect()
    };
    let old_pids = pids(&d);
    d.ok(&dir, &["restart"]);
    let restarted = eventually(Duration::from_secs(30), || {
        let now = pids(&d);
        (now.len() == 3 && now.iter().all(|p| *p != 0 && !old_pids.contains(p))).then(|| ips(&d))
    });
    assert_eq!(restarted.as_ref(), Some(&before), "after restart");
    d.kill9();
    d.start();
    d.ok(&dir, &["up", "-d", "--force-recreate"]);
    let after = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &project);
        (rows.len() == 3 && rows.iter().all(|r| r["State"] == "running")).then(|| ips(&d))
    });
    assert_eq!(after.as_ref(), Some(&before), "{}", d.daemon_log());
    d.ok(&dir, &["down"]);
}

/// What is left of a daemon's networking on the host: bridges and
/// addresses in its pool, nft rules for it, namespaces in its run dir.
fn network_leftovers(d: &Daemon) -> Vec<String> {
    let subnet_prefix: String = d.pool.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
    let mut left: Vec<String> = links_in_pool(&d.pool)
        .into_iter()
        .map(|(l, a)| format!("link {l} {a}"))
        .collect();
    if nft_ruleset().contains(&subnet_prefix) {
        left.push(format!("nft rules for {subnet_prefix}*"));
    }
    let netns: Vec<_> = std::fs::read_dir(d.run_dir.join("netns"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    left.extend(netns.into_iter().map(|n| format!("netns {}", n.display())));
    let orphan_veth = orphan_names().1;
    left.extend(
        host_links()
            .into_iter()
            .filter(|l| *l == orphan_veth)
            .map(|l| format!("veth {l}")),
    );
    left
}

/// The planted leftover endpoint's namespace name (a short task id, 12
/// characters) and the host end of its veth (the agent's naming rule),
/// unique per test process.
fn orphan_names() -> (String, String) {
    let ns = format!("dead{:08x}", std::process::id());
    let veth = format!("vf{}0", &ns[..10]);
    (ns, veth)
}

#[test]
fn a_killed_daemon_tears_down_what_it_left_after_its_restart() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("il{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(
        &dir,
        "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n    networks: [a, b]\n  client:\n    image: flotilla-demo:test\n    command: [\"sleep\"]\n    networks: [b]\nnetworks:\n  a: {}\n  b: {}\n",
    );
    d.ok(&dir, &["up", "-d"]);
    // A container on two networks has one interface on each.
    let store = row(&d.ps(&dir, &project), "store")["Pid"].as_i64().unwrap();
    let links = in_container(store, &["/demo", "ls", "/sys/class/net"]);
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(
        links.split_whitespace().collect::<Vec<_>>(),
        ["eth0", "eth1", "lo"]
    );

    // The daemon dies; meanwhile a half-made endpoint of a task that never
    // got its container (a namespace and the host end of its veth) is left
    // in the daemon's run dir, as a kill mid-create leaves it.
    d.kill9();
    let netns_dir = d.run_dir.join("netns");
    let (ns_name, veth) = orphan_names();
    let _ = flotilla_runtime::net::netns::remove(&netns_dir, &ns_name);
    let orphan = flotilla_runtime::net::netns::create(&netns_dir, &ns_name).unwrap();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &veth])
        .output();
    struct Veth(String);
    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .output();
        }
    }
    let _veth = Veth(veth.clone());
    network_support::sh(&[
        "ip",
        "link",
        "add",
        &veth,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{veth}p"),
    ]);

    d.start();
    let swept = eventually(Duration::from_secs(20), || {
        (!orphan.exists() && !host_links().contains(&veth)).then_some(())
    });
    assert!(
        swept.is_some(),
        "leftover endpoint not swept:\n{}",
        d.daemon_log()
    );
    // Networks the dead daemon set up are still torn down by the new one.
    d.ok(&dir, &["down"]);
    let clean = eventually(Duration::from_secs(15), || {
        network_leftovers(&d).is_empty().then_some(())
    });
    assert!(
        clean.is_some(),
        "left after down: {:?}\n{}",
        network_leftovers(&d),
        d.daemon_log()
    );
}
