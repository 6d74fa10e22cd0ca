//! The per-container shim: `flotilla shim run <container dir>`.
//!
//! One shim process owns one container. It detaches (new session, second
//! fork) so that killing the agent never kills containers, becomes the child
//! subreaper so the container's init is reparented to it, creates and starts
//! the container through youki's `libcontainer`, copies the container's
//! stdout/stderr into a Docker json-file log, reaps the container, records its
//! exit status in `status.json`, and answers the runtime on a unix socket
//! (see [`protocol`]). After the container exits it stays until told to shut
//! down; the runtime then deletes the container's cgroups and libcontainer
//! state.
//!
//! Two halves: `start` (creation through libcontainer, the heavy part) and
//! the [`monitor`] loop. Once the container runs, the shim execs the lean
//! `flotilla-shim-monitor` binary (no libcontainer in it) so that what stays
//! resident per container is small; without that binary it monitors
//! in-process.
//!
//! How it is started: [`crate::container::Runtime::create`] writes
//! `<container dir>/shim.json` and runs `<shim_exe> shim run <container dir>`
//! with stdout a pipe; the shim writes one JSON [`protocol::Response`] line to
//! that pipe when the container runs (or why it could not start), then points
//! its stdout at /dev/null.
//!
//! What it must never do: start threads or an async runtime (it forks, and
//! libcontainer clones), or exit while its container runs unless told to.

pub mod monitor;
pub(crate) mod protocol;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use protocol::{Request, Response, ShimConfig, ShimStatus};

/// How long the shim keeps draining the container's output pipes after its
/// init exited before it reports the exit anyway (a process that escaped the
/// container could hold them open forever).
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long one client may take to send its request line.
pub(crate) const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Entry point of the hidden `shim` subcommand; `args` is the whole argv
/// (`[exe, "shim", "run", DIR]`). Must run before any thread exists.
pub fn main(args: Vec<String>) -> i32 {
    let rest: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .skip_while(|a| *a != "shim")
        .skip(1)
        .collect();
    match rest.as_slice() {
        ["run", dir] => run(Path::new(dir)),
        ["exec", dir, request] => crate::container::exec_helper_main(Path::new(dir), request),
        [dir @ ("cp-from" | "cp-to"), pid, path] => {
            crate::container::copy_helper_main(dir, pid, path)
        }
        _ => {
            eprintln!("usage: <exe> shim run <container dir>");
            2
        }
    }
}

/// Writes the ready report to stdout (the creator's pipe), then detaches
/// stdout from it so the creator sees EOF.
fn report(resp: &Response) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(&resp.to_line()).and_then(|_| out.flush()) {
        eprintln!("shim: writing ready report: {e}");
    }
    drop(out);
    match File::options().write(true).open("/dev/null") {
        Ok(null) => {
            if let Err(e) = nix::unistd::dup2(null.as_raw_fd(), 1) {
                eprintln!("shim: redirecting stdout to /dev/null: {e}");
            }
        }
        Err(e) => eprintln!("shim: opening /dev/null: {e}"),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
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

fn run(dir: &Path) -> i32 {
    let cfg_path = dir.join("shim.json");
    let cfg: ShimConfig = match std::fs::read(&cfg_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            report(&Response::err(format!(
                "shim: reading {}: {e}",
                cfg_path.display()
            )));
            return 1;
        }
    };

    // A new session first, then a fork: the survivor is in its own session
    // (so job control and the caller's death do not reach it) but is not a
    // session leader (so it can never acquire a controlling terminal).
    let _ = nix::unistd::setsid();
    // SAFETY: the shim is single-threaded at this point (the CLI calls
    // shim::main before creating any thread or runtime), so the child may
    // run arbitrary code after fork.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => return 0,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            report(&Response::err(format!("shim: fork: {e}")));
            return 1;
        }
    }
    if let Err(e) = std::env::set_current_dir("/") {
        eprintln!("shim: chdir /: {e}");
    }

    match start(&cfg) {
        Ok(st) => {
            let status = monitor::running_status(st.pid, st.started_at);
            if let Err(e) = write_status(&cfg.status_path, &status) {
                eprintln!("shim: {e}");
            }
            report(&Response::ok(status));
            // Only the small monitor stays resident; if it cannot be exec'd
            // this process keeps the container itself.
            if let Some(exe) = monitor_exe() {
                let e = exec_monitor(&exe, dir, &st);
                eprintln!("shim: exec {}: {e}; monitoring in-process", exe.display());
            }
            match monitor::Monitor::new(cfg, st) {
                Ok(mut m) => m.run_loop(),
                Err(e) => {
                    eprintln!("shim: {e}");
                    1
                }
            }
        }
        Err(msg) => {
            report(&Response::err(msg));
            1
        }
    }
}

/// The lean monitor binary: next to the shim's own executable, or one
/// directory up (cargo puts examples in a subdirectory of the binaries').
fn monitor_exe() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let dir = me.parent()?;
    [dir.join(MONITOR_EXE), dir.parent()?.join(MONITOR_EXE)]
        .into_iter()
        .find(|p| p.is_file())
}

/// The lean monitor's file name.
pub const MONITOR_EXE: &str = "flotilla-shim-monitor";

/// Replaces this process with the monitor, handing it the container's fds.
/// Returns only on failure.
fn exec_monitor(exe: &Path, dir: &Path, st: &Started) -> String {
    use std::os::unix::process::CommandExt;
    let fds = [
        st.listener.as_raw_fd(),
        st.out.as_raw_fd(),
        st.err.as_raw_fd(),
    ];
    for fd in fds {
        if let Err(e) = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        ) {
            return format!("keeping fd {fd} open across exec: {e}");
        }
    }
    let started_ns = st
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let err = std::process::Command::new(exe)
        .arg(dir)
        .arg(st.pid.as_raw().to_string())
        .arg(started_ns.to_string())
        .args(fds.iter().map(|f| f.to_string()))
        .exec();
    for fd in fds {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    err.to_string()
}

