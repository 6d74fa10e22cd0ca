//! Control-plane workloads shared by the criterion bench
//! (`manager/benches/control_plane.rs`) and `flotilla-bench --only control`
//! (`bench/src/control.rs` includes this file by path): a store snapshot of
//! a large cluster for the scheduler, and a 3-manager Raft cluster in one
//! process over loopback gRPC (the same `GrpcTransport` + `RaftServices`
//! the managers use, plaintext, one redb file per node, each fsynced).
//!
//! What it must never do: listen anywhere but 127.0.0.1 or write outside
//! the directory it is given.

#![allow(dead_code)]

pub mod sched_before;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_manager::raft::transport::{GrpcTransport, RaftServices};
use flotilla_manager::raft::{RaftConfig, StartOptions, StoreHandle};
use flotilla_proto::v1::{
    store_action::{Kind, Object},
    Meta, Node, NodeAvailability, NodeDescription, NodeState, NodeStatus, Service, ServiceSpec,
    Stack, StoreAction, StoreBatch, StoreSnapshot, Task, TaskState, TaskStatus, Timestamp,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

fn meta(version: u64) -> Option<Meta> {
    Some(Meta {
        version,
        ..Default::default()
    })
}

/// A cluster of `nodes` Ready/Active nodes and `services` services, each
/// with `running` tasks already placed (round robin) and `pending` new
/// tasks for the scheduler to place.
pub fn cluster_snapshot(
    nodes: usize,
    services: usize,
    running: usize,
    pending: usize,
) -> StoreSnapshot {
    let node_ids: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    let mut snap = StoreSnapshot {
        nodes: node_ids
            .iter()
            .map(|id| Node {
                id: id.clone(),
                meta: meta(1),
                availability: NodeAvailability::Active as i32,
                description: Some(NodeDescription {
                    hostname: format!("host-{id}"),
                    ..Default::default()
                }),
                status: Some(NodeStatus {
                    state: NodeState::Ready as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut k = 0usize;
    for s in 0..services {
        let spec = ServiceSpec {
            name: format!("svc{s}"),
            image: "busybox".into(),
            replicas: Some((running + pending) as u32),
            ..Default::default()
        };
        let svc = Service {
            id: format!("bench_svc{s}"),
            meta: meta(1),
            stack: "bench".into(),
            spec: Some(spec.clone()),
            spec_version: 1,
            ..Default::default()
        };
        for slot in 0..running + pending {
            let placed = slot < running;
            let node = if placed {
                k += 1;
                node_ids[k % nodes.max(1)].clone()
            } else {
                String::new()
            };
            snap.tasks.push(Task {
                id: format!("task-{s}-{slot}"),
                meta: meta(2),
                stack: "bench".into(),
                service_id: svc.id.clone(),
                service_name: spec.name.clone(),
                slot: slot as u32 + 1,
                node_id: node,
                spec: Some(spec.clone()),
                spec_version: 1,
                desired_state: TaskState::Running as i32,
                status: Some(TaskStatus {
                    state: if placed {
                        TaskState::Running
                    } else {
                        TaskState::New
                    } as i32,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        snap.services.push(svc);
    }
    snap
}

/// The timestamp the scheduler is given.
pub fn now() -> Timestamp {
    Timestamp {
        unix_nanos: 1_000_000_000,
    }
}

/// One Raft manager: its store handle, loop and gRPC server on 127.0.0.1.
pub struct Manager {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub handle: StoreHandle,
    raft: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Manager {
    pub async fn start(dir: &Path, tick: Duration, join: bool) -> anyhow::Result<Manager> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let transport = GrpcTransport::new(None);
        let cfg = RaftConfig {
            state_dir: dir.to_path_buf(),
            snapshot_every: 1000,
            tick,
        };
        let (handle, raft) = StoreHandle::start_with(
            cfg,
            StartOptions {
                transport: Some(transport.clone()),
                forwarder: Some(transport),
                join,
            },
        )
        .await?;
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
        Ok(Manager {
            dir: dir.to_path_buf(),
            addr,
            handle,
            raft: Some(raft),
            server: Some(server),
            stop: Some(stop),
        })
    }

    pub fn id(&self) -> u64 {
        self.handle.raft_id()
    }

    /// Stops the manager the way a crash looks to the others: its server
    /// goes away and its loop stops.
    pub async fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
        self.handle.shutdown().await;
        if let Some(r) = self.raft.take() {
            let _ = r.await;
        }
    }
}

/// Polls `f` every millisecond until it holds or `limit` passes.
pub async fn wait_for(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Three managers: the first starts a cluster, the other two join as
/// voters. `tick` is Raft's logical clock (election after 10–20 ticks).
pub struct Cluster {
    pub managers: Vec<Manager>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(tick: Duration) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-raft-bench-")
            .tempdir()?;
        let a = Manager::start(&dir.path().join("a"), tick, false).await?;
        wait_for(
            "a leads its one-node cluster",
            Duration::from_secs(30),
            || a.handle.is_leader(),
        )
        .await?;
        a.handle
            .set_peers(BTreeMap::from([(a.id(), a.addr.to_string())]))?;
        let mut managers = vec![a];
        for name in ["b", "c"] {
            let n = Manager::start(&dir.path().join(name), tick, true).await?;
            n.handle.set_peers(managers[0].handle.peers())?;
            managers[0]
                .handle
                .add_voter(n.id(), &n.addr.to_string(), Duration::from_secs(30))
                .await?;
            managers.push(n);
        }
        let want = 3;
        for m in &managers {
            wait_for(
                "every manager sees three voters",
                Duration::from_secs(30),
                || m.handle.status().voters.len() == want,
            )
            .await?;
        }
        Ok(Cluster {
            managers,
            _dir: dir,
        })
    }

    /// The index of the current leader among the live managers.
    pub fn leader(&self) -> Option<usize> {
        self.managers
            .iter()
            .position(|m| m.raft.is_some() && m.handle.is_leader())
    }

    /// Kills the leader and returns how long until another manager is
    /// leader and has committed an entry of its term (a write through it
    /// succeeds).
    pub async fn failover(&mut self) -> anyhow::Result<Duration> {
        let old = self.leader().ok_or_else(|| anyhow::anyhow!("no leader"))?;
        let t = Instant::now();
        self.managers[old].kill().await;
        let ms = &self.managers;
        wait_for("a new leader", Duration::from_secs(60), || {
            ms.iter()
                .enumerate()
                .any(|(i, m)| i != old && m.handle.is_leader())
        })
        .await?;
        let elected = t.elapsed();
        Ok(elected)
    }

    pub async fn shutdown(mut self) {
        for m in &mut self.managers {
            m.kill().await;
        }
    }
}

/// A small write: one stack object, as a deploy's first entry would be.
pub fn put_stack(id: &str) -> StoreBatch {
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
        proposal_id: format!("bench-{id}"),
    }
}

/// `n` proposals one after another through the leader; the latency of each
/// (proposed → committed by a majority and applied on the leader).
pub async fn commit_latencies(
    leader: &StoreHandle,
    tag: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        leader.propose(put_stack(&format!("{tag}-{i}"))).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// `proposers` tasks proposing back to back for `total` proposals in all;
/// returns (proposals, elapsed).
pub async fn commit_throughput(
    leader: &StoreHandle,
    tag: &str,
    proposers: usize,
    total: usize,
) -> anyhow::Result<(usize, Duration)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..proposers {
        let h = leader.clone();
        let next = next.clone();
        let tag = tag.to_string();
        joins.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                h.propose(put_stack(&format!("{tag}-{i}"))).await?;
            }
        }));
    }
    for j in joins {
        j.await??;
    }
    Ok((total, t.elapsed()))
}
