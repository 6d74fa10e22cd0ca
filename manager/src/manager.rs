//! The manager as one piece: starts the Raft node (with the store), the
//! orchestrator's leader loop and the dispatcher's heartbeat monitor, and
//! hands out the gRPC services for the caller to serve (the CLI decides on
//! which sockets).
//!
//! It must never serve sockets itself or reach into the runtime: wiring only.

use crate::control::ControlApi;
use crate::dispatcher::DispatcherApi;
use crate::ipam::{self, IpamError};
use crate::raft::{RaftConfig, RaftError, StoreHandle};
use crate::store::STORE_FORMAT;
use flotilla_proto::v1::{
    control_server::ControlServer, dispatcher_server::DispatcherServer, store_action, ClusterInfo,
    Meta, StoreAction, StoreBatch, Timestamp,
};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Raft log, snapshots (`raft.redb`).
    pub state_dir: PathBuf,
    /// Snapshot and compact the log every this many entries.
    pub snapshot_every: u64,
    /// Agents heartbeat this often; 3 missed periods mark a node Down.
    pub heartbeat_period: Duration,
    /// IPv4 pool stack networks get their /24s from.
    pub address_pool: String,
}

impl ManagerConfig {
    /// Defaults: a snapshot every 1000 entries, 1s heartbeats, the default
    /// address pool.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            snapshot_every: 1000,
            heartbeat_period: Duration::from_secs(1),
            address_pool: ipam::DEFAULT_POOL.to_string(),
        }
    }
}

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("manager configuration: {0}")]
    Config(#[from] IpamError),
    #[error("starting the Raft node in {path}: {source}")]
    Raft {
        path: PathBuf,
        #[source]
        source: RaftError,
    },
}

/// How often the orchestrator decides again with no change applied (restart
/// back-offs expire on this tick).
const ORCHESTRATOR_TICK: Duration = Duration::from_millis(250);
/// How long `start` waits for a single-voter cluster to elect itself.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// A running manager.
pub struct Manager {
    store: StoreHandle,
    raft_join: JoinHandle<()>,
    control: ControlApi,
    dispatcher: DispatcherApi,
    stop: watch::Sender<bool>,
    shutdown_req: watch::Sender<bool>,
    loops: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("raft_id", &self.store.raft_id())
            .finish()
    }
}

impl Manager {
    /// Starts Raft (replaying the stored state), waits briefly for
    /// leadership (a fresh single-node cluster elects itself), records the
    /// cluster's identity on first start, and starts the loops.
    pub async fn start(cfg: ManagerConfig) -> Result<Manager, ManagerError> {
        let pool = ipam::parse_pool(&cfg.address_pool)?;
        let raft_cfg = RaftConfig {
            state_dir: cfg.state_dir.clone(),
            snapshot_every: cfg.snapshot_every,
            tick: Duration::from_millis(100),
        };
        let (store, raft_join) =
            StoreHandle::start(raft_cfg)
                .await
                .map_err(|source| ManagerError::Raft {
                    path: cfg.state_dir.clone(),
                    source,
                })?;
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        while !store.is_leader() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if store.is_leader() && store.read(|s| s.cluster().is_none()) {
            let now = Timestamp::now();
            let info = ClusterInfo {
                id: uuid::Uuid::new_v4().to_string(),
                meta: Some(Meta {
                    version: 0,
                    created_at: Some(now),
                    updated_at: Some(now),
                    labels: Default::default(),
                }),
                store_format: STORE_FORMAT,
                name: "flotilla".to_string(),
                next_subnet: 0,
            };
            let batch = StoreBatch {
                actions: vec![StoreAction {
                    kind: store_action::Kind::Put as i32,
                    object: Some(store_action::Object::Cluster(info)),
                    expected_version: 0,
                }],
                proposal_id: "manager-cluster-init".to_string(),
            };
            if let Err(e) = store.propose(batch).await {
                tracing::warn!(error = %e, "could not record the cluster identity");
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let (shutdown_req, _) = watch::channel(false);
        let dispatcher = DispatcherApi::new(
            store.clone(),
            cfg.heartbeat_period,
            shutdown_req.subscribe(),
        );
        let control = ControlApi::new(
            store.clone(),
            pool,
            cfg.state_dir.clone(),
            shutdown_req.clone(),
        );
        let loops = vec![
            tokio::spawn(crate::orchestrator::run::run(
                store.clone(),
                ORCHESTRATOR_TICK,
                stop_rx.clone(),
            )),
            tokio::spawn(dispatcher.clone().monitor(stop_rx)),
        ];
        tracing::info!(state_dir = %cfg.state_dir.display(), raft_id = store.raft_id(), "manager started");
        Ok(Manager {
            store,
            raft_join,
            control,
            dispatcher,
            stop,
            shutdown_req,
            loops,
        })
    }

    /// The CLI's API.
    pub fn control_service(&self) -> ControlServer<ControlApi> {
        ControlServer::new(self.control.clone())
    }

    /// The agents' API.
    pub fn dispatcher_service(&self) -> DispatcherServer<DispatcherApi> {
        DispatcherServer::new(self.dispatcher.clone())
    }

    /// Resolves once `Control.Shutdown` was called. Open Events and
    /// Assignments streams end at that moment, so a graceful server shutdown
    /// that follows does not wait for them.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown_req.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Ends open streams, stops the loops and the Raft node (which releases
    /// its files).
    pub async fn shutdown(self) {
        self.shutdown_req.send_replace(true);
        self.stop.send_replace(true);
        for l in self.loops {
            let _ = l.await;
        }
        self.store.shutdown().await;
        let _ = self.raft_join.await;
        tracing::info!("manager stopped");
    }

    /// The replicated store.
    pub fn store(&self) -> StoreHandle {
        self.store.clone()
    }
}
