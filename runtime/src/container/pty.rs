//! Pseudo-terminals for `exec -t`: the console socket a tenant process's
//! pty master arrives on, and the window size of that master.
//!
//! The pty is made inside the container (from its own devpts, by
//! libcontainer, as runc does), so the process sees a /dev/pts/N that
//! exists in its mount namespace; the master is passed back over a unix
//! socket with SCM_RIGHTS. This module only receives and sizes it; it must
//! never read or write the terminal's data (the caller relays that).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

/// A listening console socket; removed from the filesystem when dropped.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> io::Result<Self> {
        // A leftover of a killed agent would make bind fail.
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocking: waits for the pty master, until `timeout` passes or
    /// `gave_up()` says the sender is gone (the exec failed to start).
    pub fn receive_master(
        &self,
        timeout: Duration,
        mut gave_up: impl FnMut() -> bool,
    ) -> io::Result<OwnedFd> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    stream.set_read_timeout(Some(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(10)),
                    ))?;
                    return recv_fd(stream.as_raw_fd());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if gave_up() {
                return Err(io::Error::other(
                    "the exec ended before its terminal was set up",
                ));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out waiting for the exec's terminal",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 64];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // Any further fds would leak; close them.
                for &extra in &fds[1..] {
                    // SAFETY: the kernel just installed these fds in this
                    // process for us; nothing else owns them.
                    drop(unsafe { OwnedFd::from_raw_fd(extra) });
                }
                // SAFETY: as above: a fresh fd received with SCM_RIGHTS,
                // owned by nobody else.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::other(
        "the console socket message carried no file descriptor",
    ))
}

/// Sets the terminal's window size (the process gets SIGWINCH).
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points at
    // a live local; the fd is borrowed, so it is open for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal's window size (rows, cols), or None when `fd` is not a
/// terminal.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which
    // points at a live local; the fd is borrowed, so it is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some((ws.ws_row, ws.ws_col))
}
