//! The positive cache of resolved identities (principals) and of live browser sessions, shared
//! by validation and sessions, which fill it, and by provisioning, teams and sign-in, which purge
//! it when what it holds changes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::sessions::LiveSession;
use crate::cache::{Epoch, TtlCache};
use crate::domain::{Issuer, Principal, Subject, UserId};
use crate::store::StoreError;
use crate::upstream::tokens::TokenCache;

/// How long after a change to a user their principal is read from the primary rather than the
/// replica, which may not have the change yet.
const READ_YOUR_WRITES: Duration = Duration::from_secs(60);

// After that minute, the replica is read only while it is known to have every change committed
// `database.replica_max_lag_ms` before (at most half of it), and so this user's change.
const _: () = assert!(READ_YOUR_WRITES.as_millis() >= 2 * crate::config::MAX_REPLICA_MAX_LAG_MS as u128);

/// The positive cache of resolved identities. It never holds "not found" nor a disabled user,
/// and it is purged of a user when they are disabled, or change teams or identities; an
/// unlinked identity's verified tokens are purged from the token cache too.
///
/// Two races are closed here. A lookup that began before an invalidation does not cache what it
/// read (every invalidation bumps an epoch the insert checks). And for [`READ_YOUR_WRITES`] after
/// a user's invalidation, their principal is read from the primary, so that a lagging replica
/// cannot bring the old one back. Other instances learn of a change from the cache-invalidation
/// log, which the change wrote in its transaction ([`crate::service::cache_sync`]), and apply it
/// here with the same methods.
#[derive(Debug)]
pub struct PrincipalCache {
    entries: TtlCache<(Issuer, Subject), Arc<Principal>>,
    /// Live sessions with their user's profile, by the hash of the cookie; purged with their user.
    sessions: TtlCache<[u8; 32], Arc<LiveSession>>,
    ttl: Duration,
    tokens: Arc<TokenCache>,
    epoch: Epoch,
    changed: Mutex<HashMap<UserId, Instant>>,
    /// When everything was last forgotten without knowing what changed (start-up, an outage of
    /// the cache-invalidation log, a row that cannot be read), and for how long after that every
    /// user counts as changed (see [`PrincipalCache::set_replica_lag`]).
    all_changed: Mutex<(Option<Instant>, Duration)>,
    /// Set while the cache-invalidation log is followed ([`PrincipalCache::follow_log`]).
    log: OnceLock<LogFreshness>,
}

/// Runs a change to its end even when the request that asked for it is dropped (a client that
/// hung up), then has `forget` purge from this instance's caches what the answer says changed —
/// an error included: a commit whose reply was lost is still a change, which this instance must
/// honour at once, not at its next read of the cache-invalidation log. An answer that changed
/// nothing should purge nothing: a purge walks the caches, and a request that is refused must
/// not cost one, in a loop. A runtime shutting down first is `Unavailable`: the store is going
/// away.
pub(crate) async fn change_to_end<T: Send + 'static>(
    principals: &Arc<PrincipalCache>,
    change: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    forget: impl FnOnce(&PrincipalCache, Result<&T, &StoreError>) + Send + 'static,
) -> Result<T, StoreError> {
    let principals = principals.clone();
    let work = async move {
        let done = change.await;
        forget(&principals, done.as_ref());
        done
    };
    crate::run_to_end(work).await.unwrap_or(Err(StoreError::Unavailable(sqlx::Error::PoolClosed)))
}

/// How recently the cache-invalidation log was read: until when cached entries may answer
/// without a read of the database.
#[derive(Debug)]
struct LogFreshness {
    base: Instant,
    /// How long after a successful read of the log its entries answer.
    fresh_for: Duration,
    /// Until when, in milliseconds after `base` (0: not read yet).
    until_ms: AtomicU64,
}

impl LogFreshness {
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }
}

