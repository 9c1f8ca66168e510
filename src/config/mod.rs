//! Configuration: the defaults, a TOML file (`--config PATH` or `TESSERA_CONFIG`), then `TESSERA_`
//! environment variables, layered by figment (see `sources.rs`).
//!
//! Every key is documented in README.md. Loading validates everything up front: a mistake stops
//! start-up with a [`ConfigError`] that names the key (and its environment variable).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::crypto::keyring::KeyRing;
use crate::domain::Issuer;

mod auth;
mod branding;
mod connectors;
mod oidc;
mod sources;

pub use auth::{
    AuthConfig, DEFAULT_MAX_PROFILES_PER_TEAM, DEFAULT_SESSION_IDLE, DEPRECATED_KEY_VAR, ENCRYPTION_KEYS_VAR,
    FreshLogin, ProfileMapping, ProviderConfig, ProviderEndpoints, ProviderKind, ProviderProtocol, TokenAuth,
    UserinfoMethod, is_provider_name,
};
pub use branding::{BrandingConfig, DEFAULT_PRIMARY_COLOR, image_origin};
pub use connectors::{
    ConnectorConfig, ConnectorProbe, EnvField, FieldPattern, FilledProbe, ProbeFillError, ProbeMethod,
};
pub use oidc::{ClientConfig, MIN_CLIENT_SECRET_LEN, OidcConfig};

/// A configuration mistake, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error in `{key}`: {message}")]
pub struct ConfigError {
    /// The file key (and environment variable, when there is one) at fault.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// The validated configuration of one Tessera process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP server binds (`listen`, `TESSERA_LISTEN`).
    pub listen: SocketAddr,
    /// Storage settings.
    pub database: DatabaseConfig,
    /// Admin API tokens (`admin_tokens`, `TESSERA_ADMIN_TOKEN`). Only their hashes are kept once the
    /// server is built.
    pub admin_tokens: Vec<SecretString>,
    /// Issuers that may own identities (`[[issuers]]`, `TESSERA_ALLOWED_ISSUERS`).
    pub issuers: Vec<IssuerConfig>,
    /// Logging settings.
    pub log: LogConfig,
    /// In-memory caches of the token-validation path.
    pub cache: CacheConfig,
    /// How issuer keys (JWKS) are fetched.
    pub jwks: JwksConfig,
    /// Limits of the HTTP server: read timeouts and the shutdown deadline.
    pub server: ServerConfig,
    /// Browser sign-in and sessions.
    pub auth: AuthConfig,
    /// Sign-in providers (`[[providers]]`).
    pub providers: Vec<ProviderConfig>,
    /// The key ring for upstream tokens at rest (`TESSERA_ENCRYPTION_KEYS`), if configured.
    pub encryption: Option<Arc<KeyRing>>,
    /// Tessera as an OpenID Provider (`[oidc]`).
    pub oidc: OidcConfig,
    /// How the pages present the product (`[branding]`).
    pub branding: BrandingConfig,
    /// Webhook delivery (`[webhooks]`).
    pub webhooks: WebhooksConfig,
    /// The audit log (`[audit]`).
    pub audit: AuditConfig,
    /// Declared connectors and the fields of `env` ones (`[[connectors]]`).
    pub connectors: Vec<ConnectorConfig>,
    /// The Prometheus endpoint (`[metrics]`).
    pub metrics: MetricsConfig,
    /// Warnings found while loading (deprecated settings), logged once logging is set up.
    pub warnings: Vec<String>,
}

/// In-memory caches of the token-validation path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long a resolved identity (user and teams) is reused without a database read
    /// (`cache.principal_ttl_seconds`); zero disables the cache.
    pub principal_ttl: Duration,
    /// How long a verified token is reused without checking its signature again, never past its
    /// `exp` (`cache.token_ttl_seconds`); zero disables the cache.
    pub token_ttl: Duration,
    /// Most entries kept in each cache (`cache.max_entries`).
    pub max_entries: usize,
    /// How often this instance reads the cache-invalidation log, which tells it what other
    /// instances changed (`cache.sync_interval_ms`).
    pub sync_interval: Duration,
}

/// Limits of the HTTP server, against slow or stalled clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// How long a client may take to send a request's headers, from the first byte or, on a
    /// kept-alive connection, from the end of the previous response
    /// (`server.header_read_timeout_ms`).
    pub header_read_timeout: Duration,
    /// How long a request body may take to arrive, from the first read of it to its end
    /// (`server.body_read_timeout_ms`).
    pub body_read_timeout: Duration,
    /// After SIGTERM, how long requests in flight may take to finish before their connections
    /// are closed (`server.shutdown_timeout_seconds`).
    pub shutdown_timeout: Duration,
    /// How often last-use times of identities and sessions are written, in batches, off the
    /// request path (`server.last_seen_flush_ms`).
    pub last_seen_flush: Duration,
    /// After SIGTERM, how long the server goes on accepting connections while `/readyz` answers
    /// 503, so that a load balancer takes it out of rotation before it stops listening
    /// (`server.drain_delay_seconds`; zero: it stops listening at once).
    pub drain_delay: Duration,
    /// Most connections served at once on each listener (`server.max_connections`); at the cap
    /// the server accepts no more until one closes, and new clients wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(20),
            last_seen_flush: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            max_connections: 4096,
        }
    }
}

/// The Prometheus endpoint, `GET /metrics` (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Whether metrics are recorded and served (`metrics.enabled`, default true).
    pub enabled: bool,
    /// A listener of its own for `/metrics`, served there without authentication and not on the
    /// main listener (`metrics.listen`); `None`: on the main listener, behind an admin token.
    pub listen: Option<SocketAddr>,
}

impl MetricsConfig {
    /// Where `/metrics` has a listener of its own: `listen`, when metrics are on at all.
    pub fn own_listener(&self) -> Option<SocketAddr> {
        self.listen.filter(|_| self.enabled)
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, listen: None }
    }
}

/// Webhook delivery (`[webhooks]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// Whether endpoints on loopback, private, link-local and other non-public addresses may be
    /// called (`webhooks.allow_private_addresses`); off by default, against SSRF.
    pub allow_private_addresses: bool,
    /// Timeout of one delivery request, connection included (`webhooks.timeout_ms`).
    pub timeout: Duration,
    /// How often each instance looks for events and due deliveries (`webhooks.poll_interval_ms`).
    pub poll_interval: Duration,
    /// The wait after a first failed attempt (`webhooks.retry_base_ms`); doubled after each
    /// further failure, with jitter, up to `retry_max`.
    pub retry_base: Duration,
    /// The longest wait between two attempts (`webhooks.retry_max_ms`).
    pub retry_max: Duration,
    /// How long a delivery is retried before it is marked failed (`webhooks.give_up_after_seconds`).
    pub give_up_after: Duration,
    /// Most endpoints one instance delivers to at the same time (`webhooks.max_concurrent_endpoints`).
    pub max_concurrent_endpoints: usize,
    /// How long the previous signing key keeps signing after a rotation
    /// (`webhooks.secret_overlap_seconds`).
    pub secret_overlap: Duration,
    /// How long outbox events and their delivery log are kept once every endpoint is done with
    /// them (`webhooks.retention_days`); `None` keeps them forever (`0`).
    pub retention: Option<Duration>,
    /// The endpoints of the configuration file (`[[webhooks.endpoints]]`).
    pub endpoints: Vec<ConfigWebhook>,
}

/// An endpoint of the configuration file (`[[webhooks.endpoints]]`), written to the store at
/// start-up under its name; the admin API cannot change it. Its `Debug` hides the URL, which
/// may carry a credential (as the stored endpoint's does).
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigWebhook {
    /// Its stable name (`name`): letters, digits, `-`, `_`, `.`, at most 64.
    pub name: String,
    /// Where events are POSTed (`url`; checked at start-up like a registration).
    pub url: String,
    /// Topics (`event_types`); empty: every topic.
    pub event_types: Vec<String>,
    /// Whether events are delivered to it (`enabled`, default true).
    pub enabled: bool,
    /// The signing key, from the `whsec_…` value of the environment variable `secret_env`.
    pub key: WebhookKey,
}

crate::debug_redacted!(ConfigWebhook { shown: [name, event_types, enabled, key], secret: [url] });

/// A webhook signing key (the decoded bytes after `whsec_`); never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookKey(Vec<u8>);

impl WebhookKey {
    /// Parses the Standard Webhooks form: `whsec_` and 24 to 64 bytes in base64.
    pub fn from_whsec(value: &str) -> Option<Self> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD.decode(value.trim().strip_prefix("whsec_")?).ok()?;
        (24..=64).contains(&bytes.len()).then_some(Self(bytes))
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey([redacted])")
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_private_addresses: false,
            timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(2 * 3600),
            give_up_after: Duration::from_secs(24 * 3600),
            max_concurrent_endpoints: 32,
            secret_overlap: Duration::from_secs(86_400),
            retention: Some(Duration::from_secs(30 * 86_400)),
            endpoints: Vec::new(),
        }
    }
}

/// The audit log (`[audit]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// How long rows are kept (`audit.retention_days`); `None` keeps them forever (`0`).
    pub retention: Option<Duration>,
    /// How often the refused tokens counted in memory are written, one row per reason and issuer
    /// (`audit.flush_interval_ms`).
    pub flush_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { retention: Some(Duration::from_secs(365 * 86_400)), flush_interval: Duration::from_secs(60) }
    }
}

/// How issuer keys are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// Least time between two refetches triggered by an unknown `kid` or a failed signature,
    /// after a successful fetch (`jwks.refetch_cooldown_seconds`).
    pub refetch_cooldown: Duration,
    /// How long the next fetch waits after a failed one, from its end (`jwks.failure_backoff_ms`);
    /// doubled after each further consecutive failure, up to `failure_backoff_max`.
    pub failure_backoff: Duration,
    /// The longest wait after failed fetches (`jwks.failure_backoff_max_ms`).
    pub failure_backoff_max: Duration,
    /// Timeout of one discovery or JWKS request (`jwks.fetch_timeout_ms`).
    pub fetch_timeout: Duration,
    /// Keys are kept at least this long whatever `max-age` the issuer sends
    /// (`jwks.min_max_age_seconds`); they are refreshed at least daily.
    pub min_max_age: Duration,
    /// How long past their `max-age` keys are still served while they cannot be fetched again
    /// (`jwks.max_stale_seconds`): a key the issuer withdrew stops verifying then at the latest.
    pub max_stale: Duration,
}

/// Where and how data is stored.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Primary database (`database.url`, `TESSERA_DATABASE_URL`).
    pub url: DatabaseUrl,
    /// Optional PostgreSQL read replica for reads that tolerate lag (`database.replica_url`,
    /// `TESSERA_DATABASE_REPLICA_URL`).
    pub replica_url: Option<DatabaseUrl>,
    /// How far behind the primary the replica may be and still be read
    /// (`database.replica_max_lag_ms`): a read of the replica sees every change committed at
    /// least this long before it, else the read goes to the primary.
    pub replica_max_lag: Duration,
    /// Most connections kept open to the primary (`database.max_connections`).
    pub max_connections: u32,
    /// How long to wait for a connection before reporting the store unavailable
    /// (`database.acquire_timeout_ms`).
    pub acquire_timeout: Duration,
    /// How long `/readyz` waits for the database before answering 503
    /// (`database.ready_timeout_ms`): shorter than a probe's own timeout, so that a database
    /// outage reads as "not ready" rather than as a probe timeout.
    pub ready_timeout: Duration,
    /// How long one PostgreSQL statement may wait for its answer before it fails (503) and its
    /// connection is closed (`database.statement_timeout_ms`): a server gone silent without
    /// closing the connection would otherwise hold it for the kernel's retransmission timeout.
    pub statement_timeout: Duration,
    /// Whether `serve` applies pending migrations itself (`database.auto_migrate`,
    /// `TESSERA_AUTO_MIGRATE`). Defaults to true on SQLite and false on PostgreSQL.
    pub auto_migrate: bool,
}

