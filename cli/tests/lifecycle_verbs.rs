//! The verbs around a stack's containers, with real containers: `create`
//! then `start`, `rm` (and `up` bringing removed containers back), `run`
//! (exit code, environment, `--rm`), `wait`, `images`, `inspect`, and
//! `pause`/`unpause` (also across a daemon restart). Needs root.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

fn rows_of<'a>(rows: &'a [serde_json::Value], service: &str) -> Vec<&'a serde_json::Value> {
    rows.iter().filter(|r| r["Service"] == service).collect()
}

fn state_of(rows: &[serde_json::Value], service: &str) -> Vec<String> {
    rows_of(rows, service)
        .iter()
        .map(|r| r["State"].as_str().unwrap_or("").to_string())
        .collect()
}

const STACK: &str = r#"
services:
  db:
    image: flotilla-demo:test
    command: ["sleep"]
  app:
    image: flotilla-demo:test
    command: ["sleep"]
    environment:
      FROM_FILE: "yes"
    depends_on:
      db:
        condition: service_started
  ticker:
    image: flotilla-demo:test
    command: ["sleep", "2"]
    restart: "no"
    profiles: ["manual"]
"#;

#[test]
fn create_start_rm_and_up_again() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lv{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, STACK);

    // create: containers made, nothing started.
    d.ok(&dir, &["create"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(state_of(&rows, "db"), vec!["created"], "{rows:?}");
    assert_eq!(state_of(&rows, "app"), vec!["created"], "{rows:?}");
    assert!(rows.iter().all(|r| r["Pid"] == 0), "{rows:?}");

    // start: they run (db first, app once db runs).
    d.ok(&dir, &["start"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(state_of(&rows, "db"), vec!["running"], "{rows:?}");
    assert_eq!(state_of(&rows, "app"), vec!["running"], "{rows:?}");
    let app_pid = rows_of(&rows, "app")[0]["Pid"].as_i64().unwrap();
    assert!(app_pid > 0);
    assert!(Path::new(&format!("/proc/{app_pid}")).exists());

    // rm without -s removes nothing that runs.
    let out = d.ok(&dir, &["rm", "app"]);
    assert!(out.contains("No stopped containers"), "{out}");
    assert_eq!(state_of(&d.ps(&dir, &project), "app"), vec!["running"]);

    // rm -s: stopped, then removed; nothing brings it back by itself.
    let out = d.ok(&dir, &["rm", "-s", "app"]);
    assert!(out.contains("Removed"), "{out}");
    assert!(
        eventually(Duration::from_secs(10), || {
            (!Path::new(&format!("/proc/{app_pid}")).exists()).then_some(())
        })
        .is_some(),
        "the app's process still runs"
    );
    std::thread::sleep(Duration::from_secs(1));
    let rows = d.ps(&dir, &project);
    assert!(rows_of(&rows, "app").is_empty(), "{rows:?}");
    assert_eq!(state_of(&rows, "db"), vec!["running"], "{rows:?}");

    // up makes it again.
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(state_of(&rows, "app"), vec!["running"], "{rows:?}");
    let new_pid = rows_of(&rows, "app")[0]["Pid"].as_i64().unwrap();
    assert_ne!(new_pid, app_pid);

    // images: both containers use the demo image, on this node.
    let out = d.ok(&dir, &["images", "--format", "json"]);
    let imgs: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let imgs = imgs.as_array().unwrap();
    assert_eq!(imgs.len(), 2, "{imgs:?}");
    for i in imgs {
        assert_eq!(i["Repository"], "flotilla-demo", "{i}");
        assert_eq!(i["Tag"], "test", "{i}");
        assert!(i["ID"].as_str().unwrap().starts_with("sha256:"), "{i}");
        assert!(i["Size"].as_u64().unwrap() > 0, "{i}");
    }

    // inspect: stack, service and task as JSON.
    let out = d.ok(&dir, &["inspect", &project]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["Type"], "stack");
    assert_eq!(v[0]["Name"], project.as_str());
    let out = d.ok(&dir, &["inspect", "--type", "service", "app"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["Name"], "app");
    assert_eq!(v[0]["Config"]["DependsOn"][0]["Service"], "db");
    assert_eq!(v[0]["Tasks"][0]["State"], "running");
    let task_name = format!("{project}-app-1");
    let out = d.ok(&dir, &["inspect", &task_name]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["Type"], "task");
    assert_eq!(v[0]["State"]["Pid"].as_i64(), Some(new_pid));

    d.ok(&dir, &["down"]);
}

#[test]
fn run_wait_and_one_off_tasks() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lr{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, STACK);

    // run starts the dependency, passes the environment, exits with the
    // command's code, and --rm removes the container.
    let out = d.cli_in(&dir, &["run", "--rm", "-e", "EXTRA=42", "app", "env"]);
    assert!(out.status.success(), "{out:?}\n{}", d.daemon_log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("EXTRA=42"), "{stdout}");
    assert!(stdout.contains("FROM_FILE=yes"), "{stdout}");
    let rows = d.ps(&dir, &project);
    assert_eq!(state_of(&rows, "db"), vec!["running"], "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| !r["Name"].as_str().unwrap_or("").contains("-run-")),
        "--rm left the one-off container: {rows:?}"
    );
    // The service itself was never started by run.
    assert!(rows_of(&rows, "app").is_empty(), "{rows:?}");

    let out = d.cli_in(&dir, &["run", "--no-deps", "app", "exit", "7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    // Without --rm the one-off container stays (exited) until rm.
    let rows = d.ps(&dir, &project);
    let oneoff: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["Name"].as_str().unwrap_or("").contains("-run-"))
        .collect();
    assert_eq!(oneoff.len(), 1, "{rows:?}");
    assert_eq!(oneoff[0]["ExitCode"], 7);
    d.ok(&dir, &["rm", "app"]);
    let rows = d.ps(&dir, &project);
    assert!(
        rows.iter()
            .all(|r| !r["Name"].as_str().unwrap_or("").contains("-run-")),
        "{rows:?}"
    );

    // -w, --entrypoint: the command runs where and as asked.
    let out = d.ok(
        &dir,
        &[
            "run",
            "--rm",
            "--no-deps",
            "-w",
            "/etc",
            "--entrypoint",
            "/demo",
            "app",
            "ls",
        ],
    );
    assert!(out.lines().any(|l| l == "passwd"), "{out}");
    // -d --name: a named one-off container keeps running; rm -s stops and
    // removes it.
    let name = format!("{project}-job");
    let out = d.ok(
        &dir,
        &["run", "-d", "--no-deps", "--name", &name, "app", "sleep"],
    );
    assert_eq!(out.trim(), name);
    let rows = d.ps(&dir, &project);
    let job: Vec<&serde_json::Value> = rows.iter().filter(|r| r["Name"] == name.as_str()).collect();
    assert_eq!(job.len(), 1, "{rows:?}");
    assert_eq!(job[0]["State"], "running", "{rows:?}");
    let job_pid = job[0]["Pid"].as_i64().unwrap();
    d.ok(&dir, &["rm", "-s", "app"]);
    let rows = d.ps(&dir, &project);
    assert!(rows.iter().all(|r| r["Name"] != name.as_str()), "{rows:?}");
    assert!(!Path::new(&format!("/proc/{job_pid}")).exists());

    // up SERVICE deploys that one and leaves the rest as they are.
    let db_pid = rows_of(&d.ps(&dir, &project), "db")[0]["Pid"].clone();
    // wait: blocks until the container exits, prints its code.
    d.ok(&dir, &["--profile", "manual", "up", "-d", "ticker"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(rows_of(&rows, "db")[0]["Pid"], db_pid, "{rows:?}");
    assert!(rows_of(&rows, "app").is_empty(), "{rows:?}");
    let out = d.ok(&dir, &["wait", "ticker"]);
    assert_eq!(out.trim(), "0", "{out}");
    let rows = d.ps(&dir, &project);
    assert_eq!(state_of(&rows, "ticker"), vec!["exited"], "{rows:?}");

    d.ok(&dir, &["down"]);
}

/// The scheduler state of a process ('S', 'R', 'D', ...).
fn proc_state(pid: i64) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("State:"))
        .and_then(|v| v.trim().chars().next())
}

const PAUSE: &str = r#"
services:
  one:
    image: flotilla-demo:test
    command: ["sleep"]
    # Probing a frozen container would time out: paused, it is not probed.
    healthcheck:
      test: ["CMD", "/demo", "echo", "ok"]
      interval: 200ms
      timeout: 1s
      retries: 2
  two:
    image: flotilla-demo:test
    command: ["sleep"]
"#;

#[test]
fn pause_freezes_and_unpause_thaws() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lz{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, PAUSE);
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    let pid = rows_of(&rows, "one")[0]["Pid"].as_i64().unwrap();

    let healthy = |d: &Daemon| {
        eventually(Duration::from_secs(20), || {
            let rows = d.ps(&dir, &project);
            (rows_of(&rows, "one")[0]["Health"] == "healthy").then_some(())
        })
        .is_some()
    };
    assert!(healthy(&d), "{:?}", d.ps(&dir, &project));

    let out = d.ok(&dir, &["pause", "one"]);
    assert!(out.contains("Paused"), "{out}");
    // Long enough for two probes to time out if they ran.
    std::thread::sleep(Duration::from_secs(3));
    let rows = d.ps(&dir, &project);
    assert_eq!(rows_of(&rows, "one")[0]["Health"], "healthy", "{rows:?}");
    let rows = d.ps(&dir, &project);
    assert_eq!(state_of(&rows, "one"), vec!["paused"], "{rows:?}");
    assert_eq!(state_of(&rows, "two"), vec!["running"], "{rows:?}");
    // Frozen by the kernel: the process sleeps uninterruptibly.
    assert_eq!(proc_state(pid), Some('D'));
    // The same process, not a new container: still paused a while later
    // (nothing restarts it).
    std::thread::sleep(Duration::from_secs(1));
    let rows = d.ps(&dir, &project);
    assert_eq!(rows_of(&rows, "one")[0]["Pid"].as_i64(), Some(pid));
    assert_eq!(state_of(&rows, "one"), vec!["paused"], "{rows:?}");

    // A restarted daemon finds the container still frozen and keeps it so.
    d.kill9();
    d.start();
    std::thread::sleep(Duration::from_secs(1));
    let rows = d.ps(&dir, &project);
    assert_eq!(state_of(&rows, "one"), vec!["paused"], "{rows:?}");
    assert_eq!(rows_of(&rows, "one")[0]["Pid"].as_i64(), Some(pid));
    assert_eq!(proc_state(pid), Some('D'));

    let out = d.ok(&dir, &["unpause", "one"]);
    assert!(out.contains("Unpaused"), "{out}");
    let rows = d.ps(&dir, &project);
    assert_eq!(state_of(&rows, "one"), vec!["running"], "{rows:?}");
    assert_eq!(rows_of(&rows, "one")[0]["Pid"].as_i64(), Some(pid));
    assert_ne!(proc_state(pid), Some('D'));
    assert!(healthy(&d), "{:?}", d.ps(&dir, &project));

    // A paused container can be stopped (down) like any other.
    d.ok(&dir, &["pause"]);
    d.ok(&dir, &["down"]);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
