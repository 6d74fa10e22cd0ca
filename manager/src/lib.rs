//! Flotilla's replicated control plane.
//!
//! Everything the cluster decides is written here, through Raft: stacks,
//! services, tasks, placement, addresses. The pieces:
//! - [`store`]: the in-memory state every manager applies Raft entries to (pure);
//! - [`raft`]: the raft-rs node with durable redb storage that orders writes;
//! - [`orchestrator`]: desired tasks per service slot, dependency gates, restarts;
//! - [`scheduler`]: task → node placement, a function over a store snapshot;
//! - [`ipam`]: subnets, VIPs and stable per-slot addresses;
//! - [`dispatcher`]: agent sessions (register, heartbeat, assignments, status);
//! - [`control`]: the CLI's API.
//!
//! The manager never imports the runtime or the agent, and never talks to a
//! container: it only writes desired state and reads what agents report.

pub mod cluster;
pub mod control;
pub mod dispatcher;
pub mod ipam;
pub mod manager;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod settle;
pub mod store;

pub use control::ControlApi;
pub use dispatcher::DispatcherApi;
pub use manager::{Manager, ManagerConfig, ManagerError};
