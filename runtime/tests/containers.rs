//! Real containers on the real kernel (needs root, overlayfs, cgroups).
//!
//! The shim binary is the crate's `shim` example, which `cargo test -p
//! flotilla-runtime` builds next to this test binary
//! (`target/<profile>/examples/shim`). When running only this test target
//! (`--test containers`), build it first: `cargo build -p flotilla-runtime --example shim`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_runtime::container::{
    is_mounted, ContainerError, ContainerSpec, ContainerState, Device, Mount, MountKind, Resources,
    Runtime, RuntimeConfig, SeccompProfile, Security, Ulimit,
};
use flotilla_runtime::logs::{self, LogStream};

mod common;
use common::*;

/// Whether the process is gone (or a zombie nobody reaped yet).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn runs_process_logs_output_and_isolates() {
    let env = TestEnv::new("hello");
    let spec = env.spec(
        "hello",
        &[
            "sh",
            "-c",
            "echo hello; echo err >&2; hostname; echo $$; echo $FOO; printf partial",
        ],
    );
    let (info, entries) = run_to_exit(&env, &spec);
    assert_eq!(info.state, ContainerState::Exited);
    assert_eq!(info.exit_code, Some(0));
    assert!(!info.oom_killed);
    assert!(info.finished_at >= info.started_at);
    assert_eq!(
        lines(&entries, LogStream::Stdout),
        vec!["hello\n", "host-hello\n", "1\n", "bar\n", "partial"]
    );
    assert_eq!(lines(&entries, LogStream::Stderr), vec!["err\n"]);

    let raw = std::fs::read_to_string(env.rt.log_path(&spec.id)).unwrap();
    let first: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert!(
        raw.contains(r#"{"log":"hello\n","stream":"stdout","time":"#),
        "{raw}"
    );
}

#[test]
fn exit_code_and_missing_executable() {
    let env = TestEnv::new("codes");
    let spec = env.spec("exit3", &["sh", "-c", "exit 3"]);
    let (info, _) = run_to_exit(&env, &spec);
    assert_eq!(info.exit_code, Some(3));

    let bad = env.spec("nope", &["/bin/does-not-exist"]);
    match env.rt.create(&bad) {
        Err(ContainerError::Start { message, .. }) => {
            assert!(message.contains("does-not-exist"), "{message}")
        }
        other => panic!("expected a start error, got {other:?}"),
    }
    // A failed create leaves nothing behind.
    assert!(matches!(
        env.rt.inspect(&bad.id),
        Err(ContainerError::NotFound { .. })
    ));
    assert!(!env.cfg.state_dir.join(&bad.id).exists());
    assert!(!is_mounted(&env.rt.rootfs_path(&bad.id)));
    assert!(env.rt.cgroup_dirs(&bad.id).iter().all(|d| !d.exists()));
}

