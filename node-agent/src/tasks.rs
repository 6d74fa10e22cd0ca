//! What it takes to run one task here: resolve its image, set up its
//! network endpoint, write the files it sees (/etc/hosts, resolv.conf,
//! hostname), and have the runtime create its container; and to remove all
//! of that again.
//!
//! These are the operations the executor runs; they decide nothing about
//! *whether* a task should run.

use crate::dns::{self, DnsServer};
use crate::executor::{AgentConfig, LABEL_SERVICE, LABEL_STACK, LABEL_TASK};
use crate::network;
use crate::process::{self, container_id};
use flotilla_proto::v1 as pb;
use flotilla_runtime::container::{
    ContainerInfo, ContainerSpec, Device, LogConfig, Mount, MountKind, Resources, Runtime,
    SeccompProfile, Security, Ulimit,
};
use flotilla_runtime::image::ImageStore;
use flotilla_runtime::net::Netlink;
use flotilla_runtime::volume::{self, VolumeStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
pub struct OpContext {
    pub cfg: Arc<AgentConfig>,
    pub runtime: Arc<Runtime>,
    pub images: Arc<ImageStore>,
    pub netlink: Arc<Netlink>,
    pub dns: DnsServer,
}

impl OpContext {
    pub fn netns_dir(&self) -> PathBuf {
        self.cfg.run_dir.join("netns")
    }
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(task_id)
    }
    /// The local volume driver's store: `<state_dir>/volumes`.
    pub fn volumes(&self) -> Result<VolumeStore, String> {
        VolumeStore::open(&volumes_root(&self.cfg.state_dir)).map_err(|e| e.to_string())
    }
}

/// Where an agent with this state dir keeps its volumes; `down -v` and
/// `volume rm` must use the same root.
pub fn volumes_root(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("volumes")
}

/// The node-local name of a stack's volume, as Compose names it.
pub fn volume_name(stack: &str, name: &str) -> String {
    format!("{stack}_{name}")
}

pub enum StartError {
    /// The task can never run here (image missing, bad spec).
    Rejected(String),
    /// It tried and failed (the process could not start).
    Failed(String),
}

pub fn short(task_id: &str) -> String {
    container_id(task_id)[..12].to_string()
}

