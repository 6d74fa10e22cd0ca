//! Unpacks one layer tarball into a directory shaped for overlayfs: OCI
//! whiteouts become overlayfs whiteouts (`.wh.NAME` → a 0/0 character device
//! `NAME`; `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory), and
//! ownership, modes, xattrs, hard links, symlinks and device nodes are kept.
//!
//! It must never write outside the destination: entries with `..`, hard
//! links to outside, and writes through symlinks that lead out of the layer
//! are refused with an error (never skipped silently). It never applies a
//! layer on top of another — each layer is unpacked on its own and the
//! stacking is overlayfs' job.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What unpacking a layer found.
#[derive(Debug)]
pub(crate) struct Unpacked {
    /// `sha256:<hex>` of the uncompressed tar stream (the layer's diff id).
    pub diff_id: String,
    /// Sum of regular file sizes in the layer.
    pub size: u64,
}

/// A reader that hashes and counts everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream (tar leaves trailing padding unread) and
    /// returns (`sha256:<hex>`, bytes read).
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Compression detected from a stream's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(crate) fn detect_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Wraps `reader` in the decompressor its magic bytes call for.
pub(crate) fn decompressed<'a, R: Read + 'a>(
    reader: R,
    what: &str,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    let mut reader = io::BufReader::new(reader);
    let head = io::BufRead::fill_buf(&mut reader)
        .map_err(|e| ImageError::Io {
            action: format!("reading the start of {what}"),
            source: e,
        })?
        .to_vec();
    match detect_compression(&head) {
        Compression::None => Ok(Box::new(reader)),
        Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(reader))),
        Compression::Zstd => Ok(Box::new(ZstdFrames::new(reader))),
    }
}

