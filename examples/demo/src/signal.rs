//! Termination-signal handling.
//!
//! The demo usually runs as pid 1 of a pid namespace, where the kernel drops
//! signals that have no handler installed: without one, `SIGTERM` would be
//! ignored and every stop would wait for the `SIGKILL` timeout. The handler
//! exits at once with status 0; it must never do anything that is not
//! async-signal-safe (no allocation, no locks, no `println!`).

use std::io;

extern "C" fn exit_now(_signal: libc::c_int) {
    const MSG: &[u8] = b"demo: termination signal received, exiting\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a static
    // buffer valid for its whole length. A failed write is irrelevant as the
    // process exits next.
    unsafe {
        libc::write(libc::STDOUT_FILENO, MSG.as_ptr().cast(), MSG.len());
        libc::_exit(0);
    }
}

/// Installs `handler` for `signal`.
fn set_handler(signal: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: `handler` is SIG_IGN, SIG_DFL or `exit_now`, whose body is
    // async-signal-safe; signal(2) touches no Rust-managed memory.
    let previous = unsafe { libc::signal(signal, handler) };
    if previous == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `SIGTERM` and `SIGINT` end the process with exit status 0.
pub fn exit_on_terminate() -> io::Result<()> {
    let handler: extern "C" fn(libc::c_int) = exit_now;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        set_handler(signal, handler as libc::sighandler_t)?;
    }
    Ok(())
}

/// Makes the process ignore `SIGTERM` and `SIGINT`, for tests of stop
/// timeouts that must fall back to `SIGKILL`.
pub fn ignore_terminate() -> io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        set_handler(signal, libc::SIG_IGN)?;
    }
    Ok(())
}
