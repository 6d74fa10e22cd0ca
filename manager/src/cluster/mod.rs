//! Cluster membership: the cluster CA and node certificates ([`ca`]), join
//! tokens ([`token`]), the joiner's pinned TLS handshake ([`join`]), and the
//! `Cluster` gRPC service every manager serves ([`ClusterService`]):
//! `Init`, `JoinToken`, `Join`, `Leave`, `ListMembers`.
//!
//! Membership of managers is Raft's own configuration: a joining manager is
//! added as a learner by the leader while answering `Join`, and the
//! leader's promoter loop ([`run_promoter`]) makes it a voter once it has
//! caught up (it may need a snapshot first).
//!
//! Local state (`<dir>/cluster.json`, 0600, plus the PEM files of [`ca`]):
//! cluster id, this node's id and role, its advertised address and, on
//! managers, the join token secrets.
//!
//! Known gap (recorded for issue 7): the token secrets and the CA key live
//! in each manager's directory and are copied to a manager when it joins;
//! `--rotate` on one manager is not propagated to the others (they belong
//! in the replicated store once the model has fields for them).
//!
//! This module must never hand the CA key or a secret to a worker, and
//! never admit a node without checking the token's secret.

pub mod ca;
pub mod join;
pub mod token;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1::cluster_server::{Cluster, ClusterServer};
use flotilla_proto::v1::{
    ClusterInitRequest, ClusterInitResponse, JoinRequest, JoinResponse, JoinRole, JoinTokenRequest,
    JoinTokenResponse, LeaveRequest, LeaveResponse, ListMembersRequest, ListMembersResponse,
    Member,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::raft::StoreHandle;
use ca::{require_peer_cert, CaError, ClusterCa, NodeIdentity, NodeRole};
use token::{hash_secret, hashes_equal, JoinToken};

/// File of the local cluster state inside the cluster directory.
pub const STATE_FILE: &str = "cluster.json";
/// How often the leader looks for learners to promote.
const PROMOTE_EVERY: Duration = Duration::from_millis(200);

/// Errors of the local cluster state.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt cluster state: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// What a node remembers about its cluster (`cluster.json`).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterState {
    pub cluster_id: String,
    pub node_id: String,
    /// "manager" or "worker".
    pub role: String,
    pub advertise_addr: String,
    /// Managers only.
    #[serde(default)]
    pub worker_secret: String,
    #[serde(default)]
    pub manager_secret: String,
}

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterState")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .field("advertise_addr", &self.advertise_addr)
            .finish_non_exhaustive()
    }
}

impl ClusterState {
    /// `Ok(None)` when the node is not part of a cluster.
    pub fn load(dir: &Path) -> Result<Option<ClusterState>, ClusterError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ClusterError::Corrupt {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ClusterError::Io {
                what: "reading",
                path,
                source,
            }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), ClusterError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| ClusterError::Corrupt {
            path: dir.join(STATE_FILE),
            message: e.to_string(),
        })?;
        ca::write(&dir.join(STATE_FILE), &text, 0o600)?;
        Ok(())
    }

    fn token(&self, role: JoinRole, ca_pem: &str) -> Result<JoinToken, CaError> {
        let secret = match role {
            JoinRole::Manager => &self.manager_secret,
            JoinRole::Worker => &self.worker_secret,
        };
        Ok(JoinToken {
            ca_digest: ca::cert_digest(ca_pem)?,
            secret: secret.clone(),
        })
    }
}

/// Writes everything a joined manager needs (identity, CA with key, state)
/// into `dir`. Workers get no CA key and no secrets.
pub fn save_joined(
    dir: &Path,
    joined: &join::Joined,
    advertise_addr: &str,
) -> Result<ClusterState, ClusterError> {
    joined.identity.save(dir)?;
    let r = &joined.response;
    let manager = joined.role() == JoinRole::Manager;
    if manager && !r.ca_key_pem.is_empty() {
        ClusterCa::from_pem(r.ca_pem.clone(), r.ca_key_pem.clone()).save(dir)?;
    }
    let state = ClusterState {
        cluster_id: r.cluster_id.clone(),
        node_id: r.node_id.clone(),
        role: if manager { "manager" } else { "worker" }.into(),
        advertise_addr: advertise_addr.to_string(),
        worker_secret: if manager {
            r.worker_secret.clone()
        } else {
            String::new()
        },
        manager_secret: if manager {
            r.manager_secret.clone()
        } else {
            String::new()
        },
    };
    state.save(dir)?;
    Ok(state)
}

/// The addresses of the members a join answer lists.
pub fn members_to_peers(members: &[Member]) -> BTreeMap<u64, String> {
    members
        .iter()
        .filter(|m| m.raft_id != 0 && !m.addr.is_empty())
        .map(|m| (m.raft_id, m.addr.clone()))
        .collect()
}

