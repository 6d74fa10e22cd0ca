//! The daemon's cluster wiring (issue 7), kept apart from `daemon.rs` so
//! the daemon only makes two calls:
//!
//! 1. before `Manager::start`: [`prepare`] reads `<manager dir>/cluster/`
//!    and gives the Raft start options (a gRPC transport with mutual TLS if
//!    this node has a certificate; join mode if it joined a cluster);
//! 2. after it: [`start`] serves `Cluster` (returned, for the unix socket)
//!    and, as soon as the cluster exists (at start, or when `cluster init`
//!    arrives), listens on the advertised TCP address with mutual TLS for
//!    `Cluster` (join) and Raft (`RaftTransport`, `RaftPeer`), and runs the
//!    leader's promoter.
//!
//! It must never serve anything over TCP without TLS, and never serve the
//! Control or Dispatcher APIs over TCP until they check client
//! certificates.

// Until daemon.rs makes the two calls above (see the issue 7 report), the
// compiler sees no caller.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use flotilla_manager::cluster::{run_promoter, ClusterService, ClusterState};
use flotilla_manager::raft::transport::{GrpcTransport, RaftServices};
use flotilla_manager::raft::{StartOptions, StoreHandle};
use flotilla_proto::v1::cluster_server::ClusterServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Directory of the cluster files inside the manager's state directory.
pub fn cluster_dir(manager_state_dir: &Path) -> PathBuf {
    manager_state_dir.join("cluster")
}

/// What [`prepare`] decided.
#[derive(Debug)]
pub struct ClusterWiring {
    pub dir: PathBuf,
    pub transport: Arc<GrpcTransport>,
    pub state: Option<ClusterState>,
}

impl ClusterWiring {
    /// The Raft start options for `Manager::start`.
    pub fn start_options(&self) -> StartOptions {
        StartOptions {
            transport: Some(self.transport.clone()),
            forwarder: Some(self.transport.clone()),
            // A node that joined has no Raft configuration until the leader
            // sends its snapshot; one that ran `init` has its own already
            // (the flag then changes nothing).
            join: self.state.is_some(),
        }
    }
}

/// Before the manager starts. Must run inside the tokio runtime.
pub fn prepare(manager_state_dir: &Path) -> Result<ClusterWiring> {
    let dir = cluster_dir(manager_state_dir);
    let state = ClusterState::load(&dir)
        .with_context(|| format!("reading the cluster state in {}", dir.display()))?;
    let tls = match &state {
        Some(_) => Some(
            flotilla_manager::cluster::ca::NodeIdentity::load(&dir)
                .with_context(|| format!("reading this node's certificate in {}", dir.display()))?
                .peer_tls(),
        ),
        None => None,
    };
    Ok(ClusterWiring {
        dir,
        transport: GrpcTransport::new(tls),
        state,
    })
}

/// After the manager started: the `Cluster` service for the unix socket,
/// and the task that serves TCP once the cluster exists (ends when `stop`
/// flips).
pub fn start(
    wiring: &ClusterWiring,
    store: StoreHandle,
    stop: watch::Receiver<bool>,
) -> Result<(ClusterServer<ClusterService>, JoinHandle<()>)> {
    let cluster = ClusterService::new(store.clone(), &wiring.dir)
        .with_context(|| format!("loading the cluster state in {}", wiring.dir.display()))?;
    let server = cluster.server();
    let transport = wiring.transport.clone();
    let task = tokio::spawn(serve_tcp(cluster, store, transport, stop));
    Ok((server, task))
}

async fn serve_tcp(
    cluster: ClusterService,
    store: StoreHandle,
    transport: Arc<GrpcTransport>,
    mut stop: watch::Receiver<bool>,
) {
    let mut identity = cluster.identity();
    let id = loop {
        if let Some(id) = identity.borrow_and_update().clone() {
            break id;
        }
        tokio::select! {
            r = identity.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    };
    let Some(state) = cluster.state() else {
        return;
    };
    transport.set_tls(id.peer_tls());
    let listener = match tokio::net::TcpListener::bind(&state.advertise_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %state.advertise_addr, "cluster listener: {e}");
            return;
        }
    };
    tracing::info!(addr = %state.advertise_addr, "cluster listener (mutual TLS) ready");
    tokio::spawn(run_promoter(store.clone(), stop.clone()));
    let raft = RaftServices::with_mutual_tls(store);
    let mut builder = match tonic::transport::Server::builder().tls_config(id.server_tls()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cluster TLS configuration: {e}");
            return;
        }
    };
    let r = builder
        .add_service(cluster.server())
        .add_service(raft.transport_service())
        .add_service(raft.peer_service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = stop.changed().await;
            },
        )
        .await;
    if let Err(e) = r {
        tracing::error!("cluster listener stopped: {e}");
    }
}