/// A zstd stream of one or more frames, skippable frames skipped (as the
/// `zstd` tool reads it); ruzstd's own streaming decoder stops after one.
pub(crate) struct ZstdFrames<R> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: io::BufRead> ZstdFrames<R> {
    pub(crate) fn new(source: R) -> Self {
        Self {
            source,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: io::BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                if self.decoder.can_collect() > 0 {
                    return self.decoder.read(buf);
                }
                if !self.decoder.is_finished() {
                    self.decoder
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                        .map_err(io::Error::other)?;
                    continue;
                }
                self.in_frame = false;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "zstd stream ends inside a skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

/// Unpacks the (possibly compressed) layer tar `reader` into `dst`, which
/// must exist and be empty. When `expected_diff_id` is given, a mismatch is
/// an error naming both digests.
pub(crate) fn unpack_layer<R: Read>(
    reader: R,
    dst: &Path,
    what: &str,
    expected_diff_id: Option<&str>,
) -> Result<Unpacked, ImageError> {
    let plain = decompressed(reader, what)?;
    let hashing = HashingReader::new(plain);
    let mut archive = tar::Archive::new(hashing);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let root = dst.canonicalize().map_err(|e| ImageError::Io {
        action: format!("resolving layer directory {}", dst.display()),
        source: e,
    })?;
    let io_err = |action: String| move |e: io::Error| ImageError::Io { action, source: e };
    let mut size = 0u64;
    let entries = archive
        .entries()
        .map_err(io_err(format!("reading tar entries of {what}")))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(format!("reading a tar entry of {what}")))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let rel = clean_path(&raw).ok_or_else(|| ImageError::PathEscape {
            layer: what.to_string(),
            entry: shown.clone(),
        })?;
        let Some(file_name) = rel.file_name().map(|n| n.to_os_string()) else {
            // The layer root itself ("./"): the directory already exists.
            continue;
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let file_name_str = file_name.to_string_lossy();
        let kind = entry.header().entry_type();

        if file_name_str == OPAQUE_MARKER {
            let dir = ensure_parent(&root, &parent_rel, what, &shown)?;
            set_xattr(&dir, OPAQUE_XATTR, b"y").map_err(io_err(format!(
                "marking {} opaque for {what}",
                dir.display()
            )))?;
            continue;
        }
        if let Some(hidden) = file_name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not content.
                continue;
            }
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(ImageError::PathEscape {
                    layer: what.to_string(),
                    entry: shown,
                });
            }
            let dir = ensure_parent(&root, &parent_rel, what, &shown)?;
            let target = dir.join(hidden);
            remove_non_dir(&target).map_err(io_err(format!("replacing {}", target.display())))?;
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| {
                ImageError::Io {
                    action: format!("creating whiteout {} for {what}", target.display()),
                    source: e.into(),
                }
            })?;
            let (uid, gid) = owner(&entry)?;
            lchown(&target, Some(uid), Some(gid))
                .map_err(io_err(format!("chown of whiteout {}", target.display())))?;
            continue;
        }

        match kind {
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let dir = ensure_parent(&root, &parent_rel, what, &shown)?;
                let target = dir.join(&file_name);
                remove_non_dir(&target)
                    .map_err(io_err(format!("replacing {}", target.display())))?;
                let header = entry.header();
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let mode = header.mode().unwrap_or(0o644) & 0o7777;
                mknod(
                    &target,
                    sflag,
                    Mode::from_bits_truncate(mode),
                    makedev(u64::from(major), u64::from(minor)),
                )
                .map_err(|e| ImageError::Io {
                    action: format!("creating device node {} for {what}", target.display()),
                    source: e.into(),
                })?;
                let (uid, gid) = owner(&entry)?;
                lchown(&target, Some(uid), Some(gid))
                    .map_err(io_err(format!("chown of {}", target.display())))?;
                // mknod applies the umask; set the exact mode afterwards.
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err(format!("chmod of {}", target.display())))?;
            }
            EntryType::Link => {
                let link_raw = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let link_rel = clean_path(&link_raw)
                    .filter(|p| p.file_name().is_some())
                    .ok_or_else(|| ImageError::PathEscape {
                        layer: what.to_string(),
                        entry: format!(
                            "{shown} (hard link to {})",
                            String::from_utf8_lossy(&link_raw)
                        ),
                    })?;
                let src_dir = inside(
                    &root,
                    link_rel.parent().unwrap_or(Path::new("")),
                    what,
                    &shown,
                )?;
                let src = src_dir.join(link_rel.file_name().unwrap_or_default());
                let dir = ensure_parent(&root, &parent_rel, what, &shown)?;
                let target = dir.join(&file_name);
                remove_non_dir(&target)
                    .map_err(io_err(format!("replacing {}", target.display())))?;
                fs::hard_link(&src, &target).map_err(io_err(format!(
                    "hard linking {} to {} for {what}",
                    target.display(),
                    src.display()
                )))?;
            }
            _ => {
                if kind == EntryType::Regular || kind == EntryType::Continuous {
                    size += entry.header().size().unwrap_or(0);
                }
                // Our own walk refuses symlink escapes with a clear error;
                // tar checks again (canonicalising the parent) as it writes.
                ensure_parent(&root, &parent_rel, what, &shown)?;
                let done = entry.unpack_in(&root).map_err(|e| {
                    if e.to_string().contains("outside of destination") {
                        ImageError::PathEscape {
                            layer: what.to_string(),
                            entry: shown.clone(),
                        }
                    } else {
                        // tar's error hides the OS error in its source;
                        // keep it in the message, it says what went wrong.
                        let mut msg = e.to_string();
                        let mut cause = std::error::Error::source(&e);
                        while let Some(c) = cause {
                            msg.push_str(&format!(": {c}"));
                            cause = c.source();
                        }
                        ImageError::Io {
                            action: format!("unpacking {shown} of {what}"),
                            source: std::io::Error::new(e.kind(), msg),
                        }
                    }
                })?;
                if !done {
                    return Err(ImageError::PathEscape {
                        layer: what.to_string(),
                        entry: shown,
                    });
                }
            }
        }
    }
    let hashing = archive.into_inner();
    let (diff_id, _) = hashing
        .finish()
        .map_err(io_err(format!("reading the end of {what}")))?;
    if let Some(expected) = expected_diff_id {
        if expected != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed {what}"),
                expected: expected.to_string(),
                actual: diff_id,
            });
        }
    }
    Ok(Unpacked { diff_id, size })
}

