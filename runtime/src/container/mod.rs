//! The node-local container lifecycle: create, inspect, signal, wait, stop
//! and remove containers, each owned by its own shim process.
//!
//! Layout on disk, per container:
//! - `<state_dir>/<id>/meta.json`: the [`ContainerSpec`] and labels (versioned);
//! - `<state_dir>/<id>/status.json`: what the shim last knew (state, pid, exit);
//! - `<state_dir>/<id>/<id>-json.log`: output, Docker json-file format;
//! - `<state_dir>/<id>/{upper,work,bundle}`: overlay dirs and the OCI bundle
//!   (`bundle/rootfs` is the overlay mount);
//! - `<state_dir>/<id>/shim.json`, `shim.log`: the shim's input and its stderr;
//! - `<run_dir>/shims/<id>.sock`: the shim's socket;
//! - `<run_dir>/libcontainer/<id>`: libcontainer's own state.
//!
//! A [`Runtime`] holds no state of its own: a new one in a new process (an
//! agent after a restart) finds every container in `state_dir` and talks to
//! the shims that are still there.
//!
//! What it must never do: kill or touch containers it did not create (it only
//! acts on ids under its own state dir), or hold a container's life in the
//! calling process (the shim owns it, so the caller may die at any time).

pub mod cgroup_ops;
mod copy;
mod devices;
mod exec;
mod init;
pub mod pty;
mod rootfs;
mod seccomp;
mod spec;
mod user;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use crate::shim::protocol::{self, CallError, Request, Response, ShimConfig, ShimStatus};
pub(crate) use copy::helper_main as copy_helper_main;
pub use copy::CopyDirection;
pub(crate) use exec::helper_main as exec_helper_main;
pub use exec::{exit_code_of, ExecError, ExecOutput, ExecSpec, EXEC_KILLED, EXEC_START_FAILED};
pub use rootfs::is_mounted;

/// How long `create` waits for the shim's ready report.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a state or kill request may take before the shim counts as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The version of `meta.json` this code writes and reads.
const META_VERSION: u32 = 1;
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// e.g. /var/lib/flotilla/containers: one directory per container.
    pub state_dir: PathBuf,
    /// e.g. /run/flotilla: shim sockets and libcontainer's state root.
    pub run_dir: PathBuf,
    /// cgroup parent under the root of each hierarchy (default "flotilla").
    pub cgroup_parent: String,
    /// Binary re-executed as `<shim_exe> shim run <container dir>`.
    pub shim_exe: PathBuf,
}

impl RuntimeConfig {
    pub fn new(state_dir: PathBuf, run_dir: PathBuf, shim_exe: PathBuf) -> Self {
        RuntimeConfig {
            state_dir,
            run_dir,
            cgroup_parent: "flotilla".into(),
            shim_exe,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Resource limits, in Docker's units. Applied through the container's
/// cgroups: the same [`oci_spec`] resources drive cgroup v1 and v2 (the
/// kernel-specific file writes are libcgroups').
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// Hard memory limit (`mem_limit`, `deploy.resources.limits.memory`).
    pub memory_bytes: Option<i64>,
    /// CPU limit in units of 1e-9 CPUs (Docker's `NanoCPUs`).
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    /// Soft limit (`mem_reservation`): v1 `memory.soft_limit_in_bytes`, v2 `memory.low`.
    pub memory_reservation: Option<i64>,
    /// Memory + swap (`memswap_limit`); -1 is unlimited.
    pub memory_swap: Option<i64>,
    /// Relative CPU weight (`cpu_shares`, Docker's default 1024).
    pub cpu_shares: Option<u64>,
    /// CFS period and quota in microseconds (`cpu_period`, `cpu_quota`),
    /// when given directly rather than through `nano_cpus`.
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<i64>,
    /// `cpuset` (e.g. "0-1,3") and `cpuset.mems`.
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// 10..=1000 (`blkio_config.weight`), where the kernel offers it.
    pub blkio_weight: Option<u16>,
    pub oom_score_adj: Option<i32>,
}

/// Which seccomp filter the container's processes run under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompProfile {
    /// Docker's default profile.
    #[default]
    Default,
    /// `security_opt: seccomp=unconfined`: no filter.
    Unconfined,
    /// A profile in Docker's JSON format (the content, not a path).
    Custom(String),
}

/// Privilege settings; the default is Docker's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Security {
    /// All capabilities, every host device, no seccomp, no masked or
    /// read-only paths, writable /sys: Docker's `--privileged`.
    pub privileged: bool,
    /// "NET_ADMIN" or "CAP_NET_ADMIN"; "ALL" for every capability.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `security_opt: no-new-privileges`.
    pub no_new_privileges: bool,
    pub seccomp: SeccompProfile,
}

