//! Durable Raft storage in one redb file, `<state_dir>/raft.redb`: the log,
//! the hard state, the configuration state, the latest snapshot, the node's
//! stable Raft id and the format version of what is stored.
//!
//! On-disk layout (all integers little-endian, raft types as rust-protobuf 2
//! encodings of `eraftpb` messages, the store as prost encoding):
//! - table `meta` (`&str` → bytes):
//!   - `format`: u32, the [`STATE_FORMAT`] of the binary that wrote the file;
//!   - `raft_id`: u64, generated once (random, non-zero);
//!   - `hard_state`: `eraftpb::HardState`;
//!   - `conf_state`: `eraftpb::ConfState`;
//!   - `snapshot`: `eraftpb::Snapshot` whose `data` is a
//!     `flotilla.v1.StoreSnapshot` (absent until the first snapshot);
//! - table `entries` (u64 index → `eraftpb::Entry`): the log after the
//!   snapshot; entries up to the snapshot's index are deleted.
//!
//! Every mutation is one redb write transaction committed with immediate
//! durability before the caller goes on (raft-rs's Ready contract: persist
//! before sending the persisted messages or applying). This module must never
//! decide anything about Raft itself: it stores what raft-rs hands it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ::raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use ::raft::{GetEntriesContext, RaftState, Storage, StorageError};
use protobuf::Message as PbMessage;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::RaftError;
use crate::store::STORE_FORMAT;

/// File name of the Raft database inside the state directory.
pub const RAFT_FILE: &str = "raft.redb";
/// Format of the stored state (layout of this file and of the store inside
/// it). One number for both, so one check refuses any newer state.
pub const STATE_FORMAT: u32 = STORE_FORMAT;

/// The `meta` table: `&str` keys, encoded values.
pub const META_TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("meta");
/// The `entries` table: Raft index → encoded `eraftpb::Entry`.
pub const ENTRIES_TABLE: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("entries");

pub const KEY_FORMAT: &str = "format";
pub const KEY_RAFT_ID: &str = "raft_id";
pub const KEY_HARD_STATE: &str = "hard_state";
pub const KEY_CONF_STATE: &str = "conf_state";
pub const KEY_SNAPSHOT: &str = "snapshot";
/// Addresses of the other managers: JSON object, raft id (decimal string)
/// → `host:port`. Learned from conf changes and from the join answer.
pub const KEY_PEERS: &str = "peers";

/// raft-rs storage over redb. The small parts (hard state, conf state,
/// snapshot metadata, first/last index) are cached in memory; entries and
/// snapshot data are read from the file.
pub struct RedbStorage {
    db: Database,
    path: PathBuf,
    raft_id: u64,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    /// Index of the last entry in the log, or the snapshot's index when the
    /// log after it is empty.
    last_index: u64,
    /// Set when raft-rs asked for a snapshot newer than the stored one (a
    /// follower needs it); the driver then takes one.
    snapshot_wanted: AtomicBool,
}

impl std::fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStorage")
            .field("path", &self.path)
            .field("raft_id", &self.raft_id)
            .field("snapshot_index", &self.snapshot_meta.index)
            .field("last_index", &self.last_index)
            .finish()
    }
}

fn encode<M: PbMessage>(m: &M, what: &'static str, path: &Path) -> Result<Vec<u8>, RaftError> {
    m.write_to_bytes().map_err(|e| RaftError::Corrupt {
        path: path.to_path_buf(),
        what,
        message: e.to_string(),
    })
}

fn decode<M: PbMessage>(bytes: &[u8], what: &'static str, path: &Path) -> Result<M, RaftError> {
    M::parse_from_bytes(bytes).map_err(|e| RaftError::Corrupt {
        path: path.to_path_buf(),
        what,
        message: e.to_string(),
    })
}

fn new_raft_id() -> u64 {
    loop {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let id = hi ^ lo;
        if id != 0 {
            return id;
        }
    }
}

