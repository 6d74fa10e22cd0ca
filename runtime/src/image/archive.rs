//! Reading an image archive (`docker save` output, legacy or OCI-flavoured,
//! or an OCI image layout) from a non-seekable tar stream: every file is
//! staged into a private temporary directory while its sha256 is computed,
//! then the archive's indexes are read and turned into a plan of images
//! whose every blob has been checked against the digest it is named by.
//!
//! It must never put anything into the store itself (that is the store's
//! job once the whole plan is verified), never follow a path out of its
//! staging directory, and never accept a blob whose digest does not match.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::reference::{self, parse_sha256, Reference};
use super::unpack::{clean_path, detect_compression, Compression};
use super::{config, ImageError};

/// Largest JSON document (manifest, index, config) read into memory.
const MAX_JSON: u64 = 16 << 20;

/// A file taken out of the archive, with its digest.
#[derive(Clone, Debug)]
pub(crate) struct StagedFile {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
}

/// The archive's files, staged on disk, by their (cleaned) archive path.
pub(crate) struct Staged {
    files: HashMap<String, StagedFile>,
    links: HashMap<String, String>,
}

/// A blob the plan needs, either staged from the archive or made here.
#[derive(Clone, Debug)]
pub(crate) enum BlobSource {
    Staged(StagedFile),
    Bytes {
        digest: String,
        bytes: Vec<u8>,
    },
    /// Already in the store's blobs (a pull skips downloading it).
    Stored {
        digest: String,
        size: u64,
    },
}