/// One `ulimits:` entry: `name` as Docker spells it ("nofile", "nproc", ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// A host device made available inside the container (`devices:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// A device node, or a directory of them (taken recursively).
    pub host_path: PathBuf,
    /// "" means the same path as on the host.
    pub container_path: String,
    /// Any of "rwm"; "" means "rwm".
    pub permissions: String,
}

/// A mount beyond the rootfs: Compose's `volumes:` and `tmpfs:` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A host path.
    Bind {
        source: PathBuf,
        /// "rprivate" (default), "private", "rshared", "shared", "rslave", "slave".
        propagation: String,
        /// Create a missing source as a directory (Compose's short syntax
        /// does); otherwise a missing source is an error.
        create_host_path: bool,
    },
    /// A volume's data directory (see [`crate::volume`]). When `copy_up`
    /// is set and the directory is empty, the image's content at `target`
    /// is copied into it first, as Docker does on a volume's first use.
    Volume { source: PathBuf, copy_up: bool },
    /// A fresh tmpfs; `size` in bytes, `mode` as in chmod (default 1777).
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
}

/// Log file rotation (`logging.options.max-size` / `max-file` of the
/// json-file driver).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Rotate when the current file would grow past this; None: never.
    pub max_size: Option<u64>,
    /// Files kept including the current one (Docker's default 1).
    pub max_file: Option<u32>,
}

/// Everything needed to run one container, fully resolved by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSpec {
    pub id: String,
    pub hostname: String,
    pub domainname: String,
    /// Read-only layer directories, bottom-most first.
    pub layers: Vec<PathBuf>,
    /// Resolved argv (entrypoint + command).
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Working directory inside the container; "" means "/".
    pub cwd: String,
    /// "", "name", "uid", "uid:gid", "name:group" (resolved against the image's /etc files).
    pub user: String,
    /// Supplementary groups (`group_add`): names from the image's /etc/group or numbers.
    pub group_add: Vec<String>,
    /// Join this (bind-mounted) network namespace; None: a new one with only lo.
    pub netns: Option<PathBuf>,
    /// Plain bind mounts of files the runtime's caller wrote (/etc/hosts, ...).
    pub mounts: Vec<BindMount>,
    /// Volumes, binds with options, tmpfs.
    pub volumes: Vec<Mount>,
    /// Stored with the container so a restarted agent can re-adopt it.
    pub labels: BTreeMap<String, String>,
    pub resources: Resources,
    pub security: Security,
    /// Mount the root filesystem read-only (`read_only: true`).
    pub read_only: bool,
    pub ulimits: Vec<Ulimit>,
    pub sysctls: BTreeMap<String, String>,
    /// Run a minimal init as pid 1 that reaps zombies and forwards signals
    /// (`init: true`).
    pub init: bool,
    /// Size of /dev/shm in bytes (default 64 MiB).
    pub shm_size: Option<u64>,
    pub devices: Vec<Device>,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Exited,
    /// The shim is gone while the container was running: nobody knows.
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub state: ContainerState,
    /// Host pid of the container's init.
    pub pid: Option<i32>,
    /// Exit code; a death by signal N is 128+N, as in Docker.
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub created_at: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub shim_pid: Option<i32>,
    pub log_path: PathBuf,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("container {id} already exists")]
    AlreadyExists { id: String },
    #[error("no such container: {id}")]
    NotFound { id: String },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("preparing container {id}: {message}")]
    Prepare { id: String, message: String },
    #[error("starting the shim ({}) for container {id}: {source}", exe.display())]
    SpawnShim {
        id: String,
        exe: PathBuf,
        source: io::Error,
    },
    #[error("container {id} failed to start: {message}")]
    Start { id: String, message: String },
    #[error("talking to the shim of container {id}: {message}")]
    Shim { id: String, message: String },
    #[error("the shim of container {id} is gone; the container's state is unknown")]
    ShimGone { id: String },
    #[error("timed out waiting for container {id} to exit")]
    Timeout { id: String },
    #[error("removing container {id}: {message}")]
    Remove { id: String, message: String },
    #[error("container {id} is not running")]
    NotRunning { id: String },
    #[error("container {id}: {message}")]
    Cgroup { id: String, message: String },
    #[error("copying files of container {id}: {message}")]
    Copy { id: String, message: String },
}

/// A connection to a container's shim that receives the container's
/// output as it is written ([`Runtime::attach`]). Dropping it detaches.
#[derive(Debug)]
pub struct Attach {
    id: String,
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    partial: Vec<u8>,
}

