//! A small bounded in-memory cache with per-entry deadlines, for the token-validation path.
//!
//! It never stores negative answers: callers insert only what they found. When full, expired
//! entries are dropped first; if that is not enough the cache starts over, which costs a burst of
//! misses but keeps memory bounded under any load.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// A bounded map whose entries expire at their own deadline.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    max_entries: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// An empty cache holding at most `max_entries` (zero disables it).
    pub fn new(max_entries: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), max_entries }
    }

    /// The value for `key`, unless absent or past its deadline.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((value, until)) if now < *until => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` until `until`.
    pub fn insert(&self, key: K, value: V, until: Instant, now: Instant) {
        if self.max_entries == 0 || until <= now {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            entries.retain(|_, (_, deadline)| now < *deadline);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(key, (value, until));
    }

    /// Removes one entry.
    pub fn remove_key(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Removes every entry whose value matches `predicate`.
    pub fn remove_where(&self, predicate: impl Fn(&V) -> bool) {
        self.lock().retain(|_, (value, _)| !predicate(value));
    }

    /// How many entries are held (expired ones included until they are touched).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        // A panic while holding the lock cannot leave the map inconsistent (every operation is a
        // single HashMap call), so a poisoned lock is safe to keep using.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    fn the_cache_stays_bounded_and_can_be_purged_by_value() {
        let cache = TtlCache::new(3);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        for i in 0..10 {
            cache.insert(i, i % 2, later, now);
            assert!(cache.len() <= 3);
        }
        cache.insert(100, 1, later, now);
        cache.insert(101, 0, later, now);
        cache.remove_where(|v| *v == 1);
        assert_eq!(cache.get(&100, now), None);
        assert_eq!(cache.get(&101, now), Some(0));
        let disabled = TtlCache::new(0);
        disabled.insert(1, 1, later, now);
        assert_eq!(disabled.get(&1, now), None);
    }
}
