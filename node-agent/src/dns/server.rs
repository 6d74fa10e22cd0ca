//! The embedded DNS server's I/O shell: one UDP socket and one TCP listener
//! on 127.0.0.11:53 inside each container's network namespace, answered
//! from the shared [`DnsTable`] by [`answer`], and unknown names forwarded
//! to upstream servers from the host side.
//!
//! The socket a question arrives on identifies the asking task, so "only
//! names on networks the asker shares" is exact. Sockets are bound on a
//! short-lived thread that joined the container's netns (they stay in that
//! netns); the tokio tasks serving them run in the agent's own netns, which
//! is why forwarding to an upstream on the host's 127.0.0.1 works.
//!
//! Must never decide anything itself (the table does), never block the
//! runtime, and never leave a task's sockets open after [`DnsServer::detach`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1 as pb;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info_span, warn, Instrument};

use super::table::{answer, Answer, DnsTable, QueryType};
use super::EMBEDDED_DNS_ADDR;

/// How long answers from the table may be cached: short, because task
/// addresses leave the table as soon as a task stops.
const LOCAL_TTL: u32 = 5;
/// How long one upstream server gets before the next one is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Failures of the embedded DNS server's set-up.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(
        "entering network namespace {netns} of task {task_id} to bind the DNS server: {source}"
    )]
    Netns {
        task_id: String,
        netns: PathBuf,
        source: flotilla_runtime::net::NetError,
    },
    #[error("binding DNS {proto} socket {addr} in the netns of task {task_id}: {source}")]
    Bind {
        task_id: String,
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("handing the DNS sockets of task {task_id} to tokio: {source}")]
    Register {
        task_id: String,
        source: std::io::Error,
    },
}

