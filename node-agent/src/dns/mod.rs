//! Embedded DNS for containers: the names a container may look up and what
//! its `/etc/resolv.conf` says.
//!
//! The decision is pure and lives in [`table`]: a [`DnsTable`] built from
//! the node's latest `AssignmentSet` and [`answer`], which says, for one
//! asking task and one question, whether the answer is local (and which
//! addresses), a name that exists but is not visible to the asker, or a
//! name to forward upstream. [`conf`] holds the resolv.conf side: which
//! upstream servers the daemon forwards to by default and the file each
//! container gets. [`server`] is the thin I/O shell around them.
//!
//! This module must never do I/O in the decision path, never answer a name
//! from a network the asking container is not attached to, and never
//! forward a name it knows (a stack's internal names do not leak upstream).

pub mod conf;
pub mod server;
pub mod table;

pub use conf::{container_resolv_conf, host_upstreams, parse_upstream, UpstreamParseError};
pub use server::{DnsError, DnsServer};
pub use table::{answer, Answer, DnsTable, QueryType};

/// The address every container's resolver asks, inside its own netns (as
/// Docker does).
pub const EMBEDDED_DNS_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 11);
