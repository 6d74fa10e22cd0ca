//! Restart safety: killing the daemon with SIGKILL under a running stack
//! leaves the containers running; a restarted daemon re-attaches to them
//! and reports exits that happened while it was down. Needs root.

mod common;

use common::*;
use std::time::Duration;

const COMPOSE: &str = r#"
services:
  store:
    image: flotilla-demo:test
    command: ["store"]
  api:
    image: flotilla-demo:test
    command: ["api"]
    environment:
      STORE_URL: http://store:6000
    depends_on: [store]
"#;

#[test]
fn sigkill_daemon_keeps_containers_and_restart_reattaches() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("rs{}", d.name);
    let dir = d.root.path().join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), COMPOSE).unwrap();
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(rows.len(), 2);
    let pid_of = |rows: &[serde_json::Value], svc: &str| {
        rows.iter().find(|r| r["Service"] == svc).unwrap()["Pid"]
            .as_i64()
            .unwrap()
    };
    let store_pid = pid_of(&rows, "store");
    let api_pid = pid_of(&rows, "api");

    let daemon_pid = d.pid().unwrap();
    d.kill9();
    assert!(
        !std::path::Path::new(&format!("/proc/{daemon_pid}/cmdline")).exists() || {
            let s = std::fs::read_to_string(format!("/proc/{daemon_pid}/stat")).unwrap_or_default();
            s.contains(") Z")
        }
    );
    // Containers untouched by the daemon's death.
    for pid in [store_pid, api_pid] {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "container {pid} died with the daemon"
        );
    }
    // While the daemon is down, the api container exits (killed from outside).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(api_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    d.start();
    // The store is still tracked with the same process; the api's exit was
    // noticed and reported with its code.
    let seen = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &project);
        let store = rows.iter().find(|r| r["Service"] == "store")?;
        let api = rows.iter().find(|r| r["Service"] == "api")?;
        (store["State"] == "running"
            && store["Pid"].as_i64() == Some(store_pid)
            && api["State"] == "exited"
            && api["ExitCode"].as_i64() == Some(137))
        .then_some(())
    });
    assert!(
        seen.is_some(),
        "after restart: {:?}\n{}",
        d.ps(&dir, &project),
        d.daemon_log()
    );

    // The restarted daemon still controls what it re-adopted.
    d.ok(&dir, &["down"]);
    assert!(
        eventually(Duration::from_secs(10), || (!std::path::Path::new(
            &format!("/proc/{store_pid}")
        )
        .exists())
        .then_some(()))
        .is_some(),
        "store container survived down after re-adoption"
    );
}
