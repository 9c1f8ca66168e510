//! Concurrent reads by key coalesced into few store round trips: while reads are under way,
//! later callers queue, and the next read takes every queued key at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Reads many keys in one round trip: one value (or none) per key, in the keys' order; `None`
/// when the read failed (each caller then reads on its own, and sees its own error).
pub type Load<K, V> = Box<dyn Fn(Vec<K>) -> Pin<Box<dyn Future<Output = Option<Vec<Option<V>>>> + Send>> + Send + Sync>;

/// What a queued caller is told: the value for its key (`Some(None)`: there is none), or `None`
/// when the batched read failed or was abandoned.
type Reply<V> = oneshot::Sender<Option<Option<V>>>;

/// Coalesces concurrent reads by key ("natural batching": no timer, so no added latency).
///
/// A caller queues its key; when fewer than `max_in_flight` reads are under way, it starts one
/// for every queued key, else it waits for a running read to take the queue when it finishes.
/// Under load, each round trip serves what queued during the previous one; alone, a caller's
/// read starts at once. A read runs in its own task, so a caller that gives up (its client went
/// away) never strands the others.
pub struct Coalescer<K, V> {
    load: Load<K, V>,
    max_in_flight: usize,
    max_batch: usize,
    queue: Mutex<Queue<K, V>>,
}

struct Queue<K, V> {
    in_flight: usize,
    waiting: Vec<(K, Reply<V>)>,
}

impl<K, V> std::fmt::Debug for Coalescer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("max_in_flight", &self.max_in_flight)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Clone + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
{
    /// At most `max_in_flight` reads at once, each of at most `max_batch` distinct keys.
    pub fn new(max_in_flight: usize, max_batch: usize, load: Load<K, V>) -> Self {
        Self {
            load,
            max_in_flight: max_in_flight.max(1),
            max_batch: max_batch.max(1),
            queue: Mutex::new(Queue { in_flight: 0, waiting: Vec::new() }),
        }
    }

