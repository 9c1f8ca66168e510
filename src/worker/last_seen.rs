//! Last-use bookkeeping off the request path: token validation and session resolution record
//! when an identity or a session was last seen in memory ([`LastSeen`]), and this worker writes
//! them, 128 rows a statement and a transaction, every `server.last_seen_flush_ms`, at once for a
//! session resumed near its idle limit, and once more at shutdown.
//! A request never waits for such a write; a crash loses at most one interval of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::IdentityId;
use crate::error::ErrorChain as _;
use crate::store::{Store, StoreError};

/// How often at most a use of one identity or session is noted: a use is noted when the time
/// last noted for it (stored, or cached with what was read) is this old or more.
pub const TOUCH_INTERVAL: TimeDelta = TimeDelta::seconds(60);

/// Last-use times waiting to be written. Each key holds its latest time only, so memory is
/// bounded by the distinct identities and sessions seen in one interval.
#[derive(Debug)]
pub struct LastSeen {
    pending: Mutex<Pending>,
    /// How often the worker writes them (`server.last_seen_flush_ms`).
    every: Duration,
    /// Wakes the worker for a use that must not wait for its interval.
    urgent: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Pending {
    identities: HashMap<IdentityId, DateTime<Utc>>,
    sessions: HashMap<[u8; 32], DateTime<Utc>>,
}

impl LastSeen {
    /// Nothing noted yet; the worker writes what is noted every `every`.
    pub fn new(every: Duration) -> Self {
        Self { pending: Mutex::default(), every, urgent: tokio::sync::Notify::new() }
    }

    /// How often the worker writes what is noted.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Records that an identity was seen at `at`.
    pub fn identity(&self, identity: IdentityId, at: DateTime<Utc>) {
        let mut pending = self.lock();
        let entry = pending.identities.entry(identity).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Records that a session (by the hash of its cookie) was used at `at`.
    pub fn session(&self, token_hash: [u8; 32], at: DateTime<Utc>) {
        let mut pending = self.lock();
        let entry = pending.sessions.entry(token_hash).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Records that a session was used at `at`, and has the worker write what is pending now
    /// rather than at its next interval (still off the request's path): a session resumed near
    /// its idle limit would meanwhile read as idle to the sweep, to other instances and to the
    /// grants bound to it, as its stored last use is.
    pub fn session_now(&self, token_hash: [u8; 32], at: DateTime<Utc>) {
        self.session(token_hash, at);
        self.urgent.notify_one();
    }

    /// How many last-use times wait to be written.
    pub fn pending(&self) -> usize {
        let pending = self.lock();
        pending.identities.len() + pending.sessions.len()
    }

    /// Writes what is pending. What cannot be written is kept for the next attempt.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let taken = std::mem::take(&mut *self.lock());
        // In key order: instances flushing the same rows at once then lock them in one order,
        // not each in its map's, which could deadlock two flushes on PostgreSQL.
        let mut identities: Vec<_> = taken.identities.into_iter().collect();
        identities.sort_unstable_by_key(|(identity, _)| *identity);
        let mut sessions: Vec<_> = taken.sessions.into_iter().collect();
        sessions.sort_unstable_by_key(|(token_hash, _)| *token_hash);
        let written = identities.len() + sessions.len();
        // Key order is the order of the rows' locks only where PostgreSQL's plan follows the
        // list; a flush it aborts for a deadlock anyway is run again (the writes never move a
        // time back, so writing a row twice changes nothing).
        let mut attempts = 0;
        let outcome = loop {
            let outcome = match store.touch_identities(&identities).await {
                Ok(()) => store.touch_sessions(&sessions).await.map_err(|e| (e, false)),
                Err(e) => Err((e, true)),
            };
            match outcome {
                Err((error, _)) if error.is_conflict() && attempts < 2 => attempts += 1,
                outcome => break outcome,
            }
        };
        match outcome {
            Ok(()) => Ok(written),
            Err((error, identities_too)) => {
                if identities_too {
                    for (identity, at) in identities {
                        self.identity(identity, at);
                    }
                }
                for (token_hash, at) in sessions {
                    self.session(token_hash, at);
                }
                Err(error)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes the pending last-use times every [`LastSeen::every`], and at once when a use asks for
/// it ([`LastSeen::session_now`]), until `stop` changes (between writes, never during one).
pub(super) async fn run(last_seen: Arc<LastSeen>, store: Arc<dyn Store>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(last_seen.every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            // A wake-up during a write is kept (one permit), so a use noted after the write took
            // what was pending is written next.
            _ = last_seen.urgent.notified() => {}
            _ = stop.changed() => return,
        }
        match last_seen.flush(store.as_ref()).await {
            Ok(0) => {}
            Ok(written) => tracing::debug!(written, "recorded last-use times"),
            Err(error) => {
                tracing::warn!(error = %error.chain(), pending = last_seen.pending(), "cannot record last-use times; will retry")
            }
        }
    }
}