struct TaskSockets {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TaskSockets {
    fn drop(&mut self) {
        // Aborting the serving tasks drops their sockets, closing them.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The node's embedded DNS server (one per agent, cheap to clone).
#[derive(Clone)]
pub struct DnsServer {
    table: watch::Sender<Arc<DnsTable>>,
    default_upstream: Arc<Vec<SocketAddr>>,
    attached: Arc<Mutex<HashMap<String, TaskSockets>>>,
    listen: SocketAddrV4,
}

impl DnsServer {
    /// A server that forwards unknown names to `default_upstream` (the
    /// daemon's `dns_upstream`, or the host's non-loopback nameservers).
    pub fn new(default_upstream: Vec<SocketAddr>) -> DnsServer {
        Self::with_listen(default_upstream, SocketAddrV4::new(EMBEDDED_DNS_ADDR, 53))
    }

    /// As [`DnsServer::new`], binding `listen` in each netns instead of
    /// 127.0.0.11:53 (tests).
    pub fn with_listen(default_upstream: Vec<SocketAddr>, listen: SocketAddrV4) -> DnsServer {
        DnsServer {
            table: watch::Sender::new(Arc::new(DnsTable::default())),
            default_upstream: Arc::new(default_upstream),
            attached: Arc::new(Mutex::new(HashMap::new())),
            listen,
        }
    }

    /// Replaces the names with those of a new assignment set.
    pub fn update(&self, set: &pb::AssignmentSet) {
        self.table
            .send_replace(Arc::new(DnsTable::from_assignments(set)));
    }

    /// Replaces the names with a prepared table.
    pub fn set_table(&self, table: DnsTable) {
        self.table.send_replace(Arc::new(table));
    }

    /// Starts serving `task_id` inside the netns at `netns`. `upstream`
    /// (the service's `dns:` servers) replaces the default upstream for
    /// this task when non-empty. Re-attaching a task replaces its sockets.
    pub async fn attach(
        &self,
        task_id: &str,
        netns: &Path,
        upstream: Vec<SocketAddr>,
    ) -> Result<(), DnsError> {
        self.detach(task_id);
        let listen = SocketAddr::V4(self.listen);
        let (path, id) = (netns.to_path_buf(), task_id.to_string());
        let bound = tokio::task::spawn_blocking(move || {
            flotilla_runtime::net::netns::run_in(&path, || {
                let udp = std::net::UdpSocket::bind(listen).map_err(|e| ("udp", e))?;
                let tcp = std::net::TcpListener::bind(listen).map_err(|e| ("tcp", e))?;
                Ok::<_, (&'static str, std::io::Error)>((udp, tcp))
            })
        })
        .await
        .map_err(|e| DnsError::Register {
            task_id: id.clone(),
            source: std::io::Error::other(e),
        })?;
        let (udp, tcp) = bound
            .map_err(|source| DnsError::Netns {
                task_id: id.clone(),
                netns: netns.to_path_buf(),
                source,
            })?
            .map_err(|(proto, source)| DnsError::Bind {
                task_id: id.clone(),
                proto,
                addr: listen,
                source,
            })?;
        let register = |e| DnsError::Register {
            task_id: id.clone(),
            source: e,
        };
        udp.set_nonblocking(true).map_err(register)?;
        tcp.set_nonblocking(true).map_err(register)?;
        let udp = UdpSocket::from_std(udp).map_err(register)?;
        let tcp = TcpListener::from_std(tcp).map_err(register)?;

        let ctx = Arc::new(Ctx {
            task_id: id.clone(),
            table: self.table.subscribe(),
            upstream: if upstream.is_empty() {
                self.default_upstream.clone()
            } else {
                Arc::new(upstream)
            },
        });
        let span = info_span!("dns", task_id = %id);
        let tasks = vec![
            tokio::spawn(serve_udp(ctx.clone(), udp).instrument(span.clone())),
            tokio::spawn(serve_tcp(ctx, tcp).instrument(span)),
        ];
        if let Ok(mut m) = self.attached.lock() {
            m.insert(id, TaskSockets { tasks });
        }
        Ok(())
    }

    /// Stops serving `task_id` and closes its sockets (when its container
    /// is removed).
    pub fn detach(&self, task_id: &str) {
        if let Ok(mut m) = self.attached.lock() {
            m.remove(task_id);
        }
    }

    /// The tasks currently served.
    pub fn attached(&self) -> Vec<String> {
        self.attached
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

struct Ctx {
    task_id: String,
    table: watch::Receiver<Arc<DnsTable>>,
    upstream: Arc<Vec<SocketAddr>>,
}

async fn serve_udp(ctx: Arc<Ctx>, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "receiving a DNS question");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (ctx, sock) = (ctx.clone(), sock.clone());
        tokio::spawn(
            async move {
                if let Some(reply) = handle(&ctx, &query).await {
                    if let Err(e) = sock.send_to(&reply, peer).await {
                        debug!(error = %e, %peer, "sending a DNS answer");
                    }
                }
            }
            .in_current_span(),
        );
    }
}

async fn serve_tcp(ctx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(
            async move {
                loop {
                    let Ok(len) = conn.read_u16().await else {
                        return;
                    };
                    let mut q = vec![0u8; usize::from(len)];
                    if conn.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Some(reply) = handle(&ctx, &q).await else {
                        return;
                    };
                    let Ok(rlen) = u16::try_from(reply.len()) else {
                        return;
                    };
                    if conn.write_u16(rlen).await.is_err() || conn.write_all(&reply).await.is_err()
                    {
                        return;
                    }
                }
            }
            .in_current_span(),
        );
    }
}

/// One question in, the bytes of one answer out (None: drop it).
async fn handle(ctx: &Ctx, raw: &[u8]) -> Option<Vec<u8>> {
    let msg = match Message::from_vec(raw) {
        Ok(m) => m,
        Err(e) => {
            debug!(error = %e, "undecodable DNS question dropped");
            return None;
        }
    };
    let md = &msg.metadata;
    if md.message_type != MessageType::Query {
        return None;
    }
    let Some(q) = msg.queries.first().filter(|_| md.op_code == OpCode::Query) else {
        let mut r = Message::error_msg(md.id, md.op_code, ResponseCode::NotImp);
        r.queries = msg.queries.clone();
        return r.to_vec().ok();
    };
    let qtype = match q.query_type() {
        RecordType::A => QueryType::A,
        RecordType::AAAA => QueryType::Aaaa,
        _ => QueryType::Other,
    };
    let name = q.name().to_string();
    let table = ctx.table.borrow().clone();
    let decision = answer(&table, &ctx.task_id, &name, qtype);
    debug!(%name, ?qtype, ?decision, "DNS question");
    let mut r = Message::response(md.id, OpCode::Query);
    r.metadata.recursion_desired = md.recursion_desired;
    r.metadata.recursion_available = true;
    r.queries = vec![q.clone()];
    match decision {
        Answer::Local(ips) => {
            r.metadata.authoritative = true;
            for ip in ips {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                r.answers
                    .push(Record::from_rdata(q.name().clone(), LOCAL_TTL, rdata));
            }
        }
        Answer::NotVisible => r.metadata.response_code = ResponseCode::NXDomain,
        Answer::Forward => match forward(&ctx.upstream, raw).await {
            Some(reply) => return Some(reply),
            None => r.metadata.response_code = ResponseCode::ServFail,
        },
    }
    match r.to_vec() {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(error = %e, %name, "encoding a DNS answer");
            None
        }
    }
}

/// Asks each upstream in turn over UDP; the first reply wins, passed back
/// unchanged (same id, so the container's resolver accepts it).
async fn forward(upstream: &[SocketAddr], raw: &[u8]) -> Option<Vec<u8>> {
    for server in upstream {
        let bind: SocketAddr = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let attempt = async {
            let sock = UdpSocket::bind(bind).await?;
            sock.connect(server).await?;
            sock.send(raw).await?;
            let mut buf = vec![0u8; 4096];
            let n = sock.recv(&mut buf).await?;
            buf.truncate(n);
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Ok(reply)) => return Some(reply),
            Ok(Err(e)) => debug!(%server, error = %e, "upstream DNS server failed"),
            Err(_) => debug!(%server, "upstream DNS server timed out"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    //! Real sockets in a real network namespace (needs root).
    use super::*;
    use flotilla_runtime::net::netns;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    struct NsGuard(PathBuf, String);
    impl Drop for NsGuard {
        fn drop(&mut self) {
            let _ = netns::remove(&self.0, &self.1);
        }
    }

    fn assignments() -> pb::AssignmentSet {
        let att = |net: &str, a: &str| pb::NetworkAttachment {
            network_id: net.into(),
            addresses: vec![a.into()],
            ..Default::default()
        };
        let running = Some(pb::TaskStatus {
            state: pb::TaskState::Running as i32,
            ..Default::default()
        });
        let svc = |name: &str, net: &str, vip: &str| pb::Service {
            id: format!("s_{name}"),
            stack: "s".into(),
            spec: Some(pb::ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            vips: vec![pb::EndpointAddress {
                network_id: net.into(),
                address: vip.into(),
            }],
            ..Default::default()
        };
        let task = |id: &str, name: &str, net: &str, a: &str| pb::Task {
            id: id.into(),
            stack: "s".into(),
            service_id: format!("s_{name}"),
            slot: 1,
            name: format!("s-{name}-1"),
            status: running.clone(),
            networks: vec![att(net, a)],
            ..Default::default()
        };
        pb::AssignmentSet {
            services: vec![
                svc("web", "s_a", "10.9.0.2/24"),
                svc("hidden", "s_b", "10.8.0.2/24"),
            ],
            tasks: vec![task("t1", "web", "s_a", "10.9.0.10/24")],
            peers: vec![task("t2", "hidden", "s_b", "10.8.0.10/24")],
            ..Default::default()
        }
    }

    fn question(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.queries
            .push(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn ips(reply: &[u8]) -> (ResponseCode, Vec<IpAddr>) {
        let m = Message::from_vec(reply).unwrap();
        let ips = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect();
        (m.metadata.response_code, ips)
    }

    /// A one-answer upstream on the host's loopback: every A question gets
    /// 192.0.2.77.
    async fn fake_upstream() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.queries = q.queries.clone();
                r.answers.push(Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(A([192, 0, 2, 77].into())),
                ));
                let _ = sock.send_to(&r.to_vec().unwrap(), peer).await;
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_inside_the_container_netns_and_forwards_unknown_names() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("dnst{}", std::process::id());
        let ns = netns::create(dir.path(), &name).unwrap();
        let _guard = NsGuard(dir.path().to_path_buf(), name);

        let upstream = fake_upstream().await;
        let server = DnsServer::new(vec![upstream]);
        server.update(&assignments());
        server.attach("t1", &ns, vec![]).await.unwrap();

        let ns2 = ns.clone();
        let results = tokio::task::spawn_blocking(move || {
            netns::run_in(&ns2, || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut out = Vec::new();
                for (i, q) in ["web", "s-web-1.", "hidden", "example.test"]
                    .iter()
                    .enumerate()
                {
                    s.send_to(&question(i as u16, q), "127.0.0.11:53").unwrap();
                    let mut buf = [0u8; 4096];
                    let n = s.recv(&mut buf).unwrap();
                    out.push(ips(&buf[..n]));
                }
                // One question over TCP.
                let mut c = std::net::TcpStream::connect("127.0.0.11:53").unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                use std::io::{Read, Write};
                let q = question(9, "web.s");
                c.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
                c.write_all(&q).unwrap();
                let mut len = [0u8; 2];
                c.read_exact(&mut len).unwrap();
                let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
                c.read_exact(&mut r).unwrap();
                out.push(ips(&r));
                out
            })
            .unwrap()
        })
        .await
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            results,
            vec![
                (ResponseCode::NoError, vec![ip("10.9.0.2")]),
                (ResponseCode::NoError, vec![ip("10.9.0.10")]),
                (ResponseCode::NXDomain, vec![]),
                (ResponseCode::NoError, vec![ip("192.0.2.77")]),
                (ResponseCode::NoError, vec![ip("10.9.0.2")]),
            ]
        );

        // Detaching closes the sockets: the address can be bound again.
        server.detach("t1");
        assert!(server.attached().is_empty());
        let ns3 = ns.clone();
        let rebound = tokio::task::spawn_blocking(move || {
            netns::run_in(&ns3, || {
                (0..100).any(|_| {
                    let ok = std::net::UdpSocket::bind("127.0.0.11:53").is_ok();
                    if !ok {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    ok
                })
            })
            .unwrap()
        })
        .await
        .unwrap();
        assert!(rebound, "127.0.0.11:53 still bound after detach");
    }
}