/// Prepares and starts a task's container.
pub async fn start_task(
    ctx: &OpContext,
    task: &pb::Task,
    networks: &[pb::Network],
    services: &[pb::Service],
) -> Result<ContainerInfo, StartError> {
    let spec = task.spec.clone().unwrap_or_default();
    let image_ref = if spec.image_digest.is_empty() {
        spec.image.clone()
    } else {
        spec.image_digest.clone()
    };

    // Image.
    let store = ctx.images.clone();
    let r = image_ref.clone();
    let (image, layers) = tokio::task::spawn_blocking(move || {
        let image = store
            .resolve(&r)
            .map_err(|e| StartError::Rejected(format!("resolving image {r}: {e}")))?
            .ok_or_else(|| {
                StartError::Rejected(format!(
                    "image {r} not found on this node (load it with `flotilla image load` or `flotilla image import`)"
                ))
            })?;
        let layers = store
            .layer_dirs(&image)
            .map_err(|e| StartError::Rejected(format!("unpacking image {r}: {e}")))?;
        Ok::<_, StartError>((image, layers))
    })
    .await
    .map_err(|e| StartError::Failed(format!("image worker: {e}")))??;

    let hostname = process::hostname(task);
    let proc_ = process::resolve(
        &spec,
        &crate::images::config_to_proto(&image.config),
        &hostname,
    )
    .map_err(|e| StartError::Rejected(e.to_string()))?;

    let net_mode = network::NetMode::parse(&spec.network_mode).map_err(StartError::Rejected)?;

    // Published host ports, refused before anything is made if taken.
    network::reserve_ports(task).map_err(StartError::Rejected)?;

    // Network endpoint: a netns with one veth per attached network, or
    // (network_mode) the host's, a bare one, or another container's.
    let netns_path = if net_mode.is_bridge() {
        let upstream = dns_upstream(&spec).map_err(StartError::Rejected)?;
        let path = network::setup_task(ctx, task, networks)
            .await
            .map_err(StartError::Failed)?;
        // The names are served before the container's first lookup.
        if let Err(e) = ctx.dns.attach(&task.id, &path, upstream).await {
            network::teardown_task(ctx, &task.id).await;
            return Err(StartError::Failed(e.to_string()));
        }
        Some(path)
    } else {
        let (rt, t) = (ctx.runtime.clone(), task.clone());
        tokio::task::spawn_blocking(move || network::shared_netns(&rt, &t, &net_mode))
            .await
            .map_err(|e| StartError::Failed(format!("netns worker: {e}")))?
            .map_err(StartError::Failed)?
    };

    // Files the container sees as /etc/hosts, /etc/hostname, /etc/resolv.conf.
    let dir = ctx.task_dir(&task.id);
    let files = network::write_task_files(&dir, task, services, &hostname, &spec)
        .map_err(|e| StartError::Failed(format!("writing {}: {e}", dir.display())))?;

    let mut labels = BTreeMap::new();
    labels.insert(LABEL_TASK.to_string(), task.id.clone());
    labels.insert(LABEL_STACK.to_string(), task.stack.clone());
    labels.insert(LABEL_SERVICE.to_string(), task.service_name.clone());
    let name = if task.name.is_empty() {
        spec.container_name.clone()
    } else {
        task.name.clone()
    };
    labels.insert(network::LABEL_CONTAINER_NAME.to_string(), name);
    let mut cspec = container_spec(&spec).map_err(StartError::Rejected)?;
    cspec.id = container_id(&task.id);
    cspec.hostname = hostname;
    cspec.layers = layers;
    cspec.args = proc_.args;
    cspec.env = proc_.env;
    cspec.cwd = proc_.cwd;
    cspec.user = proc_.user;
    cspec.netns = netns_path;
    cspec.mounts = files;
    cspec.labels = labels;
    let volumes = ctx.volumes().map_err(StartError::Failed)?;
    let t = task.clone();
    cspec.volumes = tokio::task::spawn_blocking(move || resolve_mounts(&volumes, &t, &spec))
        .await
        .map_err(|e| StartError::Failed(format!("volume worker: {e}")))??;
    let rt = ctx.runtime.clone();
    let created = tokio::task::spawn_blocking(move || {
        // A leftover container of the same task (crash mid-create) goes first.
        let _ = rt.remove(&cspec.id);
        rt.create(&cspec)
    })
    .await
    .map_err(|e| StartError::Failed(format!("runtime worker: {e}")))?;
    match created {
        Ok(info) => Ok(info),
        Err(e) => {
            remove_task(ctx, &task.id).await;
            Err(StartError::Failed(e.to_string()))
        }
    }
}

/// The service's own `dns:` servers (`IP` or `IP:PORT`), which replace the
/// daemon's upstream for its containers.
pub fn dns_upstream(spec: &pb::ServiceSpec) -> Result<Vec<std::net::SocketAddr>, String> {
    spec.dns
        .iter()
        .map(|s| dns::parse_upstream(s).map_err(|e| format!("service {}: dns: {e}", spec.name)))
        .collect()
}

/// Serves DNS again in a re-adopted task's netns (a restarted agent's
/// sockets are new). Only bridge-mode tasks have a netns of their own.
pub async fn attach_dns(ctx: &OpContext, task: &pb::Task) {
    let spec = task.spec.clone().unwrap_or_default();
    let bridge = network::NetMode::parse(&spec.network_mode).is_ok_and(|m| m.is_bridge());
    if !bridge {
        return;
    }
    let path = ctx.netns_dir().join(short(&task.id));
    let upstream = match dns_upstream(&spec) {
        Ok(u) => u,
        Err(msg) => {
            tracing::warn!(task = %task.id, "{msg}");
            Vec::new()
        }
    };
    if let Err(e) = ctx.dns.attach(&task.id, &path, upstream).await {
        tracing::warn!(task = %task.id, "re-attaching DNS: {e}");
    }
}

/// Removes a task's container, network endpoint and files (safe to repeat).
pub async fn remove_task(ctx: &OpContext, task_id: &str) {
    ctx.dns.detach(task_id);
    let rt = ctx.runtime.clone();
    let cid = container_id(task_id);
    let tid = task_id.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = rt.remove(&cid) {
            tracing::debug!(task = %tid, "removing container: {e}");
        }
    })
    .await;
    network::teardown_task(ctx, task_id).await;
    let _ = std::fs::remove_dir_all(ctx.task_dir(task_id));
}

