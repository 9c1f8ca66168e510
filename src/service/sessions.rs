//! Browser sessions: server-side rows keyed by the SHA-256 of a random cookie value (the value
//! itself is only ever in the browser), with an absolute and an idle expiry. A live session is
//! read with its user's profile in one round trip and kept in the [`PrincipalCache`], which a
//! sign-out, a disabled user or a change of their teams or identities purges at once here and,
//! through the cache-invalidation log, within a second on other instances.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::principals::{PrincipalCache, change_to_end};
use crate::crypto::sha256;
use crate::domain::{IdentityId, Issuer, Subject, UserId, UserProfile};
use crate::store::{
    IdentitySession, NewAuditEvent, NewSession, SessionEnd, SessionOfIdentity, SessionRecord, SessionStart, Store,
    StoreError, UserSession,
};
use crate::worker::LastSeen;
use crate::worker::last_seen::TOUCH_INTERVAL;

pub use crate::crypto::random_secret;

/// How many of a user's sessions [`Sessions::list`] names at most: the most recently used.
pub const LISTED_SESSIONS: i64 = 50;

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

/// How recent a session's sign-in must be for it to add or remove a sign-in method (link,
/// unlink, primary): whoever holds only the session's cookie, not the person's sign-in at a
/// provider, cannot swap their own sign-in method in and keep the account.
pub const RECENT_SIGN_IN: TimeDelta = TimeDelta::minutes(10);

impl LiveSession {
    /// Whether the session was signed in within [`RECENT_SIGN_IN`] of `now` (its creation, which
    /// a sign-in through a provider is: the provider's own session may be older).
    pub fn signed_in_lately(&self, now: DateTime<Utc>) -> bool {
        signed_in_lately(self.record.created_at, now)
    }
}

/// Whether a sign-in at `at` is within [`RECENT_SIGN_IN`] of `now`.
pub fn signed_in_lately(at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - at <= RECENT_SIGN_IN
}

/// The session service.
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Arc<dyn Store>,
    ttl: TimeDelta,
    idle: TimeDelta,
    /// A use is noted once the stored last use is this old: [`TOUCH_INTERVAL`], or a quarter of
    /// `idle` when that is shorter, so that a session in use never reaches its idle timeout.
    touch: TimeDelta,
    /// Two of the last-use worker's intervals. A use noted once the stored last use is within
    /// this of `idle` is written at once ([`LastSeen::session_now`]); one noted earlier is written
    /// at the worker's next interval, still well before the stored time reaches `idle`. And the
    /// sweep deletes a session unused for `idle` plus this: a use noted but not written yet (its
    /// write failed once) must not lose its session, which is refused meanwhile all the same.
    flushes: TimeDelta,
    last_seen: Arc<LastSeen>,
    cache: Arc<PrincipalCache>,
}

impl Sessions {
    /// Sessions lasting at most `ttl`, ending when unused for `idle`, cached in `cache`, their
    /// uses written by `last_seen`'s worker.
    pub fn new(
        store: Arc<dyn Store>,
        ttl: Duration,
        idle: Duration,
        last_seen: Arc<LastSeen>,
        cache: Arc<PrincipalCache>,
    ) -> Self {
        let delta = |d: Duration| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
        let idle = delta(idle);
        let flushes = delta(last_seen.every()) * 2;
        Self { store, ttl: delta(ttl), idle, touch: TOUCH_INTERVAL.min(idle / 4), flushes, last_seen, cache }
    }

    /// The absolute lifetime, for the cookie's `Max-Age`.
    pub fn ttl(&self) -> Duration {
        self.ttl.to_std().unwrap_or_default()
    }

