//! The test harness: a fresh database per test on either backend, the real server on port 0, and
//! typed request helpers.
//!
//! PostgreSQL tests need `TESSERA_TEST_PG_URL` (an admin URL of a throwaway cluster). The README's
//! test command, `scripts/test`, starts one. Without it, PostgreSQL tests fail: they never skip.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgPool, SqlitePool};
use tempfile::TempDir;
use tessera::config::{Config, IssuerConfig};
use tessera::domain::Issuer;
use tessera::startup::{Application, prepare_schema};
use tessera::store::{self, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Defines each listed `async fn name(backend: Backend)` as two tests, `sqlite::name` and
/// `postgres::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

tokio::task_local! {
    /// The environment variable naming the PostgreSQL cluster of the current test, when it is not
    /// the default one (see [`on_utf8_cluster`]).
    static PG_CLUSTER_VAR: &'static str;
}

/// The admin URL of the throwaway PostgreSQL cluster.
pub fn pg_admin_url() -> String {
    let var = PG_CLUSTER_VAR.try_with(|var| *var).unwrap_or("TESSERA_TEST_PG_URL");
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite with `scripts/test`, which starts a throwaway PostgreSQL")
    })
}

/// Runs a PostgreSQL story on the second test cluster, initialised with a UTF-8 locale (where
/// `lower()` folds Unicode, as on most production clusters) instead of `--no-locale`.
pub async fn on_utf8_cluster(story: impl Future<Output = ()>) {
    PG_CLUSTER_VAR.scope("TESSERA_TEST_PG_UTF8_URL", story).await
}

/// A fresh, empty database.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: Option<TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
                Self { backend, url, _dir: Some(dir) }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test cluster");
                sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create a test database");
                conn.close().await.ok();
                let mut url = url::Url::parse(&admin).expect("admin URL");
                url.set_path(&name);
                Self { backend, url: url.to_string(), _dir: None }
            }
        }
    }

    /// Ages a connected account's access token (the profile with `slug`): stored an hour ago,
    /// expiring `seconds` from now (in the past when negative). Returns how many rows changed.
    pub async fn expire_token_in(&self, slug: &str, seconds: i64) -> u64 {
        let (expires, stored) = match self.backend {
            Backend::Sqlite => {
                let at = |delta: chrono::TimeDelta| (chrono::Utc::now() + delta).timestamp_micros().to_string();
                (at(chrono::TimeDelta::seconds(seconds)), at(chrono::TimeDelta::hours(-1)))
            }
            Backend::Postgres => (format!("now() + interval '{seconds} seconds'"), "now() - interval '1 hour'".into()),
        };
        let sql = format!(
            "UPDATE auth_profiles SET access_token_expires_at = {expires}, access_token_stored_at = {stored}
             WHERE slug = '{slug}'"
        );
        self.sql().await.exec(&sql).await.unwrap()
    }

    /// The same database again, for a second server instance.
    pub fn share(&self) -> Self {
        Self { backend: self.backend, url: self.url.clone(), _dir: None }
    }

    /// A configuration for this database with the test defaults.
    pub fn config(&self) -> Config {
        let mut config = Config::for_database(&self.url).expect("test config");
        config.admin_tokens = vec![ADMIN_TOKEN.to_owned().into()];
        config.issuers = [ISSUER, OTHER_ISSUER]
            .iter()
            .map(|i| {
                let mut issuer = IssuerConfig::new(Issuer::parse(i).unwrap());
                issuer.name = "test".into();
                // These issuers do not exist: keep key prefetching off the network (port 9 on
                // loopback refuses at once), so that no test waits on DNS.
                issuer.jwks_uri = Some(url::Url::parse("http://127.0.0.1:9/jwks").unwrap());
                issuer
            })
            .collect();
        // Webhook receivers of the tests listen on loopback; retries come quickly.
        config.webhooks.allow_private_addresses = true;
        config.webhooks.poll_interval = std::time::Duration::from_millis(50);
        config.webhooks.retry_base = std::time::Duration::from_millis(100);
        config.webhooks.retry_max = std::time::Duration::from_millis(400);
        config
    }

    /// Connects a store and applies migrations.
    pub async fn store(&self) -> Arc<dyn Store> {
        let store = store::connect(&self.config().database).await.expect("connect store");
        store.migrate().await.expect("migrate");
        store
    }

    /// A direct connection for assertions (tests may use SQL; the product may not outside the store).
    pub async fn sql(&self) -> Sql {
        match self.backend {
            Backend::Sqlite => {
                Sql::Sqlite(SqlitePoolOptions::new().max_connections(1).connect(&self.url).await.expect("open sqlite"))
            }
            Backend::Postgres => {
                Sql::Postgres(PgPoolOptions::new().max_connections(2).connect(&self.url).await.expect("connect pg"))
            }
        }
    }
}

