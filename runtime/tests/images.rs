//! Image store tests against real files: archives are built here with the
//! `tar` crate (busybox from Debian's busybox-static as the payload), loaded
//! into a store in a unique temp dir, and the unpacked layers are checked on
//! disk — including mounting them with overlayfs to prove the whiteouts work.
//! Needs root (mknod, chown, trusted.* xattrs, mount).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flotilla_runtime::image::{HealthConfig, ImageConfig, ImageError, ImageStore, SaveFormat};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hexpart(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn busybox() -> Vec<u8> {
    fs::read("/bin/busybox").expect("busybox-static must be installed (/bin/busybox)")
}

/// One entry of a layer built by a test.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Owned(&'a str, &'a [u8], u64, u64, u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDev(&'a str, u32, u32),
    /// A path written raw into the header, bypassing the tar crate's checks.
    RawFile(&'a [u8]),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Owned(p, data, uid, gid, mode) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::HardLink(p, target) => {
                h.set_entry_type(EntryType::Link);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::CharDev(p, major, minor) => {
                h.set_entry_type(EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::RawFile(raw) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(5);
                let name = &mut h.as_gnu_mut().unwrap().name;
                name[..raw.len()].copy_from_slice(raw);
                h.set_cksum();
                b.append(&h, &b"pwned"[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A raw hard link entry whose link name is written verbatim.
fn raw_hardlink_layer(name: &str, target: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Link);
    h.set_mode(0o644);
    h.set_size(0);
    h.set_path(name).unwrap();
    h.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    b.into_inner().unwrap()
}

fn config_json(diff_ids: &[String], cmd: &[&str], marker: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-01T12:00:00Z",
        "config": {
            "Env": ["PATH=/bin", format!("MARKER={marker}")],
            "Cmd": cmd,
            "WorkingDir": "/",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"test": marker},
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 2_000_000_000u64, "Retries": 3}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": []
    }))
    .unwrap()
}

/// Appends a regular file to an outer archive.
fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, path, data).unwrap();
}

struct TestImage {
    layers: Vec<Vec<u8>>,
    tags: Vec<&'static str>,
    marker: &'static str,
}

impl TestImage {
    fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| sha(l)).collect()
    }
    fn config(&self) -> Vec<u8> {
        config_json(&self.diff_ids(), &["sh", "-c", "echo hi"], self.marker)
    }
}

/// `docker save` before Docker 25: `<id>/layer.tar`, `<config hex>.json`,
/// manifest.json and repositories; the second image's shared layer is a
/// symlink to the first one's, as docker writes it.
fn docker_save_legacy(images: &[TestImage]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut manifest = Vec::new();
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for img in images {
        let cfg = img.config();
        let cfg_name = format!("{}.json", hexpart(&sha(&cfg)));
        let mut layer_paths = Vec::new();
        for (i, l) in img.layers.iter().enumerate() {
            let diff = sha(l);
            let dir = format!("{}{}", &hexpart(&diff)[..20], i);
            let path = format!("{dir}/layer.tar");
            if let Some(first) = written.get(&diff) {
                let mut h = Header::new_gnu();
                h.set_entry_type(EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, &path, format!("../{first}")).unwrap();
            } else {
                add(&mut b, &path, l);
                written.insert(diff, path.clone());
            }
            add(&mut b, &format!("{dir}/VERSION"), b"1.0");
            layer_paths.push(path);
        }
        add(&mut b, &cfg_name, &cfg);
        manifest.push(serde_json::json!({
            "Config": cfg_name, "RepoTags": img.tags, "Layers": layer_paths
        }));
    }
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    add(&mut b, "repositories", b"{}");
    b.into_inner().unwrap()
}

