//! Cache invalidation across instances: every change that an instance's caches must forget writes
//! a row to the cache-invalidation log in its own transaction (see `src/store/cache_sync.rs`), and
//! every instance reads the rows it has not applied yet every `cache.sync_interval_ms` (250 ms by
//! default) from the primary and applies them to its caches: the principal cache (by user and by
//! identity) and the client cache. An instance re-applies
//! its own changes too, which is harmless.
//!
//! **Out-of-order commits.** On PostgreSQL a row's sequence number is taken at insert and becomes
//! visible at commit, so a transaction may commit row 7 after another's row 8 was read. Reading
//! `seq > last` alone would skip row 7 for ever. So the [`Cursor`] remembers the numbers it
//! skipped (the gaps below the highest it read) for [`GAP_WAIT`], and each poll reads again from
//! the lowest open gap, applying only rows it has not applied. A gap that does not fill within
//! [`GAP_WAIT`] was a rolled-back transaction (or a sequence jump after a crash) and is dropped.
//! Only a change whose transaction takes longer than that between writing its row and committing
//! is missed, and then only until the cache entry expires. SQLite has one writer, so its rows
//! always become visible in order. The rule needs no clock shared between instances: gaps age on
//! the instance's own monotonic clock.
//!
//! **Start and outages.** An instance starts [`START_OVERLAP`] rows below the log's head (so that
//! transactions in flight at start-up are seen) and forgets everything it cached before it knew
//! the head. After [`OUTAGE_LIMIT`] without a successful poll, rows it needed may have been
//! pruned ([`RETENTION`]), so it forgets everything on the next successful poll instead.
//!
//! **A log that goes back.** A failover to a replica that had not received the last commits, or
//! a restored backup, leaves the log's head below what an instance read, and new rows take the
//! lost numbers again: read as `seq > last`, they would be skipped. Each poll reads, in the same
//! statement as its rows, the log's head and when the last row the instance read was written. A
//! head below the cursor, or that row written at another time (new rows took its number, and
//! went past it, while the instance could not poll — as every instance cannot during the
//! failover itself), makes the instance forget everything and start again [`START_OVERLAP`]
//! rows below the head. (The sweeper deletes rows in the log's order, so the head goes only with
//! every other row: a head below the cursor is never pruning, and an empty log says nothing. A
//! last-read row that is gone says nothing either: the sweeper may have taken it.) Missed still:
//! new rows that take the lost numbers but not the cursor's own (its number went to a
//! transaction that rolled back), until their entries expire.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;

use super::op::clients::Clients;
use super::op::keys::SigningKeys;
use super::principals::PrincipalCache;
use crate::store::{CacheChange, LogPage, LoggedChange, Store, StoreError};

/// How long a skipped sequence number is waited for.
pub const GAP_WAIT: Duration = Duration::from_secs(10);
/// Most runs of skipped sequence numbers remembered at once (the lowest go first). A run is any
/// length: one transaction's many rows, in flight while another's commit is read, are one run.
const MAX_GAPS: usize = 1_000;
/// How many rows below the head an instance starts reading at.
const START_OVERLAP: i64 = 100;
/// Rows read per query.
const BATCH: i64 = 500;
/// How long rows are kept in the log (the sweeper deletes older ones).
pub const RETENTION: Duration = Duration::from_secs(600);
/// After this long without a successful poll, an instance forgets all it cached.
pub const OUTAGE_LIMIT: Duration = Duration::from_secs(300);

/// How long past the log's interval a successful read of it lets cached principals and sessions
/// answer without a read of the database.
/// With the default interval (250 ms), 1 s in all: the bound within which a change made on
/// another instance is honoured here, however slow the log's reads.
pub const FRESHNESS_MARGIN: Duration = Duration::from_millis(750);

