//! Overlayfs root filesystems and cgroup locations on the host.
//!
//! What it must never do: unmount or remove anything outside the container
//! directory it was given, or write to an image layer (layers are only ever
//! overlay lower dirs).

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Mounts `layers` (bottom-most first, read-only) with `upper`/`work` on `target`.
pub(crate) fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    let mut all: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
    all.extend([upper, work]);
    for p in &all {
        let s = p.to_string_lossy();
        if s.contains([':', ',', '\\']) || s.contains('\n') || !p.is_absolute() {
            return Err(format!(
                "overlay path {s:?} must be absolute and free of ':', ',', '\\' and newlines"
            ));
        }
        if !p.is_dir() {
            return Err(format!("overlay directory {s} does not exist"));
        }
    }
    // overlayfs lists the top-most lower dir first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| {
        let hint = if e == Errno::EINVAL && data.len() >= 4096 {
            " (mount options exceed one page: too many layers)"
        } else {
            ""
        };
        format!(
            "mounting overlay on {} ({} layers): {e}{hint}",
            target.display(),
            layers.len()
        )
    })
}

/// Unmounts `target` if it is a mount point; lazily when still busy.
pub(crate) fn unmount(target: &Path) -> Result<(), String> {
    loop {
        match umount2(target, MntFlags::empty()) {
            // Stacked mounts (should not happen) come off one by one.
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => {
                return umount2(target, MntFlags::MNT_DETACH)
                    .map_err(|e| format!("unmounting {} (lazily): {e}", target.display()))
            }
            Err(e) => return Err(format!("unmounting {}: {e}", target.display())),
        }
    }
}

/// Where cgroup hierarchies are mounted on this host.
#[derive(Debug, Clone, Default)]
pub(crate) struct CgroupMounts {
    /// cgroup v1 hierarchies: mount point and its controllers.
    pub v1: Vec<(PathBuf, Vec<String>)>,
    /// The cgroup v2 mount, if any (in hybrid mode it carries no controllers).
    pub v2: Option<PathBuf>,
}

impl CgroupMounts {
    pub fn detect() -> Result<Self, std::io::Error> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut out = CgroupMounts::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mnt = left.split(' ').nth(4).map(unescape_mount_path);
            let mut r = right.split(' ');
            let fstype = r.next();
            let _source = r.next();
            let opts = r.next().unwrap_or("");
            match (fstype, mnt) {
                (Some("cgroup"), Some(m)) => {
                    let ctrls = opts
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .map(str::to_string)
                        .collect();
                    out.v1.push((m, ctrls));
                }
                (Some("cgroup2"), Some(m)) if out.v2.is_none() => out.v2 = Some(m),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Every directory the container's cgroup could occupy.
    pub fn container_dirs(&self, rel: &str) -> Vec<PathBuf> {
        let rel = rel.trim_start_matches('/');
        self.v1
            .iter()
            .map(|(m, _)| m.join(rel))
            .chain(self.v2.iter().map(|m| m.join(rel)))
            .collect()
    }

    /// Whether the kernel offers a block I/O weight: cfq's `blkio.weight`
    /// or bfq's `blkio.bfq.weight` in the v1 blkio hierarchy (present only
    /// while such a scheduler is loaded), or the `io` controller on a
    /// unified (v2-only) host.
    pub fn blkio_weight_offered(&self) -> bool {
        let v1 = self.v1.iter().find(|(_, c)| c.iter().any(|c| c == "blkio"));
        match v1 {
            Some((m, _)) => m.join("blkio.weight").exists() || m.join("blkio.bfq.weight").exists(),
            None => self.v2.as_ref().is_some_and(|m| {
                std::fs::read_to_string(m.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "io"))
            }),
        }
    }

    pub fn oom_files(&self, rel: &str) -> Vec<PathBuf> {
        let rel = rel.trim_start_matches('/');
        self.v1
            .iter()
            .filter(|(_, c)| c.iter().any(|c| c == "memory"))
            .map(|(m, _)| m.join(rel).join("memory.oom_control"))
            .chain(self.v2.iter().map(|m| m.join(rel).join("memory.events")))
            .collect()
    }
}

fn unescape_mount_path(s: &str) -> PathBuf {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|t| {
        t.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|m| unescape_mount_path(m) == path)
    })
}
