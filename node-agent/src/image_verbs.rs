//! Registry and image-store verbs on this node: pull, push, save, tag,
//! inspect, prune. Thin: the work is the runtime's image store; this file
//! maps requests, progress and errors between it and the API.
//!
//! Must never remove an image a container on this node uses, and never log
//! or echo the registry credentials a request carries.

use crate::executor::LABEL_TASK;
use crate::images::summary;
use crate::node_service::{KnownTasks, NodeService, OutStream};
use flotilla_proto::v1 as pb;
use flotilla_runtime::container::Runtime;
use flotilla_runtime::image::{
    Credential, ImageError, ImageStore, Progress, ProgressEvent, PullOptions, PushOptions,
    SaveFormat,
};
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Bytes per archive chunk sent by `save`.
const CHUNK: usize = 1 << 20;

/// The gRPC status for an image-store error (so `not found` stays one).
fn status(e: ImageError) -> Status {
    let m = e.to_string();
    match e {
        ImageError::NotFound { .. } => Status::not_found(m),
        ImageError::InvalidReference { .. } | ImageError::Ambiguous { .. } => {
            Status::invalid_argument(m)
        }
        ImageError::Unauthorized { .. } => Status::permission_denied(m),
        ImageError::Unsupported(_) => Status::failed_precondition(m),
        ImageError::Registry { .. } => Status::unavailable(m),
        _ => Status::internal(m),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("image store worker failed: {e}")))?
}

fn node_id_of(svc: &NodeService) -> String {
    svc.node_id.lock().map(|g| g.clone()).unwrap_or_default()
}

fn credentials(auth: &[pb::RegistryAuth]) -> Vec<Credential> {
    auth.iter()
        .map(|a| Credential {
            registry: a.registry.clone(),
            username: a.username.clone(),
            password: a.password.clone(),
            identity_token: a.identity_token.clone(),
        })
        .collect()
}

/// A progress callback that forwards events as `ImageProgress` messages.
/// It runs on the registry worker (inside its own runtime), so it never
/// blocks: a full channel drops the line, not the pull.
fn progress_sink(
    tx: mpsc::Sender<Result<pb::ImageProgress, Status>>,
    node_id: String,
    reference: String,
) -> Progress {
    Progress(Arc::new(move |e: ProgressEvent| {
        let _ = tx.try_send(Ok(pb::ImageProgress {
            node_id: node_id.clone(),
            reference: reference.clone(),
            status: e.status,
            layer: e.blob,
            current: e.current,
            total: e.total,
            ..Default::default()
        }));
    }))
}

pub async fn pull(
    svc: &NodeService,
    req: pb::PullImageRequest,
) -> Result<OutStream<pb::ImageProgress>, Status> {
    if req.reference.is_empty() {
        return Err(Status::invalid_argument("pull needs an image reference"));
    }
    let node_id = node_id_of(svc);
    let (tx, rx) = mpsc::channel(256);
    let store = svc.images.clone();
    let opts = PullOptions {
        platform: (!req.platform.is_empty()).then(|| req.platform.clone()),
        credentials: credentials(&req.auth),
        progress: Some(progress_sink(
            tx.clone(),
            node_id.clone(),
            req.reference.clone(),
        )),
        ..Default::default()
    };
    let first = pb::ImageProgress {
        node_id: node_id.clone(),
        reference: req.reference.clone(),
        status: format!("Pulling {}", req.reference),
        ..Default::default()
    };
    let _ = tx.send(Ok(first)).await;
    tokio::spawn(async move {
        let r = req.reference.clone();
        let done = tokio::task::spawn_blocking(move || store.pull(&r, &opts)).await;
        let mut last = pb::ImageProgress {
            node_id,
            reference: req.reference.clone(),
            ..Default::default()
        };
        match done {
            Ok(Ok(img)) => {
                last.status = format!("Pulled {} ({})", req.reference, img.manifest_digest);
                last.image = Some(summary(&img));
            }
            Ok(Err(e)) => last.error = e.to_string(),
            Err(e) => last.error = format!("pulling {}: worker failed: {e}", req.reference),
        }
        let _ = tx.send(Ok(last)).await;
    });
    Ok(ReceiverStream::new(rx))
}

pub async fn push(
    svc: &NodeService,
    req: pb::PushImageRequest,
) -> Result<OutStream<pb::ImageProgress>, Status> {
    if req.reference.is_empty() {
        return Err(Status::invalid_argument("push needs an image reference"));
    }
    let node_id = node_id_of(svc);
    let store = svc.images.clone();
    // Refuse an image this node lacks up front, as a status (the manager
    // pushes from one node only).
    let r = req.reference.clone();
    let s = store.clone();
    blocking(move || match s.resolve(&r) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Status::not_found(format!("no such image: {r}"))),
        Err(e) => Err(status(e)),
    })
    .await?;
    let (tx, rx) = mpsc::channel(256);
    let opts = PushOptions {
        credentials: credentials(&req.auth),
        progress: Some(progress_sink(
            tx.clone(),
            node_id.clone(),
            req.reference.clone(),
        )),
        ..Default::default()
    };
    let _ = tx
        .send(Ok(pb::ImageProgress {
            node_id: node_id.clone(),
            reference: req.reference.clone(),
            status: format!("The push refers to repository [{}]", req.reference),
            ..Default::default()
        }))
        .await;
    tokio::spawn(async move {
        let r = req.reference.clone();
        let st = store.clone();
        let done = tokio::task::spawn_blocking(move || {
            let digest = st.push(&r, &r, &opts)?;
            let img = st.resolve(&r)?;
            Ok::<_, ImageError>((digest, img))
        })
        .await;
        let mut last = pb::ImageProgress {
            node_id,
            reference: req.reference.clone(),
            ..Default::default()
        };
        match done {
            Ok(Ok((digest, img))) => {
                last.status = format!("{}: digest: {digest}", req.reference);
                last.image = img.as_ref().map(summary);
            }
            Ok(Err(e)) => last.error = e.to_string(),
            Err(e) => last.error = format!("pushing {}: worker failed: {e}", req.reference),
        }
        let _ = tx.send(Ok(last)).await;
    });
    Ok(ReceiverStream::new(rx))
}

