//! Forwards raft-rs's slog records to `tracing` (target `flotilla::raft`),
//! so Raft's own log lines land where the rest of the manager logs. It must
//! never block or fail: a logging problem is not a Raft problem.

use std::fmt::Write as _;

use slog::{Drain, Level, OwnedKVList, Record, KV};

struct TracingDrain;

/// Collects a record's key-value pairs as ` key=value`.
struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let msg = record.msg();
        let kv = fields.0;
        match record.level() {
            Level::Critical | Level::Error => {
                tracing::error!(target: "flotilla::raft", "{msg}{kv}")
            }
            Level::Warning => tracing::warn!(target: "flotilla::raft", "{msg}{kv}"),
            Level::Info => tracing::info!(target: "flotilla::raft", "{msg}{kv}"),
            Level::Debug => tracing::debug!(target: "flotilla::raft", "{msg}{kv}"),
            Level::Trace => tracing::trace!(target: "flotilla::raft", "{msg}{kv}"),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs tagged with this node's Raft id.
pub(crate) fn logger(raft_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("raft_id" => raft_id))
}
