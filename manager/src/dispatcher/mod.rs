//! The dispatcher: the manager's side of agent sessions (the `Dispatcher`
//! gRPC service).
//!
//! - `Register` stores the node through Raft (a new id for a new node, an
//!   update for a known one: description, agent address, state Ready) and
//!   opens a session (`session_id`, heartbeat period).
//! - `Heartbeat` refreshes the session in memory; the leader's monitor
//!   ([`DispatcherApi::monitor`]) marks a Ready node Down through Raft when
//!   it missed [`MISSED_HEARTBEATS`] periods, and a heartbeat brings it back.
//! - `Assignments` streams the node's [`AssignmentSet`] (see
//!   [`assign::assignment_set`]) first in full, then again (in full) after
//!   every burst of applied changes that alters it.
//! - `UpdateTaskStatus` writes the reported statuses through Raft in one
//!   batch (see [`assign::status_actions`]).
//!
//! The dispatcher never decides what runs where; it only relays the store to
//! agents and agents' observations to the store. Sessions live in memory: a
//! manager that restarts makes agents register again.

pub mod assign;

use crate::raft::{ProposeError, StoreHandle};
use flotilla_proto::v1::{
    dispatcher_server::Dispatcher, store_action, AssignmentSet, AssignmentsRequest,
    HeartbeatRequest, HeartbeatResponse, Meta, Node, NodeAvailability, NodeRole, NodeState,
    NodeStatus, RegisterRequest, RegisterResponse, StoreAction, StoreBatch, Timestamp,
    UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// A node is Down after missing this many heartbeat periods.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Attempts of a read-modify-write that lost a version race.
const CONFLICT_RETRIES: usize = 8;

#[derive(Debug, Clone)]
struct Session {
    id: String,
    last_seen: Instant,
}

struct Inner {
    store: StoreHandle,
    heartbeat: Duration,
    sessions: Mutex<HashMap<String, Session>>,
    started: Instant,
    /// Turns true when the manager is shutting down: open streams end so a
    /// graceful server shutdown can finish.
    closing: watch::Receiver<bool>,
}

/// The `Dispatcher` gRPC service. Cheap to clone.
#[derive(Clone)]
pub struct DispatcherApi {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DispatcherApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherApi")
            .field("heartbeat", &self.inner.heartbeat)
            .finish()
    }
}

fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { .. } => Status::unavailable(e.to_string()),
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

impl DispatcherApi {
    /// `closing` turning true ends every open assignment stream.
    pub fn new(store: StoreHandle, heartbeat: Duration, closing: watch::Receiver<bool>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                heartbeat,
                sessions: Mutex::new(HashMap::new()),
                started: Instant::now(),
                closing,
            }),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks the session and refreshes its last-seen time.
    fn touch(&self, node_id: &str, session_id: &str) -> Result<(), Status> {
        let mut sessions = self.sessions();
        match sessions.get_mut(node_id) {
            Some(s) if s.id == session_id => {
                s.last_seen = Instant::now();
                Ok(())
            }
            _ => Err(Status::not_found(format!(
                "node {node_id} has no session {session_id:?} on this manager; register again"
            ))),
        }
    }

    fn session_current(&self, node_id: &str, session_id: &str) -> bool {
        self.sessions()
            .get(node_id)
            .is_some_and(|s| s.id == session_id)
    }

    /// Read-modify-write of a node through Raft, retried on version races.
    /// `f` returns None when nothing needs writing.
    async fn update_node(
        &self,
        node_id: &str,
        f: impl Fn(Option<&Node>) -> Option<Node>,
    ) -> Result<(), ProposeError> {
        let mut last = None;
        for _ in 0..CONFLICT_RETRIES {
            let Some((node, version)) = self.inner.store.read(|s| {
                let cur = s.node(node_id);
                f(cur).map(|n| {
                    (
                        n,
                        cur.and_then(|c| c.meta.as_ref()).map_or(0, |m| m.version),
                    )
                })
            }) else {
                return Ok(());
            };
            let batch = StoreBatch {
                actions: vec![put(store_action::Object::Node(node), version)],
                proposal_id: format!("dispatcher-node-{node_id}"),
            };
            match self.inner.store.propose(batch).await {
                Ok(_) => return Ok(()),
                Err(e @ ProposeError::Refused(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ProposeError::Stopped))
    }

    /// The leader's heartbeat monitor: marks Ready nodes whose session went
    /// quiet (or that never registered since this manager started) Down.
    /// Runs until `stop` turns true.
    pub async fn monitor(self, mut stop: watch::Receiver<bool>) {
        let period = self.inner.heartbeat;
        let grace = period * MISSED_HEARTBEATS;
        let mut interval = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if !self.inner.store.is_leader() {
                continue;
            }
            let now = Instant::now();
            let ready: Vec<String> = self.inner.store.read(|s| {
                s.nodes()
                    .filter(|n| n.status.as_ref().map(|st| st.state()) == Some(NodeState::Ready))
                    .map(|n| n.id.clone())
                    .collect()
            });
            let expired: Vec<String> = {
                let sessions = self.sessions();
                ready
                    .into_iter()
                    .filter(|id| {
                        let seen = sessions
                            .get(id)
                            .map(|s| s.last_seen)
                            .unwrap_or(self.inner.started);
                        now.duration_since(seen) > grace
                    })
                    .collect()
            };
            for id in expired {
                let span = tracing::info_span!("node_down", node = %id);
                async {
                    tracing::warn!(
                        missed = MISSED_HEARTBEATS,
                        "node missed its heartbeats: marking it down"
                    );
                    let msg = format!("no heartbeat for {}ms", grace.as_millis());
                    let res = self
                        .update_node(&id, |cur| {
                            let mut n = cur?.clone();
                            let st = n.status.get_or_insert_with(NodeStatus::default);
                            if st.state() != NodeState::Ready {
                                return None;
                            }
                            st.set_state(NodeState::Down);
                            st.message = msg.clone();
                            Some(n)
                        })
                        .await;
                    if let Err(e) = res {
                        tracing::warn!(error = %e, "could not mark node down");
                    }
                }
                .instrument(span)
                .await;
            }
        }
    }
}

type AssignmentStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<AssignmentSet, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatcher for DispatcherApi {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        let node_id = if req.node_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            req.node_id.clone()
        };
        let span = tracing::info_span!("register", node = %node_id);
        self.register_node(node_id, req).instrument(span).await
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.heartbeat_impl(request.into_inner()).await
    }

    type AssignmentsStream = AssignmentStream;

    async fn assignments(
        &self,
        request: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        self.assignments_impl(request.into_inner())
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::debug_span!("update_task_status", node = %req.node_id, updates = req.updates.len());
        self.update_status_impl(req).instrument(span).await
    }
}

impl DispatcherApi {
    async fn register_node(
        &self,
        node_id: String,
        req: RegisterRequest,
    ) -> Result<Response<RegisterResponse>, Status> {
        let now = Timestamp::now();
        let status = NodeStatus {
            state: NodeState::Ready as i32,
            message: "registered".to_string(),
            agent_addr: req.agent_addr.clone(),
            last_heartbeat: Some(now),
        };
        let id = node_id.clone();
        self.update_node(&node_id, |cur| {
            Some(match cur {
                Some(n) => {
                    let mut n = n.clone();
                    n.description = req.description.clone();
                    n.status = Some(status.clone());
                    if let Some(m) = n.meta.as_mut() {
                        m.updated_at = Some(now);
                    }
                    n
                }
                None => Node {
                    id: id.clone(),
                    meta: Some(Meta {
                        version: 0,
                        created_at: Some(now),
                        updated_at: Some(now),
                        labels: Default::default(),
                    }),
                    raft_id: 0,
                    role: NodeRole::Worker as i32,
                    availability: NodeAvailability::Active as i32,
                    description: req.description.clone(),
                    status: Some(status.clone()),
                    labels: Default::default(),
                },
            })
        })
        .await
        .map_err(propose_status)?;
        let session_id = uuid::Uuid::new_v4().to_string();
        self.sessions().insert(
            node_id.clone(),
            Session {
                id: session_id.clone(),
                last_seen: Instant::now(),
            },
        );
        tracing::info!(agent_addr = %req.agent_addr, "node registered");
        Ok(Response::new(RegisterResponse {
            node_id,
            session_id,
            heartbeat_period_ms: self.inner.heartbeat.as_millis() as u64,
        }))
    }

