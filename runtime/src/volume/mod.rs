//! Named and anonymous volumes of the `local` driver: one directory per
//! volume under a volumes root, like Docker's `/var/lib/docker/volumes`.
//!
//! Layout: `<root>/<name>/_data` is what containers mount, and
//! `<root>/<name>/meta.json` the volume's labels and creation time. A volume
//! is created on first use ([`VolumeStore::ensure`]) and lives until
//! [`VolumeStore::remove`]; on first mount the runtime fills an empty volume
//! from the image's content at the mount point ([`copy_up`]).
//!
//! What it must never do: remove or write anything outside its root, follow
//! a symlink out of a container's rootfs while copying, or know which stack
//! a volume belongs to (callers pass scoped names such as `<stack>_<name>`).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

const META_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no such volume: {name}")]
    NotFound { name: String },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("volume metadata {}: {message}", path.display())]
    Meta { path: PathBuf, message: String },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
    let path = path.to_owned();
    move |source| VolumeError::Io {
        action,
        path,
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    /// The directory containers mount (`<root>/<name>/_data`).
    pub path: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub created_at: SystemTime,
    /// Made for one container (`volumes: [/data]`), not named by the user.
    pub anonymous: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
    name: String,
    created_at: SystemTime,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    anonymous: bool,
}

/// Docker's rule for volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate_name(name: &str) -> Result<(), VolumeError> {
    let bad = |reason| {
        Err(VolumeError::InvalidName {
            name: name.into(),
            reason,
        })
    };
    if name.len() < 2 || name.len() > 255 {
        return bad("must be 2 to 255 characters");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// The local volume driver's directory of volumes.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

impl VolumeStore {
    /// Opens (creating if needed) the volumes root, e.g. /var/lib/flotilla/volumes.
    pub fn open(root: &Path) -> Result<Self, VolumeError> {
        std::fs::create_dir_all(root).map_err(io_err("creating volumes root", root))?;
        let root = std::fs::canonicalize(root).map_err(io_err("resolving volumes root", root))?;
        let store = VolumeStore { root };
        store.remove_stale_temporaries();
        Ok(store)
    }

    /// Half-made volumes of a process that died mid-create
    /// (`.tmp-<name>-<pid>` whose pid is gone) and half-removed ones (a
    /// directory without metadata) are deleted.
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = match name.strip_prefix(".tmp-") {
                Some(rest) => rest
                    .rsplit_once('-')
                    .and_then(|(_, pid)| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
                None => {
                    validate_name(&name).is_ok()
                        && e.path().join("_data").is_dir()
                        && !e.path().join("meta.json").exists()
                }
            };
            if stale {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "removing a half-made volume");
                }
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The volume, created (empty) if it does not exist yet. Labels are only
    /// recorded at creation, as with Docker.
    pub fn ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Volume, VolumeError> {
        self.ensure_inner(name, labels, false)
    }

    /// A new anonymous volume with a random 64-hex-digit name.
    pub fn create_anonymous(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Volume, VolumeError> {
        let mut bytes = [0u8; 32];
        random_bytes(&mut bytes);
        self.ensure_inner(&hex::encode(bytes), labels, true)
    }

    fn ensure_inner(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<Volume, VolumeError> {
        validate_name(name)?;
        if let Some(v) = self.get(name)? {
            return Ok(v);
        }
        let dir = self.dir(name);
        // Built under a temporary name and renamed, so a crash never leaves a
        // volume without its metadata.
        let tmp = self
            .root
            .join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let data = tmp.join("_data");
        std::fs::create_dir_all(&data).map_err(io_err("creating volume directory", &data))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting mode of", &data))?;
        let meta = Meta {
            version: META_VERSION,
            name: name.into(),
            created_at: SystemTime::now(),
            labels: labels.clone(),
            anonymous,
        };
        let meta_path = tmp.join("meta.json");
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| VolumeError::Meta {
            path: meta_path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&meta_path, bytes).map_err(io_err("writing", &meta_path))?;
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => {}
            // Someone else created it meanwhile: theirs wins.
            Err(_) if dir.join("meta.json").exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(io_err("creating volume", &dir)(e));
            }
        }
        self.get(name)?
            .ok_or_else(|| VolumeError::NotFound { name: name.into() })
    }

    pub fn get(&self, name: &str) -> Result<Option<Volume>, VolumeError> {
        validate_name(name)?;
        let dir = self.dir(name);
        let meta_path = dir.join("meta.json");
        let data = match std::fs::read(&meta_path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &meta_path)(e)),
        };
        let meta: Meta = serde_json::from_slice(&data).map_err(|e| VolumeError::Meta {
            path: meta_path.clone(),
            message: e.to_string(),
        })?;
        if meta.version > META_VERSION {
            return Err(VolumeError::Meta {
                path: meta_path,
                message: format!(
                    "format version {} is newer than this flotilla understands ({META_VERSION})",
                    meta.version
                ),
            });
        }
        Ok(Some(Volume {
            name: meta.name,
            path: dir.join("_data"),
            labels: meta.labels,
            created_at: meta.created_at,
            anonymous: meta.anonymous,
        }))
    }

    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root).map_err(io_err("listing", &self.root))? {
            let e = e.map_err(io_err("listing", &self.root))?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_name(&name).is_err() {
                continue;
            }
            if let Some(v) = self.get(&name)? {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes the volume and its data (`down -v`, `volume rm`). The caller
    /// makes sure no container uses it any more.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        validate_name(name)?;
        let dir = self.dir(name);
        if !dir.join("meta.json").exists() {
            return Err(VolumeError::NotFound { name: name.into() });
        }
        // Metadata first: a crash half-way leaves a directory `list` ignores
        // and the next remove (or ensure) cleans up.
        let meta = dir.join("meta.json");
        std::fs::remove_file(&meta).map_err(io_err("removing", &meta))?;
        std::fs::remove_dir_all(&dir).map_err(io_err("removing volume directory", &dir))
    }
}