/// One issuer whose identities Tessera accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The normalised issuer URL.
    pub issuer: Issuer,
    /// A short name, recorded as the provider of identities bootstrapped for this issuer.
    pub name: String,
    /// Audiences a token must name (one of) to be accepted; none means no token is accepted.
    pub audiences: Vec<String>,
    /// Of `audiences`, those a token must name (one of) to act for its user on Tessera's own API
    /// beyond `/v1/validate` and `/v1/check` (`/v1/me`, teams, identities, connected accounts);
    /// `None`: any of them (`issuers[].api_audiences`).
    pub api_audiences: Option<Vec<String>>,
    /// Signature algorithms accepted from this issuer. Never `none`, never HMAC.
    pub algorithms: Vec<Algorithm>,
    /// Where the issuer's keys are; `None` means OpenID Connect discovery.
    pub jwks_uri: Option<Url>,
    /// Clock-skew allowance for `exp` and `nbf`.
    pub leeway: Duration,
    /// Whether first-time subjects are provisioned on validation.
    pub jit: bool,
}

/// The algorithms accepted when an issuer does not list its own.
pub const DEFAULT_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

impl IssuerConfig {
    /// An issuer with the defaults: named after its host, no audience, RS256/ES256/EdDSA,
    /// discovery, 60 s leeway, just-in-time provisioning on.
    pub fn new(issuer: Issuer) -> Self {
        Self {
            name: issuer.host().to_owned(),
            issuer,
            audiences: Vec::new(),
            api_audiences: None,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            jwks_uri: None,
            leeway: Duration::from_secs(60),
            jit: true,
        }
    }
}

/// Parses an algorithm name from the allow-list vocabulary: RSA (RS*, PS*), ECDSA (ES256,
/// ES384) and EdDSA. `none` and the HMAC family are refused: keys come from a JWKS, which never
/// holds shared secrets.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    match name.trim() {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        "EdDSA" => Ok(Algorithm::EdDSA),
        "none" | "HS256" | "HS384" | "HS512" => {
            Err(format!("{name} is never accepted: keys come from the issuer's JWKS"))
        }
        other => Err(format!("{other:?} is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA")),
    }
}

/// The secret an environment variable `var` holds, trimmed (one made from a file —
/// `kubectl create secret --from-file` — often ends in a newline that is no part of it);
/// unset or blank is an error at `key`.
pub(super) fn secret_env(env: &dyn Fn(&str) -> Option<String>, var: &str, key: String) -> Result<String, ConfigError> {
    env(var).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty()).ok_or_else(|| {
        // Named only when it looks like a variable's name: the secret itself, pasted here, is a
        // likely mistake, and the error goes to the logs.
        let looks_like_a_name = (1..=128).contains(&var.len())
            && !var.starts_with(|c: char| c.is_ascii_digit())
            && var.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        let message = match looks_like_a_name {
            true => format!("the environment variable {var} is not set"),
            false => "the environment variable it names is not set (the name is not shown: it is no upper-case \
                      variable name, and may be the secret itself)"
                .to_owned(),
        };
        ConfigError::new(key, message)
    })
}

/// The secret in the file at `path`, trimmed (a file written by `echo` or a secrets manager
/// often ends in a newline that is no part of it); unreadable or blank is an error at `key`,
/// which names the path only `with_path` and when it looks like one (a `/` in it, under a
/// directory that exists: the secret itself, pasted here, is a likely mistake), and never the
/// content.
pub(super) fn secret_file(path: &str, key: impl Into<String>, with_path: bool) -> Result<String, ConfigError> {
    let key = key.into();
    // (Under a directory other than `/` itself: a secret may start with a `/`.)
    let looks_like_a_path = path.contains('/')
        && std::path::Path::new(path.trim()).parent().is_some_and(|dir| dir.parent().is_some() && dir.is_dir());
    let named = if with_path && looks_like_a_path { path.trim().to_owned() } else { "the file it names".to_owned() };
    let secret = std::fs::read_to_string(path.trim())
        .map_err(|e| ConfigError::new(key.clone(), format!("cannot read {named}: {}", e.kind())))?;
    match secret.trim() {
        "" => Err(ConfigError::new(key, format!("{named} is empty"))),
        secret => Ok(secret.to_owned()),
    }
}

/// A secret read from where an entry's configuration names it.
pub(super) struct NamedSecret {
    /// The secret, trimmed.
    pub value: SecretString,
    /// Where it came from, for a message: the variable's name, or "the file `<key>` names".
    pub from: String,
    /// The setting that named it (`secret_env` or `secret_file`, say).
    pub setting: String,
    /// Its full key (`<entry>.<setting>`), for an error about the secret itself.
    pub key: String,
}

/// A secret named by an environment variable (the setting `env_name`, holding `var`) or a file
/// (the setting `file_name`, holding `path`), not both; `key` makes an entry's full key of a
/// setting's name. `None` when neither is set.
pub(super) fn env_or_file(
    env: &dyn Fn(&str) -> Option<String>,
    key: &dyn Fn(&str) -> String,
    (env_name, var): (&str, Option<&str>),
    (file_name, path): (&str, Option<&str>),
) -> Result<Option<NamedSecret>, ConfigError> {
    match (var, path) {
        (Some(_), Some(_)) => Err(ConfigError::new(key(env_name), format!("set {env_name} or {file_name}, not both"))),
        (Some(var), None) => Ok(Some(NamedSecret {
            value: SecretString::from(secret_env(env, var, key(env_name))?),
            from: var.to_owned(),
            setting: env_name.to_owned(),
            key: key(env_name),
        })),
        (None, Some(path)) => Ok(Some(NamedSecret {
            value: SecretString::from(secret_file(path, key(file_name), true)?),
            from: format!("the file {file_name} names"),
            setting: file_name.to_owned(),
            key: key(file_name),
        })),
        (None, None) => Ok(None),
    }
}

/// Validates the URL of an endpoint Tessera will call: `https`, or `http` on a loopback host; no
/// credentials.
pub fn endpoint_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value.trim()).map_err(|e| format!("not a URL: {e}"))?;
    let Some(host) = url.host() else { return Err("the URL has no host".into()) };
    let loopback = crate::domain::is_loopback(&host);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("the URL must use https (http only on loopback hosts)".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not contain credentials".into());
    }
    Ok(url)
}

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `text` or `json` (`log.format`, `TESSERA_LOG_FORMAT`).
    pub json: bool,
    /// A `tracing` filter such as `info,tessera=debug` (`log.filter`, `TESSERA_LOG`).
    pub filter: String,
    /// Whether the filter was given (else it is the default, `info`).
    pub filter_given: bool,
}

/// The kind of database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// A short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A database URL. Its `Debug` and `Display` never show a password.
#[derive(Clone)]
pub struct DatabaseUrl {
    url: SecretString,
    backend: Backend,
    /// The names of the URL's query parameters that the driver does not read, taken out of
    /// [`expose`](Self::expose) (the driver would log their values).
    ignored: Vec<String>,
}

impl DatabaseUrl {
    /// Parses a `sqlite:` or `postgres:`/`postgresql:` URL.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            return Self::parse_postgres(value);
        }
        let Some(rest) = value.strip_prefix("sqlite:") else {
            return Err("expected a URL starting with sqlite: or postgres://".into());
        };
        // `sqlite:` or `sqlite://` alone opens a private, temporary database per connection: the
        // writer's migrations would not be seen by the readers, and nothing would last.
        let path = rest.trim_start_matches("//");
        if path.split('?').next().is_none_or(str::is_empty) {
            return Err("the SQLite URL names no file (e.g. sqlite://tessera.db)".into());
        }
        Ok(Self { url: SecretString::from(value.to_owned()), backend: Backend::Sqlite, ignored: Vec::new() })
    }

    /// [`parse`](Self::parse) of a PostgreSQL URL: the parameters the driver does not read are
    /// taken out (and named), those it cannot keep refused.
    fn parse_postgres(value: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(value).map_err(|e| {
            // A password with `/`, `?`, `#` or `@` in it (as random ones have) cuts the
            // authority short, and what is left reads as a port or a host name.
            let hint = match e {
                url::ParseError::InvalidPort
                | url::ParseError::EmptyHost
                | url::ParseError::InvalidDomainCharacter
                | url::ParseError::IdnaError => {
                    "; in the user name and password, percent-encode `/ ? # @ : %` (`/` is %2F, `@` is %40)"
                }
                _ => "",
            };
            // Not the value: it may hold the password.
            format!("not a valid PostgreSQL URL: {e}{hint}")
        })?;
        let (mut read, mut ignored) = (Vec::new(), Vec::new());
        for (name, value) in url.query_pairs() {
            if matches!(name.as_ref(), "sslmode" | "ssl-mode")
                && !SSL_MODES.contains(&value.to_ascii_lowercase().as_str())
            {
                return Err(format!("sslmode must be one of {}", SSL_MODES.join(", ")));
            }
            // One that asks for a guarantee the driver cannot give is refused, by name: left out,
            // it would be dropped without a word.
            if let Some(why) = unkept_guarantee(&name, &value) {
                return Err(format!("the PostgreSQL URL's `{name}` {why}: Tessera's driver (sqlx) cannot keep it"));
            }
            // A libpq parameter the driver does not read (`connect_timeout`, `sslpassword`): kept
            // from the driver, which would log its value, and named at start-up
            // (`ignored_parameters`).
            match PG_PARAMETERS.contains(&name.as_ref()) || name.starts_with("options[") {
                true => read.push((name.into_owned(), value.into_owned())),
                false => ignored.push(name.into_owned()),
            }
        }
        let url = match (ignored.is_empty(), read.is_empty()) {
            (true, _) => value.to_owned(),
            (false, true) => {
                url.set_query(None);
                url.to_string()
            }
            (false, false) => {
                url.query_pairs_mut().clear().extend_pairs(read);
                url.to_string()
            }
        };
        Ok(Self { url: SecretString::from(url), backend: Backend::Postgres, ignored })
    }

    /// The names of the URL's query parameters that the driver does not read: left out of the
    /// URL it is given, and worth a warning at start-up (never with their values).
    pub fn ignored_parameters(&self) -> &[String] {
        &self.ignored
    }

    /// Why a connection to this PostgreSQL URL would not verify the server it reaches, if it
    /// would not: an `sslmode` below `verify-ca` (the URL's, else `PGSSLMODE`'s, else the
    /// driver's `prefer`, which also falls back to plain text) for a host other than this machine
    /// (a loopback address, `localhost` or a Unix socket).
    pub fn unverified_tls(&self) -> Option<String> {
        self.unverified_tls_with(|name| std::env::var(name).ok())
    }

    /// [`unverified_tls`](Self::unverified_tls), reading the environment through `env`.
    fn unverified_tls_with(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        if self.backend != Backend::Postgres {
            return None;
        }
        let url = url::Url::parse(self.expose()).ok()?;
        // The last of a parameter given twice, as the driver reads them.
        let param = |names: &[&str]| {
            url.query_pairs()
                .filter(|(name, _)| names.contains(&name.as_ref()))
                .last()
                .map(|(_, value)| value.into_owned())
        };
        // Where the driver connects: `hostaddr` over `host` over the URL's host; without any, the
        // environment's, else the local socket.
        let host = param(&["hostaddr"])
            .or_else(|| param(&["host"]))
            .filter(|host| !host.is_empty())
            .or_else(|| url.host_str().filter(|host| !host.is_empty()).map(str::to_owned))
            .or_else(|| env("PGHOSTADDR").or_else(|| env("PGHOST")))
            .unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let local = host.is_empty()
            || host.starts_with('/')
            || host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let mode = param(&["sslmode", "ssl-mode"]).or_else(|| env("PGSSLMODE")).unwrap_or_else(|| "prefer".to_owned());
        let verified = matches!(mode.to_ascii_lowercase().as_str(), "verify-ca" | "verify-full");
        (!local && !verified).then(|| format!("sslmode={mode}"))
    }

    /// Which backend the URL selects.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The full URL, password included: hand it to the driver only.
    pub fn expose(&self) -> &str {
        self.url.expose_secret()
    }

    /// The URL with any password replaced by `***`: the user-info's, and the value of every query
    /// parameter but those known to hold no secret (`sslmode`, `host`, a certificate's path…).
    pub fn redacted(&self) -> String {
        let Ok(mut url) = url::Url::parse(self.expose()) else { return self.expose().to_owned() };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        if url.query_pairs().any(|(name, _)| !not_secret(&name)) {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(name, value)| {
                    let value = if not_secret(&name) { value.into_owned() } else { "***".to_owned() };
                    (name.into_owned(), value)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The query parameters of a PostgreSQL URL that sqlx reads (besides `options[…]`): any other is
/// left out of the URL the driver gets (which would log it with its value) and named at start-up.
const PG_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// What a libpq parameter of a PostgreSQL URL asks for that sqlx cannot do, if anything.
fn unkept_guarantee(name: &str, value: &str) -> Option<&'static str> {
    let value = value.to_ascii_lowercase();
    match name {
        "channel_binding" if value == "require" => Some("requires channel binding"),
        "target_session_attrs" if value != "any" => Some("asks for a kind of server"),
        "gssencmode" if value == "require" => Some("requires GSSAPI encryption"),
        "sslcrl" | "sslcrldir" => Some("names certificate revocation lists"),
        "ssl_min_protocol_version" if value == "tlsv1.3" => Some("requires TLS 1.3"),
        "sslnegotiation" if value == "direct" => Some("asks for direct TLS negotiation"),
        _ => None,
    }
}

/// The values of `sslmode`.
const SSL_MODES: &[&str] = &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// Whether a database URL's query parameter is shown as it is in messages (every other's value
/// is `***`): those sqlx reads but `password` and `options` (which may carry anything), and
/// SQLite's.
fn not_secret(name: &str) -> bool {
    (PG_PARAMETERS.contains(&name) && !matches!(name, "password" | "options"))
        || ["mode", "cache", "immutable", "vfs"].contains(&name)
}

/// The default database: a SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://tessera.db";
/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How long `/readyz` waits for the database by default: half of the one-second timeout most
/// probes use (Kubernetes' default), so that the 503 arrives before the probe gives up.
pub const DEFAULT_READY_TIMEOUT_MS: u64 = 500;

/// A directive of `filter` that is a bare word close to a level name (`warning`, `inof`, `fatal`)
/// but not one: `tracing` reads such a word as a target, so the filter would let through only
/// that target's events — none of Tessera's, errors included.
fn misspelled_level(filter: &str) -> Option<&str> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    const ALIASES: [&str; 7] = ["warning", "fatal", "critical", "notice", "verbose", "all", "none"];
    filter.split(',').map(str::trim).find(|word| {
        let lower = word.to_ascii_lowercase();
        let bare = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric());
        bare && lower.parse::<tracing::level_filters::LevelFilter>().is_err()
            && (ALIASES.contains(&lower.as_str())
                || LEVELS.iter().any(|level| strsim::damerau_levenshtein(level, &lower) <= 2))
    })
}

