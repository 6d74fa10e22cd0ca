//! The long-lived half of the shim: once the container runs, the monitor
//! copies its stdout/stderr into the json-file log, reaps it (it is our
//! child; we are its subreaper), records its exit in `status.json` and
//! answers the runtime on the shim's socket.
//!
//! It runs either in the shim process itself or, to stay small, after an
//! exec into the lean `flotilla-shim-monitor` binary, which links none of
//! libcontainer: the create half's code and heap are gone, only this loop
//! remains resident. Fds cross the exec by number on the command line.
//!
//! Besides state, kill, wait and shutdown it answers `stats` (one sample of
//! the container's cgroup, read here with [`crate::container::cgroup_ops`])
//! and `attach` (each log record, as written, to every attached client).
//! Attached clients are written without blocking: one that falls more than
//! [`ATTACH_BACKLOG`] behind is disconnected rather than holding up the
//! container's output.
//!
//! What it must never do: start threads, or exit while its container runs
//! unless told to.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::protocol::{Request, Response, ShimConfig, ShimStatus};
use super::DRAIN_GRACE;
use super::{answer, oom_killed, read_request, write_status, Started};
use crate::container::{cgroup_ops, ContainerState};
use crate::logs::{encode_record, LineSplitter, LogStream, LogWriter};

/// How many bytes of log records may wait for one attached client before
/// it is disconnected.
pub(crate) const ATTACH_BACKLOG: usize = 1 << 20;

/// The status of a container that just started.
pub(crate) fn running_status(pid: Pid, started_at: SystemTime) -> ShimStatus {
    ShimStatus {
        state: ContainerState::Running,
        pid: Some(pid.as_raw()),
        shim_pid: Some(std::process::id() as i32),
        exit_code: None,
        oom_killed: false,
        started_at: Some(started_at),
        finished_at: None,
        error: None,
    }
}

/// Entry point of `flotilla-shim-monitor DIR PID STARTED_NS LISTEN_FD OUT_FD ERR_FD`,
/// exec'd by the shim once its container runs. Returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let parsed = (|| -> Option<(String, i32, u64, RawFd, RawFd, RawFd)> {
        Some((
            args.get(1)?.clone(),
            args.get(2)?.parse().ok()?,
            args.get(3)?.parse().ok()?,
            args.get(4)?.parse().ok()?,
            args.get(5)?.parse().ok()?,
            args.get(6)?.parse().ok()?,
        ))
    })();
    let Some((dir, pid, started_ns, lfd, ofd, efd)) = parsed else {
        eprintln!("usage: flotilla-shim-monitor DIR PID STARTED_NS LISTEN_FD OUT_FD ERR_FD");
        return 2;
    };
    let cfg_path = Path::new(&dir).join("shim.json");
    let cfg: ShimConfig = match std::fs::read(&cfg_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shim monitor: reading {}: {e}", cfg_path.display());
            return 1;
        }
    };
    // SAFETY: the shim passed these fds to us across exec, by number, and
    // nothing else in this fresh process owns them.
    let (listener, out, err) = unsafe {
        (
            UnixListener::from_raw_fd(lfd),
            OwnedFd::from_raw_fd(ofd),
            OwnedFd::from_raw_fd(efd),
        )
    };
    for fd in [lfd, ofd, efd] {
        // Not to be inherited by anything we might start later.
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    let st = Started {
        pid: Pid::from_raw(pid),
        started_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(started_ns),
        out,
        err,
        listener,
    };
    match Monitor::new(cfg, st) {
        Ok(mut m) => m.run_loop(),
        Err(e) => {
            eprintln!("shim monitor: {e}");
            1
        }
    }
}

/// A client following the container's output.
struct Attached {
    stream: UnixStream,
    /// Records not yet written to it.
    pending: Vec<u8>,
}

