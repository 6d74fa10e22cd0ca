//! The demo's one error type.
//!
//! Hand-written instead of `thiserror` so the binary stays std-only; every
//! message says what was being done and to what. Never used for control flow
//! that is not an error (a missing key is a 404, not an `Error`).

use std::fmt;
use std::io;

/// Everything that can go wrong in the demo's HTTP, resolver and role code.
#[derive(Debug)]
pub enum Error {
    /// An I/O operation failed; `what` names the operation and its target.
    Io { what: String, source: io::Error },
    /// A peer sent HTTP we do not accept (malformed, too large, unsupported).
    Http(String),
    /// A URL given on the command line or in the environment is unusable.
    BadUrl { url: String, reason: String },
    /// A DNS name could not be encoded, or a DNS reply could not be decoded.
    Dns(String),
    /// No address could be found for a host name.
    Resolve { host: String, reason: String },
    /// A command-line argument or environment variable is unusable.
    Usage(String),
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Http(msg) => write!(f, "bad HTTP message: {msg}"),
            Error::BadUrl { url, reason } => write!(f, "bad URL {url:?}: {reason}"),
            Error::Dns(msg) => write!(f, "DNS: {msg}"),
            Error::Resolve { host, reason } => write!(f, "cannot resolve host {host:?}: {reason}"),
            Error::Usage(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
