//! The positive cache of resolved identities (principals) and of live browser sessions, shared
//! by validation and sessions, which fill it, and by provisioning, teams and sign-in, which purge
//! it when what it holds changes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use super::sessions::LiveSession;
use crate::cache::{Epoch, TtlCache};
use crate::domain::{Issuer, Principal, Subject, UserId};
use crate::store::StoreError;
use crate::upstream::tokens::TokenCache;

/// How long after a change to a user their principal is read from the primary rather than the
/// replica, which may not have the change yet.
const READ_YOUR_WRITES: Duration = Duration::from_secs(60);

/// The fewest users noted as changed at once before the oldest notes are dropped
/// ([`PrincipalCache::invalidate_users`]); otherwise `cache.max_entries`.
const MIN_MAX_CHANGED: usize = 10_000;

// After that minute, the replica is read only while it is known to have every change committed
// `database.replica_max_lag_ms` before (at most half of it), and so this user's change.
const _: () = assert!(READ_YOUR_WRITES.as_millis() >= 2 * crate::config::MAX_REPLICA_MAX_LAG_MS as u128);

/// The positive cache of resolved identities. It never holds "not found" nor a disabled user,
/// and it is purged of a user when they are disabled, or change teams or identities, in time
/// independent of how much it holds (a purge notes the user rather than walk the entries).
///
/// Two races are closed here. A lookup that began before an invalidation does not cache what it
/// read (every invalidation bumps an epoch the insert checks). And for [`READ_YOUR_WRITES`] after
/// a user's invalidation, their principal is read from the primary, so that a lagging replica
/// cannot bring the old one back. Other instances learn of a change from the cache-invalidation
/// log, which the change wrote in its transaction ([`crate::service::cache_sync`]), and apply it
/// here with the same methods.
#[derive(Debug)]
pub struct PrincipalCache {
    entries: TtlCache<(Issuer, Subject), Stamped<Arc<Principal>>>,
    /// Live sessions with their user's profile, by the hash of the cookie; purged with their user.
    sessions: TtlCache<[u8; 32], Stamped<Arc<LiveSession>>>,
    ttl: Duration,
    tokens: Arc<TokenCache>,
    epoch: Epoch,
    /// The users changed lately: read from the primary for a while, and their entries cached
    /// before the change no longer answer. Read on every hit, written by purges.
    changed: RwLock<Changes>,
    /// Most users [`PrincipalCache::changed`] holds; past it, the oldest notes are dropped.
    max_changed: usize,
    /// The epoch of the last purge of a user: an entry stamped since is not looked up in
    /// [`PrincipalCache::changed`].
    last_purge: AtomicU64,
    /// When everything was last forgotten without knowing what changed (start-up, an outage of
    /// the cache-invalidation log, a row that cannot be read), and for how long after that every
    /// user counts as changed (see [`PrincipalCache::set_replica_lag`]).
    all_changed: Mutex<(Option<Instant>, Duration)>,
    /// Set while the cache-invalidation log is followed ([`PrincipalCache::follow_log`]).
    log: OnceLock<LogFreshness>,
}

/// A cached value and the epoch its lookup began at: it no longer answers once its user was
/// purged at a later epoch.
#[derive(Debug, Clone)]
struct Stamped<T> {
    value: T,
    epoch: u64,
}

/// The users purged lately. A purge does not walk the caches (a walk over 100,000 entries took
/// tens of milliseconds, on every instance, for every change): it notes the epoch it advanced
/// to, and an entry of that user stamped with an earlier epoch is a miss when next read. A note
/// is kept for as long as an entry stamped before it can live (the cache's lifetime) and for
/// [`READ_YOUR_WRITES`], then dropped, oldest first. Past a limit of notes, the oldest are
/// dropped early, and every entry stamped before the newest of those is a miss (the floor).
#[derive(Debug, Default)]
struct Changes {
    /// Each user's last purge: the epoch it advanced to, and when.
    by_user: HashMap<UserId, (u64, Instant)>,
    /// The purges in the order they were made, to drop their notes in that order (a user purged
    /// again has an entry for each purge until they are dropped or compacted).
    order: VecDeque<(Instant, UserId)>,
    /// Entries stamped with an earlier epoch are misses, whoever their user.
    floor: u64,
}

