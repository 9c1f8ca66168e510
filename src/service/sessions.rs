//! Browser sessions: server-side rows keyed by the SHA-256 of a random cookie value (the value
//! itself is only ever in the browser), with an absolute and an idle expiry.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::sha256;
use crate::domain::{IdentityId, UserId, UserProfile};
use crate::store::{NewSession, SessionEnd, SessionRecord, Store, StoreError, UserSession};
use crate::worker::LastSeen;

/// How often at most a session's `last_seen_at` is written.
const TOUCH_INTERVAL: TimeDelta = TimeDelta::seconds(60);

pub use crate::crypto::random_secret;

/// A live session, as [`Sessions::resolve_session`] finds it.
#[derive(Debug, Clone)]
pub struct LiveSession {
    /// SHA-256 of the cookie value (the session's key).
    pub hash: [u8; 32],
    /// The session.
    pub record: SessionRecord,
    /// Its user's profile.
    pub profile: UserProfile,
}

/// The session service.
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Arc<dyn Store>,
    ttl: TimeDelta,
    idle: TimeDelta,
    last_seen: Arc<LastSeen>,
}

impl Sessions {
    /// Sessions lasting at most `ttl`, ending when unused for `idle`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration, idle: Duration, last_seen: Arc<LastSeen>) -> Self {
        let delta = |d: Duration| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
        Self { store, ttl: delta(ttl), idle: delta(idle), last_seen }
    }

    /// The absolute lifetime, for the cookie's `Max-Age`.
    pub fn ttl(&self) -> Duration {
        self.ttl.to_std().unwrap_or_default()
    }

    /// Starts a session for `user` on `device` (a short label, if known); returns the cookie value.
    pub async fn create(
        &self,
        user: UserId,
        identity: Option<IdentityId>,
        device: Option<String>,
    ) -> Result<SecretString, StoreError> {
        let token = random_secret();
        let now = super::now();
        self.store
            .insert_session(&NewSession {
                token_hash: sha256(token.expose_secret().as_bytes()),
                user_id: user,
                identity_id: identity,
                device,
                now,
                expires_at: now + self.ttl,
            })
            .await?;
        Ok(token)
    }

    /// The user of a session cookie, if the session exists, has not expired and its user is not
    /// disabled.
    pub async fn resolve(&self, cookie: &str) -> Result<Option<UserId>, StoreError> {
        let hash = sha256(cookie.as_bytes());
        let session = self.store.session(&hash).await?;
        Ok(session.filter(|session| self.is_live(hash, session)).map(|session| session.user_id))
    }

    /// The profile of a session cookie's user, read with the session in one round trip, on the
    /// same rules as [`Sessions::resolve`].
    pub async fn resolve_profile(&self, cookie: &str) -> Result<Option<UserProfile>, StoreError> {
        Ok(self.resolve_session(cookie).await?.map(|live| live.profile))
    }

    /// A live session with its user's profile, in one round trip, on the same rules as
    /// [`Sessions::resolve`].
    pub async fn resolve_session(&self, cookie: &str) -> Result<Option<LiveSession>, StoreError> {
        let hash = sha256(cookie.as_bytes());
        let found = self.store.session_profile(&hash).await?;
        Ok(found.filter(|(session, _)| self.is_live(hash, session)).map(|(record, profile)| LiveSession {
            hash,
            record,
            profile,
        }))
    }

    /// Whether a stored session still counts (not expired, not idle, its user not disabled); a
    /// live one's use is noted for the last-use worker (never written on this request).
    fn is_live(&self, hash: [u8; 32], session: &SessionRecord) -> bool {
        let now = super::now();
        if session.user_disabled || now >= session.expires_at || now - session.last_seen_at >= self.idle {
            return false;
        }
        if now - session.last_seen_at >= TOUCH_INTERVAL {
            self.last_seen.session(hash, now);
        }
        true
    }

    /// Ends a session (a `session.revoked` event says why); false when there was none.
    pub async fn revoke(&self, cookie: &str, reason: SessionEnd) -> Result<bool, StoreError> {
        self.store.delete_session(&sha256(cookie.as_bytes()), reason).await
    }

    /// The user's live sessions (not expired, not idle), most recently used first.
    pub async fn list(&self, user: UserId) -> Result<Vec<UserSession>, StoreError> {
        let now = super::now();
        let sessions = self.store.user_sessions(user, now).await?;
        Ok(sessions.into_iter().filter(|s| now - s.last_seen_at < self.idle).collect())
    }

    /// Ends every session of `user` but the one whose hash is `keep` ("sign out everywhere
    /// else"); returns how many ended. Grants made from them end with them.
    pub async fn revoke_others(&self, user: UserId, keep: &[u8; 32]) -> Result<u64, StoreError> {
        let ended = self.store.delete_other_sessions(user, keep).await?;
        tracing::info!(user_id = %user, ended, "signed out other sessions");
        Ok(ended)
    }

    /// Deletes expired sessions and sign-in states.
    pub async fn delete_expired(&self) -> Result<u64, StoreError> {
        let now = super::now();
        self.store.delete_expired(now, now - self.idle).await
    }
}
