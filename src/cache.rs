//! A small bounded in-memory cache with per-entry deadlines, for the token-validation path.
//!
//! It never stores negative answers: callers insert only what they found. It is a
//! [`moka::sync::Cache`]: an entry leaves memory at its own deadline, whether or not the cache is
//! full (moka's timer wheel finds it during the housekeeping that the cache's reads and writes
//! run, at least every 300 ms while it is used; an idle cache drops it at its next use), and when
//! the cache is full its TinyLFU policy keeps the entries used most often rather than admitting
//! every newcomer. So under steady load the cache holds about what arrived within one lifetime,
//! never more than its limit (README, "Memory of the caches", has the cost per entry).

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

/// A bounded map whose entries expire at their own deadline.
pub struct TtlCache<K, V> {
    /// `None` when the cache is disabled (a limit of zero entries).
    entries: Option<Cache<K, Entry<V>>>,
    max_entries: usize,
    /// Lookups that found a live entry, and those that did not (no-ops until
    /// [`TtlCache::counted_as`] names the cache).
    hits: metrics::Counter,
    misses: metrics::Counter,
}

/// A value and the instant it stops being served.
#[derive(Clone)]
struct Entry<V> {
    value: V,
    until: Instant,
}

/// Tells moka that an entry lives until its own deadline, on insert and on replacement alike.
struct UntilDeadline;

impl<K, V> Expiry<K, Entry<V>> for UntilDeadline {
    fn expire_after_create(&self, _key: &K, entry: &Entry<V>, created_at: Instant) -> Option<Duration> {
        Some(entry.until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &K,
        entry: &Entry<V>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.until.saturating_duration_since(updated_at))
    }
}

impl<K, V> TtlCache<K, V>
where
    K: Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// An empty cache holding at most `max_entries` (zero disables it).
    pub fn new(max_entries: usize) -> Self {
        let entries = (max_entries > 0).then(|| {
            Cache::builder()
                .max_capacity(u64::try_from(max_entries).unwrap_or(u64::MAX))
                .expire_after(UntilDeadline)
                .build()
        });
        Self { entries, max_entries, hits: metrics::Counter::noop(), misses: metrics::Counter::noop() }
    }

    /// Counts this cache's lookups in `tessera_cache_lookups_total{cache = name}` (a disabled
    /// cache counts nothing). The counters are those of the recorder installed now.
    #[must_use]
    pub fn counted_as(mut self, name: &'static str) -> Self {
        if self.entries.is_some() {
            (self.hits, self.misses) = crate::observability::cache_counters(name);
        }
        self
    }

    /// The value for `key`, unless absent or past its deadline.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.entries.as_ref()?;
        let Some(entry) = entries.get(key) else {
            self.misses.increment(1);
            return None;
        };
        // moka drops an entry at its deadline by its own clock; the caller's `now` decides too.
        if now < entry.until {
            self.hits.increment(1);
            Some(entry.value)
        } else {
            entries.invalidate(key);
            self.misses.increment(1);
            None
        }
    }

    /// Stores `value` until `until`.
    pub fn insert(&self, key: K, value: V, until: Instant, now: Instant) {
        let Some(entries) = &self.entries else { return };
        if until <= now {
            return;
        }
        entries.insert(key, Entry { value, until });
    }

    /// Removes one entry.
    pub fn remove_key(&self, key: &K) {
        if let Some(entries) = &self.entries {
            entries.invalidate(key);
        }
    }

    /// Removes every entry.
    pub fn clear(&self) {
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
    }

    /// How many entries are held. Runs the pending housekeeping first, so that expired and
    /// evicted entries are no longer counted (and no longer in memory): for tests and
    /// diagnostics, not for the hot path.
    pub fn len(&self) -> usize {
        let Some(entries) = &self.entries else { return 0 };
        entries.run_pending_tasks();
        usize::try_from(entries.entry_count()).unwrap_or(usize::MAX)
    }

    /// Whether the cache is empty (see [`TtlCache::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries the cache holds (zero when it is disabled).
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

/// A generation counter for caches that a change elsewhere may make stale: every invalidation
/// advances it, and a value read while it moved is not cached (it may be from before the change).
#[derive(Debug, Default)]
pub struct Epoch(AtomicU64);

impl Epoch {
    /// The current generation, to take before a read whose answer will be cached.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Marks an invalidation; returns the new generation.
    pub fn advance(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Stores `value` in `cache` for `life` unless the epoch moved past `seen`. Checked after the
    /// insert too: an invalidation between the check and the insert would otherwise not see the
    /// new entry. When it moved, an older entry under `key` goes too: the read that found `value`
    /// is newer than it, and it must not answer later in its place (when the database cannot be
    /// read, say).
    pub fn insert_unless_moved<K, V>(&self, cache: &TtlCache<K, V>, seen: u64, key: K, value: V, life: Duration)
    where
        K: Clone + Eq + Hash + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        if self.current() != seen {
            cache.remove_key(&key);
            return;
        }
        let now = Instant::now();
        cache.insert(key.clone(), value, now + life, now);
        if self.current() != seen {
            cache.remove_key(&key);
        }
    }
}

