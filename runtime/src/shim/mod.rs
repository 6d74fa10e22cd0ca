//! The per-container shim: `flotilla shim run <container dir>`.
//!
//! One shim process owns one container. It detaches (new session, second
//! fork) so that killing the agent never kills containers, becomes the child
//! subreaper so the container's init is reparented to it, creates and starts
//! the container through youki's `libcontainer`, copies the container's
//! stdout/stderr into a Docker json-file log, reaps the container, records its
//! exit status in `status.json`, and answers the runtime on a unix socket
//! (see [`protocol`]). After the container exits it stays until told to shut
//! down, which also deletes the container's cgroups and libcontainer state.
//!
//! How it is started: [`crate::container::Runtime::create`] writes
//! `<container dir>/shim.json` and runs `<shim_exe> shim run <container dir>`
//! with stdout a pipe; the shim writes one JSON [`protocol::Response`] line to
//! that pipe when the container runs (or why it could not start), then points
//! its stdout at /dev/null.
//!
//! What it must never do: start threads or an async runtime (it forks, and
//! libcontainer clones), or exit while its container runs unless told to.

pub(crate) mod protocol;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::container::ContainerState;
use crate::logs::{LineSplitter, LogStream, LogWriter};
use protocol::{Request, Response, ShimConfig, ShimStatus};

/// How long the shim keeps draining the container's output pipes after its
/// init exited before it reports the exit anyway (a process that escaped the
/// container could hold them open forever).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long one client may take to send its request line.
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(2);

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

    match Shim::start(cfg) {
        Ok(mut shim) => {
            report(&Response::ok(shim.status.clone()));
            shim.run_loop()
        }
        Err(msg) => {
            report(&Response::err(msg));
            1
        }
    }
}

fn set_sigpipe(handler: SigHandler) {
    // SAFETY: installing SIG_DFL or SIG_IGN runs no code in signal context;
    // the process is single-threaded.
    if let Err(e) = unsafe { signal::signal(Signal::SIGPIPE, handler) } {
        eprintln!("shim: setting SIGPIPE disposition: {e}");
    }
}

struct OutPipe {
    file: File,
    stream: LogStream,
    split: LineSplitter,
}

struct Shim {
    cfg: ShimConfig,
    container: Container,
    pid: Pid,
    status: ShimStatus,
    log: LogWriter,
    pipes: Vec<OutPipe>,
    listener: UnixListener,
    sigfd: SignalFd,
    waiters: Vec<UnixStream>,
    shutdown_waiters: Vec<UnixStream>,
    exit: Option<(i32, SystemTime)>,
    drain_deadline: Option<Instant>,
    finalized: bool,
}