/// The default of `database.replica_max_lag_ms`.
pub const DEFAULT_REPLICA_MAX_LAG_MS: u64 = 10_000;
/// The largest `database.replica_max_lag_ms`: well within the minute for which a changed user is
/// read from the primary rather than the replica (see `service::principals`).
pub const MAX_REPLICA_MAX_LAG_MS: u64 = 30_000;
/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The keys as read, before validation. No `Debug` here or in the other `Raw*` types: they hold
/// secrets (admin tokens, a database password, keys) as plain strings.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin_tokens: Option<Vec<String>>,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    jwks: RawJwks,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: auth::RawAuth,
    #[serde(default)]
    providers: Vec<auth::RawProvider>,
    #[serde(default)]
    encryption: auth::RawEncryption,
    #[serde(default)]
    oidc: oidc::RawOidc,
    #[serde(default)]
    branding: branding::RawBranding,
    #[serde(default)]
    webhooks: RawWebhooks,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    connectors: Vec<connectors::RawConnector>,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    enabled: Option<bool>,
    listen: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    allow_private_addresses: Option<bool>,
    timeout_ms: Option<u64>,
    poll_interval_ms: Option<u64>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    give_up_after_seconds: Option<u64>,
    max_concurrent_endpoints: Option<usize>,
    secret_overlap_seconds: Option<u64>,
    retention_days: Option<u64>,
    #[serde(default)]
    endpoints: Vec<RawWebhookEndpoint>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhookEndpoint {
    name: Option<String>,
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
    secret_env: Option<String>,
    secret_file: Option<String>,
    /// Refused with a pointer to `secret_env`; the value itself is not kept.
    secret: Option<serde::de::IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    retention_days: Option<u64>,
    flush_interval_ms: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    principal_ttl_seconds: Option<u64>,
    token_ttl_seconds: Option<u64>,
    max_entries: Option<usize>,
    sync_interval_ms: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    shutdown_timeout_seconds: Option<u64>,
    last_seen_flush_ms: Option<u64>,
    drain_delay_seconds: Option<u64>,
    max_connections: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    refetch_cooldown_seconds: Option<u64>,
    failure_backoff_ms: Option<u64>,
    failure_backoff_max_ms: Option<u64>,
    fetch_timeout_ms: Option<u64>,
    min_max_age_seconds: Option<u64>,
    max_stale_seconds: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    replica_url: Option<String>,
    replica_max_lag_ms: Option<u64>,
    max_connections: Option<u32>,
    acquire_timeout_ms: Option<u64>,
    ready_timeout_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
    auto_migrate: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    name: Option<String>,
    audiences: Option<Vec<String>>,
    api_audiences: Option<Vec<String>>,
    algorithms: Option<Vec<String>>,
    jwks_uri: Option<String>,
    leeway_seconds: Option<u64>,
    jit: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    filter: Option<String>,
}

/// Why an issuer without audiences is worth a warning (`serve` logs it, `tessera check` reports it).
pub const NO_AUDIENCES: &str =
    "has no audiences (issuers[].audiences or TESSERA_AUDIENCES): /v1/validate refuses its tokens";

impl Config {
    /// The issuers without audiences, every token of which is refused.
    pub fn issuers_without_audiences(&self) -> impl Iterator<Item = &IssuerConfig> {
        self.issuers.iter().filter(|issuer| issuer.audiences.is_empty())
    }

