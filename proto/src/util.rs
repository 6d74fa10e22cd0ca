//! Small helpers over the generated types (time stamps, state names).

use crate::v1::{HealthState, TaskState, Timestamp};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// Converts a [`SystemTime`]; times before the epoch become 0.
    pub fn from_system(t: SystemTime) -> Self {
        let nanos = t
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self { unix_nanos: nanos }
    }

    /// Converts back to a [`SystemTime`].
    pub fn to_system(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(self.unix_nanos).unwrap_or(0))
    }

    /// True for the zero value (never set).
    pub fn is_unset(&self) -> bool {
        self.unix_nanos == 0
    }
}

impl TaskState {
    /// True once a task can no longer run (exited, failed, shut down...).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Complete
                | TaskState::Shutdown
                | TaskState::Failed
                | TaskState::Rejected
                | TaskState::Remove
                | TaskState::Orphaned
        )
    }

    /// The lower-case name used in `ps` and JSON output ("running").
    pub fn short_name(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
            TaskState::Created => "created",
            TaskState::Paused => "paused",
        }
    }
}

impl HealthState {
    /// The name Compose prints ("healthy"), empty when there is no check.
    pub fn short_name(self) -> &'static str {
        match self {
            HealthState::None => "",
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips() {
        let t = Timestamp::now();
        assert!(!t.is_unset());
        assert_eq!(Timestamp::from_system(t.to_system()), t);
    }

    #[test]
    fn terminal_states() {
        assert!(TaskState::Failed.is_terminal());
        assert!(TaskState::Complete.is_terminal());
        assert!(!TaskState::Running.is_terminal());
        assert!(!TaskState::Pending.is_terminal());
    }
}
