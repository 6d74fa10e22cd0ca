//! Coalescing a burst of store changes into one pass: the orchestrator and
//! the dispatcher act as soon as the store changes, after a short quiet
//! spell, so that the entries one proposal (or a quick run of them) applies
//! are handled together rather than one pass each.
//!
//! The wait ends when no change arrived for `quiet`, or `max` after it
//! started, whichever is first: a steady stream of changes never holds a
//! pass back longer than `max`.

use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Quiet spell the leader loops wait for after a change.
pub const QUIET: Duration = Duration::from_millis(2);
/// The longest a pass is held back by a steady stream of changes.
pub const MAX_HOLD: Duration = Duration::from_millis(15);

/// What the wait ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// Quiet (or `max` reached): run a pass now.
    Ready,
    /// The sender is gone: stop.
    Closed,
}

/// Drains `events` until it has been quiet for `quiet` or `max` passed.
pub async fn settle<T: Clone>(
    events: &mut broadcast::Receiver<T>,
    quiet: Duration,
    max: Duration,
) -> Settled {
    let end = Instant::now() + max;
    loop {
        let until = (Instant::now() + quiet).min(end);
        match tokio::time::timeout_at(until, events.recv()).await {
            Err(_) => return Settled::Ready,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                if Instant::now() >= end {
                    return Settled::Ready;
                }
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return Settled::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_is_one_wait_and_a_stream_is_capped() {
        let (tx, mut rx) = broadcast::channel::<u32>(64);
        // A burst already queued: drained, then quiet.
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let r = settle(&mut rx, QUIET, MAX_HOLD).await;
        assert_eq!(r, Settled::Ready);
        assert!(rx.try_recv().is_err(), "the burst was not drained");

        // A steady stream (one change per millisecond) is cut off at `max`.
        let feeder = tokio::spawn({
            let tx = tx.clone();
            async move {
                for i in 0..1000 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if tx.send(i).is_err() {
                        return;
                    }
                }
            }
        });
        // Never quiet: only the cap ends the wait (the outer timeout only
        // turns a hang into a failure).
        let r =
            tokio::time::timeout(Duration::from_secs(10), settle(&mut rx, QUIET, MAX_HOLD)).await;
        assert_eq!(r.ok(), Some(Settled::Ready));
        feeder.abort();

        let (tx2, mut rx2) = broadcast::channel::<u32>(1);
        drop(tx2);
        assert_eq!(settle(&mut rx2, QUIET, MAX_HOLD).await, Settled::Closed);
    }
}
