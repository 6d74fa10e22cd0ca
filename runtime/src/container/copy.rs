//! `cp`: files in and out of a running container as tar streams.
//!
//! Paths are the container's: a helper process (`<shim_exe> shim cp-from|cp-to
//! <pid> <path>`) chroots into `/proc/<init pid>/root` — the container's root
//! as its init sees it, volumes and tmpfs mounts included — so every symlink
//! in the path resolves inside the container and nothing outside it can be
//! read or written. The helper is a fresh process because chroot changes the
//! whole process, which the agent must never do to itself.
//!
//! What it must never do: follow a symlink out of the container, or unpack
//! an entry whose path climbs out of the destination with `..`.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use super::{ContainerError, ContainerState, Runtime};

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// Tar of a container path to the helper's stdout.
    FromContainer,
    /// Tar from the helper's stdin unpacked at a container path.
    ToContainer,
}

impl Runtime {
    /// The helper command for a copy; the caller sets up its stdio (stdout
    /// for `FromContainer`, stdin for `ToContainer`; stderr carries the
    /// helper's error message) and checks its exit status.
    pub fn copy_command(
        &self,
        id: &str,
        direction: CopyDirection,
        path: &str,
    ) -> Result<Command, ContainerError> {
        if !path.starts_with('/') {
            return Err(ContainerError::Copy {
                id: id.into(),
                message: format!("the container path {path:?} must be absolute"),
            });
        }
        let info = self.inspect(id)?;
        let pid = match (info.state, info.pid) {
            (ContainerState::Running, Some(pid)) => pid,
            _ => return Err(ContainerError::NotRunning { id: id.into() }),
        };
        let mut c = Command::new(&self.cfg.shim_exe);
        c.arg("shim")
            .arg(match direction {
                CopyDirection::FromContainer => "cp-from",
                CopyDirection::ToContainer => "cp-to",
            })
            .arg(pid.to_string())
            .arg(path);
        Ok(c)
    }

    /// Blocking: writes a tar of the container's `path` to `out`.
    pub fn copy_from(
        &self,
        id: &str,
        path: &str,
        out: &mut dyn Write,
    ) -> Result<(), ContainerError> {
        let mut child = self
            .copy_command(id, CopyDirection::FromContainer, path)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| copy_err(id, format!("starting the copy helper: {e}")))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| copy_err(id, "the copy helper has no stdout".into()))?;
        let copied = std::io::copy(&mut stdout, out);
        finish(id, child, copied.map(|_| ()))
    }

    /// Blocking: unpacks the tar read from `input` at the container's `path`
    /// (see [`helper_main`] for where entries land).
    pub fn copy_to(
        &self,
        id: &str,
        path: &str,
        input: &mut dyn Read,
    ) -> Result<(), ContainerError> {
        let mut child = self
            .copy_command(id, CopyDirection::ToContainer, path)?
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| copy_err(id, format!("starting the copy helper: {e}")))?;
        let copied = match child.stdin.take() {
            Some(mut stdin) => std::io::copy(input, &mut stdin).map(|_| ()),
            None => Ok(()),
        };
        finish(id, child, copied)
    }
}

fn copy_err(id: &str, message: String) -> ContainerError {
    ContainerError::Copy {
        id: id.into(),
        message,
    }
}

/// Waits for the helper; its stderr is the error when it failed.
fn finish(
    id: &str,
    mut child: std::process::Child,
    copied: std::io::Result<()>,
) -> Result<(), ContainerError> {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child
        .wait()
        .map_err(|e| copy_err(id, format!("waiting for the copy helper: {e}")))?;
    if !status.success() {
        return Err(copy_err(id, err.trim().to_string()));
    }
    copied.map_err(|e| copy_err(id, format!("streaming the archive: {e}")))
}

