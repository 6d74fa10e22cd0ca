//! Registry pull/push and `save` against real registries: each test starts
//! its own Debian `docker-registry` (distribution 2.8) process on a free
//! loopback port with a config and storage in a temp dir, killed on drop.
//! Images are built offline from /bin/busybox (busybox-static); skopeo
//! pushes the multi-arch index and checks saved archives. The bearer test
//! runs the registry's real token auth against a token server written here
//! (RS256 JWTs signed with `openssl`, certificate made with `openssl`).
//!
//! Needs root (the store unpacks layers with mknod/chown). Skips, saying
//! why, when docker-registry, skopeo, htpasswd or openssl is missing.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use flotilla_runtime::image::{
    Credential, Image, ImageError, ImageStore, Progress, ProgressEvent, PullOptions, PushOptions,
};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hexpart(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

fn have(tool: &str, why: &str) -> bool {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !found {
        eprintln!(
            "SKIPPED: {tool} is not installed ({why}); lead: add its Debian package to scripts/install-deps.sh"
        );
    }
    found
}

fn have_registry() -> bool {
    have(REGISTRY_BIN, "package docker-registry") && have("skopeo", "package skopeo")
}

// ---------- images built offline ----------

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, path, data).unwrap();
}

fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, path, &[][..]).unwrap();
}

/// Layer 1: busybox and `sh`; layer 2: a marker file.
fn layers(marker: &str) -> Vec<Vec<u8>> {
    let bb = fs::read("/bin/busybox").expect("busybox-static must be installed (/bin/busybox)");
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "bin");
    file(&mut b, "bin/busybox", &bb, 0o755);
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_link(&mut h, "bin/sh", "busybox").unwrap();
    let l1 = b.into_inner().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "etc");
    file(&mut b, "etc/marker", marker.as_bytes(), 0o644);
    vec![l1, b.into_inner().unwrap()]
}

fn config(layers: &[Vec<u8>], arch: &str, marker: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "created": "2024-05-01T12:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"marker": marker}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// A legacy `docker save` archive of one image.
fn docker_archive(marker: &str, tag: &str) -> Vec<u8> {
    let ls = layers(marker);
    let cfg = config(&ls, "amd64", marker);
    let mut b = tar::Builder::new(Vec::new());
    let mut paths = Vec::new();
    for (i, l) in ls.iter().enumerate() {
        let p = format!("l{i}/layer.tar");
        file(&mut b, &p, l, 0o644);
        paths.push(p);
    }
    let cfg_name = format!("{}.json", hexpart(&sha(&cfg)));
    file(&mut b, &cfg_name, &cfg, 0o644);
    let m = serde_json::json!([{"Config": cfg_name, "RepoTags": [tag], "Layers": paths}]);
    file(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&m).unwrap(),
        0o644,
    );
    b.into_inner().unwrap()
}

/// An OCI layout directory whose index lists a linux/amd64 and a
/// linux/arm64 image (gzip layers), for `skopeo copy --all`.
fn multi_arch_layout(dir: &Path) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha(bytes);
        fs::write(blobs.join(hexpart(&d)), bytes).unwrap();
        d
    };
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let ls = layers(arch);
        let mut descs = Vec::new();
        for l in &ls {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(l).unwrap();
            let gz = e.finish().unwrap();
            let d = put(&gz);
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()
            }));
        }
        let cfg = config(&ls, arch, arch);
        let cd = put(&cfg);
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
            "layers": descs
        }))
        .unwrap();
        let md = put(&m);
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": m.len(),
            "platform": {"os": "linux", "architecture": arch}
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries
    }))
    .unwrap();
    let id = put(&index);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id,
                           "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
        }))
        .unwrap(),
    )
    .unwrap();
}

