//! Per-container and image verbs that live on nodes (interactive exec, top,
//! stats, cp, pull, push, save, tag, inspect, prune): find the tasks or
//! nodes a user means in the store and relay to their agents.
//!
//! Must never write to the store: none of these changes what should run.

use super::forward::{self, Target};
use super::verbs::{pick_task, service_exists};
use crate::orchestrator::StoreView;
use crate::raft::StoreHandle;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::node_agent_client::NodeAgentClient;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// A stream relayed from one or more nodes.
pub type Relayed<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

async fn client(t: &Target) -> Result<NodeAgentClient<Channel>, Status> {
    let ch = flotilla_proto::transport::connect(&t.addr)
        .await
        .map_err(|e| Status::unavailable(format!("node {}: {e}", t.node_id)))?;
    Ok(NodeAgentClient::new(ch))
}

fn node_err(t: &Target, s: Status) -> Status {
    Status::new(s.code(), format!("node {}: {}", t.node_id, s.message()))
}

fn one_target(store: &StoreHandle, node_id: &str) -> Result<Target, Status> {
    forward::targets(store, node_id)?
        .into_iter()
        .next()
        .ok_or_else(|| Status::unavailable(format!("node {node_id} is not reachable")))
}

/// Running tasks of the services (all of the stack's when none are named),
/// grouped by node.
fn running_by_node(
    store: &StoreHandle,
    stack: &str,
    services: &[String],
) -> Result<BTreeMap<String, Vec<String>>, Status> {
    for s in services {
        service_exists(store, stack, s)?;
    }
    store.read(|s| {
        if s.stack(stack).is_none() {
            return Err(Status::not_found(format!("stack {stack} does not exist")));
        }
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in s.tasks_in_stack(stack) {
            let wanted = services.is_empty() || services.contains(&t.service_name);
            let alive = t
                .status
                .as_ref()
                .is_some_and(|st| st.state() == pb::TaskState::Running);
            if wanted && alive && !t.node_id.is_empty() {
                m.entry(t.node_id.clone()).or_default().push(t.id.clone());
            }
        }
        Ok(m)
    })
}