impl<K, V> fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts only: the entries are principals and token claims, too many and too personal
        // to print.
        f.debug_struct("TtlCache")
            .field("max_entries", &self.max_entries)
            .field("entries", &self.entries.as_ref().map_or(0, |entries| entries.entry_count()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entries_expire_at_their_deadline() {
        let cache = TtlCache::new(10);
        let now = Instant::now();
        cache.insert("a", 1, now + Duration::from_secs(1), now);
        assert_eq!(cache.get(&"a", now), Some(1));
        assert_eq!(cache.get(&"a", now + Duration::from_secs(1)), None);
        assert!(cache.is_empty(), "an expired entry is dropped when read");
        cache.insert("b", 2, now, now);
        assert_eq!(cache.get(&"b", now), None, "an entry already past its deadline is not stored");
    }

    #[test]
    fn expired_entries_leave_the_cache_without_being_read_or_pushed_out() {
        // Far from full: only the deadlines can empty it.
        let cache = TtlCache::new(100_000);
        let now = Instant::now();
        let until = now + Duration::from_millis(300);
        for i in 0..1_000 {
            cache.insert(i, i, until, now);
        }
        let longer = now + Duration::from_secs(60);
        cache.insert(-1, -1, longer, now);
        assert_eq!(cache.len(), 1_001);
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.len() > 1 {
            assert!(Instant::now() < deadline, "{} entries still held past their deadline", cache.len());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(cache.get(&-1, Instant::now()), Some(-1), "an entry within its deadline stays");
    }

    #[test]
    fn a_replaced_entry_lives_until_its_new_deadline() {
        let cache = TtlCache::new(10);
        let now = Instant::now();
        cache.insert("a", 1, now + Duration::from_secs(60), now);
        cache.insert("a", 2, now + Duration::from_millis(100), now);
        assert_eq!(cache.get(&"a", now), Some(2));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cache.is_empty() {
            assert!(Instant::now() < deadline, "the replaced entry kept the old deadline");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A recorder keeping every counter it hands out, by name and labels.
    #[derive(Default)]
    struct Counters(std::sync::Mutex<Vec<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)>>);

    impl Counters {
        fn get(&self, key: &str) -> u64 {
            let counters = self.0.lock().unwrap();
            counters.iter().filter(|(k, _)| k == key).map(|(_, v)| v.load(std::sync::atomic::Ordering::Relaxed)).sum()
        }
    }

    impl metrics::Recorder for Counters {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
            let labels: Vec<_> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            let value = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            self.0.lock().unwrap().push((format!("{} {}", key.name(), labels.join(",")), value.clone()));
            metrics::Counter::from_arc(value)
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn a_named_cache_counts_its_hits_and_misses() {
        let recorder = Counters::default();
        let (cache, disabled) = metrics::with_local_recorder(&recorder, || {
            (TtlCache::<&str, i32>::new(10).counted_as("t"), TtlCache::<&str, i32>::new(0).counted_as("off"))
        });
        let now = Instant::now();
        cache.insert("a", 1, now + Duration::from_secs(1), now);
        assert_eq!(cache.get(&"a", now), Some(1));
        assert_eq!(cache.get(&"a", now), Some(1));
        assert_eq!(cache.get(&"b", now), None);
        assert_eq!(cache.get(&"a", now + Duration::from_secs(2)), None, "expired: a miss");
        let (hits, misses) =
            ("tessera_cache_lookups_total cache=t,result=hit", "tessera_cache_lookups_total cache=t,result=miss");
        assert_eq!((recorder.get(hits), recorder.get(misses)), (2, 2));
        assert_eq!(disabled.get(&"a", now), None);
        assert_eq!(
            recorder.get("tessera_cache_lookups_total cache=off,result=miss"),
            0,
            "a disabled cache counts nothing"
        );
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = TtlCache::new(3);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        for i in 0..100 {
            cache.insert(i, i, later, now);
            assert!(cache.len() <= 3);
        }
        let disabled = TtlCache::new(0);
        disabled.insert(1, 1, later, now);
        assert_eq!(disabled.get(&1, now), None);
        assert_eq!(disabled.len(), 0);
    }

    #[test]
    fn an_insert_refused_for_a_moved_epoch_takes_the_older_entry_away() {
        let cache: TtlCache<&str, u32> = TtlCache::new(10);
        let epoch = Epoch::default();
        let seen = epoch.current();
        epoch.insert_unless_moved(&cache, seen, "k", 1, Duration::from_secs(60));
        assert_eq!(cache.get(&"k", Instant::now()), Some(1));
        let before = epoch.current();
        epoch.advance();
        epoch.insert_unless_moved(&cache, before, "k", 2, Duration::from_secs(60));
        assert_eq!(cache.get(&"k", Instant::now()), None, "neither the refused value nor the older one");
    }

    #[test]
    fn entries_can_be_purged_by_key() {
        let cache = TtlCache::new(100);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        for i in 0..10 {
            cache.insert(i, i % 2, later, now);
        }
        cache.remove_key(&0);
        assert_eq!(cache.get(&0, now), None);
        assert_eq!(cache.get(&2, now), Some(0));
        assert_eq!(cache.len(), 9);
    }
}