    /// Starts a session for `user` on `device` (a short label, if known), who last authenticated
    /// at the provider at `authenticated_at` (as far as the sign-in proves it), and returns the
    /// cookie value. In the same transaction it appends `audit` (the sign-in's rows) and ends the
    /// browser's earlier session, `replaces` (its cookie value), whoever it was for. None, and
    /// nothing written, when the user is disabled or gone by then.
    pub async fn create(
        &self,
        user: UserId,
        identity: Option<IdentityId>,
        device: Option<String>,
        authenticated_at: Option<DateTime<Utc>>,
        replaces: Option<&SecretString>,
        audit: &[NewAuditEvent],
    ) -> Result<Option<SecretString>, StoreError> {
        let token = random_secret();
        let now = super::now();
        let replaced = replaces.map(|cookie| sha256(cookie.expose_secret().as_bytes()));
        let session = NewSession {
            token_hash: sha256(token.expose_secret().as_bytes()),
            user_id: user,
            identity_id: identity,
            device,
            authenticated_at,
            now,
            expires_at: now + self.ttl,
        };
        let started = match replaced {
            None => self.store.start_session(&session, None, audit).await?,
            // The earlier session's end runs to its end with this instance's forgetting it, as
            // a sign-out does: a browser that hangs up, or a commit whose reply is lost, must not
            // leave it cached here until the change log comes round.
            Some(replaced) => {
                let (store, audit) = (self.store.clone(), audit.to_vec());
                let change = async move { store.start_session(&session, Some(&replaced), &audit).await };
                change_to_end(&self.cache, change, move |cache, _| cache.forget_session(&replaced)).await?
            }
        };
        Ok(matches!(started, SessionStart::Started { .. }).then_some(token))
    }

    /// Starts a session for the user of the identity `(issuer, subject)` on `device` (who last
    /// authenticated at the provider at `authenticated_at`), when the
    /// identity exists and its user is not disabled, finding them in the statement that writes
    /// the session (a returning user's sign-in: no read first). `audit` is appended with it, its
    /// actor and target (where unset) the user and `identity_id` added to its details. Returns
    /// whom it started for and the cookie value; `None`, with nothing written, otherwise.
    pub async fn create_for_identity(
        &self,
        issuer: &Issuer,
        subject: &Subject,
        device: Option<String>,
        authenticated_at: Option<DateTime<Utc>>,
        audit: &NewAuditEvent,
    ) -> Result<Option<(IdentitySession, SecretString)>, StoreError> {
        let token = random_secret();
        let now = super::now();
        let session = SessionOfIdentity {
            issuer: issuer.clone(),
            subject: subject.clone(),
            token_hash: sha256(token.expose_secret().as_bytes()),
            device,
            authenticated_at,
            now,
            expires_at: now + self.ttl,
        };
        let started = self.store.start_session_of_identity(&session, audit).await?;
        Ok(started.map(|started| (started, token)))
    }

    /// The user of a session cookie, if the session exists, has not expired and its user is not
    /// disabled.
    pub async fn resolve(&self, cookie: &str) -> Result<Option<UserId>, StoreError> {
        Ok(self.resolve_session(cookie).await?.map(|live| live.record.user_id))
    }

    /// Notes that `identity` was used to sign in at `at`, for the batched last-use writes (no
    /// write on the sign-in's own path).
    pub fn identity_seen(&self, identity: crate::domain::IdentityId, at: chrono::DateTime<chrono::Utc>) {
        self.last_seen.identity(identity, at);
    }

    /// The profile of a session cookie's user, read with the session in one round trip, on the
    /// same rules as [`Sessions::resolve`].
    pub async fn resolve_profile(&self, cookie: &str) -> Result<Option<UserProfile>, StoreError> {
        Ok(self.resolve_session(cookie).await?.map(|live| live.profile))
    }

    /// A live session with its user's profile: from the cache, or in one round trip, on the same
    /// rules as [`Sessions::resolve`].
    pub async fn resolve_session(&self, cookie: &str) -> Result<Option<LiveSession>, StoreError> {
        let hash = sha256(cookie.as_bytes());
        let now = super::now();
        // A hit whose last use is due to be noted is read again, as a miss: a cached copy must
        // not hide a session's use from idle expiry for longer than the noting interval; so is
        // every hit while the cache-invalidation log has not been read lately.
        // Freshness first: a read of the log that makes it fresh has applied its purges.
        let fresh = self.cache.answers();
        let cached = self.cache.session(&hash);
        if let Some(live) = &cached
            && now - live.record.last_seen_at < self.touch
            && fresh
        {
            return Ok(self.is_live(&live.record, now).then(|| LiveSession::clone(live)));
        }
        let epoch = self.cache.epoch();
        let read = match self.store.session_profile(&hash).await {
            Ok(read) => read,
            // The database cannot be read: a cached copy answers, as it was when last read —
            // looked up again, since a change may have purged it while the read was tried.
            Err(error) => match self.cache.session(&hash).filter(|_| error.is_transient()) {
                Some(live) => return Ok(self.is_live(&live.record, now).then(|| LiveSession::clone(&live))),
                None => return Err(error),
            },
        };
        // Found ended or expired: a cached copy must not answer for it later, when the database
        // cannot be read.
        let Some((mut record, profile)) = read.filter(|(record, _)| self.is_live(record, now)) else {
            if cached.is_some() {
                self.cache.drop_session(&hash);
            }
            return Ok(None);
        };
        if now - record.last_seen_at >= self.touch {
            // Bookkeeping, written by the last-use worker: never a write on this request. The
            // cached copy says so too, so that its hits do not note it again.
            if now - record.last_seen_at >= self.idle - self.flushes {
                self.last_seen.session_now(hash, now);
            } else {
                self.last_seen.session(hash, now);
            }
            record.last_seen_at = now;
        }
        // Cached no longer than the session stays live without another use.
        let life = (record.expires_at.min(record.last_seen_at + self.idle) - now).to_std().unwrap_or_default();
        let live = LiveSession { hash, record, profile };
        self.cache.insert_session(epoch, Arc::new(live.clone()), life);
        Ok(Some(live))
    }