impl BlobSource {
    pub(crate) fn digest(&self) -> &str {
        match self {
            BlobSource::Staged(f) => &f.digest,
            BlobSource::Bytes { digest, .. } => digest,
            BlobSource::Stored { digest, .. } => digest,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct PlannedLayer {
    pub blob: BlobSource,
    pub media_type: String,
    pub diff_id: String,
}

#[derive(Clone, Debug)]
pub(crate) struct PlannedImage {
    pub manifest: BlobSource,
    pub config: BlobSource,
    pub config_file: config::ConfigFile,
    pub layers: Vec<PlannedLayer>,
    pub tags: Vec<Reference>,
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn io_err(action: String) -> impl FnOnce(io::Error) -> ImageError {
    move |source| ImageError::Io { action, source }
}

fn path_key(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Joins a link target onto the directory holding the link, resolving `..`
/// within the archive; `None` when it would climb above the archive root.
fn resolve_link(link_dir: &Path, target: &[u8]) -> Option<String> {
    let t = Path::new(std::ffi::OsStr::from_bytes(target));
    let base = if t.is_absolute() {
        PathBuf::new()
    } else {
        link_dir.to_path_buf()
    };
    let mut out: Vec<std::ffi::OsString> = base.iter().map(|c| c.to_os_string()).collect();
    for c in t.components() {
        match c {
            std::path::Component::Normal(p) => out.push(p.to_os_string()),
            std::path::Component::ParentDir => {
                out.pop()?;
            }
            _ => {}
        }
    }
    Some(path_key(&out.iter().collect::<PathBuf>()))
}

use std::os::unix::ffi::OsStrExt;

impl Staged {
    /// Copies every regular file of the archive `reader` into `dir`,
    /// hashing as it writes.
    pub(crate) fn stage<R: Read>(reader: R, dir: &Path) -> Result<Staged, ImageError> {
        let mut archive = tar::Archive::new(reader);
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let entries = archive
            .entries()
            .map_err(io_err("reading the image archive".to_string()))?;
        for (n, entry) in entries.enumerate() {
            let mut entry =
                entry.map_err(io_err("reading an entry of the image archive".into()))?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let rel = clean_path(&raw).ok_or_else(|| ImageError::PathEscape {
                layer: "the image archive".to_string(),
                entry: shown.clone(),
            })?;
            let key = path_key(&rel);
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let dir_of = if kind.is_symlink() {
                    rel.parent().unwrap_or(Path::new("")).to_path_buf()
                } else {
                    PathBuf::new()
                };
                let resolved =
                    resolve_link(&dir_of, &target).ok_or_else(|| ImageError::PathEscape {
                        layer: "the image archive".to_string(),
                        entry: shown.clone(),
                    })?;
                links.insert(key, resolved);
                continue;
            }
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                continue;
            }
            let path = dir.join(format!("f{n}"));
            let mut out = File::create(&path)
                .map_err(io_err(format!("creating staging file {}", path.display())))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let got = entry
                    .read(&mut buf)
                    .map_err(io_err(format!("reading {shown} from the image archive")))?;
                if got == 0 {
                    break;
                }
                hasher.update(&buf[..got]);
                out.write_all(&buf[..got])
                    .map_err(io_err(format!("writing staging file {}", path.display())))?;
                size += got as u64;
            }
            out.sync_all()
                .map_err(io_err(format!("syncing staging file {}", path.display())))?;
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            files.insert(key, StagedFile { path, digest, size });
        }
        Ok(Staged { files, links })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&StagedFile> {
        let mut key = clean_path(name.as_bytes()).map(|p| path_key(&p))?;
        for _ in 0..32 {
            if let Some(f) = self.files.get(&key) {
                return Some(f);
            }
            key = self.links.get(&key)?.clone();
        }
        None
    }

    fn require(&self, name: &str) -> Result<&StagedFile, ImageError> {
        self.get(name).ok_or_else(|| ImageError::Malformed {
            what: "image archive".to_string(),
            reason: format!("it refers to {name}, which it does not contain"),
        })
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let f = self.require(name)?;
        if f.size > MAX_JSON {
            return Err(ImageError::Malformed {
                what: format!("{name} in the image archive"),
                reason: format!("{} bytes is larger than the {MAX_JSON} allowed", f.size),
            });
        }
        fs::read(&f.path).map_err(io_err(format!("reading staged {name}")))
    }

    /// The staged blob `digest` of an OCI layout, checked against the digest
    /// (and size, when known) its descriptor gives.
    fn blob(&self, digest: &str, size: Option<u64>) -> Result<&StagedFile, ImageError> {
        let hex = parse_sha256(digest).ok_or_else(|| {
            ImageError::Unsupported(format!(
                "digest {digest}: only sha256 digests are supported"
            ))
        })?;
        let f = self.require(&format!("blobs/sha256/{hex}"))?;
        verify(f, digest, &format!("blob {digest}"))?;
        if let Some(size) = size {
            if size != f.size {
                return Err(ImageError::Malformed {
                    what: format!("blob {digest}"),
                    reason: format!(
                        "its descriptor says {size} bytes, the archive holds {}",
                        f.size
                    ),
                });
            }
        }
        Ok(f)
    }

    /// Works out which images the archive holds.
    pub(crate) fn plan(&self) -> Result<Vec<PlannedImage>, ImageError> {
        if self.has("manifest.json") {
            self.plan_docker()
        } else if self.has("index.json") {
            self.plan_oci()
        } else {
            Err(ImageError::Malformed {
                what: "image archive".to_string(),
                reason: "it has neither manifest.json (docker save) nor index.json (OCI layout)"
                    .to_string(),
            })
        }
    }

    fn plan_docker(&self) -> Result<Vec<PlannedImage>, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let raw = self.read_small("manifest.json")?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&raw).map_err(|e| ImageError::Malformed {
                what: "manifest.json of the image archive".to_string(),
                reason: e.to_string(),
            })?;
        // Newer `docker save` also writes an OCI index: reuse its real
        // manifests so the manifest digest matches the registry's.
        let oci_manifests = if self.has("index.json") {
            self.plan_oci().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for e in entries {
            let cfg = self.require(&e.config)?.clone();
            check_named_digest(&cfg, &e.config)?;
            let cfg_bytes = self.read_small(&e.config)?;
            let config_file = config::parse(&cfg_bytes, &format!("image config {}", cfg.digest))?;
            let tags = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| reference::normalize(t))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(p) = oci_manifests
                .iter()
                .find(|p| p.config.digest() == cfg.digest)
            {
                let mut p = p.clone();
                p.tags = tags;
                out.push(p);
                continue;
            }
            let diff_ids = &config_file.rootfs.diff_ids;
            if diff_ids.len() != e.layers.len() {
                return Err(ImageError::Malformed {
                    what: format!("image {} in the archive", cfg.digest),
                    reason: format!(
                        "manifest.json lists {} layers but the config has {} diff ids",
                        e.layers.len(),
                        diff_ids.len()
                    ),
                });
            }
            let mut layers = Vec::new();
            for (path, diff_id) in e.layers.iter().zip(diff_ids) {
                let f = self.require(path)?.clone();
                check_named_digest(&f, path)?;
                let compression = head_compression(&f.path)?;
                if compression == Compression::None {
                    // An uncompressed layer's digest is its diff id.
                    verify(&f, diff_id, &format!("layer {path}"))?;
                }
                let media_type = match compression {
                    Compression::None => MediaType::ImageLayer,
                    Compression::Gzip => MediaType::ImageLayerGzip,
                    Compression::Zstd => MediaType::ImageLayerZstd,
                };
                layers.push(PlannedLayer {
                    blob: BlobSource::Staged(f),
                    media_type: media_type.to_string(),
                    diff_id: diff_id.clone(),
                });
            }
            let manifest = synth_manifest(&cfg, &layers)?;
            out.push(PlannedImage {
                manifest,
                config: BlobSource::Staged(cfg),
                config_file,
                layers,
                tags,
            });
        }
        Ok(out)
    }

    fn plan_oci(&self) -> Result<Vec<PlannedImage>, ImageError> {
        if let Some(layout) = self.get("oci-layout") {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Layout {
                image_layout_version: String,
            }
            let raw = fs::read(&layout.path).map_err(io_err("reading oci-layout".into()))?;
            let l: Layout = serde_json::from_slice(&raw).map_err(|e| ImageError::Malformed {
                what: "oci-layout of the image archive".to_string(),
                reason: e.to_string(),
            })?;
            if !l.image_layout_version.starts_with("1.") {
                return Err(ImageError::Unsupported(format!(
                    "OCI image layout version {}",
                    l.image_layout_version
                )));
            }
        }
        let raw = self.read_small("index.json")?;
        let index = ImageIndex::from_reader(&raw[..]).map_err(|e| ImageError::Malformed {
            what: "index.json of the image archive".to_string(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::new();
        for desc in index.manifests() {
            let tags = descriptor_tags(desc);
            if let Some(mut p) = self.plan_descriptor(desc, 0)? {
                p.tags = tags;
                out.push(p);
            }
        }
        Ok(out)
    }

    fn plan_descriptor(
        &self,
        desc: &oci_spec::image::Descriptor,
        depth: u32,
    ) -> Result<Option<PlannedImage>, ImageError> {
        let digest = desc.digest().to_string();
        let f = self.blob(&digest, Some(desc.size()))?.clone();
        let raw = self.read_small(&format!("blobs/sha256/{}", hex_of(&digest)))?;
        let is_index = match desc.media_type() {
            MediaType::ImageIndex => true,
            MediaType::Other(m)
                if m == "application/vnd.docker.distribution.manifest.list.v2+json" =>
            {
                true
            }
            _ => false,
        };
        if is_index {
            if depth > 4 {
                return Err(ImageError::Malformed {
                    what: format!("image index {digest}"),
                    reason: "indexes nested more than 4 deep".to_string(),
                });
            }
            let index = ImageIndex::from_reader(&raw[..]).map_err(|e| ImageError::Malformed {
                what: format!("image index {digest}"),
                reason: e.to_string(),
            })?;
            let arch = config::host_architecture();
            let chosen = index
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == arch
                    })
                })
                .or_else(|| {
                    let all = index.manifests();
                    (all.len() == 1).then(|| &all[0])
                });
            return match chosen {
                Some(d) => self.plan_descriptor(d, depth + 1),
                None => Err(ImageError::Unsupported(format!(
                    "image index {digest} has no manifest for linux/{arch}"
                ))),
            };
        }
        let manifest = ImageManifest::from_reader(&raw[..]).map_err(|e| ImageError::Malformed {
            what: format!("image manifest {digest}"),
            reason: e.to_string(),
        })?;
        let cdesc = manifest.config();
        let cdigest = cdesc.digest().to_string();
        let cfg = self.blob(&cdigest, Some(cdesc.size()))?.clone();
        let cfg_bytes = self.read_small(&format!("blobs/sha256/{}", hex_of(&cdigest)))?;
        let config_file = config::parse(&cfg_bytes, &format!("image config {cdigest}"))?;
        let diff_ids = &config_file.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::Malformed {
                what: format!("image manifest {digest}"),
                reason: format!(
                    "it lists {} layers but its config has {} diff ids",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            });
        }
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let ld = l.digest().to_string();
            let lf = self.blob(&ld, Some(l.size()))?.clone();
            layers.push(PlannedLayer {
                blob: BlobSource::Staged(lf),
                media_type: l.media_type().to_string(),
                diff_id: diff_id.clone(),
            });
        }
        Ok(Some(PlannedImage {
            manifest: BlobSource::Staged(f),
            config: BlobSource::Staged(cfg),
            config_file,
            layers,
            tags: Vec::new(),
        }))
    }
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map(|(_, h)| h).unwrap_or(digest)
}

