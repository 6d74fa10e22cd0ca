//! Helpers of the network tests: a client network namespace joined to the
//! host by a veth pair, with addresses the test chooses.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the host by a veth pair:
/// host side `host_ip/30`, namespace side `client_ip/30`, default route
/// through the host. Removed on drop.
pub struct ClientNs {
    pub name: String,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
}

impl ClientNs {
    pub fn new(tag: &str, base: Ipv4Addr) -> ClientNs {
        let name = format!("{tag}c");
        let host_if = format!("{tag}h");
        let peer_if = format!("{tag}p");
        let o = base.octets();
        let host_ip = Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1);
        let client_ip = Ipv4Addr::new(o[0], o[1], o[2], o[3] + 2);
        // Leftovers of a killed run with the same name go first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let ns = ClientNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip,
            client_ip,
        };
        sh(&["ip", "netns", "add", &name]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        sh(&["ip", "link", "set", &peer_if, "netns", &name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", name.as_str()];
            full.extend_from_slice(args);
            sh(&full);
        };
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{client_ip}/30"),
            "dev",
            &peer_if,
        ]);
        in_ns(&["ip", "link", "set", &peer_if, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        in_ns(&["ip", "route", "add", "default", "via", &host_ip.to_string()]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.path()).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
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

/// A tiny HTTP server inside a [`ClientNs`]: answers every request with
/// `200 ok`, until dropped.
pub struct NsServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsServer {
    pub fn start(ns: &ClientNs, port: u16) -> NsServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let path = ns.path();
        let addr = std::net::SocketAddrV4::new(ns.client_ip, port);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        ready_rx.recv().unwrap();
        NsServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asks the embedded DNS server of the container whose pid is `pid`
/// (127.0.0.11:53 inside its network namespace) for `name`, as the
/// container's own resolver would: the response code and the addresses
/// (A and AAAA) of the answer. Retries a lost datagram twice.
pub fn dns_query(
    pid: i64,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
) -> (hickory_proto::op::ResponseCode, Vec<std::net::IpAddr>) {
    try_dns_query(pid, name, qtype).unwrap_or_else(|| {
        panic!("no DNS answer for {name} from 127.0.0.11 in the netns of pid {pid}")
    })
}

/// [`dns_query`], `None` when no answer came.
pub fn try_dns_query(
    pid: i64,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
) -> Option<(hickory_proto::op::ResponseCode, Vec<std::net::IpAddr>)> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData};
    use std::str::FromStr;
    let file = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let name = name.to_string();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(std::time::Duration::from_secs(3)))
                .unwrap();
            let id = (std::process::id() & 0xffff) as u16;
            let mut m = Message::new(id, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = true;
            m.queries
                .push(Query::query(Name::from_str(&name).unwrap(), qtype));
            let raw = m.to_vec().unwrap();
            let mut buf = [0u8; 4096];
            for _ in 0..3 {
                sock.send_to(&raw, "127.0.0.11:53").unwrap();
                let Ok(n) = sock.recv(&mut buf) else {
                    continue;
                };
                let reply = Message::from_vec(&buf[..n]).unwrap();
                let ips = reply
                    .answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                return Some((reply.metadata.response_code, ips));
            }
            None
        })
        .join()
        .unwrap()
    })
}

/// A resolver the test runs on the host's loopback, standing in for the
/// host's upstream servers: answers every A question with `answer` and
/// counts the questions. Stops when dropped.
pub struct FakeUpstream {
    pub addr: std::net::SocketAddr,
    pub asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeUpstream {
    pub fn start(answer: Ipv4Addr) -> FakeUpstream {
        use hickory_proto::op::{Message, OpCode};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record};
        use std::sync::atomic::Ordering;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a2, s2) = (asked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(query) = q.queries.first() else {
                    continue;
                };
                a2.lock().unwrap().push(query.name().to_string());
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.metadata.recursion_desired = q.metadata.recursion_desired;
                r.queries = q.queries.clone();
                r.answers.push(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A(answer)),
                ));
                let _ = sock.send_to(&r.to_vec().unwrap(), peer);
            }
        });
        FakeUpstream { addr, asked, stop }
    }

    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The VIP table (`table ip flotilla-vip`) in the namespace of `pid`, as
/// text; empty when there is none.
pub fn vip_table(pid: i64) -> String {
    Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "nft",
            "list",
            "table",
            "ip",
            "flotilla-vip",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The VIP whose DNAT map in the namespace of `pid` has `n` backends.
pub fn vip_with_backends(pid: i64, n: usize) -> Option<String> {
    vip_table(pid).lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("ip daddr ")?;
        let (vip, tail) = rest.split_once(' ')?;
        tail.contains(&format!("mod {n} map"))
            .then(|| vip.to_string())
    })
}
