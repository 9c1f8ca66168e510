//! Single-use forms answered once per instance: the same form sent again by its sender (a double
//! click, whose first response the browser drops) gets the first answer, not a used-up error.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::store::StoreError;

/// How long an instance keeps a form's answer for the same form sent again.
pub const KEPT: Duration = Duration::from_secs(30);

/// How long a form's cell is kept while its answer is being worked out: longer than any work
/// runs, so that a slow answer's second sending finds the first at work instead of starting
/// another.
const PENDING: Duration = Duration::from_secs(600);

/// Keeps a new cell [`PENDING`], then [`KEPT`] from when the work ended and put it back (with
/// its answer; or without, after a failure, for the next sending to work it out again).
struct UntilAnswered;

impl<O> moka::Expiry<[u8; 32], Arc<OnceCell<O>>> for UntilAnswered {
    fn expire_after_create(&self, _: &[u8; 32], cell: &Arc<OnceCell<O>>, _: std::time::Instant) -> Option<Duration> {
        Some(if cell.initialized() { KEPT } else { PENDING })
    }

    fn expire_after_update(
        &self,
        _: &[u8; 32],
        _: &Arc<OnceCell<O>>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(KEPT)
    }
}

/// The answers of the last [`KEPT`], by form and sender.
pub struct Answers<O> {
    kept: moka::sync::Cache<[u8; 32], Arc<OnceCell<O>>>,
}

impl<O> std::fmt::Debug for Answers<O> {
    /// Without the outcomes: they may carry a code or a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers").field("kept", &self.kept.entry_count()).finish_non_exhaustive()
    }
}

impl<O: Clone + Send + Sync + 'static> Default for Answers<O> {
    fn default() -> Self {
        Self { kept: moka::sync::Cache::builder().max_capacity(10_000).expire_after(UntilAnswered).build() }
    }
}

impl<O: Clone + Send + Sync + 'static> Answers<O> {
    /// The answer to the form `form` (the hash of its single-use id) sent by `sender` (the hash
    /// of the session that sent it, say). The first to come works it out with `work` — in a task
    /// that runs to its end, so that a first request the browser dropped still answers the
    /// second —; one at the same time waits for it; later ones within [`KEPT`] of the answer
    /// get it. Each sender has an answer of its own (one cannot see or block another's: the
    /// store decides between them). A failure is kept by nobody: the next sending works again
    /// (and finds what the first left). When the runtime shut down under the work, nothing is
    /// known: the store is answered as unavailable.
    pub async fn answer<E, F, Fut>(&self, form: &[u8; 32], sender: &[u8; 32], work: F) -> Result<O, E>
    where
        E: From<StoreError> + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let key = crate::crypto::sha256(&[&form[..], &sender[..]].concat());
        let (cell, kept) = (self.kept.get_with(key, Arc::default), self.kept.clone());
        let done = crate::run_to_end(async move {
            let mut worked = false;
            let done = cell
                .get_or_try_init(|| {
                    worked = true;
                    work()
                })
                .await
                .cloned();
            // Kept for KEPT from the answer, not from the first sending (a slow answer's second
            // click must not find it gone: until then it is kept PENDING), nor from each later
            // sending: put back once, by the sending that worked it out (a failure too, which
            // then leaves as soon as it did before).
            if worked {
                kept.insert(key, cell.clone());
            }
            done
        })
        .await;
        done.unwrap_or_else(|| Err(StoreError::shut_down().into()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn the_first_answer_is_every_answer_and_a_failure_is_worked_again() {
        let answers = Answers::<u32>::default();
        #[derive(Debug, PartialEq)]
        struct Failed(&'static str);
        impl From<StoreError> for Failed {
            fn from(_: StoreError) -> Self {
                Failed("shut down")
            }
        }
        let runs = Arc::new(AtomicUsize::new(0));
        let work = |result: Result<u32, Failed>| {
            let runs = runs.clone();
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                result
            }
        };
        let (form, sender) = ([1; 32], [7; 32]);
        let failed = answers.answer(&form, &sender, work(Err(Failed("store down")))).await;
        assert_eq!(failed, Err(Failed("store down")));
        let (a, b) =
            tokio::join!(answers.answer(&form, &sender, work(Ok(5))), answers.answer(&form, &sender, work(Ok(6))));
        assert_eq!((a, b), (Ok(5), Ok(5)), "one answer for both");
        assert_eq!(answers.answer(&form, &sender, work(Ok(9))).await, Ok(5), "kept");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "worked out once after the failure");
        assert_eq!(answers.answer(&form, &[8; 32], work(Ok(8))).await, Ok(8), "another sender's own");
        assert_eq!(answers.answer(&[2; 32], &sender, work(Ok(2))).await, Ok(2), "another form");
    }

    #[test]
    fn a_form_at_work_is_kept_until_its_work_ends_then_for_kept() {
        use moka::Expiry;
        let (key, at) = ([0; 32], std::time::Instant::now());
        let cell = Arc::new(OnceCell::<u32>::new());
        assert_eq!(UntilAnswered.expire_after_create(&key, &cell, at), Some(PENDING));
        assert!(PENDING > KEPT * 10, "outlasts any work");
        assert_eq!(UntilAnswered.expire_after_update(&key, &cell, at, Some(PENDING)), Some(KEPT), "failed");
        cell.set(5).unwrap();
        assert_eq!(UntilAnswered.expire_after_update(&key, &cell, at, Some(PENDING)), Some(KEPT));
    }
}
