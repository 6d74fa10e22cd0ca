//! The node's content-addressed image store: loads `docker save` archives
//! and OCI image layouts, pulls from and pushes to registries, writes
//! `docker save` archives, imports root filesystem tarballs, keeps tags, and
//! hands out unpacked layer directories for overlayfs.
//!
//! # Layout on disk (under the store root, e.g. `/var/lib/flotilla/images`)
//!
//! ```text
//! blobs/sha256/<hex>   every manifest, config and layer blob, named by the
//!                      sha256 of its bytes; written to tmp/ while hashed,
//!                      verified, then renamed into place
//! layers/<diffid hex>/ one layer unpacked for overlayfs (whiteouts as 0/0
//!                      char devices, opaque dirs with trusted.overlay.opaque=y),
//!                      shared by every image with that diff id; unpacked into
//!                      tmp/ and renamed into place only once complete and
//!                      its diff id verified
//! refs.json            {"version":1,"tags":{"docker.io/library/x:latest":"sha256:<id>"},
//!                       "images":{"sha256:<id>":{manifest_digest,config_digest,created,
//!                       config,layers:[{digest,media_type,diff_id,size}]}}}; replaced atomically
//!                      (write refs.json.tmp-<pid>, fsync, rename)
//! lock                 flock'd (exclusive) by every writer, across processes
//! tmp/<pid>-<n>-*      work space; entries of dead pids are removed by open()
//! ```
//!
//! An image id is `sha256:` + the digest of its config blob, as in Docker.
//! Images from `docker save` archives that carry no OCI manifest get a
//! generated OCI manifest (stored as a blob), so every image has a
//! `manifest_digest`.
//!
//! What it must never do: expose a half-written blob or half-unpacked layer
//! under its final name, accept content whose digest does not match its name,
//! write outside its root while unpacking, or delete a blob or layer another
//! image still uses. It does not know about containers: a caller must not
//! remove an image whose layers a running container uses as lower dirs.
//! Registry pulls and pushes (`registry`) and `docker save` archives
//! (`save`) are built on the same verified blob writing and commit.

mod archive;
mod config;
pub mod reference;
mod registry;
mod save;
mod unpack;

pub use registry::{Credential, Progress, ProgressEvent, PullOptions, PushOptions};
pub use save::SaveFormat;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use archive::{BlobSource, PlannedImage, PlannedLayer, Staged};
use reference::{familiar, is_lower_hex, parse_sha256, Reference};

/// The refs file format this code writes and understands.
const REFS_VERSION: u32 = 1;

/// Errors of the image store; each says what was being done and to what.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image store: {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("no such image: {reference}")]
    NotFound { reference: String },
    #[error("image id prefix {prefix:?} is ambiguous: it matches {count} images")]
    Ambiguous { prefix: String, count: usize },
    #[error("digest mismatch for {what}: expected {expected}, content is {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("refusing entry {entry:?} of {layer}: its path leads outside the directory it is unpacked into")]
    PathEscape { layer: String, entry: String },
    #[error("registry {registry}: {action}: {reason}")]
    Registry {
        registry: String,
        action: String,
        reason: String,
        /// Whether trying again may help (network errors, 5xx).
        transient: bool,
    },
    #[error("registry {registry}: {action}: access denied ({reason}); check the credentials for {registry} in the auth file")]
    Unauthorized {
        registry: String,
        action: String,
        reason: String,
    },
    #[error("image store {path}: refs format version {found} is newer than the supported {supported}; upgrade flotilla")]
    StoreVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
}

/// One image in the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// `sha256:<config digest>`.
    pub id: String,
    /// Tags pointing at the image, in familiar form (`busybox:latest`,
    /// `registry:5000/x:1`), sorted.
    pub references: Vec<String>,
    /// `sha256:` digest of the image manifest blob.
    pub manifest_digest: String,
    /// Unpacked bytes (sum of regular file sizes over all layers).
    pub size: u64,
    /// RFC 3339 creation time from the config.
    pub created: Option<String>,
    pub config: ImageConfig,
    /// Layer diff ids, bottom-most first.
    pub diff_ids: Vec<String>,
}