/// Tags an OCI index entry carries: containerd's full name wins; the OCI
/// `ref.name` counts only when it is a full reference (a bare `latest`
/// names no repository, so such an image loads untagged).
fn descriptor_tags(desc: &oci_spec::image::Descriptor) -> Vec<Reference> {
    let Some(ann) = desc.annotations() else {
        return Vec::new();
    };
    if let Some(r) = ann.get("io.containerd.image.name") {
        if let Ok(r) = reference::normalize(r) {
            return vec![r];
        }
    }
    if let Some(r) = ann.get("org.opencontainers.image.ref.name") {
        if r.contains(':') || r.contains('/') {
            if let Ok(r) = reference::normalize(r) {
                return vec![r];
            }
        }
        tracing::warn!(ref_name = %r, "OCI ref.name is not a full image reference; loading the image untagged");
    }
    Vec::new()
}

/// A file whose archive path is `blobs/sha256/<hex>` or `<hex>.json` is named
/// by its digest: refuse it if its content says otherwise.
fn check_named_digest(f: &StagedFile, path: &str) -> Result<(), ImageError> {
    let clean = clean_path(path.as_bytes())
        .map(|p| path_key(&p))
        .unwrap_or_default();
    let named = clean
        .strip_prefix("blobs/sha256/")
        .or_else(|| clean.strip_suffix(".json").filter(|h| !h.contains('/')));
    if let Some(hex) = named.filter(|h| reference::is_hex64(h)) {
        verify(
            f,
            &format!("sha256:{hex}"),
            &format!("{path} in the image archive"),
        )?;
    }
    Ok(())
}

