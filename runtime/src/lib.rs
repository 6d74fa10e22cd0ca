//! Flotilla's node-local container runtime.
//!
//! What it owns: the content-addressed image store ([`image`]), overlayfs
//! root filesystems and OCI bundles, the per-container shim process and the
//! container lifecycle ([`container`], [`shim`]), cgroups, log files ([`logs`]),
//! volumes of the local driver ([`volume`]), and the
//! network primitives the agent composes into networks ([`net`]).
//!
//! What it must never do: know about clusters, stacks, services or tasks.
//! Callers hand it fully resolved container specs; it never imports any other
//! Flotilla crate. Syscalls and `unsafe` live here behind small safe wrappers,
//! each `unsafe` block with a `// SAFETY:` comment.

pub mod container;
pub mod image;
pub mod logs;
pub mod net;
pub mod shim;
pub mod volume;
