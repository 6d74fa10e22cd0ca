//! The `Control` gRPC service: the CLI's API.
//!
//! Every verb that changes what should run is a write of desired state
//! through Raft (stack, services, networks, labels); the orchestrator does
//! the rest. Reads come from the local applied store. Logs and images are
//! forwarded to the agents of the nodes involved ([`forward`]).
//!
//! This module never writes tasks' observed state and never talks to a
//! container.

pub mod deploy;
pub mod forward;
mod networks;
pub mod node_verbs;
mod task_verbs;
pub mod verbs;
mod volumes;

use crate::orchestrator::{StoreView, LABEL_REMOVE_VOLUMES, LABEL_REMOVING};
use crate::raft::{ProposeError, StoreHandle};
use crate::store::STORE_FORMAT;
use flotilla_proto::v1::{
    control_server::Control, store_action, DeployStackRequest, DeployStackResponse, Event,
    EventsRequest, ImageArchiveChunk, InfoRequest, InfoResponse, ListImagesRequest,
    ListImagesResponse, ListNetworksRequest, ListNetworksResponse, ListNodesRequest,
    ListNodesResponse, ListServicesRequest, ListServicesResponse, ListStacksRequest,
    ListStacksResponse, ListTasksRequest, ListTasksResponse, LoadImageResponse, LogLine,
    LogsRequest, RemoveImageRequest, RemoveImageResponse, RemoveStackRequest, RemoveStackResponse,
    ResolveImagesRequest, ResolveImagesResponse, ServiceDesired, SetServiceStateRequest,
    SetServiceStateResponse, ShutdownRequest, ShutdownResponse, StackSummary, StoreAction,
    StoreBatch, Task, TaskState, Timestamp,
};
use futures::StreamExt;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Extra time a waiting `RemoveStack` allows beyond its `timeout_ms`.
const REMOVE_WAIT_SLACK: Duration = Duration::from_secs(10);
/// Attempts of a write that lost a version race.
const CONFLICT_RETRIES: usize = 8;

struct Inner {
    store: StoreHandle,
    pool: Ipv4Net,
    state_dir: PathBuf,
    started_at: Timestamp,
    shutdown: watch::Sender<bool>,
}

/// The `Control` gRPC service. Cheap to clone.
#[derive(Clone)]
pub struct ControlApi {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ControlApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlApi")
            .field("pool", &self.inner.pool)
            .finish()
    }
}

fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::Refused(_) => Status::aborted(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

fn put(object: store_action::Object, expected_version: u64) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Put as i32,
        object: Some(object),
        expected_version,
    }
}

fn matches_services(names: &[String], service: &str) -> bool {
    names.is_empty() || names.iter().any(|n| n == service)
}

fn task_running(t: &Task) -> bool {
    t.status.as_ref().map(|s| s.state()) == Some(TaskState::Running)
}

