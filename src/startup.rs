//! Start-up that tests can drive: [`Application::build`] connects the store, applies the migration
//! policy, binds its own listener (port 0 in tests) and exposes the bound address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{Backend, Config, ServerConfig};
use crate::domain::Client;
use crate::error::ErrorChain as _;
use crate::http::admin_auth::AdminTokens;
use crate::http::cookies::Cookies;
use crate::http::prometheus::Metrics;
use crate::http::{AppState, metrics_router, router};
use crate::service::audit::Audit;
use crate::service::auth_profiles::AuthProfiles;
use crate::service::cache_sync::CacheSync;
use crate::service::op::clients::Clients;
use crate::service::op::keys::{SigningError, SigningKeySettings, SigningKeys};
use crate::service::op::provider::OpenIdProvider;
use crate::service::principals::PrincipalCache;
use crate::service::provisioning::Provisioner;
use crate::service::sessions::Sessions;
use crate::service::signin::SignIn;
use crate::service::teams::Teams;
use crate::service::users::Users;
use crate::service::validation::Validator;
use crate::service::webhooks::Webhooks;
use crate::store::{self, Store, StoreError};
use crate::upstream::issuers::{IssuerRegistry, outbound_client};
use crate::upstream::oauth_flow::OAuthFlows;
use crate::upstream::providers::ProviderRegistry;
use crate::upstream::tokens::TokenVerifier;
use crate::worker::{LastSeen, WorkerDeps, Workers};

