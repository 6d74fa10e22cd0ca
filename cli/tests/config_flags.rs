//! `flotilla config` and its flags, run as the real binary on real files
//! (no daemon needed, except `--resolve-image-digests`, which asks a real
//! one and needs root).

mod common;

use std::path::Path;
use std::process::Command;

fn flotilla(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .current_dir(dir)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .env_remove("COMPOSE_PROJECT_NAME")
        .env("TAG", "1.27")
        .arg("config")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("compose.yaml"),
        "name: flags\nservices:\n  web:\n    image: nginx:${TAG}\n    volumes: [data:/data]\n  app:\n    build: ./app\n  debug:\n    image: busybox\n    profiles: [debug, ops]\nvolumes:\n  data:\n  logs:\n",
    )
    .unwrap();
    d
}

#[test]
fn list_flags_print_one_name_per_line() {
    let d = project();
    let (rc, out, err) = flotilla(d.path(), &["--services"]);
    assert_eq!(rc, 0, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["app", "web"]);
    let (_, out, _) = flotilla(d.path(), &["--volumes"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["data", "logs"]);
    let (_, out, _) = flotilla(d.path(), &["--profiles"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["debug", "ops"]);
    let (_, out, _) = flotilla(d.path(), &["--images"]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["flags-app", "nginx:1.27"]);
}

#[test]
fn quiet_validates_and_formats_and_no_interpolate() {
    let d = project();
    let (rc, out, _) = flotilla(d.path(), &["-q"]);
    assert_eq!((rc, out.as_str()), (0, ""));
    let (rc, out, err) = flotilla(d.path(), &["--format", "json"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["services"]["web"]["image"], "nginx:1.27");
    assert_eq!(v["volumes"]["data"]["name"], "flags_data");
    let (rc, out, err) = flotilla(d.path(), &["--no-interpolate"]);
    assert_eq!(rc, 0, "{err}");
    // Printed escaped, as Compose prints a literal `$`.
    assert!(out.contains("image: nginx:$${TAG}"), "{out}");

    std::fs::write(
        d.path().join("compose.yaml"),
        "services:\n  web:\n    image: nginx\n    ports: [[80]]\n",
    )
    .unwrap();
    let (rc, _, err) = flotilla(d.path(), &["-q"]);
    assert_ne!(rc, 0);
    assert!(
        err.contains("compose.yaml:4:13: services.web.ports[0]: must be"),
        "{err}"
    );
}

#[test]
fn resolve_image_digests_pins_images_from_the_daemon() {
    require_root!();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("compose.yaml"),
        "name: pins\nservices:\n  web:\n    image: flotilla-demo:test\n  side:\n    image: flotilla-demo:test\n",
    )
    .unwrap();

    // No daemon: a clear error, not a panic.
    let mut daemon = common::Daemon::new();
    let out = daemon.cli_in(d.path(), &["config", "--resolve-image-digests"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no Flotilla daemon answers"), "{err}");

    daemon.start();
    // A missing image is named with where it is used.
    let out = daemon.cli_in(d.path(), &["config", "--resolve-image-digests"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "compose.yaml:4:12: services.web.image: image flotilla-demo:test was not found on any node"
        ),
        "{err}"
    );

    daemon.import_demo_image();
    let images = refs_json(&daemon.state_dir);
    let out = daemon.ok(
        d.path(),
        &["config", "--resolve-image-digests", "--format", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let web = v["services"]["web"]["image"].as_str().unwrap().to_string();
    assert_eq!(v["services"]["side"]["image"], web.as_str());
    // Either `flotilla-demo@sha256:<manifest>` or the image id, and the
    // daemon's image store records that digest.
    let digest = web.strip_prefix("flotilla-demo@").unwrap_or(&web);
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{web}");
    assert!(images.contains(digest), "{web} not in {images}");
    // The pinned output loads again as it is.
    std::fs::write(
        d.path().join("compose.yaml"),
        daemon.ok(d.path(), &["config", "--resolve-image-digests"]),
    )
    .unwrap();
    let again = daemon.ok(d.path(), &["config", "--images"]);
    assert_eq!(
        again.lines().collect::<Vec<_>>(),
        vec![web.as_str(), web.as_str()]
    );
}

/// The daemon's image index (`refs.json` under its state dir).
fn refs_json(dir: &Path) -> String {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            let s = refs_json(&p);
            if !s.is_empty() {
                return s;
            }
        } else if p.file_name().is_some_and(|n| n == "refs.json") {
            return std::fs::read_to_string(p).unwrap();
        }
    }
    String::new()
}