impl PrincipalCache {
    /// A cache keeping entries for `ttl` (zero disables it), purging `tokens` with identities.
    pub fn new(ttl: Duration, max_entries: usize, tokens: Arc<TokenCache>) -> Self {
        Self {
            entries: TtlCache::new(if ttl.is_zero() { 0 } else { max_entries }).counted_as("principals"),
            sessions: TtlCache::new(if ttl.is_zero() { 0 } else { max_entries }).counted_as("sessions"),
            ttl,
            tokens,
            epoch: Epoch::default(),
            changed: Mutex::new(HashMap::new()),
            all_changed: Mutex::new((None, Duration::ZERO)),
            log: OnceLock::new(),
        }
    }

    /// From now on, what is cached answers without a read of the database only while this
    /// instance read the cache-invalidation log within `fresh_for` (the log's interval and a
    /// margin): an instance that cannot read the log (its connection broken, say, while requests
    /// get theirs) reads the database rather than answer for other instances' changes it has
    /// not seen. When that read fails too, the cached copy answers, as in any database outage
    /// ([`PrincipalCache::answers`]).
    pub fn follow_log(&self, fresh_for: Duration) {
        let _ = self.log.set(LogFreshness { base: Instant::now(), fresh_for, until_ms: AtomicU64::new(0) });
    }

    /// Notes a successful read of the cache-invalidation log that began at `at`.
    pub fn log_read(&self, at: Instant) {
        if let Some(log) = self.log.get() {
            log.until_ms.fetch_max(log.ms(at + log.fresh_for), Ordering::Relaxed);
        }
    }

    /// Whether cached entries answer without a read of the database: always, unless the
    /// cache-invalidation log is followed and was not read recently enough.
    pub(crate) fn answers(&self) -> bool {
        self.log.get().is_none_or(|log| log.ms(Instant::now()) < log.until_ms.load(Ordering::Relaxed))
    }

    /// A principal cache and an empty token cache, both sized from configuration.
    pub fn with_token_cache(config: &crate::config::CacheConfig) -> (Arc<Self>, Arc<TokenCache>) {
        let token_entries = if config.token_ttl.is_zero() { 0 } else { config.max_entries };
        let tokens = Arc::new(TokenCache::new(token_entries).counted_as("tokens"));
        (Arc::new(Self::new(config.principal_ttl, config.max_entries, tokens.clone())), tokens)
    }

    /// Forgets an identity: its resolved principal and its verified tokens.
    pub fn invalidate_identity(&self, issuer: &Issuer, subject: &Subject) {
        self.epoch.advance();
        let key = (issuer.clone(), subject.clone());
        self.entries.remove_key(&key);
        self.tokens.remove_where(|token| &token.issuer == issuer && &token.subject == subject);
    }

    pub(super) fn get(&self, issuer: &Issuer, subject: &Subject) -> Option<Arc<Principal>> {
        // The key is cloned for the lookup; issuers and subjects are short.
        self.entries.get(&(issuer.clone(), subject.clone()), Instant::now())
    }

    /// Drops a cached principal that a read of the database has just found gone or disabled:
    /// it must not answer later, when the database cannot be read.
    pub(super) fn drop_principal(&self, issuer: &Issuer, subject: &Subject) {
        self.entries.remove_key(&(issuer.clone(), subject.clone()));
    }

    /// Drops a cached session that a read of the database has just found ended or expired.
    pub(super) fn drop_session(&self, hash: &[u8; 32]) {
        self.sessions.remove_key(hash);
    }