impl Shim {
    fn start(cfg: ShimConfig) -> Result<Shim, String> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("shim: becoming child subreaper: {e}"))?;
        let log = LogWriter::with_rotation(&cfg.log_path, cfg.log_max_size, cfg.log_max_file)
            .map_err(|e| e.to_string())?;
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
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("shim: signalfd: {e}"))?;

        let status = ShimStatus {
            state: ContainerState::Running,
            pid: Some(pid.as_raw()),
            shim_pid: Some(std::process::id() as i32),
            exit_code: None,
            oom_killed: false,
            started_at: Some(started_at),
            finished_at: None,
            error: None,
        };
        let mut shim = Shim {
            cfg,
            container,
            pid,
            status,
            log,
            pipes: vec![
                OutPipe {
                    file: File::from(out_r),
                    stream: LogStream::Stdout,
                    split: LineSplitter::default(),
                },
                OutPipe {
                    file: File::from(err_r),
                    stream: LogStream::Stderr,
                    split: LineSplitter::default(),
                },
            ],
            listener,
            sigfd,
            waiters: Vec::new(),
            shutdown_waiters: Vec::new(),
            exit: None,
            drain_deadline: None,
            finalized: false,
        };
        shim.save_status();
        // The container may have exited before SIGCHLD was routed to the signalfd.
        shim.reap();
        Ok(shim)
    }

    fn run_loop(&mut self) -> i32 {
        loop {
            if !self.finalized && self.exit.is_some() {
                let drained = self.pipes.is_empty();
                let late = self.drain_deadline.is_some_and(|d| Instant::now() >= d);
                if drained || late {
                    self.finalize();
                }
            }
            if self.finalized && !self.shutdown_waiters.is_empty() {
                return self.shutdown();
            }
            let timeout = match (self.finalized, self.drain_deadline) {
                (false, Some(d)) => {
                    let left = d.saturating_duration_since(Instant::now()).as_millis();
                    PollTimeout::from(u16::try_from(left + 1).unwrap_or(u16::MAX))
                }
                _ => PollTimeout::NONE,
            };

            let (sig_ready, listen_ready, pipe_ready) = {
                let mut fds = vec![
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                for p in &self.pipes {
                    fds.push(PollFd::new(p.file.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        eprintln!("shim: poll: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
                let ready = |f: &PollFd| {
                    f.revents().is_some_and(|r| {
                        r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                    })
                };
                let pipe_ready: Vec<bool> = fds[2..].iter().map(ready).collect();
                (ready(&fds[0]), ready(&fds[1]), pipe_ready)
            };

            if sig_ready {
                while let Ok(Some(_)) = self.sigfd.read_signal() {}
                self.reap();
            }
            // Read pipes before clients so a Wait answered below sees the output.
            for i in (0..pipe_ready.len()).rev() {
                if pipe_ready[i] {
                    self.read_pipe(i);
                }
            }
            if listen_ready {
                loop {
                    match self.listener.accept() {
                        Ok((stream, _)) => self.handle_client(stream),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("shim: accept: {e}");
                            break;
                        }
                    }
                }
            }
        }
    }

    fn read_pipe(&mut self, i: usize) {
        let mut buf = [0u8; 64 * 1024];
        let pipe = &mut self.pipes[i];
        match pipe.file.read(&mut buf) {
            Ok(0) | Err(_) => {
                if let Some(rest) = pipe.split.flush() {
                    let stream = pipe.stream;
                    self.write_log(stream, &rest);
                }
                self.pipes.remove(i);
            }
            Ok(n) => {
                let stream = pipe.stream;
                let lines = pipe.split.push(&buf[..n]);
                for l in lines {
                    self.write_log(stream, &l);
                }
            }
        }
    }

    fn write_log(&mut self, stream: LogStream, line: &[u8]) {
        if let Err(e) = self.log.write_entry(stream, line, SystemTime::now()) {
            eprintln!("shim: {e}");
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.pid => self.exited(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.pid => {
                    self.exited(128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn exited(&mut self, code: i32) {
        if self.exit.is_none() {
            self.exit = Some((code, SystemTime::now()));
            self.drain_deadline = Some(Instant::now() + DRAIN_GRACE);
        }
    }

    fn finalize(&mut self) {
        for mut p in std::mem::take(&mut self.pipes) {
            if let Some(rest) = p.split.flush() {
                self.write_log(p.stream, &rest);
            }
        }
        let (code, at) = self.exit.unwrap_or((-1, SystemTime::now()));
        self.status.state = ContainerState::Exited;
        self.status.exit_code = Some(code);
        self.status.finished_at = Some(at);
        self.status.oom_killed = self.cfg.oom_files.iter().any(|f| oom_killed(f));
        self.finalized = true;
        self.save_status();
        let resp = Response::ok(self.status.clone());
        for w in std::mem::take(&mut self.waiters) {
            answer(w, &resp);
        }
    }

    fn shutdown(&mut self) -> i32 {
        let resp = match self.container.delete(true) {
            Ok(()) => Response::ok(self.status.clone()),
            Err(e) => Response::err(format!(
                "deleting container {}: {}",
                self.cfg.id,
                error_chain(&e)
            )),
        };
        let _ = std::fs::remove_file(&self.cfg.socket);
        for w in std::mem::take(&mut self.shutdown_waiters) {
            answer(w, &resp);
        }
        0
    }

    fn handle_client(&mut self, stream: UnixStream) {
        let req = match read_request(&stream) {
            Ok(r) => r,
            Err(e) => {
                answer(stream, &Response::err(e));
                return;
            }
        };
        match req {
            Request::State => answer(stream, &Response::ok(self.status.clone())),
            Request::Kill { signal } => {
                let resp = self.kill(signal);
                answer(stream, &resp);
            }
            Request::Wait if self.finalized => answer(stream, &Response::ok(self.status.clone())),
            Request::Wait => self.waiters.push(stream),
            Request::Shutdown => {
                if self.exit.is_none() {
                    let _ = signal::kill(self.pid, Signal::SIGKILL);
                }
                self.shutdown_waiters.push(stream);
            }
        }
    }

    fn kill(&mut self, sig: i32) -> Response {
        if self.exit.is_some() {
            return Response::err(format!("container {} is not running", self.cfg.id));
        }
        let sig = match Signal::try_from(sig) {
            Ok(s) => s,
            Err(_) => return Response::err(format!("invalid signal {sig}")),
        };
        // The init is our (adopted) child and not yet reaped, so its pid
        // cannot have been reused.
        match signal::kill(self.pid, sig) {
            Ok(()) | Err(Errno::ESRCH) => Response::ok(self.status.clone()),
            Err(e) => Response::err(format!(
                "sending {sig} to container {} (pid {}): {e}",
                self.cfg.id, self.pid
            )),
        }
    }

    fn save_status(&self) {
        if let Err(e) = write_status(&self.cfg.status_path, &self.status) {
            eprintln!("shim: {e}");
        }
    }
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

fn read_request(stream: &UnixStream) -> Result<Request, String> {
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
    serde_json::from_str(&line).map_err(|e| format!("bad request {line:?}: {e}"))
}

fn answer(mut stream: UnixStream, resp: &Response) {
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

fn oom_killed(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| {
        s.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}