/// Removes a node-local volume (`down -v`, `volume rm`): `name` is the
/// scoped name ([`volume_name`]). Refused while a container here still
/// mounts it; a volume that does not exist is not an error.
pub async fn remove_volume(ctx: &OpContext, name: &str) -> Result<(), String> {
    let store = ctx.volumes()?;
    let rt = ctx.runtime.clone();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let Some(vol) = store.get(&name).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let users = rt.volume_users(&vol.path).map_err(|e| e.to_string())?;
        if !users.is_empty() {
            return Err(format!(
                "volume {name} is in use by container(s) {}",
                users.join(", ")
            ));
        }
        match store.remove(&name) {
            Ok(()) | Err(volume::VolumeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|e| format!("volume worker: {e}"))?
}

/// Everything of the container spec that follows from the service spec
/// alone (process, network and files are filled in by the caller).
pub fn container_spec(spec: &pb::ServiceSpec) -> Result<ContainerSpec, String> {
    let res = spec.resources.clone().unwrap_or_default();
    let limits = res.limits.clone().unwrap_or_default();
    let reservations = res.reservations.clone().unwrap_or_default();
    let resources = Resources {
        memory_bytes: limits.memory_bytes,
        nano_cpus: limits.nano_cpus.map(|c| (c * 1e9).round() as i64),
        pids_limit: limits.pids,
        memory_reservation: res.mem_reservation.or(reservations.memory_bytes),
        memory_swap: res.memswap_limit,
        cpu_shares: res.cpu_shares,
        cpuset_cpus: Some(res.cpuset.clone()).filter(|c| !c.is_empty()),
        blkio_weight: res
            .blkio_weight
            .map(|w| u16::try_from(w).map_err(|_| format!("blkio weight {w} is out of range")))
            .transpose()?,
        oom_score_adj: res.oom_score_adj,
        ..Default::default()
    };
    Ok(ContainerSpec {
        domainname: spec.domainname.clone(),
        group_add: spec.group_add.clone(),
        resources,
        security: security(spec)?,
        read_only: spec.read_only,
        ulimits: spec
            .ulimits
            .iter()
            .map(|u| {
                let n = |v: i64| {
                    u64::try_from(v).map_err(|_| format!("ulimit {}: negative value {v}", u.name))
                };
                Ok(Ulimit {
                    name: u.name.clone(),
                    soft: n(u.soft)?,
                    hard: n(u.hard)?,
                })
            })
            .collect::<Result<_, String>>()?,
        sysctls: spec.sysctls.clone().into_iter().collect(),
        init: spec.init,
        shm_size: res
            .shm_size
            .map(|s| u64::try_from(s).map_err(|_| format!("shm_size {s} is negative")))
            .transpose()?,
        devices: spec
            .devices
            .iter()
            .map(|d| device(d))
            .collect::<Result<_, _>>()?,
        log: log_config(spec.logging.as_ref())?,
        ..Default::default()
    })
}

/// `privileged`, `cap_add`, `cap_drop` and `security_opt` (seccomp and
/// no-new-privileges; apparmor and label options have nothing to act on here).
fn security(spec: &pb::ServiceSpec) -> Result<Security, String> {
    let mut sec = Security {
        privileged: spec.privileged,
        cap_add: spec.cap_add.clone(),
        cap_drop: spec.cap_drop.clone(),
        ..Default::default()
    };
    for opt in &spec.security_opt {
        // Docker accepts both `key=value` and the older `key:value`.
        let (key, value) = match opt.split_once(['=', ':']) {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("no-new-privileges", None) => sec.no_new_privileges = true,
            ("no-new-privileges", Some(v)) => {
                sec.no_new_privileges = v
                    .parse()
                    .map_err(|_| format!("invalid security_opt {opt:?}: expected true or false"))?
            }
            ("seccomp", Some("unconfined")) => sec.seccomp = SeccompProfile::Unconfined,
            ("seccomp", Some("builtin")) => sec.seccomp = SeccompProfile::Default,
            ("seccomp", Some(v)) if v.trim_start().starts_with('{') => {
                sec.seccomp = SeccompProfile::Custom(v.to_string())
            }
            ("seccomp", Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading seccomp profile {path}: {e}"))?;
                sec.seccomp = SeccompProfile::Custom(text);
            }
            ("apparmor" | "label" | "systempaths", _) => {
                tracing::debug!(option = %opt, "security_opt has no effect on this host");
            }
            _ => return Err(format!("unsupported security_opt {opt:?}")),
        }
    }
    Ok(sec)
}

/// `devices:` entries: `HOST[:CONTAINER[:PERMISSIONS]]`.
fn device(s: &str) -> Result<Device, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (host, container, perms) = match parts.as_slice() {
        [h] => (*h, "", "rwm"),
        [h, p] if !p.starts_with('/') => (*h, "", *p),
        [h, c] => (*h, *c, "rwm"),
        [h, c, p] => (*h, *c, *p),
        _ => return Err(format!("invalid device {s:?}")),
    };
    if !host.starts_with('/') {
        return Err(format!(
            "invalid device {s:?}: the host path must be absolute"
        ));
    }
    Ok(Device {
        host_path: PathBuf::from(host),
        container_path: container.to_string(),
        permissions: perms.to_string(),
    })
}

