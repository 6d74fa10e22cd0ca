//! Dependency order, restart policies, `unless-stopped` across a daemon
//! restart and `up` after an edit, with real containers. Needs root.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

fn running<'a>(rows: &'a [serde_json::Value], service: &str) -> Option<&'a serde_json::Value> {
    rows.iter()
        .filter(|r| r["Service"] == service)
        .find(|r| r["State"] == "running")
}

struct Events {
    child: std::process::Child,
    path: std::path::PathBuf,
}

impl Events {
    fn start(d: &Daemon, dir: &Path, project: &str) -> Events {
        let path = d.root.path().join(format!("events-{project}.jsonl"));
        let child = Command::new(flotilla_bin())
            .args(["events", "--json", "-p", project])
            .envs(d.env())
            .current_dir(dir)
            .stdout(std::fs::File::create(&path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        Events { child, path }
    }
    /// Time (ns) of the first task event of `service` matching `pred`.
    fn first(&self, service: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Option<i64> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["service"] == service && e["type"] == "task")
            .find(|e| pred(e))
            .and_then(|e| e["time"].as_i64())
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ORDER: &str = r#"
services:
  migrate:
    image: flotilla-demo:test
    command: ["sleep", "3"]
    restart: "no"
  app:
    image: flotilla-demo:test
    command: ["sleep"]
    depends_on:
      migrate:
        condition: service_completed_successfully
  cache:
    image: flotilla-demo:test
    command: ["sleep"]
  worker:
    image: flotilla-demo:test
    command: ["sleep"]
    depends_on:
      cache:
        condition: service_started
"#;

#[test]
fn job_gates_dependents_and_independent_branches_overlap() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lo{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, ORDER);
    let ev = Events::start(&d, &dir, &project);
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    assert!(
        running(&rows, "app").is_some() && running(&rows, "worker").is_some(),
        "{rows:?}"
    );

    let times = eventually(Duration::from_secs(10), || {
        let migrate_done = ev.first("migrate", |e| e["state"] == "complete")?;
        let migrate_run = ev.first("migrate", |e| e["state"] == "running")?;
        let app_first = ev.first("app", |_| true)?;
        let worker_run = ev.first("worker", |e| e["state"] == "running")?;
        let cache_run = ev.first("cache", |e| e["state"] == "running")?;
        Some((migrate_run, migrate_done, app_first, cache_run, worker_run))
    });
    let (migrate_run, migrate_done, app_first, cache_run, worker_run) =
        times.expect("recorded events");
    // The job gates its dependent: app's task exists only after it exited 0.
    assert!(migrate_done <= app_first, "{migrate_done} {app_first}");
    // The other branch did not wait for the job: worker ran while migrate ran.
    assert!(cache_run <= worker_run);
    assert!(
        migrate_run < worker_run && worker_run < migrate_done,
        "branches did not overlap: migrate {migrate_run}..{migrate_done}, worker {worker_run}"
    );
    d.ok(&dir, &["down"]);
}

const FAILING: &str = r#"
services:
  migrate:
    image: flotilla-demo:test
    command: ["exit", "3"]
    restart: "no"
  app:
    image: flotilla-demo:test
    command: ["sleep"]
    depends_on:
      migrate:
        condition: service_completed_successfully
"#;

#[test]
fn failing_dependency_blocks_and_up_says_which_and_why() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lf{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, FAILING);
    let out = d.cli_in(&dir, &["up", "-d", "--wait-timeout", "30"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("migrate") && err.contains('3'), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    let rows = d.ps(&dir, &project);
    assert!(rows.iter().all(|r| r["Service"] != "app"), "{rows:?}");
    d.ok(&dir, &["down"]);
}

const POLICIES: &str = r#"
services:
  limited:
    image: flotilla-demo:test
    command: ["exit", "1"]
    deploy:
      restart_policy:
        condition: on-failure
        delay: 200ms
        max_attempts: 2
  never:
    image: flotilla-demo:test
    command: ["exit", "1"]
    restart: "no"
  done:
    image: flotilla-demo:test
    command: ["exit", "0"]
    restart: on-failure
"#;

fn restart_count(rows: &[serde_json::Value], service: &str) -> u64 {
    rows.iter()
        .filter(|r| r["Service"] == service)
        .filter_map(|r| r["RestartCount"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn restart_policies_max_attempts_delay_and_conditions() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lp{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, POLICIES);
    let ev = Events::start(&d, &dir, &project);
    let _ = d.cli_in(&dir, &["up", "-d", "--wait-timeout", "5"]);
    let reached = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &project);
        (restart_count(&rows, "limited") == 2
            && rows
                .iter()
                .filter(|r| r["Service"] == "limited")
                .all(|r| r["State"] != "running"))
        .then_some(rows)
    });
    assert!(reached.is_some(), "{:?}", d.ps(&dir, &project));
    // No third restart comes: max_attempts is 2.
    std::thread::sleep(Duration::from_secs(2));
    let rows = d.ps(&dir, &project);
    assert_eq!(restart_count(&rows, "limited"), 2, "{rows:?}");
    assert_eq!(restart_count(&rows, "never"), 0, "{rows:?}");
    assert_eq!(restart_count(&rows, "done"), 0, "{rows:?}");
    // The delay is honoured between an exit and the next start.
    let exits: Vec<i64> = std::fs::read_to_string(&ev.path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["service"] == "limited" && e["type"] == "task")
        .filter(|e| e["state"] == "failed")
        .filter_map(|e| e["time"].as_i64())
        .collect();
    let first_fail = *exits.first().expect("a failure event");
    let second_start = ev.first("limited", |e| {
        e["restartCount"] == 1 && e["state"] == "running"
    });
    if let Some(s) = second_start {
        assert!(
            s - first_fail >= 200_000_000,
            "restarted {}ms after the exit",
            (s - first_fail) / 1_000_000
        );
    }
    d.ok(&dir, &["down"]);
}

const UNLESS: &str = r#"
services:
  keep:
    image: flotilla-demo:test
    command: ["sleep"]
    restart: unless-stopped
  held:
    image: flotilla-demo:test
    command: ["sleep"]
    restart: unless-stopped
"#;

#[test]
fn unless_stopped_survives_a_daemon_restart() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lus{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, UNLESS);
    d.ok(&dir, &["up", "-d"]);
    d.ok(&dir, &["stop", "held"]);
    let rows = d.ps(&dir, &project);
    let keep_pid = running(&rows, "keep").unwrap()["Pid"].as_i64().unwrap();
    assert!(running(&rows, "held").is_none());

    // A crash of the daemon, then a new one.
    d.kill9();
    d.start();
    let rows = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &project);
        running(&rows, "keep").is_some().then_some(rows)
    })
    .expect("keep runs after the restart");
    assert_eq!(
        running(&rows, "keep").unwrap()["Pid"].as_i64(),
        Some(keep_pid)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        running(&d.ps(&dir, &project), "held").is_none(),
        "a stopped unless-stopped service came back"
    );
    d.ok(&dir, &["start", "held"]);
    assert!(running(&d.ps(&dir, &project), "held").is_some());
    d.ok(&dir, &["down"]);
}

#[test]
fn up_after_an_edit_recreates_only_the_changed_service() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("le{}", d.name);
    let dir = d.root.path().join(&project);
    let body = |v: &str| {
        format!(
            "services:\n  same:\n    image: flotilla-demo:test\n    command: [\"sleep\"]\n  changed:\n    image: flotilla-demo:test\n    command: [\"sleep\"]\n    environment:\n      V: \"{v}\"\n"
        )
    };
    write_project(&dir, &body("1"));
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    let same = running(&rows, "same").unwrap()["Pid"].as_i64();
    let changed = running(&rows, "changed").unwrap()["Pid"].as_i64();
    write_project(&dir, &body("2"));
    d.ok(&dir, &["up", "-d"]);
    let rows = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &project);
        running(&rows, "changed")
            .is_some_and(|r| r["Pid"].as_i64() != changed)
            .then_some(rows)
    })
    .expect("changed was recreated");
    assert_eq!(running(&rows, "same").unwrap()["Pid"].as_i64(), same);
    let out = d.ok(&dir, &["exec", "changed", "/demo", "env"]);
    assert!(out.lines().any(|l| l == "V=2"), "{out}");
    d.ok(&dir, &["down"]);
}
