//! The orchestrator's leader loop: as soon as the store changes (after a
//! quiet spell of a few milliseconds, [`crate::settle`], so a burst is one
//! pass), run [`super::plan`] over the store and propose its actions as one
//! batch. A slow tick only lets restart back-offs expire when nothing else
//! changes.
//!
//! Only the Raft leader proposes; followers just wait. A batch refused for a
//! version conflict is dropped: the change that caused the conflict was
//! applied, so its event wakes the loop and the next pass decides again from
//! fresh state. This loop must never keep decisions of its own between
//! passes.

use crate::raft::{ProposeError, StoreHandle};
use crate::settle::{settle, Settled, MAX_HOLD, QUIET};
use flotilla_proto::v1::{StoreBatch, Timestamp};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Runs until `stop` turns true or the store stops.
pub async fn run(store: StoreHandle, tick: Duration, mut stop: watch::Receiver<bool>) {
    let mut events = store.subscribe();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stop.borrow() {
            return;
        }
        if store.is_leader() {
            pass(&store).await;
        }
        tokio::select! {
            r = events.recv() => match r {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let s = settle(&mut events, QUIET, MAX_HOLD).await;
                    if s == Settled::Closed {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
    }
}

/// One decision pass; returns the number of actions proposed and applied.
pub async fn pass(store: &StoreHandle) -> usize {
    let actions = store.read(|s| super::plan(s, Timestamp::now()));
    if actions.is_empty() {
        return 0;
    }
    let n = actions.len();
    let batch = StoreBatch {
        actions,
        proposal_id: format!("orchestrator-{}", uuid::Uuid::new_v4()),
    };
    match store.propose(batch).await {
        Ok(index) => {
            tracing::debug!(actions = n, index, "orchestrator batch applied");
            n
        }
        Err(ProposeError::Refused(e)) => {
            tracing::debug!(error = %e, "orchestrator batch refused; deciding again");
            0
        }
        Err(e) => {
            tracing::warn!(error = %e, "orchestrator batch not applied");
            0
        }
    }
}
