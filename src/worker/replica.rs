//! The replica-lag loop: with a read replica configured, it measures how far the replica is
//! behind the primary every [`replica_check_interval`], which decides whether reads that
//! tolerate lag go to the replica until the next check ([`crate::store::Store::check_replica`]).
//! Each change of verdict is logged once.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ErrorChain as _;
use crate::observability::{DB_REPLICA_LAG, DB_REPLICA_READABLE};
use crate::store::{ReplicaLag, Store, replica_check_interval};

/// The verdicts worth one log line each time they change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Readable,
    Behind,
    NotReplaying,
    Unknown,
}

/// Checks the replica until aborted (returns at once without one).
pub(super) async fn run(store: Arc<dyn Store>, max_lag: Duration) {
    let mut interval = tokio::time::interval(replica_check_interval(max_lag));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bound_ms = max_lag.as_millis() as u64;
    let mut last = None;
    // The last lag measured, set again at every check: a gauge left unset for ten minutes leaves
    // the output, and the lag is documented to stay as it was while it cannot be measured.
    let mut measured = None;
    loop {
        interval.tick().await;
        let (verdict, lag) = match store.check_replica().await {
            Ok(ReplicaLag::NoReplica) => return,
            Ok(ReplicaLag::Readable { lag }) => (Verdict::Readable, Some(lag)),
            Ok(ReplicaLag::Behind { lag: Some(lag) }) => (Verdict::Behind, Some(lag)),
            Ok(ReplicaLag::Behind { lag: None }) => (Verdict::NotReplaying, None),
            // Logged by the store as it sets the replica aside.
            Ok(ReplicaLag::Failed) => (Verdict::Unknown, None),
            Err(error) => {
                if last != Some(Verdict::Unknown) {
                    tracing::warn!(error = %error.chain(), "cannot measure the read replica's lag; reading from the primary");
                }
                (Verdict::Unknown, None)
            }
        };
        metrics::gauge!(DB_REPLICA_READABLE).set(if verdict == Verdict::Readable { 1.0 } else { 0.0 });
        measured = lag.or(measured);
        if let Some(lag) = measured {
            metrics::gauge!(DB_REPLICA_LAG).set(lag.as_secs_f64());
        }
        if last == Some(verdict) {
            continue;
        }
        let lag_ms = lag.map(|lag| lag.as_millis() as u64);
        match verdict {
            Verdict::Readable => {
                tracing::info!(lag_ms, bound_ms, "the read replica is within its bound; reading from it")
            }
            Verdict::Behind => {
                tracing::warn!(lag_ms, bound_ms, "the read replica is behind its bound; reading from the primary")
            }
            Verdict::NotReplaying => tracing::warn!(
                "the read replica is not in recovery (a server started as a primary, not a streaming replica); reading from the primary"
            ),
            Verdict::Unknown => {}
        }
        last = Some(verdict);
    }
}
