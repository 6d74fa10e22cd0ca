//! Loading a generated 200-service Compose file (target: under 50 ms),
//! against parsing the same text alone as the baseline measured in the same run.

use std::fmt::Write as _;

use criterion::{criterion_group, criterion_main, Criterion};
use flotilla_compose::{load, LoadOptions};

fn big_file(services: usize) -> String {
    let mut s = String::from(
        "x-common: &common\n  restart: unless-stopped\n  labels:\n    team: bench\n  environment:\n    LOG: ${LOG:-info}\nnetworks:\n  back: {}\nvolumes:\n  data: {}\nservices:\n",
    );
    for i in 0..services {
        let dep = if i > 0 {
            format!(
                "    depends_on:\n      svc{}:\n        condition: service_started\n",
                i - 1
            )
        } else {
            String::new()
        };
        let _ = write!(
            s,
            "  svc{i}:\n    <<: *common\n    image: registry.local/app:{i}\n    command: [\"serve\", \"--port\", \"{port}\"]\n    ports:\n      - \"{host}:{port}\"\n    volumes:\n      - data:/data/{i}\n      - ./conf/{i}:/etc/app:ro\n    networks: [default, back]\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 5s\n    deploy:\n      replicas: 2\n      resources:\n        limits: {{cpus: \"0.25\", memory: 64m}}\n{dep}",
            port = 8000 + i,
            host = 20000 + i,
        );
    }
    s
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = big_file(200);
    std::fs::write(dir.path().join("compose.yaml"), &text).expect("write compose file");
    let opts = LoadOptions::new(dir.path());
    let p = load(&opts).expect("the generated file loads");
    assert_eq!(p.spec.services.len(), 200);

    let mut g = c.benchmark_group("compose_200_services");
    g.bench_function("yaml_parse_only (baseline)", |b| {
        b.iter(|| flotilla_compose::yaml::parse(&text, &"compose.yaml".into()).expect("parses"))
    });
    g.bench_function("load", |b| b.iter(|| load(&opts).expect("loads")));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
