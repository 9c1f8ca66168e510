//! The sweeper: deletes expired sessions, sign-in states, connect links, pending profiles, the
//! records of used client assertions, the OpenID Provider's expired grants, codes and held
//! requests, the rows of the cache-invalidation log older than its retention, and audit rows and
//! outbox events past their retention; and forgets keys that sign nothing more (unpublished
//! signing keys' private keys, webhooks' previous keys once their overlap ended).

use std::time::Duration;

use crate::error::ErrorChain as _;
use crate::service::audit::Audit;
use crate::service::auth_profiles::AuthProfiles;
use crate::service::cache_sync::CacheSync;
use crate::service::op::clients::Clients;
use crate::service::op::provider::OpenIdProvider;
use crate::service::sessions::Sessions;
use crate::service::webhooks::Webhooks;

/// How often the sweeper runs.
const EVERY: Duration = Duration::from_secs(600);

/// Deletes expired sessions, sign-in states and pending profiles every ten minutes.
pub(super) async fn run(
    sessions: Sessions,
    auth_profiles: AuthProfiles,
    clients: Clients,
    op: Option<OpenIdProvider>,
    audit: Audit,
    cache_sync: CacheSync,
    webhooks: Webhooks,
) {
    let mut interval = tokio::time::interval(EVERY);
    // A sweep that took longer than the interval is not followed at once by another.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match sessions.delete_expired().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "deleted expired sessions and sign-in states"),
            Err(error) => tracing::warn!(error = %error.chain(), "cannot delete expired sessions"),
        }
        match auth_profiles.delete_expired_pending().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "deleted expired pending auth profiles"),
            Err(error) => tracing::warn!(error = %error.chain(), "cannot delete expired pending auth profiles"),
        }
        match clients.delete_expired_assertions().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "deleted records of expired client assertions"),
            Err(error) => tracing::warn!(error = %error.chain(), "cannot delete records of expired client assertions"),
        }
        match cache_sync.delete_old().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "deleted old rows of the cache-invalidation log"),
            Err(error) => {
                tracing::warn!(error = %error.chain(), "cannot delete old rows of the cache-invalidation log")
            }
        }
        if let Some(op) = &op {
            match op.delete_expired().await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "deleted expired grants, codes and held requests"),
                Err(error) => tracing::warn!(error = %error.chain(), "cannot delete expired grants"),
            }
            match op.keys().forget_unpublished().await {
                Ok(0) => {}
                Ok(forgotten) => tracing::info!(forgotten, "forgot the private keys of unpublished signing keys"),
                Err(error) => tracing::warn!(error = %error.chain(), "cannot forget unpublished signing keys"),
            }
        }
        match audit.sweep().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted audit rows past their retention"),
            Err(error) => tracing::warn!(error = %error.chain(), "cannot delete audit rows past their retention"),
        }
        match webhooks.sweep().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted outbox events past their retention"),
            Err(error) => tracing::warn!(error = %error.chain(), "cannot delete outbox events past their retention"),
        }
        match webhooks.forget_expired_previous_keys().await {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(forgotten, "forgot webhook signing keys whose overlap ended"),
            Err(error) => {
                tracing::warn!(error = %error.chain(), "cannot forget webhook signing keys whose overlap ended")
            }
        }
    }
}