/// The `Cluster` service of one manager.
#[derive(Clone)]
pub struct ClusterService {
    store: StoreHandle,
    dir: PathBuf,
    state: Arc<Mutex<Option<ClusterState>>>,
    /// Flips to the node's identity when the cluster is initialised here
    /// (the daemon then starts its TLS listener).
    identity: watch::Sender<Option<NodeIdentity>>,
}

impl std::fmt::Debug for ClusterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterService")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ClusterService {
    /// The service over `store`, keeping its files in `dir` (loads what an
    /// earlier `init` or `join` left there).
    pub fn new(store: StoreHandle, dir: impl Into<PathBuf>) -> Result<Self, ClusterError> {
        let dir = dir.into();
        let state = ClusterState::load(&dir)?;
        let identity = match &state {
            Some(_) => Some(NodeIdentity::load(&dir)?),
            None => None,
        };
        Ok(ClusterService {
            store,
            dir,
            state: Arc::new(Mutex::new(state)),
            identity: watch::channel(identity).0,
        })
    }

    /// The node's TLS identity once the cluster exists (watch it to start
    /// the TCP listener when `init` happens).
    pub fn identity(&self) -> watch::Receiver<Option<NodeIdentity>> {
        self.identity.subscribe()
    }

    pub fn state(&self) -> Option<ClusterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn server(&self) -> ClusterServer<ClusterService> {
        ClusterServer::new(self.clone())
    }

    /// Initialises a cluster here (what `Cluster.Init` does), for callers
    /// in process.
    pub fn init(&self, advertise_addr: &str) -> Result<ClusterInitResponse, Status> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return Err(Status::already_exists(
                "this node is already part of a cluster (cluster leave first)",
            ));
        }
        if advertise_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "--advertise-addr {advertise_addr:?}: expected IP:PORT"
            )));
        }
        if !self.store.is_leader() {
            return Err(Status::failed_precondition(
                "the local Raft node is not the leader of its one-node cluster",
            ));
        }
        let cluster_id = self
            .store
            .read(|s| s.cluster().map(|c| c.id.clone()))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let internal = |e: CaError| Status::internal(e.to_string());
        let ca = ClusterCa::generate(&cluster_id).map_err(internal)?;
        let node_id = uuid::Uuid::new_v4().simple().to_string();
        let identity = ca
            .issue_self(&node_id, NodeRole::Manager)
            .map_err(internal)?;
        let digest = ca.digest().map_err(internal)?;
        let worker = JoinToken::generate(&digest);
        let manager = JoinToken::generate(&digest);
        let state = ClusterState {
            cluster_id: cluster_id.clone(),
            node_id,
            role: "manager".into(),
            advertise_addr: advertise_addr.to_string(),
            worker_secret: worker.secret.clone(),
            manager_secret: manager.secret.clone(),
        };
        ca.save(&self.dir).map_err(internal)?;
        identity.save(&self.dir).map_err(internal)?;
        state
            .save(&self.dir)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.store
            .set_peers(BTreeMap::from([(
                self.store.raft_id(),
                advertise_addr.to_string(),
            )]))
            .map_err(|e| Status::internal(e.to_string()))?;
        *guard = Some(state);
        drop(guard);
        self.identity.send_replace(Some(identity));
        Ok(ClusterInitResponse {
            cluster_id,
            worker_token: worker.to_string(),
            manager_token: manager.to_string(),
        })
    }

    fn members(&self) -> Vec<Member> {
        let st = self.store.status();
        let mut peers = self.store.peers();
        if let Some(s) = self.state() {
            peers
                .entry(self.store.raft_id())
                .or_insert(s.advertise_addr);
        }
        let mut ids: Vec<u64> = st.voters.iter().chain(&st.learners).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| Member {
                raft_id: id,
                addr: peers.get(&id).cloned().unwrap_or_default(),
                voter: st.voters.contains(&id),
                leader: st.leader_id == id,
                node_id: String::new(),
            })
            .collect()
    }
}