/// A direct database connection for assertions and for breaking invariants on purpose.
pub enum Sql {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction of the test's, holding its locks ([`Sql::hold`]).
pub enum HeldTx {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl HeldTx {
    /// Ends the transaction with `COMMIT` or `ROLLBACK`.
    pub async fn end(self, how: &'static str) {
        match self {
            HeldTx::Sqlite(mut conn) => sqlx::raw_sql(how).execute(&mut conn).await.map(drop),
            HeldTx::Postgres(mut conn) => sqlx::raw_sql(how).execute(&mut conn).await.map(drop),
        }
        .expect("end the held transaction");
    }
}

impl Sql {
    /// Injects a fault: the trigger `injected`, `BEFORE <event> ON <table>` for each row (those
    /// matching `when`, if given), running `sqlite` (the statements of an SQLite trigger body) or
    /// `postgres` (a PL/pgSQL body), whichever this database is. [`Sql::remove_injected`] takes it
    /// away.
    pub async fn inject(&self, event: &str, table: &str, when: Option<&str>, sqlite: &str, postgres: &str) {
        let statements = match self {
            Sql::Sqlite(_) => {
                let when = when.map(|w| format!(" WHEN {w}")).unwrap_or_default();
                vec![format!("CREATE TRIGGER injected BEFORE {event} ON {table}{when} BEGIN {sqlite} END")]
            }
            Sql::Postgres(_) => {
                let when = when.map(|w| format!(" WHEN ({w})")).unwrap_or_default();
                vec![
                    format!(
                        "CREATE FUNCTION injected() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {postgres} END $$"
                    ),
                    format!(
                        "CREATE TRIGGER injected BEFORE {event} ON {table} FOR EACH ROW{when} EXECUTE FUNCTION injected()"
                    ),
                ]
            }
        };
        for statement in statements {
            self.exec(&statement).await.expect("inject the trigger");
        }
    }

    /// Removes the trigger [`Sql::inject`] put on `table`.
    pub async fn remove_injected(&self, table: &str) {
        let drop = match self {
            Sql::Sqlite(_) => "DROP TRIGGER injected".to_owned(),
            Sql::Postgres(_) => format!("DROP TRIGGER injected ON {table}"),
        };
        self.exec(&drop).await.expect("remove the trigger");
    }

