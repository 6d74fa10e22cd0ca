//! Loading real Compose files from disk into StackSpec, and the located
//! errors for each kind of mistake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_compose::{load, start_order, stop_order, DependencyGraph, GraphError, LoadOptions};
use flotilla_proto::v1::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn svc<'a>(spec: &'a StackSpec, name: &str) -> &'a ServiceSpec {
    spec.services.iter().find(|s| s.name == name).unwrap()
}

/// Writes `compose.yaml` (and extra files) into a fresh directory.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = d.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

fn errors_of(dir: &Path) -> Vec<String> {
    let opts = LoadOptions::new(dir);
    match load(&opts) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string().lines().map(String::from).collect(),
    }
}

#[test]
fn three_services_with_anchors_merge_keys_and_env() {
    let dir = fixture("three");
    let mut opts = LoadOptions::new(&dir);
    opts.env = BTreeMap::from([("REGION".to_string(), "us-east".to_string())]);
    let p = load(&opts).unwrap();
    assert_eq!(p.name, "shop");
    assert_eq!(p.files, vec![dir.join("compose.yaml")]);
    let spec = &p.spec;
    assert_eq!(spec.services.len(), 3);

    let web = svc(spec, "web");
    // .env value (shell does not set NGINX_TAG)
    assert_eq!(web.image, "nginx:1.27");
    assert_eq!(
        web.command.as_ref().unwrap().values,
        vec!["nginx", "-g", "daemon off;"]
    );
    // shell env wins over .env; default applies when unset
    assert_eq!(web.environment["REGION"], "us-east");
    assert_eq!(web.environment["LOG_LEVEL"], "info");
    assert_eq!(web.labels["tier"], "shop");
    assert_eq!(
        web.restart_policy.as_ref().unwrap().condition,
        RestartCondition::UnlessStopped as i32
    );
    assert_eq!(web.stop_grace_period_ms, Some(90_000));
    assert_eq!(web.ports.len(), 3);
    assert_eq!((web.ports[0].published, web.ports[0].target), (8080, 80));
    assert_eq!(web.ports[1].host_ip, "127.0.0.1");
    assert_eq!(web.ports[2].protocol, Protocol::Udp as i32);
    assert_eq!(web.ports[2].mode, PublishMode::Host as i32);
    assert_eq!(web.ports[2].published, 9001);
    assert_eq!(web.mounts[0].r#type, MountType::Bind as i32);
    assert_eq!(
        web.mounts[0].source,
        dir.join("static").display().to_string()
    );
    assert!(web.mounts[0].read_only);
    assert_eq!(web.mounts[1].r#type, MountType::Volume as i32);
    assert_eq!(web.mounts[1].source, "cache");
    assert_eq!(web.depends_on[0].service, "api");
    assert_eq!(
        web.depends_on[0].condition,
        DependencyCondition::Healthy as i32
    );
    assert_eq!(web.networks[0].network, "default");

    let api = svc(spec, "api");
    assert_eq!(api.environment["DB_URL"], "postgres://db/shop");
    assert_eq!(api.environment["LOG_LEVEL"], "info");
    // bare name with no value anywhere: left out
    assert!(!api.environment.contains_key("SECRET_TOKEN"));
    assert_eq!(api.replicas, Some(2));
    let limits = api.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits.nano_cpus, Some(0.5));
    assert_eq!(limits.memory_bytes, Some(256 * 1024 * 1024));
    assert_eq!(limits.pids, Some(100));
    let hc = api.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test[0], "CMD");
    assert_eq!(hc.interval_ms, Some(5000));
    assert_eq!(hc.retries, Some(3));
    let nets: Vec<&str> = api.networks.iter().map(|n| n.network.as_str()).collect();
    assert_eq!(nets, vec!["default", "backend"]);
    assert_eq!(api.networks[1].aliases, vec!["api-internal"]);

    let db = svc(spec, "db");
    assert_eq!(db.environment["POSTGRES_USER"], "shop user");
    let rp = db.restart_policy.as_ref().unwrap();
    assert_eq!(rp.condition, RestartCondition::OnFailure as i32);
    assert_eq!(rp.max_attempts, Some(5));
    assert_eq!(db.networks.len(), 1);
    assert_eq!(db.source.as_ref().unwrap().line, 52);

    let net_names: Vec<&str> = spec.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(net_names, vec!["backend", "default"]);
    assert_eq!(spec.volumes.len(), 2);

    assert_eq!(
        start_order(spec).unwrap(),
        vec![vec!["db"], vec!["api"], vec!["web"]]
    );
    assert_eq!(
        stop_order(spec).unwrap(),
        vec![vec!["web"], vec!["api"], vec!["db"]]
    );
    let g = DependencyGraph::new(spec).unwrap();
    assert_eq!(g.dependents("api").unwrap(), vec!["web"]);
    assert_eq!(
        g.with_dependencies(&["web".to_string()]).unwrap(),
        vec!["api", "db", "web"]
    );
}