fn marker_of(store: &ImageStore, img: &Image) -> String {
    let dirs = store.layer_dirs(img).unwrap();
    String::from_utf8(fs::read(dirs[1].join("etc/marker")).unwrap()).unwrap()
}

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------- the registry process ----------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` process of this test, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    /// Starts a registry storing under `dir`, with `auth_yaml` (indented
    /// YAML for the `auth:` key, or empty).
    fn start(dir: &Path, auth_yaml: &str) -> Registry {
        let port = free_port();
        let storage = dir.join("registry-storage");
        fs::create_dir_all(&storage).unwrap();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if !auth_yaml.is_empty() {
            cfg.push_str("auth:\n");
            cfg.push_str(auth_yaml);
        }
        let cfg_path = dir.join("registry.yml");
        fs::write(&cfg_path, cfg).unwrap();
        let log = dir.join("registry.log");
        let logf = fs::File::create(&log).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut reg = Registry { child, port, log };
        // Readiness, not timing: wait (bounded) until it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = reg.child.try_wait() {
                panic!("docker-registry exited with {st}: {}", reg.logs());
            }
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                reg.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn auth_file(dir: &Path, host: &str, user: &str, pass: &str) -> PathBuf {
    let p = dir.join(format!("auth-{user}-{pass}.json"));
    let a = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    fs::write(
        &p,
        serde_json::to_vec(&serde_json::json!({"auths": {host: {"auth": a}}})).unwrap(),
    )
    .unwrap();
    p
}

/// A store holding the busybox test image tagged `tag`.
fn store_with_image(root: &Path, marker: &str, tag: &str) -> (ImageStore, Image) {
    let store = ImageStore::open(root).unwrap();
    let img = store
        .load_archive(&docker_archive(marker, tag)[..])
        .unwrap()
        .remove(0);
    (store, img)
}

// ---------- tests ----------

#[test]
fn push_then_pull_into_a_fresh_store() {
    if !have_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path(), "");
    let (src, img) = store_with_image(&tmp.path().join("src"), "plain", "bb:1");
    let target = format!("{}/test/bb:1", reg.host());
    let pushed = src.push("bb:1", &target, &PushOptions::default()).unwrap();
    assert_eq!(
        pushed, img.manifest_digest,
        "the stored manifest is pushed byte for byte"
    );

    let dst = ImageStore::open(&tmp.path().join("dst")).unwrap();
    let got = dst.pull(&target, &PullOptions::default()).unwrap();
    assert_eq!(got.id, img.id, "same config digest");
    assert_eq!(got.manifest_digest, pushed);
    assert_eq!(got.diff_ids, img.diff_ids);
    assert_eq!(got.config, img.config);
    assert_eq!(got.references, vec![target.clone()]);
    assert_eq!(marker_of(&dst, &got), "plain");
    let bb = dst.layer_dirs(&got).unwrap()[0].join("bin/busybox");
    assert_eq!(fs::read(bb).unwrap(), fs::read("/bin/busybox").unwrap());
    assert_eq!(dst.resolve(&target).unwrap().unwrap().id, img.id);

    // By digest: no new tag, same image; pulling again changes nothing.
    let by_digest = format!("{}/test/bb@{pushed}", reg.host());
    let again = dst.pull(&by_digest, &PullOptions::default()).unwrap();
    assert_eq!(again.id, img.id);
    assert_eq!(dst.list().unwrap().len(), 1);

    // From inside spawn_blocking of a multi-thread runtime (the agent's
    // case); skopeo's push recompresses the layers (gzip), so the manifest
    // differs from ours but the image id does not.
    let skopeo_target = format!("{}/test/bb:gz", reg.host());
    let archive = tmp.path().join("bb.tar");
    fs::write(&archive, docker_archive("plain", "bb:1")).unwrap();
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-compress",
        &format!("docker-archive:{}", archive.display()),
        &format!("docker://{skopeo_target}"),
    ]);
    let dst2 = Arc::new(ImageStore::open(&tmp.path().join("dst2")).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (s, t) = (dst2.clone(), skopeo_target.clone());
    let gz = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || s.pull(&t, &PullOptions::default())).await
        })
        .unwrap()
        .unwrap();
    assert_eq!(gz.id, img.id);
    assert_ne!(gz.manifest_digest, img.manifest_digest);
    assert_eq!(marker_of(&dst2, &gz), "plain");
    // The manifest stored is the registry's, byte for byte.
    let m = fs::read(dst2.blob_path(&gz.manifest_digest).unwrap()).unwrap();
    assert_eq!(sha(&m), gz.manifest_digest);
    assert!(String::from_utf8_lossy(&m).contains("gzip"));

    // Unknown tags and unreachable registries fail naming what was asked.
    let err = dst
        .pull(
            &format!("{}/test/bb:nope", reg.host()),
            &PullOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains(&reg.host()), "{err}");
    assert!(err.to_string().contains("bb:nope"), "{err}");
    let dead = format!("127.0.0.1:{}/x:1", free_port());
    let err = dst
        .pull(
            &dead,
            &PullOptions {
                retries: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
}

#[test]
fn multi_arch_index_selects_the_platform() {
    if !have_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path(), "");
    let layout = tmp.path().join("layout");
    multi_arch_layout(&layout);
    let target = format!("{}/multi/app:1", reg.host());
    skopeo(&[
        "copy",
        "--quiet",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{target}"),
    ]);

    let amd = ImageStore::open(&tmp.path().join("amd")).unwrap();
    let a = amd
        .pull(
            &target,
            &PullOptions {
                platform: Some("linux/amd64".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.config.architecture, "amd64");
    assert_eq!(marker_of(&amd, &a), "amd64");
    if std::env::consts::ARCH == "x86_64" {
        let d = ImageStore::open(&tmp.path().join("default")).unwrap();
        let def = d.pull(&target, &PullOptions::default()).unwrap();
        assert_eq!(def.id, a.id, "the default platform is this machine's");
    }

    let arm = ImageStore::open(&tmp.path().join("arm")).unwrap();
    let b = arm
        .pull(
            &target,
            &PullOptions {
                platform: Some("linux/arm64".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(b.config.architecture, "arm64");
    assert_eq!(marker_of(&arm, &b), "arm64");
    assert_ne!(a.id, b.id);
    assert_eq!(b.references, vec![target.clone()]);

    let err = arm
        .pull(
            &target,
            &PullOptions {
                platform: Some("linux/s390x".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/arm64"),
        "{msg}"
    );
}

#[test]
fn basic_auth_with_an_auth_file() {
    if !have_registry() || !have("htpasswd", "package apache2-utils") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    let st = Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["alice", "s3cret"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let reg = Registry::start(
        tmp.path(),
        &format!(
            "  htpasswd:\n    realm: flotilla-test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let host = reg.host();
    let good = auth_file(tmp.path(), &format!("http://{host}"), "alice", "s3cret");
    let bad = auth_file(tmp.path(), &host, "alice", "wrong");
    let (src, img) = store_with_image(&tmp.path().join("src"), "basic", "bb:basic");
    let target = format!("{host}/secure/bb:1");

    let err = src
        .push("bb:basic", &target, &PushOptions::default())
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    src.push(
        "bb:basic",
        &target,
        &PushOptions {
            auth_file: Some(good.clone()),
            ..Default::default()
        },
    )
    .unwrap();

    let dst = ImageStore::open(&tmp.path().join("dst")).unwrap();
    let err = dst.pull(&target, &PullOptions::default()).unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string().contains(&host),
        "the error names the registry: {err}"
    );
    let err = dst
        .pull(
            &target,
            &PullOptions {
                auth_file: Some(bad),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert!(dst.list().unwrap().is_empty());

    let got = dst
        .pull(
            &target,
            &PullOptions {
                auth_file: Some(good),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(got.id, img.id);
    assert_eq!(marker_of(&dst, &got), "basic");

    // Credentials handed over directly (as the agent gets them from a
    // CLI), with progress: wrong ones are refused, right ones pull, and
    // every layer is reported.
    let direct = |pass: &str| Credential {
        registry: format!("http://{host}/"),
        username: "alice".into(),
        password: pass.into(),
        identity_token: String::new(),
    };
    let fresh = ImageStore::open(&tmp.path().join("direct")).unwrap();
    let err = fresh
        .pull(
            &target,
            &PullOptions {
                credentials: vec![direct("wrong")],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    let events = Arc::new(std::sync::Mutex::new(Vec::<ProgressEvent>::new()));
    let sink = events.clone();
    let got = fresh
        .pull(
            &target,
            &PullOptions {
                credentials: vec![direct("s3cret")],
                progress: Some(Progress(Arc::new(move |e| sink.lock().unwrap().push(e)))),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(got.id, img.id);
    let events = events.lock().unwrap().clone();
    let done: Vec<&ProgressEvent> = events
        .iter()
        .filter(|e| e.status == "Download complete")
        .collect();
    assert_eq!(done.len(), 2, "{events:?}");
    for e in done {
        assert!(e.blob.starts_with("sha256:") && e.current == e.total && e.total > 0);
    }
    // Credentials for another registry are never used here.
    let other = Credential {
        registry: "127.0.0.2:1".into(),
        ..direct("s3cret")
    };
    let err = ImageStore::open(&tmp.path().join("other"))
        .unwrap()
        .pull(
            &target,
            &PullOptions {
                credentials: vec![other],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
}

// ---------- bearer tokens ----------

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Issues registry tokens: checks basic credentials, grants what the
/// scope asks for, signs RS256 JWTs with `openssl dgst`. Stops on drop.
struct TokenServer {
    port: u16,
    stop: Arc<AtomicBool>,
    issued: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(
        dir: &Path,
        key: PathBuf,
        cert_der: Vec<u8>,
        user: &'static str,
        pass: &'static str,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, iss, dir) = (stop.clone(), issued.clone(), dir.to_path_buf());
        let x5c = base64::engine::general_purpose::STANDARD.encode(&cert_der);
        let thread = std::thread::spawn(move || {
            let mut n = 0u32;
            while !st.load(Ordering::Relaxed) {
                let (conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                n += 1;
                conn.set_nonblocking(false).unwrap();
                let _ = serve_token(conn, &dir, &key, &x5c, user, pass, n, &iss);
            }
        });
        TokenServer {
            port,
            stop,
            issued,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn serve_token(
    conn: TcpStream,
    dir: &Path,
    key: &Path,
    x5c: &str,
    user: &str,
    pass: &str,
    n: u32,
    issued: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let method = line.split_whitespace().next().unwrap_or("").to_string();
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut authz = None;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authz = Some(v.trim().to_string());
            }
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    // POST: the OAuth2 form (refresh-token grant, as `docker login`'s
    // identity tokens are used); GET: the query string.
    let mut body = vec![0u8; length];
    r.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let query = if method == "POST" {
        body.as_str()
    } else {
        target.split_once('?').map(|(_, q)| q).unwrap_or("")
    };
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| {
                v.replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",")
                    .replace('+', " ")
            })
        })
    };
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    let mut w = conn;
    let refresh_ok = method == "POST"
        && param("grant_type").as_deref() == Some("refresh_token")
        && param("refresh_token") == Some(format!("refresh-{user}"));
    if !refresh_ok && authz.as_deref() != Some(expected.as_str()) {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        write!(w, "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
        return Ok(());
    }
    let mut access = Vec::new();
    if let Some(scope) = param("scope") {
        for s in scope.split(' ') {
            let parts: Vec<&str> = s.split(':').collect();
            if parts.len() == 3 {
                access.push(serde_json::json!({
                    "type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()
                }));
            }
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "flotilla-test-issuer", "sub": user, "aud": param("service").unwrap_or_default(),
        "exp": now + 600, "nbf": now - 60, "iat": now - 60, "jti": format!("t{n}"), "access": access
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header).unwrap()),
        b64url(&serde_json::to_vec(&claims).unwrap())
    );
    let input_path = dir.join(format!("jwt-{n}.in"));
    fs::write(&input_path, &signing_input)?;
    let sig = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&input_path)
        .output()?;
    assert!(
        sig.status.success(),
        "openssl dgst: {}",
        String::from_utf8_lossy(&sig.stderr)
    );
    let token = format!("{signing_input}.{}", b64url(&sig.stdout));
    issued
        .lock()
        .unwrap()
        .push(param("scope").unwrap_or_default());
    let body = serde_json::to_string(&serde_json::json!({
        "token": token, "access_token": token, "expires_in": 600
    }))
    .unwrap();
    write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    Ok(())
}

/// The registry's own token auth (`auth: token:`), with tokens from the
/// server above: the full WWW-Authenticate Bearer challenge flow.
#[test]
fn bearer_token_auth_against_the_registry_token_flow() {
    if !have_registry() || !have("openssl", "package openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("token.key");
    let cert = tmp.path().join("token.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=flotilla-test-token",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(der.status.success());
    let tokens = TokenServer::start(tmp.path(), key, der.stdout, "bob", "hunter2");
    let reg = Registry::start(
        tmp.path(),
        &format!(
            "  token:\n    realm: http://127.0.0.1:{}/token\n    service: flotilla-test-registry\n    issuer: flotilla-test-issuer\n    rootcertbundle: {}\n",
            tokens.port,
            cert.display()
        ),
    );
    let host = reg.host();
    let creds = auth_file(tmp.path(), &host, "bob", "hunter2");
    let (src, img) = store_with_image(&tmp.path().join("src"), "bearer", "bb:bearer");
    let target = format!("{host}/tok/bb:1");

    let err = src
        .push("bb:bearer", &target, &PushOptions::default())
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    let digest = src
        .push(
            "bb:bearer",
            &target,
            &PushOptions {
                auth_file: Some(creds.clone()),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.logs()));
    assert_eq!(digest, img.manifest_digest);

    let dst = ImageStore::open(&tmp.path().join("dst")).unwrap();
    let err = dst.pull(&target, &PullOptions::default()).unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains(&host), "{err}");
    let got = dst
        .pull(
            &target,
            &PullOptions {
                auth_file: Some(creds),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.logs()));
    assert_eq!(got.id, img.id);
    assert_eq!(marker_of(&dst, &got), "bearer");
    // An identity token (OAuth2 refresh token) is exchanged at the realm;
    // a wrong one is refused.
    let identity = |t: &str| PullOptions {
        credentials: vec![Credential {
            registry: host.clone(),
            identity_token: t.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let fresh = ImageStore::open(&tmp.path().join("identity")).unwrap();
    let err = fresh.pull(&target, &identity("refresh-eve")).unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    let got = fresh
        .pull(&target, &identity("refresh-bob"))
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.logs()));
    assert_eq!(got.id, img.id);
    let scopes = tokens.issued.lock().unwrap().clone();
    assert!(
        scopes.iter().any(|s| s == "repository:tok/bb:pull,push"),
        "{scopes:?}"
    );
    assert!(
        scopes.iter().any(|s| s == "repository:tok/bb:pull"),
        "{scopes:?}"
    );
}

// ---------- save ----------

#[test]
fn save_round_trips_and_skopeo_reads_it() {
    if !have("skopeo", "package skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (store, img) = store_with_image(&tmp.path().join("src"), "saved", "bb:saved");
    // A second image (gzip layers, via an OCI archive) in the same archive.
    let layout = tmp.path().join("layout");
    multi_arch_layout(&layout);
    let oci_tar = tmp.path().join("multi.tar");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("oci:{}:multi", layout.display()),
        &format!("oci-archive:{}:localhost/multi:2", oci_tar.display()),
    ]);
    let other = store
        .load_archive(fs::File::open(&oci_tar).unwrap())
        .unwrap()
        .remove(0);
    assert_eq!(other.references, vec!["localhost/multi:2"]);

    let out = tmp.path().join("saved.tar");
    store
        .save(
            &["bb:saved", "localhost/multi:2"],
            fs::File::create(&out).unwrap(),
        )
        .unwrap();

    let fresh = ImageStore::open(&tmp.path().join("fresh")).unwrap();
    let loaded = fresh.load_archive(fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(loaded.len(), 2);
    for (want, got) in [(&img, &loaded[0]), (&other, &loaded[1])] {
        assert_eq!(got.id, want.id);
        assert_eq!(got.manifest_digest, want.manifest_digest);
        assert_eq!(got.references, want.references);
        assert_eq!(got.diff_ids, want.diff_ids);
        assert_eq!(got.config, want.config);
    }
    assert_eq!(marker_of(&fresh, &loaded[0]), "saved");

    for (r, id) in [("bb:saved", &img.id), ("localhost/multi:2", &other.id)] {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--config"])
            .arg(format!("docker-archive:{}:{r}", out.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect {r}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&sha(&out.stdout), id, "skopeo reads the config of {r}");
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg(format!(
                "docker-archive:{}:{r}",
                out_path(&tmp, "saved.tar").display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2, "{v}");
    }
    // skopeo can copy it on (it reads and verifies every layer).
    skopeo(&[
        "copy",
        "--quiet",
        &format!("docker-archive:{}:bb:saved", out.display()),
        &format!("oci:{}:x", tmp.path().join("copied").display()),
    ]);

    // An untagged save by id loads untagged; unknown names are refused.
    let by_id = tmp.path().join("by-id.tar");
    store
        .save(&[&img.id], fs::File::create(&by_id).unwrap())
        .unwrap();
    let fresh2 = ImageStore::open(&tmp.path().join("fresh2")).unwrap();
    let l = fresh2
        .load_archive(fs::File::open(&by_id).unwrap())
        .unwrap();
    assert_eq!(l[0].id, img.id);
    assert!(l[0].references.is_empty());
    let err = store.save(&["nope:1"], Vec::new()).unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }) && err.to_string().contains("nope:1"));
}

fn out_path(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
    tmp.path().join(name)
}

// ---------- zstd layers ----------

#[test]
fn zstd_compressed_layers_pull() {
    if !have_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path(), "");
    let archive = tmp.path().join("bb.tar");
    fs::write(&archive, docker_archive("zstd", "bb:1")).unwrap();
    let target = format!("{}/test/bb:zstd", reg.host());
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-compress-format=zstd",
        "--format=oci",
        &format!("docker-archive:{}", archive.display()),
        &format!("docker://{target}"),
    ]);
    let (_, want) = store_with_image(&tmp.path().join("src"), "zstd", "bb:1");
    let store = ImageStore::open(&tmp.path().join("dst")).unwrap();
    let got = store.pull(&target, &PullOptions::default()).unwrap();
    let m = fs::read(store.blob_path(&got.manifest_digest).unwrap()).unwrap();
    assert!(
        String::from_utf8_lossy(&m).contains("tar+zstd"),
        "skopeo pushed zstd layers: {}",
        String::from_utf8_lossy(&m)
    );
    // skopeo rewrote the config as OCI's (a new id); the layers are ours.
    let cfg = fs::read(store.blob_path(&got.id).unwrap()).unwrap();
    assert_eq!(sha(&cfg), got.id);
    assert_eq!(
        got.diff_ids, want.diff_ids,
        "diff ids verified after zstd decompression"
    );
    assert_eq!(marker_of(&store, &got), "zstd");
    let bb = store.layer_dirs(&got).unwrap()[0].join("bin/busybox");
    assert_eq!(fs::read(bb).unwrap(), fs::read("/bin/busybox").unwrap());
}

// ---------- retries and digest verification ----------

/// A registry written here that serves one image but answers the first GET
/// of the layer blob with a 500 and the second with corrupted bytes (same
/// length); only the third is right. Counts the GETs of that blob.
struct FlakyRegistry {
    port: u16,
    stop: Arc<AtomicBool>,
    layer_gets: Arc<std::sync::atomic::AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FlakyRegistry {
    fn start(manifest: Vec<u8>, blobs: Vec<(String, Vec<u8>)>, flaky: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let layer_gets = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (st, gets) = (stop.clone(), layer_gets.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let _ = serve_flaky(conn, &manifest, &blobs, &flaky, &gets);
            }
        });
        FlakyRegistry {
            port,
            stop,
            layer_gets,
            thread: Some(thread),
        }
    }
}

impl Drop for FlakyRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_flaky(
    conn: TcpStream,
    manifest: &[u8],
    blobs: &[(String, Vec<u8>)],
    flaky: &str,
    gets: &std::sync::atomic::AtomicU32,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut w = conn;
    let respond = |w: &mut TcpStream, status: &str, ctype: &str, extra: &str, body: &[u8]| {
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        )?;
        if method != "HEAD" {
            w.write_all(body)?;
        }
        w.flush()
    };
    if path == "/v2/" {
        return respond(&mut w, "200 OK", "application/json", "", b"{}");
    }
    if path.starts_with("/v2/flaky/app/manifests/") {
        let extra = format!("Docker-Content-Digest: {}\r\n", sha(manifest));
        return respond(
            &mut w,
            "200 OK",
            "application/vnd.oci.image.manifest.v1+json",
            &extra,
            manifest,
        );
    }
    if let Some(d) = path.strip_prefix("/v2/flaky/app/blobs/") {
        if let Some((_, data)) = blobs.iter().find(|(bd, _)| bd == d) {
            if d == flaky && method == "GET" {
                match gets.fetch_add(1, Ordering::SeqCst) {
                    0 => {
                        return respond(
                            &mut w,
                            "500 Internal Server Error",
                            "text/plain",
                            "",
                            b"try again",
                        )
                    }
                    1 => {
                        let mut bad = data.clone();
                        let mid = bad.len() / 2;
                        bad[mid] ^= 0xff;
                        return respond(&mut w, "200 OK", "application/octet-stream", "", &bad);
                    }
                    _ => {}
                }
            }
            return respond(&mut w, "200 OK", "application/octet-stream", "", data);
        }
    }
    respond(
        &mut w,
        "404 Not Found",
        "application/json",
        "",
        br#"{"errors":[{"code":"NOT_FOUND","message":"no"}]}"#,
    )
}

#[test]
fn blob_downloads_are_retried_and_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let ls = layers("flaky");
    let cfg = config(&ls, "amd64", "flaky");
    let mut blobs = vec![(sha(&cfg), cfg.clone())];
    let mut descs = Vec::new();
    for l in &ls {
        blobs.push((sha(l), l.clone()));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(l), "size": l.len()
        }));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&cfg), "size": cfg.len()},
        "layers": descs
    }))
    .unwrap();
    let flaky = sha(&ls[1]);
    let server = FlakyRegistry::start(manifest.clone(), blobs, flaky.clone());
    let target = format!("127.0.0.1:{}/flaky/app:1", server.port);

    // Without retries the 500 is the answer.
    let store = ImageStore::open(&tmp.path().join("a")).unwrap();
    let err = store
        .pull(
            &target,
            &PullOptions {
                retries: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    // The next GET gets the corrupted copy, which is refused by digest.
    let err = store
        .pull(
            &target,
            &PullOptions {
                retries: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, ImageError::DigestMismatch { .. })
            && err.to_string().contains(hexpart(&flaky)),
        "{err}"
    );
    assert!(
        store.list().unwrap().is_empty(),
        "nothing of a failed pull is kept"
    );

    // Reset the server's count: 500, corrupt, good — the default retries cope.
    server.layer_gets.store(0, Ordering::SeqCst);
    let got = store.pull(&target, &PullOptions::default()).unwrap();
    assert_eq!(server.layer_gets.load(Ordering::SeqCst), 3);
    assert_eq!(got.id, sha(&cfg));
    assert_eq!(got.manifest_digest, sha(&manifest));
    assert_eq!(marker_of(&store, &got), "flaky");
    assert_eq!(got.references, vec![target]);
}