fn role_of(req: i32) -> JoinRole {
    JoinRole::try_from(req).unwrap_or(JoinRole::Worker)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn init(
        &self,
        request: Request<ClusterInitRequest>,
    ) -> Result<Response<ClusterInitResponse>, Status> {
        require_peer_cert(&request)?;
        let addr = request.into_inner().advertise_addr;
        ClusterService::init(self, &addr).map(Response::new)
    }

    async fn join_token(
        &self,
        request: Request<JoinTokenRequest>,
    ) -> Result<Response<JoinTokenResponse>, Status> {
        require_peer_cert(&request)?;
        let req = request.into_inner();
        let role = role_of(req.role);
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = guard.as_mut() else {
            return Err(Status::failed_precondition(
                "this node is not part of a cluster (cluster init first)",
            ));
        };
        if state.role != "manager" {
            return Err(Status::permission_denied("join tokens live on managers"));
        }
        let ca_pem = std::fs::read_to_string(self.dir.join(ca::CA_CERT_FILE))
            .map_err(|e| Status::internal(format!("reading the CA certificate: {e}")))?;
        if req.rotate {
            let fresh = JoinToken::generate("");
            match role {
                JoinRole::Manager => state.manager_secret = fresh.secret,
                JoinRole::Worker => state.worker_secret = fresh.secret,
            }
            state
                .save(&self.dir)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let token = state
            .token(role, &ca_pem)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(JoinTokenResponse {
            token: token.to_string(),
        }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = request.into_inner();
        let Some(state) = self.state() else {
            return Err(Status::failed_precondition(
                "this node is not part of a cluster",
            ));
        };
        if state.role != "manager" {
            return Err(Status::failed_precondition(
                "join through a manager, not a worker",
            ));
        }
        let token =
            JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let presented = token.secret_hash();
        let role = if hashes_equal(&presented, &hash_secret(&state.manager_secret)) {
            JoinRole::Manager
        } else if hashes_equal(&presented, &hash_secret(&state.worker_secret)) {
            JoinRole::Worker
        } else {
            return Err(Status::permission_denied(
                "the join token is not valid (wrong or rotated)",
            ));
        };
        if role == JoinRole::Manager {
            if req.raft_id == 0 || req.advertise_addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(Status::invalid_argument(
                    "a joining manager gives its raft id and IP:PORT advertise address",
                ));
            }
            if !self.store.is_leader() {
                let leader = self.store.leader_addr().unwrap_or_default();
                return Err(Status::unavailable(format!(
                    "not the Raft leader; {}{leader}",
                    join::LEADER_HINT
                )));
            }
        }
        let ca = ClusterCa::load(&self.dir).map_err(|e| Status::internal(e.to_string()))?;
        let node_id = uuid::Uuid::new_v4().simple().to_string();
        let cert_role = if role == JoinRole::Manager {
            NodeRole::Manager
        } else {
            NodeRole::Worker
        };
        let cert_pem = ca
            .issue(&req.csr_pem, &node_id, cert_role)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if role == JoinRole::Manager {
            // A learner now; the promoter makes it a voter once caught up.
            self.store
                .add_learner(req.raft_id, &req.advertise_addr)
                .await
                .map_err(|e| Status::unavailable(format!("adding the manager to Raft: {e}")))?;
        }
        let mut resp = JoinResponse {
            cluster_id: state.cluster_id.clone(),
            node_id,
            role: role as i32,
            cert_pem,
            ca_pem: ca.cert_pem.clone(),
            members: self.members(),
            ..Default::default()
        };
        if role == JoinRole::Manager {
            resp.ca_key_pem = ca.key_pem().to_string();
            resp.worker_secret = state.worker_secret.clone();
            resp.manager_secret = state.manager_secret.clone();
        }
        tracing::info!(node = %resp.node_id, role = ?role, addr = %req.advertise_addr, "node joined");
        Ok(Response::new(resp))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        require_peer_cert(&request)?;
        let req = request.into_inner();
        let id = if req.raft_id == 0 {
            self.store.raft_id()
        } else {
            req.raft_id
        };
        let st = self.store.status();
        if st.voters.len() <= 1 && st.voters.contains(&id) && !req.force {
            return Err(Status::failed_precondition(
                "this is the last manager: leaving would lose the cluster (use --force)",
            ));
        }
        self.store
            .remove_member(id)
            .await
            .map_err(|e| Status::unavailable(format!("removing raft member {id}: {e}")))?;
        Ok(Response::new(LeaveResponse {}))
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        require_peer_cert(&request)?;
        let st = self.store.status();
        Ok(Response::new(ListMembersResponse {
            members: self.members(),
            leader_id: st.leader_id,
            term: st.term,
        }))
    }
}

/// The leader's promoter: every learner that has caught up with the
/// leader's commit index becomes a voter. Runs until `stop` flips.
pub async fn run_promoter(store: StoreHandle, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROMOTE_EVERY) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if !store.is_leader() {
            continue;
        }
        let learners = store.status().learners;
        for id in learners {
            let addr = store.peers().get(&id).cloned().unwrap_or_default();
            // add_voter on a learner only waits for catch-up, then promotes.
            match store.add_voter(id, &addr, PROMOTE_EVERY).await {
                Ok(_) => tracing::info!(raft_id = id, "manager promoted to voter"),
                Err(crate::raft::MembershipError::NotCaughtUp { .. }) => {}
                Err(e) => tracing::debug!(raft_id = id, "promoting: {e}"),
            }
        }
    }
}