fn verify(f: &StagedFile, expected: &str, what: &str) -> Result<(), ImageError> {
    if f.digest != expected {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: f.digest.clone(),
        });
    }
    Ok(())
}

fn head_compression(path: &Path) -> Result<Compression, ImageError> {
    let mut head = [0u8; 4];
    let mut f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut got = 0;
    while got < head.len() {
        let n = f
            .read(&mut head[got..])
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(detect_compression(&head[..got]))
}

/// An OCI manifest for an image `docker save` wrote without one, so every
/// image in the store has a manifest blob.
fn synth_manifest(cfg: &StagedFile, layers: &[PlannedLayer]) -> Result<BlobSource, ImageError> {
    let layer_json: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let (digest, size) = match &l.blob {
                BlobSource::Staged(f) => (f.digest.clone(), f.size),
                BlobSource::Bytes { digest, bytes } => (digest.clone(), bytes.len() as u64),
                BlobSource::Stored { digest, size } => (digest.clone(), *size),
            };
            serde_json::json!({"mediaType": l.media_type, "digest": digest, "size": size})
        })
        .collect();
    let bytes = manifest_bytes(&cfg.digest, cfg.size, layer_json)?;
    Ok(BlobSource::Bytes {
        digest: sha256_hex(&bytes),
        bytes,
    })
}

pub(crate) fn manifest_bytes(
    config_digest: &str,
    config_size: u64,
    layers: Vec<serde_json::Value>,
) -> Result<Vec<u8>, ImageError> {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::ImageManifest.to_string(),
        "config": {
            "mediaType": MediaType::ImageConfig.to_string(),
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    });
    serde_json::to_vec(&m).map_err(|e| ImageError::Malformed {
        what: "generated image manifest".to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_resolution() {
        assert_eq!(
            resolve_link(Path::new("b"), b"../a/layer.tar").as_deref(),
            Some("a/layer.tar")
        );
        assert_eq!(resolve_link(Path::new("b"), b"/x").as_deref(), Some("x"));
        assert_eq!(resolve_link(Path::new(""), b"../x"), None);
    }
}
