//! Writing images out as a `docker save` archive: `manifest.json` and
//! `repositories` for `docker load` (any version) and skopeo's
//! `docker-archive:`, plus the OCI `index.json`, `oci-layout` and `blobs/`
//! that Docker 25+ writes, so the stored manifests (and so the manifest
//! digests) survive a save → load round trip. [`SaveFormat::Oci`] writes
//! the OCI layout alone.
//!
//! Blobs are written exactly as stored (layers keep their compression;
//! `docker load` and skopeo decompress them). It must never change the
//! store, and never write a blob twice into one archive.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;

use serde_json::json;

use super::reference::{self, familiar_name};
use super::registry::manifest_media_type;
use super::{hex_of, ImageError, ImageStore, Match};

/// What [`ImageStore::save_as`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SaveFormat {
    /// `docker save`'s archive: `manifest.json` and `repositories`, plus
    /// the OCI layout Docker 25+ adds (what [`ImageStore::save`] writes).
    #[default]
    Docker,
    /// An OCI image layout only (`oci-layout`, `index.json`, `blobs/`).
    Oci,
}

impl ImageStore {
    /// Writes the images `references` name in `format` as one tar stream
    /// to `out`; see [`ImageStore::save`].
    pub fn save_as<W: Write>(
        &self,
        references: &[&str],
        format: SaveFormat,
        out: W,
    ) -> Result<(), ImageError> {
        self.save_inner(references, format, out)
    }

    /// Writes the images `references` name (tags, ids, digests) as one
    /// `docker save`-compatible tar stream to `out`. An image named by tag
    /// is saved with that tag; one named by id or digest is saved untagged,
    /// as Docker does.
    pub fn save<W: Write>(&self, references: &[&str], out: W) -> Result<(), ImageError> {
        self.save_inner(references, SaveFormat::Docker, out)
    }

    fn save_inner<W: Write>(
        &self,
        references: &[&str],
        format: SaveFormat,
        out: W,
    ) -> Result<(), ImageError> {
        if references.is_empty() {
            return Err(ImageError::InvalidReference {
                reference: String::new(),
                reason: "save needs at least one image reference".to_string(),
            });
        }
        let refs = self.read_refs()?;
        // Image ids in the order first named, each with its tags (full form).
        let mut order: Vec<String> = Vec::new();
        let mut tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in references {
            let (id, how) = Self::find(&refs, r)?.ok_or_else(|| ImageError::NotFound {
                reference: r.to_string(),
            })?;
            if !tags.contains_key(&id) {
                order.push(id.clone());
            }
            let t = tags.entry(id).or_default();
            if let Match::Tag(key) = how {
                if !t.contains(&key) {
                    t.push(key);
                }
            }
        }
        let io = |action: String| move |source| ImageError::Io { action, source };
        let mut b = tar::Builder::new(out);
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, dir, std::io::empty())
                .map_err(io(format!("writing {dir} to the archive")))?;
        }
        let mut written = BTreeSet::new();
        let mut docker_manifest = Vec::new();
        let mut index = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for id in &order {
            let rec = refs.images.get(id).ok_or_else(|| ImageError::NotFound {
                reference: id.clone(),
            })?;
            let blobs = std::iter::once(&rec.manifest_digest)
                .chain(std::iter::once(&rec.config_digest))
                .chain(rec.layers.iter().map(|l| &l.digest));
            for d in blobs {
                if !written.insert(d.clone()) {
                    continue;
                }
                let path = self.blob_path(d)?;
                let f = File::open(&path).map_err(io(format!("opening blob {d} of {id}")))?;
                let size = f
                    .metadata()
                    .map_err(io(format!("reading blob {d} of {id}")))?
                    .len();
                let mut h = header(tar::EntryType::Regular, 0o644, size);
                b.append_data(&mut h, format!("blobs/sha256/{}", hex_of(d)), f)
                    .map_err(io(format!("writing blob {d} to the archive")))?;
            }
            let manifest_path = self.blob_path(&rec.manifest_digest)?;
            let manifest = std::fs::read(&manifest_path)
                .map_err(io(format!("reading manifest {}", rec.manifest_digest)))?;
            let media_type = manifest_media_type(&manifest);
            let image_tags = tags.get(id).cloned().unwrap_or_default();
            let layer_paths: Vec<String> = rec
                .layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", hex_of(&l.digest)))
                .collect();
            let mut familiar_tags = Vec::new();
            for key in &image_tags {
                let r = reference::normalize(key)?;
                familiar_tags.push(reference::familiar(&r));
                let tag = r.tag.clone().unwrap_or_default();
                index.push(json!({
                    "mediaType": media_type,
                    "digest": rec.manifest_digest,
                    "size": manifest.len(),
                    "annotations": {
                        "io.containerd.image.name": key,
                        "org.opencontainers.image.ref.name": tag,
                    }
                }));
                if let Some(top) = rec.layers.last() {
                    repositories
                        .entry(familiar_name(&r))
                        .or_default()
                        .insert(tag, hex_of(&top.digest).to_string());
                }
            }
            if image_tags.is_empty() {
                index.push(json!({
                    "mediaType": media_type,
                    "digest": rec.manifest_digest,
                    "size": manifest.len(),
                }));
            }
            docker_manifest.push(json!({
                "Config": format!("blobs/sha256/{}", hex_of(&rec.config_digest)),
                "RepoTags": if familiar_tags.is_empty() { serde_json::Value::Null } else { json!(familiar_tags) },
                "Layers": layer_paths,
            }));
        }
        let docs = [
            ("oci-layout", json!({"imageLayoutVersion": "1.0.0"})),
            (
                "index.json",
                json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": index,
                }),
            ),
            ("manifest.json", json!(docker_manifest)),
            ("repositories", json!(repositories)),
        ];
        let keep = match format {
            SaveFormat::Docker => docs.len(),
            SaveFormat::Oci => 2,
        };
        for (name, doc) in docs.into_iter().take(keep) {
            let bytes = serde_json::to_vec(&doc).map_err(|e| ImageError::Malformed {
                what: format!("{name} being saved"),
                reason: e.to_string(),
            })?;
            let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
            b.append_data(&mut h, name, &bytes[..])
                .map_err(io(format!("writing {name} to the archive")))?;
        }
        let mut out = b
            .into_inner()
            .map_err(io("finishing the image archive".to_string()))?;
        out.flush()
            .map_err(io("flushing the image archive".to_string()))
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}
