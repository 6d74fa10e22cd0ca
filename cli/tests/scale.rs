//! `up --scale` and `flotilla scale` change a service's replica count
//! through the manager; each slot keeps its address. Needs root.

mod common;

use common::*;
use std::time::Duration;

fn running(d: &Daemon, dir: &std::path::Path, project: &str) -> Vec<serde_json::Value> {
    d.ps(dir, project)
        .into_iter()
        .filter(|r| r["State"] == "running")
        .collect()
}

#[test]
fn up_scale_and_scale_change_replicas_keeping_slot_addresses() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("sc{}", d.name);
    let dir = d.root.path().join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n",
    )
    .unwrap();

    d.ok(&dir, &["up", "-d", "--scale", "store=3"]);
    let rows = running(&d, &dir, &project);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let ip_of = |rows: &[serde_json::Value], name: &str| {
        rows.iter()
            .find(|r| r["Name"] == name)
            .map(|r| r["IP"].as_str().unwrap().to_string())
    };
    let ip1 = ip_of(&rows, &format!("{project}-store-1")).unwrap();

    d.ok(&dir, &["scale", "store=1"]);
    let one = eventually(Duration::from_secs(30), || {
        let rows = running(&d, &dir, &project);
        (rows.len() == 1).then_some(rows)
    })
    .expect("scaled down to 1");
    assert_eq!(
        ip_of(&one, &format!("{project}-store-1")).as_deref(),
        Some(ip1.as_str())
    );

    d.ok(&dir, &["scale", "store=2"]);
    let rows = running(&d, &dir, &project);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        ip_of(&rows, &format!("{project}-store-1")).as_deref(),
        Some(ip1.as_str())
    );

    let bad = d.cli_in(&dir, &["scale", "nosuch=2"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no such service: nosuch"));
    d.ok(&dir, &["down"]);
}
