//! Running an extra process inside a running container (`exec`): health
//! checks and `flotilla exec`.
//!
//! The process joins the container's namespaces and cgroup and runs as the
//! container's user, with its capabilities, rlimits and environment (plus
//! the caller's overrides), through libcontainer's tenant builder. That
//! builder forks and clones, so it never runs in the caller's (threaded)
//! process: a fresh helper, `<shim_exe> shim exec <container dir> <json>`,
//! does it, with the caller's pipes as the process's stdio, and exits with
//! the process's exit code (a death by signal N is 128+N, as in Docker).
//!
//! What it must never do: leave an exec'd process running past its
//! deadline (the helper kills it), or run anything in a container that is
//! not running.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ContainerError, ContainerState, Runtime};

/// The exit code the helper uses when the process could not be started
/// at all (missing executable, bad cwd...), as Docker's 126.
pub const EXEC_START_FAILED: i32 = 126;
/// The exit code of a process killed at its deadline (128 + SIGKILL).
pub const EXEC_KILLED: i32 = 137;
/// Prefix of the helper's own messages on stderr, so they can be told
/// apart from the process's output.
pub const HELPER_PREFIX: &str = "flotilla exec: ";

/// What to run; unset fields come from the container's own process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecSpec {
    /// argv; args[0] is looked up in the container's PATH.
    pub args: Vec<String>,
    /// "KEY=VALUE" entries added to (and overriding) the container's env.
    pub env: Vec<String>,
    /// Absolute working directory; None: the container's.
    pub cwd: Option<String>,
    /// Killed with SIGKILL after this long (None: no limit).
    pub timeout: Option<Duration>,
    /// User name or uid[:gid], resolved in the container's /etc/passwd;
    /// None: the container's user.
    pub user: Option<String>,
}

/// The result of a process run to completion with captured output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The deadline passed and the process was killed.
    pub timed_out: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("container {id} is not running (state {state:?}); cannot exec in it")]
    NotRunning { id: String, state: ContainerState },
    #[error("exec in container {id}: no command given")]
    NoCommand { id: String },
    #[error("starting the exec helper ({}) for container {id}: {source}", exe.display())]
    Spawn {
        id: String,
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for the exec helper of container {id}: {source}")]
    Wait { id: String, source: std::io::Error },
}

impl Runtime {
    /// Starts `spec` in the running container `id` and returns the helper
    /// process, whose stdin/stdout/stderr are the process's (pipes) and whose
    /// exit code is the process's. For streaming callers; see [`Runtime::exec`].
    pub fn exec_spawn(&self, id: &str, spec: &ExecSpec) -> Result<Child, ExecError> {
        self.exec_spawn_inner(id, spec, None)
    }

    /// Like [`Runtime::exec_spawn`], with a terminal: the process gets a pty
    /// made in the container, whose master is sent to `console` (receive it
    /// with [`super::pty::ConsoleSocket::receive_master`]). The helper's own
    /// stdout stays unused; its stderr carries its error message.
    pub fn exec_spawn_tty(
        &self,
        id: &str,
        spec: &ExecSpec,
        console: &Path,
    ) -> Result<Child, ExecError> {
        self.exec_spawn_inner(id, spec, Some(console))
    }

    fn exec_spawn_inner(
        &self,
        id: &str,
        spec: &ExecSpec,
        console: Option<&Path>,
    ) -> Result<Child, ExecError> {
        if spec.args.is_empty() {
            return Err(ExecError::NoCommand { id: id.into() });
        }
        let info = self.inspect(id)?;
        if info.state != ContainerState::Running {
            return Err(ExecError::NotRunning {
                id: id.into(),
                state: info.state,
            });
        }
        let req = HelperRequest {
            id: id.to_string(),
            libcontainer_root: self.libcontainer_root(),
            spec: spec.clone(),
            console_socket: console.map(Path::to_path_buf),
        };
        // A struct of strings and paths always serializes.
        let json = serde_json::to_string(&req).unwrap_or_default();
        Command::new(&self.cfg.shim_exe)
            .arg("shim")
            .arg("exec")
            .arg(self.dir(id))
            .arg(json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ExecError::Spawn {
                id: id.into(),
                exe: self.cfg.shim_exe.clone(),
                source,
            })
    }

    /// Blocking. Runs `spec` in the running container `id` with no input and
    /// returns its exit code and output (each stream capped at 1 MiB).
    pub fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecOutput, ExecError> {
        let mut child = self.exec_spawn(id, spec)?;
        drop(child.stdin.take());
        let out = child.stdout.take().map(|s| reader_thread(s.into()));
        let err = child.stderr.take().map(|s| reader_thread(s.into()));
        // The helper enforces the deadline; this is a backstop in case the
        // helper itself hangs.
        let backstop = spec
            .timeout
            .map(|t| Instant::now() + t + Duration::from_secs(10));
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(source) => {
                    return Err(ExecError::Wait {
                        id: id.into(),
                        source,
                    })
                }
            }
            if backstop.is_some_and(|d| Instant::now() >= d) {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
        let exit_code = exit_code_of(status);
        let timed_out = exit_code == EXEC_KILLED
            && String::from_utf8_lossy(&stderr).contains(&format!("{HELPER_PREFIX}timed out"));
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
            timed_out,
        })
    }
}