impl Changes {
    /// Notes that `user` was purged at `epoch`.
    fn note(&mut self, user: UserId, epoch: u64, now: Instant) {
        self.by_user.insert(user, (epoch, now));
        self.order.push_back((now, user));
        // A user purged in a loop must not grow the queue for the notes' whole life.
        if self.order.len() > 2 * self.by_user.len() + 64 {
            let by_user = &self.by_user;
            self.order.retain(|(at, user)| by_user.get(user).is_some_and(|(_, last)| last == at));
        }
    }

    /// Takes the oldest entry of the queue away, with its user's note when that entry is it (no
    /// later purge of the user replaced it): the note's epoch and time.
    fn drop_front(&mut self) -> Option<(u64, Instant)> {
        let (at, user) = self.order.pop_front()?;
        let &(epoch, last) = self.by_user.get(&user)?;
        (last == at).then(|| {
            self.by_user.remove(&user);
            (epoch, at)
        })
    }

    /// Drops the notes made more than `keep` before `now`.
    fn expire(&mut self, now: Instant, keep: Duration) {
        while self.order.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= keep) {
            self.drop_front();
        }
    }

    /// Drops the oldest notes until at most `max` are left, raising the floor to the newest
    /// dropped; returns when that one was made, if any was dropped. (Every note has its entry in
    /// the queue, so the queue lasts as long as there are notes to drop.)
    fn limit(&mut self, max: usize) -> Option<Instant> {
        let mut newest = None;
        while self.by_user.len() > max && !self.order.is_empty() {
            if let Some((epoch, at)) = self.drop_front() {
                self.floor = self.floor.max(epoch);
                newest = Some(at);
            }
        }
        newest
    }

    /// Whether an entry of `user` stamped with `epoch` was cached before a purge of the user.
    fn purged_since(&self, user: UserId, epoch: u64) -> bool {
        epoch < self.floor || self.by_user.get(&user).is_some_and(|(purged, _)| *purged > epoch)
    }
}

/// Runs a change to its end even when the request that asked for it is dropped (a client that
/// hung up), then has `forget` purge from this instance's caches what the answer says changed —
/// an error included: a commit whose reply was lost is still a change, which this instance must
/// honour at once, not at its next read of the cache-invalidation log. An answer that changed
/// nothing should purge nothing: a purged user's next requests read the database, and a request
/// that is refused must not cost that, in a loop. A runtime shutting down first is `Unavailable`: the store is going
/// away.
pub(crate) async fn change_to_end<T: Send + 'static>(
    principals: &Arc<PrincipalCache>,
    change: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    forget: impl FnOnce(&PrincipalCache, Result<&T, &StoreError>) + Send + 'static,
) -> Result<T, StoreError> {
    let principals = principals.clone();
    store_change_to_end(change, move |done| forget(&principals, done)).await
}

/// Runs a store change to its end even when the request that asked for it is dropped, then
/// `after` on its answer (whatever it is) in the same task: [`change_to_end`] for any cache. A
/// runtime shutting down first is `Unavailable`: the store is going away.
pub(crate) async fn store_change_to_end<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    after: impl FnOnce(Result<&T, &StoreError>) + Send + 'static,
) -> Result<T, StoreError> {
    let work = async move {
        let done = change.await;
        after(done.as_ref());
        done
    };
    crate::run_to_end(work).await.unwrap_or_else(|| Err(StoreError::shut_down()))
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
    /// The same on the wall clock, in milliseconds since the Unix epoch: the monotonic clock
    /// stands still while the machine is suspended (or the VM paused), and cached entries must
    /// not answer after a pause for changes made during it.
    wall_until_ms: AtomicU64,
}

impl LogFreshness {
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    /// The wall clock now, in milliseconds since the Unix epoch.
    fn wall_ms() -> u64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }
}