/// An OCI image layout (optionally with Docker 25's manifest.json beside
/// it). Layers are gzip-compressed when `gz`. Returns (archive, manifest
/// digests).
fn oci_layout(images: &[TestImage], gz: bool, docker_manifest: bool) -> (Vec<u8>, Vec<String>) {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut index = Vec::new();
    let mut docker = Vec::new();
    let mut digests = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for img in images {
        let cfg = img.config();
        let mut descs = Vec::new();
        let mut paths = Vec::new();
        for l in &img.layers {
            let blob = if gz { gzip(l) } else { l.clone() };
            let d = sha(&blob);
            if seen.insert(d.clone()) {
                add(&mut b, &format!("blobs/sha256/{}", hexpart(&d)), &blob);
            }
            paths.push(format!("blobs/sha256/{}", hexpart(&d)));
            let mt = if gz {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
        }
        add(
            &mut b,
            &format!("blobs/sha256/{}", hexpart(&sha(&cfg))),
            &cfg,
        );
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&cfg), "size": cfg.len()},
            "layers": descs
        }))
        .unwrap();
        let md = sha(&manifest);
        add(&mut b, &format!("blobs/sha256/{}", hexpart(&md)), &manifest);
        let mut ann = serde_json::Map::new();
        if let Some(t) = img.tags.first() {
            ann.insert("org.opencontainers.image.ref.name".into(), (*t).into());
        }
        index.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": manifest.len(), "annotations": ann
        }));
        docker.push(serde_json::json!({
            "Config": format!("blobs/sha256/{}", hexpart(&sha(&cfg))),
            "RepoTags": img.tags, "Layers": paths
        }));
        digests.push(md);
    }
    add(
        &mut b,
        "index.json",
        &serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": index})).unwrap(),
    );
    if docker_manifest {
        add(
            &mut b,
            "manifest.json",
            &serde_json::to_vec(&docker).unwrap(),
        );
    }
    (b.into_inner().unwrap(), digests)
}