#[test]
fn stop_signals_then_kills_after_grace() {
    let env = TestEnv::new("stop");
    // `sleep` as pid 1 has no SIGTERM handler, so the kernel ignores SIGTERM
    // and stop() must escalate to SIGKILL.
    let spec = env.spec("sleep", &["sleep", "1000"]);
    env.rt.create(&spec).unwrap();
    assert_eq!(
        env.rt.inspect(&spec.id).unwrap().state,
        ContainerState::Running
    );
    let info = env
        .rt
        .stop(&spec.id, libc::SIGTERM, Duration::from_millis(300))
        .unwrap();
    assert_eq!(info.state, ContainerState::Exited);
    assert_eq!(info.exit_code, Some(137));

    // A shell that handles SIGTERM exits by itself.
    let spec = env.spec(
        "trap",
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    env.rt.create(&spec).unwrap();
    let log = env.rt.log_path(&spec.id);
    eventually("the shell installs its trap", || {
        logs::read(&log, None, None, None).unwrap().len() == 1
    });
    let info = env
        .rt
        .stop(&spec.id, libc::SIGTERM, Duration::from_secs(30))
        .unwrap();
    assert_eq!(info.exit_code, Some(143));
}

#[test]
fn runs_as_requested_user() {
    let env = TestEnv::new("user");
    let mut spec = env.spec("u1000", &["sh", "-c", "id -u; id -g"]);
    spec.user = "1000".into();
    let (info, entries) = run_to_exit(&env, &spec);
    assert_eq!(info.exit_code, Some(0));
    assert_eq!(lines(&entries, LogStream::Stdout), vec!["1000\n", "1000\n"]);

    let mut spec = env.spec("uapp", &["sh", "-c", "id -u; id -g"]);
    spec.user = "app:0".into();
    let (_, entries) = run_to_exit(&env, &spec);
    assert_eq!(lines(&entries, LogStream::Stdout), vec!["1000\n", "0\n"]);

    let mut spec = env.spec("unknown", &["true"]);
    spec.user = "nobody".into();
    let err = env.rt.create(&spec).unwrap_err();
    assert!(
        err.to_string().contains("unable to find user nobody"),
        "{err}"
    );
}

#[test]
fn second_runtime_adopts_running_container() {
    let env = TestEnv::new("adopt");
    let mut spec = env.spec("svc", &["sleep", "1000"]);
    spec.labels = BTreeMap::from([("flotilla.task".to_string(), "t-42".to_string())]);
    let created = env.rt.create(&spec).unwrap();

    // The shim is detached from us: another session, not our child.
    let shim_pid = created.shim_pid.unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{shim_pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let (ppid, sid): (u32, i32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(ppid, std::process::id());
    assert_ne!(sid, shim_pid, "the shim is not a session leader");
    assert_ne!(sid, nix::unistd::getsid(None).unwrap().as_raw());

    // As after an agent restart: a fresh Runtime with the same directories.
    let rt2 = Runtime::new(env.cfg.clone()).unwrap();
    let list = rt2.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, spec.id);
    assert_eq!(list[0].state, ContainerState::Running);
    assert_eq!(list[0].pid, created.pid);
    assert_eq!(list[0].labels.get("flotilla.task").unwrap(), "t-42");

    rt2.kill(&spec.id, libc::SIGKILL).unwrap();
    let info = rt2.wait(&spec.id, Some(Duration::from_secs(60))).unwrap();
    assert_eq!(info.exit_code, Some(137));
    assert_eq!(
        env.rt.inspect(&spec.id).unwrap().state,
        ContainerState::Exited
    );
    match rt2.kill(&spec.id, libc::SIGTERM) {
        Err(ContainerError::Shim { message, .. }) => assert!(message.contains("not running")),
        other => panic!("expected not running, got {other:?}"),
    }
}

#[test]
fn remove_leaves_no_mount_cgroup_or_process() {
    let env = TestEnv::new("rm");
    let mut spec = env.spec("victim", &["sleep", "1000"]);
    spec.resources = Resources {
        memory_bytes: Some(64 << 20),
        nano_cpus: Some(500_000_000),
        pids_limit: Some(64),
        ..Default::default()
    };
    let info = env.rt.create(&spec).unwrap();
    let pid = info.pid.unwrap();
    let shim_pid = info.shim_pid.unwrap();
    let rootfs = env.rt.rootfs_path(&spec.id);
    assert!(is_mounted(&rootfs));
    let cgroups: Vec<PathBuf> = env
        .rt
        .cgroup_dirs(&spec.id)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(!cgroups.is_empty(), "the container has cgroups");
    // The container's init is in its cgroups, with the limits asked for.
    let procs = cgroups
        .iter()
        .find(|d| d.join("cgroup.procs").exists())
        .unwrap();
    let members = std::fs::read_to_string(procs.join("cgroup.procs")).unwrap();
    assert!(members.lines().any(|l| l == pid.to_string()));
    if let Some(mem) = cgroups
        .iter()
        .find(|d| d.join("memory.limit_in_bytes").exists())
    {
        let limit = std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
    }
    if let Some(p) = cgroups.iter().find(|d| d.join("pids.max").exists()) {
        assert_eq!(
            std::fs::read_to_string(p.join("pids.max")).unwrap().trim(),
            "64"
        );
    }
    // Own namespaces: pid, mount, uts, ipc, net differ from ours.
    for ns in ["pid", "mnt", "uts", "ipc", "net"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace");
    }

    env.rt.remove(&spec.id).unwrap();
    assert!(!is_mounted(&rootfs));
    assert!(env.rt.cgroup_dirs(&spec.id).iter().all(|d| !d.exists()));
    assert!(!env.cfg.state_dir.join(&spec.id).exists());
    assert!(process_gone(pid));
    eventually("the shim exits", || process_gone(shim_pid));
    assert!(matches!(
        env.rt.inspect(&spec.id),
        Err(ContainerError::NotFound { .. })
    ));
    assert!(env.rt.list().unwrap().is_empty());
}

#[test]
fn docker_like_environment() {
    let env = TestEnv::new("env");
    let script = "grep CapEff /proc/self/status; \
                  wc -c < /proc/interrupts; \
                  grep ' /proc/sys ' /proc/self/mountinfo | grep -c ' ro,'; \
                  test -c /dev/null && echo devnull; \
                  ls /sys/class/net; cat /sys/class/net/lo/flags; \
                  echo $HOME; \
                  ps -o pid,comm";
    let spec = env.spec("env", &["sh", "-c", script]);
    let (info, entries) = run_to_exit(&env, &spec);
    let out = lines(&entries, LogStream::Stdout);
    assert_eq!(
        info.exit_code,
        Some(0),
        "{out:?} {:?}",
        lines(&entries, LogStream::Stderr)
    );
    // Docker's default capability set.
    assert_eq!(out[0], "CapEff:\t00000000a80425fb\n");
    // Masked path.
    assert_eq!(out[1], "0\n");
    // Read-only path.
    assert_eq!(out[2], "1\n");
    assert_eq!(out[3], "devnull\n");
    // A new network namespace has only lo.
    assert_eq!(out[4], "lo\n");
    // ... and it is up (IFF_UP | IFF_LOOPBACK).
    assert_eq!(out[5], "0x9\n");
    assert_eq!(out[6], "/root\n");
    // Only the container's own processes are visible: the shell exec'd ps
    // as its last command, so ps is pid 1 and alone.
    assert_eq!(
        out[7].split_whitespace().collect::<Vec<_>>(),
        ["PID", "COMMAND"]
    );
    assert_eq!(out[8].split_whitespace().collect::<Vec<_>>(), ["1", "ps"]);
    assert_eq!(out.len(), 9, "{out:?}");
}

#[test]
fn oom_kill_is_reported() {
    let env = TestEnv::new("oom");
    // tail -c keeps the last N bytes in memory: far more than the limit.
    let mut spec = env.spec(
        "hog",
        &[
            "sh",
            "-c",
            "head -c 400000000 /dev/zero | tail -c 200000000 > /dev/null",
        ],
    );
    spec.resources.memory_bytes = Some(32 << 20);
    let (info, _) = run_to_exit(&env, &spec);
    assert_eq!(info.exit_code, Some(137));
    assert!(info.oom_killed);
}

/// Env var that turns `caller_helper` into a real caller process.
const HELPER_ENV: &str = "FLOTILLA_TEST_CALLER";

/// Not a test of its own: `container_survives_killed_caller` runs it in a
/// child process (the "agent") that creates a container and is then SIGKILLed.
#[test]
#[ignore]
fn caller_helper() {
    let Ok(cfg) = std::env::var(HELPER_ENV) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let s = |k: &str| PathBuf::from(v[k].as_str().unwrap());
    let rt = Runtime::new(RuntimeConfig {
        state_dir: s("state_dir"),
        run_dir: s("run_dir"),
        cgroup_parent: v["cgroup_parent"].as_str().unwrap().into(),
        shim_exe: shim_exe(),
    })
    .unwrap();
    let spec = ContainerSpec {
        id: v["id"].as_str().unwrap().into(),
        hostname: "orphan".into(),
        layers: vec![s("layer")],
        args: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    rt.create(&spec).unwrap();
    println!("CREATED");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn container_survives_killed_caller() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;

    let env = TestEnv::new("orphan");
    let id = format!("{}-svc", env.prefix);
    let cfg = serde_json::json!({
        "state_dir": env.cfg.state_dir,
        "run_dir": env.cfg.run_dir,
        "cgroup_parent": env.cfg.cgroup_parent,
        "layer": env.layer,
        "id": id,
    });
    let mut caller = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "caller_helper", "--ignored", "--nocapture"])
        .env(HELPER_ENV, cfg.to_string())
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(caller.stdout.take().unwrap());
    let created = out.lines().map_while(Result::ok).any(|l| l == "CREATED");
    // Kill the caller's whole process group, as a crash or `kill -9` would.
    let pgid = nix::unistd::Pid::from_raw(caller.id() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
    caller.wait().unwrap();
    assert!(created, "the caller process did not create the container");

    let info = env.rt.inspect(&id).unwrap();
    assert_eq!(info.state, ContainerState::Running);
    assert!(!process_gone(info.pid.unwrap()));
    env.rt.kill(&id, libc::SIGKILL).unwrap();
    let info = env.rt.wait(&id, Some(Duration::from_secs(60))).unwrap();
    assert_eq!(info.exit_code, Some(137));
}

#[test]
fn remove_after_the_shim_died() {
    let env = TestEnv::new("noshim");
    let spec = env.spec("svc", &["sleep", "1000"]);
    let info = env.rt.create(&spec).unwrap();
    let (pid, shim_pid) = (info.pid.unwrap(), info.shim_pid.unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the shim dies", || process_gone(shim_pid));
    let info = env.rt.inspect(&spec.id).unwrap();
    assert_eq!(info.state, ContainerState::Unknown);
    assert!(info.error.is_some());
    assert!(matches!(
        env.rt.kill(&spec.id, libc::SIGTERM),
        Err(ContainerError::ShimGone { .. })
    ));

    env.rt.remove(&spec.id).unwrap();
    assert!(!is_mounted(&env.rt.rootfs_path(&spec.id)));
    assert!(env.rt.cgroup_dirs(&spec.id).iter().all(|d| !d.exists()));
    eventually("the container's init dies", || process_gone(pid));
    assert!(env.rt.list().unwrap().is_empty());
}

/// Kills and reaps a helper process when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn joins_given_netns_and_bind_mounts_files() {
    let env = TestEnv::new("join");
    // A network namespace held open by a helper process.
    let holder = ChildGuard(
        std::process::Command::new("unshare")
            .args(["--net", "sleep", "1000"])
            .spawn()
            .unwrap(),
    );
    let holder_ns = PathBuf::from(format!("/proc/{}/ns/net", holder.0.id()));
    let own_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    eventually("the helper enters its netns", || {
        std::fs::read_link(&holder_ns).is_ok_and(|n| n != own_ns)
    });

    let hosts = env.tmp.path().join("hosts");
    std::fs::write(&hosts, "10.0.0.7 db\n").unwrap();
    let mut spec = env.spec(
        "netns",
        &[
            "sh",
            "-c",
            "cat /etc/hosts; echo x >> /etc/hosts || echo read-only; sleep 1000",
        ],
    );
    spec.netns = Some(holder_ns.clone());
    spec.mounts = vec![flotilla_runtime::container::BindMount {
        source: hosts.clone(),
        target: "/etc/hosts".into(),
        read_only: true,
    }];
    let info = env.rt.create(&spec).unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", info.pid.unwrap())).unwrap();
    assert_eq!(theirs, std::fs::read_link(&holder_ns).unwrap());

    let log = env.rt.log_path(&spec.id);
    eventually("the container reports", || {
        logs::read(&log, None, None, None)
            .unwrap()
            .iter()
            .any(|e| e.line == b"read-only\n")
    });
    let out = lines(
        &logs::read(&log, None, None, None).unwrap(),
        LogStream::Stdout,
    );
    assert_eq!(out, vec!["10.0.0.7 db\n", "read-only\n"]);
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "10.0.0.7 db\n");
    env.rt.remove(&spec.id).unwrap();
}

/// Runs `script` with `sh -c` in a container made from `spec` and returns
/// its stdout lines (asserting exit 0, with stderr in the message).
fn run_script(env: &TestEnv, mut spec: ContainerSpec, script: &str) -> Vec<String> {
    spec.args = vec!["sh".into(), "-c".into(), script.into()];
    let (info, entries) = run_to_exit(env, &spec);
    let out = lines(&entries, LogStream::Stdout);
    assert_eq!(
        info.exit_code,
        Some(0),
        "stdout {out:?} stderr {:?}",
        lines(&entries, LogStream::Stderr)
    );
    out
}

fn status_field(out: &[String], key: &str) -> String {
    out.iter()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{key} missing in {out:?}"))
}

/// Reads only: a privileged container sees the host's real /proc files.
const STATUS: &str = "cat /proc/self/status; echo interrupts=$(wc -c < /proc/interrupts); \
                      echo proc-sys-ro=$(grep ' /proc/sys ' /proc/self/mountinfo | grep -c ' ro,')";

#[test]
fn default_security_is_dockers() {
    let env = TestEnv::new("secdef");
    let out = run_script(
        &env,
        env.spec("def", &[]),
        &format!(
            "{STATUS}; echo keys=$(wc -c < /proc/keys); echo timers=$(wc -c < /proc/timer_list)"
        ),
    );
    assert_eq!(status_field(&out, "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(&out, "CapBnd"), "00000000a80425fb");
    // Filter mode: Docker's default profile is loaded.
    assert_eq!(status_field(&out, "Seccomp"), "2");
    assert_eq!(status_field(&out, "NoNewPrivs"), "0");
    assert!(out.contains(&"interrupts=0\n".to_string()), "{out:?}");
    assert!(out.contains(&"timers=0\n".to_string()), "{out:?}");
    assert!(out.contains(&"keys=0\n".to_string()), "{out:?}");
    assert!(out.contains(&"proc-sys-ro=1\n".to_string()), "{out:?}");

    // The profile really filters: without CAP_SYS_ADMIN, `unshare`/`mount`
    // are refused; and a non-root user runs as that uid with no caps.
    let mut spec = env.spec("user", &[]);
    spec.user = "1000:1000".into();
    let out = run_script(&env, spec, "cat /proc/self/status");
    assert_eq!(status_field(&out, "Uid"), "1000\t1000\t1000\t1000");
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&out, "Seccomp"), "2");
}

#[test]
fn capabilities_seccomp_and_no_new_privileges_options() {
    let env = TestEnv::new("secopt");
    let mut spec = env.spec("caps", &[]);
    spec.security = Security {
        cap_add: vec!["NET_ADMIN".into()],
        cap_drop: vec!["CAP_NET_RAW".into()],
        no_new_privileges: true,
        ..Default::default()
    };
    let out = run_script(&env, spec, STATUS);
    let eff = u64::from_str_radix(&status_field(&out, "CapEff"), 16).unwrap();
    const NET_ADMIN: u64 = 1 << 12;
    const NET_RAW: u64 = 1 << 13;
    assert_eq!(eff, (0xa80425fb | NET_ADMIN) & !NET_RAW);
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(status_field(&out, "Seccomp"), "2");

    let mut spec = env.spec("unconfined", &[]);
    spec.security.seccomp = SeccompProfile::Unconfined;
    let out = run_script(&env, spec, STATUS);
    assert_eq!(status_field(&out, "Seccomp"), "0");
    assert_eq!(status_field(&out, "CapEff"), "00000000a80425fb");

    // A custom profile in Docker's format: everything allowed but mkdir.
    let mut spec = env.spec("custom", &[]);
    spec.security.seccomp = SeccompProfile::Custom(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#
            .into(),
    );
    let out = run_script(
        &env,
        spec,
        "grep Seccomp: /proc/self/status; mkdir /tmp/x 2>/dev/null && echo made || echo refused; \
         touch /tmp/y && echo touched",
    );
    assert_eq!(out, ["Seccomp:\t2\n", "refused\n", "touched\n"]);
}

#[test]
fn privileged_gets_everything() {
    let env = TestEnv::new("priv");
    let mut spec = env.spec("priv", &[]);
    spec.security.privileged = true;
    let out = run_script(
        &env,
        spec,
        &format!("{STATUS}; test -c /dev/kmsg && echo kmsg; grep ' /sys ' /proc/self/mountinfo | grep -c ' rw,'"),
    );
    // Every capability this host offers (the test's own bounding set).
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let ours: Vec<String> = ours.lines().map(|l| format!("{l}\n")).collect();
    assert_eq!(status_field(&out, "CapEff"), status_field(&ours, "CapBnd"));
    assert_eq!(status_field(&out, "Seccomp"), "0");
    assert!(
        !out.contains(&"interrupts=0\n".to_string()),
        "not masked: {out:?}"
    );
    assert!(
        out.contains(&"proc-sys-ro=0\n".to_string()),
        "not read-only: {out:?}"
    );
    assert!(out.contains(&"kmsg\n".to_string()), "host devices: {out:?}");
    assert_eq!(out.last().unwrap(), "1\n", "/sys is writable");
}

#[test]
fn process_settings_from_the_spec() {
    let env = TestEnv::new("settings");
    let hostfile = env.tmp.path().join("bindsrc");
    let mut spec = env.spec("set", &[]);
    spec.hostname = "web".into();
    spec.domainname = "example.org".into();
    spec.cwd = "/work/dir".into();
    spec.user = "app".into();
    spec.group_add = vec!["root".into(), "4242".into()];
    spec.ulimits = vec![Ulimit {
        name: "nofile".into(),
        soft: 123,
        hard: 456,
    }];
    spec.sysctls = BTreeMap::from([("net.ipv4.ip_forward".to_string(), "1".to_string())]);
    spec.shm_size = Some(8 << 20);
    spec.devices = vec![Device {
        host_path: "/dev/null".into(),
        container_path: "/dev/mynull".into(),
        permissions: "rw".into(),
    }];
    spec.read_only = true;
    spec.volumes = vec![
        Mount {
            kind: MountKind::Tmpfs {
                size: Some(2 << 20),
                mode: Some(0o1770),
            },
            target: "/scratch".into(),
            read_only: false,
        },
        Mount {
            kind: MountKind::Bind {
                source: hostfile.clone(),
                propagation: String::new(),
                create_host_path: true,
            },
            target: "/data".into(),
            read_only: false,
        },
    ];
    let out = run_script(
        &env,
        spec,
        "pwd; hostname; cat /proc/sys/kernel/domainname; id -G; ulimit -n; ulimit -Hn; \
         cat /proc/sys/net/ipv4/ip_forward; \
         grep ' /dev/shm ' /proc/self/mountinfo | grep -o 'size=[0-9]*k'; \
         echo x > /dev/mynull && echo devok; \
         touch /rootfile 2>/dev/null && echo rw-root || echo ro-root; \
         touch /scratch/f && echo scratch-ok; stat -c %a /scratch; \
         grep ' /scratch ' /proc/self/mountinfo | grep -o 'size=[0-9]*k'; \
         grep ' /data ' /proc/self/mountinfo | grep -c ' rw,'",
    );
    let expect_start = [
        "/work/dir\n",
        "web\n",
        "example.org\n",
        "1000 0 4242\n",
        "123\n",
        "456\n",
        "1\n",
    ];
    assert_eq!(&out[..7], &expect_start, "{out:?}");
    let rest: Vec<&str> = out[7..].iter().map(|s| s.trim()).collect();
    assert_eq!(rest[0], "size=8192k", "{out:?}");
    assert!(rest.contains(&"devok"), "{out:?}");
    assert!(rest.contains(&"ro-root"), "{out:?}");
    assert!(rest.contains(&"scratch-ok"), "{out:?}");
    assert!(rest.contains(&"1770"), "{out:?}");
    assert!(rest.contains(&"size=2048k"), "{out:?}");
    assert_eq!(rest.last(), Some(&"1"), "/data is a rw mount: {out:?}");
    // create_host_path made the bind source.
    assert!(hostfile.is_dir());
}

#[test]
fn init_reaps_zombies_and_forwards_signals() {
    let env = TestEnv::new("init");
    // Orphans whose parent exits are reparented to pid 1; without an init
    // that reaps them they stay zombies.
    let script = "for i in 1 2 3; do sh -c 'sleep 0.1 & exit 0'; done; sleep 0.5; \
                  ps -o pid,stat,comm; echo ready; trap 'echo got-term; exit 7' TERM; \
                  while true; do sleep 0.1; done";
    let mut spec = env.spec("init", &["sh", "-c", script]);
    spec.init = true;
    // The init is mounted even where the image has no /sbin, read-only root too.
    spec.read_only = true;
    let info = env.rt.create(&spec).unwrap();
    assert!(info.pid.is_some());
    let log = env.rt.log_path(&spec.id);
    eventually("the container is ready", || {
        logs::read(&log, None, None, None)
            .unwrap()
            .iter()
            .any(|e| e.line == b"ready\n")
    });
    let out = lines(
        &logs::read(&log, None, None, None).unwrap(),
        LogStream::Stdout,
    );
    // pid 1 is the init, the shell is its child, no zombie is left.
    assert!(
        out.iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "S", "flotilla-init"]),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|l| l.split_whitespace().nth(1) == Some("Z")),
        "{out:?}"
    );
    // SIGTERM to the container reaches the shell through the init.
    let info = env
        .rt
        .stop(&spec.id, libc::SIGTERM, Duration::from_secs(30))
        .unwrap();
    assert_eq!(info.exit_code, Some(7));
    let out = lines(
        &logs::read(&log, None, None, None).unwrap(),
        LogStream::Stdout,
    );
    assert!(out.contains(&"got-term\n".to_string()), "{out:?}");
}

#[test]
fn logs_rotate_by_size() {
    let env = TestEnv::new("rotate");
    let mut spec = env.spec(
        "chatty",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done",
        ],
    );
    spec.log.max_size = Some(2000);
    spec.log.max_file = Some(3);
    let (info, entries) = run_to_exit(&env, &spec);
    assert_eq!(info.exit_code, Some(0));
    let log = env.rt.log_path(&spec.id);
    assert!(std::fs::metadata(&log).unwrap().len() <= 2000);
    let r1 = logs::rotated_path(&log, 1);
    let r2 = logs::rotated_path(&log, 2);
    assert!(r1.exists() && r2.exists());
    assert!(!logs::rotated_path(&log, 3).exists());
    // What is left is the newest lines, in order, ending with the last one.
    let out = lines(&entries, LogStream::Stdout);
    assert_eq!(out.last().unwrap(), "line-199\n");
    let first: usize = out[0]
        .trim()
        .strip_prefix("line-")
        .unwrap()
        .parse()
        .unwrap();
    let expect: Vec<String> = (first..200).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(out, expect);
    assert!(first > 0, "older lines were rotated away");
}
