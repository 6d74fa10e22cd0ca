//! Helpers shared by the runtime's real-container tests: the shim binary,
//! a busybox image layer, and a per-test runtime that removes everything it
//! made when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_runtime::container::{ContainerInfo, ContainerSpec, Runtime, RuntimeConfig};
use flotilla_runtime::logs::{self, LogStream};

pub fn shim_exe() -> PathBuf {
    // target/<profile>/deps/containers-<hash> -> target/<profile>/examples/shim
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let shim = profile_dir.join("examples").join("shim");
    assert!(
        shim.exists(),
        "{} is missing: run `cargo build -p flotilla-runtime --example shim` (plain `cargo test -p flotilla-runtime` builds it)",
        shim.display()
    );
    shim
}

/// A busybox rootfs used as the container's single image layer.
pub fn busybox_layer(dir: &Path) -> PathBuf {
    let root = dir.join("layer");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh",
        "echo",
        "sleep",
        "cat",
        "hostname",
        "id",
        "ps",
        "ls",
        "true",
        "grep",
        "wc",
        "test",
        "head",
        "tail",
        "mkdir",
        "touch",
        "stat",
        "kill",
        "dnsdomainname",
        "ulimit",
        "sysctl",
        "find",
        "df",
        "mount",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    root
}

/// One test's runtime, layer and cgroup parent; removes every container it
/// made (and the cgroup parent) when dropped, also on panic.
pub struct TestEnv {
    pub rt: Runtime,
    pub cfg: RuntimeConfig,
    pub layer: PathBuf,
    pub prefix: String,
    /// Where named volumes of this test live.
    pub vol_root: PathBuf,
    pub tmp: tempfile::TempDir,
}

impl TestEnv {
    pub fn new(name: &str) -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("flt-ctr-")
            .tempdir()
            .unwrap();
        let layer = busybox_layer(tmp.path());
        let cfg = RuntimeConfig {
            state_dir: tmp.path().join("state"),
            run_dir: tmp.path().join("run"),
            cgroup_parent: format!("flotilla-test-{}-{name}", std::process::id()),
            shim_exe: shim_exe(),
        };
        let rt = Runtime::new(cfg.clone()).unwrap();
        TestEnv {
            rt,
            cfg,
            layer,
            prefix: format!("t{}-{name}", std::process::id()),
            vol_root: tmp.path().join("volumes"),
            tmp,
        }
    }

    pub fn spec(&self, name: &str, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: format!("{}-{name}", self.prefix),
            hostname: format!("host-{name}"),
            layers: vec![self.layer.clone()],
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["FOO=bar".into()],
            ..Default::default()
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Ok(list) = self.rt.list() {
            for c in list {
                if let Err(e) = self.rt.remove(&c.id) {
                    eprintln!("cleanup: removing {}: {e}", c.id);
                }
            }
        }
        // Whatever a failed remove left mounted must not block the tempdir's removal.
        if let Ok(entries) = std::fs::read_dir(&self.cfg.state_dir) {
            for e in entries.flatten() {
                let rootfs = e.path().join("bundle/rootfs");
                let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // The per-test cgroup parent: the parent of any container's cgroup dir.
        for d in self.rt.cgroup_dirs("x") {
            if let Some(p) = d.parent() {
                let _ = std::fs::remove_dir(p);
            }
        }
    }
}

pub fn lines(entries: &[logs::LogEntry], stream: LogStream) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.stream == stream)
        .map(|e| String::from_utf8_lossy(&e.line).into_owned())
        .collect()
}

pub fn run_to_exit(env: &TestEnv, spec: &ContainerSpec) -> (ContainerInfo, Vec<logs::LogEntry>) {
    let started = env.rt.create(spec).unwrap();
    assert!(started.pid.is_some());
    let info = env
        .rt
        .wait(&spec.id, Some(Duration::from_secs(60)))
        .unwrap();
    let entries = logs::read(&env.rt.log_path(&spec.id), None, None, None).unwrap();
    (info, entries)
}