    /// Loads the configuration: the defaults, then the optional TOML file, then the `TESSERA_`
    /// environment variables — every key in its `__` spelling (`TESSERA_CACHE__MAX_ENTRIES`),
    /// read from the process environment, and the names of earlier releases (`TESSERA_LISTEN`,
    /// `TESSERA_DATABASE_URL`, …), looked up through `env` like the variables a key names
    /// (`client_secret_env`). Pass `|k| std::env::var(k).ok()`.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("--config (TESSERA_CONFIG)", format!("cannot read {}: {e}", path.display()))
                })?;
                Some((text, path.display().to_string()))
            }
            None => None,
        };
        let file = file.as_ref().map(|(text, label)| (text.as_str(), label.as_str()));
        Self::from_sources(file, &env, true)
    }

    /// Parses a configuration from TOML text, with the variables `env` returns: the names of
    /// earlier releases and those a key names. The process environment is not read, so the
    /// `__` spelling is [`Config::load`]'s alone; for tests.
    pub fn from_toml(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_sources(Some((text, "config file")), &env, false)
    }

    /// The configuration of the TOML `file` (text and label), `env` (with the secrets its
    /// `_FILE` variables name read from their files) and, if `process_env`, the `__` variables
    /// of the process environment.
    fn from_sources(
        file: Option<(&str, &str)>,
        env: &dyn Fn(&str) -> Option<String>,
        process_env: bool,
    ) -> Result<Self, ConfigError> {
        let secret_files = sources::SecretFiles::read(env)?;
        let env = |var: &str| secret_files.get(var).or_else(|| env(var));
        let layers = sources::Layers::new(file, &env, &secret_files, process_env)?;
        let raw = layers.extract()?;
        Self::from_raw(raw, &env).map_err(|error| layers.attribute(error))
    }

    fn from_raw(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let listen_text = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text.trim().parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                "listen (TESSERA_LISTEN)",
                format!("{listen_text:?} is not an address of the form 127.0.0.1:8080"),
            )
        })?;

        let url_text = raw.database.url.unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        let url =
            DatabaseUrl::parse(&url_text).map_err(|m| ConfigError::new("database.url (TESSERA_DATABASE_URL)", m))?;
        let replica_key = "database.replica_url (TESSERA_DATABASE_REPLICA_URL)";
        let replica_url = match raw.database.replica_url {
            Some(text) if !text.trim().is_empty() => {
                let replica = DatabaseUrl::parse(&text).map_err(|m| ConfigError::new(replica_key, m))?;
                if replica.backend() != Backend::Postgres || url.backend() != Backend::Postgres {
                    return Err(ConfigError::new(replica_key, "a read replica needs PostgreSQL for both URLs"));
                }
                Some(replica)
            }
            _ => None,
        };
        let replica_max_lag_ms = raw.database.replica_max_lag_ms.unwrap_or(DEFAULT_REPLICA_MAX_LAG_MS);
        if !(100..=MAX_REPLICA_MAX_LAG_MS).contains(&replica_max_lag_ms) {
            return Err(ConfigError::new(
                "database.replica_max_lag_ms",
                format!("expected a number of milliseconds from 100 to {MAX_REPLICA_MAX_LAG_MS}"),
            ));
        }
        let max_connections = raw.database.max_connections.unwrap_or(16);
        if !(1..=1000).contains(&max_connections) {
            return Err(ConfigError::new(
                "database.max_connections (TESSERA_DATABASE_MAX_CONNECTIONS)",
                "expected a number from 1 to 1000",
            ));
        }
        let acquire_timeout_ms = raw.database.acquire_timeout_ms.unwrap_or(5_000);
        if !(10..=120_000).contains(&acquire_timeout_ms) {
            return Err(ConfigError::new(
                "database.acquire_timeout_ms",
                "expected a number of milliseconds from 10 to 120000",
            ));
        }
        let ready_timeout_ms = raw.database.ready_timeout_ms.unwrap_or(DEFAULT_READY_TIMEOUT_MS);
        if !(10..=60_000).contains(&ready_timeout_ms) {
            return Err(ConfigError::new(
                "database.ready_timeout_ms",
                "expected a number of milliseconds from 10 to 60000",
            ));
        }
        let statement_timeout_ms = raw.database.statement_timeout_ms.unwrap_or(30_000);
        if !(100..=3_600_000).contains(&statement_timeout_ms) {
            return Err(ConfigError::new(
                "database.statement_timeout_ms",
                "expected a number of milliseconds from 100 to 3600000",
            ));
        }
        let auto_migrate = raw.database.auto_migrate.unwrap_or(url.backend() == Backend::Sqlite);

        let admin_tokens: Vec<String> = raw.admin_tokens.unwrap_or_default();
        for token in &admin_tokens {
            // Visible ASCII only: a header carrying anything else is refused before it is read.
            if token.len() < MIN_ADMIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "admin_tokens (TESSERA_ADMIN_TOKEN)",
                    format!(
                        "every admin token must be at least {MIN_ADMIN_TOKEN_LEN} visible ASCII characters, without spaces; \
                         generate one with `openssl rand -hex 32`"
                    ),
                ));
            }
        }

        let mut issuers: Vec<IssuerConfig> = Vec::new();
        for (i, raw_issuer) in raw.issuers.into_iter().enumerate() {
            let issuer = parse_issuer(i, raw_issuer)?;
            if issuers.iter().any(|known| known.issuer == issuer.issuer) {
                return Err(ConfigError::new(
                    format!("issuers[{i}].issuer"),
                    format!("{} is listed twice (after normalisation)", issuer.issuer),
                ));
            }
            issuers.push(issuer);
        }
        let env_audiences = env("TESSERA_AUDIENCES").map(|list| split_list(&list)).unwrap_or_default();
        let env_issuers = env("TESSERA_ALLOWED_ISSUERS").filter(|list| !list.trim().is_empty());
        // Audiences with no issuer to apply to would be dropped without a word.
        if !env_audiences.is_empty() && env_issuers.is_none() {
            return Err(ConfigError::new(
                "TESSERA_AUDIENCES",
                "applies to the issuers of TESSERA_ALLOWED_ISSUERS, which is not set: set it too, or give the \
                 audiences in the file's [[issuers]]",
            ));
        }
        if let Some(list) = env_issuers {
            for (n, item) in split_list(&list).into_iter().enumerate() {
                // The item by its place, not its text: a URL may hold credentials.
                let issuer = Issuer::parse(&item)
                    .map_err(|e| ConfigError::new("TESSERA_ALLOWED_ISSUERS", format!("item {}: {e}", n + 1)))?;
                match issuers.iter_mut().find(|known| known.issuer == issuer) {
                    // Listed in the file too: the variable's audiences where the file gives none,
                    // a conflict where both do.
                    Some(known) if !env_audiences.is_empty() && known.audiences != env_audiences => {
                        if !known.audiences.is_empty() {
                            return Err(ConfigError::new(
                                "TESSERA_AUDIENCES",
                                format!("{issuer} has other audiences in the file: give them in one place"),
                            ));
                        }
                        known.audiences = env_audiences.clone();
                    }
                    Some(_) => {}
                    None => {
                        let mut config = IssuerConfig::new(issuer);
                        config.audiences = env_audiences.clone();
                        issuers.push(config);
                    }
                }
            }
        }

        // Checked once the environment's audiences are in: each must be one of them, or it could
        // never be met.
        for (i, issuer) in issuers.iter().enumerate() {
            if let Some(api) = &issuer.api_audiences
                && let Some(stray) = api.iter().find(|a| !issuer.audiences.contains(a))
            {
                return Err(ConfigError::new(
                    format!("issuers[{i}].api_audiences"),
                    format!("{stray:?} is not one of the issuer's audiences"),
                ));
            }
        }

        let cache = CacheConfig {
            principal_ttl: Duration::from_secs(raw.cache.principal_ttl_seconds.unwrap_or(60)),
            token_ttl: Duration::from_secs(raw.cache.token_ttl_seconds.unwrap_or(300)),
            max_entries: raw.cache.max_entries.unwrap_or(100_000),
            sync_interval: Duration::from_millis(raw.cache.sync_interval_ms.unwrap_or(250)),
        };
        if !(10..=60_000).contains(&cache.sync_interval.as_millis()) {
            return Err(ConfigError::new("cache.sync_interval_ms", "expected 10 to 60000 milliseconds"));
        }
        for (key, ttl) in
            [("cache.principal_ttl_seconds", cache.principal_ttl), ("cache.token_ttl_seconds", cache.token_ttl)]
        {
            if ttl > Duration::from_secs(3600) {
                return Err(ConfigError::new(key, "cache lifetimes are at most 3600 seconds"));
            }
        }
        let cooldown = raw.jwks.refetch_cooldown_seconds.unwrap_or(30);
        if !(1..=3600).contains(&cooldown) {
            return Err(ConfigError::new("jwks.refetch_cooldown_seconds", "expected 1 to 3600 seconds"));
        }
        let failure_backoff = raw.jwks.failure_backoff_ms.unwrap_or(1_000);
        if !(100..=60_000).contains(&failure_backoff) {
            return Err(ConfigError::new("jwks.failure_backoff_ms", "expected 100 to 60000 milliseconds"));
        }
        let failure_backoff_max = raw.jwks.failure_backoff_max_ms.unwrap_or(5_000.max(failure_backoff));
        if !(failure_backoff..=60_000).contains(&failure_backoff_max) {
            return Err(ConfigError::new(
                "jwks.failure_backoff_max_ms",
                format!("expected {failure_backoff} (jwks.failure_backoff_ms) to 60000 milliseconds"),
            ));
        }
        let fetch_timeout = raw.jwks.fetch_timeout_ms.unwrap_or(5_000);
        if !(100..=60_000).contains(&fetch_timeout) {
            return Err(ConfigError::new("jwks.fetch_timeout_ms", "expected 100 to 60000 milliseconds"));
        }
        let auth = auth::parse_auth(raw.auth)?;
        let providers = auth::parse_providers(raw.providers, env)?;
        if !providers.is_empty() && auth.public_url.is_none() {
            return Err(ConfigError::new(
                "auth.public_url (TESSERA_PUBLIC_URL)",
                "sign-in providers need the URL browsers reach Tessera at, to build callback URLs",
            ));
        }
        if let Some(default) = &auth.default_provider {
            match providers.iter().find(|p| &p.name == default) {
                None => {
                    return Err(ConfigError::new("auth.default_provider", format!("no provider is named {default:?}")));
                }
                Some(provider) if !provider.protocol.sign_in => {
                    return Err(ConfigError::new(
                        "auth.default_provider",
                        format!("{default:?} serves connected accounts only: nobody signs in with it"),
                    ));
                }
                Some(_) => {}
            }
        }
        let mut warnings = Vec::new();
        let encryption = auth::parse_encryption(raw.encryption, env, &mut warnings)?;
        let min_max_age = raw.jwks.min_max_age_seconds.unwrap_or(60);
        if !(1..=3600).contains(&min_max_age) {
            return Err(ConfigError::new("jwks.min_max_age_seconds", "expected 1 to 3600 seconds"));
        }
        let max_stale = raw.jwks.max_stale_seconds.unwrap_or(86_400);
        if max_stale > 7 * 86_400 {
            return Err(ConfigError::new("jwks.max_stale_seconds", "expected 0 to 604800 seconds (a week)"));
        }
        let jwks = JwksConfig {
            refetch_cooldown: Duration::from_secs(cooldown),
            failure_backoff: Duration::from_millis(failure_backoff),
            failure_backoff_max: Duration::from_millis(failure_backoff_max),
            fetch_timeout: Duration::from_millis(fetch_timeout),
            min_max_age: Duration::from_secs(min_max_age),
            max_stale: Duration::from_secs(max_stale),
        };

        let server = parse_server(&raw.server)?;
        // Last-use times written less often than this would let the sweep and other instances
        // end a session in use: its stored last use must stay well within the idle timeout.
        if server.last_seen_flush * 2 > auth.session_idle {
            return Err(ConfigError::new(
                "server.last_seen_flush_ms",
                "must be at most half of auth.session_idle_minutes, or sessions in use would end as idle",
            ));
        }
        let webhooks = parse_webhooks(&raw.webhooks, env)?;
        let audit = parse_audit(&raw.audit)?;
        let oidc = oidc::parse_oidc(raw.oidc, env)?;
        // Clients of a provider that is off would be written to the store and never served.
        if !oidc.clients.is_empty() && (auth.public_url.is_none() || encryption.is_none()) {
            warnings.push(format!(
                "[[oidc.clients]] are configured, but the OpenID Provider is off until auth.public_url \
                 (TESSERA_PUBLIC_URL) and the key ring ({ENCRYPTION_KEYS_VAR}) are both set"
            ));
        }
        let branding = branding::parse_branding(raw.branding)?;
        let connectors = connectors::parse_connectors(raw.connectors)?;
        if encryption.is_none()
            && let Some(why) = needs_key_ring(&providers, &webhooks, &connectors)
        {
            return Err(ConfigError::new(
                ENCRYPTION_KEYS_VAR,
                format!("{why}: set {ENCRYPTION_KEYS_VAR}=<id>:<base64 32 bytes>"),
            ));
        }
        let metrics = parse_metrics(&raw.metrics, listen)?;
        if !metrics.enabled && metrics.listen.is_some() {
            warnings.push("metrics.listen is set but metrics.enabled is false: nothing listens there".to_owned());
        }

        let json = match raw.log.format.as_deref().map(str::trim) {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "log.format (TESSERA_LOG_FORMAT)",
                    format!("{other:?} is not one of text, json"),
                ));
            }
        };
        let filter_given = raw.log.filter.is_some();
        let filter = raw.log.filter.unwrap_or_else(|| "info".into());
        // A blank filter parses, as one that lets nothing through: errors included.
        if filter.trim().is_empty() || tracing_subscriber::EnvFilter::try_new(&filter).is_err() {
            return Err(ConfigError::new("log.filter (TESSERA_LOG)", format!("{filter:?} is not a valid filter")));
        }
        if let Some(word) = misspelled_level(&filter) {
            return Err(ConfigError::new(
                "log.filter (TESSERA_LOG)",
                format!(
                    "{word:?} is not a level (error, warn, info, debug, trace, off): as a directive of its own it \
                     names a target, and lets nothing else through, errors included (write target=level for a target)"
                ),
            ));
        }

        Ok(Config {
            listen,
            database: DatabaseConfig {
                url,
                replica_url,
                replica_max_lag: Duration::from_millis(replica_max_lag_ms),
                max_connections,
                acquire_timeout: Duration::from_millis(acquire_timeout_ms),
                ready_timeout: Duration::from_millis(ready_timeout_ms),
                statement_timeout: Duration::from_millis(statement_timeout_ms),
                auto_migrate,
            },
            admin_tokens: admin_tokens.into_iter().map(SecretString::from).collect(),
            issuers,
            log: LogConfig { json, filter, filter_given },
            cache,
            jwks,
            server,
            auth,
            providers,
            encryption,
            oidc,
            branding,
            webhooks,
            audit,
            connectors,
            metrics,
            warnings,
        })
    }

    /// A configuration for tests and benchmarks: the given database, port 0, no env overrides.
    pub fn for_database(url: &str) -> Result<Self, ConfigError> {
        let mut config = Self::from_raw(RawConfig::default(), &|_| None)?;
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database.url =
            DatabaseUrl::parse(url).map_err(|m| ConfigError::new("database.url (TESSERA_DATABASE_URL)", m))?;
        config.database.auto_migrate = true;
        Ok(config)
    }
}

fn parse_audit(raw: &RawAudit) -> Result<AuditConfig, ConfigError> {
    let defaults = AuditConfig::default();
    let retention = retention_days(raw.retention_days, defaults.retention, "audit.retention_days")?;
    let flush_interval = match raw.flush_interval_ms {
        None => defaults.flush_interval,
        Some(ms) if (10..=3_600_000).contains(&ms) => Duration::from_millis(ms),
        Some(_) => return Err(ConfigError::new("audit.flush_interval_ms", "expected 10 to 3600000 milliseconds")),
    };
    Ok(AuditConfig { retention, flush_interval })
}

/// A retention in days: absent, the default; `0`, forever (`None`); at most 100 years.
fn retention_days(days: Option<u64>, default: Option<Duration>, key: &str) -> Result<Option<Duration>, ConfigError> {
    match days {
        None => Ok(default),
        Some(0) => Ok(None),
        Some(days) if days <= 36_500 => Ok(Some(Duration::from_secs(days * 86_400))),
        Some(_) => Err(ConfigError::new(key, "expected 0 (keep forever) to 36500 days")),
    }
}