impl Attach {
    /// Bounds how long [`Attach::next_entry`] waits (None: no bound).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ContainerError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|e| ContainerError::Shim {
                id: self.id.clone(),
                message: format!("setting the attach timeout: {e}"),
            })
    }

    /// The next line the container wrote; `Ok(None)` once the container
    /// has exited and all its output was sent. Past the timeout it fails
    /// with [`ContainerError::Shim`] ("no output in time") and may be
    /// called again.
    pub fn next_entry(&mut self) -> Result<Option<crate::logs::LogEntry>, ContainerError> {
        use std::io::BufRead;
        let err = |message: String| ContainerError::Shim {
            id: self.id.clone(),
            message,
        };
        loop {
            // A record cut by a timeout stays in `partial` for the next call.
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(_) if self.partial.last() == Some(&b'\n') => {
                    let line = std::mem::take(&mut self.partial);
                    return crate::logs::decode_line(&line).map(Some).ok_or_else(|| {
                        err(format!(
                            "attached: not a log record: {:?}",
                            String::from_utf8_lossy(&line)
                        ))
                    });
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if protocol::is_timeout(&e) => {
                    return Err(err("attached: no output in time".into()))
                }
                Err(e) => return Err(err(format!("attached: reading: {e}"))),
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
    id: String,
    created_at: SystemTime,
    spec: ContainerSpec,
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContainerError {
    let path = path.to_owned();
    move |source| ContainerError::Io {
        action,
        path,
        source,
    }
}

fn validate_id(id: &str) -> Result<(), ContainerError> {
    let bad = |reason| {
        Err(ContainerError::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 128 {
        return bad("must be 1 to 128 characters");
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// The node's container runtime. Cheap to construct; holds no live state.
#[derive(Debug)]
pub struct Runtime {
    cfg: RuntimeConfig,
    cgroups: rootfs::CgroupMounts,
}

impl Runtime {
    pub fn new(cfg: RuntimeConfig) -> Result<Self, ContainerError> {
        let mut cfg = cfg;
        for dir in [&cfg.state_dir, &cfg.run_dir] {
            std::fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
        }
        cfg.state_dir = std::fs::canonicalize(&cfg.state_dir)
            .map_err(io_err("resolving state dir", &cfg.state_dir))?;
        cfg.run_dir = std::fs::canonicalize(&cfg.run_dir)
            .map_err(io_err("resolving run dir", &cfg.run_dir))?;
        for sub in ["shims", "libcontainer"] {
            let d = cfg.run_dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err("creating directory", &d))?;
        }
        let cgroups = rootfs::CgroupMounts::detect().map_err(io_err(
            "reading cgroup mounts from",
            Path::new("/proc/self/mountinfo"),
        ))?;
        Ok(Runtime { cfg, cgroups })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join(id)
    }

    fn socket(&self, id: &str) -> PathBuf {
        self.cfg.run_dir.join("shims").join(format!("{id}.sock"))
    }

    fn libcontainer_root(&self) -> PathBuf {
        self.cfg.run_dir.join("libcontainer")
    }

    fn cgroup_rel(&self, id: &str) -> String {
        format!("/{}/{id}", self.cfg.cgroup_parent.trim_matches('/'))
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join(format!("{id}-json.log"))
    }

    /// The container's root filesystem mount point on the host.
    pub fn rootfs_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("bundle").join("rootfs")
    }

    /// The container's cgroup directories by controller, for
    /// [`cgroup_ops`].
    pub fn cgroup_files(&self, id: &str) -> cgroup_ops::CgroupFiles {
        let rel = self.cgroup_rel(id);
        let rel = rel.trim_start_matches('/');
        let mut files = cgroup_ops::CgroupFiles::default();
        for (mount, ctrls) in &self.cgroups.v1 {
            for c in ctrls {
                files.v1.insert(c.clone(), mount.join(rel));
            }
        }
        files.v2 = self.cgroups.v2.as_ref().map(|m| m.join(rel));
        files
    }

    /// The container's init pid, if it runs.
    fn running_pid(&self, id: &str) -> Result<i32, ContainerError> {
        let info = self.inspect(id)?;
        match (info.state, info.pid) {
            (ContainerState::Running, Some(pid)) => Ok(pid),
            _ => Err(ContainerError::NotRunning { id: id.into() }),
        }
    }

    fn cgroup_op_err(id: &str) -> impl FnOnce(cgroup_ops::CgroupOpError) -> ContainerError + '_ {
        move |e| ContainerError::Cgroup {
            id: id.into(),
            message: e.to_string(),
        }
    }

    /// Freezes every process of a running container (`pause`).
    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        self.running_pid(id)?;
        self.cgroup_files(id)
            .freeze()
            .map_err(Self::cgroup_op_err(id))
    }

    /// Thaws a paused container (`unpause`).
    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        self.load_meta(id)?;
        self.cgroup_files(id)
            .thaw()
            .map_err(Self::cgroup_op_err(id))
    }

    pub fn is_paused(&self, id: &str) -> Result<bool, ContainerError> {
        self.load_meta(id)?;
        self.cgroup_files(id)
            .is_frozen()
            .map_err(Self::cgroup_op_err(id))
    }

    /// One resource-usage sample of a running container.
    pub fn stats(&self, id: &str) -> Result<cgroup_ops::StatsSample, ContainerError> {
        let pid = self.running_pid(id)?;
        Ok(cgroup_ops::sample(&self.cgroup_files(id), Some(pid)))
    }

    /// One resource-usage sample of a container, read by its shim from the
    /// container's cgroup (the same counters as [`Runtime::stats`], without
    /// this process needing to know the cgroup layout).
    pub fn shim_stats(&self, id: &str) -> Result<cgroup_ops::StatsSample, ContainerError> {
        self.load_meta(id)?;
        let resp = protocol::call(&self.socket(id), &Request::Stats, Some(CALL_TIMEOUT))
            .map_err(|e| Self::shim_err(id, e))?;
        match resp {
            Response {
                ok: true,
                stats: Some(s),
                ..
            } => Ok(s),
            r => Err(ContainerError::Shim {
                id: id.into(),
                message: format!(
                    "asking for stats: {}",
                    r.error
                        .unwrap_or_else(|| "the shim answered without stats".into())
                ),
            }),
        }
    }

    /// Follows the container's output from now on, line by line as its
    /// shim writes it to the log (see [`Attach`]).
    pub fn attach(&self, id: &str) -> Result<Attach, ContainerError> {
        self.load_meta(id)?;
        let mut reader = protocol::send(&self.socket(id), &Request::Attach, Some(CALL_TIMEOUT))
            .map_err(|e| Self::shim_err(id, e))?;
        match protocol::read_response(&mut reader).map_err(|e| Self::shim_err(id, e))? {
            Response { ok: true, .. } => {}
            r => {
                return Err(ContainerError::Shim {
                    id: id.into(),
                    message: format!(
                        "attaching: {}",
                        r.error.unwrap_or_else(|| "refused without a reason".into())
                    ),
                })
            }
        }
        reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|e| Self::shim_err(id, CallError::Io(e)))?;
        Ok(Attach {
            id: id.into(),
            reader,
            partial: Vec::new(),
        })
    }

    /// The path of the container's shim socket (requests are JSON lines;
    /// see the shim's protocol).
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        self.socket(id)
    }

    /// The processes of a running container.
    pub fn top(&self, id: &str) -> Result<Vec<cgroup_ops::ProcessEntry>, ContainerError> {
        let pid = self.running_pid(id)?;
        cgroup_ops::processes(&self.cgroup_files(id), Some(pid)).map_err(Self::cgroup_op_err(id))
    }

    /// Every cgroup directory the container may have (one per hierarchy),
    /// whether or not it exists right now.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.cgroups.container_dirs(&self.cgroup_rel(id))
    }

    /// Blocking. Builds the overlay rootfs and OCI bundle, spawns the shim and
    /// returns once the container runs, or with the error it failed with.
    pub fn create(&self, spec: &ContainerSpec) -> Result<ContainerInfo, ContainerError> {
        // Docker's rule: a weight the kernel cannot apply (no cfq/bfq
        // scheduler loaded) is dropped with a warning, not an error.
        let without_weight;
        let spec = if spec.resources.blkio_weight.is_some() && !self.cgroups.blkio_weight_offered()
        {
            tracing::warn!(container = %spec.id, "this kernel offers no block I/O weight (no cfq or bfq scheduler): blkio weight discarded");
            without_weight = ContainerSpec {
                resources: Resources {
                    blkio_weight: None,
                    ..spec.resources.clone()
                },
                ..spec.clone()
            };
            &without_weight
        } else {
            spec
        };
        let id = spec.id.as_str();
        validate_id(id)?;
        let socket = self.socket(id);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ContainerError::Prepare {
                id: id.into(),
                message: format!(
                    "shim socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter run_dir or id",
                    socket.display()
                ),
            });
        }
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::AlreadyExists { id: id.into() })
            }
            Err(e) => return Err(io_err("creating container directory", &dir)(e)),
        }
        let mut guard = CreateGuard {
            rt: self,
            id,
            armed: true,
        };

        let meta = Meta {
            version: META_VERSION,
            id: id.into(),
            created_at: SystemTime::now(),
            spec: spec.clone(),
        };
        write_json(&dir.join("meta.json"), &meta)?;

        let upper = dir.join("upper");
        let work = dir.join("work");
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in [&upper, &work, &rootfs] {
            std::fs::create_dir_all(d).map_err(io_err("creating directory", d))?;
        }
        let prepare = |message: String| ContainerError::Prepare {
            id: id.into(),
            message,
        };
        let layers = if spec.layers.is_empty() {
            let empty = dir.join("empty");
            std::fs::create_dir_all(&empty).map_err(io_err("creating directory", &empty))?;
            vec![empty]
        } else {
            spec.layers.clone()
        };
        rootfs::mount_overlay(&layers, &upper, &work, &rootfs).map_err(prepare)?;

        let mut user = user::resolve(&rootfs, &spec.user).map_err(prepare)?;
        for gid in user::resolve_groups(&rootfs, &spec.group_add).map_err(prepare)? {
            if gid != user.gid && !user.additional_gids.contains(&gid) {
                user.additional_gids.push(gid);
            }
        }
        self.prepare_volumes(spec, &rootfs).map_err(prepare)?;
        if !spec.cwd.is_empty() {
            // Docker creates a missing working directory (before a read-only
            // root would make that impossible).
            let wd = safe_path::scoped_join(&rootfs, spec.cwd.trim_start_matches('/'))
                .map_err(|e| prepare(format!("resolving working dir {}: {e}", spec.cwd)))?;
            std::fs::create_dir_all(&wd)
                .map_err(|e| prepare(format!("creating working dir {}: {e}", spec.cwd)))?;
        }
        let devices = if spec.security.privileged {
            devices::host_devices().map_err(prepare)?
        } else {
            devices::resolve(&spec.devices).map_err(prepare)?
        };
        let init_binary = if spec.init {
            Some(init::install(&self.cfg.run_dir).map_err(prepare)?)
        } else {
            None
        };
        let inputs = spec::Inputs {
            user,
            cgroups_path: self.cgroup_rel(id),
            devices,
            host: seccomp::Host::detect(),
            available_caps: devices::available_caps(),
            init_binary,
            own_netns: !joins_host_netns(spec.netns.as_deref()),
            extra_masked: devices::thermal_throttle_paths(),
        };
        let oci = spec::build(spec, &inputs).map_err(prepare)?;
        let cfg_path = bundle.join("config.json");
        oci.save(&cfg_path)
            .map_err(|e| prepare(format!("writing {}: {e}", cfg_path.display())))?;

        let shim_cfg = ShimConfig {
            id: id.into(),
            bundle: bundle.clone(),
            libcontainer_root: self.libcontainer_root(),
            socket,
            log_path: self.log_path(id),
            status_path: dir.join("status.json"),
            oom_files: self.cgroups.oom_files(&self.cgroup_rel(id)),
            loopback_up: spec.netns.is_none(),
            log_max_size: spec.log.max_size,
            log_max_file: spec.log.max_file,
            cgroups: self.cgroup_files(id),
        };
        write_json(&dir.join("shim.json"), &shim_cfg)?;

        let ready = self.spawn_shim(id, &dir)?;
        match ready {
            Response {
                ok: true,
                status: Some(status),
                ..
            } => {
                guard.armed = false;
                Ok(self.info_from(&meta, Some(status), None))
            }
            other => Err(ContainerError::Start {
                id: id.into(),
                message: other
                    .error
                    .unwrap_or_else(|| "the shim reported no status".into()),
            }),
        }
    }

    /// Creates missing bind sources that may be created, refuses missing
    /// ones that may not, and fills empty volumes from the image.
    fn prepare_volumes(&self, spec: &ContainerSpec, rootfs: &Path) -> Result<(), String> {
        for m in &spec.volumes {
            match &m.kind {
                MountKind::Bind {
                    source,
                    create_host_path,
                    ..
                } => {
                    if !source.is_absolute() {
                        return Err(format!(
                            "bind mount source {} must be an absolute path",
                            source.display()
                        ));
                    }
                    if !source.exists() {
                        if *create_host_path {
                            std::fs::create_dir_all(source).map_err(|e| {
                                format!("creating bind mount source {}: {e}", source.display())
                            })?;
                        } else {
                            return Err(format!(
                                "bind mount source path does not exist: {}",
                                source.display()
                            ));
                        }
                    }
                }
                MountKind::Volume { source, copy_up } => {
                    if !source.is_dir() {
                        return Err(format!(
                            "volume directory {} does not exist",
                            source.display()
                        ));
                    }
                    if *copy_up {
                        crate::volume::copy_up(rootfs, &m.target, source)
                            .map_err(|e| e.to_string())?;
                    }
                }
                MountKind::Tmpfs { .. } => {}
            }
        }
        Ok(())
    }

    fn spawn_shim(&self, id: &str, dir: &Path) -> Result<Response, ContainerError> {
        let shim_log = dir.join("shim.log");
        let stderr = File::create(&shim_log).map_err(io_err("creating", &shim_log))?;
        let spawn_err = |source| ContainerError::SpawnShim {
            id: id.into(),
            exe: self.cfg.shim_exe.clone(),
            source,
        };
        let mut child = Command::new(&self.cfg.shim_exe)
            .arg("shim")
            .arg("run")
            .arg(dir)
            // The shim outlives us: give it nothing of ours it could keep
            // (LISTEN_FDS would even be passed on to the container).
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(spawn_err)?;
        let stdout = child.stdout.take();
        // The first shim process only forks the real one and exits.
        let _ = child.wait();
        let start_err = |message: String| ContainerError::Start {
            id: id.into(),
            message,
        };
        let Some(mut stdout) = stdout else {
            return Err(start_err("the shim's stdout was not captured".into()));
        };
        let line = read_line_with_timeout(&mut stdout, START_TIMEOUT)
            .map_err(|e| start_err(format!("reading the shim's ready report: {e}")))?;
        if line.trim().is_empty() {
            let log = std::fs::read_to_string(&shim_log).unwrap_or_default();
            return Err(start_err(format!(
                "the shim exited without a report; its stderr: {}",
                log.trim()
            )));
        }
        serde_json::from_str(&line)
            .map_err(|e| start_err(format!("bad ready report {line:?}: {e}")))
    }

    fn load_meta(&self, id: &str) -> Result<Meta, ContainerError> {
        validate_id(id).map_err(|_| ContainerError::NotFound { id: id.into() })?;
        let path = self.dir(id).join("meta.json");
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound { id: id.into() })
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let meta: Meta = serde_json::from_slice(&data).map_err(|e| ContainerError::Prepare {
            id: id.into(),
            message: format!("parsing {}: {e}", path.display()),
        })?;
        if meta.version > META_VERSION {
            return Err(ContainerError::Prepare {
                id: id.into(),
                message: format!(
                    "{} has format version {}, newer than this flotilla understands ({META_VERSION})",
                    path.display(),
                    meta.version
                ),
            });
        }
        Ok(meta)
    }

    fn read_status_file(&self, id: &str) -> Option<ShimStatus> {
        let data = std::fs::read(self.dir(id).join("status.json")).ok()?;
        serde_json::from_slice(&data).ok()
    }

    fn info_from(
        &self,
        meta: &Meta,
        status: Option<ShimStatus>,
        error: Option<String>,
    ) -> ContainerInfo {
        let s = status.unwrap_or(ShimStatus {
            state: ContainerState::Unknown,
            pid: None,
            shim_pid: None,
            exit_code: None,
            oom_killed: false,
            started_at: None,
            finished_at: None,
            error: None,
        });
        ContainerInfo {
            id: meta.id.clone(),
            labels: meta.spec.labels.clone(),
            state: s.state,
            pid: s.pid,
            exit_code: s.exit_code,
            oom_killed: s.oom_killed,
            created_at: Some(meta.created_at),
            started_at: s.started_at,
            finished_at: s.finished_at,
            shim_pid: s.shim_pid,
            log_path: self.log_path(&meta.id),
            error: error.or(s.error),
        }
    }

    fn call(
        &self,
        id: &str,
        req: &Request,
        timeout: Option<Duration>,
    ) -> Result<Result<ShimStatus, String>, CallError> {
        let resp = protocol::call(&self.socket(id), req, timeout)?;
        Ok(match resp {
            Response {
                ok: true,
                status: Some(s),
                ..
            } => Ok(s),
            r => Err(r
                .error
                .unwrap_or_else(|| "the shim answered without a status".into())),
        })
    }

    fn shim_err(id: &str, e: CallError) -> ContainerError {
        match e {
            CallError::Unavailable => ContainerError::ShimGone { id: id.into() },
            CallError::Timeout => ContainerError::Shim {
                id: id.into(),
                message: "no answer in time".into(),
            },
            CallError::Io(e) => ContainerError::Shim {
                id: id.into(),
                message: e.to_string(),
            },
            CallError::BadResponse(m) => ContainerError::Shim {
                id: id.into(),
                message: m,
            },
        }
    }

    /// Every container in the state dir, running or exited.
    pub fn list(&self) -> Result<Vec<ContainerInfo>, ContainerError> {
        let dir = &self.cfg.state_dir;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let entry = entry.map_err(io_err("listing", dir))?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !entry.path().join("meta.json").exists() {
                continue;
            }
            match self.inspect(&id) {
                Ok(info) => out.push(info),
                // Removed while we were listing.
                Err(ContainerError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Removes what a create cut short left behind: a container directory
    /// without its meta.json (the creator died before writing it, so no shim
    /// ever ran for it). Its overlay is unmounted and its cgroup directories
    /// removed. Containers with a meta.json are never touched here: they are
    /// listed (as exited or unknown when their shim is gone) and removed
    /// through [`Runtime::remove`]. Returns the ids swept.
    pub fn sweep_incomplete(&self) -> Result<Vec<String>, ContainerError> {
        let dir = &self.cfg.state_dir;
        let mut swept = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let entry = entry.map_err(io_err("listing", dir))?;
            let path = entry.path();
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_id(&id).is_err() || !path.is_dir() || path.join("meta.json").exists() {
                continue;
            }
            rootfs::unmount(&self.rootfs_path(&id)).map_err(|message| ContainerError::Remove {
                id: id.clone(),
                message,
            })?;
            for cg in self.cgroup_dirs(&id) {
                // Only an empty cgroup can be removed; one with processes in
                // it is not a half-made container and stays.
                let _ = std::fs::remove_dir(&cg);
            }
            let _ = std::fs::remove_file(self.socket(&id));
            std::fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
            tracing::info!(id = %id, "removed a container that was never fully created");
            swept.push(id);
        }
        Ok(swept)
    }

    pub fn inspect(&self, id: &str) -> Result<ContainerInfo, ContainerError> {
        let meta = self.load_meta(id)?;
        match self.call(id, &Request::State, Some(CALL_TIMEOUT)) {
            Ok(Ok(status)) => Ok(self.info_from(&meta, Some(status), None)),
            Ok(Err(msg)) => Err(ContainerError::Shim {
                id: id.into(),
                message: msg,
            }),
            Err(CallError::Unavailable) => Ok(self.offline_info(&meta)),
            Err(e) => Err(Self::shim_err(id, e)),
        }
    }

    /// What the status file says when no shim answers.
    fn offline_info(&self, meta: &Meta) -> ContainerInfo {
        match self.read_status_file(&meta.id) {
            Some(s) if s.state == ContainerState::Exited => self.info_from(meta, Some(s), None),
            Some(mut s) => {
                s.state = ContainerState::Unknown;
                self.info_from(meta, Some(s), Some("the container's shim is gone".into()))
            }
            None => self.info_from(meta, None, Some("the container's shim is gone".into())),
        }
    }

    pub fn kill(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        self.load_meta(id)?;
        match self.call(id, &Request::Kill { signal }, Some(CALL_TIMEOUT)) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(message)) => Err(ContainerError::Shim {
                id: id.into(),
                message,
            }),
            Err(e) => Err(Self::shim_err(id, e)),
        }
    }

    /// Waits until the container has exited (and its output is in the log).
    pub fn wait(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<ContainerInfo, ContainerError> {
        let meta = self.load_meta(id)?;
        match self.call(id, &Request::Wait, timeout) {
            Ok(Ok(status)) => Ok(self.info_from(&meta, Some(status), None)),
            Ok(Err(message)) => Err(ContainerError::Shim {
                id: id.into(),
                message,
            }),
            Err(CallError::Timeout) => Err(ContainerError::Timeout { id: id.into() }),
            Err(CallError::Unavailable) => {
                let info = self.offline_info(&meta);
                if info.state == ContainerState::Exited {
                    Ok(info)
                } else {
                    Err(ContainerError::ShimGone { id: id.into() })
                }
            }
            Err(e) => Err(Self::shim_err(id, e)),
        }
    }

    /// Sends `signal`, waits up to `grace`, then SIGKILLs; returns the exited info.
    pub fn stop(
        &self,
        id: &str,
        signal: i32,
        grace: Duration,
    ) -> Result<ContainerInfo, ContainerError> {
        let info = self.inspect(id)?;
        if info.state == ContainerState::Exited {
            return Ok(info);
        }
        let deadline = Instant::now() + grace;
        if let Err(e) = self.kill(id, signal) {
            // It may have exited in between; the wait below tells.
            tracing::debug!(id, error = %e, "stop: sending the stop signal failed");
        }
        match self.wait(id, Some(deadline.saturating_duration_since(Instant::now()))) {
            Ok(info) => return Ok(info),
            Err(ContainerError::Timeout { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Err(e) = self.kill(id, libc::SIGKILL) {
            tracing::debug!(id, error = %e, "stop: SIGKILL failed");
        }
        self.wait(id, None)
    }

    /// Ids of the containers (running or not) that mount the volume whose
    /// data directory is `data_dir`: a volume must not be removed while
    /// this is non-empty (Docker refuses `volume rm` of a volume in use).
    pub fn volume_users(&self, data_dir: &Path) -> Result<Vec<String>, ContainerError> {
        let mut users = Vec::new();
        let dir = &self.cfg.state_dir;
        for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let entry = entry.map_err(io_err("listing", dir))?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let meta = match self.load_meta(&id) {
                Ok(m) => m,
                Err(ContainerError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let uses =
                meta.spec.volumes.iter().any(
                    |m| matches!(&m.kind, MountKind::Volume { source, .. } if source == data_dir),
                );
            if uses {
                users.push(id);
            }
        }
        users.sort();
        Ok(users)
    }

    /// Kills the container if it still runs, then removes its cgroups,
    /// rootfs mount, state and log; the shim exits.
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        self.load_meta(id)?;
        let remove_err = |message: String| ContainerError::Remove {
            id: id.into(),
            message,
        };
        match self.call(id, &Request::Shutdown, Some(Duration::from_secs(60))) {
            // The monitor has reaped the container and exited; its cgroups
            // and libcontainer state are ours to delete.
            Ok(Ok(_)) => self.delete_without_shim(id).map_err(remove_err)?,
            Ok(Err(msg)) => {
                tracing::warn!(id, error = %msg, "shim failed to delete the container; retrying here");
                self.delete_without_shim(id).map_err(remove_err)?;
            }
            Err(CallError::Unavailable) => self.delete_without_shim(id).map_err(remove_err)?,
            Err(e) => return Err(Self::shim_err(id, e)),
        }
        rootfs::unmount(&self.rootfs_path(id)).map_err(remove_err)?;
        let _ = std::fs::remove_file(self.socket(id));
        let dir = self.dir(id);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| remove_err(format!("removing {}: {e}", dir.display())))?;
        Ok(())
    }

    /// Cleans up after a shim that is gone: kills what is left in the
    /// container's cgroup and deletes the cgroups and libcontainer state.
    fn delete_without_shim(&self, id: &str) -> Result<(), String> {
        let root = self.libcontainer_root().join(id);
        if root.exists() {
            let mut c = libcontainer::container::Container::load(root.clone())
                .map_err(|e| format!("loading libcontainer state {}: {e}", root.display()))?;
            c.delete(true)
                .map_err(|e| format!("deleting container through libcontainer: {e}"))?;
        }
        Ok(())
    }
}

/// Whether `netns` is this host's own network namespace (`network_mode:
/// host`): Docker's per-namespace sysctl defaults must not touch it.
fn joins_host_netns(netns: Option<&Path>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(p) = netns else { return false };
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (id(p), id(Path::new("/proc/self/ns/net"))) {
        (Some(a), Some(b)) => a == b,
        // Unknown: assume the host's, so nothing is changed there.
        _ => true,
    }
}

/// The cgroup resources (OCI `linux.resources`) a container made from
/// `spec` gets: the same description drives cgroup v1 and v2 (libcgroups
/// writes each version's files from it). Devices are left out.
pub fn cgroup_resources(
    spec: &ContainerSpec,
) -> Result<oci_spec::runtime::LinuxResources, ContainerError> {
    let prepare = |message: String| ContainerError::Prepare {
        id: spec.id.clone(),
        message,
    };
    let v = spec::resources(spec, Vec::new()).map_err(prepare)?;
    serde_json::from_value(v).map_err(|e| prepare(format!("building cgroup resources: {e}")))
}

/// Undoes a half-made container when `create` fails.
struct CreateGuard<'a> {
    rt: &'a Runtime,
    id: &'a str,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = self.rt.delete_without_shim(self.id);
        if let Err(e) = rootfs::unmount(&self.rt.rootfs_path(self.id)) {
            tracing::warn!(id = self.id, error = %e, "cleaning up a failed create");
            return;
        }
        let _ = std::fs::remove_file(self.rt.socket(self.id));
        let _ = std::fs::remove_dir_all(self.rt.dir(self.id));
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ContainerError> {
    let data = serde_json::to_vec_pretty(value).map_err(|e| ContainerError::Io {
        action: "encoding",
        path: path.to_owned(),
        source: io::Error::other(e),
    })?;
    std::fs::write(path, data).map_err(io_err("writing", path))
}

/// Reads up to the first newline (or EOF) from a pipe, giving up after `timeout`.
fn read_line_with_timeout(pipe: &mut impl ReadFd, timeout: Duration) -> io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let n = pipe.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

trait ReadFd: Read + AsFd {}
impl<T: Read + AsFd> ReadFd for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_netns_is_recognised() {
        assert!(!joins_host_netns(None));
        assert!(joins_host_netns(Some(Path::new("/proc/self/ns/net"))));
        // Another network namespace (held by a helper process) is not the host's.
        let mut holder = std::process::Command::new("unshare")
            .args(["--net", "sleep", "30"])
            .spawn()
            .unwrap();
        let theirs = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(&theirs).ok().as_ref() == Some(&own) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let joined = joins_host_netns(Some(&theirs));
        let _ = holder.kill();
        let _ = holder.wait();
        assert!(!joined);
        // A path that is not a namespace: assumed the host's (the safe side).
        assert!(joins_host_netns(Some(Path::new("/nonexistent/ns"))));
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("web-1.abc_2").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("-x").is_err());
        assert!(validate_id("../x").is_err());
        assert!(validate_id("a/b").is_err());
    }
}
