//! Calls the manager forwards to agents' `NodeAgent` services (logs and the
//! node-local image store). The manager holds no image or log data itself:
//! it only finds the right nodes in the store and relays.

use crate::raft::StoreHandle;
use flotilla_proto::v1::{
    node_agent_client::NodeAgentClient, ImageArchiveChunk, ImageSummary, ListImagesRequest,
    LoadImageResponse, LogLine, LogsRequest, NodeImages, NodeState, RemoveImageRequest,
    RemoveImageResponse, ResolveImagesRequest, ResolveImagesResponse, ResolvedImage,
};
use futures::StreamExt;
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// A node to forward to.
#[derive(Debug, Clone)]
pub struct Target {
    pub node_id: String,
    pub hostname: String,
    pub addr: String,
}

/// `node_id` given: that node (it must exist and have an agent address);
/// empty: every Ready node with an agent address.
pub fn targets(store: &StoreHandle, node_id: &str) -> Result<Vec<Target>, Status> {
    store.read(|s| {
        let to_target = |n: &flotilla_proto::v1::Node| Target {
            node_id: n.id.clone(),
            hostname: n
                .description
                .as_ref()
                .map(|d| d.hostname.clone())
                .unwrap_or_default(),
            addr: n
                .status
                .as_ref()
                .map(|st| st.agent_addr.clone())
                .unwrap_or_default(),
        };
        if !node_id.is_empty() {
            let n = s
                .node(node_id)
                .ok_or_else(|| Status::not_found(format!("node {node_id} does not exist")))?;
            let t = to_target(n);
            if t.addr.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "node {node_id} has no agent address"
                )));
            }
            return Ok(vec![t]);
        }
        Ok(s.nodes()
            .filter(|n| n.status.as_ref().map(|st| st.state()) == Some(NodeState::Ready))
            .map(to_target)
            .filter(|t| !t.addr.is_empty())
            .collect())
    })
}

/// Like [`targets`], but when no node is ready yet (a daemon that has just
/// started, whose own agent is still registering) waits up to 10 s for one
/// rather than failing a request that would succeed a moment later.
pub async fn ready_targets(store: &StoreHandle, node_id: &str) -> Result<Vec<Target>, Status> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let t = targets(store, node_id)?;
        if !t.is_empty() || !node_id.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(t);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn client(t: &Target) -> Result<NodeAgentClient<Channel>, Status> {
    let ch = flotilla_proto::transport::connect(&t.addr)
        .await
        .map_err(|e| Status::unavailable(format!("node {}: {e}", t.node_id)))?;
    Ok(NodeAgentClient::new(ch))
}

fn node_err(t: &Target, s: Status) -> Status {
    Status::new(
        s.code(),
        format!("node {} ({}): {}", t.node_id, t.addr, s.message()),
    )
}

/// Opens each node's log stream for its tasks and merges them into one.
pub async fn logs(
    by_node: Vec<(Target, Vec<String>)>,
    req: LogsRequest,
) -> Result<ReceiverStream<Result<LogLine, Status>>, Status> {
    let mut streams = Vec::new();
    for (t, task_ids) in by_node {
        let mut c = client(&t).await?;
        let mut r = req.clone();
        r.task_ids = task_ids;
        let s: Streaming<LogLine> = c.logs(r).await.map_err(|e| node_err(&t, e))?.into_inner();
        let tt = t.clone();
        streams.push(
            s.map(move |item| item.map_err(|e| node_err(&tt, e)))
                .boxed(),
        );
    }
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut merged = futures::stream::select_all(streams);
        while let Some(item) = merged.next().await {
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

pub async fn resolve_images(
    targets: Vec<Target>,
    req: ResolveImagesRequest,
) -> Result<ResolveImagesResponse, Status> {
    let mut images: Vec<ResolvedImage> = Vec::new();
    for t in targets {
        let mut c = client(&t).await?;
        let mut r = req.clone();
        r.node_id = t.node_id.clone();
        let resp = c
            .resolve_images(r)
            .await
            .map_err(|e| node_err(&t, e))?
            .into_inner();
        images.extend(resp.images.into_iter().map(|mut i| {
            if i.node_id.is_empty() {
                i.node_id = t.node_id.clone();
            }
            i
        }));
    }
    Ok(ResolveImagesResponse { images })
}

pub async fn list_images(targets: Vec<Target>) -> Result<Vec<NodeImages>, Status> {
    let mut out = Vec::new();
    for t in targets {
        let mut c = client(&t).await?;
        let mut ni = c
            .list_images(ListImagesRequest {
                node_id: t.node_id.clone(),
            })
            .await
            .map_err(|e| node_err(&t, e))?
            .into_inner();
        ni.node_id = t.node_id.clone();
        if ni.hostname.is_empty() {
            ni.hostname = t.hostname.clone();
        }
        out.push(ni);
    }
    Ok(out)
}

pub async fn remove_image(
    targets: Vec<Target>,
    req: RemoveImageRequest,
) -> Result<RemoveImageResponse, Status> {
    let mut removed = Vec::new();
    for t in targets {
        let mut c = client(&t).await?;
        let mut r = req.clone();
        r.node_id = t.node_id.clone();
        let resp = c
            .remove_image(r)
            .await
            .map_err(|e| node_err(&t, e))?
            .into_inner();
        removed.extend(resp.removed);
    }
    removed.sort();
    removed.dedup();
    Ok(RemoveImageResponse { removed })
}

/// Streams an archive to every target at once (each chunk is copied to each
/// node's upload), then merges the answers.
pub async fn load_image(
    targets: Vec<Target>,
    first: ImageArchiveChunk,
    mut rest: Streaming<ImageArchiveChunk>,
) -> Result<LoadImageResponse, Status> {
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for t in targets {
        let mut c = client(&t).await?;
        let (tx, rx) = mpsc::channel::<ImageArchiveChunk>(8);
        senders.push(tx);
        calls.push(async move {
            c.load_image(ReceiverStream::new(rx))
                .await
                .map(|r| (t.node_id.clone(), r.into_inner()))
                .map_err(|e| node_err(&t, e))
        });
    }
    let pump = async move {
        let mut chunk = Some(first);
        while let Some(c) = chunk.take() {
            for tx in &senders {
                // A node that failed reports through its call; keep feeding the rest.
                let _ = tx.send(c.clone()).await;
            }
            chunk = match rest.next().await {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    return Err(Status::aborted(format!("reading the archive upload: {e}")))
                }
                None => None,
            };
        }
        Ok(())
    };
    let (pumped, results) = tokio::join!(pump, futures::future::join_all(calls));
    pumped?;
    let mut images: BTreeMap<String, ImageSummary> = BTreeMap::new();
    let mut node_ids = Vec::new();
    for r in results {
        let (node, resp) = r?;
        node_ids.push(node);
        for i in resp.images {
            images.entry(i.id.clone()).or_insert(i);
        }
    }
    Ok(LoadImageResponse {
        images: images.into_values().collect(),
        node_ids,
    })
}
