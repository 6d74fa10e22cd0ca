//! Resource limits on real containers (needs root and cgroup v1, as this
//! host has), and the cgroup v2 path against a fake cgroupfs tree.
//!
//! Build the shim first when running only this target:
//! `cargo build -p flotilla-runtime --example shim`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_runtime::container::{cgroup_resources, ContainerSpec, Resources};
use flotilla_runtime::logs::{self, LogStream};

mod common;
use common::*;

fn cgroup_dir(env: &TestEnv, id: &str, file: &str) -> Option<PathBuf> {
    env.rt
        .cgroup_dirs(id)
        .into_iter()
        .find(|d| d.join(file).exists())
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    let env = TestEnv::new("oom2");
    let mut spec = env.spec(
        "hog",
        &[
            "sh",
            "-c",
            "echo start; head -c 400000000 /dev/zero | tail -c 200000000 > /dev/null",
        ],
    );
    spec.resources.memory_bytes = Some(32 << 20);
    spec.resources.memory_reservation = Some(16 << 20);
    let (info, entries) = run_to_exit(&env, &spec);
    assert_eq!(
        info.exit_code,
        Some(137),
        "{:?}",
        lines(&entries, LogStream::Stdout)
    );
    // The kernel killed `tail` (the shell reports its 137); the cgroup's
    // oom_kill counter says it was the OOM killer.
    assert!(info.oom_killed);
}