#[test]
fn env_file_option_replaces_dotenv_and_project_name_sources() {
    let d = project(&[
        (
            "compose.yaml",
            "services:\n  app:\n    image: \"busybox:${TAG:?set TAG}\"\n",
        ),
        (".env", "TAG=from-dotenv\n"),
        (
            "other.env",
            "TAG=from-env-file\nCOMPOSE_PROJECT_NAME=fromenvfile\n",
        ),
    ]);
    let mut opts = LoadOptions::new(d.path());
    let p = load(&opts).unwrap();
    assert_eq!(p.spec.services[0].image, "busybox:from-dotenv");
    let dir_name = d
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase();
    assert_eq!(
        p.name,
        flotilla_compose::normalize_project_name(&dir_name).unwrap()
    );

    opts.env_files = vec![PathBuf::from("other.env")];
    let p = load(&opts).unwrap();
    assert_eq!(p.spec.services[0].image, "busybox:from-env-file");
    assert_eq!(p.name, "fromenvfile");

    opts.project_name = Some("cli-name".into());
    assert_eq!(load(&opts).unwrap().name, "cli-name");
    opts.project_name = Some("Bad Name".into());
    assert!(load(&opts).is_err());

    // Missing required variable.
    let d2 = project(&[(
        "compose.yaml",
        "services:\n  app:\n    image: \"busybox:${TAG:?set TAG}\"\n",
    )]);
    assert_eq!(
        errors_of(d2.path()),
        vec!["compose.yaml:3:12: services.app.image: required variable TAG is missing a value: set TAG"]
    );
}

#[test]
fn project_name_normalisation() {
    use flotilla_compose::normalize_project_name as n;
    assert_eq!(n("My.App_1").as_deref(), Some("myapp_1"));
    assert_eq!(n("--x").as_deref(), Some("x"));
    assert_eq!(n("..."), None);
}

#[test]
fn unknown_depends_on_and_keys_are_located() {
    let d = project(&[(
        "compose.yaml",
        "services:\n  web:\n    image: nginx\n    depends_on:\n      - db2\n    colour: blue\n  db:\n    image: postgres\n    x-note: fine\nfoo: 1\nx-top: fine\n",
    )]);
    assert_eq!(
        errors_of(d.path()),
        vec![
            "compose.yaml:5:9: services.web.depends_on: unknown service \"db2\"",
            "compose.yaml:6:5: services.web.colour: unknown key \"colour\"",
            "compose.yaml:10:1: foo: unknown key \"foo\"",
        ]
    );
}

#[test]
fn all_reference_errors_are_reported_together() {
    let src = "\
services:
  app:
    image: busybox
    networks: [front]
    volumes:
      - data:/data
      - type: volume
        source: logs
        target: /logs
    secrets:
      - token
    configs:
      - source: cfg
    ports:
      - \"80:abc\"
    restart: sometimes
    stop_grace_period: soon
  other:
    build: .
  third:
    image: x
    links: [app]
";
    let d = project(&[("compose.yaml", src)]);
    assert_eq!(
        errors_of(d.path()),
        vec![
            "compose.yaml:6:9: services.app.volumes[0]: undefined volume \"data\" (declare it under the top-level volumes:)",
            "compose.yaml:8:17: services.app.volumes[1].source: undefined volume \"logs\" (declare it under the top-level volumes:)",
            "compose.yaml:11:9: services.app.secrets[0]: undefined secret \"token\" (declare it under the top-level secrets:)",
            "compose.yaml:13:17: services.app.configs[0]: undefined config \"cfg\" (declare it under the top-level configs:)",
            "compose.yaml:15:9: services.app.ports[0]: invalid port \"80:abc\": bad container port \"abc\"",
            "compose.yaml:16:14: services.app.restart: invalid restart policy \"sometimes\" (expected no, always, on-failure[:N] or unless-stopped)",
            "compose.yaml:17:24: services.app.stop_grace_period: invalid duration \"soon\" (expected e.g. 10s, 1m30s, 500ms)",
            "compose.yaml:4:16: services.app.networks: undefined network \"front\" (declare it under the top-level networks:)",
            "compose.yaml:19:5: services.other.build: building images is not supported yet",
            "compose.yaml:22:5: services.third.links: not supported yet: links",
        ]
    );
}

