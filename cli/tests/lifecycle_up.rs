//! `up`'s flags and the order of `down`, with real containers: `--no-start`,
//! `--wait` on health, a failing dependency named with what it blocks,
//! `--abort-on-container-exit` / `--exit-code-from`, `down` in reverse
//! dependency order with each service's grace period, `ps` during a restart
//! back-off, and two `up` of one project at once. Needs root.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

fn rows_of<'a>(rows: &'a [serde_json::Value], service: &str) -> Vec<&'a serde_json::Value> {
    rows.iter().filter(|r| r["Service"] == service).collect()
}

const HEALTH: &str = r#"
services:
  sick:
    image: flotilla-demo:test
    command: ["sleep"]
    healthcheck:
      test: ["CMD", "/demo", "exit", "1"]
      interval: 200ms
      retries: 2
  web:
    image: flotilla-demo:test
    command: ["sleep"]
    depends_on:
      sick:
        condition: service_healthy
"#;

const FINE: &str = r#"
services:
  fine:
    image: flotilla-demo:test
    command: ["sleep"]
    healthcheck:
      test: ["CMD", "/demo", "exit", "0"]
      interval: 200ms
  plain:
    image: flotilla-demo:test
    command: ["sleep"]
"#;

#[test]
fn no_start_wait_healthy_and_failed_dependency() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("uw{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, FINE);

    // --no-start: created, not started.
    d.ok(&dir, &["up", "--no-start"]);
    let rows = d.ps(&dir, &project);
    assert!(rows.iter().all(|r| r["State"] == "created"), "{rows:?}");
    assert_eq!(rows.len(), 2, "{rows:?}");

    // --wait returns only once the checked service is healthy.
    d.ok(&dir, &["up", "-d", "--wait"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(rows_of(&rows, "fine")[0]["Health"], "healthy", "{rows:?}");
    assert_eq!(rows_of(&rows, "plain")[0]["State"], "running", "{rows:?}");
    d.ok(&dir, &["down"]);

    // An unhealthy dependency: --wait fails naming it and what it blocks.
    let project2 = format!("ux{}", d.name);
    let dir2 = d.root.path().join(&project2);
    write_project(&dir2, HEALTH);
    let out = d.cli_in(&dir2, &["up", "-d", "--wait", "--wait-timeout", "60"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("service sick is unhealthy"), "{err}");
    assert!(err.contains("web (service_healthy)"), "{err}");
    let rows = d.ps(&dir2, &project2);
    assert!(rows_of(&rows, "web").is_empty(), "{rows:?}");
    d.ok(&dir2, &["down"]);
}

const ABORT: &str = r#"
services:
  server:
    image: flotilla-demo:test
    command: ["sleep"]
  tests:
    image: flotilla-demo:test
    command: ["exit", "5"]
    restart: "no"
  checker:
    image: flotilla-demo:test
    command: ["sleep"]
"#;

#[test]
fn abort_on_container_exit_and_exit_code_from() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("ua{}", d.name);
    let dir = d.root.path().join(&project);
    // `tests` exits 5; everything else runs until stopped.
    write_project(&dir, ABORT);
    let out = d.cli_in(&dir, &["up", "--exit-code-from", "tests"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}\n{}", d.daemon_log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("exited with code 5"), "{stdout}");
    // Everything was stopped.
    let rows = d.ps(&dir, &project);
    assert!(
        rows.iter().all(|r| r["State"] == "exited"),
        "not all stopped: {rows:?}"
    );

    // --exit-code-from another service: that service's code once stopped
    // (the demo exits 0 on SIGTERM).
    let out = d.cli_in(&dir, &["up", "--exit-code-from", "server"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // --abort-on-container-exit: the code of the one that exited.
    let out = d.cli_in(&dir, &["up", "--abort-on-container-exit"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    d.ok(&dir, &["down"]);
}

const CHAIN: &str = r#"
services:
  db:
    image: flotilla-demo:test
    command: ["sleep"]
    stop_grace_period: 5s
  api:
    image: flotilla-demo:test
    command: ["stubborn"]
    stop_grace_period: 1s
    depends_on: [db]
  web:
    image: flotilla-demo:test
    command: ["sleep"]
    stop_signal: SIGINT
    depends_on: [api]
"#;

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
    fn all(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] == "task")
            .collect()
    }
    fn first(&self, service: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Option<i64> {
        self.all()
            .into_iter()
            .filter(|e| e["service"] == service)
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

#[test]
fn down_goes_in_reverse_dependency_order_with_grace_periods() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("ud{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, CHAIN);
    d.ok(&dir, &["up", "-d"]);
    let ev = Events::start(&d, &dir, &project);
    d.ok(&dir, &["down"]);
    let told = |svc: &str| {
        ev.first(svc, |e| e["desired"] == "shutdown")
            .unwrap_or_else(|| panic!("{svc} never told to stop: {:?}", ev.all()))
    };
    let gone = |svc: &str| {
        ev.first(svc, |e| e["state"] == "shutdown" || e["state"] == "failed")
            .unwrap_or_else(|| panic!("{svc} never stopped: {:?}", ev.all()))
    };
    let code = |svc: &str| {
        ev.all()
            .into_iter()
            .filter(|e| e["service"] == svc)
            .find_map(|e| e["exitCode"].as_i64())
    };
    // web stops first; api is told only once web's container is gone, and
    // db only once api's is.
    assert!(gone("web") <= told("api"), "{:?}", ev.all());
    assert!(gone("api") <= told("db"), "{:?}", ev.all());
    // web got its stop_signal (SIGINT: the demo exits 0 on it).
    assert_eq!(code("web"), Some(0), "{:?}", ev.all());
    // api ignores SIGTERM: killed after its 1s grace period, no sooner.
    assert_eq!(code("api"), Some(137), "{:?}", ev.all());
    assert!(
        gone("api") - told("api") >= 1_000_000_000,
        "api killed {}ms after the stop",
        (gone("api") - told("api")) / 1_000_000
    );
    assert_eq!(code("db"), Some(0), "{:?}", ev.all());
}

const CRASH: &str = r#"
services:
  crash:
    image: flotilla-demo:test
    command: ["exit", "3"]
    deploy:
      restart_policy:
        condition: on-failure
        delay: 60s
"#;

#[test]
fn ps_shows_a_restart_back_off() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("ub{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, CRASH);
    // It may be seen running for a moment before it fails: either way.
    let _ = d.cli_in(&dir, &["up", "-d", "--wait-timeout", "5"]);
    let rows = eventually(Duration::from_secs(20), || {
        let rows = d.ps(&dir, &project);
        (rows_of(&rows, "crash")[0]["State"] == "restarting").then_some(rows)
    })
    .unwrap_or_else(|| panic!("never restarting: {:?}", d.ps(&dir, &project)));
    let r = rows_of(&rows, "crash")[0];
    assert_eq!(r["State"], "restarting", "{rows:?}");
    assert_eq!(r["ExitCode"], 3, "{rows:?}");
    assert_eq!(r["RestartCount"], 0, "{rows:?}");
    let left = r["RestartIn"].as_f64().unwrap();
    assert!(left > 0.0 && left <= 60.0, "{rows:?}");
    let table = d.ok(&dir, &["ps", "-p", &project]);
    assert!(table.contains("Restarting (0) in"), "{table}");
    assert!(table.contains("(exit 3)"), "{table}");
    d.ok(&dir, &["down"]);
}

const PAIR: &str = r#"
services:
  a:
    image: flotilla-demo:test
    command: ["sleep"]
  b:
    image: flotilla-demo:test
    command: ["sleep"]
    depends_on: [a]
"#;

#[test]
fn two_ups_at_once_are_serialised_or_refused() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("uc{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, PAIR);
    let spawn = || {
        Command::new(flotilla_bin())
            .args(["up", "-d"])
            .envs(d.env())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (one, two) = (spawn(), spawn());
    let outs = [
        one.wait_with_output().unwrap(),
        two.wait_with_output().unwrap(),
    ];
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert!(ok >= 1, "{outs:?}");
    eprintln!("{ok} of 2 concurrent ups succeeded");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("another `up` for the same project is running"),
            "{err}"
        );
    }
    // Whatever happened, the stack is whole: one running container each.
    std::thread::sleep(Duration::from_millis(500));
    let rows = d.ps(&dir, &project);
    for svc in ["a", "b"] {
        let r = rows_of(&rows, svc);
        assert_eq!(r.len(), 1, "{rows:?}");
        assert_eq!(r[0]["State"], "running", "{rows:?}");
    }
    d.ok(&dir, &["down"]);
}