impl PrincipalCache {
    /// A cache keeping entries for `ttl` (zero disables it), emptying `tokens` with itself when
    /// everything is forgotten.
    pub fn new(ttl: Duration, max_entries: usize, tokens: Arc<TokenCache>) -> Self {
        Self {
            entries: TtlCache::new(if ttl.is_zero() { 0 } else { max_entries }).counted_as("principals"),
            sessions: TtlCache::new(if ttl.is_zero() { 0 } else { max_entries }).counted_as("sessions"),
            ttl,
            tokens,
            epoch: Epoch::default(),
            changed: RwLock::new(Changes::default()),
            max_changed: max_entries.max(MIN_MAX_CHANGED),
            last_purge: AtomicU64::new(0),
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
        let log = LogFreshness {
            base: Instant::now(),
            fresh_for,
            until_ms: AtomicU64::new(0),
            wall_until_ms: AtomicU64::new(0),
        };
        let _ = self.log.set(log);
    }

    /// Notes a successful read of the cache-invalidation log that began at `at` (after it
    /// applied what it read: a lookup that finds the log fresh also finds the purges).
    pub fn log_read(&self, at: Instant) {
        if let Some(log) = self.log.get() {
            let fresh_ms = u64::try_from(log.fresh_for.as_millis()).unwrap_or(u64::MAX);
            let began = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
            let wall = LogFreshness::wall_ms().saturating_sub(began).saturating_add(fresh_ms);
            log.wall_until_ms.fetch_max(wall, Ordering::Release);
            log.until_ms.fetch_max(log.ms(at + log.fresh_for), Ordering::Release);
        }
    }

    /// When the last successful read of the cache-invalidation log began, to the millisecond
    /// (never later than it did); `None` before the first, or when the log is not followed.
    pub fn log_read_at(&self) -> Option<Instant> {
        let log = self.log.get()?;
        let until = log.until_ms.load(Ordering::Acquire);
        let fresh_ms = u64::try_from(log.fresh_for.as_millis()).unwrap_or(u64::MAX);
        (until > 0).then(|| log.base + Duration::from_millis(until.saturating_sub(fresh_ms)))
    }

    /// Whether cached entries answer without a read of the database: always, unless the
    /// cache-invalidation log is followed and was not read recently enough.
    ///
    /// Check it before looking an entry up: a read of the log that makes it fresh has applied
    /// its purges first.
    pub(crate) fn answers(&self) -> bool {
        self.log.get().is_none_or(|log| {
            log.ms(Instant::now()) < log.until_ms.load(Ordering::Acquire)
                && LogFreshness::wall_ms() < log.wall_until_ms.load(Ordering::Acquire)
        })
    }

    /// A principal cache and an empty token cache, both sized from configuration.
    pub fn with_token_cache(config: &crate::config::CacheConfig) -> (Arc<Self>, Arc<TokenCache>) {
        let token_entries = if config.token_ttl.is_zero() { 0 } else { config.max_entries };
        let tokens = Arc::new(TokenCache::new(token_entries).counted_as("tokens"));
        (Arc::new(Self::new(config.principal_ttl, config.max_entries, tokens.clone())), tokens)
    }

    /// Forgets an identity's resolved principal. Its verified tokens stay cached: they hold what
    /// the token says, which no change here alters, and whom the identity belongs to is looked up
    /// in this cache, by issuer and subject, on every use of the token.
    pub fn invalidate_identity(&self, issuer: &Issuer, subject: &Subject) {
        self.epoch.advance();
        self.entries.remove_key(&(issuer.clone(), subject.clone()));
    }

    /// The cached principal of an identity, unless its user was purged since it was cached.
    pub fn get(&self, issuer: &Issuer, subject: &Subject) -> Option<Arc<Principal>> {
        // The key is cloned for the lookup; issuers and subjects are short.
        let key = (issuer.clone(), subject.clone());
        let hit = self.entries.get(&key, Instant::now())?;
        if self.purged_since(hit.value.user.id, hit.epoch) {
            self.entries.remove_key(&key);
            return None;
        }
        Some(hit.value)
    }

    /// Whether an entry of `user` cached by a lookup that began at `epoch` predates a purge of
    /// the user.
    fn purged_since(&self, user: UserId, epoch: u64) -> bool {
        // Cached after the last purge: nothing to look up (and no lock shared by every hit
        // while no one changes).
        if epoch >= self.last_purge.load(Ordering::SeqCst) {
            return false;
        }
        self.changed.read().unwrap_or_else(|p| p.into_inner()).purged_since(user, epoch)
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
        let (key, stamped) = ((issuer.clone(), subject.clone()), Stamped { value: principal, epoch });
        self.epoch.insert_unless_moved(&self.entries, epoch, key, stamped, self.ttl);
    }

    /// How many principals are cached. Expired entries are not counted: they leave memory at
    /// their deadline (see [`TtlCache::len`]). For tests and diagnostics, not for the hot path.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Forgets everything cached about `user`, and reads them from the primary for a while.
    pub fn invalidate_user(&self, user: UserId) {
        self.invalidate_users(&HashSet::from([user]));
    }

    /// [`PrincipalCache::invalidate_user`] for many users, without a walk over the caches: each
    /// user is noted with the epoch this purge advances to, and their entries cached before are
    /// misses from then on. Past `cache.max_entries` users noted (at least 10,000) within
    /// the notes' life (many sign-outs with a long `cache.principal_ttl_seconds`, an import's
    /// changes), the oldest notes are dropped, and with them every entry cached before the
    /// newest dropped; a note younger than [`READ_YOUR_WRITES`] dropped so counts every user as
    /// changed for as long as a replica may lag, as [`PrincipalCache::invalidate_all`] does.
    ///
    /// The note is made under the lock that every read of it takes, with the epoch's move: a
    /// lookup that takes the new epoch finds the user noted, or it could read a lagging replica
    /// and cache what it found there under an epoch that no longer moves. A lookup that took an
    /// older one is refused at its insert, or its entry answers no more. The note's time is
    /// taken after the move, so that every entry it marks was cached before it, and expires
    /// before it does.
    pub fn invalidate_users(&self, users: &HashSet<UserId>) {
        if users.is_empty() {
            return;
        }
        let mut changed = self.changed.write().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch.advance();
        let now = Instant::now();
        changed.expire(now, self.note_life());
        for user in users {
            changed.note(*user, epoch, now);
        }
        if let Some(dropped) = changed.limit(self.max_changed)
            && now.saturating_duration_since(dropped) < READ_YOUR_WRITES
        {
            self.all_changed.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(now);
        }
        self.last_purge.store(epoch, Ordering::SeqCst);
    }

    /// How long a purge's note is kept: as long as an entry cached before it can live, and as
    /// long as its user is read from the primary.
    fn note_life(&self) -> Duration {
        self.ttl.max(READ_YOUR_WRITES)
    }

    /// [`PrincipalCache::invalidate_identity`] for many identities.
    pub fn invalidate_identities(&self, identities: &HashSet<(Issuer, Subject)>) {
        if identities.is_empty() {
            return;
        }
        self.epoch.advance();
        for key in identities {
            self.entries.remove_key(key);
        }
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
        let hit = self.sessions.get(hash, Instant::now())?;
        if self.purged_since(hit.value.record.user_id, hit.epoch) {
            self.sessions.remove_key(hash);
            return None;
        }
        Some(hit.value)
    }

    /// Caches what a session lookup that began at `epoch` found, for at most `life` (and the
    /// cache's lifetime), unless something was invalidated since.
    pub(super) fn insert_session(&self, epoch: u64, live: Arc<LiveSession>, life: Duration) {
        let (key, stamped) = (live.hash, Stamped { value: live, epoch });
        self.epoch.insert_unless_moved(&self.sessions, epoch, key, stamped, life.min(self.ttl));
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
        // Both under the lock a purge notes and marks under: a lookup that took the epoch a purge
        // advanced to finds the purge's marks, everything marked changed included.
        let changed = self.changed.read().unwrap_or_else(|p| p.into_inner());
        let (all, window) = *self.all_changed.lock().unwrap_or_else(|p| p.into_inner());
        if all.is_some_and(|at| at.elapsed() < window) {
            return true;
        }
        changed.by_user.get(&user).is_some_and(|(_, at)| at.elapsed() < READ_YOUR_WRITES)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::domain::{IdentityId, User};

    fn user(id: UserId) -> User {
        let now = chrono::Utc::now();
        User { id, email: None, email_verified: false, name: None, disabled: false, created_at: now, updated_at: now }
    }

    fn principal(id: UserId) -> Arc<Principal> {
        let now = chrono::Utc::now();
        Arc::new(Principal {
            identity_id: IdentityId::generate(),
            last_seen_at: now,
            user: user(id),
            teams: Vec::new(),
        })
    }

    fn session(id: UserId, hash: [u8; 32]) -> Arc<LiveSession> {
        let now = chrono::Utc::now();
        let record = crate::store::SessionRecord {
            user_id: id,
            identity_id: None,
            created_at: now,
            authenticated_at: None,
            last_seen_at: now,
            expires_at: now + chrono::TimeDelta::hours(1),
            user_disabled: false,
        };
        let profile =
            crate::domain::UserProfile { user: user(id), identities: vec![], primary_identity_id: None, teams: vec![] };
        Arc::new(LiveSession { hash, record, profile })
    }

    fn cache() -> PrincipalCache {
        PrincipalCache::new(Duration::from_secs(60), 100, Arc::new(TokenCache::new(100)))
    }

    #[test]
    fn a_lookup_that_raced_an_invalidation_is_not_cached() {
        let cache = cache();
        let (issuer, subject) = (Issuer::parse("https://issuer.example.com").unwrap(), Subject::parse("s").unwrap());
        let user = UserId::generate();
        let epoch = cache.epoch();
        // The user is disabled while the lookup runs: what it read is already stale.
        cache.invalidate_user(user);
        cache.insert(epoch, &issuer, &subject, principal(user));
        assert!(cache.get(&issuer, &subject).is_none());
        // A lookup that began after the invalidation is cached.
        cache.insert(cache.epoch(), &issuer, &subject, principal(user));
        assert!(cache.get(&issuer, &subject).is_some());
    }

    #[test]
    fn a_purge_drops_only_what_was_cached_of_the_user_before_it() {
        let cache = cache();
        let issuer = Issuer::parse("https://issuer.example.com").unwrap();
        let key = |subject: &str| Subject::parse(subject).unwrap();
        let (purged, other) = (UserId::generate(), UserId::generate());
        for (subject, user) in [("a", purged), ("b", purged), ("c", other)] {
            cache.insert(cache.epoch(), &issuer, &key(subject), principal(user));
        }
        cache.invalidate_user(purged);
        assert!(cache.get(&issuer, &key("a")).is_none() && cache.get(&issuer, &key("b")).is_none());
        assert!(cache.get(&issuer, &key("c")).is_some(), "another user's entry stays");
        // Cached again by a lookup that began after the purge: it answers.
        cache.insert(cache.epoch(), &issuer, &key("a"), principal(purged));
        assert!(cache.get(&issuer, &key("a")).is_some());
        // Purged again, in a batch with others.
        cache.invalidate_users(&HashSet::from([purged, UserId::generate()]));
        assert!(cache.get(&issuer, &key("a")).is_none());
        assert!(cache.get(&issuer, &key("c")).is_some());
    }

    #[test]
    fn purge_notes_last_as_long_as_what_they_mark_can_be_cached() {
        let (user, again) = (UserId::generate(), UserId::generate());
        let (start, life) = (Instant::now(), Duration::from_secs(60));
        let mut changes = Changes::default();
        changes.note(user, 5, start);
        changes.note(again, 5, start);
        changes.note(again, 9, start + Duration::from_secs(30));
        assert!(changes.purged_since(user, 4) && !changes.purged_since(user, 5), "entries stamped before the purge");
        changes.expire(start + life - Duration::from_millis(1), life);
        assert!(changes.purged_since(user, 4), "still within the cache's lifetime");
        changes.expire(start + life, life);
        assert!(!changes.purged_since(user, 4), "nothing stamped before it can be cached any more");
        assert!(changes.purged_since(again, 8), "a user purged again keeps the later note");
        changes.expire(start + life + Duration::from_secs(30), life);
        assert!(changes.by_user.is_empty() && changes.order.is_empty());
    }

    #[test]
    fn a_purged_users_cached_sessions_answer_no_more() {
        let cache = cache();
        let (purged, other) = (UserId::generate(), UserId::generate());
        let life = Duration::from_secs(60);
        cache.insert_session(cache.epoch(), session(purged, [1; 32]), life);
        cache.insert_session(cache.epoch(), session(other, [2; 32]), life);
        cache.invalidate_user(purged);
        assert!(cache.session(&[1; 32]).is_none());
        assert!(cache.session(&[2; 32]).is_some(), "another user's session stays");
        cache.insert_session(cache.epoch(), session(purged, [1; 32]), life);
        assert!(cache.session(&[1; 32]).is_some(), "cached again after the purge");
    }

    #[test]
    fn notes_live_as_long_as_the_cache_or_the_reads_from_the_primary() {
        let with_ttl = |seconds| PrincipalCache::new(Duration::from_secs(seconds), 100, Arc::new(TokenCache::new(100)));
        assert_eq!(with_ttl(600).note_life(), Duration::from_secs(600));
        assert_eq!(with_ttl(10).note_life(), READ_YOUR_WRITES);
    }

    #[test]
    fn past_the_limit_of_notes_the_oldest_go_with_what_was_cached_before_them() {
        let cache = cache();
        let issuer = Issuer::parse("https://issuer.example.com").unwrap();
        let (early, late) = (Subject::parse("cached-before-the-burst").unwrap(), Subject::parse("after").unwrap());
        cache.insert(cache.epoch(), &issuer, &early, principal(UserId::generate()));
        let burst: Vec<UserId> = (0..MIN_MAX_CHANGED).map(|_| UserId::generate()).collect();
        cache.invalidate_users(&burst.iter().copied().collect());
        assert!(cache.get(&issuer, &early).is_some(), "at the limit, nothing else is dropped");
        cache.insert(cache.epoch(), &issuer, &late, principal(UserId::generate()));
        let verified = Arc::new(crate::upstream::tokens::VerifiedToken {
            issuer: issuer.clone(),
            provider: "test".into(),
            jit: true,
            subject: early.clone(),
            email: None,
            email_verified: false,
            name: None,
            expires_at: chrono::Utc::now() + chrono::TimeDelta::hours(1),
            audiences: vec!["api".into()],
            acts_on_api: true,
        });
        let now = Instant::now();
        let verified = crate::upstream::tokens::CachedToken::unkeyed(verified);
        cache.tokens.insert([7; 32], verified, now + Duration::from_secs(60), now);
        // A replica whose lag bound started long ago: only a dropped note marks everyone again.
        *cache.all_changed.lock().unwrap() = (None, Duration::from_secs(10));
        assert!(!cache.changed_recently(UserId::generate()));

        cache.invalidate_user(UserId::generate());
        let still_noted = burst.iter().filter(|user| cache.changed.read().unwrap().by_user.contains_key(user)).count();
        assert_eq!(still_noted, MIN_MAX_CHANGED - 1, "one note past the limit: the oldest goes");
        assert!(cache.get(&issuer, &early).is_none(), "cached before the dropped note");
        assert!(cache.get(&issuer, &late).is_some(), "cached after it");
        assert!(cache.tokens.get(&[7; 32], Instant::now()).is_some(), "verified tokens are not touched");
        assert!(cache.changed_recently(UserId::generate()), "a note younger than a minute went: everyone counts");
    }

    #[test]
    fn a_user_purged_in_a_loop_does_not_grow_the_queue_of_notes() {
        let mut changes = Changes::default();
        let (user, start) = (UserId::generate(), Instant::now());
        for i in 0..10_000u64 {
            changes.note(user, i, start + Duration::from_millis(i));
        }
        assert_eq!(changes.by_user.len(), 1);
        assert!(changes.order.len() <= 2 + 64, "{} entries queued for one user", changes.order.len());
        assert!(changes.purged_since(user, 9_998) && !changes.purged_since(user, 9_999));
    }

    #[test]
    fn a_changed_user_is_read_from_the_primary_for_a_while() {
        let cache = cache();
        let (changed, other) = (UserId::generate(), UserId::generate());
        cache.invalidate_user(changed);
        assert!(cache.changed_recently(changed));
        assert!(!cache.changed_recently(other));
        // Forgetting everything without knowing what changed (start-up, an outage of the log):
        // with a replica, every user is read from the primary for its bound; without one, every
        // read is from the primary anyway, and nothing is marked.
        cache.invalidate_all();
        assert!(!cache.changed_recently(other), "no replica");
        cache.set_replica_lag(Duration::from_secs(10));
        assert!(cache.changed_recently(other), "from start-up");
        cache.invalidate_all();
        assert!(cache.changed_recently(other) && cache.changed_recently(UserId::generate()));
        cache.set_replica_lag(Duration::ZERO);
        assert!(!cache.changed_recently(other), "for as long as the bound only");
        // Changes made elsewhere are known only from the log: while it has not been read
        // lately, any user may have changed.
        cache.follow_log(Duration::from_secs(1));
        assert!(cache.changed_recently(other), "the log never read yet");
        cache.log_read(Instant::now());
        assert!(!cache.changed_recently(other), "the log read just now");
    }
}