    /// `SELECT count(*) FROM <from>`.
    pub async fn count(&self, from: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {from}");
        match self {
            Sql::Sqlite(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await,
            Sql::Postgres(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await,
        }
        .expect("count")
    }

    /// Waits until a session of this PostgreSQL database waits for a lock in a statement whose
    /// text contains `statement` (case-insensitive): the moment a test has made a request block
    /// on a row or table it holds. Fails the test after 10 s, as [`eventually`] does.
    pub async fn until_waiting_for_a_lock(&self, statement: &str) {
        let waiting = format!(
            "pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE '%{}%'",
            statement.replace('\'', "''")
        );
        eventually(&format!("a statement with {statement:?} waits for a lock"), || async {
            self.count(&waiting).await > 0
        })
        .await;
    }

    /// Opens a transaction of the test's own on a connection of its own and runs `sqlite` or
    /// `postgres` in it (whichever this database is; each starts with its `BEGIN`), holding the
    /// locks they take until [`HeldTx::end`].
    pub async fn hold(&self, sqlite: &str, postgres: &str) -> HeldTx {
        match self {
            Sql::Sqlite(pool) => {
                let mut conn = pool.acquire().await.unwrap().detach();
                sqlx::raw_sql(AssertSqlSafe(sqlite.to_owned())).execute(&mut conn).await.expect("hold");
                HeldTx::Sqlite(conn)
            }
            Sql::Postgres(pool) => {
                let mut conn = pool.acquire().await.unwrap().detach();
                sqlx::raw_sql(AssertSqlSafe(postgres.to_owned())).execute(&mut conn).await.expect("hold");
                HeldTx::Postgres(conn)
            }
        }
    }

    /// The UUIDs a query's first column holds.
    pub async fn uuids(&self, sql: &str) -> Vec<uuid::Uuid> {
        let sql = sql.to_owned();
        match self {
            Sql::Sqlite(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_all(pool).await,
            Sql::Postgres(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_all(pool).await,
        }
        .expect("uuids")
    }

    /// The audit rows a start-up wrote for the configuration file's changes (actor `config`),
    /// oldest first, each as `action target_id`.
    pub async fn config_changes(&self) -> Vec<String> {
        self.texts(
            "SELECT action || ' ' || target_id FROM audit_events \
             WHERE actor_kind = 'system' AND actor_name = 'config' ORDER BY id",
        )
        .await
    }

    /// The strings a query's first column holds.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let sql = sql.to_owned();
        match self {
            Sql::Sqlite(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_all(pool).await,
            Sql::Postgres(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_all(pool).await,
        }
        .expect("texts")
    }

    /// The byte strings a query's first column holds.
    pub async fn blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        let sql = sql.to_owned();
        match self {
            Sql::Sqlite(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_all(pool).await,
            Sql::Postgres(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_all(pool).await,
        }
        .expect("blobs")
    }

    /// Runs a statement; `$1`-style placeholders are not supported here, inline literals only.
    pub async fn exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Sql::Sqlite(pool) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(pool).await.map(|r| r.rows_affected())
            }
            Sql::Postgres(pool) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(pool).await.map(|r| r.rows_affected())
            }
        }
    }

    /// A SQL literal for a UUID, in the backend's storage form.
    pub fn uuid(&self, id: &str) -> String {
        match self {
            Sql::Sqlite(_) => format!("X'{}'", id.replace('-', "")),
            Sql::Postgres(_) => format!("'{id}'"),
        }
    }

    /// Counts of the provisioning tables: users, identities, teams, memberships, outbox events.
    pub async fn provisioning_counts(&self) -> [i64; 5] {
        [
            self.count("users").await,
            self.count("identities").await,
            self.count("teams").await,
            self.count("memberships").await,
            self.count("outbox_events").await,
        ]
    }
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// The audience tokens from the local issuer are minted for.
pub const AUDIENCE: &str = "api://tessera-test";

/// An issuer configuration for a running local issuer: discovery, the test audience, the
/// default algorithms, JIT on, no leeway (so expiry tests need not wait a minute).
pub fn local_issuer_config(issuer: &tessera_testkit::local_issuer::LocalIssuer) -> IssuerConfig {
    let mut config = IssuerConfig::new(Issuer::parse(issuer.issuer()).unwrap());
    config.name = "local".into();
    config.audiences = vec![AUDIENCE.into()];
    config.leeway = std::time::Duration::ZERO;
    config
}
pub const ISSUER: &str = "https://issuer.example.com";
pub const OTHER_ISSUER: &str = "https://other.example.org/realms/main";

/// The real server on 127.0.0.1 with port 0, against a fresh database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub store: Arc<dyn Store>,
    /// The server's reader of the cache-invalidation log (when it last read it).
    pub cache_sync: tessera::service::cache_sync::CacheSync,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::new(backend).await;
        let mut config = db.config();
        adjust(&mut config);
        Self::start(db, &config).await
    }

    /// Starts a server on an existing database with the given configuration. Set
    /// `TESSERA_TEST_LOG` (a filter such as `debug`) to see the server's logs.
    pub async fn start(db: TestDb, config: &Config) -> Self {
        Self::start_as(db, config, "127.0.0.1").await
    }

    /// [`TestApp::start`], reached by browsers at `http://{host}:{port}` (its `auth.public_url`
    /// unless the configuration names one): a client resolves `host` to [`TestApp::addr`].
    pub async fn start_as(db: TestDb, config: &Config, host: &str) -> Self {
        if let Ok(filter) = std::env::var("TESSERA_TEST_LOG") {
            tessera::telemetry::init(&tessera::config::LogConfig { json: false, filter, filter_given: true });
        }
        let store = store::connect(&config.database).await.expect("connect the store");
        prepare_schema(store.as_ref(), true).await.expect("migrate");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut config = config.clone();
        if config.auth.public_url.is_none() {
            let port = listener.local_addr().unwrap().port();
            config.auth.public_url = Some(url::Url::parse(&format!("http://{host}:{port}")).unwrap());
        }
        let app = Application::build_on(&config, store.clone(), listener).await.expect("build the server");
        let addr = app.local_addr();
        let cache_sync = app.cache_sync();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = rx.await;
            })
            .await
            .expect("server ran");
        });
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        Self { addr, client, db, store, cache_sync, shutdown: Some(tx), handle: Some(handle) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `POST /admin/users/bootstrap` with the admin token.
    pub async fn bootstrap(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/admin/users/bootstrap"))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// `POST /v1/validate` with `token` as a bearer token.
    pub async fn validate(&self, token: &str) -> reqwest::Response {
        self.client.post(self.url("/v1/validate")).bearer_auth(token).send().await.expect("request")
    }

    /// An admin request with the token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(ADMIN_TOKEN)
    }

    /// Closes the server's database pools, as if the database had gone away.
    pub async fn close_store(&self) {
        self.store.close().await;
    }

    /// Tells the server to stop (as SIGTERM does) without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.stop_keeping_db().await;
    }

    /// Stops the server gracefully and hands back its database, for assertions on what the
    /// server wrote while stopping.
    pub async fn stop_keeping_db(mut self) -> TestDb {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task");
        }
        self.db
    }
}

