//! Services: the rules of Tessera. The HTTP layer calls these after parsing and authorising; they
//! call the store for everything persistent.

pub mod audit;
pub mod auth_profiles;
pub mod cache_sync;
pub mod check;
pub mod coalesce;
pub mod import;
pub mod keys;
pub mod op;
pub mod principals;
pub mod profile_actions;
pub mod profile_credentials;
pub mod provisioning;
pub mod sessions;
pub mod signin;
pub mod teams;
pub mod users;
pub mod validation;
pub mod webhooks;

pub(crate) use crate::domain::now;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::StoreError;

/// Rows deleted by one statement of a retention sweep.
const SWEEP_BATCH: i64 = 1000;

/// Most statements of one retention sweep (100,000 rows); the rest waits for the next sweep, so
/// that no sweep holds the database long.
const SWEEP_MAX_BATCHES: usize = 100;

/// Deletes what is older than `retention` (nothing when it is `None`: kept forever) with
/// `delete(cutoff, limit)`, [`SWEEP_BATCH`] rows a statement, until a statement deletes fewer or
/// [`SWEEP_MAX_BATCHES`] ran; how many rows went.
async fn sweep_older_than<F, Fut>(retention: Option<Duration>, delete: F) -> Result<u64, StoreError>
where
    F: Fn(DateTime<Utc>, i64) -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let Some(retention) = retention else { return Ok(0) };
    let cutoff = now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut deleted = 0;
    for _ in 0..SWEEP_MAX_BATCHES {
        let batch = delete(cutoff, SWEEP_BATCH).await?;
        deleted += batch;
        if batch < SWEEP_BATCH as u64 {
            break;
        }
    }
    Ok(deleted)
}