/// Relays an interactive exec: the first input names the task, the rest is
/// piped to the task's node unchanged.
pub async fn exec_stream(
    store: &StoreHandle,
    mut input: Streaming<pb::ExecInput>,
) -> Result<Relayed<pb::ExecOutput>, Status> {
    let mut first = match input.next().await {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(e),
        None => {
            return Err(Status::invalid_argument(
                "exec stream closed before its request",
            ))
        }
    };
    let Some(mut req) = first.start.take() else {
        return Err(Status::invalid_argument(
            "the first message of an exec stream must carry the request",
        ));
    };
    if req.args.is_empty() {
        return Err(Status::invalid_argument("exec needs a command"));
    }
    let task = pick_task(store, &req.stack, &req.service, req.index)?;
    let target = one_target(store, &task.node_id)?;
    req.task_id = task.id.clone();
    first.start = Some(req);
    let (tx, rx) = mpsc::channel::<pb::ExecInput>(16);
    let _ = tx.send(first).await;
    tokio::spawn(async move {
        while let Some(Ok(m)) = input.next().await {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut c = client(&target).await?;
    let out = c
        .exec_stream(ReceiverStream::new(rx))
        .await
        .map_err(|e| node_err(&target, e))?
        .into_inner();
    Ok(Box::pin(
        out.map(move |r| r.map_err(|e| node_err(&target, e))),
    ))
}

pub async fn top(store: &StoreHandle, req: pb::TopRequest) -> Result<pb::TopResponse, Status> {
    let mut out = pb::TopResponse::default();
    for (node, task_ids) in running_by_node(store, &req.stack, &req.services)? {
        let t = one_target(store, &node)?;
        let mut r = req.clone();
        r.task_ids = task_ids;
        let resp = client(&t)
            .await?
            .top(r)
            .await
            .map_err(|e| node_err(&t, e))?
            .into_inner();
        out.tasks.extend(resp.tasks.into_iter().map(|mut tp| {
            tp.node_id = node.clone();
            tp
        }));
    }
    Ok(out)
}

pub async fn stats(
    store: &StoreHandle,
    req: pb::StatsRequest,
) -> Result<pb::StatsResponse, Status> {
    let mut out = pb::StatsResponse::default();
    for (node, task_ids) in running_by_node(store, &req.stack, &req.services)? {
        let t = one_target(store, &node)?;
        let mut r = req.clone();
        r.task_ids = task_ids;
        let resp = client(&t)
            .await?
            .stats(r)
            .await
            .map_err(|e| node_err(&t, e))?
            .into_inner();
        out.stats.extend(resp.stats.into_iter().map(|mut s| {
            s.node_id = node.clone();
            s
        }));
    }
    Ok(out)
}

pub async fn copy_from(
    store: &StoreHandle,
    mut req: pb::CopyRequest,
) -> Result<Relayed<pb::CopyChunk>, Status> {
    let task = pick_task(store, &req.stack, &req.service, req.index)?;
    let target = one_target(store, &task.node_id)?;
    req.task_id = task.id;
    let s = client(&target)
        .await?
        .copy_from_container(req)
        .await
        .map_err(|e| node_err(&target, e))?
        .into_inner();
    Ok(Box::pin(
        s.map(move |r| r.map_err(|e| node_err(&target, e))),
    ))
}

pub async fn copy_to(
    store: &StoreHandle,
    mut input: Streaming<pb::CopyChunk>,
) -> Result<pb::CopyResponse, Status> {
    let mut first = match input.next().await {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(e),
        None => {
            return Err(Status::invalid_argument(
                "copy stream closed before its target",
            ))
        }
    };
    let Some(mut req) = first.target.take() else {
        return Err(Status::invalid_argument(
            "the first chunk of a copy must name the target",
        ));
    };
    let task = pick_task(store, &req.stack, &req.service, req.index)?;
    let target = one_target(store, &task.node_id)?;
    req.task_id = task.id;
    first.target = Some(req);
    let (tx, rx) = mpsc::channel::<pb::CopyChunk>(8);
    let _ = tx.send(first).await;
    let pump = async move {
        while let Some(m) = input.next().await {
            match m {
                Ok(m) => {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
                Err(e) => return Err(Status::aborted(format!("reading the copy upload: {e}"))),
            }
        }
        Ok(())
    };
    let mut c = client(&target).await?;
    let call = c.copy_to_container(ReceiverStream::new(rx));
    let (pumped, resp) = tokio::join!(pump, call);
    pumped?;
    Ok(resp.map_err(|e| node_err(&target, e))?.into_inner())
}

/// Merges the progress of one call per node into one stream.
async fn merged<T, F, Fut>(targets: Vec<Target>, call: F) -> Result<Relayed<T>, Status>
where
    T: Send + 'static,
    F: Fn(NodeAgentClient<Channel>, Target) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Streaming<T>>, Status>>,
{
    if targets.is_empty() {
        return Err(Status::failed_precondition("no ready node"));
    }
    let mut streams = Vec::new();
    for t in targets {
        let c = client(&t).await?;
        let s = call(c, t.clone())
            .await
            .map_err(|e| node_err(&t, e))?
            .into_inner();
        let tt = t.clone();
        streams.push(s.map(move |r| r.map_err(|e| node_err(&tt, e))).boxed());
    }
    Ok(Box::pin(futures::stream::select_all(streams)))
}

pub async fn pull(
    store: &StoreHandle,
    req: pb::PullImageRequest,
) -> Result<Relayed<pb::ImageProgress>, Status> {
    let targets = forward::ready_targets(store, &req.node_id).await?;
    merged(targets, |mut c, t| {
        let mut r = req.clone();
        r.node_id = t.node_id;
        async move { c.pull_image(r).await }
    })
    .await
}

pub async fn push(
    store: &StoreHandle,
    req: pb::PushImageRequest,
) -> Result<Relayed<pb::ImageProgress>, Status> {
    // One copy is enough for a registry: the named node, or the first one.
    let target = forward::targets(store, &req.node_id)?
        .into_iter()
        .next()
        .ok_or_else(|| Status::failed_precondition("no ready node to push from"))?;
    merged(vec![target], |mut c, t| {
        let mut r = req.clone();
        r.node_id = t.node_id;
        async move { c.push_image(r).await }
    })
    .await
}

pub async fn save(
    store: &StoreHandle,
    req: pb::SaveImageRequest,
) -> Result<Relayed<pb::ImageArchiveChunk>, Status> {
    let target = forward::targets(store, &req.node_id)?
        .into_iter()
        .next()
        .ok_or_else(|| Status::failed_precondition("no ready node to save from"))?;
    merged(vec![target], |mut c, t| {
        let mut r = req.clone();
        r.node_id = t.node_id;
        async move { c.save_image(r).await }
    })
    .await
}

pub async fn tag(
    store: &StoreHandle,
    req: pb::TagImageRequest,
) -> Result<pb::TagImageResponse, Status> {
    let mut out = pb::TagImageResponse::default();
    for t in forward::targets(store, &req.node_id)? {
        let mut r = req.clone();
        r.node_id = t.node_id.clone();
        let resp = client(&t)
            .await?
            .tag_image(r)
            .await
            .map_err(|e| node_err(&t, e))?;
        out.node_ids.extend(resp.into_inner().node_ids);
    }
    Ok(out)
}

pub async fn inspect(
    store: &StoreHandle,
    req: pb::InspectImageRequest,
) -> Result<pb::InspectImageResponse, Status> {
    let mut out = pb::InspectImageResponse::default();
    for t in forward::targets(store, &req.node_id)? {
        let mut r = req.clone();
        r.node_id = t.node_id.clone();
        match client(&t).await?.inspect_image(r).await {
            Ok(resp) => out.images.extend(resp.into_inner().images),
            // Absent on one node is not an error while another has it.
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(node_err(&t, e)),
        }
    }
    if out.images.is_empty() {
        return Err(Status::not_found(format!(
            "no such image: {}",
            req.reference
        )));
    }
    Ok(out)
}

pub async fn prune(
    store: &StoreHandle,
    req: pb::PruneImagesRequest,
) -> Result<pb::PruneImagesResponse, Status> {
    let mut out = pb::PruneImagesResponse::default();
    for t in forward::targets(store, &req.node_id)? {
        let mut r = req.clone();
        r.node_id = t.node_id.clone();
        let resp = client(&t)
            .await?
            .prune_images(r)
            .await
            .map_err(|e| node_err(&t, e))?
            .into_inner();
        out.deleted.extend(resp.deleted);
        out.reclaimed_bytes += resp.reclaimed_bytes;
    }
    Ok(out)
}
