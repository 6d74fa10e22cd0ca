//! The control plane (`--only control`): the scheduler's placements per
//! second over 1,000 nodes, and a 3-manager Raft cluster in this process
//! over loopback gRPC (commit latency with one proposal in flight,
//! throughput with 32 concurrent proposers, fail-over after the leader is
//! killed). The workloads are the criterion bench's
//! (`manager/benches/support/mod.rs`), so both report the same thing.
//!
//! What it must never do: listen anywhere but 127.0.0.1, or leave a Raft
//! directory behind (each cluster lives in its own temp dir).

#[path = "../../manager/benches/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_manager::scheduler::schedule;

use crate::model::Metric;
use crate::util::Stats;

pub struct Reps {
    /// Scheduler passes (each places 1,000 tasks).
    pub sched: usize,
    /// Rounds of commits (each: `commits` one after another, then
    /// `burst` by 32 proposers).
    pub rounds: usize,
    pub commits: usize,
    pub burst: usize,
    /// Fail-overs (a fresh cluster each).
    pub failovers: usize,
}

/// The Raft clock the managers run with by default (`RaftConfig::new`).
const TICK: Duration = Duration::from_millis(100);

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs every control-plane measurement; a failed part is returned as a
/// skip reason next to the metrics that did run.
pub fn run(reps: &Reps) -> (Vec<Metric>, Vec<String>, Vec<String>) {
    let mut metrics = Vec::new();
    let mut skipped = Vec::new();
    let mut notes = Vec::new();

    println!("== control plane: scheduler ({} passes)", reps.sched);
    let snap = support::cluster_snapshot(1000, 20, 50, 50);
    let mut m = Metric::new(
        "control.sched1000",
        "Control plane",
        "scheduler: placements/s (1,000 pending tasks of 20 services onto 1,000 nodes holding 1,000)",
        "placements/s",
    )
    .rate();
    // The current scheduler and the one before its counts were keyed by
    // node index, interleaved.
    let (mut rates, mut before) = (Vec::new(), Vec::new());
    for i in 0..=reps.sched {
        let t = Instant::now();
        let placed = schedule(&snap, support::now());
        let secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let old = support::sched_before::schedule_before(&snap, support::now());
        let old_secs = t.elapsed().as_secs_f64();
        if placed.len() != 1000 {
            skipped.push(format!("scheduler: placed {} of 1000 tasks", placed.len()));
            rates.clear();
            before.clear();
            break;
        }
        if old != placed && i == 0 {
            skipped.push("scheduler: the baseline (2604044) placed differently".into());
        }
        if i > 0 {
            rates.push(1000.0 / secs);
            before.push(1000.0 / old_secs);
        }
    }
    m.flotilla = Stats::from_samples(rates);
    m.peer(
        "scheduler before (2604044, String-keyed counts)",
        Stats::from_samples(before),
    );
    metrics.push(m);

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            skipped.push(format!("Raft: tokio runtime: {e}"));
            return (metrics, skipped, notes);
        }
    };
    println!(
        "== control plane: Raft, 3 managers ({} rounds of {} commits, then {} by 32 proposers)",
        reps.rounds, reps.commits, reps.burst
    );
    match rt.block_on(raft_rounds(reps)) {
        Ok((p50, p99, tput)) => {
            for (key, name, s) in [
                (
                    "control.raft.commit.p50",
                    "Raft commit latency, 1 in flight, p50",
                    p50,
                ),
                (
                    "control.raft.commit.p99",
                    "Raft commit latency, 1 in flight, p99",
                    p99,
                ),
            ] {
                let mut m = Metric::new(key, "Control plane", name, "ms");
                m.flotilla = Stats::from_samples(s);
                metrics.push(m);
            }
            let mut m = Metric::new(
                "control.raft.tput32",
                "Control plane",
                "Raft commits/s, 32 concurrent proposers",
                "commits/s",
            )
            .rate();
            m.flotilla = Stats::from_samples(tput);
            metrics.push(m);
        }
        Err(e) => skipped.push(format!("Raft commits: {e:#}")),
    }
    println!("== control plane: fail-over ({} runs)", reps.failovers);
    let mut fo = Vec::new();
    for i in 0..reps.failovers {
        match rt.block_on(failover_once()) {
            Ok(d) => {
                println!("  fail-over {i}: {:.0} ms", d.as_secs_f64() * 1000.0);
                fo.push(d.as_secs_f64() * 1000.0);
            }
            Err(e) => {
                skipped.push(format!("Raft fail-over: {e:#}"));
                fo.clear();
                break;
            }
        }
    }
    let mut m = Metric::new(
        "control.raft.failover",
        "Control plane",
        "Raft fail-over: leader killed → new leader (100 ms tick)",
        "ms",
    );
    m.flotilla = Stats::from_samples(fo);
    metrics.push(m);
    notes.push(format!(
        "Control plane: 3 Raft managers in one process over plaintext loopback gRPC, each with its own redb file (fsync per Ready), tick {} ms (the default; election after 10–20 ticks); a commit is proposed on the leader and returns once applied there; fail-over is measured from killing the leader (its server and loop stop) until another manager reports itself leader, on a fresh cluster each time.",
        TICK.as_millis()
    ));
    (metrics, skipped, notes)
}

type Rounds = (Vec<f64>, Vec<f64>, Vec<f64>);

async fn raft_rounds(reps: &Reps) -> Result<Rounds> {
    let cluster = support::Cluster::start(TICK)
        .await
        .context("starting 3 managers")?;
    let res = async {
        let leader = cluster.managers[cluster.leader().context("no leader")?]
            .handle
            .clone();
        // Warm-up: connections, redb pages.
        support::commit_latencies(&leader, "warm", 20).await?;
        let (mut p50, mut p99, mut tput) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..reps.rounds {
            let mut lat: Vec<f64> =
                support::commit_latencies(&leader, &format!("lat{r}"), reps.commits)
                    .await?
                    .into_iter()
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .collect();
            lat.sort_by(f64::total_cmp);
            let (a, b) = (pct(&lat, 0.5), pct(&lat, 0.99));
            let (n, d) =
                support::commit_throughput(&leader, &format!("tp{r}"), 32, reps.burst).await?;
            let rate = n as f64 / d.as_secs_f64();
            println!(
                "  round {r}: p50 {a:.2} ms, p99 {b:.2} ms, {rate:.0} commits/s with 32 proposers"
            );
            p50.push(a);
            p99.push(b);
            tput.push(rate);
        }
        Ok::<_, anyhow::Error>((p50, p99, tput))
    }
    .await;
    cluster.shutdown().await;
    res
}

async fn failover_once() -> Result<Duration> {
    let mut c = support::Cluster::start(TICK)
        .await
        .context("starting 3 managers")?;
    // Let the followers see a few heartbeats first.
    tokio::time::sleep(TICK * 5).await;
    let d = c.failover().await;
    c.shutdown().await;
    d
}
