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

#[test]
fn pinning_images_rewrites_model_and_spec_and_reports_every_missing_one() {
    use flotilla_compose::{images_to_pin, pin_images, ImagePin};
    use std::collections::BTreeMap;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("compose.yaml"),
        "name: pin\nservices:\n  web:\n    image: registry:5000/web:1.2\n  db:\n    image: postgres:16\n  cache:\n    image: redis@sha256:0123\n  app:\n    build: .\n",
    )
    .unwrap();
    let p = load_for_config(&LoadOptions::new(d.path())).unwrap();
    assert_eq!(
        images_to_pin(&p),
        vec!["postgres:16", "registry:5000/web:1.2"]
    );

    let mut missing = p.clone();
    let pins = BTreeMap::from([(
        "postgres:16".to_string(),
        ImagePin::Digest("sha256:aa".into()),
    )]);
    let err = pin_images(&mut missing, &pins).unwrap_err().to_string();
    assert_eq!(
        err,
        "compose.yaml:4:12: services.web.image: image registry:5000/web:1.2 was not found on any node"
    );

    let mut p = p;
    let pins = BTreeMap::from([
        (
            "postgres:16".to_string(),
            ImagePin::Digest("sha256:aa".into()),
        ),
        (
            "registry:5000/web:1.2".to_string(),
            ImagePin::Id("sha256:bb".into()),
        ),
    ]);
    pin_images(&mut p, &pins).unwrap();
    let img = |n: &str| {
        p.spec
            .services
            .iter()
            .find(|s| s.name == n)
            .unwrap()
            .image
            .clone()
    };
    assert_eq!(img("db"), "postgres@sha256:aa");
    assert_eq!(img("web"), "sha256:bb");
    assert_eq!(img("cache"), "redis@sha256:0123");
    let json: serde_json::Value = serde_json::from_str(&to_compose_json(&p)).unwrap();
    assert_eq!(json["services"]["db"]["image"], "postgres@sha256:aa");
    assert_eq!(json["services"]["web"]["image"], "sha256:bb");
}
