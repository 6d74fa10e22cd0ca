//! The orchestrator: turns desired state (stacks, services) into tasks, and
//! reacts to what agents report (restarts, dependency gates, scale, removal).
//!
//! The decisions are pure functions ([`reconcile`], then the scheduler) over
//! a [`StoreView`]; the leader loop ([`run`]) only feeds them the store after
//! every applied change (and on a tick, for back-off deadlines) and proposes
//! their result as one batch. Nothing here may talk to a node or remember
//! state outside the store: a new leader must be able to take over from the
//! store alone.

mod reconcile;
pub mod run;
pub mod view;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

pub use reconcile::{
    dependency_holds, is_oneoff, reconcile, restart_delay_ms, service_removing, spec_hash,
    stack_removing, AUTO_REMOVE_AFTER_MS, BASE_BACKOFF_MS, HISTORY_PER_SLOT, LABEL_NO_DEPS,
    LABEL_ONEOFF, LABEL_REMOVE_VOLUMES, LABEL_REMOVING, MAX_BACKOFF_MS, ONEOFF_SLOT_BASE,
};
pub use view::StoreView;

use flotilla_proto::v1::{StoreAction, Timestamp};

/// One decision pass: reconcile, then place every task that needs a node
/// (including the ones this pass created). The result is one batch.
pub fn plan(view: &impl StoreView, now: Timestamp) -> Vec<StoreAction> {
    let mut actions = reconcile(view, now);
    crate::scheduler::schedule_into(view, &mut actions, now);
    actions
}
