//! The replicated store end to end: a real raft-rs node over a real redb
//! file in a temporary directory, restarted by shutting it down (or dropping
//! every handle) and starting a new one on the same directory.

use std::time::Duration;

use flotilla_manager::raft::storage::{
    ENTRIES_TABLE, KEY_FORMAT, KEY_RAFT_ID, KEY_SNAPSHOT, META_TABLE,
};
use flotilla_manager::raft::{ProposeError, RaftConfig, StoreHandle, RAFT_FILE, STATE_FORMAT};
use flotilla_manager::store::{ApplyError, STORE_FORMAT};
use flotilla_proto::v1::{
    store_action::{Kind, Object},
    Meta, Stack, StoreAction, StoreBatch, StoreSnapshot, Timestamp,
};
use prost::Message as _;
use protobuf::Message as _;
use redb::{ReadableTable, ReadableTableMetadata};

fn cfg(dir: &std::path::Path, snapshot_every: u64) -> RaftConfig {
    RaftConfig {
        state_dir: dir.to_path_buf(),
        snapshot_every,
        tick: Duration::from_millis(20),
    }
}

fn stack(id: &str, label: &str) -> Object {
    let mut meta = Meta {
        updated_at: Some(Timestamp { unix_nanos: 42 }),
        ..Default::default()
    };
    meta.labels.insert("l".into(), label.into());
    Object::Stack(Stack {
        id: id.into(),
        meta: Some(meta),
        ..Default::default()
    })
}

fn put(o: Object, expected_version: u64) -> StoreAction {
    StoreAction {
        kind: Kind::Put as i32,
        object: Some(o),
        expected_version,
    }
}

fn batch(actions: Vec<StoreAction>) -> StoreBatch {
    StoreBatch {
        actions,
        proposal_id: "test".into(),
    }
}

/// (id, version, label) of every stack.
fn stacks(h: &StoreHandle) -> Vec<(String, u64, String)> {
    h.read(|s| {
        s.stacks()
            .map(|st| {
                let m = st.meta.clone().unwrap_or_default();
                (
                    st.id.clone(),
                    m.version,
                    m.labels.get("l").cloned().unwrap_or_default(),
                )
            })
            .collect()
    })
}

async fn stop(h: StoreHandle, join: tokio::task::JoinHandle<()>) {
    h.shutdown().await;
    join.await.unwrap();
}

#[tokio::test]
async fn state_is_replayed_from_the_log_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
    assert!(h.is_leader(), "a single voter leads at once");
    let mut indexes = Vec::new();
    for (id, label) in [("a", "1"), ("b", "1"), ("a", "2")] {
        indexes.push(
            h.propose(batch(vec![put(stack(id, label), 0)]))
                .await
                .unwrap(),
        );
    }
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    let before = stacks(&h);
    assert_eq!(
        before,
        vec![
            ("a".to_string(), indexes[2], "2".to_string()),
            ("b".to_string(), indexes[1], "1".to_string()),
        ]
    );
    let applied = h.read(|s| s.applied_index());
    assert_eq!(h.status().last_snapshot_index, 0, "no snapshot was taken");

    // Restart by dropping every handle; the loop exits and frees the file.
    drop(h);
    join.await.unwrap();

    let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
    assert_eq!(stacks(&h), before, "replayed from the log");
    assert!(h.read(|s| s.applied_index()) >= applied);
    assert_eq!(h.status().last_snapshot_index, 0);
    // And the node keeps working after the replay.
    let i = h
        .propose(batch(vec![put(stack("c", "1"), 0)]))
        .await
        .unwrap();
    assert!(i > applied);
    assert_eq!(
        h.read(|s| s.stack("c").map(|s| s.id.clone())),
        Some("c".into())
    );
    stop(h, join).await;
}

