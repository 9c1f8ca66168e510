//! Services: the rules of Tessera. The HTTP layer calls these after parsing and authorising; they
//! call the store for everything persistent.

pub mod answers;
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

/// Whether an error is a transient database failure, worth the same call again.
pub(crate) trait Transient {
    /// True for a transient failure.
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

/// Runs `attempt` again after each transient failure, pausing 50 ms and four times longer each
/// time, for as long as `again(error, pause)` says one more attempt after that pause is worth it.
pub(crate) async fn retry_transient<T, E, F>(
    mut attempt: impl FnMut() -> F,
    mut again: impl FnMut(&E, Duration) -> bool,
) -> Result<T, E>
where
    E: Transient,
    F: Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(50);
    loop {
        match attempt().await {
            Err(error) if error.is_transient() && again(&error, pause) => {
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(4);
            }
            done => return done,
        }
    }
}

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