/// Docker's size strings: "10m", "1.5g", "100k", "512" (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?}"))?;
    if v < 0.0 {
        return Err(format!("invalid size {s:?}"));
    }
    Ok((v * mult as f64) as u64)
}

/// The json-file driver's rotation options; other drivers are refused
/// rather than silently logging somewhere else.
fn log_config(logging: Option<&pb::LoggingConfig>) -> Result<LogConfig, String> {
    let Some(l) = logging else {
        return Ok(LogConfig::default());
    };
    if !matches!(l.driver.as_str(), "" | "json-file" | "local") {
        return Err(format!(
            "logging driver {:?} is not supported (json-file only)",
            l.driver
        ));
    }
    let max_size = l
        .options
        .get("max-size")
        .map(|v| parse_size(v))
        .transpose()?;
    let max_file = l
        .options
        .get("max-file")
        .map(|v| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("invalid logging max-file {v:?}"))
        })
        .transpose()?;
    Ok(LogConfig { max_size, max_file })
}

/// The service's `volumes:`/`tmpfs:` as runtime mounts: named volumes
/// (`<stack>_<name>`, created on first use) and anonymous ones (one per
/// slot and target, kept across restarts) get their directories here.
pub fn resolve_mounts(
    store: &VolumeStore,
    task: &pb::Task,
    spec: &pb::ServiceSpec,
) -> Result<Vec<Mount>, StartError> {
    let mut out = Vec::new();
    for m in &spec.mounts {
        if !m.subpath.is_empty() {
            return Err(StartError::Rejected(format!(
                "mount {}: volume subpath is not supported",
                m.target
            )));
        }
        let kind = match pb::MountType::try_from(m.r#type).unwrap_or(pb::MountType::Bind) {
            pb::MountType::Bind => MountKind::Bind {
                source: PathBuf::from(&m.source),
                propagation: m.propagation.clone(),
                create_host_path: m.create_host_path,
            },
            pb::MountType::Tmpfs => MountKind::Tmpfs {
                size: m.tmpfs_size,
                mode: m.tmpfs_mode,
            },
            pb::MountType::Volume => {
                let mut labels = BTreeMap::new();
                labels.insert(LABEL_STACK.to_string(), task.stack.clone());
                let vol = if m.source.is_empty() {
                    let name = crate::volume_verbs::anonymous_volume_name(
                        &task.stack,
                        &task.service_name,
                        task.slot,
                        &m.target,
                    );
                    labels.insert(crate::volume_verbs::LABEL_ANONYMOUS.into(), String::new());
                    store.ensure(&name, &labels)
                } else {
                    labels.insert("com.docker.compose.volume".into(), m.source.clone());
                    store.ensure(&volume_name(&task.stack, &m.source), &labels)
                }
                .map_err(|e| StartError::Failed(e.to_string()))?;
                MountKind::Volume {
                    source: vol.path,
                    copy_up: !m.nocopy,
                }
            }
        };
        out.push(Mount {
            kind,
            target: m.target.clone(),
            read_only: m.read_only,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_spec_maps_to_container_spec() {
        let mut spec = pb::ServiceSpec {
            domainname: "example.org".into(),
            read_only: true,
            init: true,
            privileged: false,
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["MKNOD".into()],
            security_opt: vec!["no-new-privileges:true".into(), "seccomp=unconfined".into()],
            group_add: vec!["wheel".into()],
            devices: vec!["/dev/null:/dev/x:rw".into(), "/dev/zero".into()],
            ulimits: vec![pb::Ulimit {
                name: "nofile".into(),
                soft: 10,
                hard: 20,
            }],
            logging: Some(pb::LoggingConfig {
                driver: "json-file".into(),
                options: [
                    ("max-size".to_string(), "1k".to_string()),
                    ("max-file".to_string(), "3".to_string()),
                ]
                .into(),
            }),
            resources: Some(pb::Resources {
                limits: Some(pb::ResourceSet {
                    nano_cpus: Some(0.5),
                    memory_bytes: Some(1 << 20),
                    pids: Some(20),
                    ..Default::default()
                }),
                cpu_shares: Some(512),
                cpuset: "0".into(),
                shm_size: Some(1 << 20),
                mem_reservation: Some(1 << 19),
                blkio_weight: Some(300),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = container_spec(&spec).unwrap();
        assert_eq!(c.domainname, "example.org");
        assert!(c.read_only && c.init);
        assert!(c.security.no_new_privileges);
        assert_eq!(c.security.seccomp, SeccompProfile::Unconfined);
        assert_eq!(c.security.cap_add, ["NET_ADMIN"]);
        assert_eq!(c.resources.nano_cpus, Some(500_000_000));
        assert_eq!(c.resources.pids_limit, Some(20));
        assert_eq!(c.resources.memory_reservation, Some(1 << 19));
        assert_eq!(c.resources.cpuset_cpus.as_deref(), Some("0"));
        assert_eq!(c.resources.blkio_weight, Some(300));
        assert_eq!(c.shm_size, Some(1 << 20));
        assert_eq!(c.devices[0].container_path, "/dev/x");
        assert_eq!(c.devices[0].permissions, "rw");
        assert_eq!(c.devices[1].permissions, "rwm");
        assert_eq!(c.ulimits[0].hard, 20);
        assert_eq!(c.log.max_size, Some(1024));
        assert_eq!(c.log.max_file, Some(3));

        spec.security_opt = vec!["bogus=1".into()];
        assert!(container_spec(&spec).unwrap_err().contains("bogus"));
        spec.security_opt = vec![];
        spec.logging = Some(pb::LoggingConfig {
            driver: "syslog".into(),
            ..Default::default()
        });
        assert!(container_spec(&spec).unwrap_err().contains("syslog"));
    }

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("10m").unwrap(), 10 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("2GB").unwrap(), 2 << 30);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn mounts_resolve_to_scoped_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        let task = pb::Task {
            stack: "shop".into(),
            service_name: "db".into(),
            slot: 1,
            ..Default::default()
        };
        let spec = pb::ServiceSpec {
            mounts: vec![
                pb::Mount {
                    r#type: pb::MountType::Volume as i32,
                    source: "data".into(),
                    target: "/var/lib/db".into(),
                    ..Default::default()
                },
                pb::Mount {
                    r#type: pb::MountType::Volume as i32,
                    target: "/cache".into(),
                    nocopy: true,
                    ..Default::default()
                },
                pb::Mount {
                    r#type: pb::MountType::Tmpfs as i32,
                    target: "/run".into(),
                    tmpfs_size: Some(4096),
                    ..Default::default()
                },
                pb::Mount {
                    r#type: pb::MountType::Bind as i32,
                    source: "/srv".into(),
                    target: "/srv".into(),
                    read_only: true,
                    propagation: "rslave".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let Ok(mounts) = resolve_mounts(&store, &task, &spec) else {
            panic!("resolving mounts failed");
        };
        assert_eq!(mounts.len(), 4);
        let named = store.get("shop_data").unwrap().unwrap();
        assert_eq!(
            mounts[0].kind,
            MountKind::Volume {
                source: named.path.clone(),
                copy_up: true
            }
        );
        assert!(matches!(
            &mounts[1].kind,
            MountKind::Volume { copy_up: false, .. }
        ));
        assert!(matches!(
            mounts[2].kind,
            MountKind::Tmpfs {
                size: Some(4096),
                ..
            }
        ));
        assert!(mounts[3].read_only);
        // The same slot finds its anonymous volume again.
        let Ok(again) = resolve_mounts(&store, &task, &spec) else {
            panic!("resolving mounts again failed");
        };
        assert_eq!(again[1], mounts[1]);
        assert_eq!(store.list().unwrap().len(), 2);
    }
}
