//! The shim's socket beyond the lifecycle: `stats` (the container's cgroup
//! read by the shim), `attach` (its output as it is written) and what an
//! unknown request gets. Real containers, through the crate's `shim`
//! example; build it first when running only this target:
//! `cargo build -p flotilla-runtime --example shim --example flotilla-shim-monitor`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::TestEnv;
use flotilla_runtime::container::{ContainerState, Resources};
use flotilla_runtime::logs::{self, LogStream};

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

#[test]
fn stats_come_from_the_containers_cgroup() {
    let env = TestEnv::new("sstats");
    let mut spec = env.spec("s", &["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    spec.resources = Resources {
        memory_bytes: Some(48 << 20),
        pids_limit: Some(30),
        ..Default::default()
    };
    let info = env.rt.create(&spec).unwrap();
    // The shell and its two sleeps.
    eventually("the container runs three processes", || {
        env.rt
            .shim_stats(&spec.id)
            .is_ok_and(|s| s.cgroup.pids == 3)
    });
    let s = env.rt.shim_stats(&spec.id).unwrap();
    assert_eq!(s.cgroup.memory_limit_bytes, 48 << 20, "{s:?}");
    assert_eq!(s.cgroup.pids_limit, 30, "{s:?}");
    assert!(s.cgroup.memory_usage_bytes > 0, "{s:?}");
    assert!(s.online_cpus >= 1, "{s:?}");
    // The same cgroup the runtime itself reads.
    let direct = env.rt.stats(&spec.id).unwrap();
    assert_eq!(
        direct.cgroup.memory_limit_bytes,
        s.cgroup.memory_limit_bytes
    );
    assert_eq!(direct.cgroup.pids, s.cgroup.pids);
    assert_eq!(info.state, ContainerState::Running);
}

#[test]
fn attach_streams_what_the_container_writes_after_attaching() {
    let env = TestEnv::new("sattach");
    // Prints one line, then waits for /tmp/go (made by the test through the
    // rootfs) before printing the rest and exiting.
    let script = "echo before; while [ ! -e /tmp/go ]; do sleep 0.05; done; \
                  echo one; echo two >&2; echo three; exit 3";
    let spec = env.spec("a", &["sh", "-c", script]);
    env.rt.create(&spec).unwrap();
    let log = env.rt.log_path(&spec.id);
    eventually("the first line is logged", || {
        logs::read(&log, None, None, None)
            .unwrap()
            .iter()
            .any(|e| e.line == b"before\n")
    });

    // A client that attaches and goes away leaves the shim serving.
    drop(env.rt.attach(&spec.id).unwrap());
    let mut a = env.rt.attach(&spec.id).unwrap();
    a.set_timeout(Some(Duration::from_secs(30))).unwrap();
    // A second client at once gets the same lines.
    let mut b = env.rt.attach(&spec.id).unwrap();
    b.set_timeout(Some(Duration::from_secs(30))).unwrap();
    std::fs::write(env.rt.rootfs_path(&spec.id).join("tmp/go"), b"").unwrap();

    for client in [&mut a, &mut b] {
        let mut got = Vec::new();
        while let Some(e) = client.next_entry().unwrap() {
            got.push((e.stream, String::from_utf8_lossy(&e.line).into_owned()));
        }
        // Only what came after attaching, stderr included, in order within
        // each stream (two pipes have no order between them); the stream
        // ends when the container exits.
        let of = |stream| {
            got.iter()
                .filter(|(s, _)| *s == stream)
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(of(LogStream::Stdout), ["one\n", "three\n"], "{got:?}");
        assert_eq!(of(LogStream::Stderr), ["two\n"], "{got:?}");
        assert_eq!(got.len(), 3, "{got:?}");
    }
    let info = env
        .rt
        .wait(&spec.id, Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(info.exit_code, Some(3));
    // Attaching to an exited container answers and ends at once.
    let mut late = env.rt.attach(&spec.id).unwrap();
    late.set_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(late.next_entry().unwrap().is_none());
}

#[test]
fn unknown_request_is_refused_by_name() {
    let env = TestEnv::new("sunknown");
    let spec = env.spec("u", &["sleep", "1000"]);
    env.rt.create(&spec).unwrap();
    let mut stream = UnixStream::connect(env.rt.shim_socket(&spec.id)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(b"{\"op\":\"frobnicate\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let resp: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(resp["ok"], false, "{line}");
    let err = resp["error"].as_str().unwrap_or_default();
    assert!(err.contains("unknown request \"frobnicate\""), "{err}");
    assert!(err.contains("stats") && err.contains("attach"), "{err}");
    // The shim goes on serving its container.
    assert_eq!(
        env.rt.inspect(&spec.id).unwrap().state,
        ContainerState::Running
    );
}