#[tokio::test]
async fn state_is_replayed_from_a_snapshot_plus_later_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (h, join) = StoreHandle::start(cfg(dir.path(), 5)).await.unwrap();
    for n in 0..12 {
        h.propose(batch(vec![put(stack(&format!("s{n:02}"), "x"), 0)]))
            .await
            .unwrap();
    }
    let st = h.status();
    assert!(st.last_snapshot_index >= 5, "{st:?}");
    assert!(
        st.last_snapshot_index < st.applied,
        "some entries after the snapshot: {st:?}"
    );
    assert_eq!(
        st.first_log_index,
        st.last_snapshot_index + 1,
        "log compacted: {st:?}"
    );
    let before = stacks(&h);
    assert_eq!(before.len(), 12);
    stop(h, join).await;

    // Look at the file itself: the log starts right after the snapshot and
    // the snapshot holds the store as of its index.
    let (snap_index, snap_stacks, first_key, entries) = {
        let db = redb::Database::open(dir.path().join(RAFT_FILE)).unwrap();
        let r = db.begin_read().unwrap();
        let meta = r.open_table(META_TABLE).unwrap();
        let snap = raft::prelude::Snapshot::parse_from_bytes(
            meta.get(KEY_SNAPSHOT).unwrap().unwrap().value(),
        )
        .unwrap();
        let store = StoreSnapshot::decode(snap.data.as_ref()).unwrap();
        let log = r.open_table(ENTRIES_TABLE).unwrap();
        let first = log.first().unwrap().map(|(k, _)| k.value());
        (
            snap.get_metadata().index,
            store.stacks.len(),
            first,
            log.len().unwrap(),
        )
    };
    assert_eq!(snap_index, st.last_snapshot_index);
    assert!(snap_stacks < 12, "the snapshot predates the last writes");
    assert_eq!(
        first_key,
        Some(snap_index + 1),
        "entries up to the snapshot are gone"
    );
    assert!(entries >= 1);

    let (h, join) = StoreHandle::start(cfg(dir.path(), 5)).await.unwrap();
    assert_eq!(stacks(&h), before, "snapshot + log rebuild the same state");
    assert_eq!(h.status().last_snapshot_index, snap_index);
    stop(h, join).await;
}

#[tokio::test]
async fn snapshot_now_compacts_and_restart_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
    for n in 0..3 {
        h.propose(batch(vec![put(stack(&format!("s{n}"), "x"), 0)]))
            .await
            .unwrap();
    }
    let applied = h.read(|s| s.applied_index());
    let index = h.snapshot_now().await.unwrap();
    assert_eq!(index, applied);
    let st = h.status();
    assert_eq!(st.last_snapshot_index, applied);
    assert_eq!(st.first_log_index, applied + 1);
    let before = stacks(&h);
    stop(h, join).await;
    let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
    assert_eq!(stacks(&h), before);
    stop(h, join).await;
}

#[tokio::test]
async fn version_conflict_is_refused_and_nothing_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
    let v1 = h
        .propose(batch(vec![put(stack("a", "1"), 0)]))
        .await
        .unwrap();
    let v2 = h
        .propose(batch(vec![put(stack("a", "2"), v1)]))
        .await
        .unwrap();
    let mut sub = h.subscribe();

    let err = h
        .propose(batch(vec![
            put(stack("b", "1"), 0),
            put(stack("a", "3"), v1),
        ]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProposeError::Refused(ApplyError::VersionConflict {
            kind: "stack",
            id: "a".into(),
            expected: v1,
            actual: v2,
        })
    );
    assert_eq!(stacks(&h), vec![("a".to_string(), v2, "2".to_string())]);

    // Proposals sent together are separate entries: one conflict does not
    // refuse the others.
    let results = futures::future::join_all([
        h.propose(batch(vec![put(stack("c", "1"), 0)])),
        h.propose(batch(vec![put(stack("a", "x"), v1)])),
        h.propose(batch(vec![put(stack("a", "4"), v2)])),
    ])
    .await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(ProposeError::Refused(_))),
        "{results:?}"
    );
    let v4 = *results[2].as_ref().unwrap();
    let got = stacks(&h);
    assert_eq!(
        got,
        vec![
            ("a".to_string(), v4, "4".to_string()),
            (
                "c".to_string(),
                *results[0].as_ref().unwrap(),
                "1".to_string()
            ),
        ]
    );

    // Subscribers saw only the applied batches, in order.
    let mut seen = Vec::new();
    while let Ok(a) = sub.try_recv() {
        for e in &a.events {
            assert_eq!(e.raft_index, a.index);
            seen.push((e.id.clone(), e.action.clone()));
        }
    }
    assert_eq!(
        seen,
        vec![
            ("c".to_string(), "create".to_string()),
            ("a".to_string(), "update".to_string())
        ]
    );
    stop(h, join).await;
}

