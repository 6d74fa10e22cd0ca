//! Validation against the Compose Specification's JSON schema: every
//! violation located as `FILE:LINE:COLUMN: path: message`, all at once, and
//! interpolated values cast to the types the schema expects.

use flotilla_compose::{load_for_config, LoadOptions};

fn project(text: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("compose.yaml"), text).unwrap();
    d
}

fn errors(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    let d = project(text);
    let mut opts = LoadOptions::new(d.path());
    for (k, v) in env {
        opts.env.insert(k.to_string(), v.to_string());
    }
    match load_for_config(&opts) {
        Ok(_) => Vec::new(),
        Err(e) => e.to_string().lines().map(String::from).collect(),
    }
}

#[test]
fn every_schema_error_is_located_and_reported_at_once() {
    let errs = errors(
        "services:\n  web:\n    image: nginx\n    ports:\n      - \"80:80\"\n      - [8080]\n    healthcheck:\n      retries: {a: 1}\n    restart: [always]\n    deploy:\n      mode: replicated\n      replicas: many\n",
        &[],
    );
    assert!(
        errs.contains(&"compose.yaml:6:9: services.web.ports[1]: must be a number or a string or a mapping, not a sequence".to_string()),
        "{errs:#?}"
    );
    assert!(
        errs.contains(&"compose.yaml:8:16: services.web.healthcheck.retries: must be a number or a string, not a mapping".to_string()),
        "{errs:#?}"
    );
    assert!(
        errs.contains(
            &"compose.yaml:9:14: services.web.restart: must be a string, not a sequence"
                .to_string()
        ),
        "{errs:#?}"
    );
    assert_eq!(
        errs.last().unwrap(),
        // The schema allows a string here (for interpolation); the converter does not.
        "compose.yaml:12:17: services.web.deploy.replicas: must be an integer, not a string",
        "{errs:#?}"
    );
    // Sorted by position, so the file reads top to bottom.
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn unknown_keys_point_at_the_key() {
    let errs = errors(
        "services:\n  web:\n    image: nginx\n    healthcheck:\n      tset: [\"CMD\", \"true\"]\nvolumes:\n  data:\n    drivr: local\n",
        &[],
    );
    assert_eq!(
        errs,
        vec![
            "compose.yaml:5:7: services.web.healthcheck.tset: unknown key \"tset\"",
            "compose.yaml:8:5: volumes.data.drivr: unknown key \"drivr\"",
        ]
    );
}

#[test]
fn interpolated_numbers_and_booleans_are_cast_like_compose() {
    let text = "services:\n  web:\n    image: nginx\n    read_only: ${RO}\n    deploy:\n      replicas: ${N}\n    ports:\n      - target: ${PORT}\n        published: \"8080\"\nnetworks:\n  ext:\n    external: ${EXT}\n";
    assert_eq!(
        errors(
            text,
            &[("N", "3"), ("PORT", "80"), ("RO", "yes"), ("EXT", "true")]
        ),
        Vec::<String>::new()
    );
    let d = project(text);
    let mut opts = LoadOptions::new(d.path());
    for (k, v) in [("N", "3"), ("PORT", "80"), ("RO", "yes"), ("EXT", "true")] {
        opts.env.insert(k.into(), v.into());
    }
    let p = load_for_config(&opts).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&flotilla_compose::to_compose_json(&p)).unwrap();
    assert_eq!(json["services"]["web"]["deploy"]["replicas"], 3);
    assert_eq!(json["services"]["web"]["read_only"], true);
    assert_eq!(json["services"]["web"]["ports"][0]["target"], 80);
    // A value that is not a number stays a string and the schema says so.
    let errs = errors(
        text,
        &[
            ("N", "3"),
            ("PORT", "eighty"),
            ("RO", "yes"),
            ("EXT", "true"),
        ],
    );
    assert_eq!(
        errs,
        vec!["compose.yaml:8:17: services.web.ports[0].target: must be an integer, not a string"]
    );
}

#[test]
fn schema_and_semantic_errors_come_together() {
    let errs = errors(
        "services:\n  web:\n    image: nginx\n    depends_on: [db]\n    privileged: maybe\n",
        &[],
    );
    assert_eq!(
        errs,
        vec![
            "compose.yaml:4:18: services.web.depends_on: unknown service \"db\"",
            "compose.yaml:5:17: services.web.privileged: must be a boolean, not a string",
        ],
        "{errs:#?}"
    );
}