impl RedbStorage {
    /// Opens (creating if needed) `<state_dir>/raft.redb`. On first open
    /// generates the Raft id and, if `bootstrap`, makes this node the only
    /// voter of a new cluster. Refuses a file written by a newer format.
    pub fn open(state_dir: &Path, bootstrap: bool) -> Result<Self, RaftError> {
        std::fs::create_dir_all(state_dir).map_err(|source| RaftError::CreateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(RAFT_FILE);
        let db = Database::create(&path).map_err(|e| RaftError::redb("opening", &path, e))?;
        let p = path.as_path();
        let txn = db
            .begin_write()
            .map_err(|e| RaftError::redb("starting the open transaction", p, e))?;
        let (raft_id, hard_state, conf_state, snapshot_meta, last_entry) = {
            let mut meta = txn
                .open_table(META_TABLE)
                .map_err(|e| RaftError::redb("opening table meta", p, e))?;
            let entries = txn
                .open_table(ENTRIES_TABLE)
                .map_err(|e| RaftError::redb("opening table entries", p, e))?;
            let format = meta
                .get(KEY_FORMAT)
                .map_err(|e| RaftError::redb("reading the format", p, e))?
                .map(|v| read_u32(v.value(), "format", p))
                .transpose()?;
            match format {
                Some(found) if found > STATE_FORMAT => {
                    return Err(RaftError::TooNew {
                        path: path.clone(),
                        found,
                        supported: STATE_FORMAT,
                    })
                }
                Some(found) if found == STATE_FORMAT => {}
                // Older (or a file from before the key existed): nothing in
                // the layout changed yet, so migrating is rewriting the key.
                _ => {
                    meta.insert(KEY_FORMAT, STATE_FORMAT.to_le_bytes().as_slice())
                        .map_err(|e| RaftError::redb("writing the format", p, e))?;
                }
            }
            let stored_id = meta
                .get(KEY_RAFT_ID)
                .map_err(|e| RaftError::redb("reading the raft id", p, e))?
                .map(|v| read_u64(v.value(), "raft_id", p))
                .transpose()?;
            let raft_id = match stored_id {
                Some(id) => id,
                None => {
                    let id = new_raft_id();
                    meta.insert(KEY_RAFT_ID, id.to_le_bytes().as_slice())
                        .map_err(|e| RaftError::redb("writing the raft id", p, e))?;
                    id
                }
            };
            let hard_state: HardState = match meta
                .get(KEY_HARD_STATE)
                .map_err(|e| RaftError::redb("reading the hard state", p, e))?
            {
                Some(v) => decode(v.value(), "hard_state", p)?,
                None => HardState::default(),
            };
            let stored_cs: Option<ConfState> = meta
                .get(KEY_CONF_STATE)
                .map_err(|e| RaftError::redb("reading the conf state", p, e))?
                .map(|v| decode(v.value(), "conf_state", p))
                .transpose()?;
            let conf_state = match stored_cs {
                Some(cs) => cs,
                None if bootstrap => {
                    let cs = ConfState {
                        voters: vec![raft_id],
                        ..Default::default()
                    };
                    let bytes = encode(&cs, "conf_state", p)?;
                    meta.insert(KEY_CONF_STATE, bytes.as_slice())
                        .map_err(|e| RaftError::redb("writing the conf state", p, e))?;
                    cs
                }
                None => ConfState::default(),
            };
            let snapshot_meta = match meta
                .get(KEY_SNAPSHOT)
                .map_err(|e| RaftError::redb("reading the snapshot", p, e))?
            {
                Some(v) => {
                    let mut s: Snapshot = decode(v.value(), "snapshot", p)?;
                    s.take_metadata()
                }
                None => SnapshotMetadata::default(),
            };
            let last_entry = entries
                .last()
                .map_err(|e| RaftError::redb("reading the last log entry", p, e))?
                .map(|(k, _)| k.value());
            (raft_id, hard_state, conf_state, snapshot_meta, last_entry)
        };
        txn.commit()
            .map_err(|e| RaftError::redb("committing the open transaction", p, e))?;
        let last_index = last_entry.unwrap_or(0).max(snapshot_meta.index);
        Ok(Self {
            db,
            path,
            raft_id,
            hard_state,
            conf_state,
            snapshot_meta,
            last_index,
            snapshot_wanted: AtomicBool::new(false),
        })
    }

    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot_meta
    }
    /// First index still in the log (snapshot index + 1).
    pub fn first_log_index(&self) -> u64 {
        self.snapshot_meta.index + 1
    }
    pub fn last_log_index(&self) -> u64 {
        self.last_index
    }

