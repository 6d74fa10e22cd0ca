//! The image configuration blob (OCI `application/vnd.oci.image.config.v1+json`,
//! which Docker's config is a superset of): reading the fields Flotilla uses
//! into [`ImageConfig`], and writing a config for an imported root
//! filesystem.
//!
//! It must never drop a field silently when writing a config it did not
//! read (only `import_rootfs` writes configs, from a full [`ImageConfig`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{HealthConfig, ImageConfig, ImageError};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(crate) struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(crate) struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Healthcheck {
    #[serde(default)]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<ConfigFile, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Malformed {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

impl ConfigFile {
    pub(crate) fn image_config(&self) -> ImageConfig {
        let c = self.config.as_ref();
        let keys = |m: Option<&BTreeMap<String, serde_json::Value>>| {
            m.map(|m| m.keys().cloned().collect()).unwrap_or_default()
        };
        ImageConfig {
            entrypoint: c.and_then(|c| c.entrypoint.clone()),
            cmd: c.and_then(|c| c.cmd.clone()),
            env: c.and_then(|c| c.env.clone()).unwrap_or_default(),
            user: c.and_then(|c| c.user.clone()).unwrap_or_default(),
            working_dir: c.and_then(|c| c.working_dir.clone()).unwrap_or_default(),
            healthcheck: c
                .and_then(|c| c.healthcheck.as_ref())
                .map(|h| HealthConfig {
                    test: h.test.clone().unwrap_or_default(),
                    interval_ns: h.interval.filter(|v| *v != 0),
                    timeout_ns: h.timeout.filter(|v| *v != 0),
                    start_period_ns: h.start_period.filter(|v| *v != 0),
                    start_interval_ns: h.start_interval.filter(|v| *v != 0),
                    retries: h.retries.filter(|v| *v != 0),
                }),
            stop_signal: c.and_then(|c| c.stop_signal.clone()).unwrap_or_default(),
            exposed_ports: keys(c.and_then(|c| c.exposed_ports.as_ref())),
            labels: c.and_then(|c| c.labels.clone()).unwrap_or_default(),
            volumes: keys(c.and_then(|c| c.volumes.as_ref())),
            os: self.os.clone(),
            architecture: self.architecture.clone(),
        }
    }

    /// A config for a single-layer image built from `cfg`.
    pub(crate) fn from_image_config(cfg: &ImageConfig, diff_id: &str, created: &str) -> Self {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let set = |v: &[String]| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|k| (k.clone(), serde_json::json!({})))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        ConfigFile {
            created: Some(created.to_string()),
            architecture: cfg.architecture.clone(),
            os: cfg.os.clone(),
            variant: None,
            config: Some(ContainerConfig {
                user: nonempty(&cfg.user),
                exposed_ports: set(&cfg.exposed_ports),
                env: (!cfg.env.is_empty()).then(|| cfg.env.clone()),
                entrypoint: cfg.entrypoint.clone(),
                cmd: cfg.cmd.clone(),
                volumes: set(&cfg.volumes),
                working_dir: nonempty(&cfg.working_dir),
                labels: (!cfg.labels.is_empty()).then(|| cfg.labels.clone()),
                stop_signal: nonempty(&cfg.stop_signal),
                healthcheck: cfg.healthcheck.as_ref().map(|h| Healthcheck {
                    test: Some(h.test.clone()),
                    interval: h.interval_ns,
                    timeout: h.timeout_ns,
                    start_period: h.start_period_ns,
                    start_interval: h.start_interval_ns,
                    retries: h.retries,
                }),
            }),
            rootfs: RootFs {
                kind: "layers".to_string(),
                diff_ids: vec![diff_id.to_string()],
            },
            history: vec![History {
                created: Some(created.to_string()),
                created_by: Some("flotilla import_rootfs".to_string()),
                comment: None,
                empty_layer: None,
            }],
        }
    }
}

/// The architecture name OCI uses for the machine this runs on.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2024-05-01T12:00:00Z`).
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn parses_docker_config() {
        let raw = br#"{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z",
          "config":{"Env":["PATH=/bin"],"Cmd":["sh"],"Entrypoint":null,"ExposedPorts":{"80/tcp":{}},
          "Labels":null,"Healthcheck":{"Test":["CMD","true"],"Interval":1000000000,"Retries":3},
          "StopSignal":"SIGQUIT","Volumes":{"/data":{}}},
          "rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"container_config":{}}"#;
        let c = parse(raw, "test config").unwrap();
        let ic = c.image_config();
        assert_eq!(ic.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(ic.entrypoint, None);
        assert_eq!(ic.env, vec!["PATH=/bin".to_string()]);
        assert_eq!(ic.exposed_ports, vec!["80/tcp".to_string()]);
        assert_eq!(ic.volumes, vec!["/data".to_string()]);
        assert_eq!(ic.stop_signal, "SIGQUIT");
        let h = ic.healthcheck.unwrap();
        assert_eq!(h.interval_ns, Some(1_000_000_000));
        assert_eq!(h.retries, Some(3));
        assert_eq!(h.timeout_ns, None);
        assert_eq!(c.rootfs.diff_ids, vec!["sha256:aa".to_string()]);
    }

    #[test]
    fn round_trips_image_config() {
        let cfg = ImageConfig {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["echo hi".into()]),
            env: vec!["A=1".into()],
            user: "1000:1000".into(),
            working_dir: "/app".into(),
            healthcheck: Some(HealthConfig {
                test: vec!["CMD-SHELL".into(), "true".into()],
                interval_ns: Some(5),
                ..Default::default()
            }),
            stop_signal: "SIGTERM".into(),
            exposed_ports: vec!["8080/tcp".into()],
            labels: [("k".to_string(), "v".to_string())].into(),
            volumes: vec!["/v".into()],
            os: "linux".into(),
            architecture: "amd64".into(),
        };
        let file = ConfigFile::from_image_config(&cfg, "sha256:bb", "2024-01-01T00:00:00Z");
        let bytes = serde_json::to_vec(&file).unwrap();
        let back = parse(&bytes, "round trip").unwrap();
        assert_eq!(back.image_config(), cfg);
        assert_eq!(back.created.as_deref(), Some("2024-01-01T00:00:00Z"));
    }
}
