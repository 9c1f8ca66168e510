//! Concurrent reads by key coalesced into few store round trips: while reads are under way,
//! later callers queue, and the next read takes every queued key at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Reads many keys in one round trip: one value (or none, or why that key alone failed) per key,
/// in the keys' order, or why the whole read failed.
pub type Load<K, V, E> =
    Box<dyn Fn(Vec<K>) -> Pin<Box<dyn Future<Output = Result<Vec<Result<Option<V>, E>>, E>> + Send>> + Send + Sync>;

/// What a caller of [`Coalescer::get`] is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<V, E> {
    /// The shared read ran: the value for the key, if there is one.
    Found(Option<V>),
    /// The shared read failed, or failed for this key, and why (every caller of the key is told
    /// the same).
    Failed(E),
    /// Nothing was read for this caller (the queue is full, or the read was abandoned): it reads
    /// on its own.
    Alone,
}

type Reply<V, E> = oneshot::Sender<Read<V, E>>;

/// Coalesces concurrent reads by key ("natural batching": no timer, so no added latency).
///
/// A caller queues its key; when fewer than `max_in_flight` reads are under way, it starts one
/// for every queued key, else it waits for a running read to take the queue when it finishes.
/// Under load, each round trip serves what queued during the previous one; alone, a caller's
/// read starts at once. A read runs in its own task, so a caller that gives up (its client went
/// away) never strands the others, and its key is left out of the next read. The queue holds at
/// most `max_waiting` callers; beyond that a caller reads on its own.
pub struct Coalescer<K, V, E> {
    load: Load<K, V, E>,
    max_in_flight: usize,
    max_batch: usize,
    max_waiting: usize,
    queue: Mutex<Queue<K, V, E>>,
}

struct Queue<K, V, E> {
    in_flight: usize,
    waiting: Vec<(K, Reply<V, E>)>,
}

impl<K, V, E> std::fmt::Debug for Coalescer<K, V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("max_in_flight", &self.max_in_flight)
            .field("max_batch", &self.max_batch)
            .field("max_waiting", &self.max_waiting)
            .finish_non_exhaustive()
    }
}

