//! The driver loop: owns the raft-rs `RawNode` over [`RedbStorage`], feeds
//! it ticks, peer messages and proposals, and handles each `Ready` in the
//! order raft-rs requires: send leader messages, install a snapshot, apply
//! committed entries, persist new entries and hard state, then send the
//! persisted messages, advance, apply what became committed.
//!
//! Applying an entry is the only place the [`Store`] changes. This loop must
//! never apply an entry before it is committed, never send a message that
//! depends on unpersisted state, and never keep going after a storage error
//! (raft-rs's contract: the node becomes inoperable).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use ::raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, Config, Entry, EntryType, Message, RawNode, Snapshot,
};
use ::raft::{SnapshotStatus, StateRole, Storage};
use flotilla_proto::v1::{StoreBatch, StoreSnapshot};
use prost::Message as _;
use protobuf::Message as PbMessage;
use tokio::sync::{broadcast, oneshot};

use super::storage::RedbStorage;
use super::{Applied, Cmd, ProposeError, ProposeReply, RaftConfig, RaftError, RaftStatus};
use super::{RaftTransport, Shared};
use crate::store::{ApplyError, Store};

/// How many applied entries the broadcast channel buffers per subscriber.
const EVENTS_CAPACITY: usize = 4096;

type ReadyTx = oneshot::Sender<Result<Arc<Shared>, RaftError>>;

struct Node {
    raw: RawNode<RedbStorage>,
    shared: Arc<Shared>,
    transport: Option<Arc<dyn RaftTransport>>,
    snapshot_every: u64,
    /// Random per start, so a context from an earlier run never matches a
    /// proposal of this one.
    incarnation: u64,
    next_seq: u64,
    pending: HashMap<u64, ProposeReply>,
    /// ReadIndex requests waiting for their read state, by context.
    reads: HashMap<u64, oneshot::Sender<Result<u64, ProposeError>>>,
    /// Answers held until the status is published, so a caller that got
    /// its answer sees a status at least as new.
    outbox: Vec<Answer>,
    was_leader: bool,
    /// A member was added: snapshot before the next message goes out.
    snapshot_for_new_member: bool,
}

enum Answer {
    Propose(ProposeReply, Result<u64, ProposeError>),
    Snapshot(
        oneshot::Sender<Result<u64, RaftError>>,
        Result<u64, RaftError>,
    ),
}

