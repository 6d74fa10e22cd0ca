//! Standalone networks (`network create|ls|inspect|rm`), stacks joining one
//! as `external: true`, and published ports already taken on the host
//! refused before anything starts. Needs root.

mod common;

use common::*;

fn project(d: &Daemon, name: &str, body: &str) -> std::path::PathBuf {
    let dir = d.root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
    dir
}

#[test]
fn stacks_share_an_external_network_that_outlives_them() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let net = format!("shared{}", d.name);
    let base = d.root.path().to_path_buf();
    d.ok(&base, &["network", "create", &net]);
    let ls = d.ok(&base, &["network", "ls"]);
    assert!(ls.lines().any(|l| l.contains(&net)), "{ls}");
    let inspect = d.ok(&base, &["network", "inspect", &net]);
    assert!(inspect.contains(&net), "{inspect}");

    let body = format!(
        "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n    networks: [shared]\nnetworks:\n  shared:\n    external: true\n    name: {net}\n"
    );
    let (pa, pb) = (format!("xa{}", d.name), format!("xb{}", d.name));
    let (da, db) = (project(&d, &pa, &body), project(&d, &pb, &body));
    d.ok(&da, &["up", "-d"]);
    d.ok(&db, &["up", "-d"]);
    let ip = |dir: &std::path::Path, p: &str| {
        d.ps(dir, p)[0]["IP"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (ipa, ipb) = (ip(&da, &pa), ip(&db, &pb));
    let net24 = |ip: &str| ip.rsplit_once('.').map(|(n, _)| n.to_string());
    assert!(!ipa.is_empty() && ipa != ipb, "{ipa} {ipb}");
    assert_eq!(net24(&ipa), net24(&ipb), "both on the shared network");

    // In use: refused, naming who uses it.
    let rm = d.cli_in(&base, &["network", "rm", &net]);
    assert!(!rm.status.success());
    let err = String::from_utf8_lossy(&rm.stderr);
    assert!(err.contains(&net), "{err}");

    // `down` of one stack leaves the network; then it can be removed.
    d.ok(&da, &["down"]);
    d.ok(&db, &["down"]);
    let ls = d.ok(&base, &["network", "ls"]);
    assert!(ls.lines().any(|l| l.contains(&net)), "{ls}");
    d.ok(&base, &["network", "rm", &net]);
    let ls = d.ok(&base, &["network", "ls"]);
    assert!(!ls.lines().any(|l| l.contains(&net)), "{ls}");

    // A missing external network is named before anything starts.
    let missing = d.cli_in(&da, &["up", "-d"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(&net) && err.trim().starts_with("error:"),
        "{err}"
    );
    assert!(d.ps(&da, &pa).is_empty());
}

#[test]
fn a_published_port_taken_on_the_host_is_refused_before_anything_starts() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let p = format!("pc{}", d.name);
    let dir = project(
        &d,
        &p,
        &format!(
            "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n  web:\n    image: flotilla-demo:test\n    command: [\"store\"]\n    ports: [\"{port}:6000\"]\n"
        ),
    );
    let out = d.cli_in(&dir, &["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&port.to_string()), "{err}");
    assert!(d.ps(&dir, &p).is_empty(), "nothing started");
    drop(taken);
}
