//! Raft over the network: the gRPC `RaftTransport` service (one
//! client-streaming `Send` per peer connection carrying encoded raft-rs
//! messages) and the `RaftPeer` service (a follower forwards proposals to
//! the leader).
//!
//! Client side ([`GrpcTransport`]): one tokio task per peer owns a bounded
//! queue and a long-lived stream; when the stream breaks it reports the peer
//! unreachable to raft-rs and reconnects with a back-off. Raft tolerates
//! lost messages, so a full queue drops (never blocks the Raft loop).
//! Snapshots go on a stream of their own so their delivery can be reported
//! to raft-rs (`report_snapshot`), which otherwise would wait forever.
//!
//! Forwarding (the choice documented for issue 7): a follower's
//! [`StoreHandle::propose`] forwards the batch to the leader over
//! `RaftPeer.Propose`; the leader answers once applied, the follower then
//! waits until it applied the entry too. Callers see one `propose` that
//! works on any manager.
//!
//! With TLS configured ([`PeerTls`]) every connection is mutual TLS against
//! the cluster CA; this module must never fall back to plaintext when TLS
//! was asked for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flotilla_proto::v1::raft_peer_client::RaftPeerClient;
use flotilla_proto::v1::raft_peer_server::{RaftPeer, RaftPeerServer};
use flotilla_proto::v1::raft_transport_client::RaftTransportClient;
use flotilla_proto::v1::raft_transport_server::{
    RaftTransport as RaftTransportRpc, RaftTransportServer,
};
use flotilla_proto::v1::{
    PeerProposeRequest, PeerProposeResponse, RaftEnvelope, RaftSendResponse, StoreBatch,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

use super::{
    ForwardFuture, ProposeError, ProposeForwarder, RaftTransport, StoreHandle, WeakStoreHandle,
};

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// A forwarded proposal gives up after this long.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Client-side TLS: the cluster CA (trusted) and this node's certificate
/// and key (presented), all PEM.
#[derive(Clone)]
pub struct PeerTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The name peers' certificates are issued for (checked as the server
    /// name, since peers are dialled by address).
    pub server_name: String,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.server_name.clone())
    }
}

struct PeerLink {
    addr: String,
    tx: mpsc::Sender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

/// The gRPC client side of Raft: implements [`RaftTransport`] (messages to
/// peers) and [`ProposeForwarder`] (proposals to the leader).
pub struct GrpcTransport {
    rt: tokio::runtime::Handle,
    links: Mutex<HashMap<u64, PeerLink>>,
    handle: Arc<OnceLock<WeakStoreHandle>>,
    tls: Mutex<Option<PeerTls>>,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: Vec<(u64, String)> = self
            .links
            .lock()
            .map(|l| l.iter().map(|(k, v)| (*k, v.addr.clone())).collect())
            .unwrap_or_default();
        f.debug_struct("GrpcTransport")
            .field("peers", &peers)
            .field(
                "tls",
                &self.tls.lock().map(|t| t.is_some()).unwrap_or(false),
            )
            .finish()
    }
}

impl GrpcTransport {
    /// A transport whose tasks run on the current tokio runtime. Must be
    /// called inside a runtime.
    pub fn new(tls: Option<PeerTls>) -> Arc<GrpcTransport> {
        Arc::new(GrpcTransport {
            rt: tokio::runtime::Handle::current(),
            links: Mutex::new(HashMap::new()),
            handle: Arc::new(OnceLock::new()),
            tls: Mutex::new(tls),
        })
    }

    /// Switches to mutual TLS (after `cluster init` or `join` gave this
    /// node its certificate). Existing links reconnect with it.
    pub fn set_tls(&self, tls: PeerTls) {
        if let Ok(mut t) = self.tls.lock() {
            *t = Some(tls);
        }
        let peers = self.peers();
        if let Ok(mut links) = self.links.lock() {
            for (_, l) in links.drain() {
                l.task.abort();
            }
        }
        for (id, addr) in peers {
            self.set_peer(id, Some(&addr));
        }
    }

    /// The peers it knows (raft id → address).
    pub fn peers(&self) -> HashMap<u64, String> {
        self.links
            .lock()
            .map(|l| l.iter().map(|(k, v)| (*k, v.addr.clone())).collect())
            .unwrap_or_default()
    }

    fn addr_of(&self, id: u64) -> Option<String> {
        self.links
            .lock()
            .ok()
            .and_then(|l| l.get(&id).map(|p| p.addr.clone()))
    }

    /// Builds a channel to `addr` (host:port), TLS if configured.
    fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        let tls = self.tls.lock().ok().and_then(|t| t.clone());
        endpoint(addr, tls.as_ref())
    }
}

