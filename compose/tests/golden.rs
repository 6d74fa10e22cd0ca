//! Golden tests: `to_compose_json` against what Docker Compose v2.40.3
//! (`docker-compose config --format json`) printed for the same projects,
//! recorded in tests/golden/NAME.json (the project is tests/golden/NAME/).
//! Needs no Compose binary; see tests/golden/README.md for how they were
//! recorded and where Flotilla differs on purpose.

use std::path::Path;

use flotilla_compose::{load_for_config, to_compose_json, to_compose_yaml, LoadOptions, Project};

/// `config` of `config` output is the same text.
fn fixed_point(first: &Project, what: &str) {
    let yaml = to_compose_yaml(first);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("compose.yaml"), &yaml).unwrap();
    let mut opts = LoadOptions::new(d.path());
    opts.env.insert("HOME".into(), "/root".into());
    let second = load_for_config(&opts)
        .unwrap_or_else(|e| panic!("{what}: config output does not load:\n{e}\n{yaml}"));
    assert_eq!(yaml, to_compose_yaml(&second), "{what}: not a fixed point");
}
use serde_json::Value;

/// Drops what Compose prints only because of Go's encoders, not because
/// the file set it: empty mappings, `command`/`entrypoint: null` and
/// capitalised blkio device keys.
fn normalise(v: &mut Value, depth: usize) {
    match v {
        Value::Object(m) => {
            // Go's JSON encoder capitalises blkio_config's device entries
            // (their struct has YAML tags only); YAML has them lowercase.
            if m.keys().any(|k| k == "Path") {
                *m = std::mem::take(m)
                    .into_iter()
                    .map(|(k, x)| (k.to_lowercase(), x))
                    .collect();
            }
            m.retain(|k, x| {
                !(matches!(x, Value::Object(o) if o.is_empty())
                    || (depth == 2 && (k == "command" || k == "entrypoint") && x.is_null()))
            });
            for x in m.values_mut() {
                normalise(x, depth + 1);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalise(x, depth + 1)),
        _ => {}
    }
}

fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => diff(&format!("{path}.{k}"), wv, gv, out),
                    None => out.push(format!("{path}.{k}: missing (Compose: {wv})")),
                }
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!("{path}.{k}: extra ({})", g[k]));
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff(&format!("{path}[{i}]"), wv, gv, out);
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: Compose {want}, Flotilla {got}")),
    }
}

fn check(name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let dir = root.join(name);
    let recorded = std::fs::read_to_string(root.join(format!("{name}.json"))).unwrap();
    let mut want: Value =
        serde_json::from_str(&recorded.replace("@PROJECT_DIR@", &dir.display().to_string()))
            .unwrap();
    let mut opts = LoadOptions::new(&dir);
    opts.env.insert("HOME".into(), "/root".into());
    let p = load_for_config(&opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut got: Value = serde_json::from_str(&to_compose_json(&p)).unwrap();
    fixed_point(&p, name);
    normalise(&mut want, 0);
    normalise(&mut got, 0);
    let mut out = Vec::new();
    diff("", &want, &got, &mut out);
    assert!(
        out.is_empty(),
        "{name} differs from Compose:\n{}",
        out.join("\n")
    );
}

#[test]
fn anchors_and_merge_keys_in_extension_blocks() {
    check("anchors");
}

#[test]
fn healthchecks_gating_dependencies() {
    check("healthdeps");
}

#[test]
fn env_files_and_interpolation() {
    check("envfiles");
}

#[test]
fn profiles_leave_services_out() {
    check("profiles");
}

#[test]
fn override_file_with_reset_and_override_tags() {
    check("overrides");
}

#[test]
fn extends_across_files() {
    check("extends");
}

#[test]
fn include_with_its_own_env_file() {
    check("include");
}

#[test]
fn networks_volumes_secrets_and_configs() {
    check("networks");
}

#[test]
fn include_with_a_project_directory() {
    check("includedir");
}

#[test]
fn service_fields_in_their_normal_forms() {
    check("fields");
}

#[test]
fn yaml_prints_service_keys_in_compose_order() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fields");
    let p = load_for_config(&LoadOptions::new(&dir)).unwrap();
    let yaml = to_compose_yaml(&p);
    let services = &yaml[yaml.find("services:\n").unwrap()..];
    let services = &services[..services.find("\nnetworks:").unwrap_or(services.len())];
    let keys: Vec<&str> = services
        .lines()
        .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
        .filter_map(|l| l.trim().split(':').next())
        .collect();
    assert_eq!(
        keys,
        [
            "blkio_config",
            "cap_add",
            "cpu_shares",
            "deploy",
            "devices",
            "dns",
            "dns_search",
            "expose",
            "extra_hosts",
            "group_add",
            "hostname",
            "healthcheck",
            "image",
            "init",
            "logging",
            "memswap_limit",
            "networks",
            "ports",
            "read_only",
            "security_opt",
            "shm_size",
            "stop_grace_period",
            "stop_signal",
            "tmpfs",
            "ulimits",
            "user",
            "working_dir"
        ],
        "{yaml}"
    );
    assert!(yaml.contains("      - db.local=10.0.0.5\n"), "{yaml}");
}
