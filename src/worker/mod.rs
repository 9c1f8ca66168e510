//! Background work: one loop per job, started with the server and stopped with it. Each loop
//! owns its schedule and logs its own failures; none of them answers a request.

mod audit;
mod cache_sync;
pub mod last_seen;
mod replica;
mod signing_keys;
mod sweeper;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ErrorChain as _;
use crate::service::audit::Audit;
use crate::service::auth_profiles::AuthProfiles;
use crate::service::cache_sync::CacheSync;
use crate::service::op::clients::Clients;
use crate::service::op::keys::SigningKeys;
use crate::service::op::provider::OpenIdProvider;
use crate::service::sessions::Sessions;
use crate::service::webhooks::Webhooks;
use crate::store::Store;
pub use last_seen::LastSeen;

/// What the background loops work with.
#[derive(Debug, Clone)]
pub struct WorkerDeps {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Sessions (the sweeper deletes expired ones).
    pub sessions: Sessions,
    /// Connected accounts (the sweeper deletes expired pending ones).
    pub auth_profiles: AuthProfiles,
    /// Registered clients (the sweeper deletes records of expired client assertions).
    pub clients: Clients,
    /// Last-use times to write (they know how often).
    pub last_seen: Arc<LastSeen>,
    /// The OpenID Provider's signing keys, re-read and rotated on schedule (when the provider
    /// is on).
    pub signing_keys: Option<SigningKeys>,
    /// The OpenID Provider (the sweeper deletes its expired grants, codes and held requests).
    pub op: Option<OpenIdProvider>,
    /// Webhook endpoints, whose deliveries the webhook loop makes.
    pub webhooks: Webhooks,
    /// The audit log: counted refusals to write, old rows to delete.
    pub audit: Audit,
    /// How often counted refusals are written.
    pub audit_every: Duration,
    /// The caches' view of the cache-invalidation log (the sweeper prunes the log).
    pub cache_sync: CacheSync,
    /// How often the log is read (`cache.sync_interval_ms`).
    pub cache_sync_every: Duration,
    /// How far behind the primary the read replica may be and still be read
    /// (`database.replica_max_lag_ms`), which sets how often it is checked.
    pub replica_max_lag: Duration,
}

/// The running background loops.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    /// The writers of what requests counted in memory, stopped between two writes rather than
    /// aborted, so that a write under way at shutdown finishes instead of losing what it took.
    writers: Vec<JoinHandle<()>>,
    /// Webhook delivery, stopped between two requests, so that a request under way is recorded
    /// and its endpoint's lease released; waited for after the writers.
    deliveries: JoinHandle<()>,
    stop: watch::Sender<bool>,
    deps: WorkerDeps,
}

impl Workers {
    /// Starts every background loop.
    pub fn start(deps: WorkerDeps) -> Self {
        let d = deps.clone();
        let mut handles = vec![
            supervised("sweeper", move || {
                sweeper::run(
                    d.sessions.clone(),
                    d.auth_profiles.clone(),
                    d.clients.clone(),
                    d.op.clone(),
                    d.audit.clone(),
                    d.cache_sync.clone(),
                    d.webhooks.clone(),
                )
            }),
            supervised("cache_sync", {
                let (sync, every) = (deps.cache_sync.clone(), deps.cache_sync_every);
                move || cache_sync::run(sync.clone(), every)
            }),
            supervised("replica", {
                let (store, lag) = (deps.store.clone(), deps.replica_max_lag);
                move || replica::run(store.clone(), lag)
            }),
        ];
        if let Some(keys) = deps.signing_keys.clone() {
            handles.push(supervised("signing_keys", move || signing_keys::run(keys.clone())));
        }
        let (stop, stopped) = watch::channel(false);
        let deliveries = supervised("webhooks", {
            let (webhooks, stopped) = (deps.webhooks.clone(), stopped.clone());
            // One owner for the process's leases, kept across restarts of the loop; a restart
            // gives back what the loop before held.
            let (owner, started) = (uuid::Uuid::new_v4(), Arc::new(AtomicBool::new(false)));
            move || webhooks::run(webhooks.clone(), owner, started.swap(true, Ordering::Relaxed), stopped.clone())
        });
        let writers = vec![
            supervised("audit", {
                let (audit, every, stopped) = (deps.audit.clone(), deps.audit_every, stopped.clone());
                move || audit::run(audit.clone(), every, stopped.clone())
            }),
            supervised("last_seen", {
                let (last_seen, store) = (deps.last_seen.clone(), deps.store.clone());
                move || last_seen::run(last_seen.clone(), store.clone(), stopped.clone())
            }),
        ];
        Self { handles, writers, deliveries, stop, deps }
    }