/// The two-layer image of the whiteout tests.
fn whiteout_image(bb: &[u8]) -> TestImage {
    let l1 = layer(&[
        E::Dir("bin"),
        E::File("bin/busybox", bb),
        E::Symlink("bin/sh", "busybox"),
        E::HardLink("bin/ls", "bin/busybox"),
        E::Dir("dev"),
        E::CharDev("dev/null", 1, 3),
        E::Dir("etc"),
        E::File("etc/hello", b"hello\n"),
        E::File("etc/gone", b"to be whited out\n"),
        E::Owned("etc/suid", b"x", 1000, 1001, 0o4755),
        E::Dir("opt"),
        E::Dir("opt/dir"),
        E::File("opt/dir/a", b"a\n"),
    ]);
    let l2 = layer(&[
        E::Dir("etc"),
        E::File("etc/.wh.gone", b""),
        E::Dir("opt/dir"),
        E::File("opt/dir/.wh..wh..opq", b""),
        E::File("opt/dir/b", b"b\n"),
    ]);
    TestImage {
        layers: vec![l1, l2],
        tags: vec!["busybox:latest", "registry:5000/x:1"],
        marker: "whiteout",
    }
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 64];
    // SAFETY: p and n are NUL-terminated CStrings alive for the call; buf is
    // a writable buffer of the length passed.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// Unmounts (lazily) on drop, so a failing assert leaves no mount behind.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn files_under(dir: &Path) -> usize {
    fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn docker_save_legacy_loads_resolves_and_unpacks_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let bb = busybox();
    let img = whiteout_image(&bb);
    let diff_ids = img.diff_ids();
    let loaded = store.load_archive(&docker_save_legacy(&[img])[..]).unwrap();
    assert_eq!(loaded.len(), 1);
    let image = &loaded[0];
    assert_eq!(
        image.references,
        vec!["busybox:latest", "registry:5000/x:1"]
    );
    assert_eq!(image.diff_ids, diff_ids);
    assert!(image.id.starts_with("sha256:"));
    assert!(image.size >= bb.len() as u64);
    assert_eq!(image.created.as_deref(), Some("2024-05-01T12:00:00Z"));
    assert_eq!(
        image.config.cmd,
        Some(vec!["sh".into(), "-c".into(), "echo hi".into()])
    );
    assert_eq!(image.config.exposed_ports, vec!["8080/tcp".to_string()]);
    assert_eq!(
        image.config.healthcheck,
        Some(HealthConfig {
            test: vec!["CMD".into(), "true".into()],
            interval_ns: Some(2_000_000_000),
            retries: Some(3),
            ..Default::default()
        })
    );

    let hex = hexpart(&image.id).to_string();
    for r in [
        "busybox".to_string(),
        "busybox:latest".to_string(),
        "docker.io/library/busybox:latest".to_string(),
        "library/busybox".to_string(),
        "registry:5000/x:1".to_string(),
        image.id.clone(),
        hex.clone(),
        hex[..12].to_string(),
        format!("sha256:{}", &hex[..8]),
        format!("busybox@{}", image.manifest_digest),
    ] {
        let got = store.resolve(&r).unwrap();
        assert_eq!(
            got.as_ref().map(|i| &i.id),
            Some(&image.id),
            "resolving {r}"
        );
    }
    assert_eq!(store.resolve("busybox:1.0").unwrap(), None);
    assert_eq!(store.resolve("registry:5000/x").unwrap(), None);
    assert_eq!(store.resolve("other").unwrap(), None);
    assert!(store.resolve("Bad Name").is_err());
    assert_eq!(store.list().unwrap(), loaded);

    let dirs = store.layer_dirs(image).unwrap();
    assert_eq!(dirs.len(), 2);
    let (l1, l2) = (&dirs[0], &dirs[1]);
    assert!(l1.ends_with(hexpart(&diff_ids[0])));
    // Layer 1: links, devices, ownership and modes as in the tar.
    assert_eq!(fs::read(l1.join("bin/busybox")).unwrap(), bb);
    assert_eq!(
        fs::read_link(l1.join("bin/sh")).unwrap(),
        PathBuf::from("busybox")
    );
    assert_eq!(
        fs::metadata(l1.join("bin/ls")).unwrap().ino(),
        fs::metadata(l1.join("bin/busybox")).unwrap().ino()
    );
    let null = fs::symlink_metadata(l1.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o666);
    let suid = fs::metadata(l1.join("etc/suid")).unwrap();
    assert_eq!((suid.uid(), suid.gid()), (1000, 1001));
    assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
    // Layer 2: overlayfs whiteout and opaque dir, no .wh. files left.
    let wh = fs::symlink_metadata(l2.join("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!l2.join("etc/.wh.gone").exists());
    assert!(!l2.join("opt/dir/.wh..wh..opq").exists());
    assert_eq!(
        get_xattr(&l2.join("opt/dir"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(get_xattr(&l2.join("etc"), "trusted.overlay.opaque"), None);

    // And overlayfs reads them as whiteouts: the proof that matters.
    let upper = tmp.path().join("upper");
    let work = tmp.path().join("work");
    let merged = tmp.path().join("merged");
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l2.display(),
        l1.display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .unwrap();
    let _m = Mount(merged.clone());
    assert_eq!(fs::read(merged.join("etc/hello")).unwrap(), b"hello\n");
    assert!(!merged.join("etc/gone").exists());
    assert!(!merged.join("opt/dir/a").exists());
    assert_eq!(fs::read(merged.join("opt/dir/b")).unwrap(), b"b\n");
    assert!(merged.join("bin/busybox").exists());
}

#[test]
fn docker_save_with_oci_index_keeps_real_manifest_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    let img = TestImage {
        layers: vec![layer(&[E::File("hello", b"hi")])],
        tags: vec!["app:2"],
        marker: "new-docker",
    };
    let (archive, digests) = oci_layout(&[img], false, true);
    let loaded = store.load_archive(&archive[..]).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].references, vec!["app:2"]);
    assert_eq!(loaded[0].manifest_digest, digests[0]);
    assert!(store.blob_path(&digests[0]).unwrap().is_file());
    let dirs = store.layer_dirs(&loaded[0]).unwrap();
    assert_eq!(fs::read(dirs[0].join("hello")).unwrap(), b"hi");
}

#[test]
fn oci_layout_with_gzip_layers_loads_from_gzip_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    let bb = busybox();
    let img = TestImage {
        layers: vec![
            layer(&[E::Dir("bin"), E::File("bin/busybox", &bb)]),
            layer(&[E::Dir("etc"), E::File("etc/os-release", b"ID=test\n")]),
        ],
        tags: vec!["localhost:5000/oci/app:v1"],
        marker: "oci",
    };
    let diff_ids = img.diff_ids();
    let (archive, digests) = oci_layout(&[img], true, false);
    let loaded = store.load_archive(&gzip(&archive)[..]).unwrap();
    assert_eq!(loaded.len(), 1);
    let image = &loaded[0];
    assert_eq!(image.references, vec!["localhost:5000/oci/app:v1"]);
    assert_eq!(image.manifest_digest, digests[0]);
    assert_eq!(image.diff_ids, diff_ids);
    let dirs = store.layer_dirs(image).unwrap();
    assert_eq!(fs::read(dirs[0].join("bin/busybox")).unwrap(), bb);
    assert_eq!(
        fs::read(dirs[1].join("etc/os-release")).unwrap(),
        b"ID=test\n"
    );
    assert_eq!(
        store
            .resolve("localhost:5000/oci/app:v1")
            .unwrap()
            .map(|i| i.id),
        Some(image.id.clone())
    );
    // Loading the same archive again is idempotent.
    let again = store.load_archive(&archive[..]).unwrap();
    assert_eq!(again[0].id, image.id);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn import_rootfs_with_config_persists() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let bb = busybox();
    let rootfs = gzip(&layer(&[
        E::Dir("./"),
        E::Dir("./bin"),
        E::File("./bin/busybox", &bb),
        E::Symlink("./bin/sh", "busybox"),
    ]));
    let config = ImageConfig {
        entrypoint: Some(vec!["/bin/busybox".into()]),
        cmd: Some(vec!["sh".into()]),
        env: vec!["PATH=/bin".into()],
        user: "0:0".into(),
        working_dir: "/".into(),
        healthcheck: Some(HealthConfig {
            test: vec!["CMD".into(), "/bin/busybox".into(), "true".into()],
            interval_ns: Some(1_000_000_000),
            timeout_ns: Some(500_000_000),
            start_period_ns: None,
            start_interval_ns: None,
            retries: Some(2),
        }),
        stop_signal: "SIGINT".into(),
        exposed_ports: vec!["80/tcp".into()],
        labels: [("org.test".to_string(), "yes".to_string())].into(),
        volumes: vec!["/data".into()],
        os: String::new(),
        architecture: String::new(),
    };
    let image = {
        let store = ImageStore::open(&root).unwrap();
        store
            .import_rootfs(&rootfs[..], "myimport:1", config.clone())
            .unwrap()
    };
    assert_eq!(image.references, vec!["myimport:1"]);
    assert_eq!(image.config.os, "linux");
    assert!(!image.config.architecture.is_empty());
    let mut expected = config;
    expected.os = "linux".into();
    expected.architecture = image.config.architecture.clone();
    assert_eq!(image.config, expected);
    assert_eq!(image.diff_ids.len(), 1);
    assert!(image.created.is_some());

    // A fresh handle on the same root sees it.
    let store = ImageStore::open(&root).unwrap();
    let found = store
        .resolve("docker.io/library/myimport:1")
        .unwrap()
        .unwrap();
    assert_eq!(found, image);
    let dirs = store.layer_dirs(&found).unwrap();
    assert_eq!(fs::read(dirs[0].join("bin/busybox")).unwrap(), bb);
    // The stored config blob hashes to the image id.
    let cfg = fs::read(store.blob_path(&image.id).unwrap()).unwrap();
    assert_eq!(sha(&cfg), image.id);

    // A layer dir lost (e.g. deleted by hand) is unpacked again from its blob.
    fs::remove_dir_all(&dirs[0]).unwrap();
    let dirs = store.layer_dirs(&found).unwrap();
    assert_eq!(fs::read(dirs[0].join("bin/busybox")).unwrap(), bb);

    assert!(matches!(
        store.import_rootfs(&rootfs[..], "Not/Valid", ImageConfig::default()),
        Err(ImageError::InvalidReference { .. })
    ));
}

