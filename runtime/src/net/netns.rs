//! Named network namespaces kept alive by bind mounts, the way `ip netns add`
//! does it: a namespace is a file `dir/name` with the namespace's nsfs inode
//! mounted on it, so it outlives every process in it and a container can
//! join it by path before it starts.
//!
//! What it must never do: move the calling thread (or any pooled thread)
//! into another namespace. Every namespace switch happens on a dedicated
//! thread that exits afterwards.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

use super::{link, NetError};

/// Creates a new network namespace bind-mounted at `dir/name`, with `lo`
/// up, and returns that path. Fails with [`NetError::Exists`] if a
/// namespace is already mounted there (remove it first to start afresh); an
/// unmounted leftover file of a crashed run is reused.
///
/// Blocking (it spawns and joins a thread): async callers should wrap it in
/// `tokio::task::spawn_blocking`.
pub fn create(dir: &Path, name: &str) -> Result<PathBuf, NetError> {
    check_name(name)?;
    fs::create_dir_all(dir)
        .map_err(|e| NetError::io("creating netns directory", dir.display(), e))?;
    make_shared_mount(dir)?;
    let path = dir.join(name);
    if is_netns_mount(&path) {
        return Err(NetError::Exists {
            what: "network namespace",
            name: path.display().to_string(),
        });
    }
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| NetError::io("creating netns mount point", path.display(), e))?;

    let result = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), NetError> {
            // This thread alone moves into the new namespace; it exits when done.
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetError::errno("unsharing network namespace for", path.display(), e)
            })?;
            // /proc/self would name the main thread's namespace, not this thread's.
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                NetError::errno("bind-mounting network namespace onto", path.display(), e)
            })?;
            link::blocking_in_current_netns(&path, |nl| async move { nl.set_up("lo").await })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::ThreadPanicked {
                target: path.display().to_string(),
            })
        })
    });
    if let Err(e) = result {
        // Leave nothing half made behind.
        let _ = remove(dir, name);
        return Err(e);
    }
    Ok(path)
}

/// Unmounts and deletes `dir/name`. Succeeds if it is already gone. The
/// namespace itself disappears once no process and no other mount holds it.
pub fn remove(dir: &Path, name: &str) -> Result<(), NetError> {
    check_name(name)?;
    let path = dir.join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetError::errno(
                "unmounting network namespace",
                path.display(),
                e,
            ))
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::io(
            "removing network namespace file",
            path.display(),
            e,
        )),
    }
}

/// Names of the entries in `dir` (sorted), mounted or not, so the agent can
/// reconcile leftovers with [`remove`]. An absent directory lists as empty.
pub fn list(dir: &Path) -> Result<Vec<String>, NetError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(NetError::io(
                "listing network namespaces in",
                dir.display(),
                e,
            ))
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| NetError::io("listing network namespaces in", dir.display(), e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `path` has a network namespace mounted on it.
pub fn is_netns_mount(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Runs `f` on a dedicated thread that has joined the network namespace at
/// `path`, and returns its result. Sockets opened by `f` stay in that
/// namespace. Blocking: async callers wrap it in `spawn_blocking`.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let ns = fs::File::open(path)
        .map_err(|e| NetError::io("opening network namespace", path.display(), e))?;
    if !is_netns_mount(path) {
        return Err(NetError::NotFound {
            what: "network namespace",
            name: path.display().to_string(),
        });
    }
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T, NetError> {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::errno("entering network namespace", path.display(), e))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::ThreadPanicked {
                target: path.display().to_string(),
            })
        })
    })
}

/// Makes `dir` a shared mount point (bind-mounting it onto itself first if
/// needed), as iproute2 does for /run/netns, so an unmount here also reaches
/// copies of the mount in mount namespaces created later (containers).
fn make_shared_mount(dir: &Path) -> Result<(), NetError> {
    // Two concurrent first calls would otherwise both bind-mount the directory.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => return Ok(()),
        Err(Errno::EINVAL) => {}
        Err(e) => {
            return Err(NetError::errno(
                "making netns directory a shared mount",
                dir.display(),
                e,
            ))
        }
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        NetError::errno(
            "bind-mounting netns directory onto itself",
            dir.display(),
            e,
        )
    })?;
    mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
        .map_err(|e| NetError::errno("making netns directory a shared mount", dir.display(), e))
}

fn check_name(name: &str) -> Result<(), NetError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(NetError::Invalid {
            what: "network namespace name",
            value: name.to_string(),
            reason: "must be a single non-empty path component".to_string(),
        });
    }
    Ok(())
}
