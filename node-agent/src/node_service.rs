//! The agent's gRPC service for managers: the node-local image store, log
//! streams, `exec` in a task's container and `kill` (a signal only).
//! Managers forward users' requests here; users never call it.
//!
//! It must never change what should run: that is the manager's desired
//! state (a killed container is then handled by the restart policy).

use crate::images::{config_from_proto, summary};
use crate::process::container_id;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::node_agent_server::NodeAgent;
use flotilla_runtime::container::Runtime;
use flotilla_runtime::image::ImageStore;
use flotilla_runtime::logs::{self, LogFollower, LogStream};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// A server stream the agent answers with.
pub type OutStream<T> = ReceiverStream<Result<T, Status>>;

/// Tasks this node knows, by id, for labelling log lines.
pub type KnownTasks = Arc<Mutex<HashMap<String, pb::Task>>>;

/// The NodeAgent service.
pub struct NodeService {
    pub node_id: Arc<Mutex<String>>,
    pub hostname: String,
    pub images: Arc<ImageStore>,
    pub runtime: Arc<Runtime>,
    pub tasks: KnownTasks,
    pub tmp_dir: PathBuf,
    /// The local volume driver's store (`tasks::volumes_root`).
    pub volumes_root: PathBuf,
}

fn internal<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> Status + '_ {
    move |e| Status::internal(format!("{what}: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("image store worker failed: {e}")))?
}

impl NodeService {
    pub(crate) fn node_id(&self) -> String {
        self.node_id.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

fn to_line(e: &logs::LogEntry, task: &pb::Task) -> pb::LogLine {
    pb::LogLine {
        time: Some(pb::Timestamp::from_system(e.time)),
        stream: match e.stream {
            LogStream::Stdout => pb::LogStream::Stdout as i32,
            LogStream::Stderr => pb::LogStream::Stderr as i32,
        },
        line: e.line.clone(),
        task_id: task.id.clone(),
        service: task.service_name.clone(),
        slot: task.slot,
        container_name: task.name.clone(),
    }
}

#[tonic::async_trait]
impl NodeAgent for NodeService {
    async fn list_images(
        &self,
        _req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::NodeImages>, Status> {
        let store = self.images.clone();
        let images = blocking(move || store.list().map_err(internal("listing images"))).await?;
        Ok(Response::new(pb::NodeImages {
            node_id: self.node_id(),
            hostname: self.hostname.clone(),
            images: images.iter().map(summary).collect(),
        }))
    }

    async fn resolve_images(
        &self,
        req: Request<pb::ResolveImagesRequest>,
    ) -> Result<Response<pb::ResolveImagesResponse>, Status> {
        let refs = req.into_inner().references;
        let store = self.images.clone();
        let node_id = self.node_id();
        let images = blocking(move || {
            Ok(refs
                .into_iter()
                .map(|r| match store.resolve(&r) {
                    Ok(Some(img)) => pb::ResolvedImage {
                        reference: r,
                        node_id: node_id.clone(),
                        found: true,
                        image: Some(summary(&img)),
                        error: String::new(),
                    },
                    Ok(None) => pb::ResolvedImage {
                        reference: r,
                        node_id: node_id.clone(),
                        found: false,
                        image: None,
                        error: String::new(),
                    },
                    Err(e) => pb::ResolvedImage {
                        reference: r,
                        node_id: node_id.clone(),
                        found: false,
                        image: None,
                        error: e.to_string(),
                    },
                })
                .collect())
        })
        .await?;
        Ok(Response::new(pb::ResolveImagesResponse { images }))
    }

    async fn load_image(
        &self,
        req: Request<Streaming<pb::ImageArchiveChunk>>,
    ) -> Result<Response<pb::LoadImageResponse>, Status> {
        let mut stream = req.into_inner();
        std::fs::create_dir_all(&self.tmp_dir).map_err(internal("creating temp dir"))?;
        // Spool to a file first: the archive formats need random access to
        // their index (manifest.json may come last in a docker save).
        let mut file = tempfile::NamedTempFile::new_in(&self.tmp_dir)
            .map_err(internal("creating spool file"))?;
        let mut first: Option<pb::ImageArchiveChunk> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            file.write_all(&chunk.data)
                .map_err(internal("writing spool file"))?;
            if first.is_none() {
                first = Some(pb::ImageArchiveChunk {
                    data: Vec::new(),
                    ..chunk
                });
            }
        }
        let head = first.ok_or_else(|| Status::invalid_argument("empty image archive"))?;
        let store = self.images.clone();
        let path = file.into_temp_path();
        let images = blocking(move || {
            let f = std::fs::File::open(&path).map_err(internal("reopening spool file"))?;
            let reader = std::io::BufReader::new(f);
            if head.kind() == pb::ArchiveKind::Rootfs {
                if head.reference.is_empty() {
                    return Err(Status::invalid_argument(
                        "image import needs a reference to tag the image with",
                    ));
                }
                let config = config_from_proto(&head.config.unwrap_or_default());
                store
                    .import_rootfs(reader, &head.reference, config)
                    .map(|i| vec![i])
                    .map_err(|e| Status::invalid_argument(e.to_string()))
            } else {
                store
                    .load_archive(reader)
                    .map_err(|e| Status::invalid_argument(e.to_string()))
            }
        })
        .await?;
        Ok(Response::new(pb::LoadImageResponse {
            images: images.iter().map(summary).collect(),
            node_ids: vec![self.node_id()],
        }))
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let req = req.into_inner();
        let (r, force) = (req.reference, req.force);
        let store = self.images.clone();
        let runtime = self.runtime.clone();
        let tasks = self.tasks.clone();
        let removed = blocking(move || {
            if !force {
                // As Docker: an image a container uses stays unless forced.
                let img = store
                    .resolve(&r)
                    .map_err(|e| Status::internal(e.to_string()))?
                    .ok_or_else(|| Status::not_found(format!("no such image: {r}")))?;
                let used = crate::image_verbs::images_in_use(&runtime, &tasks, &store)?;
                if used.contains(&img.id) {
                    return Err(Status::failed_precondition(format!(
                        "image {r} ({}) is used by a container on this node; stop it first or remove with -f",
                        img.id
                    )));
                }
            }
            store
                .remove(&r)
                .map_err(|e| Status::not_found(e.to_string()))
        })
        .await?;
        Ok(Response::new(pb::RemoveImageResponse { removed }))
    }

    type LogsStream = ReceiverStream<Result<pb::LogLine, Status>>;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        let known = self.tasks.lock().map(|g| g.clone()).unwrap_or_default();
        let tasks: Vec<pb::Task> = req
            .task_ids
            .iter()
            .filter_map(|id| known.get(id).cloned())
            .collect();
        let (tx, rx) = mpsc::channel(256);
        let runtime = self.runtime.clone();
        let since = req.since.map(|t| t.to_system());
        let until = req.until.map(|t| t.to_system());
        let tail = req.tail.map(|t| usize::try_from(t).unwrap_or(usize::MAX));
        let follow = req.follow;
        tokio::task::spawn_blocking(move || {
            // History first, merged by time across containers like Compose.
            let mut history = Vec::new();
            let mut followers = Vec::new();
            for task in &tasks {
                let path = runtime.log_path(&container_id(&task.id));
                match logs::read(&path, tail, since, until) {
                    Ok(entries) => {
                        history.extend(entries.into_iter().map(|e| (e.time, to_line(&e, task))))
                    }
                    Err(e) => tracing::debug!(task = %task.id, "no logs yet: {e}"),
                }
                if follow {
                    if let Ok(f) = LogFollower::open(&path, true) {
                        followers.push((task.clone(), f));
                    }
                }
            }
            history.sort_by_key(|(t, _)| *t);
            for (_, line) in history {
                if tx.blocking_send(Ok(line)).is_err() {
                    return;
                }
            }
            while follow && !tx.is_closed() {
                let mut any = false;
                for (task, f) in followers.iter_mut() {
                    match f.next_batch(Duration::from_millis(0)) {
                        Ok(batch) => {
                            for e in batch {
                                any = true;
                                if tx.blocking_send(Ok(to_line(&e, task))).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => tracing::debug!(task = %task.id, "log follow: {e}"),
                    }
                }
                if !any {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn exec(
        &self,
        req: Request<pb::ExecRequest>,
    ) -> Result<Response<pb::ExecResponse>, Status> {
        use flotilla_runtime::container::{ContainerError, ExecError, ExecSpec};
        let req = req.into_inner();
        let known = self
            .tasks
            .lock()
            .map(|t| t.contains_key(&req.task_id))
            .unwrap_or(false);
        if !known {
            return Err(Status::not_found(format!(
                "task {} is not on this node",
                req.task_id
            )));
        }
        let spec = ExecSpec {
            args: req.args,
            env: req.env,
            cwd: (!req.workdir.is_empty()).then_some(req.workdir),
            timeout: (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms)),
            user: (!req.user.is_empty()).then_some(req.user),
        };
        let rt = self.runtime.clone();
        let cid = container_id(&req.task_id);
        let task_id = req.task_id.clone();
        let out = tokio::task::spawn_blocking(move || rt.exec(&cid, &spec))
            .await
            .map_err(internal("exec worker"))?
            .map_err(|e| match e {
                ExecError::NotRunning { .. } => Status::failed_precondition(e.to_string()),
                ExecError::NoCommand { .. } => Status::invalid_argument(e.to_string()),
                ExecError::Container(ContainerError::NotFound { .. }) => {
                    Status::not_found(e.to_string())
                }
                e => Status::internal(e.to_string()),
            })?;
        Ok(Response::new(pb::ExecResponse {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
            task_id,
            timed_out: out.timed_out,
        }))
    }

    async fn kill(
        &self,
        req: Request<pb::KillRequest>,
    ) -> Result<Response<pb::KillResponse>, Status> {
        let req = req.into_inner();
        let signal = if req.signal.is_empty() {
            libc::SIGKILL
        } else {
            crate::signals::parse(&req.signal).ok_or_else(|| {
                Status::invalid_argument(format!("unknown signal {:?}", req.signal))
            })?
        };
        let rt = self.runtime.clone();
        let ids = req.task_ids.clone();
        let signalled = tokio::task::spawn_blocking(move || {
            let mut done = Vec::new();
            for id in ids {
                // A container that already exited is not an error: the
                // signal had nothing to reach.
                match rt.kill(&container_id(&id), signal) {
                    Ok(()) => done.push(id),
                    Err(e) => tracing::info!(task = %id, "kill: {e}"),
                }
            }
            done
        })
        .await
        .map_err(internal("kill worker"))?;
        Ok(Response::new(pb::KillResponse {
            task_ids: signalled,
        }))
    }

    type ExecStreamStream = OutStream<pb::ExecOutput>;

    async fn exec_stream(
        &self,
        req: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStreamStream>, Status> {
        crate::ops::exec_stream(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn top(&self, req: Request<pb::TopRequest>) -> Result<Response<pb::TopResponse>, Status> {
        crate::ops::top(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        crate::ops::stats(self, req.into_inner())
            .await
            .map(Response::new)
    }

    type CopyFromContainerStream = OutStream<pb::CopyChunk>;

    async fn copy_from_container(
        &self,
        req: Request<pb::CopyRequest>,
    ) -> Result<Response<Self::CopyFromContainerStream>, Status> {
        crate::ops::copy_from(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn copy_to_container(
        &self,
        req: Request<Streaming<pb::CopyChunk>>,
    ) -> Result<Response<pb::CopyResponse>, Status> {
        crate::ops::copy_to(self, req.into_inner())
            .await
            .map(Response::new)
    }

    type PullImageStream = OutStream<pb::ImageProgress>;

    async fn pull_image(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        crate::image_verbs::pull(self, req.into_inner())
            .await
            .map(Response::new)
    }

    type PushImageStream = OutStream<pb::ImageProgress>;

    async fn push_image(
        &self,
        req: Request<pb::PushImageRequest>,
    ) -> Result<Response<Self::PushImageStream>, Status> {
        crate::image_verbs::push(self, req.into_inner())
            .await
            .map(Response::new)
    }

    type SaveImageStream = OutStream<pb::ImageArchiveChunk>;

    async fn save_image(
        &self,
        req: Request<pb::SaveImageRequest>,
    ) -> Result<Response<Self::SaveImageStream>, Status> {
        crate::image_verbs::save(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn tag_image(
        &self,
        req: Request<pb::TagImageRequest>,
    ) -> Result<Response<pb::TagImageResponse>, Status> {
        crate::image_verbs::tag(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn inspect_image(
        &self,
        req: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::InspectImageResponse>, Status> {
        crate::image_verbs::inspect(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn prune_images(
        &self,
        req: Request<pb::PruneImagesRequest>,
    ) -> Result<Response<pb::PruneImagesResponse>, Status> {
        crate::image_verbs::prune(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_volumes(
        &self,
        req: Request<pb::RemoveVolumesRequest>,
    ) -> Result<Response<pb::RemoveVolumesResponse>, Status> {
        crate::volume_verbs::remove(self, req.into_inner())
            .await
            .map(Response::new)
    }
}