fn parse_webhooks(raw: &RawWebhooks, env: &dyn Fn(&str) -> Option<String>) -> Result<WebhooksConfig, ConfigError> {
    let defaults = WebhooksConfig::default();
    let millis = |value: Option<u64>, default: Duration, key: &str, range: std::ops::RangeInclusive<u64>| match value {
        None => Ok(default),
        Some(ms) if range.contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(_) => Err(ConfigError::new(key, format!("expected {} to {} milliseconds", range.start(), range.end()))),
    };
    let retry_base = millis(raw.retry_base_ms, defaults.retry_base, "webhooks.retry_base_ms", 10..=3_600_000)?;
    let retry_max = millis(raw.retry_max_ms, defaults.retry_max, "webhooks.retry_max_ms", 10..=86_400_000)?;
    if retry_max < retry_base {
        return Err(ConfigError::new("webhooks.retry_max_ms", "must not be below webhooks.retry_base_ms"));
    }
    let give_up_after = match raw.give_up_after_seconds {
        None => defaults.give_up_after,
        Some(s) if (1..=7 * 86_400).contains(&s) => Duration::from_secs(s),
        Some(_) => return Err(ConfigError::new("webhooks.give_up_after_seconds", "expected 1 to 604800 seconds")),
    };
    let max_concurrent_endpoints = match raw.max_concurrent_endpoints {
        None => defaults.max_concurrent_endpoints,
        Some(n) if (1..=1024).contains(&n) => n,
        Some(_) => return Err(ConfigError::new("webhooks.max_concurrent_endpoints", "expected 1 to 1024")),
    };
    let secret_overlap = match raw.secret_overlap_seconds {
        None => defaults.secret_overlap,
        Some(s) if s <= 30 * 86_400 => Duration::from_secs(s),
        Some(_) => return Err(ConfigError::new("webhooks.secret_overlap_seconds", "expected 0 to 2592000 seconds")),
    };
    let allow_private_addresses = raw.allow_private_addresses.unwrap_or(defaults.allow_private_addresses);
    let mut endpoints: Vec<ConfigWebhook> = Vec::with_capacity(raw.endpoints.len());
    for (i, endpoint) in raw.endpoints.iter().enumerate() {
        let parsed = parse_webhook_endpoint(i, endpoint, allow_private_addresses, env)?;
        if endpoints.iter().any(|e| e.name == parsed.name) {
            return Err(ConfigError::new(
                format!("webhooks.endpoints[{i}].name"),
                format!("{:?} names another endpoint too", parsed.name),
            ));
        }
        endpoints.push(parsed);
    }
    Ok(WebhooksConfig {
        allow_private_addresses,
        timeout: millis(raw.timeout_ms, defaults.timeout, "webhooks.timeout_ms", 100..=60_000)?,
        poll_interval: millis(raw.poll_interval_ms, defaults.poll_interval, "webhooks.poll_interval_ms", 10..=60_000)?,
        retry_base,
        retry_max,
        give_up_after,
        max_concurrent_endpoints,
        secret_overlap,
        retention: retention_days(raw.retention_days, defaults.retention, "webhooks.retention_days")?,
        endpoints,
    })
}

/// One `[[webhooks.endpoints]]` entry; errors name it by index and, once known, by name.
fn parse_webhook_endpoint(
    i: usize,
    raw: &RawWebhookEndpoint,
    allow_private: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConfigWebhook, ConfigError> {
    let name = raw.name.as_deref().map(str::trim).unwrap_or_default().to_owned();
    let key = |field: &str| {
        if name.is_empty() {
            format!("webhooks.endpoints[{i}].{field}")
        } else {
            format!("webhooks.endpoints[{i}] ({name}).{field}")
        }
    };
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ConfigError::new(key("name"), "expected 1 to 64 letters, digits, `-`, `_` or `.`"));
    }
    let url = raw.url.as_deref().map(str::trim).filter(|u| !u.is_empty());
    let url = url.ok_or_else(|| ConfigError::new(key("url"), "the endpoint's URL is required"))?;
    // Checked here as the API checks it, so that `tessera check` catches it and `serve` does not
    // stop half-way through writing the file's endpoints.
    let url = crate::domain::endpoint_url(url, allow_private).map_err(|m| ConfigError::new(key("url"), m))?;
    let mut event_types: Vec<String> = Vec::new();
    for t in raw.event_types.iter().flatten() {
        let topic = crate::domain::events::topic(t.trim())
            .ok_or_else(|| ConfigError::new(key("event_types"), format!("{t:?} is not an event type Tessera sends")))?;
        if !event_types.iter().any(|e| e == topic) {
            event_types.push(topic.to_owned());
        }
    }
    if raw.secret.is_some() {
        return Err(ConfigError::new(
            key("secret"),
            "a signing key does not belong in the file: put it in an environment variable and name that with \
             secret_env, or in a file and name that with secret_file",
        ));
    }
    let named = ("secret_env", raw.secret_env.as_deref());
    let secret = env_or_file(env, &key, named, ("secret_file", raw.secret_file.as_deref()))?.ok_or_else(|| {
        ConfigError::new(
            key("secret_env"),
            "name the environment variable (secret_env) or the file (secret_file) holding the endpoint's whsec_ \
             signing key",
        )
    })?;
    let signing_key = WebhookKey::from_whsec(secret.value.expose_secret()).ok_or_else(|| {
        ConfigError::new(
            secret.key.clone(),
            format!(
                "{} must hold whsec_ and 24 to 64 bytes in base64 (generate one with \
                     `echo whsec_$(openssl rand -base64 32)`)",
                secret.from
            ),
        )
    })?;
    Ok(ConfigWebhook { name, url, event_types, enabled: raw.enabled.unwrap_or(true), key: signing_key })
}

fn parse_metrics(raw: &RawMetrics, main: SocketAddr) -> Result<MetricsConfig, ConfigError> {
    let listen = match raw.listen.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => {
            let addr = text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new("metrics.listen", format!("{text:?} is not an address of the form 127.0.0.1:9464"))
            })?;
            if addr == main && addr.port() != 0 {
                return Err(ConfigError::new(
                    "metrics.listen",
                    "must differ from `listen`; leave it unset to serve /metrics on the main listener behind an admin token",
                ));
            }
            Some(addr)
        }
    };
    Ok(MetricsConfig { enabled: raw.enabled.unwrap_or(true), listen })
}

