//! Test harness: an isolated Flotilla daemon per test (own state dir, run
//! dir, socket, cgroup parent and address pool), the demo image, and a drop
//! guard that removes everything the test made even when it fails.
//!
//! These tests need root and a real kernel (namespaces, cgroups, overlayfs,
//! bridges, nftables). They skip with a message when not run as root.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the tests can touch the kernel.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips the calling test (returns) when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root (namespaces, cgroups, mounts)");
            return;
        }
    };
}

/// The flotilla binary under test.
pub fn flotilla_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flotilla"))
}

/// An isolated daemon.
pub struct Daemon {
    pub name: String,
    pub root: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub host: String,
    pub cgroup_parent: String,
    pub pool: String,
    /// The server's `FLOTILLA_DNS_UPSTREAM`: `none` unless a test runs a
    /// resolver of its own (tests never ask the host's resolvers).
    pub dns_upstream: String,
    child: Option<Child>,
    started_once: bool,
}

impl Daemon {
    /// Prepares (but does not start) an isolated daemon.
    pub fn new() -> Daemon {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("ft{}x{n}", pid % 100_000);
        let root = tempfile::Builder::new()
            .prefix("flotilla-test-")
            .tempdir()
            .expect("temp dir");
        let state_dir = root.path().join("state");
        let run_dir = PathBuf::from(format!("/run/flotilla-test/{name}"));
        let _ = std::fs::create_dir_all(&run_dir);
        // A /16 per daemon, different per test, so parallel tests never
        // allocate the same subnet.
        let octet = 100 + (pid as u32 * 7 + n * 13) % 100;
        Daemon {
            host: format!("unix://{}/flotilla.sock", run_dir.display()),
            cgroup_parent: format!("flotilla-test-{name}"),
            pool: format!("10.{octet}.0.0/16"),
            name,
            root,
            state_dir,
            run_dir,
            dns_upstream: "none".into(),
            child: None,
            started_once: false,
        }
    }

    /// Starts `flotilla server` in the background and waits for its socket.
    pub fn start(&mut self) {
        // A killed earlier run may have left bridges in this pool. Only
        // before the first start: after a restart, what the daemon left is
        // the daemon's own to clean up (and tests check that it does).
        if !self.started_once {
            sweep_bridges(&self.pool);
            self.started_once = true;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("daemon.log"))
            .expect("daemon log");
        let mut cmd = Command::new(flotilla_bin());
        cmd.arg("server")
            .envs(self.env())
            .env("FLOTILLA_DNS_UPSTREAM", &self.dns_upstream)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawning flotilla server"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cli(&["daemon", "status"]);
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!("daemon did not come up:\n{}", self.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the daemon with SIGKILL (as a crash would).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon gracefully.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Environment that points the CLI and server at this daemon.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("FLOTILLA_HOST".into(), self.host.clone()),
            (
                "FLOTILLA_STATE_DIR".into(),
                self.state_dir.display().to_string(),
            ),
            (
                "FLOTILLA_RUN_DIR".into(),
                self.run_dir.display().to_string(),
            ),
            ("FLOTILLA_CGROUP_PARENT".into(), self.cgroup_parent.clone()),
            ("FLOTILLA_ADDRESS_POOL".into(), self.pool.clone()),
            ("NO_COLOR".into(), "1".into()),
        ]
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_in(self.root.path(), args)
    }