#[test]
fn remove_untags_then_deletes_but_keeps_shared_content() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    let shared = layer(&[E::File("shared", b"base")]);
    let a = TestImage {
        layers: vec![shared.clone(), layer(&[E::File("only-a", b"a")])],
        tags: vec!["a:1", "a:2"],
        marker: "a",
    };
    let b = TestImage {
        layers: vec![shared.clone(), layer(&[E::File("only-b", b"b")])],
        tags: vec!["b:1"],
        marker: "b",
    };
    let loaded = store
        .load_archive(&docker_save_legacy(&[a, b])[..])
        .unwrap();
    assert_eq!(loaded.len(), 2);
    let (ia, ib) = (&loaded[0], &loaded[1]);
    let a_dirs = store.layer_dirs(ia).unwrap();
    let b_dirs = store.layer_dirs(ib).unwrap();
    assert_eq!(a_dirs[0], b_dirs[0], "the shared layer is unpacked once");
    let blob = |d: &str| store.blob_path(d).unwrap();

    let err = store.remove("nosuch:1").unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }));
    assert!(err.to_string().contains("nosuch:1"), "{err}");

    assert_eq!(
        store.remove("a:1").unwrap(),
        vec!["Untagged: a:1".to_string()]
    );
    assert_eq!(store.resolve("a:1").unwrap(), None);
    assert_eq!(
        store.resolve("a:2").unwrap().unwrap().references,
        vec!["a:2"]
    );
    assert!(a_dirs[1].is_dir());

    let out = store.remove("a:2").unwrap();
    assert_eq!(
        out,
        vec!["Untagged: a:2".to_string(), format!("Deleted: {}", ia.id)]
    );
    assert!(!a_dirs[1].exists(), "a's own layer is gone");
    assert!(
        !blob(&ia.diff_ids[1]).exists(),
        "a's own layer blob is gone"
    );
    assert!(!blob(&ia.id).exists(), "a's config blob is gone");
    assert!(!blob(&ia.manifest_digest).exists(), "a's manifest is gone");
    assert!(a_dirs[0].is_dir(), "the layer b shares is kept");
    assert!(blob(&ia.diff_ids[0]).exists(), "the blob b shares is kept");
    assert_eq!(fs::read(b_dirs[0].join("shared")).unwrap(), b"base");
    assert!(store.resolve(&ia.id).unwrap().is_none());

    // By id: all tags go and the image with them.
    let out = store.remove(&hexpart(&ib.id)[..10]).unwrap();
    assert_eq!(
        out,
        vec!["Untagged: b:1".to_string(), format!("Deleted: {}", ib.id)]
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(files_under(&tmp.path().join("layers")), 0);
    assert_eq!(files_under(&tmp.path().join("blobs/sha256")), 0);
    assert_eq!(files_under(&tmp.path().join("tmp")), 0);
}