/// Writes the archive as chunks into the response stream; a gone receiver
/// (the client hung up) stops the save with a broken pipe.
struct ChunkWriter {
    tx: mpsc::Sender<Result<pb::ImageArchiveChunk, Status>>,
    buf: Vec<u8>,
    node_id: Option<String>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let chunk = pb::ImageArchiveChunk {
            node_id: self.node_id.take().unwrap_or_default(),
            data,
            ..Default::default()
        };
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

pub async fn save(
    svc: &NodeService,
    req: pb::SaveImageRequest,
) -> Result<OutStream<pb::ImageArchiveChunk>, Status> {
    if req.references.is_empty() {
        return Err(Status::invalid_argument(
            "save needs at least one image reference",
        ));
    }
    let store = svc.images.clone();
    // Unknown names are refused before the stream starts.
    let refs = req.references.clone();
    let s = store.clone();
    blocking(move || {
        for r in &refs {
            match s.resolve(r) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(Status::not_found(format!("no such image: {r}"))),
                Err(e) => return Err(status(e)),
            }
        }
        Ok(())
    })
    .await?;
    let format = match pb::SaveFormat::try_from(req.format) {
        Ok(pb::SaveFormat::Oci) => SaveFormat::Oci,
        _ => SaveFormat::Docker,
    };
    let (tx, rx) = mpsc::channel(4);
    let node_id = node_id_of(svc);
    tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
            node_id: Some(node_id),
        };
        let refs: Vec<&str> = req.references.iter().map(String::as_str).collect();
        if let Err(e) = store.save_as(&refs, format, &mut w) {
            let _ = tx.blocking_send(Err(status(e)));
        }
    });
    Ok(ReceiverStream::new(rx))
}

pub async fn tag(
    svc: &NodeService,
    req: pb::TagImageRequest,
) -> Result<pb::TagImageResponse, Status> {
    let store = svc.images.clone();
    let node_id = node_id_of(svc);
    blocking(move || {
        store
            .tag(&req.source, &req.target)
            .map_err(status)
            .map(|_| pb::TagImageResponse {
                node_ids: vec![node_id],
            })
    })
    .await
}

pub async fn inspect(
    svc: &NodeService,
    req: pb::InspectImageRequest,
) -> Result<pb::InspectImageResponse, Status> {
    let store = svc.images.clone();
    let node_id = node_id_of(svc);
    blocking(move || {
        let img = store
            .resolve(&req.reference)
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("no such image: {}", req.reference)))?;
        let text = |d: &str| {
            store
                .read_blob(d)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(status)
        };
        Ok(pb::InspectImageResponse {
            images: vec![pb::ImageDetails {
                node_id,
                summary: Some(summary(&img)),
                config_json: text(&img.id)?,
                manifest_json: text(&img.manifest_digest)?,
                layers: img.diff_ids.clone(),
            }],
        })
    })
    .await
}

/// The ids of every image a container on this node uses. A container whose
/// image cannot be told (its task is unknown here) makes this fail rather
/// than let prune delete what it may need.
pub(crate) fn images_in_use(
    runtime: &Runtime,
    tasks: &KnownTasks,
    store: &ImageStore,
) -> Result<BTreeSet<String>, Status> {
    let containers = runtime
        .list()
        .map_err(|e| Status::internal(format!("listing containers: {e}")))?;
    let tasks = tasks
        .lock()
        .map(|g| g.clone())
        .map_err(|_| Status::internal("the known-task table is poisoned"))?;
    let mut used = BTreeSet::new();
    for c in containers {
        let spec = c
            .labels
            .get(LABEL_TASK)
            .and_then(|t| tasks.get(t))
            .and_then(|t| t.spec.as_ref());
        let Some(spec) = spec else {
            return Err(Status::failed_precondition(format!(
                "cannot tell which image container {} uses (its task is not known to this node yet); not pruning",
                c.id
            )));
        };
        let r = if spec.image_digest.is_empty() {
            &spec.image
        } else {
            &spec.image_digest
        };
        if let Some(img) = store.resolve(r).map_err(status)? {
            used.insert(img.id);
        }
    }
    Ok(used)
}

pub async fn prune(
    svc: &NodeService,
    req: pb::PruneImagesRequest,
) -> Result<pb::PruneImagesResponse, Status> {
    let store = svc.images.clone();
    let runtime = svc.runtime.clone();
    let tasks = svc.tasks.clone();
    blocking(move || {
        // The store's own lock is taken inside prune; a container created
        // between the listing and the prune is the manager's to avoid (it
        // pins images before it places tasks).
        let in_use = images_in_use(&runtime, &tasks, &store)?;
        let (deleted, reclaimed_bytes) = store.prune(req.all, &in_use).map_err(status)?;
        Ok(pb::PruneImagesResponse {
            deleted,
            reclaimed_bytes,
        })
    })
    .await
}
