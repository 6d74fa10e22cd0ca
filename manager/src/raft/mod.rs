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
pub mod transport;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
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
    pub learners: Vec<u64>,
}

/// Sends Raft messages to peers. Implementations must not block: queue and
/// return (the driver loop calls this between fsyncs).
pub trait RaftTransport: Send + Sync + 'static {
    /// `message` is an encoded `eraftpb::Message` for the peer `to`, to be
    /// handed to that peer's [`StoreHandle::step`].
    fn send(&self, to: u64, message: Vec<u8>);

    /// A snapshot message: implementations that can tell whether it was
    /// delivered report it with [`StoreHandle::report_snapshot`] (raft-rs
    /// pauses the peer until then). The default sends it like any other.
    fn send_snapshot(&self, to: u64, message: Vec<u8>) {
        self.send(to, message)
    }

    /// The address of peer `id` became known (`Some`) or the peer was
    /// removed (`None`). Called by the loop on start (for every stored
    /// peer) and whenever a conf change is applied.
    fn set_peer(&self, _id: u64, _addr: Option<&str>) {}

    /// Lets the transport report delivery failures back to the node
    /// (snapshot status, unreachable peers). Called once, right after start.
    fn attach(&self, _handle: &StoreHandle) {}
}

/// A boxed future of a forwarded proposal.
pub type ForwardFuture = Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send>>;

/// Sends a proposal to the leader (a follower's [`StoreHandle::propose`]
/// uses it). Resolves with the entry's index once applied on the leader.
pub trait ProposeForwarder: Send + Sync + 'static {
    fn forward(&self, leader: u64, batch: StoreBatch) -> ForwardFuture;
}

/// How a node starts.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Messages to peers; none for a single-node cluster.
    pub transport: Option<Arc<dyn RaftTransport>>,
    /// A follower's proposals go to the leader through this; without one a
    /// follower answers [`ProposeError::NotLeader`].
    pub forwarder: Option<Arc<dyn ProposeForwarder>>,
    /// True: a state directory without Raft state becomes a new one-voter
    /// cluster. False (joining): it starts with no configuration and waits
    /// for the leader to add it (its log and configuration then arrive as a
    /// snapshot).
    pub join: bool,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("transport", &self.transport.is_some())
            .field("forwarder", &self.forwarder.is_some())
            .field("join", &self.join)
            .finish()
    }
}

/// Why a membership change or a linearizable read did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error("raft-rs refused the configuration change: {0}")]
    Refused(String),
    #[error("learner {raft_id} did not catch up with the leader within {waited:?}")]
    NotCaughtUp { raft_id: u64, waited: Duration },
    #[error("no read index within {0:?} (no leader reachable?)")]
    ReadTimeout(Duration),
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
    ConfChange {
        cc: ::raft::prelude::ConfChangeV2,
        reply: ProposeReply,
    },
    ReadIndex(oneshot::Sender<Result<u64, ProposeError>>),
    /// The leader's view of how far `id` has replicated: (matched, commit).
    Progress(u64, oneshot::Sender<Option<(u64, u64)>>),
    SetPeers(BTreeMap<u64, String>),
    ReportSnapshot {
        to: u64,
        ok: bool,
    },
    ReportUnreachable(u64),
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
    peers: Mutex<BTreeMap<u64, String>>,
}

/// A cloneable handle on the running Raft node and its store. The loop
/// stops when [`StoreHandle::shutdown`] is called or every handle is
/// dropped.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
    cmds: Arc<std::sync::mpsc::Sender<Cmd>>,
    forwarder: Option<Arc<dyn ProposeForwarder>>,
}

/// A handle that does not keep the loop alive (what a transport holds, so
/// the node → transport → handle cycle does not leak the loop).
#[derive(Clone)]
pub struct WeakStoreHandle {
    raft_id: u64,
    cmds: Weak<std::sync::mpsc::Sender<Cmd>>,
}

impl std::fmt::Debug for WeakStoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakStoreHandle")
            .field("raft_id", &self.raft_id)
            .finish()
    }
}

impl WeakStoreHandle {
    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    fn send(&self, cmd: Cmd) {
        if let Some(tx) = self.cmds.upgrade() {
            let _ = tx.send(cmd);
        }
    }

    /// See [`StoreHandle::report_snapshot`].
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        self.send(Cmd::ReportSnapshot { to, ok });
    }

    /// See [`StoreHandle::report_unreachable`].
    pub fn report_unreachable(&self, to: u64) {
        self.send(Cmd::ReportUnreachable(to));
    }
}

