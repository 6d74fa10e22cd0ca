//! `config` output: canonical YAML/JSON that loads back to the same services.

use std::path::Path;

use flotilla_compose::{load, load_for_config, to_compose_json, to_compose_yaml, LoadOptions};

#[test]
fn yaml_output_round_trips_to_the_same_services() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/three");
    let first = load(&LoadOptions::new(&dir)).unwrap();
    let yaml = to_compose_yaml(&first);
    assert!(yaml.starts_with("name: shop\n"), "{yaml}");
    assert!(yaml.contains("condition: service_healthy"), "{yaml}");
    // Top-level extensions stay, as Compose prints them.
    assert!(yaml.contains("x-common:"), "{yaml}");

    // Load the output again from the same project directory.
    let out = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile_in(&dir)
        .unwrap();
    std::fs::write(out.path(), &yaml).unwrap();
    let mut opts = LoadOptions::new(&dir);
    opts.files = vec![out.path().to_path_buf()];
    let second = load(&opts).unwrap();
    assert_eq!(first.name, second.name);
    let strip = |p: &flotilla_compose::Project| {
        let mut s = p.spec.services.clone();
        for x in &mut s {
            x.source = None;
            // Canonical output sorts keys, so compare without order.
            x.networks.sort_by(|a, b| a.network.cmp(&b.network));
        }
        s.sort_by(|a, b| a.name.cmp(&b.name));
        s
    };
    assert_eq!(strip(&first), strip(&second), "{yaml}");

    let json: serde_json::Value = serde_json::from_str(&to_compose_json(&first)).unwrap();
    assert_eq!(json["services"]["web"]["ports"][0]["published"], "8080");
    assert_eq!(json["services"]["db"]["environment"]["POSTGRES_DB"], "shop");
    assert_eq!(json["networks"]["default"]["name"], "shop_default");
}

#[test]
fn config_mode_accepts_build_that_deploy_refuses() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("compose.yaml"),
        "services:\n  app:\n    build: .\n    develop:\n      watch: []\n",
    )
    .unwrap();
    let opts = LoadOptions::new(d.path());
    let e = load(&opts).unwrap_err().to_string();
    assert!(e.contains("building images is not supported yet"), "{e}");
    assert!(e.contains("not supported yet: develop"), "{e}");
    let p = load_for_config(&opts).unwrap();
    let y = to_compose_yaml(&p);
    // Long syntax, the context made absolute, as Compose prints it.
    assert!(
        y.contains(&format!("context: {}", d.path().display())),
        "{y}"
    );
    assert!(y.contains("dockerfile: Dockerfile"), "{y}");
}