    /// Reads the full stored snapshot (metadata and store data); an empty
    /// snapshot when none was taken yet.
    pub fn load_snapshot(&self) -> Result<Snapshot, RaftError> {
        let p = self.path.as_path();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| RaftError::redb("starting a read transaction", p, e))?;
        let meta = txn
            .open_table(META_TABLE)
            .map_err(|e| RaftError::redb("opening table meta", p, e))?;
        match meta
            .get(KEY_SNAPSHOT)
            .map_err(|e| RaftError::redb("reading the snapshot", p, e))?
        {
            Some(v) => decode(v.value(), "snapshot", p),
            None => Ok(Snapshot::default()),
        }
    }

    /// Persists a Ready's new entries (replacing any conflicting suffix) and
    /// hard state in one transaction.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), RaftError> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let p = self.path.clone();
        let p = p.as_path();
        if let Some(first) = entries.first() {
            if first.index <= self.snapshot_meta.index {
                return Err(RaftError::Corrupt {
                    path: p.to_path_buf(),
                    what: "append",
                    message: format!(
                        "entry {} would overwrite the snapshot at {}",
                        first.index, self.snapshot_meta.index
                    ),
                });
            }
            if first.index > self.last_index + 1 {
                return Err(RaftError::Corrupt {
                    path: p.to_path_buf(),
                    what: "append",
                    message: format!(
                        "entry {} leaves a gap after the last entry {}",
                        first.index, self.last_index
                    ),
                });
            }
        }
        let txn = self
            .db
            .begin_write()
            .map_err(|e| RaftError::redb("starting the append transaction", p, e))?;
        {
            if let Some(first) = entries.first() {
                let mut t = txn
                    .open_table(ENTRIES_TABLE)
                    .map_err(|e| RaftError::redb("opening table entries", p, e))?;
                // A new leader may overwrite an uncommitted suffix.
                t.retain_in(first.index.., |_, _| false)
                    .map_err(|e| RaftError::redb("truncating the log", p, e))?;
                for e in entries {
                    let bytes = encode(e, "entry", p)?;
                    t.insert(e.index, bytes.as_slice())
                        .map_err(|err| RaftError::redb("appending an entry", p, err))?;
                }
            }
            if let Some(hs) = hs {
                let mut meta = txn
                    .open_table(META_TABLE)
                    .map_err(|e| RaftError::redb("opening table meta", p, e))?;
                let bytes = encode(hs, "hard_state", p)?;
                meta.insert(KEY_HARD_STATE, bytes.as_slice())
                    .map_err(|e| RaftError::redb("writing the hard state", p, e))?;
            }
        }
        txn.commit()
            .map_err(|e| RaftError::redb("committing appended entries", p, e))?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Persists a new commit index (from a LightReady).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), RaftError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.put_meta(KEY_HARD_STATE, &hs, "writing the commit index")?;
        self.hard_state = hs;
        Ok(())
    }

    /// Persists the configuration after a conf change was applied.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), RaftError> {
        self.put_meta(KEY_CONF_STATE, &cs, "writing the conf state")?;
        self.conf_state = cs;
        Ok(())
    }

    /// The stored peer addresses (raft id → `host:port`).
    pub fn peers(&self) -> Result<std::collections::BTreeMap<u64, String>, RaftError> {
        let p = self.path.as_path();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| RaftError::redb("starting a read transaction", p, e))?;
        let meta = txn
            .open_table(META_TABLE)
            .map_err(|e| RaftError::redb("opening table meta", p, e))?;
        let Some(v) = meta
            .get(KEY_PEERS)
            .map_err(|e| RaftError::redb("reading the peer addresses", p, e))?
        else {
            return Ok(Default::default());
        };
        let raw: std::collections::BTreeMap<String, String> = serde_json::from_slice(v.value())
            .map_err(|e| RaftError::Corrupt {
                path: self.path.clone(),
                what: "peer addresses",
                message: e.to_string(),
            })?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| k.parse().ok().map(|k| (k, v)))
            .collect())
    }

    /// Replaces the stored peer addresses.
    pub fn set_peers(
        &mut self,
        peers: &std::collections::BTreeMap<u64, String>,
    ) -> Result<(), RaftError> {
        let p = self.path.as_path();
        let raw: std::collections::BTreeMap<String, &String> =
            peers.iter().map(|(k, v)| (k.to_string(), v)).collect();
        let bytes = serde_json::to_vec(&raw).map_err(|e| RaftError::Corrupt {
            path: self.path.clone(),
            what: "peer addresses",
            message: e.to_string(),
        })?;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| RaftError::redb("starting a meta transaction", p, e))?;
        {
            let mut meta = txn
                .open_table(META_TABLE)
                .map_err(|e| RaftError::redb("opening table meta", p, e))?;
            meta.insert(KEY_PEERS, bytes.as_slice())
                .map_err(|e| RaftError::redb("writing the peer addresses", p, e))?;
        }
        txn.commit()
            .map_err(|e| RaftError::redb("writing the peer addresses", p, e))
    }

    fn put_meta<M: PbMessage>(
        &self,
        key: &'static str,
        m: &M,
        what: &'static str,
    ) -> Result<(), RaftError> {
        let p = self.path.as_path();
        let bytes = encode(m, key, p)?;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| RaftError::redb("starting a meta transaction", p, e))?;
        {
            let mut meta = txn
                .open_table(META_TABLE)
                .map_err(|e| RaftError::redb("opening table meta", p, e))?;
            meta.insert(key, bytes.as_slice())
                .map_err(|e| RaftError::redb(what, p, e))?;
        }
        txn.commit().map_err(|e| RaftError::redb(what, p, e))
    }

    /// Stores a snapshot of the local state taken at `snap.metadata.index`
    /// (which must be applied, hence persisted) and deletes the log up to
    /// and including that index.
    pub fn compact_to(&mut self, snap: &Snapshot) -> Result<(), RaftError> {
        let index = snap.get_metadata().index;
        if index <= self.snapshot_meta.index {
            return Ok(());
        }
        if index > self.last_index {
            return Err(RaftError::Corrupt {
                path: self.path.clone(),
                what: "compaction",
                message: format!(
                    "snapshot at {index} is past the last log entry {}",
                    self.last_index
                ),
            });
        }
        self.write_snapshot(snap, false)
    }

    /// Installs a snapshot received from the leader: replaces the whole log,
    /// the conf state and the commit index with the snapshot's.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), RaftError> {
        let meta = snap.get_metadata();
        if meta.index < self.snapshot_meta.index {
            return Err(RaftError::Corrupt {
                path: self.path.clone(),
                what: "installing a snapshot",
                message: format!(
                    "snapshot at {} is older than the stored one at {}",
                    meta.index, self.snapshot_meta.index
                ),
            });
        }
        self.write_snapshot(snap, true)
    }

    fn write_snapshot(&mut self, snap: &Snapshot, replace_log: bool) -> Result<(), RaftError> {
        let p = self.path.clone();
        let p = p.as_path();
        let meta = snap.get_metadata().clone();
        let mut hs = self.hard_state.clone();
        if replace_log {
            hs.term = hs.term.max(meta.term);
            hs.commit = meta.index;
        } else {
            hs.commit = hs.commit.max(meta.index);
        }
        let cs = if replace_log {
            meta.get_conf_state().clone()
        } else {
            self.conf_state.clone()
        };
        let snap_bytes = encode(snap, "snapshot", p)?;
        let hs_bytes = encode(&hs, "hard_state", p)?;
        let cs_bytes = encode(&cs, "conf_state", p)?;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| RaftError::redb("starting the snapshot transaction", p, e))?;
        {
            let mut m = txn
                .open_table(META_TABLE)
                .map_err(|e| RaftError::redb("opening table meta", p, e))?;
            m.insert(KEY_SNAPSHOT, snap_bytes.as_slice())
                .map_err(|e| RaftError::redb("writing the snapshot", p, e))?;
            m.insert(KEY_HARD_STATE, hs_bytes.as_slice())
                .map_err(|e| RaftError::redb("writing the hard state", p, e))?;
            m.insert(KEY_CONF_STATE, cs_bytes.as_slice())
                .map_err(|e| RaftError::redb("writing the conf state", p, e))?;
            let mut t = txn
                .open_table(ENTRIES_TABLE)
                .map_err(|e| RaftError::redb("opening table entries", p, e))?;
            if replace_log {
                t.retain(|_, _| false)
                    .map_err(|e| RaftError::redb("clearing the log", p, e))?;
            } else {
                t.retain_in(..=meta.index, |_, _| false)
                    .map_err(|e| RaftError::redb("compacting the log", p, e))?;
            }
        }
        txn.commit()
            .map_err(|e| RaftError::redb("committing the snapshot", p, e))?;
        self.hard_state = hs;
        self.conf_state = cs;
        if replace_log {
            self.last_index = meta.index;
        }
        self.snapshot_meta = meta;
        Ok(())
    }

    /// Whether raft-rs asked for a newer snapshot than the stored one
    /// (resets the request).
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    /// Number of entries stored in the log table (for status and tests).
    pub fn stored_entries(&self) -> Result<u64, RaftError> {
        let p = self.path.as_path();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| RaftError::redb("starting a read transaction", p, e))?;
        let t = txn
            .open_table(ENTRIES_TABLE)
            .map_err(|e| RaftError::redb("opening table entries", p, e))?;
        t.len()
            .map_err(|e| RaftError::redb("counting log entries", p, e))
    }

    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, RaftError> {
        let p = self.path.as_path();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| RaftError::redb("starting a read transaction", p, e))?;
        let t = txn
            .open_table(ENTRIES_TABLE)
            .map_err(|e| RaftError::redb("opening table entries", p, e))?;
        let mut out = Vec::new();
        let mut size = 0u64;
        let mut size_limited = false;
        for item in t
            .range(low..high)
            .map_err(|e| RaftError::redb("reading log entries", p, e))?
        {
            let (k, v) = item.map_err(|e| RaftError::redb("reading a log entry", p, e))?;
            let bytes = v.value();
            size += bytes.len() as u64;
            // raft-rs's rule: always at least one entry, then stop before
            // the limit is exceeded.
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                size_limited = true;
                break;
            }
            let e: Entry = decode(bytes, "entry", p)?;
            let want = low + out.len() as u64;
            if e.index != k.value() || e.index != want {
                return Err(RaftError::Corrupt {
                    path: p.to_path_buf(),
                    what: "log",
                    message: format!(
                        "expected entry {want}, key {} holds entry {}",
                        k.value(),
                        e.index
                    ),
                });
            }
            out.push(e);
        }
        if size_limited {
            return Ok(out);
        }
        if (out.len() as u64) < high - low {
            return Err(RaftError::Corrupt {
                path: p.to_path_buf(),
                what: "log",
                message: format!("entries {low}..{high} requested, {} found", out.len()),
            });
        }
        Ok(out)
    }

    fn read_term(&self, idx: u64) -> Result<u64, RaftError> {
        let entries = self.read_entries(idx, idx + 1, None)?;
        Ok(entries.first().map_or(0, |e| e.term))
    }
}