impl ControlApi {
    /// `shutdown` is set to true by the `Shutdown` call.
    pub fn new(
        store: StoreHandle,
        pool: Ipv4Net,
        state_dir: PathBuf,
        shutdown: watch::Sender<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                pool,
                state_dir,
                started_at: Timestamp::now(),
                shutdown,
            }),
        }
    }

    /// Proposes the batch `plan` makes from the current store, again from
    /// fresh state when a concurrent write made it stale.
    async fn write<T>(
        &self,
        what: &str,
        plan: impl Fn(&crate::store::Store) -> Result<(Vec<StoreAction>, T), Status>,
    ) -> Result<T, Status> {
        let mut last = None;
        for _ in 0..CONFLICT_RETRIES {
            let (actions, out) = self.inner.store.read(&plan)?;
            if actions.is_empty() {
                return Ok(out);
            }
            let batch = StoreBatch {
                actions,
                proposal_id: format!("control-{what}-{}", uuid::Uuid::new_v4()),
            };
            match self.inner.store.propose(batch).await {
                Ok(_) => return Ok(out),
                Err(e @ ProposeError::Refused(_)) => last = Some(e),
                Err(e) => return Err(propose_status(e)),
            }
        }
        Err(propose_status(last.unwrap_or(ProposeError::Stopped)))
    }

    async fn deploy(&self, req: DeployStackRequest) -> Result<DeployStackResponse, Status> {
        let pool = self.inner.pool;
        let resp = self
            .write("deploy", |s| {
                deploy::plan_deploy(s, &req, pool, Timestamp::now()).map_err(|e| match e {
                    deploy::DeployError::ConcurrentDeploy { .. } => Status::aborted(e.to_string()),
                    _ => Status::invalid_argument(e.to_string()),
                })
            })
            .await?;
        tracing::info!(
            created = ?resp.created, updated = ?resp.updated, removed = ?resp.removed,
            spec_version = resp.spec_version, "stack deployed"
        );
        Ok(resp)
    }

    async fn remove(&self, req: RemoveStackRequest) -> Result<RemoveStackResponse, Status> {
        let name = req.name.clone();
        // `down -v`: the named volumes the file declares (external ones are
        // not the stack's) and every anonymous one of the stack, once the
        // containers are gone.
        let named: Vec<String> = self.inner.store.read(|s| {
            s.stack(&name)
                .and_then(|st| st.spec.as_ref())
                .map(|sp| {
                    sp.volumes
                        .iter()
                        .filter(|v| !v.external)
                        .map(|v| v.name.clone())
                        .collect()
                })
                .unwrap_or_default()
        });
        // Subscribe before writing so the end of the removal is not missed.
        let mut events = self.inner.store.subscribe();
        let resp = self
            .write("remove", |s| {
                let stack = s
                    .stack(&name)
                    .ok_or_else(|| Status::not_found(format!("stack {name} does not exist")))?;
                let resp = RemoveStackResponse {
                    tasks_removed: s.tasks_in_stack(&name).len() as u32,
                    networks_removed: s.networks_in_stack(&name).len() as u32,
                    volumes_removed: if req.remove_volumes {
                        s.volumes().filter(|v| v.stack == name).count() as u32
                    } else {
                        0
                    },
                };
                let mut st = stack.clone();
                let m = st.meta.get_or_insert_with(Default::default);
                let already = m.labels.get(LABEL_REMOVING).is_some_and(|v| v == "true")
                    && (!req.remove_volumes || m.labels.contains_key(LABEL_REMOVE_VOLUMES));
                if already {
                    return Ok((Vec::new(), resp));
                }
                m.labels
                    .insert(LABEL_REMOVING.to_string(), "true".to_string());
                if req.remove_volumes {
                    m.labels
                        .insert(LABEL_REMOVE_VOLUMES.to_string(), "true".to_string());
                }
                m.updated_at = Some(Timestamp::now());
                let v = stack.meta.as_ref().map_or(0, |m| m.version);
                Ok((vec![put(store_action::Object::Stack(st), v)], resp))
            })
            .await?;
        tracing::info!("stack removal requested");
        if req.wait {
            let limit = Duration::from_millis(req.timeout_ms) + REMOVE_WAIT_SLACK;
            let gone = async {
                loop {
                    if self.inner.store.read(|s| s.stack(&name).is_none()) {
                        return true;
                    }
                    match events.recv().await {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return false,
                    }
                }
            };
            match tokio::time::timeout(limit, gone).await {
                Ok(true) => {}
                Ok(false) => return Err(Status::unavailable("the store stopped")),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "stack {name} was not removed within {}ms",
                        limit.as_millis()
                    )))
                }
            }
            if req.remove_volumes {
                let mut by_node = BTreeMap::new();
                // Every Ready node: a named volume lives wherever a task of
                // the stack once ran.
                by_node.insert(
                    String::new(),
                    flotilla_proto::v1::RemoveVolumesRequest {
                        stack: name.clone(),
                        named,
                        anonymous: Vec::new(),
                        all_anonymous: true,
                    },
                );
                let vols = volumes::remove_on_nodes(&self.inner.store, by_node).await?;
                tracing::info!(stack = %name, volumes = vols.len(), "stack volumes removed");
            }
        }
        Ok(resp)
    }

    async fn set_state(
        &self,
        req: SetServiceStateRequest,
    ) -> Result<SetServiceStateResponse, Status> {
        let stack = req.stack.clone();
        let names = req.services.clone();
        self.write("set-state", |s| {
            if s.stack(&stack).is_none() {
                return Err(Status::not_found(format!("stack {stack} does not exist")));
            }
            let services = s.services_in_stack(&stack);
            for n in &names {
                if !services
                    .iter()
                    .any(|sv| sv.spec.as_ref().is_some_and(|sp| &sp.name == n))
                {
                    return Err(Status::not_found(format!(
                        "stack {stack} has no service {n}"
                    )));
                }
            }
            let mut actions = Vec::new();
            let mut touched = Vec::new();
            for sv in services {
                let name = sv
                    .spec
                    .as_ref()
                    .map(|sp| sp.name.clone())
                    .unwrap_or_default();
                if !matches_services(&names, &name) {
                    continue;
                }
                touched.push(name);
                if sv.desired() != req.desired() {
                    let mut n = sv.clone();
                    n.desired = req.desired;
                    actions.push(put(
                        store_action::Object::Service(n),
                        sv.meta.as_ref().map_or(0, |m| m.version),
                    ));
                }
                if req.desired() == ServiceDesired::Stopped {
                    // One-off (`run`) containers live outside the slots, so
                    // the service's desired state does not reach them:
                    // `stop` stops them here, once (a later `run` of a
                    // stopped service still starts), as Compose does.
                    for t in s.tasks_in_service(&sv.id) {
                        let st = t
                            .status
                            .as_ref()
                            .map(|x| x.state())
                            .unwrap_or(TaskState::New);
                        if crate::orchestrator::is_oneoff(t)
                            && !st.is_terminal()
                            && !matches!(t.desired_state(), TaskState::Shutdown | TaskState::Remove)
                        {
                            let mut n = t.clone();
                            n.desired_state = TaskState::Shutdown as i32;
                            actions.push(put(
                                store_action::Object::Task(n),
                                t.meta.as_ref().map_or(0, |m| m.version),
                            ));
                        }
                    }
                }
                if req.restart && req.desired() == ServiceDesired::Running {
                    for t in s.tasks_in_service(&sv.id) {
                        let st = t
                            .status
                            .as_ref()
                            .map(|x| x.state())
                            .unwrap_or(TaskState::New);
                        // One-off containers are not the service's: a
                        // restart would only stop them (they never restart).
                        if t.desired_state() != TaskState::Shutdown
                            && !st.is_terminal()
                            && !crate::orchestrator::is_oneoff(t)
                        {
                            let mut n = t.clone();
                            n.desired_state = TaskState::Shutdown as i32;
                            actions.push(put(
                                store_action::Object::Task(n),
                                t.meta.as_ref().map_or(0, |m| m.version),
                            ));
                        }
                    }
                }
            }
            Ok((actions, SetServiceStateResponse { services: touched }))
        })
        .await
    }

    fn events_stream(&self, req: EventsRequest) -> ReceiverStream<Result<Event, Status>> {
        let store = self.inner.store.clone();
        let mut rx = store.subscribe();
        let mut closing = self.inner.shutdown.subscribe();
        let (tx, out) = mpsc::channel(256);
        let wanted = move |stack: &str, service: &str| {
            (req.stack.is_empty() || req.stack == stack) && matches_services(&req.services, service)
        };
        let initial = if req.initial {
            store.read(|s| {
                let index = s.applied_index();
                s.tasks()
                    .filter(|t| wanted(&t.stack, &t.service_name))
                    .map(|t| Event {
                        time: Some(Timestamp::now()),
                        kind: "task".to_string(),
                        action: "snapshot".to_string(),
                        id: t.id.clone(),
                        stack: t.stack.clone(),
                        service: t.service_name.clone(),
                        attributes: Default::default(),
                        task: Some(t.clone()),
                        raft_index: index,
                    })
                    .collect::<Vec<_>>()
            })
        } else {
            Vec::new()
        };
        tokio::spawn(async move {
            for e in initial {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(applied) => {
                            for e in applied.events.iter() {
                                if e.kind == "cluster" || !wanted(&e.stack, &e.service) {
                                    continue;
                                }
                                if tx.send(Ok(e.clone())).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(Status::data_loss(format!(
                                "the event stream fell {n} entries behind; re-read the state"
                            )))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                    _ = closed(&mut closing) => return,
                }
            }
        });
        ReceiverStream::new(out)
    }
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlApi {
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let st = self.inner.store.status();
        let (cluster_id, stacks, tasks, applied) = self.inner.store.read(|s| {
            (
                s.cluster().map(|c| c.id.clone()).unwrap_or_default(),
                s.stacks().count() as u64,
                s.tasks().count() as u64,
                s.applied_index(),
            )
        });
        Ok(Response::new(InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: String::new(),
            raft_id: st.raft_id,
            cluster_id,
            is_leader: st.is_leader,
            leader_raft_id: st.leader_id,
            applied_index: applied,
            term: st.term,
            state_dir: self.inner.state_dir.display().to_string(),
            store_format: STORE_FORMAT,
            stacks,
            tasks,
            pid: i64::from(std::process::id()),
            started_at: Some(self.inner.started_at),
        }))
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        tracing::info!("shutdown requested through the API");
        self.inner.shutdown.send_replace(true);
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn deploy_stack(
        &self,
        request: Request<DeployStackRequest>,
    ) -> Result<Response<DeployStackResponse>, Status> {
        let req = request.into_inner();
        let stack = req
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("deploy_stack", stack = %stack);
        self.deploy(req).instrument(span).await.map(Response::new)
    }

    async fn remove_stack(
        &self,
        request: Request<RemoveStackRequest>,
    ) -> Result<Response<RemoveStackResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("remove_stack", stack = %req.name);
        self.remove(req).instrument(span).await.map(Response::new)
    }

    async fn list_stacks(
        &self,
        _request: Request<ListStacksRequest>,
    ) -> Result<Response<ListStacksResponse>, Status> {
        let stacks = self.inner.store.read(|s| {
            s.stacks()
                .map(|st| {
                    let tasks = s.tasks_in_stack(&st.id);
                    StackSummary {
                        stack: Some(st.clone()),
                        services: s.services_of_stack(&st.id).count() as u32,
                        tasks_running: tasks.iter().filter(|t| task_running(t)).count() as u32,
                        tasks_total: tasks.len() as u32,
                    }
                })
                .collect()
        });
        Ok(Response::new(ListStacksResponse { stacks }))
    }

    async fn list_services(
        &self,
        request: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let stack = request.into_inner().stack;
        let services = self.inner.store.read(|s| {
            s.services()
                .filter(|sv| stack.is_empty() || sv.stack == stack)
                .cloned()
                .collect()
        });
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let req = request.into_inner();
        let resp = self.inner.store.read(|s| {
            let tasks: Vec<Task> = s
                .tasks()
                .filter(|t| req.stack.is_empty() || t.stack == req.stack)
                .filter(|t| matches_services(&req.services, &t.service_name))
                .filter(|t| {
                    req.all
                        || (t.desired_state() != TaskState::Shutdown
                            && !t.status.as_ref().is_some_and(|st| st.state().is_terminal()))
                })
                .cloned()
                .collect();
            ListTasksResponse {
                tasks,
                nodes: s.nodes().cloned().collect(),
                networks: s
                    .networks()
                    .filter(|n| req.stack.is_empty() || n.stack == req.stack)
                    .cloned()
                    .collect(),
            }
        });
        Ok(Response::new(resp))
    }

    async fn list_nodes(
        &self,
        _request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self.inner.store.read(|s| s.nodes().cloned().collect());
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn list_networks(
        &self,
        request: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        let stack = request.into_inner().stack;
        let networks = self.inner.store.read(|s| {
            s.networks()
                .filter(|n| stack.is_empty() || n.stack == stack)
                .cloned()
                .collect()
        });
        Ok(Response::new(ListNetworksResponse { networks }))
    }

    async fn set_service_state(
        &self,
        request: Request<SetServiceStateRequest>,
    ) -> Result<Response<SetServiceStateResponse>, Status> {
        let req = request.into_inner();
        let span =
            tracing::info_span!("set_service_state", stack = %req.stack, services = ?req.services);
        self.set_state(req)
            .instrument(span)
            .await
            .map(Response::new)
    }

    type EventsStream = BoxStream<Event>;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        Ok(Response::new(Box::pin(
            self.events_stream(request.into_inner()),
        )))
    }

    type LogsStream = BoxStream<LogLine>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        let by_node = self.inner.store.read(|s| {
            let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for t in s.tasks() {
                if (req.stack.is_empty() || t.stack == req.stack)
                    && matches_services(&req.services, &t.service_name)
                    && !t.node_id.is_empty()
                    && (req.task_ids.is_empty() || req.task_ids.contains(&t.id))
                {
                    by_node
                        .entry(t.node_id.clone())
                        .or_default()
                        .push(t.id.clone());
                }
            }
            by_node
        });
        let mut targets = Vec::new();
        for (node, tasks) in by_node {
            let t = forward::targets(&self.inner.store, &node)?;
            targets.extend(t.into_iter().map(|t| (t, tasks.clone())));
        }
        let stream = forward::logs(targets, req).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resolve_images(
        &self,
        request: Request<ResolveImagesRequest>,
    ) -> Result<Response<ResolveImagesResponse>, Status> {
        let req = request.into_inner();
        let targets = forward::ready_targets(&self.inner.store, &req.node_id).await?;
        forward::resolve_images(targets, req)
            .await
            .map(Response::new)
    }

    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let req = request.into_inner();
        let targets = forward::targets(&self.inner.store, &req.node_id)?;
        let nodes = forward::list_images(targets).await?;
        Ok(Response::new(ListImagesResponse { nodes }))
    }

    async fn load_image(
        &self,
        request: Request<Streaming<ImageArchiveChunk>>,
    ) -> Result<Response<LoadImageResponse>, Status> {
        let mut stream = request.into_inner();
        let first = match stream.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("empty image archive upload")),
        };
        let targets = forward::ready_targets(&self.inner.store, &first.node_id).await?;
        if targets.is_empty() {
            return Err(Status::failed_precondition(
                "no ready node to load the image on",
            ));
        }
        forward::load_image(targets, first, stream)
            .await
            .map(Response::new)
    }

    async fn exec(
        &self,
        request: Request<flotilla_proto::v1::ExecRequest>,
    ) -> Result<Response<flotilla_proto::v1::ExecResponse>, Status> {
        verbs::exec(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn kill(
        &self,
        request: Request<flotilla_proto::v1::KillRequest>,
    ) -> Result<Response<flotilla_proto::v1::KillResponse>, Status> {
        verbs::kill(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let targets = forward::targets(&self.inner.store, &req.node_id)?;
        forward::remove_image(targets, req).await.map(Response::new)
    }

    type ExecStreamStream = BoxStream<flotilla_proto::v1::ExecOutput>;

    async fn exec_stream(
        &self,
        request: Request<Streaming<flotilla_proto::v1::ExecInput>>,
    ) -> Result<Response<Self::ExecStreamStream>, Status> {
        node_verbs::exec_stream(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn top(
        &self,
        request: Request<flotilla_proto::v1::TopRequest>,
    ) -> Result<Response<flotilla_proto::v1::TopResponse>, Status> {
        node_verbs::top(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stats(
        &self,
        request: Request<flotilla_proto::v1::StatsRequest>,
    ) -> Result<Response<flotilla_proto::v1::StatsResponse>, Status> {
        node_verbs::stats(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    type CopyFromContainerStream = BoxStream<flotilla_proto::v1::CopyChunk>;

    async fn copy_from_container(
        &self,
        request: Request<flotilla_proto::v1::CopyRequest>,
    ) -> Result<Response<Self::CopyFromContainerStream>, Status> {
        node_verbs::copy_from(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn copy_to_container(
        &self,
        request: Request<Streaming<flotilla_proto::v1::CopyChunk>>,
    ) -> Result<Response<flotilla_proto::v1::CopyResponse>, Status> {
        node_verbs::copy_to(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    type PullImageStream = BoxStream<flotilla_proto::v1::ImageProgress>;

    async fn pull_image(
        &self,
        request: Request<flotilla_proto::v1::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        node_verbs::pull(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    type PushImageStream = BoxStream<flotilla_proto::v1::ImageProgress>;

    async fn push_image(
        &self,
        request: Request<flotilla_proto::v1::PushImageRequest>,
    ) -> Result<Response<Self::PushImageStream>, Status> {
        node_verbs::push(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    type SaveImageStream = BoxStream<ImageArchiveChunk>;

    async fn save_image(
        &self,
        request: Request<flotilla_proto::v1::SaveImageRequest>,
    ) -> Result<Response<Self::SaveImageStream>, Status> {
        node_verbs::save(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn tag_image(
        &self,
        request: Request<flotilla_proto::v1::TagImageRequest>,
    ) -> Result<Response<flotilla_proto::v1::TagImageResponse>, Status> {
        node_verbs::tag(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn inspect_image(
        &self,
        request: Request<flotilla_proto::v1::InspectImageRequest>,
    ) -> Result<Response<flotilla_proto::v1::InspectImageResponse>, Status> {
        node_verbs::inspect(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn prune_images(
        &self,
        request: Request<flotilla_proto::v1::PruneImagesRequest>,
    ) -> Result<Response<flotilla_proto::v1::PruneImagesResponse>, Status> {
        node_verbs::prune(&self.inner.store, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_network(
        &self,
        request: Request<flotilla_proto::v1::CreateNetworkRequest>,
    ) -> Result<Response<flotilla_proto::v1::CreateNetworkResponse>, Status> {
        self.create_network_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_network(
        &self,
        request: Request<flotilla_proto::v1::RemoveNetworkRequest>,
    ) -> Result<Response<flotilla_proto::v1::RemoveNetworkResponse>, Status> {
        self.remove_network_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn prune_networks(
        &self,
        request: Request<flotilla_proto::v1::PruneNetworksRequest>,
    ) -> Result<Response<flotilla_proto::v1::PruneNetworksResponse>, Status> {
        self.prune_networks_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_service_tasks(
        &self,
        request: Request<flotilla_proto::v1::RemoveServiceTasksRequest>,
    ) -> Result<Response<flotilla_proto::v1::RemoveServiceTasksResponse>, Status> {
        self.remove_service_tasks_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn run_task(
        &self,
        request: Request<flotilla_proto::v1::RunTaskRequest>,
    ) -> Result<Response<flotilla_proto::v1::RunTaskResponse>, Status> {
        self.run_task_impl(request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Resolves once the flag turns true (or its sender is gone).
async fn closed(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|c| *c).await.is_ok();
}
