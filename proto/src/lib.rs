//! Flotilla's object model and gRPC services, generated from `proto/`.
//!
//! These generated types *are* the cluster's model: they are stored in Raft,
//! sent on the wire and used by every crate. Never write a parallel
//! hand-written copy of them; add helpers here instead.
//!
//! This crate must never do I/O beyond opening gRPC connections and
//! listeners ([`transport`]), so every crate reaches a peer the same way.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

pub use v1::*;

pub mod transport;
mod util;