fn random_bytes(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most buf.len() bytes into the buffer we own.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() != Some(buf.len()) {
        // Practically never: fall back to time and pid, unique enough for a name.
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
}

/// Fills `dest` (a volume's data dir) with the image's content at `target`
/// inside `rootfs`, if `dest` is empty and the image has a directory there:
/// Docker's behaviour on a volume's first use. Owners, modes, symlinks and
/// special files are kept; the volume root takes the source directory's
/// owner and mode.
pub fn copy_up(rootfs: &Path, target: &str, dest: &Path) -> Result<(), VolumeError> {
    let mut entries = std::fs::read_dir(dest).map_err(io_err("listing", dest))?;
    if entries.next().is_some() {
        return Ok(());
    }
    let src = safe_path::scoped_join(rootfs, target.trim_start_matches('/')).map_err(|e| {
        VolumeError::Io {
            action: "resolving the mount point in the image",
            path: rootfs.join(target.trim_start_matches('/')),
            source: e,
        }
    })?;
    let md = match std::fs::symlink_metadata(&src) {
        Ok(m) if m.is_dir() => m,
        _ => return Ok(()),
    };
    copy_tree(&src, dest)?;
    apply_meta(dest, &md)
}

fn apply_meta(path: &Path, md: &std::fs::Metadata) -> Result<(), VolumeError> {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(md.uid())),
        Some(nix::unistd::Gid::from_raw(md.gid())),
    )
    .map_err(|e| io_err("changing owner of", path)(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(io_err("setting mode of", path))
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), VolumeError> {
    for e in std::fs::read_dir(src).map_err(io_err("listing", src))? {
        let e = e.map_err(io_err("listing", src))?;
        let from = e.path();
        let to = dst.join(e.file_name());
        let md = std::fs::symlink_metadata(&from).map_err(io_err("reading", &from))?;
        let ft = md.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(io_err("creating", &to))?;
            copy_tree(&from, &to)?;
            apply_meta(&to, &md)?;
        } else if ft.is_symlink() {
            // The link itself, never what it points to.
            let link = std::fs::read_link(&from).map_err(io_err("reading link", &from))?;
            std::os::unix::fs::symlink(&link, &to).map_err(io_err("creating link", &to))?;
            std::os::unix::fs::lchown(&to, Some(md.uid()), Some(md.gid()))
                .map_err(io_err("changing owner of", &to))?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(io_err("copying to", &to))?;
            apply_meta(&to, &md)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() || ft.is_socket() {
            let kind = nix::sys::stat::SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
            let perm = nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777);
            nix::sys::stat::mknod(&to, kind, perm, md.rdev())
                .map_err(|e| io_err("creating node", &to)(e.into()))?;
            apply_meta(&to, &md)?;
        }
    }
    Ok(())
}

/// Whether `name` looks like a generated anonymous volume name.
pub fn is_anonymous_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A stable anonymous-volume name (64 hex digits, like Docker's) derived
/// from `seed`, so the same slot finds its anonymous volume again after a
/// restart (Compose keeps anonymous volumes across recreation).
pub fn anonymous_name(seed: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(seed.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_docker() {
        assert!(validate_name("web_data").is_ok());
        assert!(validate_name("a").is_err());
        assert!(validate_name("_x").is_err());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(is_anonymous_name(&anonymous_name("s/svc/1//data")));
        assert_eq!(anonymous_name("x"), anonymous_name("x"));
    }

    #[test]
    fn half_made_volumes_are_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        let kept = store.ensure("kept", &BTreeMap::new()).unwrap();
        // A crash mid-create (a pid that cannot exist) and mid-remove.
        std::fs::create_dir_all(dir.path().join(".tmp-x-4294967295/_data")).unwrap();
        std::fs::create_dir_all(dir.path().join("gone/_data")).unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        assert!(!dir.path().join(".tmp-x-4294967295").exists());
        assert!(!dir.path().join("gone").exists());
        assert_eq!(store.list().unwrap(), vec![kept]);
    }
}