/// Why the server could not start. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database cannot be opened or reached.
    #[error("cannot connect to the database {url}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: StoreError,
    },
    /// The SQLite database does not exist and auto-migration, which would create it, is off.
    #[error(
        "the SQLite database {url} does not exist, and database.auto_migrate is off; run `tessera migrate`, or start \
         with `tessera serve --migrate`"
    )]
    NoDatabase {
        /// The URL.
        url: String,
    },
    /// Migrations are pending and auto-migration is off.
    #[error(
        "the database has {} pending migration(s) ({}); run `tessera migrate`, or start with `tessera serve --migrate`",
        pending.len(), pending.join(", ")
    )]
    PendingMigrations {
        /// The pending migrations.
        pending: Vec<String>,
    },
    /// The schema does not match this binary in a way `migrate` cannot fix: migrations it does
    /// not know (a newer binary ran them), edited ones, or ones recorded as failed.
    #[error(
        "the database schema does not match this binary: {} (run `tessera check` for details)",
        problems.join("; ")
    )]
    SchemaMismatch {
        /// What is wrong, as [`crate::store::MigrationStatus::problems`] says it.
        problems: Vec<String>,
    },
    /// Migrating the schema failed.
    #[error("cannot migrate the database")]
    Migrate(#[source] StoreError),
    /// Reading which migrations the database has applied failed (before any migration).
    #[error("cannot read the database's migration history")]
    MigrationStatus(#[source] StoreError),
    /// The clients of the configuration file cannot be written to the store.
    #[error("cannot write the clients of the configuration file ([[oidc.clients]]) to the database")]
    ConfigClients(#[source] StoreError),
    /// A client of the configuration file has the id of a client registered through the admin API.
    #[error(
        "the configuration file defines clients whose ids are registered through the admin API ({}); rename them \
         in [[oidc.clients]], or delete the registered ones (DELETE /admin/clients/{{id}})",
        ids.join(", ")
    )]
    ClientIdTaken {
        /// The ids.
        ids: Vec<String>,
    },
    /// The webhook endpoints of the configuration file cannot be written to the store.
    #[error("cannot write the webhook endpoints of the configuration file ([[webhooks.endpoints]]) to the database")]
    ConfigWebhooks(#[source] crate::service::webhooks::WebhookError),
    /// The OpenID Provider's signing keys cannot be read or used.
    #[error("cannot load the OpenID Provider's signing keys (`tessera check` says what to do)")]
    SigningKeys(#[source] SigningError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How long, once requests are drained, shutdown waits for changes the drain cut off to finish
/// (with their audit rows), and then for the last-use times and counted refusals to be written.
pub const AFTER_DRAIN: Duration = Duration::from_secs(5);

/// A built, bound, not yet running server.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    /// The listener of `/metrics` alone (`metrics.listen`), when configured.
    metrics_listener: Option<TcpListener>,
    state: Arc<AppState>,
    server: ServerConfig,
    last_seen: Arc<LastSeen>,
    /// How often counted refusals are written to the audit log.
    audit_every: Duration,
    /// How often it reads the log.
    cache_sync_every: std::time::Duration,
    /// How far behind the read replica may be (`database.replica_max_lag_ms`).
    replica_max_lag: Duration,
    /// The clients of the configuration file, until they are written to the store.
    config_clients: Option<Vec<Client>>,
}

impl Application {
    /// Connects to the configured database, migrates it if allowed (or `force_migrate`), and binds.
    pub async fn build(config: &Config, force_migrate: bool) -> Result<Self, StartupError> {
        // The metrics recorder first, while this is the only busy thread: its clock calibrates
        // itself with a busy loop that ends in about half a millisecond on an idle core, but
        // can spin for tens of milliseconds when other threads preempt it.
        if config.metrics.enabled {
            crate::observability::install();
        }
        let migrate = config.database.auto_migrate || force_migrate;
        // Without migrating, nothing creates a database: connecting would leave an empty file
        // behind (a mistyped path, say) for the next start to blame on pending migrations.
        if !migrate && store::sqlite_file_missing(&config.database.url).unwrap_or(false) {
            return Err(StartupError::NoDatabase { url: config.database.url.redacted() });
        }
        let store = store::connect(&config.database).await.map_err(|source| connect_failed(config, source))?;
        prepare_schema(store.as_ref(), migrate).await?;
        Self::build_with_store(config, store).await
    }

    /// Builds the server on an already connected and migrated store.
    pub async fn build_with_store(config: &Config, store: Arc<dyn Store>) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartupError::Bind { addr: config.listen, source })?;
        let mut app = Self::build_on(config, store, listener).await?;
        app.sync_config_clients().await?;
        Ok(app)
    }

    /// Builds the server on a connected and migrated store and an already bound listener (tests
    /// bind first, to know the URL browsers will call back to). Reads the OpenID Provider's
    /// signing keys when the provider is on.
    pub async fn build_on(config: &Config, store: Arc<dyn Store>, listener: TcpListener) -> Result<Self, StartupError> {
        // First: the caches below take their counters from the recorder installed now.
        let metrics = config.metrics.enabled.then(|| Metrics {
            handle: crate::observability::install(),
            own_listener: config.metrics.own_listener().is_some(),
            queues: Default::default(),
        });
        let metrics_listener = match config.metrics.own_listener() {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })?),
            None => None,
        };
        // The OpenID Provider runs when browsers can reach Tessera and private keys can be
        // encrypted at rest.
        let signing_keys = match (&config.auth.public_url, &config.encryption) {
            (Some(_), Some(keyring)) => Some({
                let keys =
                    SigningKeys::new(store.clone(), keyring.clone(), SigningKeySettings::from_config(&config.oidc))
                        .await
                        .map_err(StartupError::SigningKeys)?;
                keys.ensure(config.oidc.signing_alg).await.map_err(StartupError::SigningKeys)?;
                keys
            }),
            _ => None,
        };
        // One outbound client for issuers and providers: connections to an issuer that is also a
        // sign-in provider are shared. The trust roots are read once, at the first handshake.
        let http = outbound_client(config.jwks.fetch_timeout);
        let issuers = Arc::new(IssuerRegistry::new(config.issuers.clone(), http.clone(), &config.jwks));
        issuers.prefetch();
        let admin_tokens = AdminTokens::new(&config.admin_tokens);
        if admin_tokens.is_empty() {
            tracing::warn!("no admin token is configured (TESSERA_ADMIN_TOKEN): the admin API refuses every request");
        }
        for issuer in config.issuers_without_audiences() {
            tracing::warn!(issuer = %issuer.issuer, "an issuer {}", crate::config::NO_AUDIENCES);
        }
        let (principals, tokens) = PrincipalCache::with_token_cache(&config.cache);
        if config.database.replica_url.is_some() {
            principals.set_replica_lag(config.database.replica_max_lag);
        }
        let provisioner = Provisioner::new(store.clone(), issuers.clone(), principals.clone());
        let verifier = TokenVerifier::new(issuers.clone(), tokens, config.cache.token_ttl);
        let providers = Arc::new(ProviderRegistry::new(
            &config.providers,
            config.auth.default_provider.clone(),
            http.clone(),
            &config.jwks,
        ));
        let flows = OAuthFlows::new(providers, store.clone(), config.auth.public_url.clone());
        let teams = Teams::new(store.clone(), issuers, principals.clone());
        let users = Users::new(store.clone(), principals.clone());
        let auth_profiles = AuthProfiles::new(
            store.clone(),
            flows.clone(),
            teams.clone(),
            config.encryption.clone(),
            config.auth.pending_profile_ttl,
            http,
        )
        .with_connectors(config.connectors.clone())
        .with_max_per_team(config.auth.max_profiles_per_team);
        let last_seen = Arc::new(LastSeen::new(config.server.last_seen_flush));
        let sessions = Sessions::new(
            store.clone(),
            config.auth.session_ttl,
            config.auth.session_idle,
            last_seen.clone(),
            principals.clone(),
        );
        let sign_in = SignIn::new(
            flows.clone(),
            store.clone(),
            provisioner.clone(),
            sessions.clone(),
            principals.clone(),
            config.encryption.clone(),
            &config.auth,
        );
        // The issuer identifier: the public URL without a trailing slash.
        let issuer = config.auth.public_url.as_ref().map(|url| url.as_str().trim_end_matches('/').to_owned());
        if let Some(keys) = &signing_keys {
            keys.following_log_of(principals.clone());
        }
        let clients = Clients::new(store.clone(), issuer.clone())
            .with_default_alg(config.oidc.signing_alg)
            .with_signing_keys(signing_keys.clone())
            .following_log_of(principals.clone());
        let op = match (&signing_keys, issuer) {
            (Some(keys), Some(issuer)) => Some(
                OpenIdProvider::new(store.clone(), clients.clone(), keys.clone(), issuer, config.oidc.id_token_ttl)
                    .with_refresh_token_reuse(config.oidc.refresh_token_reuse)
                    .with_sessions(config.auth.session_idle, last_seen.clone()),
            ),
            _ => None,
        };
        let webhooks = Webhooks::new(store.clone(), config.encryption.clone(), config.webhooks.clone());
        let audit = Audit::new(store.clone(), &config.audit);
        let cache_sync = CacheSync::new(store.clone(), principals.clone(), clients.clone(), config.cache.sync_interval)
            .with_signing_keys(signing_keys.clone());
        let state = Arc::new(AppState {
            validator: Arc::new(
                Validator::new(verifier, provisioner.clone(), store.clone(), principals, last_seen.clone())
                    .with_own_tokens(op.clone())
                    .with_audit(audit.clone()),
            ),
            audit,
            cache_sync,
            teams,
            provisioner,
            flows,
            sign_in,
            auth_profiles,
            sessions,
            cookies: Cookies::new(config.auth.cookie_secure, config.auth.session_cookie_domain.as_deref()),
            store,
            admin_tokens,
            clients,
            signing_keys,
            op,
            pages: crate::http::pages::Pages::new(&config.branding).with_providers(&config.providers),
            webhooks,
            users,
            metrics,
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        let config_clients = Some(config.oidc.clients.iter().map(|c| c.client.clone()).collect());
        Ok(Self {
            listener,
            metrics_listener,
            state,
            server: config.server.clone(),
            last_seen,
            audit_every: config.audit.flush_interval,
            cache_sync_every: config.cache.sync_interval,
            replica_max_lag: config.database.replica_max_lag,
            config_clients,
        })
    }

    /// Writes the clients of the configuration file to the store, replacing those of an earlier
    /// start and deleting those no longer in the file (never a client registered through the
    /// admin API), and likewise its webhook endpoints (`[[webhooks.endpoints]]`, by name). Done
    /// once: by [`Application::build_with_store`], else before serving. The clients first, in one
    /// transaction, so that a client id the admin API already uses stops the start before any
    /// endpoint is written (the instances still running would deliver by the new file's).
    pub async fn sync_config_clients(&mut self) -> Result<(), StartupError> {
        let Some(clients) = self.config_clients.take() else { return Ok(()) };
        let sync = self.state.clients.sync_config(&clients).await.map_err(StartupError::ConfigClients)?;
        if !sync.conflicts.is_empty() {
            return Err(StartupError::ClientIdTaken {
                ids: sync.conflicts.iter().map(|id| id.as_str().to_owned()).collect(),
            });
        }
        written("clients", sync.inserted.len(), sync.updated.len(), sync.deleted.len());
        let clients =
            [("client.created", &sync.inserted), ("client.updated", &sync.updated), ("client.deleted", &sync.deleted)];
        self.record_config_changes("client", clients).await;
        let endpoints = self.state.webhooks.settings().endpoints.clone();
        let synced = self.state.webhooks.sync_config(&endpoints).await.map_err(StartupError::ConfigWebhooks)?;
        written("webhook endpoints", synced.inserted.len(), synced.updated.len(), synced.deleted.len());
        let endpoints = [
            ("webhook.created", &synced.inserted),
            ("webhook.updated", &synced.updated),
            ("webhook.deleted", &synced.deleted),
        ];
        self.record_config_changes("webhook", endpoints).await;
        Ok(())
    }

    /// The audit rows of what a start-up wrote of the configuration file: one per client or
    /// endpoint changed, by the actor `system` named `config`, as the admin API's changes are
    /// recorded (after the change).
    async fn record_config_changes<Id: std::fmt::Display>(&self, kind: &str, changes: [(&str, &Vec<Id>); 3]) {
        for (action, ids) in changes {
            for id in ids {
                let event = crate::store::NewAuditEvent::new(crate::store::ActorKind::System, action)
                    .actor(None, Some("config".into()))
                    .target(kind, id.to_string());
                self.state.audit.record_change(event).await;
            }
        }
    }

    /// What applies other instances' changes to this server's caches (when it last read the log).
    pub fn cache_sync(&self) -> CacheSync {
        self.state.cache_sync.clone()
    }

    /// The bound address (with the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound TCP listener has a local address")
    }

    /// The bound address of `/metrics`'s own listener, when `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|l| l.local_addr().expect("a bound TCP listener has a local address"))
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests and closes the store.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Requests wait in the listen backlog meanwhile: none sees the store without them.
        self.sync_config_clients().await.map_err(std::io::Error::other)?;
        let store = self.state.store.clone();
        let workers = Workers::start(WorkerDeps {
            store: store.clone(),
            sessions: self.state.sessions.clone(),
            auth_profiles: self.state.auth_profiles.clone(),
            clients: self.state.clients.clone(),
            last_seen: self.last_seen.clone(),
            signing_keys: self.state.signing_keys.clone(),
            op: self.state.op.clone(),
            webhooks: self.state.webhooks.clone(),
            audit: self.state.audit.clone(),
            audit_every: self.audit_every,
            cache_sync: self.state.cache_sync.clone(),
            cache_sync_every: self.cache_sync_every,
            replica_max_lag: self.replica_max_lag,
        });
        // The metrics listener stops with the main one: when `shutdown` completes, or when the
        // main server ends otherwise (the sender is dropped either way).
        let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(());
        let (draining, drain_delay) = (self.state.clone(), self.server.drain_delay);
        let shutdown = async move {
            shutdown.await;
            if !drain_delay.is_zero() {
                // Out of rotation first, still listening: connections a load balancer sends
                // before it has seen `/readyz` fail are served.
                draining.draining.store(true, std::sync::atomic::Ordering::Release);
                tracing::info!(
                    delay_s = drain_delay.as_secs(),
                    "draining: /readyz answers 503 before the listener closes"
                );
                tokio::time::sleep(drain_delay).await;
            }
            drop(stop_metrics);
        };
        let metrics_server = self.metrics_listener.take().map(|listener| {
            let app = metrics_router(self.state.clone(), &self.server);
            let limits = self.server.clone();
            let mut stopped = metrics_stopped;
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving /metrics");
            }
            tokio::spawn(async move {
                crate::http::serve::serve(listener, app, &limits, async move {
                    let _ = stopped.changed().await;
                })
                .await
            })
        });
        let app = router(self.state, &self.server);
        tracing::info!(addr = %self.listener.local_addr()?, backend = store.backend().name(), "listening");
        let served = crate::http::serve::serve(self.listener, app, &self.server, shutdown).await;
        if let Some(server) = metrics_server {
            match server.await {
                Ok(Err(error)) => tracing::warn!(error = %error.chain(), "the metrics listener ended with an error"),
                Err(error) => tracing::warn!(error = %error.chain(), "the metrics listener's task failed"),
                Ok(Ok(())) => {}
            }
        }
        if !crate::finish_in_flight(AFTER_DRAIN).await {
            tracing::warn!(
                limit_ms = AFTER_DRAIN.as_millis() as u64,
                "changes cut off by the drain were still running"
            );
        }
        workers.stop(AFTER_DRAIN).await;
        store.close().await;
        served
    }
}