    /// The value for `key` (`Some(None)`: there is none), read together with the keys of the
    /// callers that queued beside it; `None` when that read failed, so that the caller reads on
    /// its own.
    pub async fn get(self: &Arc<Self>, key: K) -> Option<Option<V>> {
        let (reply, answer) = oneshot::channel();
        let batch = {
            let mut queue = self.lock();
            queue.waiting.push((key, reply));
            (queue.in_flight < self.max_in_flight).then(|| {
                queue.in_flight += 1;
                self.take(&mut queue)
            })
        };
        if let Some(batch) = batch {
            tokio::spawn(Arc::clone(self).run(batch));
        }
        answer.await.ok().flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<K, V>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `max_batch` distinct keys off the queue, oldest first (callers of the same key
    /// share its read).
    fn take(&self, queue: &mut Queue<K, V>) -> Vec<(K, Reply<V>)> {
        let mut seen = HashSet::new();
        let mut cut = queue.waiting.len();
        for (at, (key, _)) in queue.waiting.iter().enumerate() {
            if !seen.contains(key) {
                if seen.len() == self.max_batch {
                    cut = at;
                    break;
                }
                seen.insert(key.clone());
            }
        }
        let rest = queue.waiting.split_off(cut);
        std::mem::replace(&mut queue.waiting, rest)
    }

    /// Reads `batch`, answers its callers, then takes what queued meanwhile until nothing has.
    async fn run(self: Arc<Self>, mut batch: Vec<(K, Reply<V>)>) {
        let mut slot = InFlight(Some(&self));
        loop {
            let mut keys: Vec<K> = Vec::with_capacity(batch.len());
            let mut slot_of: HashMap<K, usize> = HashMap::with_capacity(batch.len());
            for (key, _) in &batch {
                slot_of.entry(key.clone()).or_insert_with(|| {
                    keys.push(key.clone());
                    keys.len() - 1
                });
            }
            let values = (self.load)(keys).await;
            for (key, reply) in batch {
                let value = values.as_ref().map(|values| values.get(slot_of[&key]).cloned().flatten());
                // A caller that gave up no longer listens.
                let _ = reply.send(value);
            }
            let mut queue = self.lock();
            if queue.waiting.is_empty() {
                // Under the lock that the next caller takes to decide whether to start a read.
                queue.in_flight -= 1;
                slot.0 = None;
                return;
            }
            batch = self.take(&mut queue);
        }
    }
}

/// Frees the slot of a read whose task ended abnormally (a panic, or the runtime shutting
/// down), and drops the queue: its callers read on their own.
struct InFlight<'a, K, V>(Option<&'a Coalescer<K, V>>);

impl<K, V> Drop for InFlight<'_, K, V> {
    fn drop(&mut self) {
        if let Some(coalescer) = self.0 {
            let mut queue = coalescer.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.in_flight -= 1;
            queue.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;

    /// A coalescer over the squares of numbers, whose reads are recorded and wait for `gate`;
    /// `-1` has no value, a read with `0` in it fails and one with `13` panics.
    struct Squares {
        coalescer: Arc<Coalescer<i64, i64>>,
        reads: Arc<Mutex<Vec<Vec<i64>>>>,
        gate: Arc<Semaphore>,
    }

    fn squares(max_in_flight: usize, max_batch: usize) -> Squares {
        let reads = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (recorded, opened) = (reads.clone(), gate.clone());
        let coalescer = Coalescer::new(
            max_in_flight,
            max_batch,
            Box::new(move |keys: Vec<i64>| {
                recorded.lock().unwrap().push(keys.clone());
                let gate = opened.clone();
                Box::pin(async move {
                    gate.acquire().await.unwrap().forget();
                    assert!(!keys.contains(&13), "unlucky");
                    (!keys.contains(&0)).then(|| keys.iter().map(|k| (*k >= 0).then_some(k * k)).collect())
                })
            }),
        );
        Squares { coalescer: Arc::new(coalescer), reads, gate }
    }

    impl Squares {
        fn get(&self, key: i64) -> tokio::task::JoinHandle<Option<Option<i64>>> {
            let coalescer = self.coalescer.clone();
            tokio::spawn(async move { coalescer.get(key).await })
        }

        /// Yields until `reads` reads have begun and `queued` callers wait for the next one.
        async fn settle(&self, reads: usize, queued: usize) {
            while self.reads.lock().unwrap().len() < reads || self.coalescer.lock().waiting.len() < queued {
                tokio::task::yield_now().await;
            }
        }

        fn reads(&self) -> Vec<Vec<i64>> {
            self.reads.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn a_lone_caller_reads_at_once() {
        let s = squares(1, 64);
        s.gate.add_permits(2);
        assert_eq!(s.get(3).await.unwrap(), Some(Some(9)));
        assert_eq!(s.get(-1).await.unwrap(), Some(None));
        assert_eq!(s.reads(), [vec![3], vec![-1]]);
    }

    #[tokio::test]
    async fn callers_queued_behind_a_read_share_the_next_one() {
        let s = squares(1, 64);
        let first = s.get(1);
        s.settle(1, 0).await;
        let queued = [s.get(2), s.get(3), s.get(2), s.get(-1)];
        s.settle(1, 4).await;
        s.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), Some(Some(1)));
        let answers = answers_of(queued).await;
        assert_eq!(answers, [Some(Some(4)), Some(Some(9)), Some(Some(4)), Some(None)]);
        // One read for the first caller, one for the four queued behind it (2 once).
        assert_eq!(s.reads(), [vec![1], vec![2, 3, -1]]);
    }

    #[tokio::test]
    async fn a_read_takes_at_most_max_batch_distinct_keys() {
        let s = squares(1, 2);
        let first = s.get(1);
        s.settle(1, 0).await;
        let queued = [s.get(2), s.get(2), s.get(3), s.get(4)];
        s.settle(1, 4).await;
        s.gate.add_permits(3);
        assert_eq!(first.await.unwrap(), Some(Some(1)));
        let answers = answers_of(queued).await;
        assert_eq!(answers, [Some(Some(4)), Some(Some(4)), Some(Some(9)), Some(Some(16))]);
        assert_eq!(s.reads(), [vec![1], vec![2, 3], vec![4]]);
    }

    #[tokio::test]
    async fn up_to_max_in_flight_reads_run_at_once() {
        let s = squares(2, 64);
        let (one, two) = (s.get(1), s.get(2));
        s.settle(2, 0).await;
        let three = s.get(3);
        s.settle(2, 1).await;
        s.gate.add_permits(3);
        assert_eq!((one.await.unwrap(), two.await.unwrap()), (Some(Some(1)), Some(Some(4))));
        assert_eq!(three.await.unwrap(), Some(Some(9)));
        let mut reads = s.reads();
        reads[..2].sort();
        assert_eq!(reads, [vec![1], vec![2], vec![3]]);
    }

    #[tokio::test]
    async fn a_failed_read_leaves_its_callers_to_read_on_their_own() {
        let s = squares(1, 64);
        let first = s.get(0);
        s.settle(1, 0).await;
        let queued = [s.get(0), s.get(5)];
        s.settle(1, 2).await;
        s.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), None);
        assert_eq!(answers_of(queued).await, [None, None]);
        // The coalescer still works afterwards.
        s.gate.add_permits(1);
        assert_eq!(s.get(6).await.unwrap(), Some(Some(36)));
    }

    #[tokio::test]
    async fn a_panicking_read_strands_nobody_and_frees_its_slot() {
        let s = squares(1, 64);
        let first = s.get(13);
        s.settle(1, 0).await;
        let queued = s.get(7);
        s.settle(1, 1).await;
        s.gate.add_permits(1);
        assert_eq!(first.await.unwrap(), None);
        assert_eq!(queued.await.unwrap(), None);
        s.gate.add_permits(1);
        assert_eq!(s.get(7).await.unwrap(), Some(Some(49)));
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_strands_nobody() {
        let s = squares(1, 64);
        let first = s.get(1);
        s.settle(1, 0).await;
        let (gone, stays) = (s.get(2), s.get(3));
        s.settle(1, 2).await;
        first.abort();
        gone.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        s.gate.add_permits(2);
        assert_eq!(stays.await.unwrap(), Some(Some(9)));
        assert_eq!(s.reads(), [vec![1], vec![2, 3]]);
    }

    async fn answers_of<const N: usize>(
        tasks: [tokio::task::JoinHandle<Option<Option<i64>>>; N],
    ) -> Vec<Option<Option<i64>>> {
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    }
}
