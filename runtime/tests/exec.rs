//! `exec` in real containers (needs root, overlayfs, cgroups). The shim
//! binary is the crate's `shim` example (`cargo test -p flotilla-runtime`
//! builds it; for `--test exec` alone: `cargo build -p flotilla-runtime --example shim`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_runtime::container::{
    ContainerSpec, ExecError, ExecSpec, Runtime, RuntimeConfig, EXEC_KILLED, EXEC_START_FAILED,
};

mod common;
use common::shim_exe;

/// The shared busybox layer plus the directories these tests write to.
fn busybox_layer(dir: &Path) -> PathBuf {
    let root = common::busybox_layer(dir);
    for d in ["etc", "tmp", "work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    root
}

struct Env {
    rt: Runtime,
    layer: PathBuf,
    prefix: String,
    _tmp: tempfile::TempDir,
}

impl Env {
    fn new(name: &str) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("flt-exec-")
            .tempdir()
            .unwrap();
        let layer = busybox_layer(tmp.path());
        let cfg = RuntimeConfig {
            state_dir: tmp.path().join("state"),
            run_dir: tmp.path().join("run"),
            cgroup_parent: format!("flotilla-test-{}-{name}", std::process::id()),
            shim_exe: shim_exe(),
        };
        Env {
            rt: Runtime::new(cfg).unwrap(),
            layer,
            prefix: format!("x{}-{name}", std::process::id()),
            _tmp: tmp,
        }
    }
    fn start(&self, name: &str, user: &str) -> String {
        let spec = ContainerSpec {
            id: format!("{}-{name}", self.prefix),
            hostname: format!("h-{name}"),
            layers: vec![self.layer.clone()],
            args: vec!["sleep".into(), "300".into()],
            env: vec!["FOO=bar".into(), "KEEP=1".into()],
            cwd: "/work".into(),
            user: user.into(),
            ..Default::default()
        };
        self.rt.create(&spec).unwrap();
        spec.id
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(list) = self.rt.list() {
            for c in list {
                let _ = self.rt.remove(&c.id);
            }
        }
        for d in self.rt.cgroup_dirs("x") {
            if let Some(p) = d.parent() {
                let _ = std::fs::remove_dir(p);
            }
        }
    }
}

fn sh(script: &str) -> ExecSpec {
    ExecSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    }
}

#[test]
fn exec_joins_namespaces_user_env_cwd_and_cgroup() {
    let env = Env::new("join");
    let id = env.start("c", "app");
    let init_pid = env.rt.inspect(&id).unwrap().pid.unwrap();
    let mut spec = sh("hostname 2>/dev/null || cat /proc/sys/kernel/hostname; id -u; pwd; echo $FOO $KEEP $EXTRA; readlink /proc/1/ns/pid; readlink /proc/self/ns/pid; grep memory /proc/self/cgroup; grep memory /proc/1/cgroup; echo err >&2; exit 3");
    spec.env = vec!["EXTRA=x".into(), "FOO=over".into()];
    let out = env.rt.exec(&id, &spec).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        out.exit_code,
        3,
        "stdout {stdout} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.timed_out);
    assert_eq!(lines[0], "h-c");
    assert_eq!(lines[1], "1000");
    assert_eq!(lines[2], "/work");
    assert_eq!(lines[3], "over 1 x");
    // Same pid namespace as the container's init (pid 1 inside).
    assert_eq!(lines[4], lines[5]);
    let host_ns = std::fs::read_link(format!("/proc/{init_pid}/ns/pid")).unwrap();
    assert_eq!(lines[4], host_ns.to_string_lossy());
    // In the container's cgroup: the same memory cgroup as its init.
    assert_eq!(lines[6], lines[7]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}

#[test]
fn exec_timeout_missing_binary_and_stopped_container() {
    let env = Env::new("fail");
    let id = env.start("c", "");
    let mut slow = sh("sleep 60");
    slow.timeout = Some(Duration::from_millis(300));
    let out = env.rt.exec(&id, &slow).unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, EXEC_KILLED);

    let missing = ExecSpec {
        args: vec!["/nonexistent".into()],
        ..Default::default()
    };
    let out = env.rt.exec(&id, &missing).unwrap();
    assert_eq!(out.exit_code, EXEC_START_FAILED);
    assert!(!out.stderr.is_empty());

    // The container itself is untouched by its exec'd processes.
    let ok = env.rt.exec(&id, &sh("echo fine")).unwrap();
    assert_eq!((ok.exit_code, ok.stdout), (0, b"fine\n".to_vec()));

    env.rt
        .stop(&id, libc::SIGKILL, Duration::from_secs(5))
        .unwrap();
    match env.rt.exec(&id, &sh("true")) {
        Err(ExecError::NotRunning { .. }) => {}
        other => panic!("expected NotRunning, got {other:?}"),
    }
}