    /// Stops them (at shutdown, after the server has finished its requests), writes the last-use
    /// times and counted refusals still pending — side by side, and for at most `limit` (a
    /// database that does not answer, or a table locked by maintenance, must not keep the process
    /// past its grace period) —, then waits for webhook delivery.
    pub async fn stop(self, limit: Duration) {
        for handle in self.handles {
            handle.abort();
        }
        self.stop.send_replace(true);
        let deps = &self.deps;
        let flush = async {
            for writer in self.writers {
                if let Err(error) = writer.await {
                    tracing::warn!(error = %error.chain(), "a background writer ended abnormally");
                }
            }
            let last_seen = async {
                if let Err(error) = deps.last_seen.flush(deps.store.as_ref()).await {
                    tracing::warn!(error = %error.chain(), "cannot record the last-use times pending at shutdown");
                }
            };
            let audit = async {
                if let Err(error) = deps.audit.flush().await {
                    tracing::warn!(error = %error.chain(), "cannot write the refusals counted at shutdown to the audit log");
                }
            };
            tokio::join!(last_seen, audit);
        };
        if tokio::time::timeout(limit, flush).await.is_err() {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "the last-use times or counted refusals pending at shutdown were not all written in time"
            );
        }
        // Last: a delivery under way may take up to its timeout, and what is counted in memory
        // must not wait behind it (an orchestrator's grace period may end first). Bounded here
        // too: the loop may still be in a fan-out or a claim on a database that does not answer.
        // (The loop's own wait for its deliveries, with the same bound, began at the stop and
        // says when it cut them off; this one only aborts a loop that never got to it.)
        let bound = self.deps.webhooks.settings().timeout + webhooks::STOP_GRACE;
        let mut deliveries = self.deliveries;
        match tokio::time::timeout(bound, &mut deliveries).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error.chain(), "webhook delivery ended abnormally"),
            Err(_) => {
                deliveries.abort();
                tracing::warn!("the webhook loop did not stop in time (a database that does not answer?); aborted");
            }
        }
    }
}

/// How long a loop that panicked waits before it starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Runs the loop `make` makes, and starts it again (after [`RESTART_PAUSE`]) whenever it panics:
/// a loop that died would stop its job for the life of the process, with `/readyz` still green —
/// the last-use writer, say, after which sessions in use would be idle-expired. Ends when the
/// loop returns (a stop); aborting the returned handle aborts the loop too.
fn supervised<F, Fut>(worker: &'static str, make: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(supervise(worker, make, RESTART_PAUSE))
}

async fn supervise<F, Fut>(worker: &'static str, make: F, pause: Duration)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // At 0 from the start: a series that first appears at 1 shows no increase, and the first
    // restart would raise no alert.
    metrics::counter!(crate::observability::WORKER_RESTARTS_TOTAL, "worker" => worker).increment(0);
    loop {
        let run = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(make()));
        match run.await {
            Err(error) if error.is_panic() => {
                let panic = crate::error::panic_message(error.into_panic().as_ref());
                tracing::error!(worker, panic, "a background loop panicked; it starts again shortly");
                metrics::counter!(crate::observability::WORKER_RESTARTS_TOTAL, "worker" => worker).increment(1);
                tokio::time::sleep(pause).await;
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_loop_that_panics_starts_again_and_one_that_returns_ends() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let made = move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if run < 2 {
                    panic!("a bug in a loop");
                }
            }
        };
        supervise("test", made, Duration::from_millis(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "two panics, then the run that returned");

        // Aborted (a stop), its loop goes with it rather than running on detached.
        struct Dropped(Arc<AtomicUsize>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (started, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, d) = (started.clone(), dropped.clone());
        let handle = supervised("test", move || {
            let (s, guard) = (s.clone(), Dropped(d.clone()));
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                let _guard = guard;
                std::future::pending::<()>().await;
            }
        });
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        handle.abort();
        let gone = tokio::time::timeout(Duration::from_secs(10), async {
            while dropped.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        });
        assert!(gone.await.is_ok(), "the loop was dropped with its supervisor");
    }
}
