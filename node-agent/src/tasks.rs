//! What it takes to run one task here: resolve its image, set up its
//! network endpoint, write the files it sees (/etc/hosts, resolv.conf,
//! hostname), and have the runtime create its container; and to remove all
//! of that again.
//!
//! These are the operations the executor runs; they decide nothing about
//! *whether* a task should run.

use crate::executor::{AgentConfig, LABEL_SERVICE, LABEL_STACK, LABEL_TASK};
use crate::network;
use crate::process::{self, container_id};
use flotilla_proto::v1 as pb;
use flotilla_runtime::container::{ContainerInfo, ContainerSpec, Resources, Runtime};
use flotilla_runtime::image::ImageStore;
use flotilla_runtime::net::Netlink;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
pub struct OpContext {
    pub cfg: Arc<AgentConfig>,
    pub runtime: Arc<Runtime>,
    pub images: Arc<ImageStore>,
    pub netlink: Arc<Netlink>,
}

impl OpContext {
    pub fn netns_dir(&self) -> PathBuf {
        self.cfg.run_dir.join("netns")
    }
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(task_id)
    }
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

    // Network endpoint: a netns with one veth per attached network.
    let netns_path = network::setup_task(ctx, task, networks)
        .await
        .map_err(StartError::Failed)?;

    // Files the container sees as /etc/hosts, /etc/hostname, /etc/resolv.conf.
    let dir = ctx.task_dir(&task.id);
    let files = network::write_task_files(&dir, task, services, &hostname, &spec)
        .map_err(|e| StartError::Failed(format!("writing {}: {e}", dir.display())))?;

    let mut labels = BTreeMap::new();
    labels.insert(LABEL_TASK.to_string(), task.id.clone());
    labels.insert(LABEL_STACK.to_string(), task.stack.clone());
    labels.insert(LABEL_SERVICE.to_string(), task.service_name.clone());
    let limits = spec
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    let cspec = ContainerSpec {
        id: container_id(&task.id),
        hostname,
        layers,
        args: proc_.args,
        env: proc_.env,
        cwd: proc_.cwd,
        user: proc_.user,
        netns: Some(netns_path),
        mounts: files,
        labels,
        resources: Resources {
            memory_bytes: limits.memory_bytes,
            nano_cpus: limits.nano_cpus.map(|c| (c * 1e9) as i64),
            pids_limit: limits.pids,
        },
    };
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

/// Removes a task's container, network endpoint and files (safe to repeat).
pub async fn remove_task(ctx: &OpContext, task_id: &str) {
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
