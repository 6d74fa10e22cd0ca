//! The replicated store: a raft-rs node with durable redb storage that
//! orders every write to the cluster's state, and the [`Store`] it applies
//! the committed writes to.
//!
//! One driver loop owns the `RawNode` (tick / step / propose / Ready, as in
//! raft-rs's examples). It runs on tokio's blocking pool because each Ready
//! is persisted with a synchronous redb commit (fsync) that must not stall
//! the async workers. Everyone else holds a cloneable [`StoreHandle`]:
//! propose a `StoreBatch`, read the applied state, subscribe to what was
//! applied.
//!
//! Batching: each proposed `StoreBatch` becomes exactly one Raft entry, so a
//! version conflict refuses that batch alone. Proposals that arrive together
//! are drained in the same loop iteration and persisted in the same Ready,
//! i.e. one redb transaction and one fsync for all of them; callers that
//! want several changes to be atomic put them in one batch.
//!
//! Restart: the store is rebuilt from the stored snapshot plus the committed
//! log after it; [`StoreHandle::start`] returns once that replay is done.
//!
//! This module must never apply anything that did not come out of the Raft
//! log, and never let a reader hold the store lock across an await.

mod logger;
mod node;
pub mod storage;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_proto::v1::{Event, StoreBatch};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::store::{ApplyError, Store, StoreError};
pub use storage::{RedbStorage, RAFT_FILE, STATE_FORMAT};

/// Configuration of the Raft node.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Directory holding `raft.redb` (created if missing).
    pub state_dir: PathBuf,
    /// Take a snapshot and compact the log every this many applied entries
    /// (0: only on [`StoreHandle::snapshot_now`]).
    pub snapshot_every: u64,
    /// Raft's logical clock: election after 10–20 ticks, heartbeat every 3.
    pub tick: Duration,
}

impl RaftConfig {
    /// Defaults: a snapshot every 1000 entries, a 100 ms tick.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            snapshot_every: 1000,
            tick: Duration::from_millis(100),
        }
    }
}

/// What one applied entry changed, for subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub events: Vec<Event>,
    /// The whole store was replaced by a snapshot from the leader at
    /// `index` (events are empty then): subscribers must re-read.
    pub restored: bool,
}

/// A point-in-time view of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub raft_id: u64,
    /// 0 when unknown.
    pub leader_id: u64,
    pub is_leader: bool,
    pub term: u64,
    pub applied: u64,
    pub commit: u64,
    pub last_snapshot_index: u64,
    /// Range of the log kept in storage (first > last when empty).
    pub first_log_index: u64,
    pub last_log_index: u64,
    pub voters: Vec<u64>,
}

/// Sends Raft messages to peers. Implementations must not block: queue and
/// return (the driver loop calls this between fsyncs).
pub trait RaftTransport: Send + Sync + 'static {
    /// `message` is an encoded `eraftpb::Message` for the peer `to`, to be
    /// handed to that peer's [`StoreHandle::step`].
    fn send(&self, to: u64, message: Vec<u8>);
}

/// Errors starting or running the Raft node.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("creating the state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} in {path}: {source}")]
    Redb {
        what: &'static str,
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("{path}: state written by a newer Flotilla (format {found}), this binary reads up to {supported}")]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: corrupt or unreadable {what}: {message}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("loading the store snapshot from {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("raft-rs {what}: {source}")]
    Raft {
        what: &'static str,
        source: ::raft::Error,
    },
    #[error("decoding a raft message from a peer: {0}")]
    BadMessage(String),
    #[error("the raft loop has stopped")]
    Stopped,
}

impl RaftError {
    fn redb(what: &'static str, path: &std::path::Path, e: impl Into<redb::Error>) -> Self {
        RaftError::Redb {
            what,
            path: path.to_path_buf(),
            source: Box::new(e.into()),
        }
    }
}

