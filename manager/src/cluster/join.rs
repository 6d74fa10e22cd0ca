//! The joiner's side of `cluster join`: connect to a manager over TLS,
//! accept its certificate only if its chain carries the CA the token pins
//! (checked during the handshake, before any byte of the request is sent),
//! then send the token's secret and a CSR and receive the node certificate.
//!
//! This module must never send the token over a connection whose CA was
//! not verified against the token's digest.

use std::sync::{Arc, Mutex};

use flotilla_proto::v1::cluster_client::ClusterClient;
use flotilla_proto::v1::{JoinRequest, JoinResponse, JoinRole};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest as _, Sha256};
use tonic::transport::{Channel, Endpoint};

use super::ca::{new_key_and_csr, NodeIdentity, NODE_SERVER_NAME};
use super::token::{JoinToken, TokenError};

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the join token: {0}")]
    Token(#[from] TokenError),
    #[error("connecting to the manager at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("the manager at {addr} refused the join: {status}")]
    Refused { addr: String, status: tonic::Status },
    #[error("creating the node key: {0}")]
    Key(#[from] super::ca::CaError),
}

/// Accepts a server whose chain includes a CA certificate with the pinned
/// digest and whose own certificate that CA signed.
#[derive(Debug)]
struct PinnedCa {
    digest: String,
    provider: Arc<CryptoProvider>,
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.digest)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the manager's certificate authority does not match the join token's CA digest"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("building the verifier: {e}")))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        if let Ok(mut f) = self.found.lock() {
            *f = Some(ca.clone().into_owned());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A gRPC channel to `addr` (host:port) whose server must present the CA
/// with `ca_digest`.
pub async fn connect_pinned(addr: &str, ca_digest: &str) -> Result<Channel, JoinError> {
    let connect_err = |message: String| JoinError::Connect {
        addr: addr.to_string(),
        message,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa {
        digest: ca_digest.to_string(),
        provider: provider.clone(),
        found: Mutex::new(None),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| connect_err(format!("TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let target = addr.to_string();
    let connector = tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
        let config = config.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            let name = ServerName::try_from(NODE_SERVER_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| connect_err(e.to_string()))?
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            use std::error::Error as _;
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            connect_err(msg)
        })
}

/// What a successful join gives the new node.
#[derive(Debug)]
pub struct Joined {
    pub identity: NodeIdentity,
    pub response: JoinResponse,
}

impl Joined {
    pub fn role(&self) -> JoinRole {
        JoinRole::try_from(self.response.role).unwrap_or(JoinRole::Worker)
    }
}

/// Marker in a follower's refusal of a manager join; the leader's address
/// follows it.
pub const LEADER_HINT: &str = "join through the leader at ";

/// [`join`], following a follower's hint to the leader (managers join
/// through the leader, which changes the Raft configuration) up to 3 times.
pub async fn join_via_leader(
    addr: &str,
    token: &str,
    raft_id: u64,
    advertise_addr: &str,
    hostname: &str,
) -> Result<Joined, JoinError> {
    let mut target = addr.to_string();
    let mut hops = 0;
    loop {
        match join(&target, token, raft_id, advertise_addr, hostname).await {
            Err(JoinError::Refused { status, .. })
                if hops < 3 && status.code() == tonic::Code::Unavailable =>
            {
                let hint = status
                    .message()
                    .split_once(LEADER_HINT)
                    .map(|(_, a)| a.trim().to_string())
                    .filter(|a| !a.is_empty());
                let Some(next) = hint else {
                    return Err(JoinError::Refused {
                        addr: target,
                        status,
                    });
                };
                target = next;
                hops += 1;
            }
            r => return r,
        }
    }
}

/// Joins the cluster of the manager at `addr` with `token`: pins the CA,
/// sends a CSR for a fresh key (the manager names the node), returns the signed identity and the
/// manager's answer (members, and for managers the CA key and secrets).
pub async fn join(
    addr: &str,
    token: &str,
    raft_id: u64,
    advertise_addr: &str,
    hostname: &str,
) -> Result<Joined, JoinError> {
    let token = JoinToken::parse(token)?;
    let channel = connect_pinned(addr, &token.ca_digest).await?;
    let (key_pem, csr_pem) = new_key_and_csr("joining-node")?;
    let response = ClusterClient::new(channel)
        .join(JoinRequest {
            token: token.to_string(),
            csr_pem,
            raft_id,
            advertise_addr: advertise_addr.to_string(),
            hostname: hostname.to_string(),
        })
        .await
        .map_err(|status| JoinError::Refused {
            addr: addr.to_string(),
            status,
        })?
        .into_inner();
    Ok(Joined {
        identity: NodeIdentity {
            cert_pem: response.cert_pem.clone(),
            key_pem,
            ca_pem: response.ca_pem.clone(),
        },
        response,
    })
}
