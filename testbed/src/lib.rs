//! Dev-only multi-host test bed: N "hosts" as network namespaces on one
//! underlay bridge, each with its own address, state directory, run
//! directory, cgroup parent and address pool, running real processes (e.g.
//! `flotilla server`), with real failures: SIGKILL, SIGSTOP/SIGCONT, link
//! down, partitions (nftables drop rules inside the hosts' namespaces), heal,
//! restart.
//!
//! Layout for a bed with id `ftb<pid>-<n>`:
//! - netns `<id>-hub` holds the bridge `br0` and one veth end `h<i>` per host;
//! - netns `<id>-h<i>` holds the other end, `eth0`, with `172.31.X.(i+1)/24`
//!   (X chosen so the /24 overlaps no route of the machine), and `lo`;
//! - `/run/flotilla-testbed/<id>/h<i>` is the host's run dir, a temporary
//!   directory holds its state dir and logs; its cgroup parent is
//!   `<id>-h<i>`.
//!
//! Nothing is created in the machine's own network namespace: every link
//! lives in a namespace of the bed, so deleting the namespaces removes them.
//! Everything is removed on Drop (also when a test panics), and
//! [`sweep_leftovers`] removes what a killed earlier run left (names whose
//! pid is dead). This crate must never touch names it did not make and never
//! send traffic outside the bed's namespaces.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Prefix of every name the bed makes (netns, run dirs, cgroup parents).
pub const PREFIX: &str = "ftb";
const RUN_ROOT: &str = "/run/flotilla-testbed";
const NETNS_DIR: &str = "/run/netns";
/// The nftables table partitions live in, inside a host's namespace.
const PARTITION_TABLE: &str = "ftb_partition";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Errors of the test bed. Each says what was being done and to what.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("{what}: running {cmd}: {source}")]
    Exec {
        what: String,
        cmd: String,
        source: std::io::Error,
    },
    #[error("{what}: `{cmd}` exited with {status}: {stderr}")]
    Failed {
        what: String,
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} (pid {pid}): {source}")]
    Signal {
        what: &'static str,
        pid: u32,
        source: nix::Error,
    },
    #[error(
        "no free /24 in 172.31.0.0/16 for the underlay: every one overlaps a route of this machine"
    )]
    NoFreeSubnet,
    #[error("host index {index} out of range (the bed has {hosts} hosts)")]
    NoSuchHost { index: usize, hosts: usize },
    #[error("the process on host {host} is not running (killed); restart it first")]
    NotRunning { host: usize },
}

type Result<T, E = TestbedError> = std::result::Result<T, E>;

/// One host of the bed.
#[derive(Debug, Clone)]
pub struct Host {
    pub index: usize,
    /// The host's network namespace (`ip netns` name).
    pub netns: String,
    /// Its underlay address.
    pub addr: Ipv4Addr,
    /// Scratch directory of the host (logs live here).
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Cgroup parent for its containers (at the root of each hierarchy).
    pub cgroup_parent: String,
    /// An IPv4 pool of its own for stack networks (a /20, different per
    /// host). In a cluster the pool is the cluster's; this one is for
    /// single-host daemons side by side.
    pub address_pool: String,
}

impl Host {
    /// Path of the namespace file (for `nsenter --net=...`).
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// The daemon's unix socket for a `flotilla server` run with
    /// [`Host::flotilla_env`].
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("flotilla.sock")
    }

    /// Environment pointing `flotilla` (server and CLI) at this host's
    /// directories, socket, cgroup parent and pool.
    pub fn flotilla_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "FLOTILLA_HOST".into(),
                format!("unix://{}", self.socket().display()),
            ),
            (
                "FLOTILLA_STATE_DIR".into(),
                self.state_dir.display().to_string(),
            ),
            (
                "FLOTILLA_RUN_DIR".into(),
                self.run_dir.display().to_string(),
            ),
            ("FLOTILLA_CGROUP_PARENT".into(), self.cgroup_parent.clone()),
            ("FLOTILLA_ADDRESS_POOL".into(), self.address_pool.clone()),
            // Hosts of a testbed never ask the real host's resolvers.
            ("FLOTILLA_DNS_UPSTREAM".into(), "none".into()),
            ("NO_COLOR".into(), "1".into()),
        ]
    }

    /// A command that runs `program` inside this host's network namespace
    /// (setns in the child before exec; the mount namespace is the
    /// machine's). Opening the namespace file can fail; the error surfaces
    /// on spawn.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let ns = std::fs::File::open(self.netns_path()).map(OwnedFd::from);
        // SAFETY: the hook runs in the forked child before exec and only
        // calls setns(2) and prctl(2), both async-signal-safe, on an fd
        // opened before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let fd = match &ns {
                    Ok(fd) => fd,
                    Err(e) => return Err(std::io::Error::new(e.kind(), "opening the netns file")),
                };
                nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                // A test that dies without unwinding takes its hosts'
                // processes with it (sweep_leftovers removes the rest).
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        cmd
    }
}