#[test]
fn retagging_moves_the_tag_and_ambiguous_prefixes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    let mk = |marker| TestImage {
        layers: vec![layer(&[E::File("f", b"x")])],
        tags: vec!["same:latest"],
        marker,
    };
    let first = store
        .load_archive(&docker_save_legacy(&[mk("one")])[..])
        .unwrap();
    let second = store
        .load_archive(&docker_save_legacy(&[mk("two")])[..])
        .unwrap();
    assert_ne!(first[0].id, second[0].id);
    assert_eq!(store.resolve("same").unwrap().unwrap().id, second[0].id);
    let old = store.resolve(&first[0].id).unwrap().unwrap();
    assert!(
        old.references.is_empty(),
        "the older image is left dangling"
    );
    // A prefix of 0 hex characters in common matches nothing; "sha256:" with
    // too short a prefix is an error, not a guess.
    assert!(store.resolve("sha256:ab").is_err());
    let common: usize = hexpart(&first[0].id)
        .bytes()
        .zip(hexpart(&second[0].id).bytes())
        .take_while(|(a, b)| a == b)
        .count();
    if common >= 4 {
        let prefix = &hexpart(&first[0].id)[..common];
        assert!(matches!(
            store.resolve(prefix),
            Err(ImageError::Ambiguous { .. })
        ));
    }
}