/// Where an instance is in the log.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// The highest sequence number read.
    last: i64,
    /// When the row numbered `last` was written, if this cursor read it (not one set at a number).
    last_written_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Runs of sequence numbers below `last` not seen yet, by their first number: the last
    /// number of each run, and when the run was first missed.
    gaps: BTreeMap<i64, (i64, Instant)>,
    /// When the last poll succeeded.
    polled_at: Instant,
    /// The same, on the wall clock: a suspended or paused machine's monotonic clock stands
    /// still, and an instance resumed after longer than the log's retention has missed rows.
    polled_wall: std::time::SystemTime,
}

impl Cursor {
    /// A cursor that has read everything up to `last`.
    pub fn at(last: i64, now: Instant) -> Self {
        Self {
            last,
            last_written_at: None,
            gaps: BTreeMap::new(),
            polled_at: now,
            polled_wall: std::time::SystemTime::now(),
        }
    }

    /// The number of the last row read, for the next read to say when it was written (none for
    /// a cursor set at a number).
    fn anchor(&self) -> Option<i64> {
        self.last_written_at.map(|_| self.last)
    }

    /// Whether `page` (read with [`Cursor::anchor`]) shows that the log went back: its head is
    /// below the rows read, or the last row read has been replaced by another with its number.
    pub fn went_back(&self, page: &LogPage) -> bool {
        let head_below = page.head > 0 && page.head < self.last;
        let renumbered =
            matches!((self.last_written_at, page.anchor_written_at), (Some(read), Some(now)) if read != now);
        head_below || renumbered
    }

    /// The highest sequence number read.
    pub fn last(&self) -> i64 {
        self.last
    }

    /// The runs of sequence numbers skipped and still waited for (first and last number of
    /// each), lowest first.
    pub fn gaps(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.gaps.iter().map(|(&first, &(last, _))| (first, last))
    }

    /// Takes `seq` out of the run that holds it, if any (splitting the run); whether one did.
    fn fill(&mut self, seq: i64) -> bool {
        let Some((&first, &(last, missed_at))) = self.gaps.range(..=seq).next_back() else {
            return false;
        };
        if last < seq {
            return false;
        }
        self.gaps.remove(&first);
        if first < seq {
            self.gaps.insert(first, (seq - 1, missed_at));
        }
        if seq < last {
            self.gaps.insert(seq + 1, (last, missed_at));
        }
        true
    }

    /// Where the next read starts (after this number): below the lowest open gap, else at `last`.
    pub fn read_after(&self) -> i64 {
        self.gaps.keys().next().map_or(self.last, |first| (first - 1).min(self.last))
    }

    /// How long since the last successful poll, by the longer of the monotonic clock and the
    /// wall clock (which goes on while the machine is suspended).
    fn unread_for(&self, now: Instant, wall: std::time::SystemTime) -> Duration {
        now.saturating_duration_since(self.polled_at).max(wall.duration_since(self.polled_wall).unwrap_or_default())
    }

    /// Drops the gaps older than [`GAP_WAIT`].
    pub fn expire_gaps(&mut self, now: Instant) {
        self.gaps.retain(|_, (_, missed_at)| now.saturating_duration_since(*missed_at) < GAP_WAIT);
    }

    /// Takes a batch of rows read after [`Cursor::read_after`], in order; returns the rows not
    /// applied before (new ones, and those that fill a gap).
    pub fn take(&mut self, rows: Vec<LoggedChange>, now: Instant) -> Vec<LoggedChange> {
        let mut fresh = Vec::new();
        for row in rows {
            if row.seq > self.last {
                // However long (a transaction in flight with thousands of rows, or an empty
                // log's head far below the sequence), the skipped numbers are one run: a read
                // from below it costs only the rows that exist.
                if row.seq > self.last + 1 {
                    self.gaps.insert(self.last + 1, (row.seq - 1, now));
                }
                self.last = row.seq;
                self.last_written_at = row.written_at;
                fresh.push(row);
            } else if self.fill(row.seq) {
                fresh.push(row);
            }
        }
        while self.gaps.len() > MAX_GAPS {
            self.gaps.pop_first();
        }
        fresh
    }
}

/// Reads the cache-invalidation log and applies it to this instance's caches.
#[derive(Debug, Clone)]
pub struct CacheSync {
    store: Arc<dyn Store>,
    principals: Arc<PrincipalCache>,
    clients: Clients,
    signing_keys: Option<SigningKeys>,
}

