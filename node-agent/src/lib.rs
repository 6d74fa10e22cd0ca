//! Flotilla's node agent: one per host.
//!
//! It keeps a session with a manager's dispatcher ([`session`]), turns the
//! tasks assigned to this node into running containers through the runtime
//! ([`executor`], driven by the pure per-task step function in
//! [`controller`]), reports what it observes, and serves the node-local
//! streams and image store to managers ([`node_service`]).
//!
//! The agent never decides placement, never imports the manager, and holds
//! no state it cannot get back from the manager plus what its shims report:
//! after a restart it re-adopts running containers by their labels.

pub mod controller;
pub mod dns;
pub mod executor;
pub mod health;
pub mod image_verbs;
pub mod images;
pub mod network;
pub mod node_service;
pub mod ops;
pub mod process;
pub mod session;
pub mod signals;
pub mod tasks;
pub mod volume_verbs;

pub use executor::{Agent, AgentConfig, AgentError, AgentHandle};