/// Docker's convention: a death by signal N is 128+N.
pub fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

const OUTPUT_CAP: usize = 1 << 20;

fn reader_thread(fd: OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match f.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_CAP.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
        buf
    })
}

/// What the runtime hands the helper on its command line.
#[derive(Debug, Serialize, Deserialize)]
struct HelperRequest {
    id: String,
    libcontainer_root: PathBuf,
    spec: ExecSpec,
    #[serde(default)]
    console_socket: Option<PathBuf>,
}

/// The helper: `shim exec <container dir> <json>`. Single-threaded; its
/// stdio are the exec'd process's. Returns the process's exit code.
pub(crate) fn helper_main(dir: &Path, json: &str) -> i32 {
    match helper(dir, json) {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("{HELPER_PREFIX}{msg}");
            code
        }
    }
}

fn helper(dir: &Path, json: &str) -> Result<i32, (i32, String)> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

    let fail = |m: String| (EXEC_START_FAILED, m);
    let req: HelperRequest =
        serde_json::from_str(json).map_err(|e| fail(format!("bad request: {e}")))?;
    let config_path = dir.join("bundle").join("config.json");
    let oci = oci_spec::runtime::Spec::load(&config_path)
        .map_err(|e| fail(format!("reading {}: {e}", config_path.display())))?;
    let mut process = oci.process().clone().unwrap_or_default();
    let mut env = process.env().clone().unwrap_or_default();
    for kv in &req.spec.env {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    process.set_env(Some(env));
    process.set_args(Some(req.spec.args.clone()));
    if let Some(cwd) = &req.spec.cwd {
        process.set_cwd(PathBuf::from(cwd));
    }
    if let Some(user) = &req.spec.user {
        let rootfs = dir.join("bundle").join("rootfs");
        let u = super::user::resolve(&rootfs, user)
            .map_err(|m| fail(format!("exec user {user:?}: {m}")))?;
        let mut pu = process.user().clone();
        pu.set_uid(u.uid);
        pu.set_gid(u.gid);
        pu.set_additional_gids(Some(u.additional_gids.clone()));
        process.set_user(pu);
    }
    process.set_terminal(Some(req.console_socket.is_some()));
    // The tenant builder reads the process from a file; it lives only for
    // the build, beside the container's other state.
    let proc_path = dir.join(format!("exec-{}.json", std::process::id()));
    let data = serde_json::to_vec(&process)
        .map_err(|e| fail(format!("encoding the exec process: {e}")))?;
    std::fs::write(&proc_path, data)
        .map_err(|e| fail(format!("writing {}: {e}", proc_path.display())))?;
    use std::os::fd::AsFd;
    let dup = |fd: std::os::fd::BorrowedFd<'_>, name: &str| {
        fd.try_clone_to_owned()
            .map_err(|e| fail(format!("duplicating {name}: {e}")))
    };
    let (i, o, e) = (
        dup(std::io::stdin().as_fd(), "stdin")?,
        dup(std::io::stdout().as_fd(), "stdout")?,
        dup(std::io::stderr().as_fd(), "stderr")?,
    );
    let built = ContainerBuilder::new(req.id.clone(), SyscallType::default())
        .with_root_path(&req.libcontainer_root)
        .map_err(|e| fail(format!("opening libcontainer state: {e}")))
        .map(|b| {
            b.with_stdin(i)
                .with_stdout(o)
                .with_stderr(e)
                .with_console_socket(req.console_socket.as_ref())
                .as_tenant()
                .with_process(Some(&proc_path))
                // libcontainer hands a terminal to a console socket only for
                // a "detached" process; the helper still waits for it below.
                .with_detach(req.console_socket.is_some())
                .build()
        });
    let _ = std::fs::remove_file(&proc_path);
    let pid = match built? {
        Ok(pid) => pid,
        Err(e) => {
            return Err(fail(format!(
                "starting {:?} in container {}: {}",
                req.spec.args,
                req.id,
                chain(&e)
            )))
        }
    };
    let deadline = req.spec.timeout.map(|t| Instant::now() + t);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err((EXEC_START_FAILED, format!("waiting for pid {pid}: {e}"))),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
            let secs = req.spec.timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0);
            return Err((EXEC_KILLED, format!("timed out after {secs}s; killed")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = e.source();
    }
    msg
}