#[test]
fn corrupted_blobs_are_refused_naming_the_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    let l = layer(&[E::File("data", b"original")]);
    let img = TestImage {
        layers: vec![l.clone()],
        tags: vec!["corrupt:1"],
        marker: "c",
    };

    // OCI layout: a layer blob whose content does not match its name.
    let (archive, _) = oci_layout(&[img], false, false);
    let good_hex = hexpart(&sha(&l)).to_string();
    let tampered = retamper(&archive, &format!("blobs/sha256/{good_hex}"));
    let err = store.load_archive(&tampered[..]).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&good_hex), "{err}");

    // Legacy docker save: a layer.tar that is not the diff id its config says.
    let img = TestImage {
        layers: vec![l.clone()],
        tags: vec!["corrupt:2"],
        marker: "c2",
    };
    let archive = docker_save_legacy(&[img]);
    let path = format!("{}0/layer.tar", &good_hex[..20]);
    let tampered = retamper(&archive, &path);
    let err = store.load_archive(&tampered[..]).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&good_hex), "{err}");

    // Nothing of either attempt was kept.
    assert!(store.list().unwrap().is_empty());
    assert_eq!(files_under(&tmp.path().join("blobs/sha256")), 0);
    assert_eq!(files_under(&tmp.path().join("layers")), 0);
    assert_eq!(files_under(&tmp.path().join("tmp")), 0);
}

/// Rewrites an outer archive with one file's content altered (same size).
fn retamper(archive: &[u8], target: &str) -> Vec<u8> {
    let mut a = tar::Archive::new(archive);
    let mut b = tar::Builder::new(Vec::new());
    let mut found = false;
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if e.path().unwrap().to_str() == Some(target) {
            // Flip a byte inside the file content of the inner tar.
            let pos = 512 + 2;
            data[pos] ^= 0x20;
            found = true;
        }
        b.append(&h, &data[..]).unwrap();
    }
    assert!(found, "{target} not in archive");
    b.into_inner().unwrap()
}

