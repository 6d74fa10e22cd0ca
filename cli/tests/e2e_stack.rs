//! End to end on one host: `flotilla up` of a 3-service Compose stack runs
//! real containers in their own namespaces, services reach each other by
//! name, and `down` leaves nothing behind. Needs root.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const COMPOSE: &str = r#"
services:
  web:
    image: flotilla-demo:test
    command: ["web"]
    environment:
      API_URL: http://api:5000
    depends_on:
      - api
  api:
    image: flotilla-demo:test
    command: ["api"]
    environment:
      STORE_URL: http://store:6000
    depends_on:
      store:
        condition: service_started
  store:
    image: flotilla-demo:test
    command: ["store"]
"#;

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

fn addresses_in_pool(pool: &str) -> Vec<String> {
    // "10.123.0.0/16" → "10.123."
    let prefix: String = pool.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!(" {prefix}")))
        .map(str::to_string)
        .collect()
}

#[test]
fn three_services_run_isolated_reach_each_other_and_down_cleans_up() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("e2e{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, COMPOSE);

    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mut pids = Vec::new();
    for row in &rows {
        assert_eq!(row["State"], "running", "{row}");
        assert_eq!(row["Project"], project.as_str());
        let pid = row["Pid"].as_i64().expect("pid");
        assert!(pid > 0);
        pids.push(pid);
        // Its own namespaces.
        for ns in ["pid", "uts", "ipc", "mnt", "net"] {
            assert_ne!(
                ns_of(pid, ns),
                ns_of(std::process::id() as i64, ns),
                "{ns} namespace shared with the host"
            );
        }
        // pid 1 inside is the service's own process.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let service = row["Service"].as_str().unwrap();
        assert!(
            String::from_utf8_lossy(&cmdline).contains(service),
            "pid 1 runs {cmdline:?}"
        );
        // The hostname is the container's (Docker's default: its short id).
        let out = in_container(pid, &["/demo", "hostname"]);
        let id = row["ID"].as_str().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), &id[..12]);
        // Containers have their own cgroup under the configured parent.
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cg.contains(&format!("/{}/", d.cgroup_parent)), "{cg}");
    }

    // One service reaches another by name, through the whole chain:
    // web -> api -> store.
    let web = rows.iter().find(|r| r["Service"] == "web").unwrap();
    let web_pid = web["Pid"].as_i64().unwrap();
    let got = eventually(Duration::from_secs(20), || {
        let out = in_container(web_pid, &["/demo", "get", "http://localhost:8080/"]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && body.contains("hits: ")).then_some(body)
    });
    assert!(
        got.is_some(),
        "web could not reach api/store by name; daemon log:\n{}",
        d.daemon_log()
    );
    let out = in_container(web_pid, &["/demo", "get", "http://store:6000/health"]);
    assert!(
        out.status.success(),
        "store by name: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Logs come back through the manager, prefixed per service.
    let logs = d.ok(&dir, &["logs", "--no-color"]);
    assert!(logs.lines().any(|l| l.starts_with("store-1")), "{logs}");

    assert!(
        !addresses_in_pool(&d.pool).is_empty(),
        "no bridge address in {}",
        d.pool
    );
    d.ok(&dir, &["down"]);

    // Nothing of the stack is left.
    let ps = d.ps(&dir, &project);
    assert!(ps.is_empty(), "{ps:?}");
    // `down` returns once the nodes removed the containers: no process and
    // no root filesystem of the stack is left at that point.
    for pid in &pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false);
        assert!(!alive, "container process {pid} still running after down");
    }
    let rootfs_left = mounts_under(&[&d.state_dir.display().to_string()]);
    assert!(
        rootfs_left.is_empty(),
        "root filesystems still mounted after down: {rootfs_left:?}"
    );
    let state = d.state_dir.display().to_string();
    let run = d.run_dir.display().to_string();
    let subnet_prefix: String = d.pool.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
    // Containers are gone when `down` returns; the node's network pieces
    // (bridge, rules) follow as soon as the agent sees the network deleted.
    let leftovers = || {
        let mut left = Vec::new();
        left.extend(
            mounts_under(&[&state, &format!("{run}/netns/")])
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        left.extend(
            cgroup_children(&d.cgroup_parent)
                .into_iter()
                .map(|c| format!("cgroup {}", c.display())),
        );
        let netns: Vec<_> = std::fs::read_dir(d.run_dir.join("netns"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        left.extend(netns.into_iter().map(|n| format!("netns {}", n.display())));
        left.extend(
            addresses_in_pool(&d.pool)
                .into_iter()
                .map(|a| format!("link {a}")),
        );
        if nft_ruleset().contains(&subnet_prefix) {
            left.push(format!("nft rules for {subnet_prefix}*"));
        }
        left
    };
    let clean = eventually(Duration::from_secs(15), || {
        leftovers().is_empty().then_some(())
    });
    assert!(
        clean.is_some(),
        "left after down: {:?}\n{}",
        leftovers(),
        d.daemon_log()
    );
}

#[test]
fn bad_input_fails_with_one_clear_line_and_touches_nothing() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("bad{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(
        &dir,
        "services:\n  store:\n    image: flotilla-demo:test\n    command: [\"store\"]\n",
    );
    d.ok(&dir, &["up", "-d"]);
    let before = d.ps(&dir, &project);
    assert_eq!(before.len(), 1);

    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("", vec!["up", "-d", "-f", "missing.yaml"], "missing.yaml"),
        ("", vec!["up", "-d", "nosuchservice"], "nosuchservice"),
        (
            "services:\n  web:\n    image: [unclosed\n",
            vec!["up", "-d", "-f", "broken.yaml"],
            "broken.yaml:",
        ),
        // Pulls go only to loopback: nothing listens on port 9 there.
        (
            "services:\n  web:\n    image: 127.0.0.1:9/not-there:1.0\n",
            vec!["up", "-d", "-f", "noimage.yaml"],
            "not-there:1.0",
        ),
        (
            "services:\n  web:\n    image: not-there:1.0\n    pull_policy: never\n",
            vec!["up", "-d", "-f", "neverpull.yaml"],
            "not-there:1.0",
        ),
    ];
    for (body, args, needle) in cases {
        if let Some(f) = args.iter().position(|a| *a == "-f").map(|i| args[i + 1]) {
            if !body.is_empty() {
                std::fs::write(dir.join(f), body).unwrap();
            }
        }
        let mut full = args.clone();
        full.extend(["-p", project.as_str()]);
        let out = d.cli_in(&dir, &full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(needle),
            "{args:?}: error does not name {needle:?}: {stderr}"
        );
        assert!(stderr.trim().starts_with("error:"), "{args:?}: {stderr}");
        // The running stack is untouched.
        let now = d.ps(&dir, &project);
        assert_eq!(now.len(), 1, "{args:?}");
        assert_eq!(
            now[0]["Pid"], before[0]["Pid"],
            "{args:?} touched the running container"
        );
        assert_eq!(now[0]["State"], "running");
    }
    d.ok(&dir, &["down"]);
}