impl CacheSync {
    /// The service, applying the log to `principals` (and their verified tokens) and `clients`,
    /// read every `every`: from now on, `principals` answer from memory only while the log was
    /// read within `every` and [`FRESHNESS_MARGIN`] ([`PrincipalCache::follow_log`]).
    pub fn new(store: Arc<dyn Store>, principals: Arc<PrincipalCache>, clients: Clients, every: Duration) -> Self {
        principals.follow_log(every + FRESHNESS_MARGIN);
        Self { store, principals, clients, signing_keys: None }
    }

    /// Also marks the OpenID Provider's signing keys out of date when another instance made or
    /// rotated one.
    pub fn with_signing_keys(mut self, signing_keys: Option<SigningKeys>) -> Self {
        self.signing_keys = signing_keys;
        self
    }

    /// A cursor [`START_OVERLAP`] rows below the log's head. Whatever was cached before is
    /// forgotten, since changes made meanwhile may be below the cursor.
    pub async fn start(&self) -> Result<Cursor, StoreError> {
        let began = Instant::now();
        let head = self.store.cache_changes_head().await?;
        self.forget_everything();
        self.principals.log_read(began);
        Ok(Cursor::at((head - START_OVERLAP).max(0), began))
    }

    /// Reads the rows after the cursor (from its lowest open gap) and applies those not applied
    /// before; returns how many were applied.
    pub async fn poll(&self, cursor: &mut Cursor) -> Result<usize, StoreError> {
        let now = Instant::now();
        let mut after = cursor.read_after();
        let mut applied = 0;
        loop {
            let page = self.store.cache_changes_after(after, BATCH, cursor.anchor()).await?;
            if cursor.went_back(&page) {
                // Rows this instance read are gone and new ones take their numbers again: changes
                // made from now on would be below the cursor, skipped for ever. What the lost rows
                // said, and what was cached since, is unknown: start again below the head.
                tracing::warn!(
                    head = page.head,
                    read = cursor.last(),
                    "the cache-invalidation log went back (a failover that lost its last writes, or a restored backup): forgetting every cached entry"
                );
                self.forget_everything();
                // Below the head, as at start-up: a transaction that took a number before it and
                // is still open will be seen when it commits.
                *cursor = Cursor::at((page.head - START_OVERLAP).max(0), now);
                break;
            }
            let LogPage { rows, .. } = page;
            let full = rows.len() as i64 >= BATCH;
            if let Some(last) = rows.last() {
                after = last.seq;
            }
            let taken = cursor.take(rows, now);
            if let Some(unreadable) = taken.iter().find(|row| row.change.is_none()) {
                tracing::warn!(
                    seq = unreadable.seq,
                    "a cache-invalidation row cannot be read (written by a newer version?): forgetting every cached entry"
                );
                self.forget_everything();
            }
            let fresh: Vec<CacheChange> = taken.into_iter().filter_map(|row| row.change).collect();
            self.apply(&fresh);
            applied += fresh.len();
            if !full {
                break;
            }
        }
        // Gaps expire only after a read that could have found them: a slow interval or a failed
        // poll never drops a gap unread.
        cursor.expire_gaps(now);
        let wall = std::time::SystemTime::now();
        let since = cursor.unread_for(now, wall);
        if since > OUTAGE_LIMIT {
            tracing::warn!(
                outage_s = since.as_secs(),
                "the cache-invalidation log was unreadable (or this machine paused) for a long time: forgetting every cached entry"
            );
            self.forget_everything();
        }
        cursor.polled_at = now;
        cursor.polled_wall = wall;
        self.principals.log_read(now);
        Ok(applied)
    }