fn endpoint(addr: &str, tls: Option<&PeerTls>) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2));
    if let Some(t) = tls {
        ep = ep.tls_config(t.client_config())?;
    }
    Ok(ep)
}

/// One peer's sender: connect, stream until it breaks, report, back off,
/// reconnect. Ends when the link is dropped (the queue closes).
async fn peer_loop(
    to: u64,
    ep: Endpoint,
    mut rx: mpsc::Receiver<Vec<u8>>,
    handle: Arc<OnceLock<WeakStoreHandle>>,
) {
    loop {
        let channel = match ep.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(to, "connecting to raft peer {}: {e}", ep.uri());
                if let Some(h) = handle.get() {
                    h.report_unreachable(to);
                }
                // Drop what queued meanwhile: stale messages only confuse.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(RECONNECT_BACKOFF).await;
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        let (tx2, rx2) = mpsc::channel::<Vec<u8>>(QUEUE);
        let outbound = ReceiverStream::new(rx2).map(|message| RaftEnvelope { message });
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let call = client.send(Request::new(outbound));
        tokio::pin!(call);
        let closed = loop {
            tokio::select! {
                r = &mut call => {
                    if let Err(e) = r {
                        tracing::debug!(to, "raft stream to {} ended: {e}", ep.uri());
                    }
                    break false;
                }
                m = rx.recv() => match m {
                    Some(m) => {
                        if tx2.send(m).await.is_err() {
                            break false;
                        }
                    }
                    None => break true,
                }
            }
        };
        if closed {
            return;
        }
        if let Some(h) = handle.get() {
            h.report_unreachable(to);
        }
        tokio::time::sleep(RECONNECT_BACKOFF).await;
    }
}

impl RaftTransport for GrpcTransport {
    fn send(&self, to: u64, message: Vec<u8>) {
        let Ok(links) = self.links.lock() else {
            return;
        };
        let Some(link) = links.get(&to) else {
            tracing::trace!(to, "no address for raft peer; dropping a message");
            return;
        };
        if link.tx.try_send(message).is_err() {
            tracing::debug!(to, "raft queue full or closed; dropping a message");
            if let Some(h) = self.handle.get() {
                h.report_unreachable(to);
            }
        }
    }

    fn send_snapshot(&self, to: u64, message: Vec<u8>) {
        let Some(addr) = self.addr_of(to) else {
            if let Some(h) = self.handle.get() {
                h.report_snapshot(to, false);
            }
            return;
        };
        let ep = self.endpoint(&addr);
        let handle = self.handle.clone();
        self.rt.spawn(async move {
            let ok = async {
                let ep = ep.map_err(|e| e.to_string())?;
                let ch = ep.connect().await.map_err(|e| e.to_string())?;
                let mut client = RaftTransportClient::new(ch)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
                let one = tokio_stream::once(RaftEnvelope { message });
                client
                    .send(Request::new(one))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            }
            .await;
            if let Err(e) = &ok {
                tracing::debug!(to, "sending a snapshot to {addr}: {e}");
            }
            if let Some(h) = handle.get() {
                h.report_snapshot(to, ok.is_ok());
            }
        });
    }

    fn set_peer(&self, id: u64, addr: Option<&str>) {
        let Ok(mut links) = self.links.lock() else {
            return;
        };
        if let Some(h) = self.handle.get() {
            if h.raft_id() == id {
                return;
            }
        }
        match addr {
            None => {
                if let Some(old) = links.remove(&id) {
                    old.task.abort();
                }
            }
            Some(addr) => {
                if links.get(&id).is_some_and(|l| l.addr == addr) {
                    return;
                }
                let ep = match self.endpoint(addr) {
                    Ok(ep) => ep,
                    Err(e) => {
                        tracing::warn!(id, "bad address {addr:?} for raft peer: {e}");
                        return;
                    }
                };
                let (tx, rx) = mpsc::channel(QUEUE);
                let task = self.rt.spawn(peer_loop(id, ep, rx, self.handle.clone()));
                if let Some(old) = links.insert(
                    id,
                    PeerLink {
                        addr: addr.to_string(),
                        tx,
                        task,
                    },
                ) {
                    old.task.abort();
                }
            }
        }
    }

    fn attach(&self, handle: &StoreHandle) {
        let _ = self.handle.set(handle.downgrade());
        // A link to ourselves (our own address came with the peer list) is
        // useless.
        if let Ok(mut links) = self.links.lock() {
            if let Some(own) = links.remove(&handle.raft_id()) {
                own.task.abort();
            }
        }
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        if let Ok(links) = self.links.lock() {
            for l in links.values() {
                l.task.abort();
            }
        }
    }
}

