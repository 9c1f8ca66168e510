//! The audit loop: writes the refusals counted in memory (see [`crate::service::audit`]) every
//! `audit.flush_interval_ms`, one row per reason and issuer; the worker set writes them once more
//! at shutdown. A crash loses at most one interval of counts.

use std::time::Duration;

use tokio::sync::watch;

use crate::error::ErrorChain as _;
use crate::service::audit::Audit;

/// Writes the counted refusals every `every`, until `stop` changes (between writes, never
/// during one).
pub(super) async fn run(audit: Audit, every: Duration, mut stop: watch::Receiver<bool>) {
    // The first write is one interval after start (an interval's first tick is immediate, and
    // would write whatever was counted in the first moments as a row of its own).
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        match audit.flush().await {
            Ok(0) => {}
            Ok(written) => tracing::debug!(written, "wrote counted refusals to the audit log"),
            Err(error) => {
                tracing::warn!(error = %error.chain(), pending = audit.pending(), "cannot write counted refusals to the audit log; will retry")
            }
        }
    }
}
