//! What can be done to a running container through its cgroups and /proc:
//! freeze and thaw it (`pause`/`unpause`), read its resource usage
//! (`stats`) and list its processes (`top`).
//!
//! One code path for cgroup v1 and v2: a [`CgroupFiles`] knows, for each
//! kind of file, which hierarchy carries it on this host, and the readers
//! only differ where the kernel's file formats do. Everything here reads or
//! writes files under the container's own cgroup directories and /proc; it
//! must never touch another container's cgroup or change resource limits.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// How long a freeze may take before it is reported as failed (a process in
/// uninterruptible sleep can hold it up; Docker gives up likewise).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// The container's cgroup directories, by hierarchy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CgroupFiles {
    /// cgroup v1: each controller mounted on this host → the container's
    /// directory in that hierarchy.
    pub v1: BTreeMap<String, PathBuf>,
    /// cgroup v2: the container's directory in the unified hierarchy, used
    /// for a controller only when no v1 hierarchy carries it.
    pub v2: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupOpError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("no cgroup hierarchy on this host offers the {controller} controller")]
    NoController { controller: &'static str },
    #[error("the cgroup {} did not freeze within {FREEZE_TIMEOUT:?} (state {state})", path.display())]
    FreezeTimeout { path: PathBuf, state: String },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupOpError {
    let path = path.to_owned();
    move |source| CgroupOpError::Io {
        action,
        path,
        source,
    }
}

fn read(path: &Path) -> Result<String, CgroupOpError> {
    std::fs::read_to_string(path).map_err(io_err("reading", path))
}

fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn write(path: &Path, value: &str) -> Result<(), CgroupOpError> {
    std::fs::write(path, value).map_err(io_err("writing", path))
}

/// A number, or 0 for "max" / no limit. v1 reports "no limit" as a huge
/// page-rounded value; anything above 2^62 is treated as unlimited.
fn limit(text: &str) -> u64 {
    match text.trim() {
        "max" | "" => 0,
        t => match t.parse::<u64>() {
            Ok(n) if n < (1 << 62) => n,
            _ => 0,
        },
    }
}

fn num(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// `key value` lines (memory.stat, cpu.stat) as a map.
fn flat_keyed(text: &str) -> BTreeMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

impl CgroupFiles {
    /// The v1 directory of `controller`, or the v2 directory when no v1
    /// hierarchy carries it.
    fn dir(&self, controller: &'static str) -> Result<(&Path, bool), CgroupOpError> {
        if let Some(d) = self.v1.get(controller) {
            return Ok((d, true));
        }
        match &self.v2 {
            Some(d) => Ok((d, false)),
            None => Err(CgroupOpError::NoController { controller }),
        }
    }

    /// Freezes every process of the cgroup and waits until the kernel says
    /// it is frozen.
    pub fn freeze(&self) -> Result<(), CgroupOpError> {
        self.set_frozen(true)
    }

    pub fn thaw(&self) -> Result<(), CgroupOpError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupOpError> {
        let (dir, v1) = self.dir("freezer")?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        if v1 {
            let f = dir.join("freezer.state");
            let want = if frozen { "FROZEN" } else { "THAWED" };
            loop {
                // v1 may stay in FREEZING while a task is busy; writing again
                // retries the freeze, as runc does.
                write(&f, want)?;
                let state = read(&f)?;
                if state.trim() == want {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    // Leave it thawed rather than half frozen.
                    let _ = write(&f, "THAWED");
                    return Err(CgroupOpError::FreezeTimeout {
                        path: f,
                        state: state.trim().into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            let f = dir.join("cgroup.freeze");
            write(&f, if frozen { "1" } else { "0" })?;
            let events = dir.join("cgroup.events");
            loop {
                let text = read(&events)?;
                let is = text.lines().any(|l| l.trim() == "frozen 1");
                if is == frozen {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = write(&f, "0");
                    return Err(CgroupOpError::FreezeTimeout {
                        path: f,
                        state: text.replace('\n', " "),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Whether the cgroup is frozen (or freezing) right now.
    pub fn is_frozen(&self) -> Result<bool, CgroupOpError> {
        let (dir, v1) = self.dir("freezer")?;
        if v1 {
            let s = read(&dir.join("freezer.state"))?;
            Ok(matches!(s.trim(), "FROZEN" | "FREEZING"))
        } else {
            Ok(read(&dir.join("cgroup.freeze"))?.trim() == "1")
        }
    }

    /// Pids of every process in the cgroup (init, its children, exec'd
    /// processes), from whichever hierarchy lists them.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupOpError> {
        let dirs: Vec<&Path> = ["pids", "memory", "cpu", "freezer"]
            .iter()
            .filter_map(|c| self.v1.get(*c).map(PathBuf::as_path))
            .chain(self.v2.as_deref())
            .collect();
        let mut last = None;
        for d in dirs {
            let f = d.join("cgroup.procs");
            match std::fs::read_to_string(&f) {
                // An empty v2 dir in hybrid mode lists nothing: try the next.
                Ok(t) if t.trim().is_empty() => continue,
                Ok(t) => {
                    let mut pids: Vec<i32> =
                        t.lines().filter_map(|l| l.trim().parse().ok()).collect();
                    pids.sort_unstable();
                    return Ok(pids);
                }
                Err(e) => {
                    last = Some(CgroupOpError::Io {
                        action: "reading",
                        path: f,
                        source: e,
                    })
                }
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(Vec::new()),
        }
    }

    /// Resource counters of the cgroup. Missing files (a controller this
    /// kernel lacks) read as 0 rather than failing the whole sample.
    pub fn usage(&self) -> CgroupUsage {
        let mut u = CgroupUsage::default();
        // CPU
        if let Some(d) = self.v1.get("cpuacct") {
            u.cpu_usage_ns = read_opt(&d.join("cpuacct.usage")).map_or(0, |t| num(&t));
        } else if let Some(d) = &self.v2 {
            if let Some(t) = read_opt(&d.join("cpu.stat")) {
                u.cpu_usage_ns = flat_keyed(&t).get("usage_usec").copied().unwrap_or(0) * 1000;
            }
        }
        // Memory: usage minus inactive file cache, as `docker stats` shows.
        if let Some(d) = self.v1.get("memory") {
            let usage = read_opt(&d.join("memory.usage_in_bytes")).map_or(0, |t| num(&t));
            let inactive = read_opt(&d.join("memory.stat"))
                .map(|t| {
                    flat_keyed(&t)
                        .get("total_inactive_file")
                        .copied()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            u.memory_usage_bytes = usage.saturating_sub(inactive);
            u.memory_limit_bytes =
                read_opt(&d.join("memory.limit_in_bytes")).map_or(0, |t| limit(&t));
        } else if let Some(d) = &self.v2 {
            let usage = read_opt(&d.join("memory.current")).map_or(0, |t| num(&t));
            let inactive = read_opt(&d.join("memory.stat"))
                .map(|t| flat_keyed(&t).get("inactive_file").copied().unwrap_or(0))
                .unwrap_or(0);
            u.memory_usage_bytes = usage.saturating_sub(inactive);
            u.memory_limit_bytes = read_opt(&d.join("memory.max")).map_or(0, |t| limit(&t));
        }
        // Pids: the same file names in v1 and v2.
        if let Ok((d, _)) = self.dir("pids") {
            u.pids = read_opt(&d.join("pids.current")).map_or(0, |t| num(&t));
            u.pids_limit = read_opt(&d.join("pids.max")).map_or(0, |t| limit(&t));
        }
        // Block I/O
        if let Some(d) = self.v1.get("blkio") {
            for file in [
                "blkio.throttle.io_service_bytes_recursive",
                "blkio.throttle.io_service_bytes",
            ] {
                if let Some(t) = read_opt(&d.join(file)) {
                    for l in t.lines() {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        if let [_, op, v] = f.as_slice() {
                            match *op {
                                "Read" => u.block_read_bytes += num(v),
                                "Write" => u.block_write_bytes += num(v),
                                _ => {}
                            }
                        }
                    }
                    break;
                }
            }
        } else if let Some(d) = &self.v2 {
            if let Some(t) = read_opt(&d.join("io.stat")) {
                for l in t.lines() {
                    for kv in l.split_whitespace().skip(1) {
                        match kv.split_once('=') {
                            Some(("rbytes", v)) => u.block_read_bytes += num(v),
                            Some(("wbytes", v)) => u.block_write_bytes += num(v),
                            _ => {}
                        }
                    }
                }
            }
        }
        u
    }
}

/// Counters read from a container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupUsage {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    /// 0: no limit.
    pub memory_limit_bytes: u64,
    pub pids: u64,
    /// 0: no limit.
    pub pids_limit: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
}

/// One resource-usage sample of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSample {
    pub at: SystemTime,
    pub cgroup: CgroupUsage,
    /// Host CPU time since boot over all CPUs, the denominator for cpu %.
    pub system_cpu_ns: u64,
    pub online_cpus: u32,
    /// Bytes through the container's interfaces (loopback excluded).
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// (system cpu ns over all CPUs, online cpus) from /proc/stat.
pub fn system_cpu() -> (u64, u32) {
    let Some(text) = read_opt(Path::new("/proc/stat")) else {
        return (0, 1);
    };
    let mut total_ticks = 0u64;
    let mut cpus = 0u32;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("cpu ") {
            total_ticks = rest.split_whitespace().take(8).map(num).sum();
        } else if l.starts_with("cpu") {
            cpus += 1;
        }
    }
    (total_ticks * (1_000_000_000 / clock_ticks()), cpus.max(1))
}

/// Receive and transmit bytes over every interface but `lo`, from a
/// /proc/PID/net/dev text (the namespace of that process).
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0, 0);
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() >= 9 {
            rx += num(f[0]);
            tx += num(f[8]);
        }
    }
    (rx, tx)
}

/// Takes one sample: the cgroup's counters, plus the network counters of
/// `init_pid`'s namespace when the container runs.
pub fn sample(files: &CgroupFiles, init_pid: Option<i32>) -> StatsSample {
    let (system_cpu_ns, online_cpus) = system_cpu();
    let (net_rx_bytes, net_tx_bytes) = init_pid
        .and_then(|p| read_opt(&PathBuf::from(format!("/proc/{p}/net/dev"))))
        .map_or((0, 0), |t| parse_net_dev(&t));
    StatsSample {
        at: SystemTime::now(),
        cgroup: files.usage(),
        system_cpu_ns,
        online_cpus,
        net_rx_bytes,
        net_tx_bytes,
    }
}

/// One process of a container, as `top` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEntry {
    /// Host pid.
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// Name of `uid` in the container's /etc/passwd (empty when unknown).
    pub user: String,
    pub command: String,
    pub cpu_time: Duration,
    pub rss_bytes: u64,
    pub started_at: Option<SystemTime>,
    /// One letter from /proc/PID/stat: R, S, D, Z, T...
    pub state: String,
}

fn boot_time() -> Option<SystemTime> {
    let text = read_opt(Path::new("/proc/stat"))?;
    let secs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Parses /proc/PID/stat: the command may contain spaces and ')' so the
/// fields are taken after the last ')'.
fn parse_stat(text: &str) -> Option<(String, i32, u64, u64, u64)> {
    let close = text.rfind(')')?;
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After ')': state(0) ppid(1) ... utime(11) stime(12) ... starttime(19) vsize(20) rss(21)
    if f.len() < 22 {
        return None;
    }
    let state = f[0].to_string();
    let ppid = f[1].parse().ok()?;
    let cpu_ticks = num(f[11]) + num(f[12]);
    let start_ticks = num(f[19]);
    let rss_pages = num(f[21]);
    Some((state, ppid, cpu_ticks, start_ticks, rss_pages))
}

fn passwd_names(root: &Path) -> BTreeMap<u32, String> {
    read_opt(&root.join("etc/passwd"))
        .map(|t| {
            t.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The processes of the cgroup, read from /proc. A process that exits
/// while being read is skipped.
pub fn processes(
    files: &CgroupFiles,
    init_pid: Option<i32>,
) -> Result<Vec<ProcessEntry>, CgroupOpError> {
    let pids = files.pids()?;
    let ticks = clock_ticks();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let boot = boot_time();
    let names = init_pid
        .map(|p| passwd_names(Path::new(&format!("/proc/{p}/root"))))
        .unwrap_or_default();
    let mut out = Vec::new();
    for pid in pids {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let Some((state, ppid, cpu, start, rss)) =
            read_opt(&base.join("stat")).and_then(|t| parse_stat(&t))
        else {
            continue;
        };
        let uid = read_opt(&base.join("status"))
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|r| r.split_whitespace().next().and_then(|u| u.parse().ok()))
            })
            .unwrap_or(0);
        let command = std::fs::read(base.join("cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(ProcessEntry {
            pid,
            ppid,
            uid,
            user: names.get(&uid).cloned().unwrap_or_default(),
            command,
            cpu_time: Duration::from_millis(cpu * 1000 / ticks),
            rss_bytes: rss * page,
            started_at: boot.map(|b| b + Duration::from_millis(start * 1000 / ticks)),
            state,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v2() -> (tempfile::TempDir, CgroupFiles) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().to_path_buf();
        std::fs::write(p.join("cgroup.freeze"), "0\n").unwrap();
        std::fs::write(p.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        std::fs::write(p.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(p.join("memory.current"), "10485760\n").unwrap();
        std::fs::write(p.join("memory.stat"), "anon 1\ninactive_file 1048576\n").unwrap();
        std::fs::write(p.join("memory.max"), "max\n").unwrap();
        std::fs::write(p.join("pids.current"), "3\n").unwrap();
        std::fs::write(p.join("pids.max"), "64\n").unwrap();
        std::fs::write(
            p.join("io.stat"),
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2\n",
        )
        .unwrap();
        std::fs::write(p.join("cgroup.procs"), "42\n7\n").unwrap();
        let files = CgroupFiles {
            v1: BTreeMap::new(),
            v2: Some(p),
        };
        (d, files)
    }

    #[test]
    fn v2_usage_is_read_from_the_unified_files() {
        let (_d, f) = fake_v2();
        let u = f.usage();
        assert_eq!(
            u,
            CgroupUsage {
                cpu_usage_ns: 1_500_000,
                memory_usage_bytes: 10485760 - 1048576,
                memory_limit_bytes: 0,
                pids: 3,
                pids_limit: 64,
                block_read_bytes: 4096,
                block_write_bytes: 8192,
            }
        );
        assert_eq!(f.pids().unwrap(), vec![7, 42]);
    }

    #[test]
    fn v2_freeze_writes_cgroup_freeze_and_waits_for_the_event() {
        let (d, f) = fake_v2();
        // The kernel would flip cgroup.events; the fake does it up front.
        std::fs::write(d.path().join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        f.freeze().unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "1"
        );
        assert!(f.is_frozen().unwrap());
        std::fs::write(d.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        f.thaw().unwrap();
        assert!(!f.is_frozen().unwrap());
    }

    #[test]
    fn v1_files_win_over_v2_for_the_controllers_they_carry() {
        let (_d2, mut f) = fake_v2();
        let d1 = tempfile::tempdir().unwrap();
        std::fs::write(d1.path().join("memory.usage_in_bytes"), "2000\n").unwrap();
        std::fs::write(d1.path().join("memory.stat"), "total_inactive_file 500\n").unwrap();
        std::fs::write(
            d1.path().join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        f.v1.insert("memory".into(), d1.path().to_path_buf());
        let u = f.usage();
        assert_eq!(u.memory_usage_bytes, 1500);
        assert_eq!(u.memory_limit_bytes, 0, "v1's huge value means no limit");
        assert_eq!(u.pids, 3, "pids still from v2");
    }

    #[test]
    fn net_dev_sums_every_interface_but_lo() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
 lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
 eth0:    1000      10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text), (1000, 2000));
    }

    #[test]
    fn stat_with_spaces_and_parens_in_the_command() {
        let text = "123 (a b) c) S 1 123 123 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5000 1000000 250 18446744073709551615";
        let (state, ppid, cpu, start, rss) = parse_stat(text).unwrap();
        assert_eq!(
            (state.as_str(), ppid, cpu, start, rss),
            ("S", 1, 10, 5000, 250)
        );
    }

    #[test]
    fn missing_controller_is_a_clear_error() {
        let f = CgroupFiles::default();
        assert!(matches!(
            f.freeze(),
            Err(CgroupOpError::NoController {
                controller: "freezer"
            })
        ));
    }
}