    /// The current epoch, to pass to [`PrincipalCache::insert`] after a lookup.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.current()
    }

    /// Caches what a lookup that began at `epoch` found, unless something was invalidated since.
    pub(super) fn insert(&self, epoch: u64, issuer: &Issuer, subject: &Subject, principal: Arc<Principal>) {
        self.epoch.insert_unless_moved(&self.entries, epoch, (issuer.clone(), subject.clone()), principal, self.ttl);
    }

    /// How many principals are cached. Expired entries are not counted: they leave memory at
    /// their deadline (see [`TtlCache::len`]). For tests and diagnostics, not for the hot path.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Forgets everything cached about `user`, and reads them from the primary for a while.
    ///
    /// The mark comes before the epoch moves: a lookup that takes the new epoch must find the
    /// user marked, or it could read a lagging replica and cache what it found there under an
    /// epoch that no longer moves. A lookup that took the old one is refused at its insert, or
    /// its entry is removed below.
    pub fn invalidate_user(&self, user: UserId) {
        let now = Instant::now();
        {
            let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
            changed.retain(|_, at| now.duration_since(*at) < READ_YOUR_WRITES);
            changed.insert(user, now);
        }
        self.epoch.advance();
        self.entries.remove_where(|principal| principal.user.id == user);
        self.sessions.remove_where(|live| live.record.user_id == user);
    }

    /// [`PrincipalCache::invalidate_user`] for many users, in one walk over the cache.
    pub fn invalidate_users(&self, users: &HashSet<UserId>) {
        if users.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
            changed.retain(|_, at| now.duration_since(*at) < READ_YOUR_WRITES);
            changed.extend(users.iter().map(|user| (*user, now)));
        }
        // After the mark, as in `invalidate_user`.
        self.epoch.advance();
        self.entries.remove_where(|principal| users.contains(&principal.user.id));
        self.sessions.remove_where(|live| users.contains(&live.record.user_id));
    }

    /// [`PrincipalCache::invalidate_identity`] for many identities, in one walk over the token
    /// cache.
    pub fn invalidate_identities(&self, identities: &HashSet<(Issuer, Subject)>) {
        if identities.is_empty() {
            return;
        }
        self.epoch.advance();
        for key in identities {
            self.entries.remove_key(key);
        }
        let by_ref: HashSet<(&Issuer, &Subject)> = identities.iter().map(|(i, s)| (i, s)).collect();
        self.tokens.remove_where(|token| by_ref.contains(&(&token.issuer, &token.subject)));
    }

    /// Forgets every principal and verified token (after this instance lost track of the
    /// cache-invalidation log for a while).
    pub fn invalidate_all(&self) {
        // Whatever changed meanwhile is unknown (a user disabled a moment before this instance
        // started, say): until the replica is known to have it, every user is read from the
        // primary, as after a change of theirs, so that a lagging replica cannot answer with the
        // user as they were. Marked before the epoch moves, as in `invalidate_user`.
        self.all_changed.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(Instant::now());
        self.epoch.advance();
        self.entries.clear();
        self.sessions.clear();
        self.tokens.clear();
    }

    /// A cached live session (its expiry and idleness are the caller's to check again).
    pub(super) fn session(&self, hash: &[u8; 32]) -> Option<Arc<LiveSession>> {
        self.sessions.get(hash, Instant::now())
    }

    /// Caches what a session lookup that began at `epoch` found, for at most `life` (and the
    /// cache's lifetime), unless something was invalidated since.
    pub(super) fn insert_session(&self, epoch: u64, live: Arc<LiveSession>, life: Duration) {
        self.epoch.insert_unless_moved(&self.sessions, epoch, live.hash, live, life.min(self.ttl));
    }

    /// Forgets one session (ended on this instance; others learn of it from the log).
    pub fn forget_session(&self, hash: &[u8; 32]) {
        self.epoch.advance();
        self.sessions.remove_key(hash);
    }

    /// With a read replica at most `lag` behind (`database.replica_max_lag_ms`, which the replica
    /// is read within), how long after everything is forgotten every user is read from the
    /// primary: by then the replica has every change made before. Without a replica (never set),
    /// every read is from the primary anyway, and nothing is marked. Set at start-up, it counts
    /// from then: what changed before is unknown too.
    pub fn set_replica_lag(&self, lag: Duration) {
        *self.all_changed.lock().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), lag.min(READ_YOUR_WRITES));
    }

    /// Whether `user` changed recently enough that a replica may not have it yet. While the
    /// cache-invalidation log has not been read lately, any user may have: changes made on other
    /// instances are not known here, so every read goes to the primary.
    pub(super) fn changed_recently(&self, user: UserId) -> bool {
        if !self.answers() {
            return true;
        }
        let (all, window) = *self.all_changed.lock().unwrap_or_else(|p| p.into_inner());
        if all.is_some_and(|at| at.elapsed() < window) {
            return true;
        }
        let changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        changed.get(&user).is_some_and(|at| at.elapsed() < READ_YOUR_WRITES)
    }
}