impl ProposeForwarder for GrpcTransport {
    fn forward(&self, leader: u64, batch: StoreBatch) -> ForwardFuture {
        let raft_id = self.handle.get().map_or(0, |h| h.raft_id());
        let not_leader = move || ProposeError::NotLeader {
            raft_id,
            leader_id: None,
        };
        let ep = self.addr_of(leader).map(|a| self.endpoint(&a));
        Box::pin(async move {
            let Some(ep) = ep else {
                return Err(not_leader());
            };
            let ep = ep.map_err(|e| ProposeError::Dropped(format!("leader address: {e}")))?;
            let ch: Channel = ep
                .connect()
                .await
                .map_err(|e| ProposeError::Dropped(format!("connecting to the leader: {e}")))?;
            let mut client = RaftPeerClient::new(ch)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let req = PeerProposeRequest {
                batch: batch.encode_to_vec(),
            };
            let resp = tokio::time::timeout(FORWARD_TIMEOUT, client.propose(req))
                .await
                .map_err(|_| ProposeError::Dropped("the leader did not answer in time".into()))?
                .map_err(|e| ProposeError::Dropped(format!("forwarding to the leader: {e}")))?
                .into_inner();
            if resp.not_leader {
                return Err(not_leader());
            }
            if resp.refused {
                return Err(ProposeError::Dropped(format!(
                    "refused by the leader: {}",
                    resp.error
                )));
            }
            if !resp.error.is_empty() {
                return Err(ProposeError::Dropped(resp.error));
            }
            Ok(resp.index)
        })
    }
}

/// The server side: hands incoming Raft messages to the node, and serves
/// forwarded proposals when this node leads.
#[derive(Clone, Debug)]
pub struct RaftServices {
    handle: StoreHandle,
    require_cert: bool,
}

impl RaftServices {
    /// Without client-certificate checks (plain TCP, e.g. loopback tests).
    pub fn new(handle: StoreHandle) -> Self {
        Self {
            handle,
            require_cert: false,
        }
    }

    /// Refuses every call over TCP that did not present a certificate of
    /// the cluster CA (the server's TLS layer verifies the chain; client
    /// certificates are optional there only for `Cluster.Join`).
    pub fn with_mutual_tls(handle: StoreHandle) -> Self {
        Self {
            handle,
            require_cert: true,
        }
    }

    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.require_cert {
            crate::cluster::ca::require_peer_cert(req)?;
        }
        Ok(())
    }

    /// The `RaftTransport` service, for a tonic server.
    pub fn transport_service(&self) -> RaftTransportServer<RaftServices> {
        RaftTransportServer::new(self.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// The `RaftPeer` service, for a tonic server.
    pub fn peer_service(&self) -> RaftPeerServer<RaftServices> {
        RaftPeerServer::new(self.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl RaftTransportRpc for RaftServices {
    async fn send(
        &self,
        request: Request<tonic::Streaming<RaftEnvelope>>,
    ) -> Result<Response<RaftSendResponse>, Status> {
        self.check(&request)?;
        let mut stream = request.into_inner();
        while let Some(env) = stream.next().await {
            let env = env?;
            if let Err(e) = self.handle.step(&env.message) {
                match e {
                    super::RaftError::Stopped => {
                        return Err(Status::unavailable("the raft node has stopped"))
                    }
                    e => tracing::debug!("dropping a raft message: {e}"),
                }
            }
        }
        Ok(Response::new(RaftSendResponse {}))
    }
}

#[tonic::async_trait]
impl RaftPeer for RaftServices {
    async fn propose(
        &self,
        request: Request<PeerProposeRequest>,
    ) -> Result<Response<PeerProposeResponse>, Status> {
        self.check(&request)?;
        let batch = StoreBatch::decode(request.into_inner().batch.as_ref())
            .map_err(|e| Status::invalid_argument(format!("decoding the batch: {e}")))?;
        let resp = match self.handle.propose_local(batch).await {
            Ok(index) => PeerProposeResponse {
                index,
                ..Default::default()
            },
            Err(ProposeError::NotLeader { .. }) => PeerProposeResponse {
                not_leader: true,
                error: "not the leader".into(),
                ..Default::default()
            },
            Err(e @ ProposeError::Refused(_)) => PeerProposeResponse {
                refused: true,
                error: e.to_string(),
                ..Default::default()
            },
            Err(e) => PeerProposeResponse {
                error: e.to_string(),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }
}