/// Entry point of `shim cp-from|cp-to <pid> <path>`; returns the exit code.
/// Errors go to stderr as one line.
pub fn helper_main(direction: &str, pid: &str, path: &str) -> i32 {
    let result = (|| -> Result<(), String> {
        let pid: i32 = pid.parse().map_err(|_| format!("bad pid {pid:?}"))?;
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        nix::unistd::chroot(&root).map_err(|e| format!("entering the container's root: {e}"))?;
        std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
        match direction {
            "cp-from" => tar_out(Path::new(path), std::io::stdout().lock()),
            "cp-to" => tar_in(Path::new(path), std::io::stdin().lock()),
            d => Err(format!("unknown copy direction {d}")),
        }
    })();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// The last component of `path`, the name its copy gets ("/" → ".").
fn base_name(path: &Path) -> PathBuf {
    path.file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Writes a tar of `path` (named by its last component, as `docker cp`
/// does) without following symlinks below it.
fn tar_out(path: &Path, out: impl Write) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| {
        format!(
            "no such file or directory in the container: {} ({e})",
            path.display()
        )
    })?;
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let name = base_name(path);
    if meta.is_dir() {
        b.append_dir_all(&name, path)
    } else {
        b.append_path_with_name(path, &name)
    }
    .map_err(|e| format!("archiving {}: {e}", path.display()))?;
    b.finish().map_err(|e| format!("writing the archive: {e}"))
}

/// Unpacks a tar at `dest`: into it when it is a directory; otherwise the
/// archive's top entry is created as `dest` itself (its parent must exist),
/// like `docker cp SRC CONTAINER:NEWNAME`.
fn tar_in(dest: &Path, input: impl Read) -> Result<(), String> {
    let (dir, rename) = match std::fs::metadata(dest) {
        Ok(m) if m.is_dir() => (dest.to_path_buf(), None),
        Ok(_) => match dest.parent() {
            Some(p) => (p.to_path_buf(), Some(base_name(dest))),
            None => return Err(format!("cannot copy onto {}", dest.display())),
        },
        Err(_) => {
            let parent = dest.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Err(format!(
                    "the destination directory {} does not exist in the container",
                    parent.display()
                ));
            }
            (parent.to_path_buf(), Some(base_name(dest)))
        }
    };
    let mut ar = tar::Archive::new(input);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    let entries = ar
        .entries()
        .map_err(|e| format!("reading the archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
        let orig = entry
            .path()
            .map_err(|e| format!("reading an entry's path: {e}"))?
            .into_owned();
        let rel = safe_relative(&orig, rename.as_deref()).ok_or_else(|| {
            format!(
                "refusing archive entry {}: it leaves the destination",
                orig.display()
            )
        })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dir.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        entry
            .unpack(&target)
            .map_err(|e| format!("writing {}: {e}", target.display()))?;
    }
    Ok(())
}

/// The entry's path relative to the destination: no root, no `..`; with
/// `rename`, the first component replaced by it.
fn safe_relative(p: &Path, rename: Option<&Path>) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut first = true;
    for c in p.components() {
        match c {
            Component::Normal(n) => {
                match (first, rename) {
                    (true, Some(r)) => out.push(r),
                    _ => out.push(n),
                }
                first = false;
            }
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_never_climb_out() {
        assert_eq!(safe_relative(Path::new("a/b"), None), Some("a/b".into()));
        assert_eq!(safe_relative(Path::new("/a/./b"), None), Some("a/b".into()));
        assert_eq!(safe_relative(Path::new("a/../../etc"), None), None);
        assert_eq!(
            safe_relative(Path::new("dir/x"), Some(Path::new("new"))),
            Some("new/x".into())
        );
    }

    #[test]
    fn round_trip_through_tar_keeps_symlinks_as_links() {
        let src = tempfile::tempdir().unwrap();
        let d = src.path().join("data");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f.txt"), "hello").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.join("link")).unwrap();
        let mut buf = Vec::new();
        tar_out(&d, &mut buf).unwrap();
        let dst = tempfile::tempdir().unwrap();
        tar_in(dst.path(), &buf[..]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.path().join("data/sub/f.txt")).unwrap(),
            "hello"
        );
        let l = dst.path().join("data/link");
        assert!(std::fs::symlink_metadata(&l)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_link(&l).unwrap(),
            PathBuf::from("/etc/shadow")
        );
        // A new name for the top entry when the destination does not exist.
        tar_in(&dst.path().join("renamed"), &buf[..]).unwrap();
        assert!(dst.path().join("renamed/sub/f.txt").exists());
    }
}