#[test]
fn dependency_cycle_is_named_in_order() {
    let d = project(&[(
        "compose.yaml",
        "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [c]\n  c:\n    image: x\n    depends_on: [a]\n  d:\n    image: x\n",
    )]);
    assert_eq!(
        errors_of(d.path()),
        vec!["compose.yaml:4:5: services.a.depends_on: dependency cycle: a -> b -> c -> a"]
    );
    // The graph API refuses the same cycle on a hand-made spec.
    let mut spec = StackSpec::default();
    for (n, dep) in [("x", "y"), ("y", "x")] {
        spec.services.push(ServiceSpec {
            name: n.into(),
            depends_on: vec![Dependency {
                service: dep.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    assert_eq!(
        start_order(&spec).unwrap_err(),
        GraphError::Cycle(vec!["x".into(), "y".into(), "x".into()])
    );
}

#[test]
fn yaml_and_interpolation_errors_are_located() {
    let d = project(&[(
        "compose.yaml",
        "services:\n  a:\n    image: \"x:${TAG\"\n    command: echo $ 1\n",
    )]);
    let errs = errors_of(d.path());
    assert_eq!(errs.len(), 2);
    assert!(
        errs[0].starts_with("compose.yaml:3:12: services.a.image: invalid interpolation format"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("compose.yaml:4:14: services.a.command: invalid interpolation format"),
        "{errs:?}"
    );

    let d = project(&[("compose.yaml", "services:\n  a:\n    image: [x\n")]);
    let errs = errors_of(d.path());
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("compose.yaml:"), "{errs:?}");
    assert!(errs[0].contains("invalid YAML"), "{errs:?}");

    let d = project(&[(
        "compose.yaml",
        "services:\n  a:\n    image: x\n  a:\n    image: y\n",
    )]);
    assert_eq!(
        errors_of(d.path()),
        vec!["compose.yaml:4:3: duplicate key \"a\""]
    );
}

#[test]
fn profiles_select_services() {
    let src = "\
services:
  app:
    image: app
  debug:
    image: busybox
    profiles: [debug]
  migrate:
    image: migrate
    profiles: [tools]
    depends_on: [app]
  admin:
    image: admin
    profiles: [tools]
";
    let d = project(&[("compose.yaml", src)]);
    let names = |o: &LoadOptions| -> Vec<String> {
        load(o)
            .unwrap()
            .spec
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect()
    };
    let mut opts = LoadOptions::new(d.path());
    assert_eq!(names(&opts), vec!["app"]);
    opts.profiles = vec!["debug".into()];
    assert_eq!(names(&opts), vec!["app", "debug"]);
    opts.profiles = vec![];
    opts.services = vec!["migrate".into()];
    assert_eq!(names(&opts), vec!["app", "migrate", "admin"]);
    opts.services = vec![];
    opts.env
        .insert("COMPOSE_PROFILES".into(), "tools,debug".into());
    assert_eq!(load(&opts).unwrap().spec.services.len(), 4);
    opts.env.clear();
    opts.profiles = vec!["*".into()];
    assert_eq!(load(&opts).unwrap().spec.services.len(), 4);

    // A service depending on a disabled one is an error.
    let d = project(&[(
        "compose.yaml",
        "services:\n  app:\n    image: a\n    depends_on: [dbg]\n  dbg:\n    image: b\n    profiles: [debug]\n",
    )]);
    assert_eq!(
        errors_of(d.path()),
        vec!["compose.yaml:4:18: services.app.depends_on: service \"dbg\" is not enabled by the active profiles"]
    );
}

#[test]
fn override_file_and_multiple_files_merge() {
    let d = project(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: nginx\n    command: [a, b]\n    environment: [A=1, B=2]\n    ports: [\"80:80\"]\n    volumes: [\"./a:/data\"]\n    dns: 1.1.1.1\n",
        ),
        (
            "compose.override.yaml",
            "services:\n  web:\n    command: c\n    environment:\n      B: three\n    ports: [\"81:81\"]\n    volumes: [\"./b:/data\"]\n    dns: !reset []\n",
        ),
    ]);
    let p = load(&LoadOptions::new(d.path())).unwrap();
    let web = &p.spec.services[0];
    assert_eq!(p.files.len(), 2);
    assert_eq!(web.command.as_ref().unwrap().values, vec!["c"]);
    assert_eq!(web.environment["A"], "1");
    assert_eq!(web.environment["B"], "three");
    assert_eq!(web.ports.len(), 2);
    assert_eq!(web.mounts.len(), 1);
    assert!(web.mounts[0].source.ends_with("/b"));
    assert!(web.dns.is_empty());
}

#[test]
fn many_service_keys_are_carried() {
    let src = "\
services:
  s:
    image: busybox
    entrypoint: [\"/bin/sh\", \"-c\"]
    command: []
    working_dir: /w
    user: \"1000:1000\"
    hostname: h
    stop_signal: SIGINT
    container_name: c1
    init: true
    read_only: true
    privileged: false
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    extra_hosts:
      - \"db.local:10.0.0.2\"
    dns: [9.9.9.9]
    tmpfs: /run:size=64m,mode=1777
    expose: [\"3000\"]
    network_mode: host
    deploy:
      mode: global
      restart_policy:
        condition: on-failure
        delay: 2s
        max_attempts: 4
    secrets:
      - source: tok
        target: token
        mode: 0440
    configs: [cfg]
secrets:
  tok:
    environment: TOKEN
configs:
  cfg:
    content: hello
";
    let d = project(&[("compose.yaml", src)]);
    let mut opts = LoadOptions::new(d.path());
    opts.env.insert("TOKEN".into(), "s3cret".into());
    let p = load(&opts).unwrap();
    let s = &p.spec.services[0];
    assert_eq!(s.entrypoint.as_ref().unwrap().values, vec!["/bin/sh", "-c"]);
    assert_eq!(s.command.as_ref().unwrap().values, Vec::<String>::new());
    assert_eq!(s.user, "1000:1000");
    assert!(s.init && s.read_only && !s.privileged);
    assert_eq!(s.extra_hosts, vec!["db.local:10.0.0.2"]);
    let t = &s.mounts[0];
    assert_eq!(t.r#type, MountType::Tmpfs as i32);
    assert_eq!(t.tmpfs_size, Some(64 * 1024 * 1024));
    assert_eq!(t.tmpfs_mode, Some(0o1777));
    assert_eq!(s.network_mode, "host");
    assert!(s.networks.is_empty());
    assert!(p.spec.networks.is_empty());
    assert_eq!(s.mode, ServiceMode::Global as i32);
    let rp = s.restart_policy.as_ref().unwrap();
    assert_eq!(
        (rp.condition, rp.delay_ms, rp.max_attempts),
        (RestartCondition::OnFailure as i32, Some(2000), Some(4))
    );
    assert_eq!(s.secrets[0].target, "/run/secrets/token");
    assert_eq!(s.secrets[0].mode, Some(0o440));
    assert_eq!(s.configs[0].target, "/cfg");
    assert_eq!(p.spec.secrets[0].content, b"s3cret");
    assert_eq!(p.spec.configs[0].content, "hello");
}

#[test]
fn include_and_extends_resolve_with_their_own_paths() {
    let d = project(&[
        (
            "compose.yaml",
            "include:\n  - lib/db.yaml\nservices:\n  web:\n    extends:\n      file: lib/base.yaml\n      service: base\n    image: web\n    environment: [B=own]\n  worker:\n    extends: web\n    command: work\n",
        ),
        (
            "lib/db.yaml",
            "services:\n  db:\n    image: postgres\n    env_file: db.env\nvolumes:\n  data: {}\n",
        ),
        ("lib/db.env", "PGUSER=u\n"),
        (
            "lib/base.yaml",
            "services:\n  base:\n    image: base\n    environment: [A=base, B=base]\n    volumes: [\"./conf:/etc/conf\"]\n",
        ),
    ]);
    let p = load(&LoadOptions::new(d.path())).unwrap();
    let web = svc(&p.spec, "web");
    assert_eq!(web.image, "web");
    assert_eq!(web.environment["A"], "base");
    assert_eq!(web.environment["B"], "own");
    assert_eq!(
        web.mounts[0].source,
        d.path().join("lib/conf").display().to_string()
    );
    let worker = svc(&p.spec, "worker");
    assert_eq!(worker.image, "web");
    assert_eq!(worker.command.as_ref().unwrap().values, vec!["work"]);
    assert_eq!(svc(&p.spec, "db").environment["PGUSER"], "u");
    assert_eq!(p.spec.volumes[0].name, "data");
}

#[test]
fn include_and_extends_cycles_are_errors() {
    let d = project(&[
        (
            "compose.yaml",
            "include: [a.yaml]\nservices:\n  s:\n    image: x\n",
        ),
        (
            "a.yaml",
            "include: [compose.yaml]\nservices:\n  t:\n    image: y\n",
        ),
    ]);
    assert_eq!(
        errors_of(d.path()),
        vec!["a.yaml:1:11: include[0]: include cycle: compose.yaml -> a.yaml -> compose.yaml"]
    );
    let d = project(&[(
        "compose.yaml",
        "services:\n  a:\n    extends: b\n  b:\n    extends: a\n",
    )]);
    let errs = errors_of(d.path());
    assert!(
        errs.iter()
            .any(|e| e.contains("extends cycle: a -> b -> a")),
        "{errs:?}"
    );
}

#[test]
fn multiple_yaml_documents_are_refused_at_the_second() {
    let d = project(&[(
        "compose.yaml",
        "services:\n  web:\n    image: nginx\n---\nservices:\n  db:\n    image: postgres\n",
    )]);
    assert_eq!(
        errors_of(d.path()),
        vec!["compose.yaml:4:1: multiple YAML documents are not supported"]
    );
    // One document with an explicit start marker is fine.
    let d = project(&[("compose.yaml", "---\nservices:\n  web:\n    image: nginx\n")]);
    assert_eq!(
        load(&LoadOptions::new(d.path()))
            .unwrap()
            .spec
            .services
            .len(),
        1
    );
    // Also in an included file, located there.
    let d = project(&[
        (
            "compose.yaml",
            "include: [lib/more.yaml]\nservices:\n  web:\n    image: nginx\n",
        ),
        (
            "lib/more.yaml",
            "services:\n  a:\n    image: a\n--- \nservices:\n  b:\n    image: b\n",
        ),
    ]);
    assert_eq!(
        errors_of(d.path()),
        vec!["lib/more.yaml:4:1: multiple YAML documents are not supported"]
    );
}

#[test]
fn include_project_directory_and_env_file() {
    let d = project(&[
        (
            "compose.yaml",
            "include:\n  - path: lib/db.yaml\n    project_directory: proj\n  - path: [other/cache.yaml]\n    env_file: [cache.env]\nservices:\n  web:\n    image: web\n",
        ),
        (
            "lib/db.yaml",
            "services:\n  db:\n    image: postgres:${PGTAG:-none}\n    env_file: db.env\n    volumes: [\"./data:/data\"]\n",
        ),
        ("proj/.env", "PGTAG=16\n"),
        ("proj/db.env", "PGUSER=u\n"),
        ("other/.env", "CACHE_TAG=ignored\n"),
        ("other/cache.yaml", "services:\n  cache:\n    image: redis:${CACHE_TAG:-none}\n"),
        ("cache.env", "CACHE_TAG=7\n"),
    ]);
    let p = load(&LoadOptions::new(d.path())).unwrap();
    let db = svc(&p.spec, "db");
    assert_eq!(db.image, "postgres:16");
    assert_eq!(db.environment["PGUSER"], "u");
    assert_eq!(
        db.mounts[0].source,
        d.path().join("proj/data").display().to_string()
    );
    assert_eq!(svc(&p.spec, "cache").image, "redis:7");

    let d = project(&[
        (
            "compose.yaml",
            "include:\n  - path: a.yaml\n    project_directory: [x]\n",
        ),
        ("a.yaml", "services:\n  a:\n    image: a\n"),
    ]);
    assert_eq!(
        errors_of(d.path()),
        vec!["compose.yaml:3:24: include[0].project_directory: must be a string, not a sequence"]
    );
}