/// Logs what a start-up wrote of the configuration file's `what`, when it wrote anything.
fn written(what: &'static str, inserted: usize, updated: usize, deleted: usize) {
    if inserted + updated + deleted > 0 {
        tracing::info!(inserted, updated, deleted, "{what} of the configuration file written");
    }
}

/// A failure to connect to the configured database, naming it (its password redacted).
pub fn connect_failed(config: &Config, source: StoreError) -> StartupError {
    StartupError::Connect { url: config.database.url.redacted(), source }
}

/// Applies the migration policy: refuse a schema this binary does not know, apply pending
/// migrations when allowed, refuse to start otherwise.
pub async fn prepare_schema(store: &dyn Store, migrate: bool) -> Result<(), StartupError> {
    let status = store.migration_status().await.map_err(StartupError::MigrationStatus)?;
    let problems = status.problems();
    if !problems.is_empty() {
        return Err(StartupError::SchemaMismatch { problems });
    }
    if status.pending.is_empty() {
        return Ok(());
    }
    if !migrate {
        return Err(StartupError::PendingMigrations { pending: status.pending });
    }
    if store.backend() == Backend::Postgres {
        tracing::info!(pending = status.pending.len(), "applying migrations");
    }
    store.migrate().await.map_err(StartupError::Migrate)
}