/// Why a proposal did not end up applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this manager (raft id {raft_id}) is not the Raft leader (leader: {})", leader_id.map_or("unknown".to_string(), |l| l.to_string()))]
    NotLeader {
        raft_id: u64,
        leader_id: Option<u64>,
    },
    #[error("the batch was refused: {0}")]
    Refused(#[from] ApplyError),
    #[error("leadership was lost before the proposal was applied; it may still be applied by the new leader")]
    LeadershipLost,
    #[error("raft-rs dropped the proposal: {0}")]
    Dropped(String),
    #[error("the raft loop has stopped")]
    Stopped,
}

pub(crate) type ProposeReply = oneshot::Sender<Result<u64, ProposeError>>;

pub(crate) enum Cmd {
    Propose {
        batch: StoreBatch,
        reply: ProposeReply,
    },
    Step(Box<::raft::prelude::Message>),
    SnapshotNow(oneshot::Sender<Result<u64, RaftError>>),
    Shutdown(oneshot::Sender<()>),
}

/// State shared between the driver loop and the handles.
pub(crate) struct Shared {
    raft_id: u64,
    store: RwLock<Store>,
    status: Mutex<RaftStatus>,
    leader: AtomicBool,
    events: broadcast::Sender<Arc<Applied>>,
}

/// A cloneable handle on the running Raft node and its store. The loop
/// stops when [`StoreHandle::shutdown`] is called or every handle is
/// dropped.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
    cmds: std::sync::mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("raft_id", &self.shared.raft_id)
            .finish()
    }
}

impl StoreHandle {
    /// Opens or creates `<state_dir>/raft.redb` (bootstrapping a one-voter
    /// cluster on first start), rebuilds the store from snapshot + log and
    /// starts the loop. Returns once the replay is done.
    pub async fn start(cfg: RaftConfig) -> Result<(StoreHandle, JoinHandle<()>), RaftError> {
        Self::start_with_transport(cfg, None).await
    }

    /// Like [`StoreHandle::start`], with a transport for messages to peers.
    pub async fn start_with_transport(
        cfg: RaftConfig,
        transport: Option<Arc<dyn RaftTransport>>,
    ) -> Result<(StoreHandle, JoinHandle<()>), RaftError> {
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let join = tokio::task::spawn_blocking(move || {
            node::run(cfg, transport, cmd_rx, ready_tx);
        });
        match ready_rx.await {
            Ok(Ok(shared)) => Ok((
                StoreHandle {
                    shared,
                    cmds: cmd_tx,
                },
                join,
            )),
            Ok(Err(e)) => {
                // Wait for the loop to release the database file.
                let _ = join.await;
                Err(e)
            }
            Err(_) => {
                let _ = join.await;
                Err(RaftError::Stopped)
            }
        }
    }

    /// Proposes `batch` as one Raft entry. Resolves with the entry's index
    /// once it is applied locally, or with why not.
    pub async fn propose(&self, batch: StoreBatch) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Propose { batch, reply })
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Runs `f` against the applied state under a read lock. Never hold
    /// anything from it across an await; copy out what you need.
    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        let guard = self
            .shared
            .store
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// Every entry applied from now on (refused batches and Raft's own
    /// entries are not sent). A lagging receiver gets `Lagged` and should
    /// re-read the store.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.shared.events.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        self.shared.leader.load(Ordering::Acquire)
    }

    pub fn raft_id(&self) -> u64 {
        self.shared.raft_id
    }

    pub fn status(&self) -> RaftStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Hands a message from a peer (an encoded `eraftpb::Message`) to the
    /// loop.
    pub fn step(&self, message: &[u8]) -> Result<(), RaftError> {
        use protobuf::Message as _;
        let m = ::raft::prelude::Message::parse_from_bytes(message)
            .map_err(|e| RaftError::BadMessage(e.to_string()))?;
        self.cmds
            .send(Cmd::Step(Box::new(m)))
            .map_err(|_| RaftError::Stopped)
    }

    /// Takes a snapshot of the applied state now and compacts the log;
    /// returns the snapshot's index.
    pub async fn snapshot_now(&self) -> Result<u64, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::SnapshotNow(tx))
            .map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Stops the loop and waits until it released the database file.
    /// Pending proposals fail with [`ProposeError::Stopped`].
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
