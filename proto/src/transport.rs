//! How Flotilla endpoints are named and reached: `unix:///path/to.sock` for
//! the local daemon and agents on the same host, `http://HOST:PORT` for TCP.
//!
//! Every crate opens gRPC channels and listeners through here, so the address
//! syntax and the unix-socket plumbing exist once. Never put policy (retries,
//! TLS material choice) here: callers decide.

use std::path::{Path, PathBuf};
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

/// A parsed endpoint address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A unix socket path.
    Unix(PathBuf),
    /// `http://host:port` (TLS is layered on by the caller later).
    Tcp(String),
}

/// Errors reaching or binding an endpoint.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("invalid endpoint address {addr:?}: expected unix:///path or http://host:port")]
    BadAddress { addr: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("binding unix socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Addr {
    /// Parses `unix:///p`, `unix:p`, a bare absolute path, `http://h:p` or
    /// `tcp://h:p`.
    pub fn parse(s: &str) -> Result<Self, TransportError> {
        if let Some(p) = s.strip_prefix("unix://") {
            return Ok(Addr::Unix(PathBuf::from(p)));
        }
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Addr::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(Addr::Unix(PathBuf::from(s)));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            return Ok(Addr::Tcp(format!("http://{rest}")));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Addr::Tcp(s.to_string()));
        }
        Err(TransportError::BadAddress {
            addr: s.to_string(),
        })
    }

    /// The address written back in its canonical form.
    pub fn to_uri(&self) -> String {
        match self {
            Addr::Unix(p) => format!("unix://{}", p.display()),
            Addr::Tcp(u) => u.clone(),
        }
    }
}

/// Opens a channel to `addr` (connects eagerly, so a dead peer is an error
/// here rather than on the first call).
pub async fn connect(addr: &str) -> Result<Channel, TransportError> {
    match Addr::parse(addr)? {
        Addr::Unix(path) => {
            // The URI is ignored by the connector; tonic only needs a valid one.
            let endpoint = Endpoint::from_static("http://[::1]:1");
            let path2 = path.clone();
            endpoint
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path2.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|source| TransportError::Connect {
                    addr: addr.to_string(),
                    source,
                })
        }
        Addr::Tcp(uri) => {
            let endpoint =
                Endpoint::from_shared(uri.clone()).map_err(|_| TransportError::BadAddress {
                    addr: addr.to_string(),
                })?;
            endpoint
                .connect()
                .await
                .map_err(|source| TransportError::Connect {
                    addr: addr.to_string(),
                    source,
                })
        }
    }
}

/// Binds a unix socket only root can use (mode 0600), replacing a stale
/// socket file left by a process that died.
pub fn bind_unix(
    path: &Path,
) -> Result<tokio_stream::wrappers::UnixListenerStream, TransportError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| TransportError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(tokio_stream::wrappers::UnixListenerStream::new(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            Addr::parse("unix:///run/flotilla/flotilla.sock").unwrap(),
            Addr::Unix("/run/flotilla/flotilla.sock".into())
        );
        assert_eq!(
            Addr::parse("/tmp/x.sock").unwrap(),
            Addr::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            Addr::parse("tcp://10.0.0.1:4242").unwrap(),
            Addr::Tcp("http://10.0.0.1:4242".into())
        );
        assert!(Addr::parse("ftp://x").is_err());
    }
}