#[test]
fn limits_are_written_to_the_cgroups() {
    let env = TestEnv::new("files");
    let mut spec = env.spec("idle", &["sleep", "1000"]);
    spec.resources = Resources {
        memory_bytes: Some(64 << 20),
        memory_reservation: Some(32 << 20),
        nano_cpus: Some(250_000_000),
        cpu_shares: Some(512),
        cpuset_cpus: Some("0".into()),
        pids_limit: Some(20),
        blkio_weight: Some(300),
        ..Default::default()
    };
    env.rt.create(&spec).unwrap();
    let id = &spec.id;
    let mem = cgroup_dir(&env, id, "memory.limit_in_bytes").expect("memory cgroup");
    assert_eq!(
        read_trim(&mem.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        read_trim(&mem.join("memory.soft_limit_in_bytes")),
        (32u64 << 20).to_string()
    );
    let cpu = cgroup_dir(&env, id, "cpu.cfs_quota_us").expect("cpu cgroup");
    assert_eq!(read_trim(&cpu.join("cpu.cfs_quota_us")), "25000");
    assert_eq!(read_trim(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read_trim(&cpu.join("cpu.shares")), "512");
    let cpuset = cgroup_dir(&env, id, "cpuset.cpus").expect("cpuset cgroup");
    assert_eq!(read_trim(&cpuset.join("cpuset.cpus")), "0");
    let pids = cgroup_dir(&env, id, "pids.max").expect("pids cgroup");
    assert_eq!(read_trim(&pids.join("pids.max")), "20");
    // Where the kernel offers a weight (cfq's blkio.weight or bfq's).
    match cgroup_dir(&env, id, "blkio.weight").or_else(|| cgroup_dir(&env, id, "blkio.bfq.weight"))
    {
        Some(d) => {
            let f = if d.join("blkio.weight").exists() {
                "blkio.weight"
            } else {
                "blkio.bfq.weight"
            };
            let v = read_trim(&d.join(f));
            assert!(v == "300" || v == "default 300", "{f}: {v}");
        }
        None => eprintln!("this kernel offers no blkio weight; not checked"),
    }
    env.rt.remove(id).unwrap();
}

#[test]
fn pids_limit_stops_a_bounded_fork_loop() {
    let env = TestEnv::new("pids");
    // At most 40 sleepers, never unbounded; the pids limit is 20. The shell
    // says how many it started; when a fork is refused it stops (ash
    // exits with 2 on "can't fork").
    let script =
        "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); echo started=$i; done; echo done";
    let mut spec = env.spec("forks", &["sh", "-c", script]);
    spec.resources.pids_limit = Some(20);
    env.rt.create(&spec).unwrap();
    let pids = cgroup_dir(&env, &spec.id, "pids.max").expect("pids cgroup");
    assert_eq!(read_trim(&pids.join("pids.max")), "20");
    let info = env
        .rt
        .wait(&spec.id, Some(Duration::from_secs(120)))
        .unwrap();
    let entries = logs::read(&env.rt.log_path(&spec.id), None, None, None).unwrap();
    let out = lines(&entries, LogStream::Stdout);
    let err = lines(&entries, LogStream::Stderr);
    assert!(
        !out.contains(&"done\n".to_string()),
        "all 40 forks succeeded: {out:?}"
    );
    assert_ne!(info.exit_code, Some(0), "{out:?} {err:?}");
    assert!(err.iter().any(|l| l.contains("fork")), "{err:?}");
    let started: usize = out
        .last()
        .and_then(|l| l.trim().strip_prefix("started="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // The shell is one of the 20.
    assert!(
        (10..=19).contains(&started),
        "{started} sleepers under a limit of 20: {out:?}"
    );
}

#[test]
fn cpu_quota_holds() {
    let env = TestEnv::new("cpu");
    let mut spec = env.spec("spin", &["sh", "-c", "while :; do :; done"]);
    // A fifth of one CPU.
    spec.resources.nano_cpus = Some(200_000_000);
    env.rt.create(&spec).unwrap();
    let acct = cgroup_dir(&env, &spec.id, "cpuacct.usage").expect("cpuacct cgroup");
    let cpu = cgroup_dir(&env, &spec.id, "cpu.cfs_quota_us").expect("cpu cgroup");
    assert_eq!(read_trim(&cpu.join("cpu.cfs_quota_us")), "20000");
    assert_eq!(read_trim(&cpu.join("cpu.cfs_period_us")), "100000");
    let usage = || {
        read_trim(&acct.join("cpuacct.usage"))
            .parse::<u64>()
            .unwrap()
    };
    // Let the loop start, then measure a window.
    std::thread::sleep(Duration::from_millis(300));
    let (u0, t0) = (usage(), Instant::now());
    std::thread::sleep(Duration::from_millis(2000));
    let (u1, window) = (usage(), t0.elapsed());
    let used = u1 - u0;
    let allowed = window.as_nanos() as f64 * 0.2;
    // Generous: the quota is enforced per 100ms period, plus one period of slack.
    assert!(
        (used as f64) < allowed * 1.5 + 20_000_000.0,
        "used {used} ns of CPU in {window:?}; quota allows {allowed} ns"
    );
    assert!(used > 0, "the busy loop ran");
    // And the kernel did throttle it.
    let stat = std::fs::read_to_string(cpu.join("cpu.stat")).unwrap();
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(throttled > 0, "cpu.stat: {stat}");
    env.rt.remove(&spec.id).unwrap();
}

/// The cgroup v2 path: the same resources, applied by libcgroups' v2
/// manager (the one libcontainer uses on a v2 host) to a fake cgroupfs.
#[test]
fn cgroup_v2_files_from_the_same_resources() {
    use libcgroups::common::{CgroupManager, ControllerOpt};

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
    let spec = ContainerSpec {
        id: "v2".into(),
        resources: Resources {
            memory_bytes: Some(64 << 20),
            memory_reservation: Some(32 << 20),
            nano_cpus: Some(1_500_000_000),
            cpu_shares: Some(512),
            cpuset_cpus: Some("0-1".into()),
            pids_limit: Some(20),
            ..Default::default()
        },
        ..Default::default()
    };
    let res = cgroup_resources(&spec).unwrap();
    let mgr =
        libcgroups::v2::manager::Manager::new(root.to_path_buf(), PathBuf::from("flotilla/v2"))
            .unwrap();
    let dir = root.join("flotilla/v2");
    std::fs::create_dir_all(&dir).unwrap();
    // The files a real cgroupfs would offer in the new cgroup.
    for f in [
        "cgroup.procs",
        "memory.max",
        "memory.low",
        "memory.swap.max",
        "cpu.max",
        "cpu.weight",
        "cpuset.cpus",
        "cpuset.mems",
        "pids.max",
    ] {
        std::fs::write(dir.join(f), "").unwrap();
    }
    mgr.add_task(nix::unistd::Pid::from_raw(4242)).unwrap();
    mgr.apply(&ControllerOpt {
        resources: &res,
        freezer_state: None,
        oom_score_adj: None,
        disable_oom_killer: false,
    })
    .unwrap();
    let f = |n: &str| read_trim(&dir.join(n));
    assert_eq!(f("cgroup.procs"), "4242");
    assert_eq!(f("memory.max"), (64u64 << 20).to_string());
    assert_eq!(f("memory.low"), (32u64 << 20).to_string());
    assert_eq!(f("cpu.max"), "150000 100000");
    // cpu.shares 512 in v2's weight scale, by libcgroups' (runc's) mapping
    // of 2..262144 onto 1..10000.
    assert_eq!(f("cpu.weight"), "59");
    assert_eq!(f("cpuset.cpus"), "0-1");
    assert_eq!(f("pids.max"), "20");
}
