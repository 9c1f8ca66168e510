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
    /// Last-use times to write.
    pub last_seen: Arc<LastSeen>,
    /// How often they are written.
    pub last_seen_every: Duration,
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
        let mut handles = vec![
            tokio::spawn(sweeper::run(
                deps.sessions.clone(),
                deps.auth_profiles.clone(),
                deps.clients.clone(),
                deps.op.clone(),
                deps.audit.clone(),
                deps.cache_sync.clone(),
                deps.webhooks.clone(),
            )),
            tokio::spawn(cache_sync::run(deps.cache_sync.clone(), deps.cache_sync_every)),
            tokio::spawn(replica::run(deps.store.clone(), deps.replica_max_lag)),
        ];
        if let Some(keys) = &deps.signing_keys {
            handles.push(tokio::spawn(signing_keys::run(keys.clone())));
        }
        let (stop, stopped) = watch::channel(false);
        let deliveries = tokio::spawn(webhooks::run(deps.webhooks.clone(), stopped.clone()));
        let writers = vec![
            tokio::spawn(audit::run(deps.audit.clone(), deps.audit_every, stopped.clone())),
            tokio::spawn(last_seen::run(deps.last_seen.clone(), deps.store.clone(), deps.last_seen_every, stopped)),
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
        let bound = self.deps.webhooks.settings().timeout + webhooks::STOP_GRACE;
        match tokio::time::timeout(bound, self.deliveries).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error.chain(), "webhook delivery ended abnormally"),
            Err(_) => {
                tracing::warn!("webhook deliveries still under way at shutdown were cut off; their leases run out")
            }
        }
    }
}