fn set_sigpipe(handler: SigHandler) {
    // SAFETY: installing SIG_DFL or SIG_IGN runs no code in signal context;
    // the process is single-threaded.
    if let Err(e) = unsafe { signal::signal(Signal::SIGPIPE, handler) } {
        eprintln!("shim: setting SIGPIPE disposition: {e}");
    }
}

/// What a started container hands to its monitor.
pub(crate) struct Started {
    pub pid: Pid,
    pub started_at: SystemTime,
    pub out: OwnedFd,
    pub err: OwnedFd,
    pub listener: UnixListener,
}

/// Creates and starts the container; on success the container's init is
/// our child and SIGCHLD is blocked (a monitor routes it to a signalfd).
fn start(cfg: &ShimConfig) -> Result<Started, String> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("shim: becoming child subreaper: {e}"))?;
    // The log exists (and its path is writable) before the container runs;
    // the monitor reopens it for appending.
    drop(
        crate::logs::LogWriter::with_rotation(&cfg.log_path, cfg.log_max_size, cfg.log_max_file)
            .map_err(|e| e.to_string())?,
    );
    let _ = std::fs::remove_file(&cfg.socket);
    let listener = UnixListener::bind(&cfg.socket)
        .map_err(|e| format!("shim: listening on {}: {e}", cfg.socket.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("shim: socket {}: {e}", cfg.socket.display()))?;
    let stdin = File::open("/dev/null").map_err(|e| format!("shim: opening /dev/null: {e}"))?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    // The container's init inherits signal dispositions through clone and
    // exec keeps SIG_IGN: give it Docker's default SIGPIPE, not ours.
    set_sigpipe(SigHandler::SigDfl);
    let created = ContainerBuilder::new(cfg.id.clone(), SyscallType::default())
        .with_root_path(&cfg.libcontainer_root)
        .map_err(|e| error_chain(&e))?
        .with_stdin(stdin)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .as_init(&cfg.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build();
    let mut container = match created {
        Ok(c) => c,
        Err(e) => {
            set_sigpipe(SigHandler::SigIgn);
            reap_all();
            return Err(format!(
                "creating container {}: {}",
                cfg.id,
                error_chain(&e)
            ));
        }
    };
    if cfg.loopback_up {
        if let Some(pid) = container.pid() {
            if let Err(e) = loopback_up(pid) {
                set_sigpipe(SigHandler::SigIgn);
                let _ = container.delete(true);
                reap_all();
                return Err(format!("setting up container {}: {e}", cfg.id));
            }
        }
    }
    let started = container.start();
    set_sigpipe(SigHandler::SigIgn);
    if let Err(e) = started {
        let _ = container.delete(true);
        reap_all();
        return Err(format!(
            "starting container {}: {}",
            cfg.id,
            error_chain(&e)
        ));
    }
    let started_at = SystemTime::now();
    let Some(pid) = container.pid() else {
        let _ = container.delete(true);
        return Err(format!(
            "starting container {}: libcontainer reported no pid",
            cfg.id
        ));
    };
    // SIGCHLD is blocked only now: the container inherited our mask.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| format!("shim: blocking SIGCHLD: {e}"))?;
    Ok(Started {
        pid,
        started_at,
        out: out_r,
        err: err_r,
        listener,
    })
}

/// Sets `lo` up inside the network namespace of `pid`, by entering that
/// namespace and coming back (the shim is single-threaded, so nothing else
/// runs in the wrong namespace meanwhile).
fn loopback_up(pid: Pid) -> Result<(), String> {
    use nix::sched::{setns, CloneFlags};
    let own = File::open("/proc/self/ns/net").map_err(|e| format!("opening own netns: {e}"))?;
    let path = format!("/proc/{pid}/ns/net");
    let theirs = File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
    setns(&theirs, CloneFlags::CLONE_NEWNET).map_err(|e| format!("entering {path}: {e}"))?;
    let result = set_link_up("lo");
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWNET) {
        // Staying in the container's netns would be wrong but harmless to
        // the host; say so loudly.
        eprintln!("shim: returning to own netns: {e}");
    }
    result.map_err(|e| format!("bringing lo up in {path}: {e}"))
}

fn set_link_up(name: &str) -> Result<(), Errno> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags of the ifreq
    // we own; the socket fd is valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: SIOCGIFFLAGS just filled the ifru_flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("shim: pipe: {e}"))
}

/// Reaps whatever libcontainer left behind after a failed create (an init
/// that reported an error and exited is reparented to us).
fn reap_all() {
    while let Ok(ws) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
        if ws == WaitStatus::StillAlive {
            break;
        }
    }
}

pub(crate) fn read_request(stream: &UnixStream) -> Result<Request, String> {
    stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(CLIENT_IO_TIMEOUT)))
        .and_then(|_| stream.set_write_timeout(Some(CLIENT_IO_TIMEOUT)))
        .map_err(|e| format!("configuring client socket: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(64 * 1024)
        .read_line(&mut line)
        .map_err(|e| format!("reading request: {e}"))?;
    Request::parse(&line)
}

pub(crate) fn answer(mut stream: UnixStream, resp: &Response) {
    // A client that went away is not the shim's problem.
    let _ = stream.write_all(&resp.to_line());
}

pub(crate) fn write_status(path: &Path, status: &ShimStatus) -> Result<(), String> {
    let tmp: PathBuf = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(status)
        .map_err(|e| format!("encoding status for {}: {e}", path.display()))?;
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

pub(crate) fn oom_killed(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| {
        s.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}