/// Entry point of the blocking task. Reports start-up (after replay) on
/// `ready`, then loops until shut down or all handles are gone.
pub(crate) fn run(
    cfg: RaftConfig,
    transport: Option<Arc<dyn RaftTransport>>,
    bootstrap: bool,
    cmds: Receiver<Cmd>,
    ready: ReadyTx,
) {
    let node = match Node::open(&cfg, transport, bootstrap) {
        Ok(n) => n,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let shutdown_ack = node.drive(&cfg, cmds, ready);
    // `node` (and with it the redb file) is dropped inside `drive` before
    // the acknowledgement, so a restart can reopen the file at once.
    if let Some(ack) = shutdown_ack {
        let _ = ack.send(());
    }
}

fn raft_err(what: &'static str) -> impl FnOnce(::raft::Error) -> RaftError {
    move |source| RaftError::Raft { what, source }
}

impl Node {
    fn open(
        cfg: &RaftConfig,
        transport: Option<Arc<dyn RaftTransport>>,
        bootstrap: bool,
    ) -> Result<Self, RaftError> {
        let storage = RedbStorage::open(&cfg.state_dir, bootstrap)?;
        let peers = storage.peers()?;
        if let Some(t) = &transport {
            for (id, addr) in &peers {
                t.set_peer(*id, Some(addr));
            }
        }
        let raft_id = storage.raft_id();
        let snap = storage.load_snapshot()?;
        let snap_index = snap.get_metadata().index;
        let store = if snap_index > 0 {
            let decoded =
                StoreSnapshot::decode(snap.data.as_ref()).map_err(|e| RaftError::Corrupt {
                    path: storage.path().to_path_buf(),
                    what: "store snapshot",
                    message: e.to_string(),
                })?;
            Store::restore_at(decoded, snap_index).map_err(|source| RaftError::Store {
                path: storage.path().to_path_buf(),
                source,
            })?
        } else {
            Store::new()
        };
        let single_voter = {
            let cs = storage.conf_state();
            cs.voters == [raft_id] && cs.learners.is_empty()
        };
        let config = Config {
            id: raft_id,
            election_tick: 10,
            heartbeat_tick: 3,
            applied: snap_index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = super::logger::logger(raft_id);
        let mut raw =
            RawNode::new(&config, storage, &logger).map_err(raft_err("creating the node"))?;
        if single_voter {
            // Alone in the cluster: no reason to wait out an election timeout.
            raw.campaign().map_err(raft_err("campaigning"))?;
        }
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let shared = Arc::new(Shared {
            raft_id,
            store: RwLock::new(store),
            status: Mutex::new(RaftStatus::default()),
            leader: Default::default(),
            events,
            peers: Mutex::new(peers),
        });
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        Ok(Node {
            raw,
            shared,
            transport,
            snapshot_every: cfg.snapshot_every,
            incarnation: hi ^ lo,
            next_seq: 1,
            pending: HashMap::new(),
            reads: HashMap::new(),
            outbox: Vec::new(),
            was_leader: false,
            snapshot_for_new_member: false,
        })
    }

    /// The loop. Returns the shutdown acknowledgement to send once the node
    /// is dropped.
    fn drive(
        mut self,
        cfg: &RaftConfig,
        cmds: Receiver<Cmd>,
        ready: ReadyTx,
    ) -> Option<oneshot::Sender<()>> {
        let replay_target = self.raw.store().hard_state().commit;
        let mut ready = Some(ready);
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        let mut stop = false;
        let mut next_tick = Instant::now() + cfg.tick;
        while !stop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            match cmds.recv_timeout(timeout) {
                Ok(cmd) => stop |= self.handle(cmd, &mut shutdown),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            // Everything that queued meanwhile goes into the same Ready.
            while let Ok(cmd) = cmds.try_recv() {
                stop |= self.handle(cmd, &mut shutdown);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = now + cfg.tick;
            }
            if let Err(e) = self.on_ready() {
                tracing::error!(raft_id = self.shared.raft_id, "raft loop stops: {e}");
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                }
                break;
            }
            self.publish_status();
            self.flush_answers();
            if self.applied() >= replay_target {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(self.shared.clone()));
                }
            }
        }
        self.shared.leader.store(false, Ordering::Release);
        self.publish_status();
        self.flush_answers();
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
        for (_, reply) in self.reads.drain() {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
        drop(self);
        shutdown
    }

    fn flush_answers(&mut self) {
        for answer in self.outbox.drain(..) {
            match answer {
                Answer::Propose(reply, r) => {
                    let _ = reply.send(r);
                }
                Answer::Snapshot(reply, r) => {
                    let _ = reply.send(r);
                }
            }
        }
    }

    fn applied(&self) -> u64 {
        self.shared
            .store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .applied_index()
    }

    /// Returns true when the loop should stop.
    fn handle(&mut self, cmd: Cmd, shutdown: &mut Option<oneshot::Sender<()>>) -> bool {
        match cmd {
            Cmd::Propose { batch, reply } => self.propose(batch, reply),
            Cmd::ConfChange { cc, reply } => self.propose_conf_change(cc, reply),
            Cmd::ReadIndex(reply) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.reads.insert(seq, reply);
                self.raw.read_index(self.context(seq));
            }
            Cmd::Progress(id, reply) => {
                let p = if self.raw.raft.state == StateRole::Leader {
                    self.raw
                        .raft
                        .prs()
                        .get(id)
                        .map(|pr| (pr.matched, self.raw.raft.raft_log.committed))
                } else {
                    None
                };
                let _ = reply.send(p);
            }
            Cmd::SetPeers(peers) => self.set_peers(peers),
            Cmd::ReportSnapshot { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Cmd::ReportUnreachable(to) => self.raw.report_unreachable(to),
            Cmd::Step(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(
                        raft_id = self.shared.raft_id,
                        "dropping a peer message: {e}"
                    );
                }
            }
            Cmd::SnapshotNow(reply) => {
                let r = self.take_snapshot();
                self.outbox.push(Answer::Snapshot(reply, r));
            }
            Cmd::Shutdown(ack) => {
                *shutdown = Some(ack);
                return true;
            }
        }
        false
    }

    fn propose(&mut self, batch: StoreBatch, reply: ProposeReply) {
        if self.raw.raft.state != StateRole::Leader {
            let leader = self.raw.raft.leader_id;
            let _ = reply.send(Err(ProposeError::NotLeader {
                raft_id: self.shared.raft_id,
                leader_id: (leader != 0).then_some(leader),
            }));
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let context = self.context(seq);
        match self.raw.propose(context, batch.encode_to_vec()) {
            Ok(()) => {
                self.pending.insert(seq, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Dropped(e.to_string())));
            }
        }
    }

    /// Context of a proposal or read: this run's incarnation and a
    /// sequence number.
    fn context(&self, seq: u64) -> Vec<u8> {
        let mut context = Vec::with_capacity(16);
        context.extend_from_slice(&self.incarnation.to_be_bytes());
        context.extend_from_slice(&seq.to_be_bytes());
        context
    }

    fn propose_conf_change(&mut self, cc: ConfChangeV2, reply: ProposeReply) {
        if self.raw.raft.state != StateRole::Leader {
            let leader = self.raw.raft.leader_id;
            let _ = reply.send(Err(ProposeError::NotLeader {
                raft_id: self.shared.raft_id,
                leader_id: (leader != 0).then_some(leader),
            }));
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        // The entry's context identifies the proposal; the address rides
        // in the conf change's own context.
        match self.raw.propose_conf_change(self.context(seq), cc) {
            Ok(()) => {
                self.pending.insert(seq, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Dropped(e.to_string())));
            }
        }
    }

    fn set_peers(&mut self, new: BTreeMap<u64, String>) {
        let mut peers = self
            .shared
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (id, addr) in new {
            if let Some(t) = &self.transport {
                t.set_peer(id, Some(&addr));
            }
            peers.insert(id, addr);
        }
        self.store_peers(peers);
    }

    fn store_peers(&mut self, peers: BTreeMap<u64, String>) {
        if let Err(e) = self.raw.mut_store().set_peers(&peers) {
            tracing::error!(
                raft_id = self.shared.raft_id,
                "persisting peer addresses: {e}"
            );
        }
        *self.shared.peers.lock().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let Some(t) = &self.transport else {
                tracing::trace!(to = m.to, "no transport; dropping a raft message");
                continue;
            };
            match m.write_to_bytes() {
                Ok(bytes) if m.get_msg_type() == ::raft::prelude::MessageType::MsgSnapshot => {
                    t.send_snapshot(m.to, bytes)
                }
                Ok(bytes) => t.send(m.to, bytes),
                Err(e) => tracing::error!(to = m.to, "encoding a raft message: {e}"),
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), RaftError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            let is_leader = ss.raft_state == StateRole::Leader;
            self.on_role(is_leader);
        }
        // A leader may send these before persisting (raft-rs's contract).
        self.send(ready.take_messages());
        for rs in ready.take_read_states() {
            if let Some((_, seq)) = split_context(rs.request_ctx.as_ref()) {
                if let Some(reply) = self.reads.remove(&seq) {
                    let _ = reply.send(Ok(rs.index));
                }
            }
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed)?;
        let hs = ready.hs().cloned();
        self.raw.mut_store().append(ready.entries(), hs.as_ref())?;
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_snapshot()?;
        Ok(())
    }

    fn on_role(&mut self, is_leader: bool) {
        self.shared.leader.store(is_leader, Ordering::Release);
        if self.was_leader && !is_leader {
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(ProposeError::LeadershipLost));
            }
        }
        self.was_leader = is_leader;
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), RaftError> {
        let index = snap.get_metadata().index;
        let path = self.raw.store().path().to_path_buf();
        let decoded =
            StoreSnapshot::decode(snap.data.as_ref()).map_err(|e| RaftError::Corrupt {
                path: path.clone(),
                what: "store snapshot from the leader",
                message: e.to_string(),
            })?;
        let store = Store::restore_at(decoded, index)
            .map_err(|source| RaftError::Store { path, source })?;
        self.raw.mut_store().apply_snapshot(snap)?;
        *self.shared.store.write().unwrap_or_else(|p| p.into_inner()) = store;
        let _ = self.shared.events.send(Arc::new(Applied {
            index,
            events: Vec::new(),
            restored: true,
        }));
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&entry),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)?
                }
            }
        }
        Ok(())
    }

    fn apply_normal(&mut self, entry: &Entry) {
        let index = entry.index;
        let result = {
            let mut store = self.shared.store.write().unwrap_or_else(|p| p.into_inner());
            if index <= store.applied_index() {
                // Already in the store (restored from a newer snapshot).
                return;
            }
            if entry.data.is_empty() {
                // The empty entry a new leader appends.
                let _ = store.skip(index);
                return;
            }
            match StoreBatch::decode(entry.data.as_ref()) {
                Ok(batch) => store.apply(index, &batch),
                Err(e) => {
                    let _ = store.skip(index);
                    Err(ApplyError::Undecodable {
                        index,
                        message: e.to_string(),
                    })
                }
            }
        };
        let reply = self.take_reply(entry.context.as_ref());
        match result {
            Ok(events) => {
                let _ = self.shared.events.send(Arc::new(Applied {
                    index,
                    events,
                    restored: false,
                }));
                if let Some(r) = reply {
                    self.outbox.push(Answer::Propose(r, Ok(index)));
                }
            }
            Err(e) => {
                tracing::debug!(index, "batch refused: {e}");
                if let Some(r) = reply {
                    self.outbox
                        .push(Answer::Propose(r, Err(ProposeError::Refused(e))));
                }
            }
        }
    }

    fn take_reply(&mut self, context: &[u8]) -> Option<ProposeReply> {
        let (inc, seq) = split_context(context)?;
        if inc != self.incarnation {
            return None;
        }
        self.pending.remove(&seq)
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), RaftError> {
        let index = entry.index;
        {
            let mut store = self.shared.store.write().unwrap_or_else(|p| p.into_inner());
            if index <= store.applied_index() {
                return Ok(());
            }
            let _ = store.skip(index);
        }
        if entry.data.is_empty() {
            return Ok(());
        }
        let path = self.raw.store().path().to_path_buf();
        let corrupt = |e: protobuf::ProtobufError| RaftError::Corrupt {
            path: path.clone(),
            what: "conf change entry",
            message: e.to_string(),
        };
        let (cs, changes) = if entry.get_entry_type() == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(entry.data.as_ref()).map_err(corrupt)?;
            let change = (cc.node_id, cc.get_change_type(), cc.context.to_vec());
            (self.raw.apply_conf_change(&cc), vec![change])
        } else {
            let cc = ConfChangeV2::parse_from_bytes(entry.data.as_ref()).map_err(corrupt)?;
            let changes = cc
                .get_changes()
                .iter()
                .map(|c| (c.node_id, c.get_change_type(), cc.context.to_vec()))
                .collect();
            (self.raw.apply_conf_change(&cc), changes)
        };
        let reply = self.take_reply(entry.context.as_ref());
        match cs {
            Ok(cs) => {
                let old = self.raw.store().conf_state();
                let added = cs
                    .voters
                    .iter()
                    .chain(&cs.learners)
                    .any(|id| !old.voters.contains(id) && !old.learners.contains(id));
                if added && self.raw.raft.state == StateRole::Leader {
                    self.snapshot_for_new_member = true;
                }
                self.raw.mut_store().set_conf_state(cs)?;
                self.learn_addresses(changes);
                if let Some(r) = reply {
                    self.outbox.push(Answer::Propose(r, Ok(index)));
                }
            }
            // An invalid change is refused identically on every node.
            Err(e) => {
                tracing::warn!(index, "conf change refused: {e}");
                if let Some(r) = reply {
                    self.outbox.push(Answer::Propose(
                        r,
                        Err(ProposeError::Dropped(e.to_string())),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Records the addresses conf changes carry (and forgets removed
    /// members), so every manager can reach every other.
    fn learn_addresses(&mut self, changes: Vec<(u64, ConfChangeType, Vec<u8>)>) {
        let mut peers = self
            .shared
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (id, kind, ctx) in changes {
            match kind {
                ConfChangeType::RemoveNode => {
                    peers.remove(&id);
                    if let Some(t) = &self.transport {
                        t.set_peer(id, None);
                    }
                }
                _ => {
                    let Ok(addr) = String::from_utf8(ctx) else {
                        continue;
                    };
                    if addr.is_empty() {
                        continue;
                    }
                    if let Some(t) = &self.transport {
                        t.set_peer(id, Some(&addr));
                    }
                    peers.insert(id, addr);
                }
            }
        }
        self.store_peers(peers);
    }

    fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        let last = self.raw.store().snapshot_metadata().index;
        let due = self.snapshot_every > 0 && self.applied() >= last + self.snapshot_every;
        let for_member = std::mem::take(&mut self.snapshot_for_new_member);
        if due || for_member || self.raw.store().take_snapshot_request() {
            self.take_snapshot()?;
        }
        Ok(())
    }

    /// Snapshots the store at its applied index and compacts the log up to
    /// it. Returns the index of the (possibly unchanged) latest snapshot.
    fn take_snapshot(&mut self) -> Result<u64, RaftError> {
        let (applied, data) = {
            let store = self.shared.store.read().unwrap_or_else(|p| p.into_inner());
            let applied = store.applied_index();
            if applied <= self.raw.store().snapshot_metadata().index {
                return Ok(self.raw.store().snapshot_metadata().index);
            }
            (applied, store.snapshot().encode_to_vec())
        };
        let term = self
            .raw
            .store()
            .term(applied)
            .map_err(raft_err("reading the term of the snapshot index"))?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        {
            let meta = snap.mut_metadata();
            meta.index = applied;
            meta.term = term;
            meta.set_conf_state(self.raw.store().conf_state().clone());
        }
        self.raw.mut_store().compact_to(&snap)?;
        tracing::debug!(
            raft_id = self.shared.raft_id,
            index = applied,
            "snapshot taken, log compacted"
        );
        Ok(applied)
    }

    fn publish_status(&self) {
        let store = self.raw.store();
        let status = RaftStatus {
            raft_id: self.shared.raft_id,
            leader_id: self.raw.raft.leader_id,
            is_leader: self.raw.raft.state == StateRole::Leader,
            term: self.raw.raft.term,
            applied: self.applied(),
            commit: self.raw.raft.raft_log.committed,
            last_snapshot_index: store.snapshot_metadata().index,
            first_log_index: store.first_log_index(),
            last_log_index: store.last_log_index(),
            voters: store.conf_state().voters.clone(),
            learners: store.conf_state().learners.clone(),
        };
        *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}

/// (incarnation, sequence) of a proposal or read context.
fn split_context(context: &[u8]) -> Option<(u64, u64)> {
    let (inc, seq) = context.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(inc.try_into().ok()?),
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}
