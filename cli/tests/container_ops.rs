//! `top` and `stats` through the whole path (CLI → manager → agent →
//! cgroups and /proc of a real container). Needs root.

mod common;

use common::*;

#[test]
fn top_and_stats_show_the_running_containers() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("ops{}", d.name);
    let dir = d.root.path().join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n    mem_limit: 64m\n    pids_limit: 40\n",
    )
    .unwrap();
    let up = d.ok(&dir, &["--progress", "plain", "up", "-d"]);
    let name = format!("{project}-store-1");
    assert!(
        up.lines()
            .any(|l| l.contains(&format!("Container {name}")) && l.ends_with("Started")),
        "{up}"
    );
    let again = d.ok(&dir, &["--progress", "quiet", "up", "-d"]);
    assert_eq!(again, "", "quiet prints nothing");
    let rows = d.ps(&dir, &project);
    assert!(rows.iter().any(|r| r["Name"] == name.as_str()), "{rows:?}");

    let top = d.ok(&dir, &["top"]);
    let mut lines = top.lines();
    assert_eq!(lines.next(), Some(name.as_str()), "{top}");
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("UID") && header.contains("CMD"), "{top}");
    let procs: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(procs.len(), 1, "one process, the service: {top}");
    assert!(procs[0].contains("store"), "{top}");
    // The PID column is a real host pid of that container's process.
    let pid: i64 = procs[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("store"));

    let out = d.ok(&dir, &["stats", "--no-stream", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["Name"], name.as_str(), "{out}");
    assert!(
        v["MemUsage"].as_str().unwrap().ends_with("/ 64.00MiB"),
        "{out}"
    );
    assert_eq!(v["PIDs"], "1", "{out}");

    let table = d.ok(&dir, &["stats", "--no-stream"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&name), "{table}");

    // cp both ways: a local directory into the container and back out
    // under a new name.
    let src = d.root.path().join("cp-src");
    std::fs::create_dir_all(src.join("inner")).unwrap();
    std::fs::write(src.join("inner/note.txt"), "carried").unwrap();
    d.ok(&dir, &["cp", src.to_str().unwrap(), "store:/tmp"]);
    let back = d.root.path().join("cp-back");
    d.ok(&dir, &["cp", "store:/tmp/cp-src", back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("inner/note.txt")).unwrap(),
        "carried"
    );
    // Copying from a path that does not exist names it.
    let missing = d.cli_in(&dir, &["cp", "store:/no/such", back.to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/no/such"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // exec: stdin is streamed in (-T, no terminal), -u picks the user, -t
    // gives the command a terminal made inside the container.
    d.ok(&dir, &["cp", "/bin/busybox", "store:/busybox"]);
    let mut child = std::process::Command::new(flotilla_bin())
        .args([
            "exec",
            "-T",
            "store",
            "/busybox",
            "sh",
            "-c",
            "/busybox tr a-z A-Z; echo err >&2; exit 5",
        ])
        .current_dir(&dir)
        .envs(d.env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"streamed in\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "STREAMED IN\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let id = d.ok(
        &dir,
        &["exec", "-T", "-u", "1234:5678", "store", "/busybox", "id"],
    );
    assert!(id.starts_with("uid=1234 gid=5678"), "{id}");

    let tty = d.ok(&dir, &["exec", "-t", "store", "/busybox", "tty"]);
    assert!(tty.trim().starts_with("/dev/pts/"), "{tty}");

    let missing = d.cli_in(&dir, &["exec", "-T", "store", "/no/such/binary"]);
    assert_eq!(missing.status.code(), Some(126), "{missing:?}");

    // The image a running container uses cannot be removed without -f.
    let rm = d.cli_in(&dir, &["image", "rm", "flotilla-demo:test"]);
    assert!(!rm.status.success());
    assert!(
        String::from_utf8_lossy(&rm.stderr).contains("used by a container"),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );

    // A service that does not exist is a clear error.
    let bad = d.cli_in(&dir, &["top", "nosuch"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("nosuch"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    d.ok(&dir, &["down"]);
}