    async fn heartbeat_impl(
        &self,
        req: HeartbeatRequest,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.touch(&req.node_id, &req.session_id)?;
        let down = self.inner.store.read(|s| {
            s.node(&req.node_id)
                .and_then(|n| n.status.as_ref())
                .is_some_and(|st| st.state() != NodeState::Ready)
        });
        if down {
            tracing::info!(node = %req.node_id, "node is back");
            self.update_node(&req.node_id, |cur| {
                let mut n = cur?.clone();
                let st = n.status.get_or_insert_with(NodeStatus::default);
                if st.state() == NodeState::Ready {
                    return None;
                }
                st.set_state(NodeState::Ready);
                st.message = "heartbeat resumed".to_string();
                st.last_heartbeat = Some(Timestamp::now());
                Some(n)
            })
            .await
            .map_err(propose_status)?;
        }
        Ok(Response::new(HeartbeatResponse {
            heartbeat_period_ms: self.inner.heartbeat.as_millis() as u64,
        }))
    }

    fn assignments_impl(
        &self,
        req: AssignmentsRequest,
    ) -> Result<Response<AssignmentStream>, Status> {
        self.touch(&req.node_id, &req.session_id)?;
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        let store = self.inner.store.clone();
        let mut events = store.subscribe();
        let mut closing = self.inner.closing.clone();
        let span = tracing::debug_span!("assignments", node = %req.node_id);
        tokio::spawn(async move {
            let node_id = req.node_id;
            let mut last: Option<AssignmentSet> = None;
            loop {
                if !this.session_current(&node_id, &req.session_id) {
                    let _ = tx
                        .send(Err(Status::not_found(format!(
                            "session {} of node {node_id} was replaced; register again",
                            req.session_id
                        ))))
                        .await;
                    return;
                }
                let set = store.read(|s| assign::assignment_set(s, &node_id));
                if last.as_ref().is_none_or(|l| !assign::same_set(l, &set)) {
                    tracing::debug!(tasks = set.tasks.len(), index = set.raft_index, "sending assignments");
                    if tx.send(Ok(set.clone())).await.is_err() {
                        return;
                    }
                    last = Some(set);
                }
                // Wait for a change that may concern this node.
                loop {
                    tokio::select! {
                        r = events.recv() => match r {
                            Ok(applied) => {
                                if applied.restored || applied.events.iter().any(|e| assign::touches(e, &node_id, last.as_ref())) {
                                    break;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        _ = tx.closed() => return,
                        _ = closed(&mut closing) => return,
                        // Notices a replaced session even when nothing changes.
                        _ = tokio::time::sleep(this.inner.heartbeat) => {
                            if !this.session_current(&node_id, &req.session_id) {
                                break;
                            }
                        }
                    }
                }
                // A burst of changes (the orchestrator's batch, then its
                // placements) becomes one set: wait for a quiet spell.
                if crate::settle::settle(&mut events, crate::settle::QUIET, crate::settle::MAX_HOLD).await
                    == crate::settle::Settled::Closed
                {
                    return;
                }
            }
        }.instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn update_status_impl(
        &self,
        req: UpdateTaskStatusRequest,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        self.touch(&req.node_id, &req.session_id)?;
        let mut last = None;
        for _ in 0..CONFLICT_RETRIES {
            let actions = self
                .inner
                .store
                .read(|s| assign::status_actions(s, &req.node_id, &req.updates));
            if actions.is_empty() {
                return Ok(Response::new(UpdateTaskStatusResponse {}));
            }
            for a in &actions {
                if let Some(store_action::Object::Task(t)) = &a.object {
                    tracing::debug!(task = %t.id, service = %t.service_id, stack = %t.stack,
                        state = t.status.as_ref().map(|s| s.state().short_name()).unwrap_or(""),
                        "task status");
                }
            }
            let batch = StoreBatch {
                actions,
                proposal_id: format!("dispatcher-status-{}", req.node_id),
            };
            match self.inner.store.propose(batch).await {
                Ok(_) => return Ok(Response::new(UpdateTaskStatusResponse {})),
                Err(e @ ProposeError::Refused(_)) => last = Some(e),
                Err(e) => return Err(propose_status(e)),
            }
        }
        Err(propose_status(last.unwrap_or(ProposeError::Stopped)))
    }
}

/// Resolves once the flag turns true (or its sender is gone).
async fn closed(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|c| *c).await.is_ok();
}