#[test]
fn path_traversal_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();

    let dotdot = layer(&[E::File("ok", b"fine"), E::RawFile(b"../../../outside/evil")]);
    let err = store
        .import_rootfs(&dotdot[..], "evil:1", ImageConfig::default())
        .unwrap_err();
    assert!(matches!(err, ImageError::PathEscape { .. }), "{err}");
    assert!(err.to_string().contains("../../../outside/evil"), "{err}");

    // A symlink to an absolute host path, then a write through it.
    let through_symlink = layer(&[
        E::Symlink("link", outside.to_str().unwrap()),
        E::File("link/evil", b"pwned"),
    ]);
    let err = store
        .import_rootfs(&through_symlink[..], "evil:2", ImageConfig::default())
        .unwrap_err();
    assert!(matches!(err, ImageError::PathEscape { .. }), "{err}");

    // Relative symlink climbing out, then a whiteout through it.
    let wh_through = layer(&[
        E::Symlink("up", "../../../../../../.."),
        E::File("up/.wh.victim", b""),
    ]);
    assert!(store
        .import_rootfs(&wh_through[..], "evil:3", ImageConfig::default())
        .is_err());

    let hard = raw_hardlink_layer("passwd", b"../../../../etc/passwd");
    let err = store
        .import_rootfs(&hard[..], "evil:4", ImageConfig::default())
        .unwrap_err();
    assert!(matches!(err, ImageError::PathEscape { .. }), "{err}");

    // In an archive: the good first layer is not kept when the second fails.
    let img = TestImage {
        layers: vec![
            layer(&[E::File("fine", b"ok")]),
            layer(&[E::RawFile(b"a/../../b")]),
        ],
        tags: vec!["evil:5"],
        marker: "evil",
    };
    let err = store
        .load_archive(&docker_save_legacy(&[img])[..])
        .unwrap_err();
    assert!(matches!(err, ImageError::PathEscape { .. }), "{err}");

    assert_eq!(files_under(&outside), 0, "nothing was written outside");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(files_under(&tmp.path().join("store/layers")), 0);
    assert_eq!(files_under(&tmp.path().join("store/blobs/sha256")), 0);
    assert_eq!(files_under(&tmp.path().join("store/tmp")), 0);
}

