//! The image verbs and `pull_policy` end to end: a private daemon, a real
//! Debian `docker-registry` on a free loopback port (with htpasswd basic
//! auth for the verbs test, credentials from a docker-style config.json via
//! DOCKER_CONFIG), and the demo image. Needs root; skips, saying why, when
//! docker-registry or htpasswd is missing.

mod common;

use base64::Engine as _;
use common::*;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

fn have(tool: &str, why: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: {tool} is not installed ({why})");
    }
    ok
}

/// A `docker-registry` process of this test, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path, auth_yaml: &str) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.join("registry-storage");
        std::fs::create_dir_all(&storage).unwrap();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if !auth_yaml.is_empty() {
            cfg.push_str("auth:\n");
            cfg.push_str(auth_yaml);
        }
        let cfg_path = dir.join("registry.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = dir.join("registry.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut reg = Registry { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = reg.child.try_wait() {
                panic!(
                    "docker-registry exited with {st}: {}",
                    std::fs::read_to_string(&reg.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI with DOCKER_CONFIG set to `docker_config`.
fn cli(d: &Daemon, dir: &Path, docker_config: &Path, args: &[&str]) -> Output {
    Command::new(flotilla_bin())
        .args(args)
        .envs(d.env())
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROJECT_NAME")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running flotilla")
}

fn ok(d: &Daemon, dir: &Path, docker_config: &Path, args: &[&str]) -> String {
    let out = cli(d, dir, docker_config, args);
    assert!(
        out.status.success(),
        "flotilla {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.daemon_log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn inspect(d: &Daemon, dir: &Path, cfg: &Path, r: &str) -> serde_json::Value {
    let out = ok(d, dir, cfg, &["image", "inspect", r]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    v[0].clone()
}

fn image_ls(d: &Daemon, dir: &Path, cfg: &Path) -> String {
    ok(d, dir, cfg, &["image", "ls"])
}

#[test]
fn image_verbs_against_a_registry_with_basic_auth() {
    require_root!();
    if !have("docker-registry", "package docker-registry")
        || !have("htpasswd", "package apache2-utils")
    {
        return;
    }
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let dir = d.root.path().to_path_buf();
    let htpasswd = dir.join("htpasswd");
    let st = Command::new("htpasswd")
        .arg("-Bbc")
        .arg(&htpasswd)
        .args(["alice", "s3cret"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let reg = Registry::start(
        &dir,
        &format!(
            "  htpasswd:\n    realm: flotilla-test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let host = reg.host();
    let anon = dir.join("docker-anon");
    std::fs::create_dir_all(&anon).unwrap();
    let creds = dir.join("docker-creds");
    std::fs::create_dir_all(&creds).unwrap();
    let a = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        creds.join("config.json"),
        serde_json::json!({"auths": {format!("http://{host}"): {"auth": a}}}).to_string(),
    )
    .unwrap();

    let original = inspect(&d, &dir, &anon, "flotilla-demo:test");
    let id = original["Id"].as_str().unwrap().to_string();
    let target = format!("{host}/team/demo:1");

    // tag
    ok(
        &d,
        &dir,
        &anon,
        &["image", "tag", "flotilla-demo:test", &target],
    );
    let tagged = inspect(&d, &dir, &anon, &target);
    assert_eq!(tagged["Id"], id.as_str());
    assert!(
        tagged["RepoTags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == target.as_str()),
        "{tagged}"
    );
    assert!(tagged["RootFS"]["Layers"].as_array().unwrap().len() == 1);
    assert!(tagged["Config"]["Entrypoint"][0] == "/demo", "{tagged}");

    // push: refused without credentials, accepted with them.
    let out = cli(&d, &dir, &anon, &["image", "push", &target]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&host) && err.contains("access denied"),
        "{err}"
    );
    let pushed = ok(&d, &dir, &creds, &["image", "push", &target]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");

    // rm every tag: the image is gone.
    ok(&d, &dir, &anon, &["image", "rm", &target]);
    let out = ok(&d, &dir, &anon, &["image", "rm", "flotilla-demo:test"]);
    assert!(out.contains(&id), "{out}");
    assert!(!image_ls(&d, &dir, &anon).contains("demo"));

    // pull it back (with credentials); same image id.
    let out = cli(&d, &dir, &anon, &["image", "pull", &target]);
    assert!(!out.status.success(), "anonymous pull must be refused");
    let pulled = ok(&d, &dir, &creds, &["image", "pull", &target]);
    assert_eq!(pulled.lines().last(), Some(id.as_str()), "{pulled}");
    assert_eq!(inspect(&d, &dir, &anon, &target)["Id"], id.as_str());

    // save -o, rm, load -i: the same image again.
    let archive = dir.join("saved.tar");
    ok(
        &d,
        &dir,
        &anon,
        &["image", "save", "-o", archive.to_str().unwrap(), &target],
    );
    if have("skopeo", "package skopeo") {
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}:{target}", archive.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo rejects the saved archive: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok(&d, &dir, &anon, &["image", "rm", &target]);
    assert!(!image_ls(&d, &dir, &anon).contains("demo"));
    let loaded = ok(
        &d,
        &dir,
        &anon,
        &["image", "load", "-i", archive.to_str().unwrap()],
    );
    assert!(
        loaded.contains(&format!("Loaded image: {target}")),
        "{loaded}"
    );
    assert_eq!(inspect(&d, &dir, &anon, &target)["Id"], id.as_str());

    // prune: importing another image under the same tag leaves the old
    // one dangling; prune removes it and only it.
    let tar = demo_rootfs_tar(&dir);
    ok(
        &d,
        &dir,
        &anon,
        &[
            "image",
            "import",
            "--change",
            r#"CMD ["store"]"#,
            tar.to_str().unwrap(),
            &target,
        ],
    );
    let newer = inspect(&d, &dir, &anon, &target)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(newer, id);
    let pruned = ok(&d, &dir, &anon, &["image", "prune", "-f"]);
    assert!(pruned.contains(&format!("deleted: {id}")), "{pruned}");
    assert!(!pruned.contains(&newer), "{pruned}");
    assert!(pruned.contains("Total reclaimed space:"), "{pruned}");
    let out = cli(&d, &dir, &anon, &["image", "inspect", &id]);
    assert!(!out.status.success(), "the dangling image is gone");
    assert_eq!(inspect(&d, &dir, &anon, &target)["Id"], newer.as_str());
    let pruned = ok(&d, &dir, &anon, &["image", "prune", "-a", "-f"]);
    assert!(pruned.contains(&format!("untagged: {target}")), "{pruned}");
    assert!(!image_ls(&d, &dir, &anon).contains("demo"));
}

fn write_project(dir: &Path, image: &str, policy: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        format!(
            "services:\n  store:\n    image: {image}\n    command: [\"store\"]\n    pull_policy: {policy}\n"
        ),
    )
    .unwrap();
}

#[test]
fn up_applies_pull_policy_never_and_always() {
    require_root!();
    if !have("docker-registry", "package docker-registry") {
        return;
    }
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let root = d.root.path().to_path_buf();
    let cfg = root.join("docker-none");
    std::fs::create_dir_all(&cfg).unwrap();
    let reg = Registry::start(&root, "");
    let image = format!("{}/demo:pp", reg.host());
    let project = format!("pp{}", d.name);
    let dir = root.join(&project);
    write_project(&dir, &image, "never");

    // `flotilla push` (the stack verb) sends the service's image.
    ok(
        &d,
        &root,
        &cfg,
        &["image", "tag", "flotilla-demo:test", &image],
    );
    ok(&d, &dir, &cfg, &["push", "--quiet"]);
    ok(&d, &root, &cfg, &["image", "rm", &image]);
    ok(&d, &root, &cfg, &["image", "rm", "flotilla-demo:test"]);

    // never + missing: a clear error naming service and image; nothing runs.
    let out = cli(&d, &dir, &cfg, &["up", "-d"]);
    assert!(!out.status.success(), "up must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service store") && err.contains(&image) && err.contains("never"),
        "{err}"
    );
    let ps = cli(&d, &dir, &cfg, &["ps", "-a", "--format", "json"]);
    let rows = String::from_utf8_lossy(&ps.stdout);
    assert!(rows.trim().is_empty(), "nothing may be started: {rows}");
    assert!(!image_ls(&d, &root, &cfg).contains("demo"));

    // `up --pull always` overrides the file's never.
    ok(&d, &dir, &cfg, &["up", "-d", "--pull", "always"]);
    assert_eq!(d.ps(&dir, &project)[0]["State"], "running");
    ok(&d, &dir, &cfg, &["down"]);
    ok(&d, &root, &cfg, &["image", "rm", &image]);

    // `flotilla pull` (the stack verb) fetches it; rm again.
    ok(&d, &dir, &cfg, &["pull", "--quiet"]);
    assert!(image_ls(&d, &root, &cfg).contains("demo"));
    ok(&d, &root, &cfg, &["image", "rm", &image]);

    // always: pulled from the registry, then the stack runs.
    write_project(&dir, &image, "always");
    ok(&d, &dir, &cfg, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["State"], "running", "{rows:?}");
    assert!(image_ls(&d, &root, &cfg).contains(&format!("{}/demo", reg.host())));

    // up --pull never overrides the file's policy: with the image present
    // it deploys without asking the registry (stopped meanwhile).
    drop(reg);
    ok(&d, &dir, &cfg, &["up", "-d", "--pull", "never"]);
    // prune -a keeps the image the running container uses.
    let pruned = ok(&d, &root, &cfg, &["image", "prune", "-a", "-f"]);
    assert!(!pruned.contains(&image), "{pruned}");
    assert!(image_ls(&d, &root, &cfg).contains("demo"));
    ok(&d, &dir, &cfg, &["down"]);
}
