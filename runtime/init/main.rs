//! `flotilla-init`: the minimal pid 1 of containers run with `init: true`.
//!
//! Built by runtime/build.rs as a standalone, statically linked program (no
//! crates, only std and a few libc calls declared here), so it runs in any
//! image, with or without a libc of its own. The runtime bind-mounts it at
//! /sbin/flotilla-init and runs `flotilla-init -- CMD ARGS...`.
//!
//! What it does: starts CMD as its child, forwards every signal it receives
//! to that child, reaps every zombie reparented to it, and exits with the
//! child's status (128+N when the child died of signal N).
//!
//! What it must never do: exit before its child does, or leave a zombie.

use std::os::raw::c_int;
use std::os::unix::process::CommandExt;
use std::process::Command;

#[repr(C)]
struct SigSet([u64; 16]);

#[repr(C)]
struct SigInfo {
    signo: c_int,
    errno: c_int,
    code: c_int,
    rest: [u8; 116],
}

const SIG_SETMASK: c_int = 2;
const SIGCHLD: c_int = 17;
const SIGPIPE: c_int = 13;
const SIG_DFL: usize = 0;
const WNOHANG: c_int = 1;
const EINTR: c_int = 4;

extern "C" {
    fn sigfillset(set: *mut SigSet) -> c_int;
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn signal(sig: c_int, handler: usize) -> usize;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwaitinfo(set: *const SigSet, info: *mut SigInfo) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn __errno_location() -> *mut c_int;
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *__errno_location() }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--") {
        args.remove(0);
    }
    if args.is_empty() {
        eprintln!("usage: flotilla-init -- COMMAND [ARG...]");
        std::process::exit(2);
    }

    let mut all = SigSet([0; 16]);
    // SAFETY: `all` is a properly sized, writable sigset_t; blocking every
    // signal lets us take them one by one with sigwaitinfo below.
    unsafe {
        sigfillset(&mut all);
        sigprocmask(SIG_SETMASK, &all, std::ptr::null_mut());
    }

    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // calls (sigemptyset, sigprocmask, signal) on memory it owns.
    unsafe {
        cmd.pre_exec(|| {
            // The command starts as it would without us: nothing blocked,
            // SIGPIPE at its default (std ignores it in this process).
            let mut none = SigSet([0; 16]);
            sigemptyset(&mut none);
            sigprocmask(SIG_SETMASK, &none, std::ptr::null_mut());
            signal(SIGPIPE, SIG_DFL);
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flotilla-init: starting {}: {e}", args[0]);
            std::process::exit(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let child_pid = child.id() as c_int;

    loop {
        let mut info = SigInfo {
            signo: 0,
            errno: 0,
            code: 0,
            rest: [0; 116],
        };
        // SAFETY: both pointers refer to live, properly sized structures.
        let sig = unsafe { sigwaitinfo(&all, &mut info) };
        if sig < 0 {
            if errno() == EINTR {
                continue;
            }
            // Cannot wait for signals: fall back to reaping only.
            sleep_reap(child_pid);
        }
        if sig != SIGCHLD {
            // SAFETY: plain syscall; the child is ours and not yet reaped,
            // so its pid cannot have been reused.
            unsafe { kill(child_pid, sig) };
            continue;
        }
        if let Some(code) = reap(child_pid) {
            std::process::exit(code);
        }
    }
}

/// Reaps every exited process; returns the child's exit code once it is gone.
fn reap(child_pid: c_int) -> Option<c_int> {
    let mut result = None;
    loop {
        let mut status: c_int = 0;
        // SAFETY: `status` is a valid out-pointer.
        let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == child_pid {
            let code = if status & 0x7f == 0 {
                (status >> 8) & 0xff
            } else {
                128 + (status & 0x7f)
            };
            result = Some(code);
        }
    }
}

fn sleep_reap(child_pid: c_int) -> ! {
    loop {
        if let Some(code) = reap(child_pid) {
            std::process::exit(code);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