#[test]
fn concurrent_loads_into_one_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(ImageStore::open(tmp.path()).unwrap());
    let shared = layer(&[E::File("shared", b"s")]);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            let shared = shared.clone();
            std::thread::spawn(move || {
                let tag: &'static str = Box::leak(format!("c:{i}").into_boxed_str());
                let marker: &'static str = Box::leak(format!("m{i}").into_boxed_str());
                let img = TestImage {
                    layers: vec![shared, layer(&[E::File("own", marker.as_bytes())])],
                    tags: vec![tag],
                    marker,
                };
                store.load_archive(&docker_save_legacy(&[img])[..]).unwrap()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let all = store.list().unwrap();
    assert_eq!(all.len(), 4);
    for i in 0..4 {
        let img = store.resolve(&format!("c:{i}")).unwrap().unwrap();
        let dirs = store.layer_dirs(&img).unwrap();
        assert_eq!(
            fs::read(dirs[1].join("own")).unwrap(),
            format!("m{i}").as_bytes()
        );
    }
}

/// Archives written by a real implementation (skopeo, installed on the
/// project's machines) load: OCI archive with gzip layers, and skopeo's own
/// docker-archive flavour.
#[test]
fn skopeo_written_archives_load() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let bb = busybox();
    let img = whiteout_image(&bb);
    let diff_ids = img.diff_ids();
    let src = tmp.path().join("src.tar");
    fs::write(&src, docker_save_legacy(&[img])).unwrap();
    let skopeo = |dst: String| {
        let out = std::process::Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!("docker-archive:{}", src.display()))
            .arg(&dst)
            .output()
            .expect("skopeo must be installed");
        assert!(
            out.status.success(),
            "skopeo copy to {dst}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let oci = tmp.path().join("oci.tar");
    skopeo(format!("oci-archive:{}:localhost/sk/oci:1", oci.display()));
    let dock = tmp.path().join("docker.tar");
    skopeo(format!(
        "docker-archive:{}:localhost/sk/docker:2",
        dock.display()
    ));

    let a = store.load_archive(fs::File::open(&oci).unwrap()).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].references, vec!["localhost/sk/oci:1"]);
    assert_eq!(a[0].diff_ids, diff_ids);
    let b = store.load_archive(fs::File::open(&dock).unwrap()).unwrap();
    assert_eq!(b[0].references, vec!["localhost/sk/docker:2"]);
    assert_eq!(b[0].diff_ids, diff_ids);
    let dirs = store.layer_dirs(&a[0]).unwrap();
    assert!(fs::symlink_metadata(dirs[1].join("etc/gone"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(fs::read(dirs[0].join("bin/busybox")).unwrap(), bb);
}

#[test]
fn tag_prune_and_oci_save() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("s")).unwrap();
    let shared = layer(&[E::File("shared", b"base")]);
    let mk = |marker, tags, own: &[u8]| TestImage {
        layers: vec![shared.clone(), layer(&[E::File("own", own)])],
        tags,
        marker,
    };
    let a = store
        .load_archive(&docker_save_legacy(&[mk("a", vec!["a:1"], b"a")])[..])
        .unwrap()
        .remove(0);
    let b = store
        .load_archive(&docker_save_legacy(&[mk("b", vec!["b:1"], b"b")])[..])
        .unwrap()
        .remove(0);

    // tag: a second name; unknown sources and digest targets are refused.
    let t = store.tag("a:1", "registry.test:5000/team/a:2").unwrap();
    assert_eq!(t.id, a.id);
    assert_eq!(t.references, vec!["a:1", "registry.test:5000/team/a:2"]);
    let e = store.tag("nosuch:1", "x:1").unwrap_err();
    assert!(matches!(e, ImageError::NotFound { .. }), "{e}");
    assert!(store
        .tag("a:1", &format!("x@sha256:{}", "0".repeat(64)))
        .is_err());
    // read_blob gives the stored config and manifest, byte for byte.
    assert_eq!(sha(&store.read_blob(&a.id).unwrap()), a.id);
    assert_eq!(
        sha(&store.read_blob(&a.manifest_digest).unwrap()),
        a.manifest_digest
    );

    // Moving b's only tag to a leaves b dangling.
    store.tag("a:1", "b:1").unwrap();
    assert!(store.resolve(&b.id).unwrap().unwrap().references.is_empty());

    // prune (dangling only) never deletes an image in use.
    let in_use: std::collections::BTreeSet<String> = [b.id.clone()].into();
    let (out, freed) = store.prune(false, &in_use).unwrap();
    assert!(out.is_empty() && freed == 0, "{out:?}");
    let (out, freed) = store.prune(false, &Default::default()).unwrap();
    assert_eq!(out, vec![format!("Deleted: {}", b.id)]);
    assert!(freed > 0);
    assert!(store.resolve(&b.id).unwrap().is_none());
    let a_dirs = store.layer_dirs(&a).unwrap();
    assert!(a_dirs.iter().all(|d| d.is_dir()), "a's layers are kept");
    assert!(
        store.resolve("a:1").unwrap().is_some(),
        "tagged images stay"
    );

    // OCI layout save: no docker files, loads back to the same image.
    let mut oci = Vec::new();
    store.save_as(&["a:1"], SaveFormat::Oci, &mut oci).unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(&oci[..]).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.contains(&"index.json".to_string()), "{names:?}");
    assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
    assert!(!names.contains(&"manifest.json".to_string()), "{names:?}");
    let fresh = ImageStore::open(&tmp.path().join("fresh")).unwrap();
    let back = fresh.load_archive(&oci[..]).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].id, a.id);
    assert_eq!(back[0].manifest_digest, a.manifest_digest);

    // prune --all: every image not in use, with its tags.
    let in_use: std::collections::BTreeSet<String> = [a.id.clone()].into();
    let (out, _) = store.prune(true, &in_use).unwrap();
    assert!(out.is_empty(), "{out:?}");
    let (out, freed) = store.prune(true, &Default::default()).unwrap();
    assert!(out.contains(&format!("Deleted: {}", a.id)), "{out:?}");
    assert!(out.contains(&"Untagged: a:1".to_string()), "{out:?}");
    assert!(freed > 0);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(files_under(&tmp.path().join("s/layers")), 0);
    assert_eq!(files_under(&tmp.path().join("s/blobs/sha256")), 0);
}