/// How long a proposal waits for a leader to be known (during an election)
/// before answering [`ProposeError::NotLeader`].
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long a linearizable read waits for its read index.
const READ_INDEX_WAIT: Duration = Duration::from_secs(5);

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
        Self::start_with(
            cfg,
            StartOptions {
                transport,
                ..Default::default()
            },
        )
        .await
    }

    /// Starts the node with a transport, a forwarder and the bootstrap
    /// choice of `opts`.
    pub async fn start_with(
        cfg: RaftConfig,
        opts: StartOptions,
    ) -> Result<(StoreHandle, JoinHandle<()>), RaftError> {
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let transport = opts.transport.clone();
        let bootstrap = !opts.join;
        let join = tokio::task::spawn_blocking(move || {
            node::run(cfg, transport, bootstrap, cmd_rx, ready_tx);
        });
        match ready_rx.await {
            Ok(Ok(shared)) => {
                let handle = StoreHandle {
                    shared,
                    cmds: Arc::new(cmd_tx),
                    forwarder: opts.forwarder,
                };
                if let Some(t) = &opts.transport {
                    t.attach(&handle);
                }
                Ok((handle, join))
            }
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
    ///
    /// On a follower with a forwarder the batch goes to the leader (which
    /// answers once applied there), then this waits until the entry is
    /// applied locally too, so the caller reads its own write. While no
    /// leader is known (an election) it retries for up to 5 s. Without a
    /// forwarder a follower answers [`ProposeError::NotLeader`].
    pub async fn propose(&self, batch: StoreBatch) -> Result<u64, ProposeError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let r = self.propose_local(batch.clone()).await;
            let Some(f) = &self.forwarder else {
                return r;
            };
            match r {
                Err(ProposeError::NotLeader {
                    leader_id: Some(leader),
                    ..
                }) => match f.forward(leader, batch.clone()).await {
                    Ok(index) => {
                        self.wait_applied(index, LEADER_WAIT).await;
                        return Ok(index);
                    }
                    // The leader changed (or is unreachable): ask again.
                    Err(ProposeError::NotLeader { .. } | ProposeError::Dropped(_))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                },
                Err(ProposeError::NotLeader {
                    leader_id: None, ..
                }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r => return r,
            }
        }
    }

    /// Proposes on this node only: [`ProposeError::NotLeader`] on a
    /// follower (what a leader serving a forwarded proposal uses).
    pub async fn propose_local(&self, batch: StoreBatch) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Propose { batch, reply })
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Waits until the local store applied `index` (or `limit` passes);
    /// returns whether it did.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> bool {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.read(|s| s.applied_index()) >= index {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            // Raft's own entries are not broadcast: wake up now and then.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), rx.recv()).await;
        }
    }

    /// Linearizable read barrier (Raft's ReadIndex): returns once this
    /// node's store has applied everything committed cluster-wide when the
    /// call was made, so a [`StoreHandle::read`] after it sees every write
    /// acknowledged before it. Works on followers (raft-rs asks the leader).
    pub async fn read_index(&self) -> Result<u64, MembershipError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::ReadIndex(tx))
            .map_err(|_| ProposeError::Stopped)?;
        let index = match tokio::time::timeout(READ_INDEX_WAIT, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(ProposeError::Stopped.into()),
            Err(_) => return Err(MembershipError::ReadTimeout(READ_INDEX_WAIT)),
        };
        if !self.wait_applied(index, READ_INDEX_WAIT).await {
            return Err(MembershipError::ReadTimeout(READ_INDEX_WAIT));
        }
        Ok(index)
    }

    /// [`StoreHandle::read_index`] then [`StoreHandle::read`].
    pub async fn linearizable_read<R>(
        &self,
        f: impl FnOnce(&Store) -> R,
    ) -> Result<R, MembershipError> {
        self.read_index().await?;
        Ok(self.read(f))
    }

    async fn conf_change(&self, cc: ::raft::prelude::ConfChangeV2) -> Result<u64, MembershipError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::ConfChange { cc, reply })
            .map_err(|_| ProposeError::Stopped)?;
        match rx.await.map_err(|_| ProposeError::Stopped)? {
            Ok(i) => Ok(i),
            Err(ProposeError::Dropped(m)) => Err(MembershipError::Refused(m)),
            Err(e) => Err(e.into()),
        }
    }

    fn single_change(
        id: u64,
        kind: ::raft::prelude::ConfChangeType,
        addr: Option<&str>,
    ) -> ::raft::prelude::ConfChangeV2 {
        let mut single = ::raft::prelude::ConfChangeSingle {
            node_id: id,
            ..Default::default()
        };
        single.set_change_type(kind);
        let mut cc = ::raft::prelude::ConfChangeV2::default();
        cc.mut_changes().push(single);
        // The context carries the member's address to every manager.
        cc.context = addr.unwrap_or_default().as_bytes().to_vec().into();
        cc
    }

    /// Leader only: adds `id` (reachable at `addr`) as a learner. Resolves
    /// once applied. The leader snapshots and compacts right when it
    /// applies the change (in the same Ready, before any message reaches
    /// the new member), so the member starts from a snapshot that carries
    /// the configuration including itself — the log's first entries do
    /// not carry the bootstrap configuration.
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<u64, MembershipError> {
        self.conf_change(Self::single_change(
            id,
            ::raft::prelude::ConfChangeType::AddLearnerNode,
            Some(addr),
        ))
        .await
    }

    /// Leader only: makes learner (or new node) `id` a voter.
    pub async fn promote(&self, id: u64, addr: &str) -> Result<u64, MembershipError> {
        self.conf_change(Self::single_change(
            id,
            ::raft::prelude::ConfChangeType::AddNode,
            Some(addr),
        ))
        .await
    }

    /// Leader only: removes `id` from the configuration.
    pub async fn remove_member(&self, id: u64) -> Result<u64, MembershipError> {
        self.conf_change(Self::single_change(
            id,
            ::raft::prelude::ConfChangeType::RemoveNode,
            None,
        ))
        .await
    }

    /// Leader only: the safe way to add a voter: as a learner first, then,
    /// once it has replicated up to the leader's commit index, promoted.
    /// `limit` bounds the wait for catching up.
    pub async fn add_voter(
        &self,
        id: u64,
        addr: &str,
        limit: Duration,
    ) -> Result<u64, MembershipError> {
        let is_member = {
            let st = self.status();
            (st.voters.contains(&id), st.learners.contains(&id))
        };
        match is_member {
            (true, _) => return Ok(self.status().applied),
            (false, false) => {
                self.add_learner(id, addr).await?;
            }
            (false, true) => {}
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (tx, rx) = oneshot::channel();
            self.cmds
                .send(Cmd::Progress(id, tx))
                .map_err(|_| ProposeError::Stopped)?;
            match rx.await.map_err(|_| ProposeError::Stopped)? {
                Some((matched, commit)) if matched >= commit => break,
                None if !self.is_leader() => {
                    return Err(ProposeError::NotLeader {
                        raft_id: self.raft_id(),
                        leader_id: Some(self.status().leader_id).filter(|l| *l != 0),
                    }
                    .into())
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(MembershipError::NotCaughtUp {
                    raft_id: id,
                    waited: limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.promote(id, addr).await
    }

    /// The known addresses of the other managers (raft id → `host:port`).
    pub fn peers(&self) -> BTreeMap<u64, String> {
        self.shared
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records addresses (e.g. from a join answer, or this node's own
    /// advertised address); persisted and handed to the transport.
    pub fn set_peers(&self, peers: BTreeMap<u64, String>) -> Result<(), RaftError> {
        self.cmds
            .send(Cmd::SetPeers(peers))
            .map_err(|_| RaftError::Stopped)
    }

    /// The leader's address if known.
    pub fn leader_addr(&self) -> Option<String> {
        let leader = self.status().leader_id;
        (leader != 0).then(|| self.peers().get(&leader).cloned())?
    }

    /// A handle that does not keep the node running.
    pub fn downgrade(&self) -> WeakStoreHandle {
        WeakStoreHandle {
            raft_id: self.shared.raft_id,
            cmds: Arc::downgrade(&self.cmds),
        }
    }

    /// Tells raft-rs whether a snapshot sent to `to` arrived (the
    /// transport calls this).
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.cmds.send(Cmd::ReportSnapshot { to, ok });
    }

    /// Tells raft-rs that `to` could not be reached (the transport calls
    /// this), so the leader probes it instead of streaming.
    pub fn report_unreachable(&self, to: u64) {
        let _ = self.cmds.send(Cmd::ReportUnreachable(to));
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
