//! The control plane under criterion: the scheduler placing tasks over a
//! 1,000-node cluster (a pure function over a store snapshot), and a
//! 3-manager Raft cluster in one process over loopback gRPC: commit latency
//! with one proposal in flight, throughput with 32 concurrent proposers,
//! and fail-over (kill the leader → another manager is leader).
//!
//! `flotilla-bench --only control` runs the same workloads (this bench's
//! `support` module) and puts the figures in the lab's report.

mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use flotilla_manager::scheduler::schedule;

fn scheduler(c: &mut Criterion) {
    // 1,000 nodes, 20 services with 1,000 running tasks in all, and 1,000
    // pending tasks (50 per service) to place.
    let snap = support::cluster_snapshot(1000, 20, 50, 50);
    let placed = schedule(&snap, support::now());
    assert_eq!(placed.len(), 1000, "every pending task is placed");
    let mut g = c.benchmark_group("scheduler_1000_nodes");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(10);
    assert_eq!(
        support::sched_before::schedule_before(&snap, support::now()),
        placed,
        "the baseline places the same way"
    );
    g.bench_function("place_1000_tasks_before_2604044 (baseline)", |b| {
        b.iter(|| support::sched_before::schedule_before(&snap, support::now()))
    });
    g.bench_function("place_1000_tasks", |b| {
        b.iter(|| schedule(&snap, support::now()))
    });
    g.finish();
}

fn raft(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cluster = rt
        .block_on(support::Cluster::start(Duration::from_millis(100)))
        .expect("a 3-manager cluster");
    let leader = cluster.managers[cluster.leader().expect("a leader")]
        .handle
        .clone();
    let mut g = c.benchmark_group("raft_3_managers");
    g.sample_size(20);
    let mut n = 0u64;
    g.bench_function("commit_1_in_flight", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let t = Instant::now();
                rt.block_on(leader.propose(support::put_stack(&format!("lat-{n}"))))
                    .expect("commit");
                total += t.elapsed();
            }
            total
        })
    });
    g.throughput(Throughput::Elements(256));
    g.bench_function("commit_256_by_32_proposers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let (_, d) = rt
                    .block_on(support::commit_throughput(
                        &leader,
                        &format!("tp-{n}"),
                        32,
                        256,
                    ))
                    .expect("commits");
                total += d;
            }
            total
        })
    });
    g.finish();
    rt.block_on(cluster.shutdown());

    // Each iteration starts a fresh cluster (seconds): one per sample.
    let mut g = c.benchmark_group("raft_failover");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    g.bench_function("kill_leader_until_new_leader_100ms_tick", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(async {
                    let mut c = support::Cluster::start(Duration::from_millis(100))
                        .await
                        .expect("a 3-manager cluster");
                    let d = c.failover().await.expect("a new leader");
                    c.shutdown().await;
                    d
                });
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, scheduler, raft);
criterion_main!(benches);