    /// Applies changes to this instance's caches: one purge for a whole batch.
    pub fn apply(&self, changes: &[CacheChange]) {
        let (mut users, mut identities) = (HashSet::new(), HashSet::new());
        for change in changes {
            match change {
                CacheChange::User(user) => {
                    users.insert(*user);
                }
                CacheChange::Identity { issuer, subject } => {
                    identities.insert((issuer.clone(), subject.clone()));
                }
                CacheChange::Client(id) => self.clients.forget(id),
                CacheChange::SigningKeys => self.signing_keys.iter().for_each(SigningKeys::mark_stale),
            }
        }
        self.principals.invalidate_users(&users);
        self.principals.invalidate_identities(&identities);
    }

    /// When this instance's last successful read of the log began (`None` before the first):
    /// every change committed before then has been applied.
    pub fn last_read_at(&self) -> Option<Instant> {
        self.principals.log_read_at()
    }

    /// Forgets every cached principal, verified token and client.
    pub fn forget_everything(&self) {
        self.principals.invalidate_all();
        self.clients.forget_all();
        self.signing_keys.iter().for_each(SigningKeys::mark_stale);
    }

    /// Deletes the rows older than [`RETENTION`] (the sweeper calls it).
    pub async fn delete_old(&self) -> Result<u64, StoreError> {
        let retention = TimeDelta::from_std(RETENTION).unwrap_or(TimeDelta::minutes(10));
        self.store.delete_cache_changes_before(crate::domain::now() - retention).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;

    fn rows(seqs: &[i64]) -> Vec<LoggedChange> {
        seqs.iter().map(|&seq| row(seq, written(seq))).collect()
    }

    fn row(seq: i64, written_at: chrono::DateTime<chrono::Utc>) -> LoggedChange {
        LoggedChange { seq, change: Some(CacheChange::User(UserId::generate())), written_at: Some(written_at) }
    }

    /// A time for the row numbered `seq` (a second apart each).
    fn written(seq: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_800_000_000 + seq, 0).unwrap()
    }

    fn page(head: i64, anchor_written_at: Option<chrono::DateTime<chrono::Utc>>) -> LogPage {
        LogPage { head, anchor_written_at, rows: vec![] }
    }

    #[test]
    fn a_log_went_back_when_its_head_is_below_or_the_last_row_read_was_written_again() {
        let now = Instant::now();
        let mut cursor = Cursor::at(10, now);
        assert_eq!(cursor.anchor(), None, "a cursor set at a number has no row to compare");
        assert!(!cursor.went_back(&page(12, Some(written(99)))));
        cursor.take(rows(&[11, 12]), now);
        assert_eq!(cursor.anchor(), Some(12));
        assert!(!cursor.went_back(&page(12, Some(written(12)))), "the same row");
        assert!(!cursor.went_back(&page(15, Some(written(12)))), "rows after it");
        assert!(!cursor.went_back(&page(15, None)), "pruned by the sweeper, or lost: nothing to tell");
        assert!(!cursor.went_back(&page(0, None)), "an empty log says nothing");
        assert!(cursor.went_back(&page(11, None)), "the head below the rows read");
        assert!(cursor.went_back(&page(15, Some(written(13)))), "row 12 written again after the log went back");
        // A row filling a gap below the last one read does not move the anchor.
        cursor.take(vec![row(13, written(13)), row(15, written(15))], now);
        cursor.take(vec![row(14, written(14))], now);
        assert_eq!(cursor.anchor(), Some(15));
        assert!(!cursor.went_back(&page(15, Some(written(15)))));
    }

