//! The cluster's certificate authority and the nodes' certificates
//! (rcgen): `cluster init` creates the CA; a node generates its own key and
//! a signing request, and the CA signs it at join. Node certificates serve
//! both as TLS server and client certificates (mutual TLS between managers
//! and between managers and agents).
//!
//! Files (PEM) in the cluster directory, keys 0600: `ca.pem`,
//! `ca-key.pem` (managers only), `node.pem`, `node-key.pem`.
//! This module must never write a key with wider permissions, and never put
//! the CA key anywhere but a manager's own directory.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest as _, Sha256};

/// The DNS name every node certificate carries. Peers are dialled by
/// address, so TLS checks this fixed name; trust comes from the cluster CA.
pub const NODE_SERVER_NAME: &str = "node.flotilla.internal";
/// How long a node certificate is valid.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node-key.pem";

/// Errors of the CA and certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{what}: {source}")]
    Rcgen {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: not a PEM certificate")]
    BadPem { what: &'static str },
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { what, source }
}

/// The role a node certificate grants (its OU, as in Swarm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Manager,
    Worker,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Manager => "flotilla-manager",
            NodeRole::Worker => "flotilla-worker",
        }
    }
}

/// SHA-256 (hex) of the DER of the first certificate in `pem`: what join
/// tokens pin.
pub fn cert_digest(pem: &str) -> Result<String, CaError> {
    let der = first_der(pem).ok_or(CaError::BadPem {
        what: "computing the CA digest",
    })?;
    Ok(hex::encode(Sha256::digest(&der)))
}

