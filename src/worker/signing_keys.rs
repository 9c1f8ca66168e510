//! The signing-key loop: re-reads the OpenID Provider's signing keys every refresh interval (a
//! quarter of `oidc.jwks_max_age_seconds`), which rotates a key that has signed for
//! `oidc.signing_key_rotation_days`, so that rotation happens on time without traffic, and
//! requests find the keys cached; and at once when another instance's change marks them stale.

use crate::error::ErrorChain as _;
use crate::service::op::keys::SigningKeys;

/// Refreshes the keys on their schedule.
pub(super) async fn run(keys: SigningKeys) {
    let mut interval =
        tokio::time::interval(keys.settings().refresh_interval().max(std::time::Duration::from_millis(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The keys were read at start-up.
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = keys.marked_stale() => {}
        }
        if let Err(error) = keys.refresh().await {
            tracing::warn!(error = %error.chain(), "cannot re-read the signing keys");
        }
    }
}