/// A TCP relay in front of the test PostgreSQL server, so that a test can fail "the database"
/// under a store's feet: [`Relay::cut`] closes the port (connections are refused) and drops every
/// open connection; [`Relay::silence`] makes the open connections go silent (nothing passes either
/// way, no reset: a failover behind a proxy, a middlebox that lost its state) while new ones pass.
pub struct Relay {
    /// The database URL through the relay.
    pub url: String,
    silenced: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts a relay to the server of `database_url`.
    pub async fn start(database_url: &str) -> Self {
        let real = url::Url::parse(database_url).unwrap();
        let target = tokio::net::lookup_host((real.host_str().unwrap(), real.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .expect("the test cluster's address");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let (silenced, silence) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            // Dropped with the task, which aborts every relayed connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut silence = silence.clone();
                let opened_in = *silence.borrow_and_update();
                connections.spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async { silence.wait_for(|round| *round > opened_in).await.map(drop) } => {
                            // Both sockets held open, nothing passed, until the relay goes.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        let mut url = real;
        url.set_ip_host(addr.ip()).unwrap();
        url.set_port(Some(addr.port())).unwrap();
        Self { url: url.to_string(), silenced, task }
    }

    /// Makes the connections open now go silent; later ones pass as before.
    pub fn silence(&self) {
        self.silenced.send_modify(|round| *round += 1);
    }

    /// Takes the database down: the port refuses connections and open ones are dropped.
    pub async fn cut(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Runs a third-party tool (a relying party, a browser test, a fuzzer) to its end, within
/// `limit`: a tool that hangs fails the test, with what it said, rather than stalling the suite.
/// Python's asserts are kept (`PYTHONOPTIMIZE` would strip them).
pub async fn run_tool(
    command: &mut tokio::process::Command,
    what: &str,
    limit: std::time::Duration,
) -> std::process::Output {
    command.env_remove("PYTHONOPTIMIZE").kill_on_drop(true);
    tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|error| panic!("{what} could not be started: {error}"))
}

/// Waits until `condition` holds, for something that happens in the background; fails the test
/// after 10 s (a generous bound: nothing here takes more than milliseconds).
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, std::time::Duration::from_secs(10), condition).await;
}

/// [`eventually`] with another bound, for work whose recovery path is slower than ten seconds
/// by design (a lease that must run out).
pub async fn eventually_within<F, Fut>(what: &str, bound: std::time::Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Reads a response as JSON, asserting its status.
pub async fn json(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = response.text().await.expect("body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    if status >= 400 {
        assert_eq!(content_type, "application/problem+json", "error bodies are problem+json");
        assert_problem_shape(&value, status);
    }
    value
}

/// Asserts the RFC 9457 members and that nothing internal leaks.
pub fn assert_problem_shape(body: &Value, status: u16) {
    assert_eq!(body["status"], status, "{body}");
    let code = body["code"].as_str().unwrap_or_else(|| panic!("no code in {body}"));
    assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "code {code} is not snake_case");
    assert_eq!(body["type"], format!("urn:tessera:problem:{code}"));
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    assert!(body["detail"].is_string(), "{body}");
    assert_no_leak(&body.to_string());
}

/// Asserts that a body says nothing about SQL, constraints, drivers or panics.
pub fn assert_no_leak(text: &str) {
    let lower = text.to_lowercase();
    for needle in [
        "select ",
        "insert ",
        "update ",
        "delete from",
        "constraint",
        "duplicate key",
        "sqlx",
        "sqlite",
        "postgres",
        "syntax error",
        "panicked",
        "stack backtrace",
        "violates",
        "unique",
        "identities_",
        "memberships_",
        "src/",
        ".rs:",
    ] {
        assert!(!lower.contains(needle), "body leaks {needle:?}: {text}");
    }
}

/// A bootstrap body for `subject` at the main test issuer.
pub fn identity(subject: &str, email: &str, name: Option<&str>) -> Value {
    let mut body = serde_json::json!({ "issuer": ISSUER, "subject": subject, "email": email });
    if let Some(name) = name {
        body["name"] = name.into();
    }
    body
}

/// Runs `n` tasks at once (they start together, behind a barrier) and returns their results in
/// task order.
pub async fn concurrently<T, Fut>(n: usize, task: impl Fn(usize) -> Fut) -> Vec<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, work) = (barrier.clone(), task(i));
            tokio::spawn(async move {
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for handle in handles {
        results.push(handle.await.expect("a concurrent task panicked"));
    }
    results
}

/// Sends `requests` at once (they start together, behind a barrier); returns the answers in
/// order.
pub async fn send_at_once(requests: &[reqwest::RequestBuilder]) -> Vec<reqwest::Response> {
    concurrently(requests.len(), |i| {
        let request = requests[i].try_clone().expect("a request whose body is in memory");
        async move { request.send().await.expect("the request was sent") }
    })
    .await
}