    /// Whether a session still counts at `now`: not expired, not idle, its user not disabled.
    fn is_live(&self, session: &SessionRecord, now: chrono::DateTime<chrono::Utc>) -> bool {
        !session.user_disabled && now < session.expires_at && now - session.last_seen_at < self.idle
    }

    /// Ends a session (a `session.revoked` event says why); false when there was none. The
    /// deletion and this instance's forgetting run to their end together, in a task of their
    /// own: a browser that hangs up once the deletion has begun must not leave the session
    /// cached here until the change log comes round.
    pub async fn revoke(&self, cookie: &str, reason: SessionEnd) -> Result<bool, StoreError> {
        let hash = sha256(cookie.as_bytes());
        let store = self.store.clone();
        // Forgotten whatever the answer: a commit whose reply was lost still ended it.
        change_to_end(&self.cache, async move { store.delete_session(&hash, reason).await }, move |cache, _| {
            cache.forget_session(&hash)
        })
        .await
    }

    /// The user's live sessions (not expired, not idle), most recently used first: the
    /// [`LISTED_SESSIONS`] most recent (a script that signs in in a loop must not make the
    /// account page read thousands).
    pub async fn list(&self, user: UserId) -> Result<Vec<UserSession>, StoreError> {
        let now = super::now();
        self.store.user_sessions(user, now, now - self.idle, LISTED_SESSIONS).await
    }

    /// Ends every session of `user` but the one whose hash is `keep` ("sign out everywhere
    /// else"); returns how many ended, or `None` when the session `keep` has itself ended (by
    /// another browser's click, a sign-out or expiry): it no longer speaks for the user. Grants
    /// made from them end with them.
    pub async fn revoke_others(&self, user: UserId, keep: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let (store, keep) = (self.store.clone(), *keep);
        let ended = change_to_end(
            &self.cache,
            async move { store.delete_other_sessions(user, &keep).await },
            // Nothing ended, nothing to forget.
            move |cache, done| {
                if done.map_or(true, |ended| ended.is_some_and(|ended| ended > 0)) {
                    cache.invalidate_user(user);
                }
            },
        )
        .await?;
        if let Some(ended) = ended {
            tracing::info!(user_id = %user, ended, "signed out other sessions");
        }
        Ok(ended)
    }

    /// Ends the sessions of `user` that began in the second `auth_time` (an id token's, which
    /// names the session it was issued in: its start); returns how many ended. Grants made from
    /// them end with them.
    pub async fn revoke_begun(&self, user: UserId, auth_time: i64, reason: SessionEnd) -> Result<u64, StoreError> {
        let Some(from) = DateTime::<Utc>::from_timestamp(auth_time, 0) else {
            return Ok(0);
        };
        let store = self.store.clone();
        let until = from + TimeDelta::seconds(1);
        change_to_end(
            &self.cache,
            async move { store.delete_sessions_begun(user, from, until, reason).await },
            move |cache, done| {
                if done.map_or(true, |ended| *ended > 0) {
                    cache.invalidate_user(user);
                }
            },
        )
        .await
    }

    /// Deletes expired sessions and sign-in states (idle sessions once unused for the idle
    /// timeout plus two of the last-use worker's intervals).
    pub async fn delete_expired(&self) -> Result<u64, StoreError> {
        let now = super::now();
        self.store.delete_expired(now, now - self.idle - self.flushes).await
    }
}