/// The DER of the first `CERTIFICATE` block of `pem`.
pub fn first_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The cluster CA: its certificate and signing key.
pub struct ClusterCa {
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA (ECDSA P-256), valid 20 years.
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, CaError> {
        let key = KeyPair::generate().map_err(rc("generating the CA key"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rc("CA parameters"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "flotilla cluster CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster_id);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now() - time::Duration::hours(1);
        params.not_after = now() + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(rc("self-signing the CA"))?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<ClusterCa, CaError> {
        Ok(ClusterCa {
            cert_pem: read(&dir.join(CA_CERT_FILE))?,
            key_pem: read(&dir.join(CA_KEY_FILE))?,
        })
    }

    /// From PEMs (a joining manager receives them).
    pub fn from_pem(cert_pem: String, key_pem: String) -> ClusterCa {
        ClusterCa { cert_pem, key_pem }
    }

    /// Writes `ca.pem` (0644) and `ca-key.pem` (0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        write(&dir.join(CA_CERT_FILE), &self.cert_pem, 0o644)?;
        write(&dir.join(CA_KEY_FILE), &self.key_pem, 0o600)
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 of the CA certificate (what tokens pin).
    pub fn digest(&self) -> Result<String, CaError> {
        cert_digest(&self.cert_pem)
    }

    /// Signs a node's CSR: subject CN = `node_id`, OU = the role, the fixed
    /// server name, server and client auth, valid
    /// [`NODE_CERT_VALIDITY`]. Whatever else the CSR asks for is ignored.
    pub fn issue(&self, csr_pem: &str, node_id: &str, role: NodeRole) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(rc("reading the node's signing request"))?;
        let key = KeyPair::from_pem(&self.key_pem).map_err(rc("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(rc("reading the CA"))?;
        let mut params = CertificateParams::new(vec![NODE_SERVER_NAME.to_string()])
            .map_err(rc("node certificate parameters"))?;
        params.distinguished_name.push(DnType::CommonName, node_id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params.subject_alt_names.push(SanType::DnsName(
            format!("{node_id}.{NODE_SERVER_NAME}")
                .try_into()
                .map_err(rc("node name"))?,
        ));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now() - time::Duration::minutes(5);
        params.not_after = now() + NODE_CERT_VALIDITY;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&issuer)
        .map_err(rc("signing the node certificate"))?;
        Ok(signed.pem())
    }

    /// Issues this manager's own certificate (at `cluster init`).
    pub fn issue_self(&self, node_id: &str, role: NodeRole) -> Result<NodeIdentity, CaError> {
        let (key_pem, csr_pem) = new_key_and_csr(node_id)?;
        let cert_pem = self.issue(&csr_pem, node_id, role)?;
        Ok(NodeIdentity {
            cert_pem,
            key_pem,
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// A new node key and a CSR for it (the key never leaves the node).
pub fn new_key_and_csr(node_id: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(rc("generating the node key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("CSR parameters"))?;
    params.distinguished_name.push(DnType::CommonName, node_id);
    let csr = params
        .serialize_request(&key)
        .map_err(rc("creating the signing request"))?;
    let csr_pem = csr.pem().map_err(rc("encoding the signing request"))?;
    Ok((key.serialize_pem(), csr_pem))
}

/// A node's TLS identity: its certificate, key and the cluster CA.
#[derive(Clone)]
pub struct NodeIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity").finish_non_exhaustive()
    }
}

impl NodeIdentity {
    pub fn load(dir: &Path) -> Result<NodeIdentity, CaError> {
        Ok(NodeIdentity {
            cert_pem: read(&dir.join(NODE_CERT_FILE))?,
            key_pem: read(&dir.join(NODE_KEY_FILE))?,
            ca_pem: read(&dir.join(CA_CERT_FILE))?,
        })
    }

    /// Writes `node.pem`, `node-key.pem` (0600) and `ca.pem`.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        write(&dir.join(NODE_CERT_FILE), &self.cert_pem, 0o644)?;
        write(&dir.join(NODE_KEY_FILE), &self.key_pem, 0o600)?;
        write(&dir.join(CA_CERT_FILE), &self.ca_pem, 0o644)
    }

    /// Server side of mutual TLS: presents the node certificate followed by
    /// the CA (so a joiner can pin the CA from the handshake), verifies
    /// client certificates against the CA. Client certificates are
    /// optional at the TLS layer only so `Cluster.Join` can be reached
    /// before a node has one; every other RPC checks for one
    /// ([`require_peer_cert`]).
    pub fn server_tls(&self) -> tonic::transport::ServerTlsConfig {
        let chain = format!("{}\n{}", self.cert_pem.trim_end(), self.ca_pem);
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(chain, &self.key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// Client side for the Raft transport and agents.
    pub fn peer_tls(&self) -> crate::raft::transport::PeerTls {
        crate::raft::transport::PeerTls {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            server_name: NODE_SERVER_NAME.to_string(),
        }
    }
}

/// Refuses a request that came without a client certificate (the TLS layer
/// already checked that any certificate given chains to the cluster CA).
/// Requests over a unix socket (no TLS at all) pass: the socket's
/// permissions guard them.
pub fn require_peer_cert<T>(req: &tonic::Request<T>) -> Result<(), tonic::Status> {
    let over_tcp = req.remote_addr().is_some();
    if !over_tcp {
        return Ok(());
    }
    match req.peer_certs() {
        Some(c) if !c.is_empty() => Ok(()),
        _ => Err(tonic::Status::unauthenticated(
            "this call needs a node certificate of the cluster (mutual TLS)",
        )),
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `text` to `path` with `mode`, replacing it atomically.
pub(crate) fn write(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| CaError::Io { what, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating"))?;
    f.write_all(text.as_bytes()).map_err(io("writing"))?;
    f.sync_all().map_err(io("syncing"))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into place"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_signs_a_node_csr_and_keys_are_private() {
        let ca = ClusterCa::generate("c1").unwrap();
        let (key, csr) = new_key_and_csr("n1").unwrap();
        let cert = ca.issue(&csr, "n1", NodeRole::Manager).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"));
        assert_ne!(cert_digest(&cert).unwrap(), ca.digest().unwrap());
        assert_eq!(ca.digest().unwrap().len(), 64);
        let dir = tempfile::tempdir().unwrap();
        ca.save(dir.path()).unwrap();
        let id = NodeIdentity {
            cert_pem: cert,
            key_pem: key,
            ca_pem: ca.cert_pem.clone(),
        };
        id.save(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        for f in [CA_KEY_FILE, NODE_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let back = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(back.digest().unwrap(), ca.digest().unwrap());
    }

    #[test]
    fn a_forged_csr_is_refused() {
        let ca = ClusterCa::generate("c1").unwrap();
        let (_, csr) = new_key_and_csr("n1").unwrap();
        // Flip one character of the last base64 line: the signature.
        let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
        let last = lines.len() - 2;
        let mut chars: Vec<char> = lines[last].chars().collect();
        chars[4] = if chars[4] == 'A' { 'B' } else { 'A' };
        lines[last] = chars.into_iter().collect();
        let broken = lines.join("\n");
        assert!(ca.issue(&broken, "n1", NodeRole::Worker).is_err());
    }
}
