//! Which volumes go with which verb, with real containers, by Compose's
//! rules: anonymous volumes go with `rm -v`, `run --rm` and `down -v`; named
//! ones only with `down -v`. Needs root.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn write_project(dir: &Path, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), body).unwrap();
}

/// The agent's volume directories (each holds `meta.json` and `_data`).
fn volumes(d: &Daemon) -> Vec<String> {
    fn find(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "volumes") {
                out.push(p);
            } else if depth > 0 {
                find(&p, depth - 1, out);
            }
        }
    }
    let mut roots = Vec::new();
    find(&d.state_dir, 2, &mut roots);
    let mut names: Vec<String> = roots
        .iter()
        .flat_map(|r| std::fs::read_dir(r).into_iter().flatten().flatten())
        .filter(|e| e.path().join("meta.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn anonymous(names: &[String]) -> Vec<&String> {
    names
        .iter()
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

const VOLUMES: &str = r#"
services:
  data:
    image: flotilla-demo:test
    command: ["sleep"]
    volumes:
      - /anon
      - named:/named
volumes:
  named:
"#;

#[test]
fn anonymous_volumes_go_with_their_container_named_ones_with_down_v() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("lw{}", d.name);
    let dir = d.root.path().join(&project);
    write_project(&dir, VOLUMES);
    let named = format!("{project}_named");

    d.ok(&dir, &["up", "-d"]);
    let v = volumes(&d);
    assert!(v.contains(&named), "{v:?}");
    assert_eq!(anonymous(&v).len(), 1, "{v:?}");

    // rm -v: the container's anonymous volume goes, the named one stays.
    d.ok(&dir, &["rm", "-s", "-v", "data"]);
    let v = volumes(&d);
    assert_eq!(v, vec![named.clone()], "rm -v kept the anonymous volume");

    // run --rm: the one-off container's anonymous volume goes with it.
    let out = d.cli_in(&dir, &["run", "--rm", "data", "exit", "0"]);
    assert!(out.status.success(), "{out:?}\n{}", d.daemon_log());
    let v = volumes(&d);
    assert_eq!(v, vec![named.clone()], "run --rm kept the anonymous volume");

    // down keeps both kinds; down -v removes both.
    d.ok(&dir, &["up", "-d"]);
    d.ok(&dir, &["down"]);
    let v = volumes(&d);
    assert!(v.contains(&named), "{v:?}");
    assert_eq!(anonymous(&v).len(), 1, "{v:?}");
    d.ok(&dir, &["up", "-d"]);
    d.ok(&dir, &["down", "-v"]);
    let v = volumes(&d);
    assert!(v.is_empty(), "down -v left volumes: {v:?}");
}