impl<K, V, E> Coalescer<K, V, E>
where
    K: Clone + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    /// At most `max_in_flight` reads at once, each of at most `max_batch` distinct keys, and at
    /// most `max_waiting` callers queued for them.
    pub fn new(max_in_flight: usize, max_batch: usize, max_waiting: usize, load: Load<K, V, E>) -> Self {
        Self {
            load,
            max_in_flight: max_in_flight.max(1),
            max_batch: max_batch.max(1),
            max_waiting,
            queue: Mutex::new(Queue { in_flight: 0, waiting: Vec::new() }),
        }
    }

    /// The value for `key`, read together with the keys of the callers that queued beside it.
    pub async fn get(self: &Arc<Self>, key: K) -> Read<V, E> {
        let (reply, answer) = oneshot::channel();
        let batch = {
            let mut queue = self.lock();
            // Callers that gave up (their clients hung up) hold no place: while a slow read
            // runs they would otherwise fill the queue and turn coalescing off.
            if queue.waiting.len() >= self.max_waiting {
                queue.waiting.retain(|(_, reply)| !reply.is_closed());
            }
            if queue.waiting.len() >= self.max_waiting {
                return Read::Alone;
            }
            queue.waiting.push((key, reply));
            (queue.in_flight < self.max_in_flight).then(|| {
                queue.in_flight += 1;
                self.take(&mut queue)
            })
        };
        if let Some(batch) = batch {
            // Made before the task is, so that the slot is freed however the task ends, even
            // if it never runs.
            let slot = InFlight(Some(Arc::clone(self)));
            tokio::spawn(Arc::clone(self).run(batch, slot));
        }
        answer.await.unwrap_or(Read::Alone)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<K, V, E>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `max_batch` distinct keys off the queue, oldest first (callers of the same key
    /// share its read; those that gave up are dropped).
    fn take(&self, queue: &mut Queue<K, V, E>) -> Vec<(K, Reply<V, E>)> {
        queue.waiting.retain(|(_, reply)| !reply.is_closed());
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
    async fn run(self: Arc<Self>, mut batch: Vec<(K, Reply<V, E>)>, mut slot: InFlight<K, V, E>) {
        loop {
            let mut keys: Vec<K> = Vec::with_capacity(batch.len());
            let mut slot_of: HashMap<K, usize> = HashMap::with_capacity(batch.len());
            for (key, _) in &batch {
                slot_of.entry(key.clone()).or_insert_with(|| {
                    keys.push(key.clone());
                    keys.len() - 1
                });
            }
            let asked = keys.len();
            let read = (self.load)(keys).await;
            for (key, reply) in batch {
                let answer = match &read {
                    Ok(values) if values.len() == asked => match &values[slot_of[&key]] {
                        Ok(value) => Read::Found(value.clone()),
                        Err(error) => Read::Failed(error.clone()),
                    },
                    // A load that breaks its contract answers nobody.
                    Ok(_) => Read::Alone,
                    Err(error) => Read::Failed(error.clone()),
                };
                // A caller that gave up no longer listens.
                let _ = reply.send(answer);
            }
            let mut queue = self.lock();
            batch = self.take(&mut queue);
            if batch.is_empty() {
                // Under the lock that the next caller takes to decide whether to start a read.
                queue.in_flight -= 1;
                slot.0 = None;
                return;
            }
        }
    }
}

/// A read's slot, freed when its task ends abnormally (a panic, or the runtime dropping the task
/// before or while it runs), which also drops the queue: its callers read on their own.
struct InFlight<K, V, E>(Option<Arc<Coalescer<K, V, E>>>);

impl<K, V, E> Drop for InFlight<K, V, E> {
    fn drop(&mut self) {
        if let Some(coalescer) = self.0.take() {
            let mut queue = coalescer.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.in_flight -= 1;
            queue.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    type Answer = Read<i64, String>;

    /// A coalescer over the squares of numbers, whose reads are recorded and wait for `gate`;
    /// `-1` has no value, `-2` fails alone, a read with `0` in it fails and one with `13` panics.
    struct Squares {
        coalescer: Arc<Coalescer<i64, i64, String>>,
        reads: Arc<Mutex<Vec<Vec<i64>>>>,
        gate: Arc<Semaphore>,
    }

    fn squares(max_in_flight: usize, max_batch: usize) -> Squares {
        squares_queueing(max_in_flight, max_batch, 64)
    }

    fn squares_queueing(max_in_flight: usize, max_batch: usize, max_waiting: usize) -> Squares {
        let reads = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (recorded, opened) = (reads.clone(), gate.clone());
        let coalescer = Coalescer::new(
            max_in_flight,
            max_batch,
            max_waiting,
            Box::new(move |keys: Vec<i64>| {
                recorded.lock().unwrap().push(keys.clone());
                let gate = opened.clone();
                Box::pin(async move {
                    gate.acquire().await.unwrap().forget();
                    assert!(!keys.contains(&13), "unlucky");
                    if keys.contains(&0) {
                        return Err("zero".to_owned());
                    }
                    Ok(keys
                        .iter()
                        .map(|k| if *k == -2 { Err("minus two".to_owned()) } else { Ok((*k >= 0).then_some(k * k)) })
                        .collect())
                })
            }),
        );
        Squares { coalescer: Arc::new(coalescer), reads, gate }
    }

    impl Squares {
        fn get(&self, key: i64) -> tokio::task::JoinHandle<Answer> {
            let coalescer = self.coalescer.clone();
            tokio::spawn(async move { coalescer.get(key).await })
        }

        /// Yields until `reads` reads have begun and `queued` callers wait for the next one
        /// (a bound, not a timing: a regression fails instead of hanging).
        async fn settle(&self, reads: usize, queued: usize) {
            let settled = async {
                while self.reads.lock().unwrap().len() < reads || self.coalescer.lock().waiting.len() < queued {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), settled).await.expect("the callers settle");
        }

        fn reads(&self) -> Vec<Vec<i64>> {
            self.reads.lock().unwrap().clone()
        }
    }

    fn found(value: i64) -> Answer {
        Read::Found(Some(value))
    }

    async fn answers_of<const N: usize>(tasks: [tokio::task::JoinHandle<Answer>; N]) -> Vec<Answer> {
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    }

    #[tokio::test]
    async fn a_lone_caller_reads_at_once() {
        let s = squares(1, 64);
        s.gate.add_permits(2);
        assert_eq!(s.get(3).await.unwrap(), found(9));
        assert_eq!(s.get(-1).await.unwrap(), Read::Found(None));
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
        assert_eq!(first.await.unwrap(), found(1));
        assert_eq!(answers_of(queued).await, [found(4), found(9), found(4), Read::Found(None)]);
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
        assert_eq!(first.await.unwrap(), found(1));
        assert_eq!(answers_of(queued).await, [found(4), found(4), found(9), found(16)]);
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
        assert_eq!((one.await.unwrap(), two.await.unwrap()), (found(1), found(4)));
        assert_eq!(three.await.unwrap(), found(9));
        let mut reads = s.reads();
        reads[..2].sort();
        assert_eq!(reads, [vec![1], vec![2], vec![3]]);
    }

    #[tokio::test]
    async fn beyond_a_full_queue_a_caller_reads_alone() {
        let s = squares_queueing(1, 64, 2);
        let first = s.get(1);
        s.settle(1, 0).await;
        let queued = [s.get(2), s.get(3)];
        s.settle(1, 2).await;
        assert_eq!(s.get(4).await.unwrap(), Read::Alone);
        s.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), found(1));
        assert_eq!(answers_of(queued).await, [found(4), found(9)]);
        assert_eq!(s.reads(), [vec![1], vec![2, 3]]);
    }

    #[tokio::test]
    async fn callers_that_gave_up_leave_their_place_in_a_full_queue() {
        let s = squares_queueing(1, 64, 2);
        let first = s.get(1);
        s.settle(1, 0).await;
        let gone = [s.get(2), s.get(3)];
        s.settle(1, 2).await;
        for task in gone {
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
        }
        let queued = s.get(4);
        s.settle(1, 1).await;
        s.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), found(1));
        assert_eq!(queued.await.unwrap(), found(16), "queued, not alone");
        assert_eq!(s.reads(), [vec![1], vec![4]]);
    }

    #[tokio::test]
    async fn a_failed_read_tells_each_of_its_callers_why() {
        let s = squares(1, 64);
        let first = s.get(0);
        s.settle(1, 0).await;
        let queued = [s.get(0), s.get(5)];
        s.settle(1, 2).await;
        s.gate.add_permits(2);
        let failed = Read::Failed("zero".to_owned());
        assert_eq!(first.await.unwrap(), failed);
        assert_eq!(answers_of(queued).await, [failed.clone(), failed]);
        // The coalescer still works afterwards.
        s.gate.add_permits(1);
        assert_eq!(s.get(6).await.unwrap(), found(36));
    }

    #[tokio::test]
    async fn a_key_that_fails_alone_fails_only_its_callers() {
        let s = squares(1, 64);
        let first = s.get(1);
        s.settle(1, 0).await;
        let queued = [s.get(-2), s.get(5), s.get(-2)];
        s.settle(1, 3).await;
        s.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), found(1));
        let failed = Read::Failed("minus two".to_owned());
        assert_eq!(answers_of(queued).await, [failed.clone(), found(25), failed]);
        assert_eq!(s.reads(), [vec![1], vec![-2, 5]]);
    }

    #[tokio::test]
    async fn a_panicking_read_strands_nobody_and_frees_its_slot() {
        let s = squares(1, 64);
        let first = s.get(13);
        s.settle(1, 0).await;
        let queued = s.get(7);
        s.settle(1, 1).await;
        s.gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Read::Alone);
        assert_eq!(queued.await.unwrap(), Read::Alone);
        s.gate.add_permits(1);
        assert_eq!(s.get(7).await.unwrap(), found(49));
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_strands_nobody_and_is_not_read() {
        let s = squares(1, 64);
        let first = s.get(1);
        s.settle(1, 0).await;
        let (gone, stays) = (s.get(2), s.get(3));
        s.settle(1, 2).await;
        first.abort();
        gone.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert!(gone.await.unwrap_err().is_cancelled());
        s.gate.add_permits(2);
        assert_eq!(stays.await.unwrap(), found(9));
        assert_eq!(s.reads(), [vec![1], vec![3]]);
    }
}
