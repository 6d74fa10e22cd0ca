//! `enable_ipv6` networks end to end: each container gets an IPv6 address
//! next to its IPv4 one (derived from it, so as stable), the embedded DNS
//! answers AAAA with it, containers reach each other over IPv6, the slot
//! keeps the address across `--force-recreate`, and `down` leaves no IPv6
//! address or rule behind. Needs root and a host with IPv6 on (skipped
//! otherwise).

mod common;
mod network_support;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use network_support::dns_query;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

const COMPOSE: &str = r#"
services:
  store:
    image: flotilla-demo:test
    command: ["store"]
    environment:
      BIND_ADDR: "::"
    networks: [v6net]
  client:
    image: flotilla-demo:test
    command: ["sleep"]
    networks: [v6net]
networks:
  v6net:
    enable_ipv6: true
    ipam:
      config:
        - subnet: 172.31.77.0/24
        - subnet: fd00:f10:77::/80
"#;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

/// The global IPv6 addresses on `ifname` in the netns of `pid`.
fn v6_addrs(pid: i64, ifname: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/net/if_inet6"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 6 && f[5] == ifname && !f[0].starts_with("fe80")).then(|| {
                let groups: Vec<String> =
                    (0..8).map(|i| f[0][i * 4..i * 4 + 4].to_string()).collect();
                let ip: std::net::Ipv6Addr = groups.join(":").parse().unwrap();
                format!("{ip}/{}", u8::from_str_radix(f[2], 16).unwrap())
            })
        })
        .collect()
}

#[test]
fn containers_on_an_ipv6_network_get_stable_v6_addresses_dns_and_reach_each_other() {
    require_root!();
    if std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .map(|v| v.trim() != "0")
        .unwrap_or(true)
    {
        eprintln!("skipped: IPv6 is disabled on this host");
        return;
    }
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let p = format!("n6{}", d.name);
    let dir = d.root.path().join(&p);
    write_project(&dir, COMPOSE);
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &p);
    let pid = |rows: &[serde_json::Value], s: &str| {
        rows.iter()
            .find(|r| r["Service"] == s)
            .and_then(|r| r["Pid"].as_i64())
            .unwrap()
    };
    let (store, client) = (pid(&rows, "store"), pid(&rows, "client"));
    let store_v4: std::net::Ipv4Addr = rows
        .iter()
        .find(|r| r["Service"] == "store")
        .and_then(|r| r["IP"].as_str())
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    // The IPv6 address is the subnet's prefix with the IPv4 address in its
    // last 32 bits.
    let [a, b, c, dd] = store_v4.octets();
    let want = format!(
        "fd00:f10:77::{:x}:{:x}/80",
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, dd])
    );
    assert_eq!(v6_addrs(store, "eth0"), vec![want.clone()]);
    let store_v6: IpAddr = want.split('/').next().unwrap().parse().unwrap();

    // AAAA for the peer's names; A still the IPv4 address.
    let (code, ips) = dns_query(client, "tasks.store", RecordType::AAAA);
    assert_eq!((code, ips), (ResponseCode::NoError, vec![store_v6]));
    let (_, ips) = dns_query(client, "tasks.store", RecordType::A);
    assert_eq!(ips, vec![IpAddr::V4(store_v4)]);

    // Reachable over IPv6 from the other container.
    let url = format!("http://[{store_v6}]:6000/health");
    let ok = eventually(Duration::from_secs(10), || {
        in_container(client, &["/demo", "get", &url])
            .status
            .success()
            .then_some(())
    });
    assert!(ok.is_some(), "GET {url} from the client failed");

    // network inspect shows both subnets and the container's v6 address.
    let net: serde_json::Value =
        serde_json::from_str(&d.ok(&dir, &["network", "inspect", &format!("{p}_v6net")])).unwrap();
    let text = net.to_string();
    assert!(text.contains("fd00:f10:77::/80"), "{text}");
    assert!(text.contains(&want), "{text}");

    // The slot keeps its IPv6 address across a recreate.
    d.ok(&dir, &["up", "-d", "--force-recreate"]);
    let again = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &p);
        let s = rows
            .iter()
            .find(|r| r["Service"] == "store" && r["State"] == "running")?
            .clone();
        let new_pid = s["Pid"].as_i64()?;
        (new_pid != store).then(|| v6_addrs(new_pid, "eth0"))
    });
    assert_eq!(again, Some(vec![want.clone()]));

    d.ok(&dir, &["down"]);
    let left = eventually(Duration::from_secs(15), || {
        let addrs = std::process::Command::new("ip")
            .args(["-6", "-o", "addr", "show"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&addrs.stdout).into_owned();
        let rules = nft_ruleset();
        (!text.contains("fd00:f10:77:") && !rules.contains("fd00:f10:77:")).then_some(())
    });
    assert!(left.is_some(), "IPv6 leftovers after down");
}