/// The parts of an image config a container is started from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub healthcheck: Option<HealthConfig>,
    pub stop_signal: String,
    /// `"80/tcp"` style keys.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub os: String,
    pub architecture: String,
}

/// An image's HEALTHCHECK; durations in nanoseconds as Docker stores them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HealthConfig {
    pub test: Vec<String>,
    pub interval_ns: Option<u64>,
    pub timeout_ns: Option<u64>,
    pub start_period_ns: Option<u64>,
    pub start_interval_ns: Option<u64>,
    pub retries: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Refs {
    version: u32,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    images: BTreeMap<String, ImageRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ImageRecord {
    manifest_digest: String,
    config_digest: String,
    created: Option<String>,
    config: ImageConfig,
    layers: Vec<LayerRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LayerRecord {
    /// Digest of the layer blob as stored (compressed or not).
    digest: String,
    media_type: String,
    diff_id: String,
    /// Unpacked bytes of this layer.
    size: u64,
}

/// How a reference matched an image: decides what `remove` does.
enum Match {
    Tag(String),
    Id,
}

/// The content-addressed image store. Cheap to share behind an `Arc`; every
/// method is blocking.
pub struct ImageStore {
    root: PathBuf,
    writer: Mutex<()>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

/// Held while changing the store: the in-process mutex and the cross-process
/// flock, released together on drop.
struct WriteLock<'a> {
    _flock: Flock<File>,
    _guard: MutexGuard<'a, ()>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory under tmp/ removed on drop (success or failure).
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "could not remove image store temp dir");
            }
        }
    }
}

