//! The test bed against the real kernel: namespaces, veths, a bridge,
//! nftables. Needs root; skips otherwise.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_testbed::{sweep_leftovers, Testbed};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, nftables)");
            return;
        }
    };
}

/// One ping from host `from` to host `to`'s underlay address.
fn ping(bed: &Testbed, from: usize, to: usize) -> bool {
    let addr = bed.host(to).unwrap().addr.to_string();
    let out = bed
        .run(from, "/bin/busybox", &["ping", "-c", "1", "-W", "1", &addr])
        .unwrap();
    out.status.success()
}

/// Pings until one answers (ARP and the bridge's forwarding take a moment
/// after links come up) or `limit` passes.
fn reaches(bed: &Testbed, from: usize, to: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ping(bed, from, to) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn hosts_reach_each_other_over_the_underlay() {
    require_root!();
    let bed = Testbed::new(3).unwrap();
    for h in bed.hosts() {
        assert!(h.state_dir.is_dir() && h.run_dir.is_dir());
        assert_eq!(h.addr.octets()[..2], [172, 31]);
    }
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                assert!(
                    reaches(&bed, from, to, Duration::from_secs(10)),
                    "host {from} cannot reach host {to}"
                );
            }
        }
    }
    // The hosts' addresses exist only in their namespaces.
    let out = std::process::Command::new("ip")
        .args(["-4", "addr"])
        .output()
        .unwrap();
    let root_addrs = String::from_utf8_lossy(&out.stdout);
    for h in bed.hosts() {
        assert!(!root_addrs.contains(&format!("{} ", h.addr)));
        assert!(!root_addrs.contains(&format!("{}/", h.addr)));
    }
}

#[test]
fn a_partition_blocks_and_heal_restores() {
    require_root!();
    let mut bed = Testbed::new(3).unwrap();
    assert!(reaches(&bed, 0, 1, Duration::from_secs(10)));
    assert!(reaches(&bed, 0, 2, Duration::from_secs(10)));
    assert!(reaches(&bed, 1, 2, Duration::from_secs(10)));

    bed.partition(&[0], &[1, 2]).unwrap();
    assert!(!ping(&bed, 0, 1), "0 → 1 crosses the partition");
    assert!(!ping(&bed, 2, 0), "2 → 0 crosses the partition");
    // Inside the majority side traffic still flows.
    assert!(reaches(&bed, 1, 2, Duration::from_secs(10)));

    bed.heal().unwrap();
    assert!(reaches(&bed, 0, 1, Duration::from_secs(10)));
    assert!(reaches(&bed, 2, 0, Duration::from_secs(10)));
}

#[test]
fn a_cut_link_isolates_the_host_until_restored() {
    require_root!();
    let bed = Testbed::new(2).unwrap();
    assert!(reaches(&bed, 0, 1, Duration::from_secs(10)));
    bed.link_down(1).unwrap();
    assert!(!ping(&bed, 0, 1));
    bed.link_up(1).unwrap();
    assert!(reaches(&bed, 0, 1, Duration::from_secs(10)));
}

fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The state follows the parenthesised command name.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

fn net_ns_of(pid: u32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
}

#[test]
fn processes_run_inside_the_host_and_can_be_paused_killed_restarted() {
    require_root!();
    let bed = Testbed::new(2).unwrap();
    let mut p = bed
        .spawn(
            1,
            "sleeper",
            Path::new("/bin/busybox"),
            &["sleep", "600"],
            &[],
        )
        .unwrap();
    let pid = p.pid().unwrap();
    // Its network namespace is host 1's, not ours.
    let host_ns = std::fs::metadata(bed.host(1).unwrap().netns_path()).unwrap();
    let proc_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(host_ns.ino(), proc_ns.ino());
    assert_ne!(net_ns_of(pid), net_ns_of(std::process::id()));

    p.pause().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_state(pid) != 'T' && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proc_state(pid), 'T');
    p.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_state(pid) == 'T' && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(proc_state(pid), 'T');

    p.kill();
    assert!(!p.is_running());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    p.restart().unwrap();
    assert!(p.is_running());
    assert_ne!(p.pid().unwrap(), pid);
}

#[test]
fn drop_removes_namespaces_links_rules_and_processes() {
    require_root!();
    let (names, run_dirs, dirs, pid) = {
        let mut bed = Testbed::new(2).unwrap();
        bed.partition(&[0], &[1]).unwrap();
        let p = bed
            .spawn(
                0,
                "sleeper",
                Path::new("/bin/busybox"),
                &["sleep", "600"],
                &[],
            )
            .unwrap();
        let pid = p.pid().unwrap();
        // Leak the process handle: the bed itself must still kill it.
        std::mem::forget(p);
        let names = bed.netns_names();
        for n in &names {
            assert!(netns_exists(n));
        }
        let run_dirs: Vec<_> = bed.hosts().iter().map(|h| h.run_dir.clone()).collect();
        let dirs: Vec<_> = bed.hosts().iter().map(|h| h.dir.clone()).collect();
        (names, run_dirs, dirs, pid)
    };
    for n in &names {
        assert!(!netns_exists(n), "namespace {n} is left");
    }
    for d in run_dirs.iter().chain(&dirs) {
        assert!(!d.exists(), "{} is left", d.display());
    }
    // The killed process may linger as our zombie; it must not be running.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "process {pid} still runs: {state}"
    );
    // No veth of the bed leaked into the machine's namespace, and no rules.
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("ftb"), "a link of a bed is left:\n{links}");
    let tables = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("ftb_partition"));
}

#[test]
fn leftovers_of_a_dead_run_are_swept() {
    require_root!();
    // Fake a killed run: a namespace named after a pid that does not exist.
    let dead_pid = (1u32 << 22) + 17; // above pid_max's default range
    let name = format!("ftb{dead_pid}-0-h0");
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    let swept = sweep_leftovers().unwrap();
    assert!(swept.contains(&format!("ftb{dead_pid}-0")), "{swept:?}");
    assert!(!netns_exists(&name));
}
