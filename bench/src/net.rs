//! The network data path (`--only net`): a stack with an echo server
//! (busybox `nc -ll -e cat`, one replica, publishing a port) and an idle
//! client container on the stack's bridge network, then 64-byte TCP
//! request/response from this process over four paths:
//!
//! - direct: from the client container's network namespace to the echo
//!   task's own address (the baseline);
//! - VIP: from the same namespace to the service's VIP (nftables DNAT in
//!   that namespace's output hook);
//! - published port from a client namespace this bench makes (a veth pair
//!   into the host, addresses it chose), to the host end's address: DNAT
//!   in the host's prerouting, then forwarded onto the bridge;
//! - published port on 127.0.0.1 from the host (DNAT in output,
//!   `route_localnet`, masquerade).
//!
//! Latency is one connection, one request in flight (p50 and p99 of each
//! round); throughput is `conns` connections, one request in flight each,
//! for a fixed time. The client threads enter a namespace with setns(2);
//! the rest of the process stays where it is. Paths are interleaved within
//! each round so a noisy machine hurts all alike.
//!
//! What it must never do: send traffic anywhere but 127.0.0.1 and the
//! namespaces of this run (the client namespace, the stack's containers),
//! or leave the namespace, the veth pair or the stack behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::flotilla::Daemon;
use crate::model::Metric;
use crate::stacks::{self, Tool};
use crate::util::{run, Stats};

const MSG: usize = 64;
const PORT: u16 = 7000;

pub struct Reps {
    pub rounds: usize,
    /// Requests per latency measurement.
    pub requests: usize,
    /// Length of each throughput measurement.
    pub tput: Duration,
    /// Connections of the throughput measurement.
    pub conns: usize,
}

/// Where a client runs: a network namespace (a path to its nsfs file) or
/// this process's own.
#[derive(Clone)]
struct Route {
    key: &'static str,
    name: &'static str,
    netns: Option<PathBuf>,
    addr: SocketAddr,
}

/// A client namespace with a veth pair into the host, removed on drop.
struct ClientNs {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
}

