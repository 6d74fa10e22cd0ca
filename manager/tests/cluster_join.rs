//! Secure join end to end over loopback: `init` makes a CA and tokens, a
//! second manager joins with the manager token through the pinned TLS
//! handshake, gets a certificate, becomes a learner and then (promoter) a
//! voter, and Raft runs over mutual TLS. Wrong CA digests, wrong or rotated
//! secrets and callers without a certificate are refused.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_manager::cluster::ca::NodeIdentity;
use flotilla_manager::cluster::join::{connect_pinned, join, join_via_leader, JoinError};
use flotilla_manager::cluster::token::JoinToken;
use flotilla_manager::cluster::{members_to_peers, run_promoter, save_joined, ClusterService};
use flotilla_manager::raft::transport::{GrpcTransport, RaftServices};
use flotilla_manager::raft::{RaftConfig, StartOptions, StoreHandle};
use flotilla_proto::v1::cluster_client::ClusterClient;
use flotilla_proto::v1::cluster_server::Cluster as _;
use flotilla_proto::v1::{
    store_action::{Kind, Object},
    JoinRole, JoinTokenRequest, ListMembersRequest, Meta, Stack, StoreAction, StoreBatch,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

struct Mgr {
    handle: StoreHandle,
    transport: Arc<GrpcTransport>,
    cluster: ClusterService,
    addr: SocketAddr,
    listener: Option<TcpListener>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn start(dir: &Path, join: bool) -> Mgr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let transport = GrpcTransport::new(None);
    let (handle, _join) = StoreHandle::start_with(
        RaftConfig {
            state_dir: dir.join("raft"),
            snapshot_every: 0,
            tick: Duration::from_millis(50),
        },
        StartOptions {
            transport: Some(transport.clone()),
            forwarder: Some(transport.clone()),
            join,
        },
    )
    .await
    .unwrap();
    let cluster = ClusterService::new(handle.clone(), dir.join("cluster")).unwrap();
    Mgr {
        handle,
        transport,
        cluster,
        addr,
        listener: Some(listener),
        stop: Vec::new(),
    }
}

impl Mgr {
    /// Serves Cluster + Raft over TLS with `id`.
    fn serve(&mut self, id: &NodeIdentity) {
        let listener = self.listener.take().unwrap();
        let raft = RaftServices::with_mutual_tls(self.handle.clone());
        let cluster = self.cluster.server();
        let tls = id.server_tls();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stop.push(tx);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(cluster)
                .add_service(raft.transport_service())
                .add_service(raft.peer_service())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        let (tx, rx) = tokio::sync::watch::channel(false);
        let handle = self.handle.clone();
        tokio::spawn(run_promoter(handle, rx));
        // Keep the promoter's stop sender alive as long as the manager.
        std::mem::forget(tx);
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
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
        proposal_id: id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manager_joins_with_a_token_over_pinned_mutual_tls() {
    let root = tempfile::tempdir().unwrap();
    let mut a = start(&root.path().join("a"), false).await;
    eventually("a leads", || a.handle.is_leader()).await;
    let init = a.cluster.init(&a.addr.to_string()).unwrap();
    let id_a = NodeIdentity::load(&root.path().join("a/cluster")).unwrap();
    a.transport.set_tls(id_a.peer_tls());
    a.serve(&id_a);
    let a_addr = a.addr.to_string();

    // A second init is refused.
    assert!(a.cluster.init(&a_addr).is_err());

    // B joins as a manager.
    let mut b = start(&root.path().join("b"), true).await;
    let joined = join(
        &a_addr,
        &init.manager_token,
        b.handle.raft_id(),
        &b.addr.to_string(),
        "host-b",
    )
    .await
    .unwrap();
    assert_eq!(joined.role(), JoinRole::Manager);
    assert!(!joined.response.ca_key_pem.is_empty());
    let b_dir = root.path().join("b/cluster");
    save_joined(&b_dir, &joined, &b.addr.to_string()).unwrap();
    // As the daemon does when it starts after `cluster join`.
    b.cluster = ClusterService::new(b.handle.clone(), &b_dir).unwrap();
    b.transport.set_tls(joined.identity.peer_tls());
    b.handle
        .set_peers(members_to_peers(&joined.response.members))
        .unwrap();
    b.serve(&joined.identity);

    // The promoter makes it a voter once it caught up (from a snapshot).
    let b_id = b.handle.raft_id();
    eventually("b becomes a voter", || {
        a.handle.status().voters.contains(&b_id)
    })
    .await;
    a.handle.propose(put_stack("over-mtls")).await.unwrap();
    eventually("b applies the write", || {
        b.handle.read(|s| s.stacks().any(|st| st.id == "over-mtls"))
    })
    .await;
    // B's own proposal goes to the leader over mutual TLS.
    b.handle.propose(put_stack("from-b")).await.unwrap();
    assert!(a.handle.read(|s| s.stacks().any(|st| st.id == "from-b")));

    // C joins through B, a follower: it is pointed to the leader.
    let mut c = start(&root.path().join("c"), true).await;
    let b_addr = b.addr.to_string();
    let joined_c = join_via_leader(
        &b_addr,
        &init.manager_token,
        c.handle.raft_id(),
        &c.addr.to_string(),
        "host-c",
    )
    .await
    .unwrap();
    save_joined(
        &root.path().join("c/cluster"),
        &joined_c,
        &c.addr.to_string(),
    )
    .unwrap();
    c.cluster = ClusterService::new(c.handle.clone(), root.path().join("c/cluster")).unwrap();
    c.transport.set_tls(joined_c.identity.peer_tls());
    c.handle
        .set_peers(members_to_peers(&joined_c.response.members))
        .unwrap();
    c.serve(&joined_c.identity);
    let c_id = c.handle.raft_id();
    eventually("c becomes a voter", || {
        a.handle.status().voters.contains(&c_id)
    })
    .await;
    eventually("three voters everywhere", || {
        [&a, &b, &c]
            .iter()
            .all(|m| m.handle.status().voters.len() == 3)
    })
    .await;
    eventually("c has every write", || {
        c.handle.read(|s| s.stacks().any(|st| st.id == "from-b"))
    })
    .await;

    // A worker token gives a worker certificate and no CA key.
    let w = join(&a_addr, &init.worker_token, 0, "", "worker-1")
        .await
        .unwrap();
    assert_eq!(w.role(), JoinRole::Worker);
    assert!(w.response.ca_key_pem.is_empty() && w.response.manager_secret.is_empty());

    // A token pinning another CA: the handshake fails before anything is sent.
    let good = JoinToken::parse(&init.manager_token).unwrap();
    let forged = JoinToken {
        ca_digest: "00".repeat(32),
        secret: good.secret.clone(),
    };
    let r = join(&a_addr, &forged.to_string(), 777, "127.0.0.1:1", "evil").await;
    assert!(matches!(r, Err(JoinError::Connect { .. })), "{r:?}");
    assert!(!a.handle.status().learners.contains(&777));

    // Right CA, wrong secret.
    let wrong = JoinToken::generate(&good.ca_digest);
    let r = join(&a_addr, &wrong.to_string(), 778, "127.0.0.1:2", "evil").await;
    match r {
        Err(JoinError::Refused { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Rotating the manager token refuses the old one.
    let rotated = a
        .cluster
        .join_token(tonic::Request::new(JoinTokenRequest {
            role: JoinRole::Manager as i32,
            rotate: true,
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_ne!(rotated, init.manager_token);
    let r = join(&a_addr, &init.manager_token, 779, "127.0.0.1:3", "late").await;
    assert!(matches!(r, Err(JoinError::Refused { .. })), "{r:?}");

    // Without a client certificate only Join is reachable.
    let ch = connect_pinned(&a_addr, &good.ca_digest).await.unwrap();
    let st = ClusterClient::new(ch)
        .list_members(ListMembersRequest {})
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unauthenticated);

    for tx in a
        .stop
        .drain(..)
        .chain(b.stop.drain(..))
        .chain(c.stop.drain(..))
    {
        let _ = tx.send(());
    }
    a.handle.shutdown().await;
    b.handle.shutdown().await;
    c.handle.shutdown().await;
}