    fn seqs(rows: &[LoggedChange]) -> Vec<i64> {
        rows.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn rows_in_order_are_applied_once() {
        let now = Instant::now();
        let mut cursor = Cursor::at(0, now);
        assert_eq!(seqs(&cursor.take(rows(&[1, 2, 3]), now)), [1, 2, 3]);
        assert_eq!(cursor.last(), 3);
        assert_eq!(cursor.read_after(), 3);
        assert!(cursor.take(rows(&[2, 3]), now).is_empty(), "rows read again are not applied again");
    }

    #[test]
    fn a_row_committed_late_below_the_last_one_read_is_applied_when_it_appears() {
        let now = Instant::now();
        let mut cursor = Cursor::at(10, now);
        // 11 and 13 committed; 12 is still in flight.
        assert_eq!(seqs(&cursor.take(rows(&[11, 13]), now)), [11, 13]);
        assert_eq!(cursor.gaps().collect::<Vec<_>>(), [(12, 12)]);
        assert_eq!(cursor.read_after(), 11, "the next read starts below the gap");
        // Next poll: 12 has committed, 14 too.
        assert_eq!(seqs(&cursor.take(rows(&[12, 13, 14]), now)), [12, 14]);
        assert_eq!(cursor.gaps().count(), 0);
        assert_eq!(cursor.read_after(), 14);
    }

    #[test]
    fn a_gap_that_never_fills_is_dropped_after_the_wait() {
        let now = Instant::now();
        let mut cursor = Cursor::at(0, now);
        cursor.take(rows(&[1, 3]), now);
        cursor.expire_gaps(now + GAP_WAIT / 2);
        assert_eq!(cursor.read_after(), 1);
        cursor.expire_gaps(now + GAP_WAIT);
        assert_eq!(cursor.read_after(), 3, "a rolled-back transaction's number is not waited for forever");
    }

    #[test]
    fn a_pause_of_the_machine_counts_as_time_unread() {
        let (now, wall) = (Instant::now(), std::time::SystemTime::now());
        let mut cursor = Cursor::at(0, now);
        assert!(cursor.unread_for(now, wall) < OUTAGE_LIMIT);
        // Suspended for ten minutes: the monotonic clock stood still, the wall clock did not.
        cursor.polled_wall = wall - Duration::from_secs(600);
        assert!(cursor.unread_for(now, wall) > OUTAGE_LIMIT);
        // A wall clock set back is no outage by itself; the monotonic clock still counts.
        cursor.polled_wall = wall + Duration::from_secs(600);
        assert!(cursor.unread_for(now + OUTAGE_LIMIT * 2, wall) > OUTAGE_LIMIT);
    }

    #[test]
    fn a_transaction_of_thousands_of_rows_in_flight_is_waited_for_whole() {
        let now = Instant::now();
        let mut cursor = Cursor::at(0, now);
        // A team deletion's 5,000 rows (1..=5000) are in flight when another commit (5001) is read.
        assert_eq!(seqs(&cursor.take(rows(&[5_001]), now)), [5_001]);
        assert_eq!(cursor.gaps().collect::<Vec<_>>(), [(1, 5_000)]);
        assert_eq!(cursor.read_after(), 0);
        // Some of a run filled splits it; the rest is still waited for.
        assert_eq!(seqs(&cursor.take(rows(&[10, 11, 4_000]), now)), [10, 11, 4_000]);
        assert_eq!(cursor.gaps().collect::<Vec<_>>(), [(1, 9), (12, 3_999), (4_001, 5_000)]);
        // The deletion commits: every one of its rows is applied, once.
        let all: Vec<i64> = (1..=5_002).collect();
        let applied = seqs(&cursor.take(rows(&all), now));
        assert_eq!(applied.len(), 5_000 - 3 + 1, "the rest of the run and the new row 5002");
        assert!(!applied.contains(&10) && !applied.contains(&5_001));
        assert_eq!(cursor.gaps().count(), 0);
        assert_eq!(cursor.read_after(), 5_002);
    }

    #[test]
    fn many_runs_of_gaps_keep_the_newest() {
        let now = Instant::now();
        let mut cursor = Cursor::at(0, now);
        // A huge jump (from an empty log's head, say) is one run.
        cursor.take(rows(&[1_000_000]), now);
        assert_eq!(cursor.gaps().collect::<Vec<_>>(), [(1, 999_999)]);
        // Many separate runs: at most MAX_GAPS are kept, the lowest dropped first.
        let many: Vec<i64> = (0..=MAX_GAPS as i64 + 10).map(|i| 1_000_000 + 2 * (i + 1)).collect();
        cursor.take(rows(&many), now);
        assert_eq!(cursor.gaps().count(), MAX_GAPS);
        assert!(cursor.gaps().next().unwrap().0 > 1_000_001);
    }
}