impl ClientNs {
    fn create() -> Result<ClientNs> {
        let tag = std::process::id() % 100_000;
        let name = format!("fbnet{tag}");
        let host_if = format!("fbh{tag}");
        let peer_if = format!("fbc{tag}");
        // A /30 in 10.254.0.0/16 no route or address of the host covers.
        let routes = String::from_utf8_lossy(
            &run(Command::new("ip").args(["-4", "route", "show", "table", "all"]))?.stdout,
        )
        .into_owned();
        let addrs = String::from_utf8_lossy(&run(Command::new("ip").args(["-4", "addr"]))?.stdout)
            .into_owned();
        let third = (0..250u32)
            .map(|i| (tag + i) % 250)
            .find(|x| {
                let p = format!("10.254.{x}.");
                !routes.contains(&p) && !addrs.contains(&p)
            })
            .context("no free /30 in 10.254.0.0/16 for the client namespace")?;
        let host_ip = Ipv4Addr::new(10, 254, third as u8, 1);
        let ns = ClientNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip,
        };
        let ip = |args: &[&str]| run(Command::new("ip").args(args)).map(|_| ());
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &name,
        ])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let client_ip = format!("10.254.{third}.2/30");
        for args in [
            vec!["addr", "add", client_ip.as_str(), "dev", peer_if.as_str()],
            vec!["link", "set", peer_if.as_str(), "up"],
            vec!["link", "set", "lo", "up"],
            vec!["route", "add", "default", "via"],
        ] {
            let mut a: Vec<String> = vec!["-n".into(), name.clone()];
            a.extend(args.iter().map(|s| s.to_string()));
            if args[0] == "route" {
                a.push(host_ip.to_string());
            }
            run(Command::new("ip").args(&a))?;
        }
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for ClientNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Enters `netns` on this thread (network namespace only).
fn enter(netns: Option<&Path>) -> Result<()> {
    if let Some(p) = netns {
        let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", p.display()))?;
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

fn roundtrip(s: &mut TcpStream, buf: &mut [u8; MSG]) -> Result<()> {
    s.write_all(&[b'x'; MSG])?;
    let mut got = 0;
    while got < MSG {
        let n = s.read(&mut buf[got..])?;
        if n == 0 {
            bail!("the echo server closed the connection");
        }
        got += n;
    }
    Ok(())
}

/// One connection, `n` requests one at a time: latencies in µs, sorted.
fn latencies(p: &Route, n: usize) -> Result<Vec<f64>> {
    let ns = p.netns.clone();
    let addr = p.addr;
    std::thread::spawn(move || -> Result<Vec<f64>> {
        enter(ns.as_deref())?;
        let mut s = connect(addr)?;
        let mut buf = [0u8; MSG];
        for _ in 0..200 {
            roundtrip(&mut s, &mut buf)?;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            roundtrip(&mut s, &mut buf)?;
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
        out.sort_by(f64::total_cmp);
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// `conns` connections, one request in flight each, for `d`: requests/s.
fn throughput(p: &Route, conns: usize, d: Duration) -> Result<f64> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(conns));
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let ns = p.netns.clone();
            let addr = p.addr;
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<(u64, Duration)> {
                let ready = (|| {
                    enter(ns.as_deref())?;
                    let mut s = connect(addr)?;
                    let mut buf = [0u8; MSG];
                    for _ in 0..50 {
                        roundtrip(&mut s, &mut buf)?;
                    }
                    Ok::<_, anyhow::Error>((s, buf))
                })();
                barrier.wait();
                let (mut s, mut buf) = ready?;
                let t = Instant::now();
                let mut n = 0u64;
                while t.elapsed() < d {
                    roundtrip(&mut s, &mut buf)?;
                    n += 1;
                }
                Ok((n, t.elapsed()))
            })
        })
        .collect();
    let mut total = 0.0;
    for t in threads {
        let (n, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        total += n as f64 / e.as_secs_f64();
    }
    Ok(total)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `flotilla inspect` of one object as JSON (the first when a list).
fn inspect(d: &Daemon, file: &Path, project: &str, kind: &str, name: &str) -> Result<Value> {
    let out = run(&mut Tool::Flotilla(d).cmd(file, project, &["inspect", "--type", kind, name]))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing `inspect --type {kind} {name}`"))?;
    Ok(match v {
        Value::Array(mut a) if !a.is_empty() => a.remove(0),
        v => v,
    })
}

fn ip_of(v: &Value) -> Option<Ipv4Addr> {
    v.as_str()?.split('/').next()?.parse().ok()
}

/// The running task of a service: (its address, its pid).
fn task_of(d: &Daemon, file: &Path, project: &str, service: &str) -> Result<(Ipv4Addr, u32)> {
    let svc = inspect(d, file, project, "service", service)?;
    let id = svc["Tasks"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|t| t["State"] == "running")
                .and_then(|t| t["Id"].as_str())
        })
        .with_context(|| format!("service {service} has no running task: {svc}"))?
        .to_string();
    let task = inspect(d, file, project, "task", &id)?;
    let pid = task["State"]["Pid"]
        .as_u64()
        .filter(|p| *p > 0)
        .with_context(|| format!("task {id} reports no pid"))? as u32;
    let addr = task["Networks"]
        .as_array()
        .and_then(|n| n.first())
        .and_then(|n| n["Addresses"].as_array())
        .and_then(|a| a.first())
        .and_then(ip_of)
        .with_context(|| format!("task {id} has no address: {}", task["Networks"]))?;
    Ok((addr, pid))
}

fn compose(host_port: u16) -> String {
    format!(
        "services:\n  echo:\n    image: {img}\n    command: [\"/bin/busybox\", \"nc\", \"-ll\", \"-p\", \"{PORT}\", \"-e\", \"/bin/cat\"]\n    stop_signal: SIGKILL\n    ports:\n      - \"{host_port}:{PORT}\"\n  client:\n    image: {img}\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n",
        img = stacks::IMAGE
    )
}

/// A TCP port nothing on the host holds right now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("0.0.0.0:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Runs the section: metrics, and notes for the report.
pub fn run_section(d: &Daemon, files: &Path, reps: &Reps) -> Result<(Vec<Metric>, Vec<String>)> {
    let host_port = free_port()?;
    let file = stacks::write_file(files, "net", &compose(host_port))?;
    let project = format!("fbnet{}", std::process::id() % 100_000);
    let tool = Tool::Flotilla(d);
    tool.up(&file, &project, 2)
        .with_context(|| format!("bringing up the echo stack {project}"))?;
    let res = (|| {
        let ns = ClientNs::create().context("creating the client namespace")?;
        measure(d, &file, &project, host_port, &ns, reps)
    })();
    let down = tool.down(&file, &project);
    let (metrics, notes) = res?;
    down.with_context(|| format!("taking down {project}"))?;
    Ok((metrics, notes))
}

fn measure(
    d: &Daemon,
    file: &Path,
    project: &str,
    host_port: u16,
    client_ns: &ClientNs,
    reps: &Reps,
) -> Result<(Vec<Metric>, Vec<String>)> {
    let (echo_ip, _) = task_of(d, file, project, "echo")?;
    let (_, client_pid) = task_of(d, file, project, "client")?;
    let svc = inspect(d, file, project, "service", "echo")?;
    let vip = svc["VirtualIps"]
        .as_array()
        .and_then(|v| v.first())
        .and_then(|v| ip_of(&v["Address"]))
        .with_context(|| format!("service echo has no VIP: {}", svc["VirtualIps"]))?;
    let container_ns = PathBuf::from(format!("/proc/{client_pid}/ns/net"));
    let paths = vec![
        Route {
            key: "direct",
            name: "direct to the task's address, from a container on the network",
            netns: Some(container_ns.clone()),
            addr: SocketAddr::from((echo_ip, PORT)),
        },
        Route {
            key: "vip",
            name: "service VIP, from a container on the network",
            netns: Some(container_ns),
            addr: SocketAddr::from((vip, PORT)),
        },
        Route {
            key: "published_ns",
            name: "published port, from a client namespace via a veth",
            netns: Some(client_ns.path()),
            addr: SocketAddr::from((client_ns.host_ip, host_port)),
        },
        Route {
            key: "published_lo",
            name: "published port on 127.0.0.1, from the host",
            netns: None,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)),
        },
    ];
    // The server may take a moment to listen; every path must answer.
    for p in &paths {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match latencies(p, 10) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("path {} ({}) never answered", p.key, p.addr)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    let mut p50 = vec![Vec::new(); paths.len()];
    let mut p99 = vec![Vec::new(); paths.len()];
    let mut rps = vec![Vec::new(); paths.len()];
    for r in 0..reps.rounds {
        for (i, p) in paths.iter().enumerate() {
            let lat = latencies(p, reps.requests)
                .with_context(|| format!("latency over {} ({})", p.key, p.addr))?;
            let tput = throughput(p, reps.conns, reps.tput)
                .with_context(|| format!("throughput over {} ({})", p.key, p.addr))?;
            let (a, b) = (pct(&lat, 0.5), pct(&lat, 0.99));
            println!(
                "  round {r} {:<13} p50 {a:>5.0} µs  p99 {b:>5.0} µs  {tput:>7.0} req/s",
                p.key
            );
            p50[i].push(a);
            p99[i].push(b);
            rps[i].push(tput);
        }
    }
    let mut metrics = Vec::new();
    let baseline = "direct (baseline)";
    for (i, p) in paths.iter().enumerate() {
        for (what, unit, data) in [
            ("p50", "µs", &p50[i]),
            ("p99", "µs", &p99[i]),
            ("rps", "req/s", &rps[i]),
        ] {
            let label = match what {
                "p50" => "latency p50",
                "p99" => "latency p99",
                _ => "throughput",
            };
            let mut m = Metric::new(
                &format!("net.{}.{what}", p.key),
                "Network",
                &format!("{}: {label}", p.name),
                unit,
            );
            if what == "rps" {
                m = m.rate();
            }
            m.flotilla = Stats::from_samples(data.clone());
            if i > 0 {
                let base = match what {
                    "p50" => &p50[0],
                    "p99" => &p99[0],
                    _ => &rps[0],
                };
                m.peer(baseline, Stats::from_samples(base.clone()));
            }
            metrics.push(m);
        }
    }
    let notes = vec![format!(
        "Network: 64-byte TCP request/response to busybox `nc -ll -e cat` (one replica, a new cat per connection) on the stack's bridge; latency over one connection ({} requests per round, p50/p99 of each round, median over {} rounds), throughput with {} connections for {:.1} s each; every path in every round. Direct and VIP run from the client container's network namespace (VIP DNAT lives there); the published port from a namespace the bench made with a veth into the host ({}), and on 127.0.0.1 from the host. The 'peer' of each path is the direct path measured in the same rounds, so ratios compare data paths, not tools.",
        reps.requests,
        reps.rounds,
        reps.conns,
        reps.tput.as_secs_f64(),
        client_ns.host_ip
    )];
    Ok((metrics, notes))
}
