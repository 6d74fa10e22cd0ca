//! Conversions between the runtime's image types and the cluster model.
//!
//! Pure mapping; the image store itself lives in the runtime.

use flotilla_proto::v1 as pb;
use flotilla_runtime::image as rt;

fn list(v: &Option<Vec<String>>) -> Option<pb::StringList> {
    v.as_ref().map(|values| pb::StringList {
        values: values.clone(),
    })
}

/// The runtime's health config as the model's (nanoseconds → milliseconds).
fn health(h: &rt::HealthConfig) -> pb::HealthCheck {
    let ms = |ns: Option<u64>| ns.map(|n| n / 1_000_000);
    pb::HealthCheck {
        test: h.test.clone(),
        interval_ms: ms(h.interval_ns),
        timeout_ms: ms(h.timeout_ns),
        retries: h.retries,
        start_period_ms: ms(h.start_period_ns),
        start_interval_ms: ms(h.start_interval_ns),
        disable: h.test.first().is_some_and(|t| t == "NONE"),
    }
}

/// An image config as the model carries it.
pub fn config_to_proto(c: &rt::ImageConfig) -> pb::ImageConfig {
    pb::ImageConfig {
        entrypoint: list(&c.entrypoint),
        cmd: list(&c.cmd),
        env: c.env.clone(),
        user: c.user.clone(),
        working_dir: c.working_dir.clone(),
        healthcheck: c.healthcheck.as_ref().map(health),
        stop_signal: c.stop_signal.clone(),
        exposed_ports: c.exposed_ports.clone(),
        labels: c.labels.clone().into_iter().collect(),
        volumes: c.volumes.clone(),
        os: c.os.clone(),
        architecture: c.architecture.clone(),
    }
}

/// A model image config as the runtime's (for `image import`).
pub fn config_from_proto(c: &pb::ImageConfig) -> rt::ImageConfig {
    let ns = |ms: Option<u64>| ms.map(|m| m * 1_000_000);
    rt::ImageConfig {
        entrypoint: c.entrypoint.as_ref().map(|l| l.values.clone()),
        cmd: c.cmd.as_ref().map(|l| l.values.clone()),
        env: c.env.clone(),
        user: c.user.clone(),
        working_dir: c.working_dir.clone(),
        healthcheck: c.healthcheck.as_ref().map(|h| rt::HealthConfig {
            test: h.test.clone(),
            interval_ns: ns(h.interval_ms),
            timeout_ns: ns(h.timeout_ms),
            start_period_ns: ns(h.start_period_ms),
            start_interval_ns: ns(h.start_interval_ms),
            retries: h.retries,
        }),
        stop_signal: c.stop_signal.clone(),
        exposed_ports: c.exposed_ports.clone(),
        labels: c.labels.clone().into_iter().collect(),
        volumes: c.volumes.clone(),
        os: if c.os.is_empty() {
            "linux".into()
        } else {
            c.os.clone()
        },
        architecture: if c.architecture.is_empty() {
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64")
        } else {
            c.architecture.clone()
        },
    }
}

/// An image as the model's summary.
pub fn summary(i: &rt::Image) -> pb::ImageSummary {
    pb::ImageSummary {
        id: i.id.clone(),
        references: i.references.clone(),
        size: i.size,
        created_at: None,
        config: Some(config_to_proto(&i.config)),
        manifest_digest: i.manifest_digest.clone(),
    }
}