fn read_u32(v: &[u8], what: &'static str, path: &Path) -> Result<u32, RaftError> {
    let arr: [u8; 4] = v.try_into().map_err(|_| RaftError::Corrupt {
        path: path.to_path_buf(),
        what,
        message: format!("expected 4 bytes, found {}", v.len()),
    })?;
    Ok(u32::from_le_bytes(arr))
}

fn read_u64(v: &[u8], what: &'static str, path: &Path) -> Result<u64, RaftError> {
    let arr: [u8; 8] = v.try_into().map_err(|_| RaftError::Corrupt {
        path: path.to_path_buf(),
        what,
        message: format!("expected 8 bytes, found {}", v.len()),
    })?;
    Ok(u64::from_le_bytes(arr))
}

fn to_raft(e: RaftError) -> ::raft::Error {
    ::raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl Storage for RedbStorage {
    fn initial_state(&self) -> ::raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> ::raft::Result<Vec<Entry>> {
        if low <= self.snapshot_meta.index {
            return Err(::raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 || low > high {
            return Err(::raft::Error::Store(StorageError::Unavailable));
        }
        if low == high {
            return Ok(Vec::new());
        }
        let max = max_size.into().filter(|m| *m != ::raft::NO_LIMIT);
        self.read_entries(low, high, max).map_err(to_raft)
    }

    fn term(&self, idx: u64) -> ::raft::Result<u64> {
        if idx == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if idx < self.snapshot_meta.index {
            return Err(::raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(::raft::Error::Store(StorageError::Unavailable));
        }
        self.read_term(idx).map_err(to_raft)
    }

    fn first_index(&self) -> ::raft::Result<u64> {
        Ok(self.first_log_index())
    }

    fn last_index(&self) -> ::raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> ::raft::Result<Snapshot> {
        let snap = self.load_snapshot().map_err(to_raft)?;
        if snap.get_metadata().index < request_index || snap.get_metadata().index == 0 {
            // The driver takes a fresh snapshot soon; raft-rs asks again.
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(::raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}
