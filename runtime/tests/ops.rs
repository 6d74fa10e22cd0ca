//! pause/unpause, stats and top on real containers (needs root and the
//! cgroup v1 freezer, as this host has; the v2 path is covered against a
//! fake cgroupfs tree in the unit tests of `container::cgroup_ops`).
//!
//! Build the shim first when running only this target:
//! `cargo build -p flotilla-runtime --example shim`.

use std::time::{Duration, Instant};

mod common;
use common::*;

fn read_counter(env: &TestEnv, id: &str) -> Option<u64> {
    std::fs::read_to_string(env.rt.rootfs_path(id).join("tmp/counter"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pause_freezes_every_process_and_resume_thaws_them() {
    let env = TestEnv::new("pause");
    let spec = env.spec(
        "counter",
        &[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.02; done",
        ],
    );
    let id = spec.id.clone();
    env.rt.create(&spec).unwrap();
    wait_until("the counter to start", || read_counter(&env, &id).is_some());

    env.rt.pause(&id).unwrap();
    assert!(env.rt.is_paused(&id).unwrap());
    let frozen_at = read_counter(&env, &id).unwrap();
    // Long enough for dozens of increments if anything still ran.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        read_counter(&env, &id),
        Some(frozen_at),
        "counter moved while paused"
    );
    // A paused container still counts as running (as in Docker).
    assert_eq!(
        env.rt.inspect(&id).unwrap().state,
        flotilla_runtime::container::ContainerState::Running
    );

    env.rt.resume(&id).unwrap();
    assert!(!env.rt.is_paused(&id).unwrap());
    wait_until("the counter to move again", || {
        read_counter(&env, &id).is_some_and(|n| n > frozen_at)
    });
}

#[test]
fn pause_of_a_missing_container_is_not_found() {
    let env = TestEnv::new("pausemissing");
    let err = env.rt.pause("no-such-container").unwrap_err();
    assert!(err.to_string().contains("no-such-container"), "{err}");
}

#[test]
fn stats_read_the_container_cgroup() {
    let env = TestEnv::new("stats");
    let mut spec = env.spec(
        "busy",
        &[
            "sh",
            "-c",
            "head -c 20000000 /dev/urandom | md5sum; sleep 1000",
        ],
    );
    spec.resources.memory_bytes = Some(64 << 20);
    spec.resources.pids_limit = Some(50);
    let id = spec.id.clone();
    env.rt.create(&spec).unwrap();
    let mut s = env.rt.stats(&id).unwrap();
    wait_until("cpu time to be used", || {
        s = env.rt.stats(&id).unwrap();
        s.cgroup.cpu_usage_ns > 0
    });
    assert_eq!(s.cgroup.memory_limit_bytes, 64 << 20);
    assert!(s.cgroup.memory_usage_bytes > 0, "{s:?}");
    assert_eq!(s.cgroup.pids_limit, 50);
    assert!(s.cgroup.pids >= 1, "{s:?}");
    assert!(s.system_cpu_ns > s.cgroup.cpu_usage_ns, "{s:?}");
    assert!(s.online_cpus >= 1);
}

#[test]
fn stats_of_an_exited_container_say_it_is_not_running() {
    let env = TestEnv::new("statsexit");
    let spec = env.spec("done", &["true"]);
    let (info, _) = run_to_exit(&env, &spec);
    assert_eq!(info.exit_code, Some(0));
    let err = env.rt.stats(&spec.id).unwrap_err();
    assert!(err.to_string().contains("not running"), "{err}");
}

#[test]
fn top_lists_the_container_processes() {
    let env = TestEnv::new("top");
    let spec = env.spec("procs", &["sh", "-c", "sleep 1001 & sleep 1002 & wait"]);
    let id = spec.id.clone();
    let info = env.rt.create(&spec).unwrap();
    let init = info.pid.unwrap();
    let mut procs = Vec::new();
    wait_until("both sleeps to run", || {
        procs = env.rt.top(&id).unwrap();
        procs
            .iter()
            .filter(|p| p.command.starts_with("sleep 100"))
            .count()
            == 2
    });
    let sh = procs.iter().find(|p| p.pid == init).expect("init listed");
    assert!(sh.command.starts_with("sh -c"), "{sh:?}");
    for p in procs.iter().filter(|p| p.command.starts_with("sleep")) {
        assert_eq!(p.ppid, init, "{p:?}");
        assert_eq!(p.uid, 0);
        assert_eq!(p.user, "root", "name from the container's /etc/passwd");
        assert!(p.rss_bytes > 0);
        assert!(p.started_at.is_some());
    }
    // Nothing outside the container is listed.
    assert!(procs.iter().all(|p| p.pid != std::process::id() as i32));
}

#[test]
fn cp_round_trips_and_symlinks_cannot_escape_the_container() {
    let env = TestEnv::new("cp");
    // /data/escape points at the host path of a secret outside the
    // container; inside the container it must resolve to the container's own.
    let secret_dir = env.tmp.path().join("host-secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("s.txt"), "HOST SECRET").unwrap();
    let script = format!(
        "mkdir -p /data/sub {d} && echo inside > /data/sub/f.txt && echo decoy > {d}/s.txt && ln -s {d} /data/escape && sleep 1000",
        d = secret_dir.display()
    );
    let spec = env.spec("files", &["sh", "-c", &script]);
    let id = spec.id.clone();
    env.rt.create(&spec).unwrap();
    wait_until("the files to exist", || {
        env.rt.rootfs_path(&id).join("data/escape").exists()
    });

    // Out: a tar of /data, named "data".
    let mut tar_bytes = Vec::new();
    env.rt.copy_from(&id, "/data", &mut tar_bytes).unwrap();
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    for e in ar.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.iter().any(|n| n == "data/sub/f.txt"), "{names:?}");

    // Through the symlink: the container's file, never the host's.
    let mut out = Vec::new();
    env.rt
        .copy_from(&id, "/data/escape/s.txt", &mut out)
        .unwrap();
    let mut ar = tar::Archive::new(&out[..]);
    let mut e = ar.entries().unwrap().next().unwrap().unwrap();
    let mut content = String::new();
    std::io::Read::read_to_string(&mut e, &mut content).unwrap();
    assert_eq!(content.trim(), "decoy");

    // In: unpack under /data/sub, and as a new name.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "new.txt", &b"fresh"[..]).unwrap();
    let upload = b.into_inner().unwrap();
    env.rt.copy_to(&id, "/data/sub", &mut &upload[..]).unwrap();
    env.rt
        .copy_to(&id, "/data/renamed.txt", &mut &upload[..])
        .unwrap();
    let root = env.rt.rootfs_path(&id);
    assert_eq!(
        std::fs::read_to_string(root.join("data/sub/new.txt")).unwrap(),
        "fresh"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("data/renamed.txt")).unwrap(),
        "fresh"
    );

    // Writing through the symlink lands inside the container too.
    env.rt
        .copy_to(&id, "/data/escape", &mut &upload[..])
        .unwrap();
    assert!(
        !secret_dir.join("new.txt").exists(),
        "wrote outside the container"
    );
    assert!(root
        .join(secret_dir.strip_prefix("/").unwrap())
        .join("new.txt")
        .exists());

    // A missing source and a relative path are clear errors.
    let err = env.rt.copy_from(&id, "/nope", &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("/nope"), "{err}");
    let err = env.rt.copy_from(&id, "data", &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
}

#[test]
fn exec_with_a_terminal_gets_a_container_pty_of_the_given_size_and_user() {
    use flotilla_runtime::container::pty::{set_window_size, ConsoleSocket};
    use flotilla_runtime::container::ExecSpec;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    let env = TestEnv::new("tty");
    let spec = env.spec("sleeper", &["sleep", "1000"]);
    let id = spec.id.clone();
    env.rt.create(&spec).unwrap();

    let console = ConsoleSocket::bind(&env.tmp.path().join("console.sock")).unwrap();
    let exec = ExecSpec {
        // Waits for a line so the size is set before it is read.
        args: vec![
            "sh".into(),
            "-c".into(),
            "read x; tty; stty size; id -u; exit 3".into(),
        ],
        user: Some("app".into()),
        ..Default::default()
    };
    let mut child = env.rt.exec_spawn_tty(&id, &exec, console.path()).unwrap();
    let master = console
        .receive_master(Duration::from_secs(20), || false)
        .unwrap();
    set_window_size(master.as_fd(), 41, 123).unwrap();
    let mut term = std::fs::File::from(master);
    term.write_all(b"go\n").unwrap();
    let mut out = Vec::new();
    // Reading the master fails with EIO once the process has exited.
    let mut buf = [0u8; 1024];
    loop {
        match term.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let status = child.wait().unwrap();
    let text = String::from_utf8_lossy(&out).replace('\r', "");
    assert_eq!(status.code(), Some(3), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{text}");
    assert!(lines.contains(&"41 123"), "{text}");
    assert!(lines.contains(&"1000"), "runs as app: {text}");
}

#[test]
fn a_create_cut_short_is_swept_and_the_id_can_be_used_again() {
    let env = TestEnv::new("sweep");
    let spec = env.spec("half", &["sleep", "1000"]);
    let id = spec.id.clone();
    // What a creator killed right after making the directory and mounting
    // the overlay leaves: no meta.json, a mounted rootfs, a cgroup dir.
    let dir = env.cfg.state_dir.join(&id);
    let (upper, work, rootfs) = (
        dir.join("upper"),
        dir.join("work"),
        dir.join("bundle/rootfs"),
    );
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        env.layer.display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .unwrap();
    assert!(flotilla_runtime::container::is_mounted(&rootfs));
    let cg = env.rt.cgroup_dirs(&id).into_iter().next().unwrap();
    std::fs::create_dir_all(&cg).unwrap();
    // A healthy container beside it must be left alone.
    let keep = env.spec("keep", &["sleep", "1000"]);
    env.rt.create(&keep).unwrap();

    // Not listed (it never existed as a container)...
    assert!(env.rt.list().unwrap().iter().all(|c| c.id != id));
    // ...and blocking its id until swept.
    assert!(env.rt.create(&spec).is_err());
    assert_eq!(env.rt.sweep_incomplete().unwrap(), vec![id.clone()]);
    assert!(!flotilla_runtime::container::is_mounted(&rootfs));
    assert!(!dir.exists());
    assert!(!cg.exists());
    assert_eq!(
        env.rt.inspect(&keep.id).unwrap().state,
        flotilla_runtime::container::ContainerState::Running
    );
    env.rt.create(&spec).unwrap();
    assert_eq!(env.rt.sweep_incomplete().unwrap(), Vec::<String>::new());
}