impl Attached {
    /// Writes what it can without blocking; false once the client is gone.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// False once the client hung up (what it sends is ignored).
    fn alive(&mut self) -> bool {
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

struct OutPipe {
    file: File,
    stream: LogStream,
    split: LineSplitter,
}

pub(crate) struct Monitor {
    cfg: ShimConfig,
    pid: Pid,
    status: ShimStatus,
    log: LogWriter,
    pipes: Vec<OutPipe>,
    listener: UnixListener,
    sigfd: SignalFd,
    waiters: Vec<UnixStream>,
    shutdown_waiters: Vec<UnixStream>,
    attached: Vec<Attached>,
    exit: Option<(i32, SystemTime)>,
    drain_deadline: Option<Instant>,
    finalized: bool,
}

impl Monitor {
    /// Takes over a started container: logs its output, reaps it, answers
    /// the socket.
    pub(crate) fn new(cfg: ShimConfig, st: Started) -> Result<Monitor, String> {
        let log = LogWriter::with_rotation(&cfg.log_path, cfg.log_max_size, cfg.log_max_file)
            .map_err(|e| e.to_string())?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("shim: signalfd: {e}"))?;
        let status = running_status(st.pid, st.started_at);
        let mut m = Monitor {
            cfg,
            pid: st.pid,
            status,
            log,
            pipes: vec![
                OutPipe {
                    file: File::from(st.out),
                    stream: LogStream::Stdout,
                    split: LineSplitter::default(),
                },
                OutPipe {
                    file: File::from(st.err),
                    stream: LogStream::Stderr,
                    split: LineSplitter::default(),
                },
            ],
            listener: st.listener,
            sigfd,
            waiters: Vec::new(),
            shutdown_waiters: Vec::new(),
            attached: Vec::new(),
            exit: None,
            drain_deadline: None,
            finalized: false,
        };
        // The container may have exited before SIGCHLD was routed to the
        // signalfd (or before an exec into this monitor).
        m.reap();
        Ok(m)
    }

    pub(crate) fn run_loop(&mut self) -> i32 {
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

            let npipes = self.pipes.len();
            let (sig_ready, listen_ready, pipe_ready, attach_events) = {
                let mut fds = vec![
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                for p in &self.pipes {
                    fds.push(PollFd::new(p.file.as_fd(), PollFlags::POLLIN));
                }
                for a in &self.attached {
                    let mut ev = PollFlags::POLLIN;
                    if !a.pending.is_empty() {
                        ev |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(a.stream.as_fd(), ev));
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
                let pipe_ready: Vec<bool> = fds[2..2 + npipes].iter().map(ready).collect();
                let attach_events: Vec<PollFlags> = fds[2 + npipes..]
                    .iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect();
                (ready(&fds[0]), ready(&fds[1]), pipe_ready, attach_events)
            };

            if sig_ready {
                while let Ok(Some(_)) = self.sigfd.read_signal() {}
                self.reap();
            }
            // First, while `attach_events` still lines up with `attached`
            // (writing the log may disconnect a client).
            self.service_attached(&attach_events);
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

    /// Flushes attached clients that can take more and drops those that
    /// hung up; `events` are the poll results, by index into `attached`
    /// (clients attached after the poll have none yet).
    fn service_attached(&mut self, events: &[PollFlags]) {
        let mut keep = Vec::with_capacity(self.attached.len());
        for (i, mut a) in std::mem::take(&mut self.attached).into_iter().enumerate() {
            let ev = events.get(i).copied().unwrap_or(PollFlags::empty());
            let mut ok = true;
            if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                ok = a.alive();
            }
            if ok && ev.intersects(PollFlags::POLLOUT) {
                ok = a.flush();
            }
            // Once the container's output is complete, a client is done
            // when it has everything.
            if ok && !(self.finalized && a.pending.is_empty()) {
                keep.push(a);
            }
        }
        self.attached = keep;
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
        let record = encode_record(stream, line, SystemTime::now());
        if let Err(e) = self.log.write_record(&record) {
            eprintln!("shim: {e}");
        }
        if self.attached.is_empty() {
            return;
        }
        self.attached.retain_mut(|a| {
            if a.pending.len() + record.len() > ATTACH_BACKLOG {
                eprintln!(
                    "shim: an attached client fell {ATTACH_BACKLOG} bytes behind; disconnecting it"
                );
                return false;
            }
            a.pending.extend_from_slice(&record);
            a.flush()
        });
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
        // Attached clients end with the output: those that have it all are
        // closed now, the others once their backlog is written.
        self.attached.retain(|a| !a.pending.is_empty());
    }

    /// The container has exited and its output is logged: answer and exit.
    /// Deleting its cgroups and libcontainer state is the runtime's job
    /// ([`crate::container::Runtime::remove`]), so this monitor needs no
    /// libcontainer and stays small.
    fn shutdown(&mut self) -> i32 {
        let resp = Response::ok(self.status.clone());
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
            Request::Stats => {
                let pid = self.exit.is_none().then_some(self.pid.as_raw());
                let mut resp = Response::ok(self.status.clone());
                resp.stats = Some(cgroup_ops::sample(&self.cfg.cgroups, pid));
                answer(stream, &resp);
            }
            Request::Attach => self.attach(stream),
            Request::Shutdown => {
                if self.exit.is_none() {
                    let _ = signal::kill(self.pid, Signal::SIGKILL);
                }
                self.shutdown_waiters.push(stream);
            }
        }
    }

    /// Answers an attach request, then keeps the client to send it the
    /// container's output from now on.
    fn attach(&mut self, mut stream: UnixStream) {
        // The answer goes out blocking (read_request set a write timeout):
        // a fresh socket buffer always takes one line.
        if stream
            .write_all(&Response::ok(self.status.clone()).to_line())
            .is_err()
        {
            return;
        }
        if self.finalized {
            // Nothing more will be written: closing says so.
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            eprintln!("shim: attach: {e}");
            return;
        }
        self.attached.push(Attached {
            stream,
            pending: Vec::new(),
        });
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