fn owner<R: Read>(entry: &tar::Entry<'_, R>) -> Result<(u32, u32), ImageError> {
    let h = entry.header();
    let uid = h
        .uid()
        .ok()
        .and_then(|u| u32::try_from(u).ok())
        .unwrap_or(0);
    let gid = h
        .gid()
        .ok()
        .and_then(|g| u32::try_from(g).ok())
        .unwrap_or(0);
    Ok((uid, gid))
}

/// The entry's path relative to the layer root, without `.`, leading `/` or
/// duplicate slashes; `None` when it contains `..`.
pub(crate) fn clean_path(raw: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return None,
            Component::Normal(p) => out.push(p),
        }
    }
    Some(out)
}

/// `root/rel` resolved through symlinks, refused unless it stays in `root`.
fn inside(root: &Path, rel: &Path, what: &str, entry: &str) -> Result<PathBuf, ImageError> {
    let p = root.join(rel);
    let canon = p.canonicalize().map_err(|e| ImageError::Io {
        action: format!(
            "resolving {} while unpacking {entry} of {what}",
            p.display()
        ),
        source: e,
    })?;
    if !canon.starts_with(root) {
        return Err(ImageError::PathEscape {
            layer: what.to_string(),
            entry: entry.to_string(),
        });
    }
    Ok(canon)
}

/// Creates the parent directories of an entry one at a time, checking at
/// each step that no symlink leads out of `root`; returns the canonical
/// parent.
fn ensure_parent(root: &Path, rel: &Path, what: &str, entry: &str) -> Result<PathBuf, ImageError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let next = cur.join(c);
        if fs::symlink_metadata(&next).is_err() {
            fs::create_dir(&next).map_err(|e| ImageError::Io {
                action: format!(
                    "creating {} while unpacking {entry} of {what}",
                    next.display()
                ),
                source: e,
            })?;
        }
        let canon = next.canonicalize().map_err(|e| ImageError::Io {
            action: format!(
                "resolving {} while unpacking {entry} of {what}",
                next.display()
            ),
            source: e,
        })?;
        if !canon.starts_with(root) {
            return Err(ImageError::PathEscape {
                layer: what.to_string(),
                entry: entry.to_string(),
            });
        }
        cur = canon;
    }
    Ok(cur)
}

fn remove_non_dir(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets an extended attribute on `path` itself (never through a symlink).
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let cname = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: both pointers come from live CStrings (NUL-terminated), and the
    // value pointer/length pair describes the borrowed `value` slice; the
    // kernel only reads them during the call.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path(b"./a/b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(
            clean_path(b"/etc//passwd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(clean_path(b"./").unwrap(), PathBuf::new());
        assert!(clean_path(b"a/../../etc").is_none());
        assert!(clean_path(b"..").is_none());
    }

    #[test]
    fn zstd_frames_are_all_read_and_skippable_frames_skipped() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let a: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"second frame".to_vec();
        let mut stream = compress_to_vec(&a[..], CompressionLevel::Fastest);
        // A skippable frame (magic 0x184D2A50, little-endian length), as
        // zstd:chunked writes them, between two data frames.
        stream.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        stream.extend_from_slice(&5u32.to_le_bytes());
        stream.extend_from_slice(b"skip!");
        stream.extend_from_slice(&compress_to_vec(&b[..], CompressionLevel::Uncompressed));
        let mut out = Vec::new();
        decompressed(&stream[..], "test stream")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        let mut want = a;
        want.extend_from_slice(&b);
        assert_eq!(out.len(), want.len());
        assert!(out == want);
        // Truncated: an error, not a short read passed off as the end.
        let cut = &stream[..stream.len() / 3];
        let mut out = Vec::new();
        assert!(decompressed(cut, "cut stream")
            .unwrap()
            .read_to_end(&mut out)
            .is_err());
    }

    #[test]
    fn compression_magic() {
        assert_eq!(detect_compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            detect_compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(detect_compression(b"usr/\0\0"), Compression::None);
        assert_eq!(detect_compression(b""), Compression::None);
    }
}