fn parse_server(raw: &RawServer) -> Result<ServerConfig, ConfigError> {
    let defaults = ServerConfig::default();
    let millis = |value: Option<u64>, default: Duration, key: &str| match value {
        None => Ok(default),
        Some(ms) if (100..=300_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(_) => Err(ConfigError::new(key, "expected 100 to 300000 milliseconds")),
    };
    let shutdown_timeout = match raw.shutdown_timeout_seconds {
        None => defaults.shutdown_timeout,
        Some(s) if (1..=300).contains(&s) => Duration::from_secs(s),
        Some(_) => return Err(ConfigError::new("server.shutdown_timeout_seconds", "expected 1 to 300 seconds")),
    };
    Ok(ServerConfig {
        header_read_timeout: millis(
            raw.header_read_timeout_ms,
            defaults.header_read_timeout,
            "server.header_read_timeout_ms",
        )?,
        body_read_timeout: millis(raw.body_read_timeout_ms, defaults.body_read_timeout, "server.body_read_timeout_ms")?,
        shutdown_timeout,
        last_seen_flush: millis(raw.last_seen_flush_ms, defaults.last_seen_flush, "server.last_seen_flush_ms")?,
        drain_delay: match raw.drain_delay_seconds {
            None => defaults.drain_delay,
            Some(s) if s <= 60 => Duration::from_secs(s),
            Some(_) => return Err(ConfigError::new("server.drain_delay_seconds", "expected 0 to 60 seconds")),
        },
        max_connections: match raw.max_connections {
            None => defaults.max_connections,
            Some(n) if (1..=1_000_000).contains(&n) => n,
            Some(_) => return Err(ConfigError::new("server.max_connections", "expected 1 to 1000000 connections")),
        },
    })
}

fn parse_issuer(i: usize, raw: RawIssuer) -> Result<IssuerConfig, ConfigError> {
    let key = |field: &str| format!("issuers[{i}].{field}");
    let issuer = Issuer::parse(&raw.issuer).map_err(|e| ConfigError::new(key("issuer"), e.to_string()))?;
    let mut config = IssuerConfig::new(issuer);
    if let Some(name) = raw.name {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(ConfigError::new(key("name"), "expected 1 to 64 characters"));
        }
        config.name = name.to_owned();
    }
    // Trimmed, as the environment's and the providers' audience lists are.
    let audiences = |field: &str, list: Vec<String>| {
        if list.iter().any(|a| a.trim().is_empty()) {
            return Err(ConfigError::new(key(field), "an audience must not be blank"));
        }
        Ok(list.iter().map(|a| a.trim().to_owned()).collect::<Vec<_>>())
    };
    if let Some(list) = raw.audiences {
        config.audiences = audiences("audiences", list)?;
    }
    if let Some(list) = raw.api_audiences {
        config.api_audiences = Some(audiences("api_audiences", list)?);
    }
    if let Some(names) = raw.algorithms {
        if names.is_empty() {
            return Err(ConfigError::new(key("algorithms"), "list at least one algorithm"));
        }
        config.algorithms = names
            .iter()
            .map(|n| parse_algorithm(n))
            .collect::<Result<_, _>>()
            .map_err(|m| ConfigError::new(key("algorithms"), m))?;
    }
    if let Some(uri) = raw.jwks_uri {
        config.jwks_uri = Some(endpoint_url(&uri).map_err(|m| ConfigError::new(key("jwks_uri"), m))?);
    }
    if let Some(leeway) = raw.leeway_seconds {
        if leeway > 600 {
            return Err(ConfigError::new(key("leeway_seconds"), "expected at most 600 seconds"));
        }
        config.leeway = Duration::from_secs(leeway);
    }
    config.jit = raw.jit.unwrap_or(true);
    Ok(config)
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Why the configuration needs the key ring, if it does: what it names would keep a secret in
/// the clear, or fail every request for it, without one. Checked at start-up, so that it fails
/// there rather than at each request.
fn needs_key_ring(
    providers: &[ProviderConfig],
    webhooks: &WebhooksConfig,
    connectors: &[ConnectorConfig],
) -> Option<String> {
    let provider = |p: &ProviderConfig| match (p.store_tokens, p.protocol.sign_in) {
        (true, _) => Some(format!("provider {:?} stores tokens, which needs an encryption key", p.name)),
        // Connected accounts only, whose credentials are kept encrypted.
        (false, false) => Some(format!(
            "provider {:?} serves connected accounts only (sign_in = false), whose credentials are kept encrypted with the key ring",
            p.name
        )),
        (false, true) => None,
    };
    providers
        .iter()
        .find_map(provider)
        .or_else(|| {
            webhooks
                .endpoints
                .first()
                .map(|e| format!("webhook endpoint {:?} needs the key ring to keep its signing key encrypted", e.name))
        })
        .or_else(|| {
            connectors
                .iter()
                .find(|c| !c.fields.is_empty())
                .map(|c| format!("connector {:?} has fields, whose values are kept encrypted with the key ring", c.key))
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn webhook_endpoints_take_their_keys_from_the_environment() {
        use base64::Engine;
        let b64 = |byte: u8, n: usize| base64::engine::general_purpose::STANDARD.encode(vec![byte; n]);
        let ring = format!("k1:{}", b64(1, 32));
        let key = format!("whsec_{}", b64(9, 32));
        let file = |extra: &str| {
            format!(
                "[webhooks]\nsecret_overlap_seconds = 60\n[[webhooks.endpoints]]\nname = \"billing\"\n\
                 url = \"https://billing.example.com/hook\"\nevent_types = [\"user.created\", \"user.created\"]\n{extra}"
            )
        };
        let with_env = "secret_env = \"BILLING\"\n";
        let config =
            Config::from_toml(&file(with_env), env(&[(ENCRYPTION_KEYS_VAR, &ring), ("BILLING", &key)])).unwrap();
        let endpoint = &config.webhooks.endpoints[0];
        assert_eq!((endpoint.name.as_str(), endpoint.enabled), ("billing", true));
        assert_eq!(endpoint.event_types, ["user.created"]);
        assert_eq!(Some(&endpoint.key), WebhookKey::from_whsec(&key).as_ref());
        assert_eq!(config.webhooks.secret_overlap, Duration::from_secs(60));
        let debug = format!("{config:?}");
        assert!(!debug.contains(&b64(9, 32)), "the key is never printed");
        assert!(!debug.contains("billing.example.com/hook"), "nor the URL, which may carry a credential");
        assert_eq!(Config::from_toml("", env(&[])).unwrap().webhooks.secret_overlap, Duration::from_secs(86_400));

        let error = |extra: &str, pairs: &[(&str, &str)]| Config::from_toml(&file(extra), env(pairs)).unwrap_err();
        let both = [(ENCRYPTION_KEYS_VAR, ring.as_str()), ("BILLING", key.as_str())];
        let named = "webhooks.endpoints[0] (billing).secret_env";
        assert_eq!(error(with_env, &both[..1]).key, named, "the variable is not set");
        assert!(error(with_env, &both[..1]).to_string().contains("BILLING is not set"), "a variable's name is shown");
        // The secret itself pasted where its variable's name, or its file's path, belongs: not shown.
        let pasted = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0";
        let as_env = error(&format!("secret_env = \"{pasted}\"\n"), &both[..1]);
        assert_eq!(as_env.key, named);
        assert!(!as_env.to_string().contains("c2VjcmV0"), "{as_env}");
        let pasted_b64 = "c2Vj/cmV0+c2VjcmV0c2VjcmV0c2VjcmV0";
        let as_file = error(&format!("secret_file = \"{pasted_b64}\"\n"), &both[..1]);
        assert_eq!(as_file.key, "webhooks.endpoints[0] (billing).secret_file");
        assert!(!as_file.to_string().contains("c2Vj"), "{as_file}");
        let leading = error("secret_file = \"/c2VjcmV0c2VjcmV0c2VjcmV0\"\n", &both[..1]);
        assert!(!leading.to_string().contains("c2Vj"), "{leading}");
        let missing = error("secret_file = \"/nonexistent-dir/whsec\"\n", &both[..1]);
        assert!(!missing.to_string().contains("nonexistent-dir"), "{missing}");
        let short = format!("whsec_{}", b64(9, 8));
        for bad in ["nope", short.as_str(), "whsec_!!"] {
            assert_eq!(error(with_env, &[both[0], ("BILLING", bad)]).key, named, "{bad}");
        }
        assert_eq!(error("", &both).key, named, "secret_env is required");
        // Or a file holding it (a mounted secret), but not both.
        let file_holding = tempfile::NamedTempFile::new().unwrap();
        let path = file_holding.path();
        std::fs::write(path, format!("{key}\n")).unwrap();
        let with_file = format!("secret_file = \"{}\"\n", path.display());
        let from_file = Config::from_toml(&file(&with_file), env(&both[..1])).unwrap();
        assert_eq!(Some(&from_file.webhooks.endpoints[0].key), WebhookKey::from_whsec(&key).as_ref());
        assert_eq!(error(&format!("{with_env}{with_file}"), &both).key, named, "not both");
        std::fs::write(path, "nope").unwrap();
        assert_eq!(error(&with_file, &both[..1]).key, "webhooks.endpoints[0] (billing).secret_file");
        std::fs::write(path, "").unwrap();
        let empty = error(&with_file, &both[..1]);
        assert!(empty.to_string().contains(&format!("{} is empty", path.display())), "a path is shown: {empty}");
        assert_eq!(error("secret = \"whsec_x\"\n", &both).key, "webhooks.endpoints[0] (billing).secret");
        assert_eq!(error(with_env, &both[1..]).key, ENCRYPTION_KEYS_VAR, "the key ring is required");
        let twice = format!(
            "{with_env}[[webhooks.endpoints]]\nname = \"billing\"\nurl = \"https://x.example.com/\"\n{with_env}"
        );
        assert_eq!(error(&twice, &both).key, "webhooks.endpoints[1].name");
        let typo = "secret_env = \"BILLING\"\nenabled = false\n[[webhooks.endpoints]]\nname = \"b\"\nurl = \"https://x.example.com/\"\nevent_types = [\"user.exploded\"]\nsecret_env = \"BILLING\"\n";
        assert_eq!(error(typo, &both).key, "webhooks.endpoints[1] (b).event_types");
        let overlong = Config::from_toml("[webhooks]\nsecret_overlap_seconds = 2592001", env(&[])).unwrap_err();
        assert_eq!(overlong.key, "webhooks.secret_overlap_seconds");
    }

    #[test]
    fn retentions_are_days_with_zero_for_forever() {
        let parsed = |toml: &str| Config::from_toml(toml, env(&[]));
        let defaults = parsed("").unwrap();
        assert_eq!(defaults.webhooks.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(defaults.audit.retention, Some(Duration::from_secs(365 * 86_400)));
        let set = parsed("[webhooks]\nretention_days = 7\n[audit]\nretention_days = 0").unwrap();
        assert_eq!((set.webhooks.retention, set.audit.retention), (Some(Duration::from_secs(7 * 86_400)), None));
        assert_eq!(parsed("[webhooks]\nretention_days = 0").unwrap().webhooks.retention, None);
        assert_eq!(parsed("[webhooks]\nretention_days = 36501").unwrap_err().key, "webhooks.retention_days");
        assert_eq!(parsed("[audit]\nretention_days = 36501").unwrap_err().key, "audit.retention_days");
    }

    #[test]
    fn defaults_need_no_configuration_at_all() {
        let config = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database.url.backend(), Backend::Sqlite);
        assert!(config.database.auto_migrate);
        assert!(config.admin_tokens.is_empty());
        assert!(config.issuers.is_empty());
        assert_eq!(config.jwks.refetch_cooldown, Duration::from_secs(30));
        assert_eq!(config.jwks.failure_backoff, Duration::from_secs(1));
        assert_eq!(config.jwks.failure_backoff_max, Duration::from_secs(5));
    }

    #[test]
    fn the_failure_back_off_is_short_and_capped() {
        let jwks = |text: &str| Config::from_toml(&format!("[jwks]\n{text}"), env(&[])).map(|c| c.jwks);
        let set = jwks("failure_backoff_ms = 250\nfailure_backoff_max_ms = 2000").unwrap();
        assert_eq!(
            (set.failure_backoff, set.failure_backoff_max),
            (Duration::from_millis(250), Duration::from_secs(2))
        );
        // A first wait above the default cap raises the cap with it.
        let long = jwks("failure_backoff_ms = 8000").unwrap();
        assert_eq!((long.failure_backoff, long.failure_backoff_max), (Duration::from_secs(8), Duration::from_secs(8)));
        let key = |text: &str| jwks(text).unwrap_err().key;
        assert_eq!(key("failure_backoff_ms = 0"), "jwks.failure_backoff_ms");
        assert_eq!(key("failure_backoff_ms = 60001"), "jwks.failure_backoff_ms");
        assert_eq!(key("failure_backoff_ms = 2000\nfailure_backoff_max_ms = 1000"), "jwks.failure_backoff_max_ms");
        assert_eq!(key("failure_backoff_max_ms = 600000"), "jwks.failure_backoff_max_ms");
    }

    #[test]
    fn api_audiences_are_among_the_issuers_audiences() {
        let issuer = |extra: &str| {
            let text = format!(
                "[[issuers]]\nissuer = \"https://id.example.com\"\naudiences = [\"api\", \"tessera\"]\n{extra}"
            );
            Config::from_toml(&text, env(&[]))
        };
        assert_eq!(issuer("").unwrap().issuers[0].api_audiences, None);
        let narrowed = issuer("api_audiences = [\"tessera\"]").unwrap();
        assert_eq!(narrowed.issuers[0].api_audiences.as_deref(), Some(&["tessera".to_owned()][..]));
        assert_eq!(issuer("api_audiences = [\"other\"]").unwrap_err().key, "issuers[0].api_audiences");
        assert_eq!(issuer("api_audiences = [\" \"]").unwrap_err().key, "issuers[0].api_audiences");
    }

    #[test]
    fn expired_keys_are_served_a_day_by_default_and_at_most_a_week() {
        let jwks = |text: &str| Config::from_toml(&format!("[jwks]\n{text}"), env(&[])).map(|c| c.jwks);
        assert_eq!(jwks("").unwrap().max_stale, Duration::from_secs(86_400));
        assert_eq!(jwks("max_stale_seconds = 0").unwrap().max_stale, Duration::ZERO);
        assert_eq!(jwks("max_stale_seconds = 604801").unwrap_err().key, "jwks.max_stale_seconds");
    }

    #[test]
    fn environment_overrides_the_file() {
        let text = r#"
            listen = "127.0.0.1:9000"
            admin_tokens = ["file-token-0123456789"]
            [database]
            url = "sqlite://file.db"
            [[issuers]]
            issuer = "https://auth.example.com/"
            name = "ory"
        "#;
        let config = Config::from_toml(
            text,
            env(&[
                ("TESSERA_LISTEN", "0.0.0.0:7000"),
                ("TESSERA_DATABASE_URL", "postgres://u:hunter2@db.example/tessera"),
                ("TESSERA_ADMIN_TOKEN", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb"),
                ("TESSERA_ALLOWED_ISSUERS", "https://auth.example.com,https://other.example/"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(config.database.url.backend(), Backend::Postgres);
        assert!(!config.database.auto_migrate, "PostgreSQL does not auto-migrate by default");
        assert_eq!(config.admin_tokens.len(), 2);
        let issuers: Vec<_> = config.issuers.iter().map(|i| (i.issuer.as_str(), i.name.as_str())).collect();
        assert_eq!(issuers, [("https://auth.example.com", "ory"), ("https://other.example", "other.example")]);
    }

    #[test]
    fn secrets_may_come_from_files_named_by_file_variables() {
        let dir = std::env::temp_dir().join(format!("tessera-secret-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, content: &str| {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            path.display().to_string()
        };
        let token = file("admin", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb\n");
        let database = file("database", "postgres://u:hunter2@db.example/tessera\n");
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [3u8; 32]);
        let old = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [4u8; 32]);
        // A list's entries one per line, as a mounted secret is naturally written.
        let ring = file("ring", &format!("k1:{key}\n\nk0:{old}\n"));
        let config = Config::from_toml(
            "",
            env(&[
                ("TESSERA_ADMIN_TOKEN_FILE", &token),
                ("TESSERA_DATABASE_URL_FILE", &database),
                ("TESSERA_ENCRYPTION_KEYS_FILE", &ring),
            ]),
        )
        .unwrap();
        assert_eq!(config.admin_tokens.len(), 2, "a list, as in the variable");
        assert_eq!(config.admin_tokens[1].expose_secret(), "bbbbbbbbbbbbbbbb");
        assert_eq!(config.database.url.backend(), Backend::Postgres);
        assert_eq!(config.encryption.as_ref().map(|ring| ring.active_id().to_owned()).as_deref(), Some("k1"));
        assert!(config.encryption.as_ref().is_some_and(|ring| ring.has_key("k0")), "both keys of the file");
        let lines = file("admin-lines", "aaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbb\n");
        let config = Config::from_toml("", env(&[("TESSERA_ADMIN_TOKEN_FILE", &lines)])).unwrap();
        assert_eq!(config.admin_tokens.len(), 2, "one token per line");

        let error = |pairs: &[(&str, &str)]| Config::from_toml("", env(pairs)).unwrap_err();
        let both = error(&[("TESSERA_ADMIN_TOKEN", "cccccccccccccccc"), ("TESSERA_ADMIN_TOKEN_FILE", &token)]);
        assert_eq!(both.key, "TESSERA_ADMIN_TOKEN, TESSERA_ADMIN_TOKEN_FILE");
        let missing = dir.join("missing").display().to_string();
        let unreadable = error(&[("TESSERA_DATABASE_URL_FILE", &missing)]);
        assert_eq!(unreadable.key, "TESSERA_DATABASE_URL_FILE");
        assert!(!unreadable.to_string().contains(&missing), "the value is not shown: {unreadable}");
        // A value of the file that is wrong is named by the variable that named the file.
        let mysql = file("mysql", "mysql://db.internal/tessera\n");
        assert_eq!(error(&[("TESSERA_DATABASE_URL_FILE", &mysql)]).key, "database.url (TESSERA_DATABASE_URL_FILE)");
        let bad_ring = file("bad-ring", "k:short\n");
        assert_eq!(error(&[("TESSERA_ENCRYPTION_KEYS_FILE", &bad_ring)]).key, "TESSERA_ENCRYPTION_KEYS_FILE");
        let short_token = file("short-token", "short\n");
        assert_eq!(error(&[("TESSERA_ADMIN_TOKEN_FILE", &short_token)]).key, "admin_tokens (TESSERA_ADMIN_TOKEN_FILE)");
        let pasted_path = error(&[("TESSERA_ADMIN_TOKEN_FILE", "/a-token-that-starts-with-a-slash")]);
        assert!(!pasted_path.to_string().contains("a-token-that"), "{pasted_path}");
        let pasted = error(&[("TESSERA_ADMIN_TOKEN_FILE", "the-token-itself-0123")]);
        assert_eq!(pasted.key, "TESSERA_ADMIN_TOKEN_FILE");
        assert!(!pasted.to_string().contains("the-token-itself"), "a value that is no path is not shown: {pasted}");
        let blank = error(&[("TESSERA_ENCRYPTION_KEYS_FILE", &file("blank", " \n"))]);
        assert_eq!(blank.key, "TESSERA_ENCRYPTION_KEYS_FILE");
        // A bad value read from a file is reported like the variable's, without the value.
        let short = error(&[("TESSERA_ADMIN_TOKEN_FILE", &file("short", "hunter2"))]);
        assert!(short.key.contains("TESSERA_ADMIN_TOKEN") && !short.to_string().contains("hunter2"), "{short}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn issuer_entries_are_read_as_written_within_their_bounds() {
        let with = |text: &str, pairs: &[(&str, &str)]| Config::from_toml(text, env(pairs));
        // An issuer URL with credentials is refused without repeating it.
        let credentials =
            with("", &[("TESSERA_ALLOWED_ISSUERS", "https://a.example,https://svc:hunter2@idp.example.com")]);
        let credentials = credentials.unwrap_err().to_string();
        assert!(credentials.contains("item 2") && !credentials.contains("hunter2"), "{credentials}");
        // A name is counted in characters, not bytes; audiences are trimmed.
        let name = "Вход через корпоративный портал компании";
        let text = format!("[[issuers]]\nissuer = \"https://a.example\"\nname = \"{name}\"\naudiences = [\" api \"]");
        let config = with(&text, &[]).unwrap();
        let issuer = config.issuers.iter().find(|i| i.issuer.as_str() == "https://a.example").unwrap();
        assert_eq!((issuer.name.as_str(), issuer.audiences.as_slice()), (name, &["api".to_owned()][..]));
        let long = format!("[[issuers]]\nissuer = \"https://a.example\"\nname = \"{}\"", "я".repeat(65));
        assert_eq!(with(&long, &[]).unwrap_err().key, "issuers[0].name");
    }

    #[test]
    fn mistakes_name_the_key() {
        let key = |text: &str, pairs: &[(&str, &str)]| Config::from_toml(text, env(pairs)).unwrap_err().key;
        assert_eq!(key("", &[("TESSERA_LISTEN", "nowhere")]), "listen (TESSERA_LISTEN)");
        assert_eq!(key("", &[("TESSERA_DATABASE_URL", "mysql://x")]), "database.url (TESSERA_DATABASE_URL)");
        assert_eq!(key("", &[("TESSERA_ADMIN_TOKEN", "short")]), "admin_tokens (TESSERA_ADMIN_TOKEN)");
        // A header carries visible ASCII only: such a token could never be sent.
        assert_eq!(key("admin_tokens = [\"pässwörd-0123456789\"]", &[]), "admin_tokens");
        assert_eq!(key("", &[("TESSERA_ALLOWED_ISSUERS", "http://evil.example")]), "TESSERA_ALLOWED_ISSUERS");
        assert_eq!(key("[[issuers]]\nissuer = \"ftp://x\"", &[]), "issuers[0].issuer");
        assert_eq!(
            key("[[issuers]]\nissuer = \"https://a.example\"\n[[issuers]]\nissuer = \"https://A.example/\"", &[]),
            "issuers[1].issuer"
        );
        assert_eq!(key("", &[("TESSERA_LOG_FORMAT", "xml")]), "log.format (TESSERA_LOG_FORMAT)");
        assert_eq!(key("lissen = \"x\"", &[]), "lissen");
        // The variable is named only when it set the value.
        assert_eq!(key("[database]\nmax_connections = 0", &[]), "database.max_connections");
        assert_eq!(
            key("", &[("TESSERA_DATABASE_MAX_CONNECTIONS", "0")]),
            "database.max_connections (TESSERA_DATABASE_MAX_CONNECTIONS)"
        );
        assert_eq!(key("listen = \"nowhere\"", &[]), "listen");
        assert_eq!(key("[server]\nmax_connections = 0", &[]), "server.max_connections");
    }

    #[test]
    fn the_connection_cap_defaults_to_4096_and_may_be_set() {
        assert_eq!(Config::from_toml("", env(&[])).unwrap().server.max_connections, 4096);
        let set = Config::from_toml("[server]\nmax_connections = 20", env(&[])).unwrap();
        assert_eq!(set.server.max_connections, 20);
    }

    #[test]
    fn a_wrong_type_in_the_file_names_the_key_and_what_it_expects() {
        let error = |text: &str| Config::from_toml(text, env(&[])).unwrap_err();
        let listen = error("listen = 8080");
        assert_eq!(listen.key, "listen");
        assert_eq!(listen.message, "expected a string (in quotes), found an integer");
        assert_eq!(error("[database]\nmax_connections = \"many\"").key, "database.max_connections");
        assert_eq!(error("admin_tokens = \"x\"").message, "expected a list, found a string");
        assert_eq!(error("cache = 5").message, "expected a table, found an integer");
        assert_eq!(error("[[issuers]]\nissuer = 5").key, "issuers[0].issuer");
        let missing = error("[[issuers]]\nname = \"x\"");
        assert_eq!((missing.key.as_str(), missing.message.as_str()), ("issuers[0].issuer", "this key is required"));
        // Variables are text, so booleans and numbers are read the same lenient way everywhere.
        let lenient =
            Config::from_toml("[database]\nauto_migrate = \"no\"\nmax_connections = \"8\"", env(&[])).unwrap();
        assert!(!lenient.database.auto_migrate);
        assert_eq!(lenient.database.max_connections, 8);
    }

    #[test]
    fn metrics_are_on_by_default_and_may_have_a_listener_of_their_own() {
        let default = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(default.metrics, MetricsConfig { enabled: true, listen: None });
        let set = Config::from_toml("[metrics]\nenabled = false\nlisten = \"127.0.0.1:9464\"", env(&[])).unwrap();
        assert_eq!(set.metrics, MetricsConfig { enabled: false, listen: Some("127.0.0.1:9464".parse().unwrap()) });
        assert!(set.warnings.iter().any(|w| w.contains("nothing listens there")), "{:?}", set.warnings);
        assert!(default.warnings.is_empty(), "{:?}", default.warnings);
        let key = |text: &str| Config::from_toml(text, env(&[])).unwrap_err().key;
        assert_eq!(key("[metrics]\nlisten = \"9464\""), "metrics.listen");
        assert_eq!(key("listen = \"127.0.0.1:8080\"\n[metrics]\nlisten = \"127.0.0.1:8080\""), "metrics.listen");
        assert_eq!(key("[metrics]\npath = \"/m\""), "metrics.path");
    }

    #[test]
    fn readiness_answers_within_a_bound_shorter_than_a_probe_timeout() {
        let default = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(default.database.ready_timeout, Duration::from_millis(DEFAULT_READY_TIMEOUT_MS));
        assert!(default.database.ready_timeout < Duration::from_secs(1), "probes usually give up after 1 s");
        let set = Config::from_toml("[database]\nready_timeout_ms = 250", env(&[])).unwrap();
        assert_eq!(set.database.ready_timeout, Duration::from_millis(250));
        for wrong in ["0", "9", "60001"] {
            let error = Config::from_toml(&format!("[database]\nready_timeout_ms = {wrong}"), env(&[])).unwrap_err();
            assert_eq!(error.key, "database.ready_timeout_ms", "{wrong}");
        }
    }

    #[test]
    fn last_use_times_are_written_well_within_the_idle_timeout() {
        let config = |flush_ms: u64| {
            Config::from_toml(
                &format!("[auth]\nsession_idle_minutes = 1\n[server]\nlast_seen_flush_ms = {flush_ms}"),
                env(&[]),
            )
        };
        assert_eq!(config(30_000).unwrap().server.last_seen_flush, Duration::from_secs(30));
        assert_eq!(config(30_001).unwrap_err().key, "server.last_seen_flush_ms");
    }

    #[test]
    fn a_teams_profile_limit_is_bounded() {
        let config = |toml: &str| Config::from_toml(toml, env(&[]));
        assert_eq!(config("").unwrap().auth.max_profiles_per_team, 10_000);
        assert_eq!(config("[auth]\nmax_profiles_per_team = 1").unwrap().auth.max_profiles_per_team, 1);
        for refused in ["0", "1000001", "5000000000"] {
            let error = config(&format!("[auth]\nmax_profiles_per_team = {refused}")).unwrap_err();
            assert_eq!(error.key, "auth.max_profiles_per_team", "{refused}");
        }
    }

    #[test]
    fn a_session_shorter_than_a_day_is_idle_for_its_whole_lifetime_unless_told() {
        let short = Config::from_toml("[auth]\nsession_ttl_hours = 8", env(&[])).unwrap();
        assert_eq!(
            (short.auth.session_ttl, short.auth.session_idle),
            (Duration::from_secs(8 * 3600), Duration::from_secs(8 * 3600))
        );
        let default = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(default.auth.session_idle, Duration::from_secs(24 * 3600));
        let given =
            Config::from_toml("[auth]\nsession_ttl_hours = 8\nsession_idle_minutes = 481", env(&[])).unwrap_err();
        assert_eq!(given.key, "auth.session_idle_minutes", "a longer one, given, is refused");
    }

    #[test]
    fn a_replica_may_lag_by_at_most_half_a_minute() {
        let default = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(default.database.replica_max_lag, Duration::from_millis(DEFAULT_REPLICA_MAX_LAG_MS));
        let set = Config::from_toml("[database]\nreplica_max_lag_ms = 2500", env(&[])).unwrap();
        assert_eq!(set.database.replica_max_lag, Duration::from_millis(2500));
        // Beyond half a minute, a change read from the primary for a minute could be read back
        // from the replica as it was before.
        for wrong in ["0", "99", "30001", "\"soon\""] {
            let error = Config::from_toml(&format!("[database]\nreplica_max_lag_ms = {wrong}"), env(&[])).unwrap_err();
            assert_eq!(error.key, "database.replica_max_lag_ms", "{wrong}");
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_its_table() {
        let error = Config::from_toml("[database]\nurll = \"sqlite://x.db\"", env(&[])).unwrap_err();
        assert_eq!(error.key, "database.urll");
        assert!(error.message.starts_with("unknown key `urll`, expected one of `url`, "), "{}", error.message);
    }

    #[test]
    fn a_syntax_error_gives_line_and_column() {
        let text = "listen = \"127.0.0.1:8080\"\n[database\nurl = \"sqlite://x.db\"\n";
        let error = Config::from_toml(text, env(&[])).unwrap_err();
        assert_eq!(error.key, "config file");
        assert!(error.message.starts_with("TOML syntax error at line 2, column 10: "), "{}", error.message);
    }

    #[test]
    fn issuers_take_validation_settings() {
        let text = r#"
            [[issuers]]
            issuer = "https://kc.example.com/realms/main"
            audiences = ["api"]
            algorithms = ["ES256", "PS256"]
            jwks_uri = "https://kc.example.com/realms/main/certs"
            leeway_seconds = 5
            jit = false
        "#;
        let config = Config::from_toml(
            text,
            env(&[("TESSERA_ALLOWED_ISSUERS", "https://quick.example.com"), ("TESSERA_AUDIENCES", "a, b")]),
        )
        .unwrap();
        let kc = &config.issuers[0];
        assert_eq!(kc.audiences, ["api"]);
        assert_eq!(kc.algorithms, [Algorithm::ES256, Algorithm::PS256]);
        assert_eq!(kc.jwks_uri.as_ref().unwrap().as_str(), "https://kc.example.com/realms/main/certs");
        assert_eq!(kc.leeway, Duration::from_secs(5));
        assert!(!kc.jit);
        let quick = &config.issuers[1];
        assert_eq!(quick.audiences, ["a", "b"]);
        assert_eq!(quick.algorithms, DEFAULT_ALGORITHMS);
        assert!(quick.jit && quick.jwks_uri.is_none());

        // The variables name an issuer of the file: its audiences where the file gives none, and
        // a conflict where it gives others; audiences with no issuer variable are refused.
        let bare = "[[issuers]]\nissuer = \"https://kc.example.com\"\n";
        let kc = ("TESSERA_ALLOWED_ISSUERS", "https://kc.example.com");
        let filled = Config::from_toml(bare, env(&[kc, ("TESSERA_AUDIENCES", "api")])).unwrap();
        assert_eq!(filled.issuers[0].audiences, ["api"]);
        let realm = ("TESSERA_ALLOWED_ISSUERS", "https://kc.example.com/realms/main");
        let conflict = Config::from_toml(text, env(&[realm, ("TESSERA_AUDIENCES", "other")])).unwrap_err();
        assert_eq!(conflict.key, "TESSERA_AUDIENCES");
        let same = Config::from_toml(text, env(&[realm, ("TESSERA_AUDIENCES", "api")])).unwrap();
        assert_eq!(same.issuers[0].audiences, ["api"]);
        let alone = Config::from_toml(bare, env(&[("TESSERA_AUDIENCES", "api")])).unwrap_err();
        assert_eq!(alone.key, "TESSERA_AUDIENCES");
    }

    #[test]
    fn unsafe_algorithms_and_endpoints_are_refused() {
        let key = |text: &str| Config::from_toml(text, env(&[])).unwrap_err();
        for alg in ["none", "HS256", "RS1"] {
            let error = key(&format!("[[issuers]]\nissuer = \"https://a.example\"\nalgorithms = [\"{alg}\"]"));
            assert_eq!(error.key, "issuers[0].algorithms", "{alg}");
        }
        let error = key("[[issuers]]\nissuer = \"https://a.example\"\njwks_uri = \"http://keys.example/jwks\"");
        assert_eq!(error.key, "issuers[0].jwks_uri");
        let error = Config::from_toml("", env(&[("TESSERA_DATABASE_REPLICA_URL", "postgres://r/db")])).unwrap_err();
        assert_eq!(error.key, "database.replica_url (TESSERA_DATABASE_REPLICA_URL)");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let config = Config::from_toml(
            "",
            env(&[
                ("TESSERA_DATABASE_URL", "postgres://u:hunter2@db.example/tessera"),
                ("TESSERA_ADMIN_TOKEN", "supersecretadmintoken"),
            ]),
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("supersecretadmintoken"), "{debug}");
        assert_eq!(config.database.url.to_string(), "postgres://u:***@db.example/tessera");
        // A password that cuts the URL short is not echoed, and the error says what to do.
        let error = DatabaseUrl::parse("postgres://tessera:ab/cd@db/tessera").unwrap_err();
        assert!(error.contains("invalid port number") && error.contains("percent-encode"), "{error}");
        assert!(!error.contains("ab/cd"), "{error}");
        // The driver reads a `password` parameter too.
        let url = DatabaseUrl::parse("postgres://u@db.example/tessera?sslmode=require&password=hunter2").unwrap();
        assert_eq!(url.to_string(), "postgres://u@db.example/tessera?sslmode=require&password=***");
        assert!(!format!("{url:?}").contains("hunter2"));
        // So does `options`, which may carry anything: masked too.
        let url = DatabaseUrl::parse("postgres://u@db.example/t?application_name=a&options=-c%20x%3Dhunter2").unwrap();
        assert_eq!(url.to_string(), "postgres://u@db.example/t?application_name=a&options=***");
        // A parameter the driver does not read (libpq's `sslpassword`, `connect_timeout`) is
        // kept from it and named, never shown with its value; an sslmode the driver does not know
        // (a typo) is refused.
        let url = DatabaseUrl::parse("postgres://u@db.example/t?sslpassword=hunter2&sslmode=require&connect_timeout=5")
            .unwrap();
        assert_eq!(url.expose(), "postgres://u@db.example/t?sslmode=require");
        assert_eq!(url.ignored_parameters(), ["sslpassword", "connect_timeout"]);
        assert!(!format!("{url:?}").contains("hunter2"));
        let url = DatabaseUrl::parse("postgres://u@db.example/t?connect_timeout=5").unwrap();
        assert_eq!(url.expose(), "postgres://u@db.example/t");
        // One that asks for what the driver cannot do is refused by name, not dropped.
        let unverified = |url: &str, sslmode: Option<&str>| {
            let env = |name: &str| if name == "PGSSLMODE" { sslmode.map(str::to_owned) } else { None };
            DatabaseUrl::parse(url).unwrap().unverified_tls_with(env)
        };
        assert_eq!(unverified("postgres://u@db.example/t", None).as_deref(), Some("sslmode=prefer"));
        assert_eq!(unverified("postgres://u@db.example/t?sslmode=require", None).as_deref(), Some("sslmode=require"));
        assert_eq!(unverified("postgres://u@db.example/t", Some("disable")).as_deref(), Some("sslmode=disable"));
        assert_eq!(
            unverified("postgres://u@db.example/t", Some("verify-full")),
            None,
            "PGSSLMODE read as the driver does"
        );
        assert_eq!(unverified("postgres://u@db.example/t?sslmode=verify-ca", Some("disable")), None, "the URL wins");
        for local in [
            "postgres://u@localhost/t",
            "postgres://u@127.0.0.1:5433/t",
            "postgres://u@[::1]/t",
            "postgres://u@localhost/t?host=/run/postgresql",
        ] {
            assert_eq!(unverified(local, None), None, "{local}");
        }
        assert_eq!(unverified("postgres://u@localhost/t?host=db.example", None).as_deref(), Some("sslmode=prefer"));
        assert_eq!(unverified("postgres://u@localhost/t?hostaddr=10.0.0.5", None).as_deref(), Some("sslmode=prefer"));
        assert_eq!(unverified("sqlite://tessera.db", None), None);
        let refused = DatabaseUrl::parse("postgres://u:hunter2@db.example/t?channel_binding=require").unwrap_err();
        assert!(refused.contains("`channel_binding`") && !refused.contains("hunter2"), "{refused}");
        assert!(DatabaseUrl::parse("postgres://u@db.example/t?channel_binding=prefer").is_ok());
        assert!(DatabaseUrl::parse("postgres://u@db.example/t?target_session_attrs=read-write").is_err());
        let refused = DatabaseUrl::parse("postgres://u@db.example/t?sslmode=requir").unwrap_err();
        assert!(refused.starts_with("sslmode must be one of"), "{refused}");
        assert!(DatabaseUrl::parse("postgres://u@db.example/t?sslmode=Verify-Full&options[search_path]=x").is_ok());
    }

    #[test]
    fn webhook_urls_in_the_file_are_checked_when_it_is_read() {
        use base64::Engine;
        let b64 = |byte: u8, n: usize| base64::engine::general_purpose::STANDARD.encode(vec![byte; n]);
        let (ring, key) = (format!("k1:{}", b64(1, 32)), format!("whsec_{}", b64(9, 32)));
        let vars = [(ENCRYPTION_KEYS_VAR, ring.as_str()), ("BILLING", key.as_str())];
        let file = |url: &str, extra: &str| {
            format!(
                "[webhooks]\n{extra}[[webhooks.endpoints]]\nname = \"billing\"\nurl = \"{url}\"\nsecret_env = \"BILLING\"\n"
            )
        };
        for (url, problem) in [("http://10.0.0.5/hook", "private"), ("ftp://hooks.example.com/", "scheme")] {
            let error = Config::from_toml(&file(url, ""), env(&vars)).unwrap_err().to_string();
            assert!(error.contains("webhooks.endpoints[0] (billing).url") && error.contains(problem), "{error}");
        }
        let allowed = Config::from_toml(&file("http://10.0.0.5/hook", "allow_private_addresses = true\n"), env(&vars));
        assert_eq!(allowed.unwrap().webhooks.endpoints[0].url, "http://10.0.0.5/hook");
    }

    #[test]
    fn a_default_provider_must_sign_people_in() {
        let file = "[auth]\npublic_url = \"https://id.example.com\"\ndefault_provider = \"slack\"\n\
                    [[providers]]\nname = \"slack\"\ntemplate = \"slack\"\nclient_id = \"c\"\nclient_secret_env = \"SLACK\"\n";
        let error = Config::from_toml(file, env(&[("SLACK", "s")])).unwrap_err().to_string();
        assert!(error.contains("auth.default_provider") && error.contains("connected accounts only"), "{error}");
    }

    #[test]
    fn a_log_filter_of_a_misspelled_level_is_refused() {
        for word in ["warning", "inof", "fatal", "errors", "INFOO"] {
            let error = Config::from_toml(&format!("[log]\nfilter = \"{word}\""), env(&[])).unwrap_err();
            assert!(error.key.starts_with("log.filter"), "{word}: {}", error.key);
            assert!(error.message.contains("not a level"), "{word}: {}", error.message);
        }
        // Levels, targets and directives are filters as ever.
        for filter in ["WARN", "info,tessera=debug", "tessera", "sqlx=warn,info", "2"] {
            Config::from_toml(&format!("[log]\nfilter = \"{filter}\""), env(&[])).unwrap();
        }
    }

    #[test]
    fn a_sqlite_url_must_name_a_file_and_the_log_filter_must_say_something() {
        for empty in ["sqlite:", "sqlite://", "sqlite://?mode=rwc"] {
            assert!(DatabaseUrl::parse(empty).is_err(), "{empty}");
        }
        for named in ["sqlite://tessera.db", "sqlite:tessera.db", "sqlite:///var/lib/tessera/t.db?mode=rwc"] {
            assert_eq!(DatabaseUrl::parse(named).unwrap().backend(), Backend::Sqlite, "{named}");
        }
        let blank = Config::from_toml("[log]\nfilter = \" \"\n", env(&[])).unwrap_err();
        assert!(blank.to_string().contains("log.filter"), "{blank}");
        // A blank variable is an unset one: the default filter.
        let unset = Config::from_toml("", env(&[("TESSERA_LOG", " ")])).unwrap();
        assert_eq!(unset.log.filter, Config::from_toml("", env(&[])).unwrap().log.filter);
    }
}