fn io_err(action: String) -> impl FnOnce(io::Error) -> ImageError {
    move |source| ImageError::Io { action, source }
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map(|(_, h)| h).unwrap_or(digest)
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, and clears temp
    /// leftovers of processes that are gone.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        let store = ImageStore {
            root: root.to_path_buf(),
            writer: Mutex::new(()),
        };
        // Refuse a newer format early rather than on first use.
        store.read_refs()?;
        store.clean_tmp();
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Loads a `docker save` archive or an OCI image layout archive (plain
    /// or gzip tar). Every blob is verified before anything is stored; tags
    /// in the archive move to the loaded images.
    pub fn load_archive<R: Read>(&self, reader: R) -> Result<Vec<Image>, ImageError> {
        // Staging and verifying touch only a private temp dir, so they run
        // before taking the lock; only moving content in is serialised.
        let tmp = self.tmp_dir("load")?;
        let plain = unpack::decompressed(reader, "the image archive")?;
        let staged = Staged::stage(plain, &tmp.0)?;
        let plan = staged.plan()?;
        if plan.is_empty() {
            return Err(ImageError::Malformed {
                what: "image archive".to_string(),
                reason: "it holds no images".to_string(),
            });
        }
        let _lock = self.write_lock()?;
        let mut ids = Vec::new();
        for p in &plan {
            ids.push(self.commit_image(p)?);
        }
        let refs = self.read_refs()?;
        ids.iter().map(|id| self.image_from(&refs, id)).collect()
    }

    /// Imports a root filesystem tarball (plain or gzip) as a single-layer
    /// image tagged `reference`, with `config` as its image config (empty
    /// `os`/`architecture` become `linux` and this machine's architecture).
    pub fn import_rootfs<R: Read>(
        &self,
        reader: R,
        reference: &str,
        config: ImageConfig,
    ) -> Result<Image, ImageError> {
        let tag = reference::normalize(reference)?;
        if tag.digest.is_some() {
            return Err(ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: "an imported image is tagged, not pinned by digest".to_string(),
            });
        }
        let _lock = self.write_lock()?;
        // Unpack from the staged copy first: a tarball that fails to unpack
        // leaves no blob behind.
        let (staged, layer_digest, layer_size, media_type) = self.stage_blob_stream(reader)?;
        let staged_file = staged.0.join("blob");
        let (diff_id, unpacked_size) = self.ensure_layer(
            &layer_digest,
            Some(&staged_file),
            None,
            "the imported root filesystem",
        )?;
        self.put_blob_file(&staged_file, &layer_digest)?;
        let mut config = config;
        if config.os.is_empty() {
            config.os = "linux".to_string();
        }
        if config.architecture.is_empty() {
            config.architecture = config::host_architecture().to_string();
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let file = config::ConfigFile::from_image_config(&config, &diff_id, &config::rfc3339(now));
        let cfg_bytes = serde_json::to_vec(&file).map_err(|e| ImageError::Malformed {
            what: "generated image config".to_string(),
            reason: e.to_string(),
        })?;
        let cfg_digest = self.put_blob_bytes(&cfg_bytes)?;
        let manifest = archive::manifest_bytes(
            &cfg_digest,
            cfg_bytes.len() as u64,
            vec![
                serde_json::json!({"mediaType": media_type, "digest": layer_digest, "size": layer_size}),
            ],
        )?;
        let manifest_digest = self.put_blob_bytes(&manifest)?;
        let record = ImageRecord {
            manifest_digest,
            config_digest: cfg_digest.clone(),
            created: file.created.clone(),
            config: file.image_config(),
            layers: vec![LayerRecord {
                digest: layer_digest,
                media_type,
                diff_id,
                size: unpacked_size,
            }],
        };
        self.record_image(&cfg_digest, record, &[tag])?;
        let refs = self.read_refs()?;
        self.image_from(&refs, &cfg_digest)
    }

    /// Every image in the store, sorted by id.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let refs = self.read_refs()?;
        refs.images
            .keys()
            .map(|id| self.image_from(&refs, id))
            .collect()
    }

    /// Finds an image by `name`, `name:tag`, `registry/name:tag`,
    /// `name@sha256:<manifest digest>`, `sha256:<id>`, or an unambiguous id
    /// prefix of at least 4 hex characters. `Ok(None)` when nothing matches.
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let refs = self.read_refs()?;
        match Self::find(&refs, reference)? {
            Some((id, _)) => self.image_from(&refs, &id).map(Some),
            None => Ok(None),
        }
    }

    /// Removes a tag, deleting the image once no tag is left; given an id
    /// (or a digest reference) deletes the image and all its tags. Blobs
    /// and unpacked layers no other image uses are deleted with it. Returns
    /// Docker-style lines: `Untagged: busybox:latest`, `Deleted: sha256:...`.
    pub fn remove(&self, reference: &str) -> Result<Vec<String>, ImageError> {
        let _lock = self.write_lock()?;
        let mut refs = self.read_refs()?;
        let Some((id, how)) = Self::find(&refs, reference)? else {
            return Err(ImageError::NotFound {
                reference: reference.to_string(),
            });
        };
        let mut out = Vec::new();
        let untag: Vec<String> = match how {
            Match::Tag(key) => vec![key],
            Match::Id => refs
                .tags
                .iter()
                .filter(|(_, v)| **v == id)
                .map(|(k, _)| k.clone())
                .collect(),
        };
        for key in untag {
            refs.tags.remove(&key);
            out.push(format!("Untagged: {}", familiar_key(&key)));
        }
        let still_tagged = refs.tags.values().any(|v| *v == id);
        let mut deleted = None;
        if !still_tagged {
            deleted = refs.images.remove(&id);
            out.push(format!("Deleted: {id}"));
        }
        self.write_refs(&refs)?;
        if let Some(record) = deleted {
            self.collect_garbage(&refs, &record);
        }
        Ok(out)
    }

    /// Points the tag `target` (`name[:tag]`) at the image `source` names;
    /// an image the tag pointed at before keeps its other tags (or becomes
    /// dangling). Returns the image as it is now.
    pub fn tag(&self, source: &str, target: &str) -> Result<Image, ImageError> {
        let t = reference::normalize(target)?;
        if t.digest.is_some() {
            return Err(ImageError::InvalidReference {
                reference: target.to_string(),
                reason: "a tag names a tag, not a digest".to_string(),
            });
        }
        let key = t
            .tagged_name()
            .ok_or_else(|| ImageError::InvalidReference {
                reference: target.to_string(),
                reason: "it names no tag".to_string(),
            })?;
        let _lock = self.write_lock()?;
        let mut refs = self.read_refs()?;
        let (id, _) = Self::find(&refs, source)?.ok_or_else(|| ImageError::NotFound {
            reference: source.to_string(),
        })?;
        refs.tags.insert(key, id.clone());
        self.write_refs(&refs)?;
        self.image_from(&refs, &id)
    }

    /// The bytes of stored blob `digest` (a manifest or config: whole into
    /// memory, so not for layers).
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(io_err(format!("reading blob {digest}")))
    }

    /// Deletes dangling (untagged) images, or with `all` every image, except
    /// those whose id is in `in_use`. Returns Docker-style lines
    /// (`Untagged: x`, `Deleted: sha256:...`) and the bytes of blobs and
    /// unpacked layers freed.
    pub fn prune(
        &self,
        all: bool,
        in_use: &BTreeSet<String>,
    ) -> Result<(Vec<String>, u64), ImageError> {
        let _lock = self.write_lock()?;
        let mut refs = self.read_refs()?;
        let victims: Vec<String> = refs
            .images
            .keys()
            .filter(|id| !in_use.contains(*id))
            .filter(|id| all || !refs.tags.values().any(|v| v == *id))
            .cloned()
            .collect();
        let mut out = Vec::new();
        let mut removed = Vec::new();
        for id in &victims {
            let tags: Vec<String> = refs
                .tags
                .iter()
                .filter(|(_, v)| *v == id)
                .map(|(k, _)| k.clone())
                .collect();
            for k in tags {
                refs.tags.remove(&k);
                out.push(format!("Untagged: {}", familiar_key(&k)));
            }
            if let Some(rec) = refs.images.remove(id) {
                out.push(format!("Deleted: {id}"));
                removed.push(rec);
            }
        }
        if removed.is_empty() {
            return Ok((out, 0));
        }
        self.write_refs(&refs)?;
        let mut freed = 0;
        for rec in &removed {
            freed += self.collect_garbage(&refs, rec);
        }
        Ok((out, freed))
    }

    /// The unpacked layer directories of `image`, bottom-most first (overlayfs
    /// wants `lowerdir=` top-most first: reverse them). A layer directory
    /// that has gone missing is unpacked again from its blob.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        let refs = self.read_refs()?;
        let record = refs
            .images
            .get(&image.id)
            .ok_or_else(|| ImageError::NotFound {
                reference: image.id.clone(),
            })?;
        let mut dirs = Vec::new();
        for l in &record.layers {
            let dir = self.layer_dir(&l.diff_id)?;
            if !dir.is_dir() {
                let _lock = self.write_lock()?;
                self.ensure_layer(
                    &l.digest,
                    None,
                    Some(&l.diff_id),
                    &format!("layer {}", l.diff_id),
                )?;
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Path of the blob `digest` (which may not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = parse_sha256(digest).ok_or_else(|| ImageError::InvalidReference {
            reference: digest.to_string(),
            reason: "blob digests must be sha256:<64 lowercase hex>".to_string(),
        })?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        let hex = parse_sha256(diff_id).ok_or_else(|| ImageError::Malformed {
            what: "layer diff id".to_string(),
            reason: format!("{diff_id:?} is not sha256:<64 hex>"),
        })?;
        Ok(self.root.join("layers").join(hex))
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    fn write_lock(&self) -> Result<WriteLock<'_>, ImageError> {
        // A panic in another writer leaves the on-disk state consistent
        // (every change is a rename), so a poisoned mutex is still usable.
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening lock file {}", path.display())))?;
        let flock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| ImageError::Io {
                action: format!("locking {}", path.display()),
                source: e.into(),
            })?;
        Ok(WriteLock {
            _flock: flock,
            _guard: guard,
        })
    }

    fn tmp_dir(&self, what: &str) -> Result<TmpDir, ImageError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = self
            .root
            .join("tmp")
            .join(format!("{}-{n}-{what}", std::process::id()));
        // A leftover with our pid is from an earlier process that had it.
        let _ = fs::remove_dir_all(&p);
        fs::create_dir(&p).map_err(io_err(format!("creating temp dir {}", p.display())))?;
        Ok(TmpDir(p))
    }

    fn clean_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let p = e.path();
                let r = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if let Err(err) = r {
                    tracing::warn!(path = %p.display(), error = %err, "could not remove stale image store temp entry");
                }
            }
        }
    }

    fn read_refs(&self) -> Result<Refs, ImageError> {
        let path = self.refs_path();
        let raw = match fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Refs {
                    version: REFS_VERSION,
                    ..Default::default()
                })
            }
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly = serde_json::from_slice(&raw).map_err(|e| ImageError::Malformed {
            what: format!("refs file {}", path.display()),
            reason: e.to_string(),
        })?;
        if v.version > REFS_VERSION {
            return Err(ImageError::StoreVersion {
                path,
                found: v.version,
                supported: REFS_VERSION,
            });
        }
        serde_json::from_slice(&raw).map_err(|e| ImageError::Malformed {
            what: format!("refs file {}", path.display()),
            reason: e.to_string(),
        })
    }

    fn write_refs(&self, refs: &Refs) -> Result<(), ImageError> {
        let path = self.refs_path();
        let tmp = self
            .root
            .join(format!("refs.json.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(refs).map_err(|e| ImageError::Malformed {
            what: "refs file being written".to_string(),
            reason: e.to_string(),
        })?;
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.root)?.sync_all()
        };
        write().map_err(io_err(format!("writing {}", path.display())))
    }

    /// Moves a staged file into the blob store under `digest` (already
    /// verified by the caller), or drops it if the blob is already there.
    fn put_blob_file(&self, staged: &Path, digest: &str) -> Result<(), ImageError> {
        let dst = self.blob_path(digest)?;
        if dst.exists() {
            return Ok(());
        }
        if staged.exists() {
            fs::rename(staged, &dst).map_err(io_err(format!("storing blob {digest}")))
        } else {
            // Already moved for another image of the same archive.
            Err(ImageError::Io {
                action: format!("storing blob {digest}"),
                source: io::Error::new(io::ErrorKind::NotFound, "staged file is gone"),
            })
        }
    }

    fn put_blob_bytes(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let digest = archive::sha256_hex(bytes);
        let dst = self.blob_path(&digest)?;
        if dst.exists() {
            return Ok(digest);
        }
        let tmp = self.tmp_dir("blob")?;
        let p = tmp.0.join("blob");
        let write = || -> io::Result<()> {
            let mut f = File::create(&p)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&p, &dst)
        };
        write().map_err(io_err(format!("storing blob {digest}")))?;
        Ok(digest)
    }

    /// Streams `reader` into `<temp dir>/blob`; returns the temp dir, the
    /// digest, size and media type (by magic).
    fn stage_blob_stream<R: Read>(
        &self,
        mut reader: R,
    ) -> Result<(TmpDir, String, u64, String), ImageError> {
        let tmp = self.tmp_dir("blob")?;
        let p = tmp.0.join("blob");
        let mut f = File::create(&p).map_err(io_err(format!("creating {}", p.display())))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut head = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(io_err("reading the root filesystem tarball".to_string()))?;
            if n == 0 {
                break;
            }
            if head.len() < 4 {
                head.extend_from_slice(&buf[..n.min(4 - head.len())]);
            }
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n])
                .map_err(io_err(format!("writing {}", p.display())))?;
            size += n as u64;
        }
        f.sync_all()
            .map_err(io_err(format!("syncing {}", p.display())))?;
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        let media_type = match unpack::detect_compression(&head) {
            unpack::Compression::None => oci_spec::image::MediaType::ImageLayer,
            unpack::Compression::Gzip => oci_spec::image::MediaType::ImageLayerGzip,
            unpack::Compression::Zstd => oci_spec::image::MediaType::ImageLayerZstd,
        };
        Ok((tmp, digest, size, media_type.to_string()))
    }

    /// Makes sure layers/<diff id> exists, unpacking blob `digest` if not.
    /// Returns (diff id, unpacked size).
    fn ensure_layer(
        &self,
        digest: &str,
        source: Option<&Path>,
        diff_id: Option<&str>,
        what: &str,
    ) -> Result<(String, u64), ImageError> {
        if let Some(d) = diff_id {
            let dir = self.layer_dir(d)?;
            if dir.is_dir() {
                return Ok((d.to_string(), self.known_layer_size(d, &dir)?));
            }
        }
        let blob = match source {
            Some(p) => p.to_path_buf(),
            None => self.blob_path(digest)?,
        };
        let file = File::open(&blob).map_err(io_err(format!("opening blob {digest}")))?;
        let tmp = self.tmp_dir("layer")?;
        let fsdir = tmp.0.join("fs");
        fs::create_dir(&fsdir).map_err(io_err(format!("creating {}", fsdir.display())))?;
        let what = format!("{what} (blob {digest})");
        let unpacked = unpack::unpack_layer(io::BufReader::new(file), &fsdir, &what, diff_id)?;
        let dst = self.layer_dir(&unpacked.diff_id)?;
        if dst.is_dir() {
            return Ok((unpacked.diff_id, unpacked.size));
        }
        // Durability before the layer becomes visible under its final name.
        let d = File::open(&fsdir).map_err(io_err(format!("opening {}", fsdir.display())))?;
        nix::unistd::syncfs(d.as_raw_fd()).map_err(|e| ImageError::Io {
            action: format!("syncing unpacked layer {}", fsdir.display()),
            source: e.into(),
        })?;
        match fs::rename(&fsdir, &dst) {
            Ok(()) => {}
            // Another process got there first with the same content.
            Err(_) if dst.is_dir() => {}
            Err(e) => {
                return Err(io_err(format!(
                    "moving unpacked layer to {}",
                    dst.display()
                ))(e))
            }
        }
        Ok((unpacked.diff_id, unpacked.size))
    }

    fn known_layer_size(&self, diff_id: &str, dir: &Path) -> Result<u64, ImageError> {
        let refs = self.read_refs()?;
        let known = refs
            .images
            .values()
            .flat_map(|r| r.layers.iter())
            .find(|l| l.diff_id == diff_id)
            .map(|l| l.size);
        match known {
            Some(s) => Ok(s),
            None => dir_size(dir).map_err(io_err(format!("measuring {}", dir.display()))),
        }
    }

    /// Stores a verified planned image's blobs and layers, then records it.
    fn commit_image(&self, p: &PlannedImage) -> Result<String, ImageError> {
        let mut created_layers = Vec::new();
        let mut placed_blobs = Vec::new();
        let result = self.commit_image_inner(p, &mut created_layers, &mut placed_blobs);
        if result.is_err() {
            // Nothing recorded points at what this attempt added (we hold
            // the lock), so it goes again.
            for d in &created_layers {
                self.remove_layer_dir(d);
            }
            for d in &placed_blobs {
                if let Ok(path) = self.blob_path(d) {
                    let _ = fs::remove_file(path);
                }
            }
        }
        result
    }

    fn commit_image_inner(
        &self,
        p: &PlannedImage,
        created_layers: &mut Vec<String>,
        placed_blobs: &mut Vec<String>,
    ) -> Result<String, ImageError> {
        let id = p.config.digest().to_string();
        // Layers first, unpacked from the staged copies, so a layer that
        // fails to unpack leaves no blob behind.
        let mut layers = Vec::new();
        for l in &p.layers {
            let digest = l.blob.digest();
            let existed = self.layer_dir(&l.diff_id)?.is_dir();
            let source = match &l.blob {
                BlobSource::Staged(f) if f.path.exists() => Some(f.path.as_path()),
                _ => None,
            };
            let (diff_id, size) = self.ensure_layer(
                digest,
                source,
                Some(&l.diff_id),
                &format!("layer {}", l.diff_id),
            )?;
            if !existed {
                created_layers.push(diff_id.clone());
            }
            layers.push(LayerRecord {
                digest: digest.to_string(),
                media_type: l.media_type.clone(),
                diff_id,
                size,
            });
        }
        let blobs = std::iter::once(&p.manifest)
            .chain(std::iter::once(&p.config))
            .chain(p.layers.iter().map(|l: &PlannedLayer| &l.blob));
        for b in blobs {
            let digest = b.digest().to_string();
            if self.blob_path(&digest)?.exists() {
                continue;
            }
            match b {
                BlobSource::Staged(f) => self.put_blob_file(&f.path, &f.digest)?,
                BlobSource::Bytes { bytes, .. } => {
                    self.put_blob_bytes(bytes)?;
                }
                BlobSource::Stored { digest, .. } => {
                    return Err(ImageError::Io {
                        action: format!("reusing stored blob {digest}"),
                        source: io::Error::new(
                            io::ErrorKind::NotFound,
                            "it was deleted while the image was being stored",
                        ),
                    })
                }
            }
            placed_blobs.push(digest);
        }
        let record = ImageRecord {
            manifest_digest: p.manifest.digest().to_string(),
            config_digest: id.clone(),
            created: p.config_file.created.clone(),
            config: p.config_file.image_config(),
            layers,
        };
        self.record_image(&id, record, &p.tags)?;
        Ok(id)
    }

    /// Takes layers/<diff id> out of view at once (rename into tmp/), then
    /// deletes it. Failures are logged: a leftover only costs disk.
    /// Returns whether the layer was there and is now gone.
    fn remove_layer_dir(&self, diff_id: &str) -> bool {
        let Ok(dir) = self.layer_dir(diff_id) else {
            return false;
        };
        let Ok(tmp) = self.tmp_dir("gc") else {
            return false;
        };
        match fs::rename(&dir, tmp.0.join("fs")) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(layer = %diff_id, error = %e, "could not delete unused layer");
                false
            }
        }
    }

    fn record_image(
        &self,
        id: &str,
        record: ImageRecord,
        tags: &[Reference],
    ) -> Result<(), ImageError> {
        let mut refs = self.read_refs()?;
        refs.version = REFS_VERSION;
        refs.images.insert(id.to_string(), record);
        let mut orphans = BTreeSet::new();
        for t in tags {
            if let Some(key) = t.tagged_name() {
                if let Some(old) = refs.tags.insert(key, id.to_string()) {
                    if old != id {
                        orphans.insert(old);
                    }
                }
            }
        }
        self.write_refs(&refs)?;
        for old in orphans {
            if !refs.tags.values().any(|v| *v == old) {
                tracing::info!(image = %old, "image lost its last tag to a newer load; kept as dangling");
            }
        }
        Ok(())
    }

    /// Deletes the blobs and unpacked layers of `removed` that no image in
    /// `refs` still uses. Failures are logged, not returned: the image is
    /// already gone from the refs, and leftovers only cost disk.
    fn collect_garbage(&self, refs: &Refs, removed: &ImageRecord) -> u64 {
        let mut freed = 0;
        let mut used_blobs = BTreeSet::new();
        let mut used_layers = BTreeSet::new();
        for r in refs.images.values() {
            used_blobs.insert(r.manifest_digest.as_str());
            used_blobs.insert(r.config_digest.as_str());
            for l in &r.layers {
                used_blobs.insert(l.digest.as_str());
                used_layers.insert(l.diff_id.as_str());
            }
        }
        let mine = std::iter::once(removed.manifest_digest.as_str())
            .chain(std::iter::once(removed.config_digest.as_str()))
            .chain(removed.layers.iter().map(|l| l.digest.as_str()));
        for d in mine {
            if used_blobs.contains(d) {
                continue;
            }
            if let Ok(p) = self.blob_path(d) {
                let size = p.metadata().map(|m| m.len()).unwrap_or(0);
                if let Err(e) = fs::remove_file(&p) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(blob = d, error = %e, "could not delete unused blob");
                    }
                } else {
                    freed += size;
                }
            }
        }
        for l in &removed.layers {
            if !used_layers.contains(l.diff_id.as_str()) && self.remove_layer_dir(&l.diff_id) {
                freed += l.size;
            }
        }
        freed
    }

    fn find(refs: &Refs, reference: &str) -> Result<Option<(String, Match)>, ImageError> {
        // Full ids and "sha256:" prefixes.
        if let Some(hex) = reference.strip_prefix("sha256:") {
            if hex.len() >= 4 && is_lower_hex(hex) && hex.len() <= 64 {
                return Ok(Self::by_id_prefix(refs, hex)?.map(|id| (id, Match::Id)));
            }
            return Err(ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: "sha256: must be followed by 4 to 64 lowercase hex characters".to_string(),
            });
        }
        let parsed = reference::normalize(reference);
        if let Ok(r) = &parsed {
            if let Some(d) = &r.digest {
                let hit = refs
                    .images
                    .iter()
                    .find(|(id, rec)| rec.manifest_digest == *d || *id == d)
                    .map(|(id, _)| (id.clone(), Match::Id));
                return Ok(hit);
            }
            if let Some(key) = r.tagged_name() {
                if let Some(id) = refs.tags.get(&key) {
                    if refs.images.contains_key(id) {
                        return Ok(Some((id.clone(), Match::Tag(key))));
                    }
                }
            }
        }
        if reference.len() >= 4 && reference.len() <= 64 && is_lower_hex(reference) {
            return Ok(Self::by_id_prefix(refs, reference)?.map(|id| (id, Match::Id)));
        }
        parsed.map(|_| None)
    }

    fn by_id_prefix(refs: &Refs, hex: &str) -> Result<Option<String>, ImageError> {
        let hits: Vec<&String> = refs
            .images
            .keys()
            .filter(|id| hex_of(id).starts_with(hex))
            .collect();
        match hits.len() {
            0 => Ok(None),
            1 => Ok(Some(hits[0].clone())),
            n => Err(ImageError::Ambiguous {
                prefix: hex.to_string(),
                count: n,
            }),
        }
    }

    fn image_from(&self, refs: &Refs, id: &str) -> Result<Image, ImageError> {
        let rec = refs.images.get(id).ok_or_else(|| ImageError::NotFound {
            reference: id.to_string(),
        })?;
        let mut references: Vec<String> = refs
            .tags
            .iter()
            .filter(|(_, v)| *v == id)
            .map(|(k, _)| familiar_key(k))
            .collect();
        references.sort();
        Ok(Image {
            id: id.to_string(),
            references,
            manifest_digest: rec.manifest_digest.clone(),
            size: rec.layers.iter().map(|l| l.size).sum(),
            created: rec.created.clone(),
            config: rec.config.clone(),
            diff_ids: rec.layers.iter().map(|l| l.diff_id.clone()).collect(),
        })
    }
}

/// Familiar form of a stored tag key (`docker.io/library/x:1` → `x:1`).
fn familiar_key(key: &str) -> String {
    reference::normalize(key)
        .map(|r| familiar(&r))
        .unwrap_or_else(|_| key.to_string())
}

/// Sum of regular file sizes under `dir`, not following symlinks.
fn dir_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    Ok(total)
}