#[tokio::test]
async fn a_newer_state_format_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
    h.propose(batch(vec![put(stack("a", "1"), 0)]))
        .await
        .unwrap();
    stop(h, join).await;
    {
        let db = redb::Database::open(dir.path().join(RAFT_FILE)).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(META_TABLE)
            .unwrap()
            .insert(KEY_FORMAT, (STATE_FORMAT + 1).to_le_bytes().as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    let err = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap_err();
    let msg = err.to_string();
    let want = format!(
        "state written by a newer Flotilla (format {}), this binary reads up to {}",
        STATE_FORMAT + 1,
        STATE_FORMAT
    );
    assert!(msg.contains(&want), "{msg}");
    assert!(msg.contains(RAFT_FILE), "names the file: {msg}");
}

#[tokio::test]
async fn a_snapshot_of_a_newer_store_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
    h.propose(batch(vec![put(stack("a", "1"), 0)]))
        .await
        .unwrap();
    h.snapshot_now().await.unwrap();
    stop(h, join).await;
    {
        let db = redb::Database::open(dir.path().join(RAFT_FILE)).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut meta = w.open_table(META_TABLE).unwrap();
            let mut snap = raft::prelude::Snapshot::parse_from_bytes(
                meta.get(KEY_SNAPSHOT).unwrap().unwrap().value(),
            )
            .unwrap();
            let mut store = StoreSnapshot::decode(snap.data.as_ref()).unwrap();
            store.format = STORE_FORMAT + 1;
            snap.data = store.encode_to_vec().into();
            meta.insert(KEY_SNAPSHOT, snap.write_to_bytes().unwrap().as_slice())
                .unwrap();
        }
        w.commit().unwrap();
    }
    let err = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "state written by a newer Flotilla (format {}), this binary reads up to {}",
            STORE_FORMAT + 1,
            STORE_FORMAT
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn raft_id_is_stable_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
    let id = h.raft_id();
    assert_ne!(id, 0);
    assert_eq!(
        h.status().voters,
        vec![id],
        "bootstrapped as the only voter"
    );
    assert_eq!(h.status().leader_id, id);
    stop(h, join).await;

    let stored = {
        let db = redb::Database::open(dir.path().join(RAFT_FILE)).unwrap();
        let r = db.begin_read().unwrap();
        let meta = r.open_table(META_TABLE).unwrap();
        let v = meta.get(KEY_RAFT_ID).unwrap().unwrap();
        u64::from_le_bytes(v.value().try_into().unwrap())
    };
    assert_eq!(stored, id);

    for _ in 0..2 {
        let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
        assert_eq!(h.raft_id(), id);
        assert_eq!(h.status().voters, vec![id]);
        stop(h, join).await;
    }

    let other = tempfile::tempdir().unwrap();
    let (h, join) = StoreHandle::start(cfg(other.path(), 0)).await.unwrap();
    assert_ne!(h.raft_id(), id, "each state dir gets its own id");
    stop(h, join).await;
}

#[tokio::test]
async fn proposals_after_shutdown_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (h, join) = StoreHandle::start(cfg(dir.path(), 0)).await.unwrap();
    let h2 = h.clone();
    stop(h, join).await;
    assert_eq!(
        h2.propose(batch(vec![put(stack("a", "1"), 0)])).await,
        Err(ProposeError::Stopped)
    );
    assert!(!h2.is_leader());
}
