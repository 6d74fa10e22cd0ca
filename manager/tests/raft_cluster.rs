//! Three Raft managers in one process over real loopback gRPC
//! (`GrpcTransport` + `RaftServices`), each with its own redb file:
//! election, replication, learner → voter membership changes, forwarding
//! from followers, ReadIndex, leader loss, and a restarted member catching
//! up from a snapshot after the leader compacted its log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_manager::raft::transport::{GrpcTransport, RaftServices};
use flotilla_manager::raft::{RaftConfig, StartOptions, StoreHandle};
use flotilla_proto::v1::{
    store_action::{Kind, Object},
    Meta, Stack, StoreAction, StoreBatch,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

struct TestNode {
    dir: PathBuf,
    addr: SocketAddr,
    handle: StoreHandle,
    raft: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestNode {
    async fn start(dir: &Path, addr: Option<SocketAddr>, join: bool) -> TestNode {
        let listener = match addr {
            Some(a) => {
                // The old listener's port: retry while the kernel releases it.
                let mut tries = 0;
                loop {
                    match TcpListener::bind(a).await {
                        Ok(l) => break l,
                        Err(e) if tries < 100 => {
                            tries += 1;
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("rebinding {a}: {e}"),
                    }
                }
            }
            None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let transport = GrpcTransport::new(None);
        let cfg = RaftConfig {
            state_dir: dir.to_path_buf(),
            snapshot_every: 0,
            tick: Duration::from_millis(50),
        };
        let (handle, raft) = StoreHandle::start_with(
            cfg,
            StartOptions {
                transport: Some(transport.clone()),
                forwarder: Some(transport),
                join,
            },
        )
        .await
        .unwrap();
        let svc = RaftServices::new(handle.clone());
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc.transport_service())
                .add_service(svc.peer_service())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        TestNode {
            dir: dir.to_path_buf(),
            addr,
            handle,
            raft: Some(raft),
            server: Some(server),
            stop: Some(stop),
        }
    }

    fn id(&self) -> u64 {
        self.handle.raft_id()
    }

    /// Stops the node as a crash of the process would from the others'
    /// point of view: its server goes away and its loop stops.
    async fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
        self.handle.shutdown().await;
        if let Some(r) = self.raft.take() {
            r.await.unwrap();
        }
    }
}

fn put_stack(id: &str) -> StoreBatch {
    StoreBatch {
        actions: vec![StoreAction {
            kind: Kind::Put as i32,
            object: Some(Object::Stack(Stack {
                id: id.into(),
                meta: Some(Meta::default()),
                ..Default::default()
            })),
            expected_version: 0,
        }],
        proposal_id: format!("test-{id}"),
    }
}

fn has_stack(h: &StoreHandle, id: &str) -> bool {
    h.read(|s| s.stacks().any(|st| st.id == id))
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A → leader of a new cluster; B and C join as learners and are promoted.
async fn three_nodes(root: &Path) -> Vec<TestNode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let a = TestNode::start(&root.join("a"), None, false).await;
    eventually("a leads its one-node cluster", || a.handle.is_leader()).await;
    a.handle
        .set_peers(BTreeMap::from([(a.id(), a.addr.to_string())]))
        .unwrap();
    let mut nodes = vec![a];
    for name in ["b", "c"] {
        let n = TestNode::start(&root.join(name), None, true).await;
        // What a join answer gives the joiner: the managers' addresses.
        n.handle.set_peers(nodes[0].handle.peers()).unwrap();
        nodes[0]
            .handle
            .add_voter(n.id(), &n.addr.to_string(), Duration::from_secs(30))
            .await
            .unwrap();
        nodes.push(n);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_managers_elect_replicate_and_fail_over() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(root.path()).await;
    let ids: Vec<u64> = nodes.iter().map(|n| n.id()).collect();
    for n in &nodes {
        let voters = n.handle.status().voters;
        eventually("every node sees three voters", || {
            let mut v = n.handle.status().voters;
            v.sort();
            let mut want = ids.clone();
            want.sort();
            v == want
        })
        .await;
        let _ = voters;
    }

    // Replicate from the leader.
    nodes[0].handle.propose(put_stack("one")).await.unwrap();
    for n in &nodes {
        eventually("stack one everywhere", || has_stack(&n.handle, "one")).await;
    }

    // A follower's proposal is forwarded to the leader and is applied
    // locally before propose returns.
    assert!(!nodes[1].handle.is_leader());
    let idx = nodes[1].handle.propose(put_stack("two")).await.unwrap();
    assert!(nodes[1].handle.read(|s| s.applied_index()) >= idx);
    assert!(has_stack(&nodes[1].handle, "two"));

    // ReadIndex on a follower sees every acknowledged write.
    nodes[0].handle.propose(put_stack("three")).await.unwrap();
    let seen = nodes[2]
        .handle
        .linearizable_read(|s| s.stacks().any(|st| st.id == "three"))
        .await
        .unwrap();
    assert!(
        seen,
        "a linearizable read on a follower missed a committed write"
    );

    // Kill the leader: one of the others takes over and accepts writes.
    let old_leader = nodes[0].id();
    nodes[0].kill().await;
    eventually("a new leader among the survivors", || {
        nodes[1..].iter().any(|n| n.handle.is_leader())
    })
    .await;
    let leader = nodes[1..]
        .iter()
        .position(|n| n.handle.is_leader())
        .unwrap()
        + 1;
    let follower = if leader == 1 { 2 } else { 1 };
    assert_ne!(nodes[leader].id(), old_leader);
    // A write right after, through the follower (forwarded).
    nodes[follower]
        .handle
        .propose(put_stack("after-failover"))
        .await
        .unwrap();
    eventually("the write on the new leader", || {
        has_stack(&nodes[leader].handle, "after-failover")
    })
    .await;

    // The dead member is removed from the configuration.
    nodes[leader]
        .handle
        .remove_member(old_leader)
        .await
        .unwrap();
    eventually("two voters left", || {
        nodes[follower].handle.status().voters.len() == 2
    })
    .await;
    assert!(!nodes[follower].handle.peers().contains_key(&old_leader));

    for n in &mut nodes[1..] {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_member_catches_up_from_a_snapshot_after_compaction() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(root.path()).await;
    nodes[0].handle.propose(put_stack("before")).await.unwrap();
    eventually("c has the first write", || {
        has_stack(&nodes[2].handle, "before")
    })
    .await;

    // C goes down; the others go on writing, then the leader compacts.
    let c_addr = nodes[2].addr;
    let c_dir = nodes[2].dir.clone();
    let c_id = nodes[2].id();
    nodes[2].kill().await;
    for i in 0..50 {
        nodes[0]
            .handle
            .propose(put_stack(&format!("while-down-{i}")))
            .await
            .unwrap();
    }
    let snap = nodes[0].handle.snapshot_now().await.unwrap();
    let st = nodes[0].handle.status();
    assert!(
        st.first_log_index > snap,
        "the leader's log was not compacted"
    );

    // C restarts from its own disk (same address) and can only catch up
    // through the leader's snapshot: the entries it missed are gone.
    let c = TestNode::start(&c_dir, Some(c_addr), true).await;
    assert_eq!(c.id(), c_id, "the raft id is stable across restarts");
    nodes[2] = c;
    eventually("c catches up", || {
        has_stack(&nodes[2].handle, "while-down-49")
    })
    .await;
    // The status is published right after the Ready that installed the
    // snapshot, so it may trail the store by a moment.
    eventually("c reports the installed snapshot", || {
        nodes[2].handle.status().last_snapshot_index >= snap
    })
    .await;
    // The entries it missed were compacted away on the leader: a snapshot
    // was the only way to get them.
    assert!(nodes[0].handle.status().first_log_index > snap);
    assert!(has_stack(&nodes[2].handle, "before"));

    // And it keeps following.
    nodes[0].handle.propose(put_stack("after")).await.unwrap();
    eventually("c follows new writes", || {
        has_stack(&nodes[2].handle, "after")
    })
    .await;

    for n in &mut nodes {
        n.kill().await;
    }
    let _ = Arc::new(());
}
