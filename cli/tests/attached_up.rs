//! `flotilla up` without `-d` attaches to the stack's logs, and Ctrl-C
//! (SIGINT) stops the stack's services through the manager, like Compose.
//! Needs root.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn attached_up_streams_logs_and_ctrl_c_stops_the_stack() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("att{}", d.name);
    let dir = d.root.path().join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n",
    )
    .unwrap();

    let mut child = Command::new(flotilla_bin())
        .args(["up", "-p", &project])
        .envs(d.env())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The container's own output arrives prefixed with its service.
    let mut seen = Vec::new();
    let got = eventually(Duration::from_secs(30), || {
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        seen.iter()
            .any(|l| l.starts_with("store-1") && l.contains("listening"))
            .then_some(())
    });
    assert!(
        got.is_some(),
        "no log line from store: {seen:?}\n{}",
        d.daemon_log()
    );
    let pid = d.ps(&dir, &project)[0]["Pid"].as_i64().unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "up should exit non-zero after Ctrl-C");

    // The service is stopped (desired state written through the manager),
    // its container exited; the stack still exists until `down`.
    let stopped = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &project);
        (rows.len() == 1 && rows[0]["State"] == "exited").then_some(())
    });
    assert!(
        stopped.is_some(),
        "after Ctrl-C: {:?}",
        d.ps(&dir, &project)
    );
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true),
        "container process {pid} still running"
    );
    d.ok(&dir, &["down"]);
}