    /// Runs the CLI in `dir`.
    pub fn cli_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(flotilla_bin())
            .args(args)
            .envs(self.env())
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("running flotilla")
    }

    /// Runs the CLI and fails the test on a non-zero exit.
    pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.cli_in(dir, args);
        assert!(
            out.status.success(),
            "flotilla {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The daemon's log so far (for failure messages).
    pub fn daemon_log(&self) -> String {
        let s = std::fs::read_to_string(self.root.path().join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// `ps -a --format json` rows.
    pub fn ps(&self, dir: &Path, project: &str) -> Vec<serde_json::Value> {
        let out = self.ok(dir, &["ps", "-a", "--format", "json", "-p", project]);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("ps json line"))
            .collect()
    }

    /// Imports the demo image as `flotilla-demo:test`.
    pub fn import_demo_image(&self) {
        let tar = demo_rootfs_tar(self.root.path());
        self.ok(
            self.root.path(),
            &[
                "image",
                "import",
                "--change",
                r#"ENTRYPOINT ["/demo"]"#,
                tar.to_str().expect("utf-8 path"),
                "flotilla-demo:test",
            ],
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Whatever a failed test left: kill every process of ours (shims and
        // containers), unmount, remove links, rules, cgroups and directories.
        self.kill9();
        let state = self.state_dir.display().to_string();
        let run = self.run_dir.display().to_string();
        kill_processes_mentioning(&[&state, &run]);
        kill_cgroup_processes(&self.cgroup_parent);
        unmount_under(&[&state, &run]);
        remove_cgroups(&self.cgroup_parent);
        sweep_bridges(&self.pool);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Kills processes whose command line mentions one of `needles`.
pub fn kill_processes_mentioning(needles: &[&str]) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if needles.iter().any(|n| cmdline.contains(n)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The cgroup-v1 hierarchies (or the v2 root) on this machine.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for c in [
        "memory", "pids", "cpu", "cpuacct", "cpuset", "blkio", "devices", "freezer", "systemd",
        "unified",
    ] {
        let p = PathBuf::from("/sys/fs/cgroup").join(c);
        if p.is_dir() {
            roots.push(p);
        }
    }
    if roots.is_empty() {
        roots.push(PathBuf::from("/sys/fs/cgroup"));
    }
    roots
}

fn kill_cgroup_processes(parent: &str) {
    for root in cgroup_roots() {
        let dir = root.join(parent);
        for procs in walk_files(&dir, "cgroup.procs") {
            for pid in std::fs::read_to_string(procs).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn walk_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
    out
}

/// Remaining cgroup directories under `parent` in any hierarchy.
pub fn cgroup_children(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in cgroup_roots() {
        if let Ok(rd) = std::fs::read_dir(root.join(parent)) {
            out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out
}

fn remove_cgroups(parent: &str) {
    std::thread::sleep(Duration::from_millis(100));
    for root in cgroup_roots() {
        let dir = root.join(parent);
        let mut dirs = vec![];
        collect_dirs(&dir, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Mount points under any of `prefixes`, deepest first.
pub fn mounts_under(prefixes: &[&str]) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| prefixes.iter().any(|p| m.starts_with(p)))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.len()));
    out
}

fn unmount_under(prefixes: &[&str]) {
    for m in mounts_under(prefixes) {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The workspace's target directory (for the demo binary).
fn target_dir() -> PathBuf {
    // .../target/debug/deps/e2e-HASH → .../target/debug
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf()
}

/// A rootfs tarball with the demo program at /demo and the shared libraries
/// it needs, so the test image is made offline from this build.
pub fn demo_rootfs_tar(dir: &Path) -> PathBuf {
    let demo = target_dir().join("flotilla-demo");
    assert!(
        demo.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        demo.display()
    );
    let out = dir.join("demo-rootfs.tar");
    let file = std::fs::File::create(&out).expect("tar file");
    let mut tar = tar::Builder::new(file);
    tar.follow_symlinks(true);
    tar.append_path_with_name(&demo, "demo").expect("demo");
    for lib in shared_libs(&demo) {
        let name = lib.strip_prefix("/").expect("absolute lib path");
        tar.append_path_with_name(&lib, name).expect("lib");
    }
    for (path, body) in [
        ("etc/passwd", "root:x:0:0:root:/root:/demo\nnobody:x:65534:65534:nobody:/:/demo\napp:x:1000:1000:app:/:/demo\n"),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, path, body.as_bytes()).expect("etc file");
    }
    for d in ["tmp", "proc", "sys", "dev", "etc"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(if d == "tmp" { 0o1777 } else { 0o755 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, format!("{d}/"), std::io::empty())
            .expect("dir");
    }
    tar.finish().expect("finish tar");
    out
}

/// Absolute paths of the shared libraries `bin` loads (from ldd).
fn shared_libs(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Runs `args` inside the namespaces of process `pid` (the container's).
pub fn in_container(pid: i64, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg("-t")
        .arg(pid.to_string())
        .args(["-m", "-u", "-i", "-n", "-p", "--"])
        .args(args)
        .output()
        .expect("nsenter")
}

/// Retries `f` until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The namespace inode of `pid` for `kind` ("pid", "uts", ...).
pub fn ns_of(pid: i64, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The link names on the host.
pub fn host_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The host's nftables ruleset as text.
pub fn nft_ruleset() -> String {
    Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The links holding an address in `pool` ("10.123.0.0/16"), with that
/// address: bridges of a daemon using this pool.
pub fn links_in_pool(pool: &str) -> Vec<(String, String)> {
    let prefix: String = pool.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.nth(1)?.to_string();
            let addr = f.nth(1)?.to_string();
            addr.starts_with(&prefix).then_some((name, addr))
        })
        .collect()
}

/// Removes the bridges (and their firewall rules) of a dead daemon that
/// used `pool`.
pub fn sweep_bridges(pool: &str) {
    for (name, _) in links_in_pool(pool) {
        if name.starts_with("flt-") {
            let _ = flotilla_runtime::net::firewall::remove_network(&name);
            let _ = Command::new("ip").args(["link", "del", &name]).output();
        }
    }
}
