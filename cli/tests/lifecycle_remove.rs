//! What `stop`, `down` and `rm` stop and remove, with real containers, by
//! Compose's rules: one-off (`run`) containers are stopped by `stop` and
//! removed by `down`; a replica `rm` removed stays gone until the next `up`.
//! Needs root.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

fn alive(pid: i64) -> bool {
    // A zombie is gone as far as the container goes.
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

fn gone_soon(pid: i64) -> bool {
    eventually(Duration::from_secs(15), || (!alive(pid)).then_some(())).is_some()
}

fn row<'a>(rows: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    rows.iter().find(|r| r["Name"] == name)
}

const ONEOFF: &str = r#"
services:
  db:
    image: flotilla-demo:test
    command: ["sleep"]
  app:
    image: flotilla-demo:test
    command: ["sleep"]
    depends_on: [db]
"#;

#[test]
fn stop_stops_and_down_removes_one_off_containers() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lo{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, ONEOFF);
    d.ok(&dir, &["up", "-d"]);

    let first = format!("{project}-first");
    d.ok(
        &dir,
        &["run", "-d", "--no-deps", "--name", &first, "app", "sleep"],
    );
    let rows = d.ps(&dir, &project);
    let pid = row(&rows, &first).expect("one-off listed")["Pid"]
        .as_i64()
        .unwrap();
    assert!(pid > 0 && alive(pid), "{rows:?}");

    // restart restarts the services, not the one-off container.
    d.ok(&dir, &["restart"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(
        row(&rows, &first).unwrap()["Pid"].as_i64(),
        Some(pid),
        "{rows:?}"
    );
    assert!(alive(pid), "restart stopped the one-off container");

    // stop: the services' containers and the one-off one.
    let out = d.ok(&dir, &["stop"]);
    assert!(out.contains(&first), "{out}");
    assert!(gone_soon(pid), "stop left the one-off container running");
    let rows = d.ps(&dir, &project);
    assert_eq!(row(&rows, &first).unwrap()["State"], "exited", "{rows:?}");

    // A later run of the stopped service still starts; down removes it.
    let second = format!("{project}-second");
    d.ok(
        &dir,
        &["run", "-d", "--no-deps", "--name", &second, "app", "sleep"],
    );
    let rows = d.ps(&dir, &project);
    let pid2 = row(&rows, &second).expect("second one-off")["Pid"]
        .as_i64()
        .unwrap();
    assert!(pid2 > 0 && alive(pid2), "{rows:?}");
    d.ok(&dir, &["down"]);
    assert!(gone_soon(pid2), "down left the one-off container running");
    let rows = d.ps(&dir, &project);
    assert!(rows.is_empty(), "down left containers: {rows:?}");
}

const REPLICAS: &str = r#"
services:
  web:
    image: flotilla-demo:test
    command: ["sleep"]
    restart: "no"
    deploy:
      replicas: 3
"#;

#[test]
fn rm_of_one_exited_replica_is_not_recreated_until_up() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lp{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, REPLICAS);
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let second = format!("{project}-web-2");
    let pid = row(&rows, &second).expect("replica 2")["Pid"]
        .as_i64()
        .unwrap();

    // Replica 2 ends (restart: no keeps it exited), the others run on.
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let exited = eventually(Duration::from_secs(15), || {
        let rows = d.ps(&dir, &project);
        (row(&rows, &second)?["State"] == "exited").then_some(())
    });
    assert!(exited.is_some(), "{:?}", d.ps(&dir, &project));

    let out = d.ok(&dir, &["rm", "web"]);
    assert!(out.contains(&second), "{out}");
    // Removed, and the slot stays empty: nothing makes it again by itself.
    let rows = d.ps(&dir, &project);
    assert!(row(&rows, &second).is_none(), "{rows:?}");
    std::thread::sleep(Duration::from_secs(2));
    let rows = d.ps(&dir, &project);
    assert_eq!(rows.len(), 2, "the removed replica came back: {rows:?}");
    assert!(rows.iter().all(|r| r["State"] == "running"), "{rows:?}");

    // up brings it back.
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(row(&rows, &second).unwrap()["State"], "running", "{rows:?}");
    d.ok(&dir, &["down"]);
}
