//! Health checks, `service_healthy` gating, `exec`, `kill`, `stop` and
//! `start` with real containers. Needs root.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

const GATED: &str = r#"
services:
  db:
    image: flotilla-demo:test
    command: ["sleep"]
    restart: always
    healthcheck:
      test: ["CMD", "/demo", "cat", "/tmp/ready"]
      interval: 200ms
      timeout: 5s
      retries: 2
      # Failures in the start period do not count: db stays "starting".
      start_period: 120s
      start_interval: 200ms
  app:
    image: flotilla-demo:test
    command: ["sleep"]
    depends_on:
      db:
        condition: service_healthy
"#;

fn row<'a>(rows: &'a [serde_json::Value], service: &str) -> Option<&'a serde_json::Value> {
    rows.iter()
        .filter(|r| r["Service"] == service)
        .find(|r| r["State"] == "running")
}

/// Event lines (`events --json`) of a service.
fn events_of(path: &Path, service: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["service"] == service && e["type"] == "task")
        .collect()
}

#[test]
fn healthy_gate_exec_kill_stop_start() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lh{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, GATED);

    // Record the stack's events from before the deploy.
    let events_path = d.root.path().join("events.jsonl");
    let mut events = Command::new(flotilla_bin())
        .args(["events", "--json", "-p", &project])
        .envs(d.env())
        .current_dir(&dir)
        .stdout(std::fs::File::create(&events_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.try_wait();
    let _events = KillOnDrop(events);

    // `up` blocks until app runs, which needs db healthy: run it aside.
    let up = Command::new(flotilla_bin())
        .args(["up", "-d", "--wait-timeout", "90"])
        .envs(d.env())
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // db runs and is "starting"; app is held back by the gate.
    let db = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &project);
        row(&rows, "db")
            .filter(|r| r["Health"] == "starting")
            .cloned()
    });
    assert!(
        db.is_some(),
        "db never reported starting: {:?}\n{}",
        d.ps(&dir, &project),
        d.daemon_log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let rows = d.ps(&dir, &project);
    assert!(
        rows.iter().all(|r| r["Service"] != "app"),
        "app started before db was healthy: {rows:?}"
    );
    assert_eq!(row(&rows, "db").unwrap()["Health"], "starting");

    // exec runs inside db's container: it makes the check pass.
    let out = d.cli_in(&dir, &["exec", "db", "/demo", "write", "/tmp/ready", "yes"]);
    assert!(
        out.status.success(),
        "exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.cli_in(&dir, &["exec", "db", "/demo", "cat", "/tmp/ready"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "yes\n");
    // exec's exit code is the command's.
    let out = d.cli_in(&dir, &["exec", "db", "/demo", "exit", "7"]);
    assert_eq!(out.status.code(), Some(7));

    let up = up.wait_with_output().unwrap();
    assert!(
        up.status.success(),
        "up: {}\n{}",
        String::from_utf8_lossy(&up.stderr),
        d.daemon_log()
    );
    let rows = d.ps(&dir, &project);
    assert_eq!(row(&rows, "db").unwrap()["Health"], "healthy");
    assert!(row(&rows, "app").is_some(), "{rows:?}");

    // Order, from the recorded events: db healthy before app's first event.
    let ev_ok = eventually(Duration::from_secs(10), || {
        let db_ev = events_of(&events_path, "db");
        let app_ev = events_of(&events_path, "app");
        let healthy = db_ev
            .iter()
            .find(|e| e["health"] == "healthy")
            .and_then(|e| e["time"].as_i64())?;
        let db_started = db_ev
            .iter()
            .find(|e| e["state"] == "running")
            .and_then(|e| e["time"].as_i64())?;
        let app_first = app_ev.first().and_then(|e| e["time"].as_i64())?;
        Some((db_started, healthy, app_first))
    });
    let (db_started, healthy, app_first) = ev_ok.expect("events of db and app");
    assert!(
        db_started <= healthy && healthy <= app_first,
        "{db_started} {healthy} {app_first}"
    );

    // kill: only a signal; `restart: always` brings db back (a new task).
    let old_pid = row(&rows, "db").unwrap()["Pid"].as_i64().unwrap();
    d.ok(&dir, &["kill", "-s", "SIGKILL", "db"]);
    let back = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &project);
        row(&rows, "db")
            .filter(|r| r["Pid"].as_i64() != Some(old_pid) && r["RestartCount"].as_u64() >= Some(1))
            .cloned()
    });
    assert!(
        back.is_some(),
        "db not restarted after kill: {:?}",
        d.ps(&dir, &project)
    );

    // stop: desired state; nothing comes back until start.
    d.ok(&dir, &["stop", "app"]);
    let rows = d.ps(&dir, &project);
    assert!(row(&rows, "app").is_none(), "{rows:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(row(&d.ps(&dir, &project), "app").is_none());
    d.ok(&dir, &["start", "app"]);
    assert!(row(&d.ps(&dir, &project), "app").is_some());

    d.ok(&dir, &["down"]);
}

const UNHEALTHY: &str = r#"
services:
  db:
    image: flotilla-demo:test
    command: ["sleep"]
    healthcheck:
      test: ["CMD", "/demo", "exit", "1"]
      interval: 100ms
      retries: 2
  app:
    image: flotilla-demo:test
    command: ["sleep"]
    depends_on:
      db:
        condition: service_healthy
"#;

#[test]
fn unhealthy_dependency_blocks_its_dependent() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lu{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, UNHEALTHY);
    let out = d.cli_in(&dir, &["up", "-d", "--wait-timeout", "5"]);
    assert!(
        !out.status.success(),
        "up succeeded with an unhealthy dependency"
    );
    let rows = d.ps(&dir, &project);
    let db = row(&rows, "db").expect("db runs");
    assert_eq!(db["Health"], "unhealthy", "{rows:?}");
    assert!(rows.iter().all(|r| r["Service"] != "app"), "{rows:?}");
    d.ok(&dir, &["down"]);
}
