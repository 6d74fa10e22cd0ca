//! `flotilla config` and its flags, run as the real binary on real files
//! (no daemon needed).

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
