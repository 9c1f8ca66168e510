//! The cache-sync loop: every `cache.sync_interval_ms` it reads the cache-invalidation log from
//! the primary and applies what other instances changed to this instance's caches (the rules are
//! in [`crate::service::cache_sync`]). A failed read is logged once per outage and tried again at
//! the next tick.

use std::time::Duration;

use crate::error::ErrorChain as _;
use crate::service::cache_sync::{CacheSync, Cursor};

/// Reads and applies the log until aborted.
pub(super) async fn run(sync: CacheSync, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor: Option<Cursor> = None;
    let mut failing = false;
    loop {
        interval.tick().await;
        let result = match &mut cursor {
            Some(cursor) => sync.poll(cursor).await.map(|applied| {
                if applied > 0 {
                    tracing::debug!(applied, "applied changes of the cache-invalidation log");
                }
            }),
            None => sync.start().await.map(|start| cursor = Some(start)),
        };
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the cache-invalidation log is readable again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(error = %error.chain(), "cannot read the cache-invalidation log; other instances' changes wait");
            }
            Err(_) => {}
        }
    }
}