/// How a process was started, so it can be started again.
#[derive(Debug, Clone)]
struct Spec {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// A process running inside a host. SIGKILLed on Drop.
///
/// The process is killed with SIGKILL if the *thread* that spawned it exits
/// (PR_SET_PDEATHSIG), so spawn from the test's own thread, not from a
/// short-lived pool thread.
#[derive(Debug)]
pub struct HostProcess {
    host: Host,
    spec: Spec,
    log: PathBuf,
    child: Option<Child>,
}

impl HostProcess {
    fn start(host: &Host, spec: Spec, log: PathBuf) -> Result<Self> {
        let mut p = HostProcess {
            host: host.clone(),
            spec,
            log,
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| TestbedError::Io {
                what: "opening the process log",
                path: self.log.clone(),
                source,
            })?;
        let err = file.try_clone().map_err(|source| TestbedError::Io {
            what: "duplicating the process log",
            path: self.log.clone(),
            source,
        })?;
        let child = self
            .host
            .command(&self.spec.program)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|source| TestbedError::Exec {
                what: format!("starting a process on host {}", self.host.index),
                cmd: self.spec.program.display().to_string(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// The pid, while running (or stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// True while the process has not exited (a paused one is running).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, as a crash would, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Resume first so a paused process dies now.
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: std::time::Duration) {
        if let Some(c) = &mut self.child {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        self.kill();
    }

    fn signal(&self, sig: Signal, what: &'static str) -> Result<()> {
        let pid = self.pid().ok_or(TestbedError::NotRunning {
            host: self.host.index,
        })?;
        kill(Pid::from_raw(pid as i32), sig).map_err(|source| TestbedError::Signal {
            what,
            pid,
            source,
        })
    }

    /// SIGSTOP: the process stays but does nothing (a hung host).
    pub fn pause(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP, "pausing")
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<()> {
        self.signal(Signal::SIGCONT, "resuming")
    }

    /// Kills (if running) and starts the same command again, with the same
    /// directories, so it comes back from its state on disk.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// The last `lines` lines of the process's output (for failure
    /// messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// N hosts on one underlay. Removes everything it made on Drop.
#[derive(Debug)]
pub struct Testbed {
    id: String,
    hub: String,
    hosts: Vec<Host>,
    run_root: PathBuf,
    /// Holds the hosts' state dirs and logs; removed on Drop.
    scratch: Option<tempfile::TempDir>,
    /// Per host: peers whose traffic it drops.
    blocked: Vec<BTreeSet<usize>>,
}

impl Testbed {
    /// Makes `n` hosts (first sweeping leftovers of killed runs).
    pub fn new(n: usize) -> Result<Testbed> {
        let _ = sweep_leftovers();
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let scratch = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .map_err(|source| TestbedError::Io {
                what: "creating the scratch directory in",
                path: std::env::temp_dir(),
                source,
            })?;
        let run_root = Path::new(RUN_ROOT).join(&id);
        let mut bed = Testbed {
            hub: format!("{id}-hub"),
            id,
            hosts: Vec::new(),
            run_root,
            scratch: Some(scratch),
            blocked: vec![BTreeSet::new(); n],
        };
        // From here on, Drop cleans up whatever was made.
        bed.build(n)?;
        Ok(bed)
    }

    fn build(&mut self, n: usize) -> Result<()> {
        let octet = free_underlay_octet()?;
        ip(&["netns", "add", &self.hub], "creating the hub namespace")?;
        ipn(
            &self.hub,
            &["link", "add", "br0", "type", "bridge"],
            "creating the underlay bridge",
        )?;
        ipn(&self.hub, &["link", "set", "br0", "up"], "bringing br0 up")?;
        ipn(&self.hub, &["link", "set", "lo", "up"], "bringing lo up")?;
        let scratch = self
            .scratch
            .as_ref()
            .map(|s| s.path().to_path_buf())
            .unwrap_or_default();
        for i in 0..n {
            let netns = format!("{}-h{i}", self.id);
            let dir = scratch.join(format!("h{i}"));
            let run_dir = self.run_root.join(format!("h{i}"));
            let state_dir = dir.join("state");
            for d in [&dir, &run_dir, &state_dir] {
                std::fs::create_dir_all(d).map_err(|source| TestbedError::Io {
                    what: "creating",
                    path: d.clone(),
                    source,
                })?;
            }
            ip(
                &["netns", "add", &netns],
                &format!("creating the namespace of host {i}"),
            )?;
            let hub_end = format!("h{i}");
            ipn(
                &self.hub,
                &[
                    "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns",
                    &netns,
                ],
                &format!("creating the veth pair of host {i}"),
            )?;
            ipn(
                &self.hub,
                &["link", "set", &hub_end, "master", "br0", "up"],
                &format!("attaching host {i} to the bridge"),
            )?;
            let addr = Ipv4Addr::new(172, 31, octet, (i + 1) as u8);
            ipn(&netns, &["link", "set", "lo", "up"], "bringing lo up")?;
            ipn(
                &netns,
                &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
                &format!("addressing host {i}"),
            )?;
            ipn(
                &netns,
                &["link", "set", "eth0", "up"],
                &format!("bringing host {i}'s link up"),
            )?;
            self.hosts.push(Host {
                index: i,
                netns,
                addr,
                dir,
                state_dir,
                run_dir,
                cgroup_parent: format!("{}-h{i}", self.id),
                address_pool: format!("10.{}.{}.0/20", 200 + (i / 16), (i % 16) * 16),
            });
        }
        Ok(())
    }

    /// The bed's unique id (prefix of all its names).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> Result<&Host> {
        self.hosts.get(i).ok_or(TestbedError::NoSuchHost {
            index: i,
            hosts: self.hosts.len(),
        })
    }

    /// Starts `program args` in host `i` with `env` added, output to
    /// `<host dir>/<log_name>.log`.
    pub fn spawn(
        &self,
        i: usize,
        log_name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<HostProcess> {
        let host = self.host(i)?;
        let spec = Spec {
            program: program.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.to_vec(),
        };
        HostProcess::start(host, spec, host.dir.join(format!("{log_name}.log")))
    }

    /// Starts `<flotilla> server` in host `i` with the host's directories
    /// ([`Host::flotilla_env`]) plus `extra_env`. `flotilla` is the binary
    /// under test (`env!("CARGO_BIN_EXE_flotilla")` in the CLI's tests).
    pub fn spawn_flotilla_server(
        &self,
        i: usize,
        flotilla: &Path,
        extra_env: &[(String, String)],
    ) -> Result<HostProcess> {
        let mut env = self.host(i)?.flotilla_env();
        env.extend_from_slice(extra_env);
        self.spawn(i, "flotilla-server", flotilla, &["server"], &env)
    }

    /// Runs `program args` to completion in host `i`.
    pub fn run(&self, i: usize, program: &str, args: &[&str]) -> Result<Output> {
        let host = self.host(i)?;
        host.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| TestbedError::Exec {
                what: format!("running a command on host {i}"),
                cmd: format!("{program} {}", args.join(" ")),
                source,
            })
    }

    /// Cuts host `i`'s link to the underlay (its `eth0` goes down).
    pub fn link_down(&self, i: usize) -> Result<()> {
        let h = self.host(i)?;
        ipn(
            &h.netns,
            &["link", "set", "eth0", "down"],
            &format!("cutting host {i}'s link"),
        )
    }

    /// Restores host `i`'s link.
    pub fn link_up(&self, i: usize) -> Result<()> {
        let h = self.host(i)?;
        ipn(
            &h.netns,
            &["link", "set", "eth0", "up"],
            &format!("restoring host {i}'s link"),
        )
    }

    /// Drops all traffic between every host of `a` and every host of `b`
    /// (both directions; rules inside each host's namespace). Adds to
    /// earlier partitions.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) -> Result<()> {
        for &i in a.iter().chain(b) {
            self.host(i)?;
        }
        for &x in a {
            for &y in b {
                if x != y {
                    self.blocked[x].insert(y);
                    self.blocked[y].insert(x);
                }
            }
        }
        let touched: BTreeSet<usize> = a.iter().chain(b).copied().collect();
        for i in touched {
            self.write_rules(i)?;
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&mut self) -> Result<()> {
        for i in 0..self.hosts.len() {
            if !self.blocked[i].is_empty() {
                self.blocked[i].clear();
                self.write_rules(i)?;
            }
        }
        Ok(())
    }

    fn write_rules(&self, i: usize) -> Result<()> {
        let peers: Vec<String> = self.blocked[i]
            .iter()
            .map(|&p| self.hosts[p].addr.to_string())
            .collect();
        // Create-then-delete makes the delete valid whether or not the table
        // existed; the whole script is one atomic transaction.
        let mut script =
            format!("table inet {PARTITION_TABLE}\ndelete table inet {PARTITION_TABLE}\n");
        if !peers.is_empty() {
            let set = peers.join(", ");
            script.push_str(&format!(
                "table inet {PARTITION_TABLE} {{\n\
                 \tchain input {{ type filter hook input priority -300; policy accept; ip saddr {{ {set} }} drop; }}\n\
                 \tchain output {{ type filter hook output priority -300; policy accept; ip daddr {{ {set} }} drop; }}\n\
                 }}\n"
            ));
        }
        let host = &self.hosts[i];
        let what = format!("writing the partition rules of host {i}");
        let mut child = host
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| TestbedError::Exec {
                what: what.clone(),
                cmd: "nft -f -".into(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|source| TestbedError::Exec {
                    what: what.clone(),
                    cmd: "nft -f -".into(),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| TestbedError::Exec {
                what: what.clone(),
                cmd: "nft -f -".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(TestbedError::Failed {
                what,
                cmd: format!("nft -f - <<{script}"),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// The namespaces this bed made (for cleanup checks).
    pub fn netns_names(&self) -> Vec<String> {
        let mut v = vec![self.hub.clone()];
        v.extend(self.hosts.iter().map(|h| h.netns.clone()));
        v
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let mut names = self.netns_names();
        // Hosts whose creation failed half-way are not in `hosts` yet.
        for i in self.hosts.len()..self.blocked.len() {
            names.push(format!("{}-h{i}", self.id));
        }
        remove_bed(&self.id, &names);
        self.scratch.take();
    }
}

/// Kills what runs in the bed's namespaces and cgroups, unmounts what is
/// mounted under its directories, deletes the namespaces (and with them
/// every link and rule) and the directories. Best effort: each step goes on
/// after a failure.
fn remove_bed(id: &str, netns: &[String]) {
    for ns in netns {
        if Path::new(NETNS_DIR).join(ns).exists() {
            kill_netns_pids(ns);
            let _ = ip(&["netns", "del", ns], "deleting a namespace");
        }
    }
    remove_cgroups(id);
    let run_root = Path::new(RUN_ROOT).join(id);
    unmount_under(&run_root);
    let _ = std::fs::remove_dir_all(&run_root);
    let tmp = std::env::temp_dir();
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{id}-")) {
                unmount_under(&e.path());
            }
        }
    }
}

fn kill_netns_pids(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Cgroup directories named `<id>-h*` at the root of each hierarchy: kill
/// their processes, then remove them depth-first.
fn remove_cgroups(id: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    roots.extend(hierarchies.flatten().map(|e| e.path()));
    for root in roots {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{id}-"))
                && e.path().is_dir()
            {
                remove_cgroup_tree(&e.path());
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for &p in &pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The pid in a name `ftb<pid>-...`, if it is one of ours.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('-') {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes namespaces, run dirs, cgroups and mounts of beds whose owning
/// process is dead. Returns the bed ids it removed.
pub fn sweep_leftovers() -> Result<Vec<String>> {
    let mut ids = BTreeSet::new();
    for dir in [NETNS_DIR, RUN_ROOT] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = owner_pid(&name) {
                    if !pid_alive(pid) {
                        let id = match name.rfind("-h") {
                            Some(pos) => name[..pos].to_string(),
                            None => name.clone(),
                        };
                        ids.insert(id);
                    }
                }
            }
        }
    }
    for id in &ids {
        let netns: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{id}-")))
                    .collect()
            })
            .unwrap_or_default();
        remove_bed(id, &netns);
        let tmp = std::env::temp_dir();
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{id}-"))
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    Ok(ids.into_iter().collect())
}

/// The third octet X of a free `172.31.X.0/24`: one that overlaps no route
/// of the machine (so the bed never shadows a real network).
fn free_underlay_octet() -> Result<u8> {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map_err(|source| TestbedError::Exec {
            what: "listing the machine's routes".into(),
            cmd: "ip -4 route show table all".into(),
            source,
        })?;
    let routes: Vec<(u32, u32)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let mut first = words.next()?;
            if matches!(first, "local" | "broadcast" | "unicast") {
                first = words.next()?;
            }
            if first == "default" {
                // A default route overlaps everything; it does not make a
                // /24 unusable.
                return None;
            }
            parse_prefix(first)
        })
        .collect();
    // Start at a pid-dependent octet so parallel beds rarely pick the same
    // one (they would not clash anyway: each bed has its own hub).
    let start = (std::process::id() % 256) as u16;
    for k in 0..256u16 {
        let octet = ((start + k) % 256) as u8;
        let net = u32::from(Ipv4Addr::new(172, 31, octet, 0));
        let clash = routes.iter().any(|&(addr, len)| {
            let common = len.min(24);
            let mask = if common == 0 {
                0
            } else {
                u32::MAX << (32 - common)
            };
            (addr & mask) == (net & mask)
        });
        if !clash {
            return Ok(octet);
        }
    }
    Err(TestbedError::NoFreeSubnet)
}

fn parse_prefix(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (s, 32),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    (len <= 32).then_some((u32::from(addr), len))
}

fn ip(args: &[&str], what: &str) -> Result<()> {
    run_checked(
        Command::new("ip").args(args),
        what,
        &format!("ip {}", args.join(" ")),
    )
}

/// `ip -n NS args`.
fn ipn(ns: &str, args: &[&str], what: &str) -> Result<()> {
    run_checked(
        Command::new("ip").arg("-n").arg(ns).args(args),
        what,
        &format!("ip -n {ns} {}", args.join(" ")),
    )
}

fn run_checked(cmd: &mut Command, what: &str, shown: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TestbedError::Exec {
            what: what.to_string(),
            cmd: shown.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(TestbedError::Failed {
            what: what.to_string(),
            cmd: shown.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_our_names() {
        assert_eq!(owner_pid("ftb123-0-h1"), Some(123));
        assert_eq!(owner_pid("ftb123-4-hub"), Some(123));
        assert_eq!(owner_pid("ftbx-1"), None);
        assert_eq!(owner_pid("flt-abc"), None);
        assert_eq!(owner_pid("ftb12"), None);
    }

    #[test]
    fn prefixes_parse() {
        assert_eq!(
            parse_prefix("10.110.0.0/24"),
            Some((u32::from(Ipv4Addr::new(10, 110, 0, 0)), 24))
        );
        assert_eq!(
            parse_prefix("192.0.2.1"),
            Some((u32::from(Ipv4Addr::new(192, 0, 2, 1)), 32))
        );
        assert_eq!(parse_prefix("default"), None);
    }
}
