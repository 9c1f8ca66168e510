//! Everything that differs between SQLite and PostgreSQL, in one place: connection pools (the
//! single SQLite writer, the PostgreSQL read replica and its circuit breaker), transactions, how
//! values are bound (times are integer microseconds on SQLite, `timestamptz` on PostgreSQL; JSON is
//! text on SQLite, `jsonb` on PostgreSQL), the few statements whose SQL differs, and migrations.
//!
//! The store's SQL is written once, in PostgreSQL's spelling with `$n` placeholders (which sqlx
//! also accepts on SQLite). Before it runs on SQLite, the one PostgreSQL-only construct it uses is
//! dropped (see [`sqlite_sql`]): row locks (`FOR UPDATE`, `FOR UPDATE SKIP LOCKED`, `FOR SHARE`),
//! since SQLite write transactions are serialised whole by `BEGIN IMMEDIATE` on one writer
//! connection. Everything else is SQL both
//! understand alike (`ON CONFLICT`, `RETURNING`, `TRUE`/`FALSE`, `NULLS LAST`; no `GREATEST`,
//! whose NULL handling differs from SQLite's `MAX`).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool::managed::{Metrics, Object, RecycleError, RecycleResult};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow, PgSeverity};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection as _, Executor as _, Postgres, Row as _, Sqlite, Transaction};
use uuid::Uuid;

use super::migrations::{self, Applied, Embedded, MigrationStatus};
use super::rows::{RowExt, impl_row_ext_common};
use super::{PoolStats, ReadFrom, StoreError};
use crate::config::{Backend, DatabaseConfig};
use crate::error::ErrorChain as _;

/// The migrations built into the binary, one list per backend from one table: each row is a
/// version, its file name (the same under `migrations/sqlite/` and `migrations/postgres/`: they are
/// added in pairs, append-only) and its description.
macro_rules! embedded_migrations {
    ($($version:literal $file:literal $name:literal,)*) => {
        static SQLITE_MIGRATIONS: &[Embedded] = &[$(Embedded {
            version: $version,
            description: $name,
            sql: include_str!(concat!("../../migrations/sqlite/", $file, ".sql")),
        }),*];
        static POSTGRES_MIGRATIONS: &[Embedded] = &[$(Embedded {
            version: $version,
            description: $name,
            sql: include_str!(concat!("../../migrations/postgres/", $file, ".sql")),
        }),*];
    };
}

embedded_migrations! {
    1 "0001_people_identities_teams" "people_identities_teams",
    2 "0002_team_domains" "team_domains",
    3 "0003_sign_in" "sign_in",
    4 "0004_connected_accounts" "connected_accounts",
    5 "0005_token_version" "token_version",
    6 "0006_email_key" "email_key",
    7 "0007_signing_keys" "signing_keys",
    8 "0008_clients" "clients",
    9 "0009_oauth_grants" "oauth_grants",
    10 "0010_webhooks" "webhooks",
    11 "0011_session_device" "session_device",
    12 "0012_profile_credentials" "profile_credentials",
    13 "0013_profile_actions" "profile_actions",
    14 "0014_audit_log" "audit_log",
    15 "0015_cache_invalidations" "cache_invalidations",
    16 "0016_webhook_rotation" "webhook_rotation",
    17 "0017_identity_last_seen_updates" "identity_last_seen_updates",
    18 "0018_outbox_retention" "outbox_retention",
    19 "0019_login_fresh" "login_fresh",
    20 "0020_access_token_stored_at" "access_token_stored_at",
    21 "0021_consent_resources" "consent_resources",
    22 "0022_orphaned_sessions" "orphaned_sessions",
    23 "0023_consent_per_resource" "consent_per_resource",
    24 "0024_lookup_indexes" "lookup_indexes",
    25 "0025_signing_key_changes" "signing_key_changes",
    26 "0026_flow_owner_indexes" "flow_owner_indexes",
    27 "0027_webhook_disabled_at" "webhook_disabled_at",
    28 "0028_session_authenticated_at" "session_authenticated_at",
    29 "0029_audit_actor_indexes" "audit_actor_indexes",
    30 "0030_login_state_salt" "login_state_salt",
    31 "0031_processed_event_indexes" "processed_event_indexes",
    32 "0032_lookup_indexes" "lookup_indexes",
    33 "0033_grant_user_client_index" "grant_user_client_index",
    34 "0034_team_owners_index" "team_owners_index",
    35 "0035_profile_creator_index" "profile_creator_index",
    36 "0036_client_previous_secret" "client_previous_secret",
}

/// The most a statement on the read replica may take (less when `database.statement_timeout_ms`
/// is): the replica serves point reads by key (a principal, a profile, a domain claim), a
/// millisecond's work that the primary does as well. A replica gone silent holds the reads under
/// way this long, not the statement timeout, before they go to the primary (and the replica is
/// left alone for [`REPLICA_BACKOFF`]).
const REPLICA_STATEMENT_TIMEOUT: Duration = Duration::from_secs(1);

/// After a failed read, the replica is left alone this long: an unreachable replica would
/// otherwise cost every read a connection timeout before it falls back to the primary.
const REPLICA_BACKOFF: Duration = Duration::from_secs(15);

/// The statements of a multi-row `INSERT` (`head`, then `VALUES` of `columns` placeholders a row,
/// numbered in order), one for each number of rows from 1 to `max_rows`: the one for `n` rows is
/// at `n - 1`. Built once (into a `static`) by each writer of many rows a statement.
pub(super) fn multi_row_inserts(head: &str, columns: usize, max_rows: usize) -> Vec<String> {
    (1..=max_rows)
        .map(|rows| {
            let values: Vec<String> = (0..rows)
                .map(|row| {
                    let placeholders: Vec<String> = (1..=columns).map(|n| format!("${}", row * columns + n)).collect();
                    format!("({})", placeholders.join(", "))
                })
                .collect();
            format!("{head} VALUES {}", values.join(", "))
        })
        .collect()
}

/// How many rows one statement of [`Db::delete_in_batches`] deletes at most.
pub(super) const ROWS_PER_DELETE: i64 = 1_000;

/// The connections of one database.
#[derive(Debug)]
pub(super) enum Db {
    /// An SQLite file: writes go through a pool of exactly one connection and open with
    /// `BEGIN IMMEDIATE`, so write transactions never fail with `SQLITE_BUSY` on a lock upgrade;
    /// reads use a separate pool and, in WAL mode, never wait for the writer.
    Sqlite {
        /// The one writer connection.
        writer: SqlitePool,
        /// Readers.
        reader: SqlitePool,
        /// One more reader, for the background reads that must not queue behind requests (see
        /// [`Db::background`]); the writer for a database in memory.
        background: SqlitePool,
    },
    /// PostgreSQL at READ COMMITTED, with an optional read replica.
    Postgres {
        /// The primary: every write and every read that must see the latest write.
        primary: PgPool,
        /// One more connection to the primary, for the background reads that must not queue
        /// behind requests (see [`Db::background`]).
        background: PgPool,
        /// The replica, for reads that tolerate lag.
        replica: Option<Replica>,
    },
}

/// The read replica, its circuit breaker and how far behind the primary it is known to be.
///
/// A read goes to the replica only while it is known to have replayed everything the primary had
/// committed at most `max_lag` ago ([`Db::check_replica`], every [`replica_check_interval`]
/// from the replica-lag loop): until the first check, and whenever the replica falls further
/// behind, is unreachable, or is not a streaming replica, reads go to the primary.
#[derive(Debug)]
pub(super) struct Replica {
    pool: PgPool,
    skip_until: Mutex<Option<Instant>>,
    max_lag: Duration,
    /// The replica has replayed everything the primary had committed at this instant.
    caught_up_to: Mutex<Option<Instant>>,
    /// The primary's WAL position at each recent check, oldest first: when the replica has
    /// replayed up to one, it has every change committed before that check began.
    positions: Mutex<VecDeque<(Instant, i64)>>,
}

impl Replica {
    fn available(&self) -> bool {
        let now = Instant::now();
        let caught_up = lock(&self.caught_up_to).is_some_and(|at| now.saturating_duration_since(at) <= self.max_lag);
        caught_up && lock(&self.skip_until).is_none_or(|until| now >= until)
    }

    fn failed(&self, error: &StoreError) {
        *lock(&self.skip_until) = Some(Instant::now() + REPLICA_BACKOFF);
        *lock(&self.caught_up_to) = None;
        tracing::warn!(error = %error.chain(), backoff_s = REPLICA_BACKOFF.as_secs(), "the read replica failed; reading from the primary for a while");
    }

    fn backing_off(&self) -> bool {
        lock(&self.skip_until).is_some_and(|until| Instant::now() < until)
    }

    /// Records the primary's WAL position read at `at` and the replica's replay position read
    /// after it (`None`: it is not replaying), and what that shows.
    fn caught_up(&self, at: Instant, primary: i64, replayed: Option<i64>) -> ReplicaLag {
        let mut positions = lock(&self.positions);
        positions.push_back((at, primary));
        // Positions older than twice the bound are dropped but the newest of them: a replica
        // behind that one is behind the bound by far, and one that has replayed it is behind by
        // at most its age.
        while positions.get(1).is_some_and(|(then, _)| at.saturating_duration_since(*then) > 2 * self.max_lag) {
            positions.pop_front();
        }
        let Some(replayed) = replayed else {
            *lock(&self.caught_up_to) = None;
            return ReplicaLag::Behind { lag: None };
        };
        let since = positions.iter().rev().find(|(_, position)| *position <= replayed).map(|(then, _)| *then);
        *lock(&self.caught_up_to) = since;
        match since.map(|since| at.saturating_duration_since(since)) {
            Some(lag) if lag <= self.max_lag => ReplicaLag::Readable { lag },
            Some(lag) => ReplicaLag::Behind { lag: Some(lag) },
            // Behind every position kept: at least as far as the oldest.
            None => ReplicaLag::Behind { lag: positions.front().map(|(then, _)| at.saturating_duration_since(*then)) },
        }
    }
}

/// How often the replica's lag is checked: a quarter of the bound, between 50 ms and a second.
pub fn replica_check_interval(max_lag: Duration) -> Duration {
    (max_lag / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// What [`Db::check_replica`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaLag {
    /// No replica is configured.
    NoReplica,
    /// The replica has every change the primary had committed `lag` ago (at most), within the
    /// bound: reads that tolerate lag go to it.
    Readable {
        /// How far behind it is, at most (to the check's resolution).
        lag: Duration,
    },
    /// The replica is further behind than the bound, or it is not replaying the primary
    /// (`None`): reads go to the primary.
    Behind {
        /// How far behind it is, at least, when known.
        lag: Option<Duration>,
    },
    /// The replica failed recently and is left alone.
    Failed,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a read's `error` is the replica's fault, so that the replica is left alone a while:
/// unreachable or unavailable, or behind on the schema (a table, column or function a migration
/// added, not replayed yet). Any other error (a row this binary cannot decode, which a newer one
/// wrote during a roll-out) is likely the primary's too: that read goes to the primary, and the
/// others keep reading the replica.
fn replica_fault(error: &StoreError) -> bool {
    match error {
        StoreError::Unavailable(_) => true,
        StoreError::Database(sqlx::Error::Database(db)) => {
            db.code().is_some_and(|code| matches!(code.as_ref(), "42P01" | "42703" | "42883"))
        }
        _ => false,
    }
}

/// A PostgreSQL connection idle this long is pinged before it is handed out; one used more
/// recently is not (a ping at every checkout would put a second round trip on each statement's
/// path). A connection that broke less than this after its last use fails one statement instead,
/// and is closed.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How long opening an SQLite file is tried again while another process switches it to WAL.
const SQLITE_OPEN_BUSY_FOR: Duration = Duration::from_secs(5);

/// Opens the SQLite writer, again while the file is busy: processes that open a new file at the
/// same moment (two `tessera migrate` jobs, instances starting together) each switch it to WAL,
/// which takes an exclusive lock from a shared one, and SQLite answers one of two such
/// connections `SQLITE_BUSY` at once, without waiting out the busy timeout, since both waiting
/// would deadlock. By the next try the other has switched it, and the switch is a no-op.
async fn connect_sqlite_writer(
    pool: SqlitePoolOptions,
    options: &SqliteConnectOptions,
) -> Result<SqlitePool, sqlx::Error> {
    let until = std::time::Instant::now() + SQLITE_OPEN_BUSY_FOR;
    loop {
        match pool.clone().connect_with(options.clone()).await {
            Err(error) if is_sqlite_busy(&error) && std::time::Instant::now() < until => {
                let pause = 5 + u64::from(crate::crypto::random_bytes::<1>()[0] % 45);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            done => return done,
        }
    }
}

/// How long a migration waits for another process's change of the same SQLite file (its own
/// migration, say, of a large file) to finish.
const SQLITE_MIGRATION_WAIT: Duration = Duration::from_secs(15 * 60);

/// Whether a failure on SQLite is `SQLITE_BUSY` (the file's write lock held elsewhere past the
/// busy timeout), as a statement or inside a migration.
fn sqlite_busy(error: &StoreError) -> bool {
    use sqlx::migrate::MigrateError;
    match error {
        // (A busy statement's error is `Unavailable`: see `From<sqlx::Error>`.)
        StoreError::Unavailable(error) => is_sqlite_busy(error),
        StoreError::Migrate(MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _)) => {
            is_sqlite_busy(error)
        }
        _ => false,
    }
}

/// How many times a PostgreSQL migration ended as a deadlock is run again.
const MIGRATION_DEADLOCK_RETRIES: u64 = 5;

/// Whether PostgreSQL ended a migration as a deadlock (40P01).
fn migration_deadlocked(error: &StoreError) -> bool {
    use sqlx::migrate::MigrateError;
    let StoreError::Migrate(MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _)) = error else {
        return false;
    };
    error.as_database_error().and_then(|db| db.code()).as_deref() == Some("40P01")
}

/// Whether an SQLite error is `SQLITE_BUSY` (5).
fn is_sqlite_busy(error: &sqlx::Error) -> bool {
    sqlite_result_code(error) == Some(5)
}

/// The primary result code of an SQLite error (`SQLITE_BUSY` is 5, `SQLITE_LOCKED` 6): the low
/// byte of the extended code it comes with. `None` for any other error.
pub(super) fn sqlite_result_code(error: &sqlx::Error) -> Option<i32> {
    let sqlx::Error::Database(db) = error else { return None };
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    db.code()?.parse::<i32>().ok().map(|code| code & 0xff)
}

/// How much of an SQLite file is memory-mapped for reads (`PRAGMA mmap_size`).
const SQLITE_MMAP_BYTES: &str = "1073741824";

impl Db {
    /// Connects to the database the configuration names: an SQLite file is created if missing; a
    /// PostgreSQL replica is connected on first use, so that an unreachable replica never stops
    /// start-up.
    pub(super) async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let url = config.url.expose();
        match config.url.backend() {
            Backend::Sqlite => {
                if !is_in_memory(url) {
                    create_private_file(SqliteConnectOptions::from_str(url)?.get_filename())?;
                }
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    // Reads of a large file map it instead of copying each page in with a system
                    // call; pages are only mapped, so an idle process stays small.
                    .pragma("mmap_size", SQLITE_MMAP_BYTES);
                // No ping at checkout: an SQLite connection has no network to lose, and each ping
                // is a round trip to the connection's thread (sqlx still pings on release).
                // The writer first: it creates a missing file and switches it to WAL, which two
                // connections opening at once could each find locked.
                // It lives as long as the pool: sqlx would close it after 10 idle minutes or 30
                // in all, and the connection opened in its place would hold a new, empty
                // database when the database is in memory.
                let writer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .test_before_acquire(false)
                    .acquire_timeout(config.acquire_timeout);
                let writer = connect_sqlite_writer(writer, &options).await?;
                if is_in_memory(url) {
                    return Ok(Db::Sqlite { reader: writer.clone(), background: writer.clone(), writer });
                }
                let readers = |max| {
                    SqlitePoolOptions::new()
                        .max_connections(max)
                        .test_before_acquire(false)
                        .acquire_timeout(config.acquire_timeout)
                        .connect_lazy_with(options.clone())
                };
                let reader = readers(config.max_connections.clamp(1, 8));
                let background = readers(1);
                // Each connection reads the whole schema as it opens (about a millisecond): the
                // reader's first one opens on its own thread while start-up goes on (the schema
                // check runs on the writer), ready for the first requests.
                let first = reader.clone();
                tokio::spawn(async move {
                    if let Err(error) = first.acquire().await {
                        tracing::warn!(error = %error.chain(), "the first reader connection did not open; reads will try again");
                    }
                });
                Ok(Db::Sqlite { writer, reader, background })
            }
            Backend::Postgres => {
                let timeout = config.acquire_timeout;
                let statements = config.statement_timeout;
                let primary = pg_pool(url, config.max_connections, timeout, statements, true)?;
                // At once, as sqlx's pool did: a database that cannot be reached stops start-up.
                drop(pg_conn(&primary).await?);
                let background = pg_pool(url, 1, timeout, statements, true)?;
                let replica = config
                    .replica_url
                    .as_ref()
                    .map(|url| {
                        let statements = statements.min(REPLICA_STATEMENT_TIMEOUT);
                        pg_pool(url.expose(), config.max_connections, timeout, statements, false)
                    })
                    .transpose()?
                    .map(|pool| Replica {
                        pool,
                        skip_until: Mutex::new(None),
                        max_lag: config.replica_max_lag,
                        caught_up_to: Mutex::new(None),
                        positions: Mutex::new(VecDeque::new()),
                    });
                Ok(Db::Postgres { primary, background, replica })
            }
        }
    }

    /// Which database this is.
    pub(super) fn backend(&self) -> Backend {
        match self {
            Db::Sqlite { .. } => Backend::Sqlite,
            Db::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Where single-statement writes go (they commit on their own).
    pub(super) fn writer(&self) -> PoolRef<'_> {
        match self {
            Db::Sqlite { writer, .. } => PoolRef::Sqlite(writer, WRITER),
            Db::Postgres { primary, .. } => PoolRef::Postgres(primary, PRIMARY),
        }
    }

    /// Where reads that must see every committed write go.
    pub(super) fn reader(&self) -> PoolRef<'_> {
        match self {
            Db::Sqlite { reader, .. } => PoolRef::Sqlite(reader, READER),
            Db::Postgres { primary, .. } => PoolRef::Postgres(primary, PRIMARY),
        }
    }

    /// Where the background loops read what cannot wait for a busy request pool: the
    /// cache-invalidation log (other instances' changes are honoured within a second even while
    /// every request connection is taken) and the primary's WAL position for the replica's lag
    /// check: a connection of its own (to the primary on PostgreSQL).
    pub(super) fn background(&self) -> PoolRef<'_> {
        match self {
            Db::Sqlite { background, .. } => PoolRef::Sqlite(background, BACKGROUND),
            Db::Postgres { background, .. } => PoolRef::Postgres(background, BACKGROUND),
        }
    }

    /// `SELECT 1` on the background connection, in a task of its own, with when it ended: a
    /// caller that stops waiting for it leaves the statement to end, where dropping it half-way
    /// would close the connection (see [`PgConn`]).
    pub(super) fn ping_background(&self) -> tokio::task::JoinHandle<(Result<(), StoreError>, Instant)> {
        match self {
            Db::Sqlite { background, .. } => {
                let pool = background.clone();
                tokio::spawn(async move {
                    let outcome = query("SELECT 1").execute(PoolRef::Sqlite(&pool, BACKGROUND)).await;
                    (outcome.map(drop), Instant::now())
                })
            }
            Db::Postgres { background, .. } => {
                let pool = background.clone();
                tokio::spawn(async move {
                    let outcome = query("SELECT 1").execute(PoolRef::Postgres(&pool, BACKGROUND)).await;
                    (outcome.map(drop), Instant::now())
                })
            }
        }
    }

    /// Starts a write transaction.
    pub(super) async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Db::Sqlite { writer, .. } => {
                note_wait(writer, WRITER);
                Tx::Sqlite(writer.begin_with("BEGIN IMMEDIATE").await?)
            }
            Db::Postgres { primary, .. } => Tx::Postgres(PgTx::begin(pg_acquire(primary, PRIMARY).await?).await?),
        })
    }

    /// Runs `writes` (at least one), statements that do not depend on each other's order, as one
    /// atomic unit, and returns the rows of the last one (its `RETURNING`). On PostgreSQL it is
    /// one statement (each write but the last a data-modifying `WITH` clause, see [`together`]):
    /// one round trip where a transaction takes one per write plus `BEGIN` and `COMMIT`. On
    /// SQLite, which has no such clause and no network, it is a write transaction, the writes
    /// run in their order.
    pub(super) async fn fetch_together(&self, mut writes: Vec<Query<'_>>) -> Result<Vec<Row>, StoreError> {
        match self {
            _ if writes.len() == 1 => writes[0].fetch_all(self.writer()).await,
            Db::Postgres { .. } => together(writes).fetch_all(self.writer()).await,
            Db::Sqlite { .. } => {
                let last = writes.pop().expect("at least one write");
                let mut tx = self.begin().await?;
                for write in &writes {
                    write.execute(&mut tx).await?;
                }
                let rows = last.fetch_all(&mut tx).await?;
                tx.commit().await?;
                Ok(rows)
            }
        }
    }

    /// Runs `delete`, a statement whose last placeholder is the `LIMIT` of the rows it deletes,
    /// bound to [`ROWS_PER_DELETE`], until a run deletes fewer; how many rows went. Each run
    /// commits on its own, so that a backlog (a flood of abandoned sign-ins, say) never holds the
    /// writer for long: other writes run between the batches instead of waiting behind one long
    /// delete (on SQLite, every write waits for the one writer).
    pub(super) async fn delete_in_batches(&self, delete: Query<'_>) -> Result<u64, StoreError> {
        self.delete_in_batches_of(delete, ROWS_PER_DELETE).await
    }

    /// [`Db::delete_in_batches`] with `rows` to a statement.
    async fn delete_in_batches_of(&self, delete: Query<'_>, rows: i64) -> Result<u64, StoreError> {
        let delete = delete.bind(rows);
        let mut deleted = 0;
        loop {
            let batch = delete.execute(self.writer()).await?;
            deleted += batch;
            if batch < rows.unsigned_abs() {
                return Ok(deleted);
            }
        }
    }

    /// Runs a read of one or several statements on the replica when asked for and configured,
    /// and on the primary otherwise or when the read fails on the replica; after a failure of
    /// the replica's own ([`replica_fault`]: unreachable, or behind on the schema), reads skip it
    /// for [`REPLICA_BACKOFF`]. All the
    /// statements of one read go to the same place.
    pub(super) async fn read_from<'s, T>(
        &'s self,
        from: ReadFrom,
        read: impl Fn(PoolRef<'s>) -> BoxFuture<'s, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if let Some(replica) = self.replica(from) {
            match read(PoolRef::Postgres(&replica.pool, REPLICA)).await {
                Err(error) if replica_fault(&error) => replica.failed(&error),
                // Asked of the primary too, without leaving the replica alone for it.
                Err(_) => {}
                done => return done,
            }
        }
        read(self.reader()).await
    }

    /// [`Db::read_from`] for one statement's rows.
    pub(super) async fn fetch_all_from(&self, from: ReadFrom, query: &Query<'_>) -> Result<Vec<Row>, StoreError> {
        if let Some(replica) = self.replica(from) {
            match query.fetch_all(PoolRef::Postgres(&replica.pool, REPLICA)).await {
                Err(error) if replica_fault(&error) => replica.failed(&error),
                // Asked of the primary too, without leaving the replica alone for it.
                Err(_) => {}
                done => return done,
            }
        }
        query.fetch_all(self.reader()).await
    }

    /// [`Db::read_from`] for one statement's row, if any.
    pub(super) async fn fetch_optional_from(
        &self,
        from: ReadFrom,
        query: &Query<'_>,
    ) -> Result<Option<Row>, StoreError> {
        if let Some(replica) = self.replica(from) {
            match query.fetch_optional(PoolRef::Postgres(&replica.pool, REPLICA)).await {
                Err(error) if replica_fault(&error) => replica.failed(&error),
                // Asked of the primary too, without leaving the replica alone for it.
                Err(_) => {}
                done => return done,
            }
        }
        query.fetch_optional(self.reader()).await
    }

    /// Measures how far the replica is behind the primary, which decides whether reads go to it
    /// until the next check: the primary's WAL position, then how far the replica has replayed.
    /// A replica that cannot be asked is left alone for [`REPLICA_BACKOFF`]; a primary that
    /// cannot be asked leaves the last finding to age past the bound.
    pub(super) async fn check_replica(&self) -> Result<ReplicaLag, StoreError> {
        let Db::Postgres { background, replica: Some(replica), .. } = self else {
            return Ok(ReplicaLag::NoReplica);
        };
        if replica.backing_off() {
            return Ok(ReplicaLag::Failed);
        }
        // Taken before the primary is asked: every change committed before it is at or below the
        // position the primary answers.
        let at = Instant::now();
        // Each statement within the bound (at least a second; at most the statement timeout): a
        // server gone silent must not hold the check, and the background loops' one connection
        // with it, for the statement timeout or the kernel's fifteen minutes.
        let bound = |conn: &PgConn| replica.max_lag.max(Duration::from_secs(1)).min(conn.statement_timeout);
        let mut conn = pg_conn(background).await?;
        // The insert position, not the write position (`pg_current_wal_lsn`): with
        // `synchronous_commit = off` a commit is visible before its record is written.
        let position = sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint");
        let position = within(bound(&conn), position.fetch_one(conn.start())).await;
        let position: i64 = conn.note(position)?;
        drop(conn);
        let replayed = async {
            let mut conn = pg_conn(&replica.pool).await?;
            let replayed =
                sqlx::query_scalar::<_, Option<i64>>("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint");
            let replayed = within(bound(&conn), replayed.fetch_one(conn.start())).await;
            Ok::<_, StoreError>(conn.note(replayed)?)
        }
        .await;
        let replayed = match replayed {
            Ok(replayed) => replayed,
            Err(error) => {
                replica.failed(&error);
                return Err(error);
            }
        };
        Ok(replica.caught_up(at, position, replayed))
    }

    fn replica(&self, from: ReadFrom) -> Option<&Replica> {
        match self {
            Db::Postgres { replica: Some(replica), .. } if from == ReadFrom::Replica && replica.available() => {
                Some(replica)
            }
            _ => None,
        }
    }

    /// Compares the applied migrations with those built into this binary.
    pub(super) async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        let (list, exists) = match self {
            Db::Sqlite { .. } => {
                (SQLITE_MIGRATIONS, "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1")
            }
            Db::Postgres { .. } => {
                (POSTGRES_MIGRATIONS, "SELECT count(*) AS n FROM pg_class WHERE oid = to_regclass($1)")
            }
        };
        // Both statements on one connection of the writer (on SQLite, the reader's first
        // connection is still opening at start-up): asked for twice, a pool opens a second
        // connection while the first is on its way back.
        let mut conn = self.writer().acquire().await?;
        let exists = query(exists).bind(migrations::TABLE).fetch_one(&mut conn).await?.int("n")? > 0;
        let applied = if exists {
            query("SELECT version, checksum, success FROM _sqlx_migrations")
                .fetch_all(&mut conn)
                .await?
                .iter()
                .map(|row| {
                    Ok(Applied {
                        version: row.int("version")?,
                        checksum: row.bytes("checksum")?,
                        success: row.flag("success")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        } else {
            Vec::new()
        };
        Ok(MigrationStatus::compare(&migrations::migrator(list), &applied))
    }

    /// Applies pending migrations.
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite { writer, .. } => {
                // Another process migrating the same file holds its write lock for as long as
                // its migration takes, which may be longer than the busy timeout: waited for.
                let until = std::time::Instant::now() + SQLITE_MIGRATION_WAIT;
                let mut told = false;
                loop {
                    match self.migrate_sqlite(writer).await {
                        Err(error) if sqlite_busy(&error) && std::time::Instant::now() < until => {
                            if !told {
                                tracing::info!("another process is changing the SQLite file; waiting for it to finish");
                                told = true;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        done => break done?,
                    }
                }
            }
            Db::Postgres { primary, .. } => {
                // A migration that replaces an index takes a lock that requests holding a row
                // lock of its table may be waiting behind: PostgreSQL ends one of the two as a
                // deadlock, and when that is the migration, nothing of it was applied (each runs
                // in one transaction with its row), so it is run again.
                let mut deadlocks = 0;
                loop {
                    match Self::migrate_postgres(primary).await {
                        Err(error) if deadlocks < MIGRATION_DEADLOCK_RETRIES && migration_deadlocked(&error) => {
                            deadlocks += 1;
                            tracing::warn!(
                                "a migration deadlocked with requests and was rolled back; running it again"
                            );
                            tokio::time::sleep(Duration::from_millis(100 * deadlocks)).await;
                        }
                        done => break done?,
                    }
                }
            }
        }
        Ok(())
    }

    /// [`Db::migrate`] on PostgreSQL, once.
    async fn migrate_postgres(primary: &PgPool) -> Result<(), StoreError> {
        // `run_direct` is `run` on a connection already taken (sqlx's way around the
        // "`Acquire` is not general enough" error of `run` on a `&mut` connection).
        let mut conn = pg_conn(primary).await?;
        // Migrations are not bounded by the statement timeout (README): the server's own bound,
        // set on every connection, is lifted for this one, which is then closed, not reused (a
        // failed migration may also leave anything on it, its advisory lock included).
        let unbounded = sqlx::query(
            "SELECT set_config('statement_timeout', '0', false), \
             set_config('idle_in_transaction_session_timeout', '0', false)",
        );
        let unbounded = within(conn.statement_timeout, unbounded.execute(conn.start())).await;
        conn.note(unbounded)?;
        let migrated = migrations::migrator(POSTGRES_MIGRATIONS).run_direct(None, conn.start(), false).await;
        conn.in_flight = false;
        drop(Object::take(conn));
        Ok(migrated?)
    }

    /// [`Db::migrate`] on SQLite, once: a new file gets the whole schema at once, an existing
    /// one its pending migrations.
    async fn migrate_sqlite(&self, writer: &SqlitePool) -> Result<(), StoreError> {
        if create_new_sqlite(writer).await? {
            return Ok(());
        }
        // sqlx's lock is a no-op on SQLite: another process starting on the same file may apply
        // the same migrations meanwhile, and this run then fails on one it applied (each
        // migration commits whole with its row). Its work counts: while it makes progress, what
        // is left is run again.
        let mut applied = self.migration_status().await?.applied;
        while let Err(error) = migrations::migrator(SQLITE_MIGRATIONS).run(writer).await {
            let status = self.migration_status().await?;
            if status.is_current() {
                break;
            }
            if status.applied <= applied || !status.only_pending() {
                return Err(error.into());
            }
            applied = status.applied;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// A sample of every pool (of an in-memory SQLite database, the reader is the writer).
    pub(super) fn pool_stats(&self) -> Vec<PoolStats> {
        match self {
            Db::Sqlite { writer, reader, background } => {
                vec![pool_stats(writer, WRITER), pool_stats(reader, READER), pool_stats(background, BACKGROUND)]
            }
            Db::Postgres { primary, background, replica } => {
                let mut stats = vec![pg_pool_stats(primary, PRIMARY), pg_pool_stats(background, BACKGROUND)];
                stats.extend(replica.as_ref().map(|replica| pg_pool_stats(&replica.pool, REPLICA)));
                stats
            }
        }
    }

    /// Closes all connections.
    pub(super) async fn close(&self) {
        match self {
            Db::Sqlite { writer, reader, background } => {
                background.close().await;
                reader.close().await;
                writer.close().await;
            }
            Db::Postgres { primary, background, replica } => {
                close_pg(background).await;
                close_pg(primary).await;
                if let Some(replica) = replica {
                    close_pg(&replica.pool).await;
                }
            }
        }
    }
}

/// A write transaction.
pub(super) enum Tx {
    /// On SQLite (`BEGIN IMMEDIATE` on the writer).
    Sqlite(Transaction<'static, Sqlite>),
    /// On the PostgreSQL primary.
    Postgres(PgTx),
}

impl Tx {
    /// Commits.
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.finish("COMMIT").await?,
        }
        Ok(())
    }

    /// Rolls back (dropping a transaction does too, later; this does it now).
    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.rollback().await?,
            Tx::Postgres(tx) => tx.finish("ROLLBACK").await?,
        }
        Ok(())
    }
}

/// A boxed future, for reads of several statements ([`Db::read_from`]).
pub(super) type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A pool to run statements on, each committing on its own.
#[derive(Debug, Clone, Copy)]
pub(super) enum PoolRef<'a> {
    /// An SQLite pool, and its name in metrics.
    Sqlite(&'a SqlitePool, &'static str),
    /// A PostgreSQL pool, and its name in metrics.
    Postgres(&'a PgPool, &'static str),
}

/// PostgreSQL connections, in a pool that takes a connection back the moment it is dropped, as
/// it is ([deadpool]). sqlx's own pool pings every connection it gets back, from a task it
/// spawns, before anyone may have it again: a round trip and two thread wake-ups after every
/// statement, about a fifth of a sign-in's CPU (docs/benchmarks.md). sqlx's PostgreSQL connection
/// needs no such check: each statement first reads whatever an earlier one, dropped half-way, left
/// unanswered. A connection idle for [`PING_IDLE_AFTER`] is pinged before it is handed out, one
/// older than [`PG_MAX_LIFETIME`] is replaced, and a transaction dropped unfinished is rolled back
/// before its connection is used again ([`PgTx`]).
pub(super) type PgPool = deadpool::managed::Pool<PgConnector>;

/// Opens and checks the connections of a [`PgPool`].
pub(super) struct PgConnector {
    options: PgConnectOptions,
    /// `database.acquire_timeout`: the bound on getting a connection, and on opening one.
    timeout: Duration,
    /// Whether a server not accepting connections yet is tried again within `timeout` (the
    /// primary); a replica's reads go to the primary at once instead.
    retry_refused: bool,
    /// `database.statement_timeout`, for each connection it opens.
    statement_timeout: Duration,
}

/// Without the connect options, whose `Debug` shows the password (one from `PGPASSWORD` or
/// `~/.pgpass` too): the store, and everything that holds it, may be formatted in an error.
impl std::fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnector")
            .field("host", &self.options.get_host())
            .field("database", &self.options.get_database())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `statement` (on a PostgreSQL connection) within `limit`: a server that went silent (a host
/// gone without a reset, a failover behind a proxy) would otherwise keep the statement, and its
/// request, waiting until the kernel gives the socket up, some fifteen minutes. Past it, the
/// statement fails as a timed-out network error, which closes its connection (its answer may
/// still come).
async fn within<T>(
    limit: Duration,
    statement: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(limit, statement).await.unwrap_or_else(|_| {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within database.statement_timeout_ms",
        )))
    })
}

/// A pooled PostgreSQL connection, and what the pool must know of it before handing it out
/// again: it is closed, not reused, when a statement on it failed in a way that leaves it unusable
/// (its socket, or the server's session, gone), when a statement's answer may still be on its way
/// (the statement's future was dropped half-way: the next user would read that answer, an error
/// included, as its own), or when it may still be inside a transaction.
#[derive(Debug)]
pub(super) struct PgConn {
    conn: PgConnection,
    broken: bool,
    in_flight: bool,
    in_transaction: bool,
    /// `database.statement_timeout`: how long a statement on it may take (see [`within`]).
    statement_timeout: Duration,
}

impl PgConn {
    /// The connection, for one statement: in flight until [`PgConn::note`] sees its outcome.
    fn start(&mut self) -> &mut PgConnection {
        self.in_flight = true;
        &mut self.conn
    }

    /// Notes the outcome of a statement run on this connection.
    fn note<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.in_flight = false;
        if let Err(error) = &result {
            self.broken |= breaks_the_connection(error);
        }
        result
    }

    /// Whether the connection may be handed out again.
    fn reusable(&self) -> bool {
        !(self.broken || self.in_flight || self.in_transaction)
    }
}

/// Whether `error` leaves the connection it happened on unusable: a network, TLS or protocol
/// failure, or the server ending the session (connection exceptions, an administrator's or a
/// crash's shutdown, any error of `FATAL` or `PANIC` severity). A statement the server refused (a
/// constraint, a lock timeout) does not, nor a row not found; any other error of the client's own
/// (a value it could not decode, a type it did not know) may have stopped it reading an answer
/// half-way, and does.
fn breaks_the_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::RowNotFound => false,
        sqlx::Error::Database(db) => {
            // `25006`: a write refused by a server that is read-only now (a primary demoted by a
            // failover, reached again through stale DNS or an endpoint that moved): the next
            // connection may reach the new primary, this one never will.
            db.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57P") || code == "25006")
                || db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some_and(|e| matches!(e.severity(), PgSeverity::Fatal | PgSeverity::Panic))
        }
        // The network, TLS, the protocol, or the client's own failure.
        _ => true,
    }
}

/// Whether a connection attempt failed because the server is not accepting connections yet (not
/// listening, or starting up): worth trying again until the timeout, as a database and Tessera
/// starting side by side need.
fn not_accepting_yet(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        // Starting up; or every connection slot taken (closed connections free theirs shortly).
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("57P03" | "53300")),
        _ => false,
    }
}

/// How much longer than `database.statement_timeout` the server lets a statement run before
/// ending it itself.
const SERVER_STATEMENT_MARGIN: Duration = Duration::from_secs(1);

/// A PostgreSQL connection is replaced after this long (sqlx's pool default), so that a primary
/// that moved behind a load balancer or a pooler is followed.
const PG_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

impl deadpool::managed::Manager for PgConnector {
    type Type = PgConn;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConn, sqlx::Error> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            match PgConnection::connect_with(&self.options).await {
                Ok(mut conn) => {
                    let statement_timeout = self.statement_timeout;
                    // The server's own bound, a second above the client's: a statement given up
                    // by the client (its connection closed) would otherwise go on running, or
                    // waiting for a lock, on the server, which does not notice the closed socket
                    // until it has something to send. (A `SET`, not a start-up option, which
                    // connection poolers such as PgBouncer refuse.)
                    let server_bound = (statement_timeout + SERVER_STATEMENT_MARGIN).as_millis().to_string();
                    // The same bound between the statements of a transaction: an instance that
                    // goes silent inside one (a lost node, a partition, a middlebox that dropped
                    // the connection) would otherwise leave it open, with its row and advisory
                    // locks, until the kernel gives the socket up — minutes to hours — while
                    // every request on those rows waits. The store waits on nothing but the
                    // database inside a transaction.
                    // Single statements outside a transaction read committed too: under REPEATABLE
                    // READ, a conditional `UPDATE` (a code or token used once) that meets a
                    // concurrent one fails with a serialization error instead of re-checking.
                    let set = sqlx::query(
                        "SELECT set_config('statement_timeout', $1, false), \
                         set_config('idle_in_transaction_session_timeout', $1, false), \
                         set_config('default_transaction_isolation', 'read committed', false)",
                    )
                    .bind(server_bound);
                    within(self.timeout, set.execute(&mut conn)).await?;
                    return Ok(PgConn {
                        conn,
                        broken: false,
                        in_flight: false,
                        in_transaction: false,
                        statement_timeout,
                    });
                }
                Err(error) if self.retry_refused && not_accepting_yet(&error) && Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn recycle(&self, conn: &mut PgConn, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        if !conn.reusable() {
            return Err(RecycleError::message("broken, answer unread or inside a transaction"));
        }
        if metrics.age() >= PG_MAX_LIFETIME {
            return Err(RecycleError::message("past its lifetime"));
        }
        if metrics.last_used() >= PING_IDLE_AFTER {
            conn.conn.ping().await?;
        }
        Ok(())
    }
}

/// How long the ping of a connection idle for [`PING_IDLE_AFTER`] may take before the connection
/// is given up and another taken or opened: a quarter of `database.acquire_timeout`, at most 2 s.
fn ping_bound(acquire_timeout: Duration) -> Duration {
    (acquire_timeout / 4).min(Duration::from_secs(2))
}

/// A pool of at most `max` connections to `url`, connecting on first use; waiting for a
/// connection and opening one each give up after `timeout`, checking one after [`ping_bound`].
fn pg_pool(
    url: &str,
    max: u32,
    timeout: Duration,
    statement_timeout: Duration,
    retry_refused: bool,
) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    let pool = PgPool::builder(PgConnector { options, timeout, retry_refused, statement_timeout })
        .max_size(max.max(1) as usize)
        // The most recently used first: under light load the others stay idle (and are pinged
        // when next used) rather than each going a second unused between statements.
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .wait_timeout(Some(timeout))
        // Above the creation's own deadline, so that a creation that began at once reports its
        // own last error (one that began after a wait is cut short by `pg_conn`'s bound).
        .create_timeout(Some(timeout + Duration::from_secs(1)))
        // A ping gets a quarter of the bound: a connection whose peer went silent (a failover, a
        // middlebox that dropped its state) is given up in time to open a new one.
        .recycle_timeout(Some(ping_bound(timeout)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|error| StoreError::Corrupt(format!("the PostgreSQL pool: {error}")))?;
    close_idle(&pool);
    Ok(pool)
}

/// How often idle PostgreSQL connections are looked over ([`close_idle`]).
const PG_IDLE_CHECK_EVERY: Duration = Duration::from_secs(30);

/// An idle PostgreSQL connection unused this long is closed (sqlx's pool default).
const PG_IDLE_CLOSE: Duration = Duration::from_secs(10 * 60);

/// Closes, every [`PG_IDLE_CHECK_EVERY`], the idle connections of `pool` that are unused for
/// [`PG_IDLE_CLOSE`], older than [`PG_MAX_LIFETIME`] or not reusable, so that a pool shrinks
/// after a peak (handing out the most recently used first, it would otherwise never look at the
/// others); until the pool is closed or gone.
fn close_idle(pool: &PgPool) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let weak = pool.weak();
    runtime.spawn(async move {
        let mut every = tokio::time::interval(PG_IDLE_CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(pool) = weak.upgrade().filter(|pool| !pool.is_closed()) else { return };
            let keep = |conn: &PgConn, metrics: Metrics| {
                conn.reusable() && metrics.age() < PG_MAX_LIFETIME && metrics.last_used() < PG_IDLE_CLOSE
            };
            let removed = pool.retain(keep).removed;
            drop(pool);
            for conn in removed {
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.conn.close()).await;
            }
        }
    });
}

/// One connection of `pool`, within `database.acquire_timeout` in all (waiting, checking idle
/// connections that turn out dead, opening a new one).
async fn pg_conn(pool: &PgPool) -> Result<Object<PgConnector>, StoreError> {
    let got = tokio::time::timeout(pool.manager().timeout, pool.get()).await;
    got.map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))?.map_err(|error| match error {
        deadpool::managed::PoolError::Backend(error) => StoreError::from(error),
        deadpool::managed::PoolError::Closed => StoreError::Unavailable(sqlx::Error::PoolClosed),
        _ => StoreError::Unavailable(sqlx::Error::PoolTimedOut),
    })
}

/// [`pg_conn`], counted as a wait when every connection the pool may open is busy.
async fn pg_acquire(pool: &PgPool, name: &'static str) -> Result<Object<PgConnector>, StoreError> {
    let status = pool.status();
    if status.available == 0 && status.size >= status.max_size {
        crate::observability::record_pool_wait(name);
    }
    pg_conn(pool).await
}

/// Closes `pool`: its idle connections at once, each with a goodbye to the server; those in use
/// as they come back.
async fn close_pg(pool: &PgPool) {
    let idle = pool.retain(|_, _| false).removed;
    pool.close();
    for conn in idle {
        let _ = conn.conn.close().await;
    }
}

/// A sample of a PostgreSQL pool for metrics.
fn pg_pool_stats(pool: &PgPool, name: &'static str) -> PoolStats {
    let status = pool.status();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    PoolStats { pool: name, size: count(status.size), idle: count(status.available), max: count(status.max_size) }
}

/// A PostgreSQL transaction on a connection of the pool. Dropped unfinished (an error returned
/// early, a request cancelled), it is rolled back before the connection goes back to the pool;
/// a connection that cannot roll back is closed instead.
pub(super) struct PgTx {
    conn: Option<Object<PgConnector>>,
}

impl PgTx {
    async fn begin(conn: Object<PgConnector>) -> Result<Self, StoreError> {
        // Owned by the transaction before `BEGIN` is sent: dropped while it is on its way, the
        // connection is rolled back too, never handed out inside a transaction.
        let mut tx = PgTx { conn: Some(conn) };
        let conn = tx.conn();
        conn.in_transaction = true;
        // READ COMMITTED whatever the database's or role's default: the store's transactions
        // wait for a lock and then read again what committed meanwhile, which a transaction-wide
        // snapshot (REPEATABLE READ) would hide from them.
        let begun = within(conn.statement_timeout, conn.start().execute("BEGIN ISOLATION LEVEL READ COMMITTED")).await;
        conn.note(begun)?;
        Ok(tx)
    }

    /// Ends the transaction with `COMMIT` or `ROLLBACK`. Dropped on its way, the connection is
    /// cleaned up as for any unfinished transaction, but what happened to the transaction is
    /// unknown: a `COMMIT` already written to the socket is read out (and usually done) before the
    /// `ROLLBACK`. A caller that cancels a commit must not assume it was undone.
    async fn finish(mut self, end: &'static str) -> Result<(), StoreError> {
        let conn = self.conn();
        let ended = within(conn.statement_timeout, conn.start().execute(end)).await;
        let ended = conn.note(ended);
        let mut conn = self.conn.take().expect("a transaction is finished once");
        match ended {
            Ok(_) => {
                conn.in_transaction = false;
                Ok(())
            }
            Err(error) => {
                // Whatever state the connection is in, it is not used again.
                drop(Object::take(conn));
                Err(error.into())
            }
        }
    }

    fn conn(&mut self) -> &mut PgConn {
        self.conn.as_mut().expect("an unfinished transaction has its connection")
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        if conn.broken {
            drop(Object::take(conn));
            return;
        }
        // Should this task never run (the runtime shutting down), the connection comes back
        // marked inside a transaction, and the pool closes it.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let bound = Object::pool(&conn).map_or(Duration::from_secs(5), |pool| pool.manager().timeout);
                runtime.spawn(async move {
                    // An error here may be the abandoned statement's own answer, with the
                    // ROLLBACK never sent: the session could go on holding its locks, so the
                    // connection is closed (which ends it) unless the ROLLBACK is known done.
                    let rolled_back = tokio::time::timeout(bound, conn.start().execute("ROLLBACK")).await;
                    match rolled_back.map(|done| conn.note(done)) {
                        Ok(Ok(_)) => conn.in_transaction = false,
                        _ => drop(Object::take(conn)),
                    }
                });
            }
            // No runtime to roll back on (the process is ending): the connection is closed, which
            // rolls back too.
            Err(_) => drop(Object::take(conn)),
        }
    }
}

impl PoolRef<'_> {
    /// Takes one connection of the pool, for several statements in a row that need not be a
    /// transaction.
    pub(super) async fn acquire(self) -> Result<Conn, StoreError> {
        Ok(match self {
            PoolRef::Sqlite(pool, name) => {
                note_wait(pool, name);
                Conn::Sqlite(pool.acquire().await?)
            }
            PoolRef::Postgres(pool, name) => Conn::Postgres(pg_acquire(pool, name).await?),
        })
    }
}

/// One connection taken from a pool ([`PoolRef::acquire`]); it goes back when dropped.
pub(super) enum Conn {
    /// A connection of an SQLite pool.
    Sqlite(PoolConnection<Sqlite>),
    /// A connection of a PostgreSQL pool.
    Postgres(Object<PgConnector>),
}

impl<'a> From<&'a mut Conn> for On<'a> {
    fn from(conn: &'a mut Conn) -> Self {
        match conn {
            Conn::Sqlite(conn) => On::SqliteConn(conn),
            Conn::Postgres(conn) => On::PgConn(conn),
        }
    }
}

/// The names of the pools in metrics.
const WRITER: &str = "writer";
const READER: &str = "reader";
const PRIMARY: &str = "primary";
const REPLICA: &str = "replica";
const BACKGROUND: &str = "background";

/// Counts a statement or transaction about to ask `pool` for a connection while every connection
/// it may open is open and busy: it queues. A sample taken as it asks (sqlx counts no waits), for
/// `tessera_db_pool_waits_total`.
fn note_wait<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, name: &'static str) {
    if pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections() {
        crate::observability::record_pool_wait(name);
    }
}

/// A sample of `pool` for metrics.
fn pool_stats<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, name: &'static str) -> PoolStats {
    let size = pool.size();
    // sqlx keeps the idle count in an atomic that a release racing an acquire can take below
    // zero for a moment, where it wraps: such a sample reads as none idle, and idle connections
    // are never more than the open ones (a gauge of four billion idle connections helps nobody).
    let idle = u32::try_from(pool.num_idle()).map_or(0, |idle| idle.min(size));
    PoolStats { pool: name, size, idle, max: pool.options().get_max_connections() }
}

impl<'a> From<PoolRef<'a>> for On<'a> {
    fn from(pool: PoolRef<'a>) -> Self {
        match pool {
            PoolRef::Sqlite(pool, name) => {
                note_wait(pool, name);
                On::SqlitePool(pool)
            }
            PoolRef::Postgres(pool, name) => On::PgPool(pool, name),
        }
    }
}

/// Where a statement runs: a pool (each statement commits on its own) or a transaction.
pub(super) enum On<'a> {
    /// An SQLite pool.
    SqlitePool(&'a SqlitePool),
    /// A PostgreSQL pool, and its name in metrics.
    PgPool(&'a PgPool, &'static str),
    /// An SQLite transaction's connection.
    SqliteConn(&'a mut SqliteConnection),
    /// A PostgreSQL transaction's connection, or one taken from the pool.
    PgConn(&'a mut PgConn),
}

impl<'a> From<&'a mut Tx> for On<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        match tx {
            Tx::Sqlite(tx) => On::SqliteConn(tx),
            Tx::Postgres(tx) => On::PgConn(tx.conn()),
        }
    }
}

/// A bound value, encoded per backend when the statement runs.
#[derive(Debug, Clone)]
pub(super) enum Arg<'q> {
    Uuid(Option<Uuid>),
    Text(Option<Cow<'q, str>>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
    Bytes(Option<Cow<'q, [u8]>>),
    Json(&'q serde_json::Value),
    /// An owned JSON value, or NULL.
    OptJson(Option<serde_json::Value>),
}

/// Values that can be bound to a statement.
pub(super) trait IntoArg<'q> {
    fn into_arg(self) -> Arg<'q>;
}

macro_rules! into_arg {
    ($($ty:ty => |$v:ident| $arg:expr;)*) => {
        $(impl<'q> IntoArg<'q> for $ty {
            fn into_arg(self) -> Arg<'q> {
                let $v = self;
                $arg
            }
        })*
    };
}

into_arg! {
    Uuid => |v| Arg::Uuid(Some(v));
    Option<Uuid> => |v| Arg::Uuid(v);
    &'q str => |v| Arg::Text(Some(Cow::Borrowed(v)));
    &'q String => |v| Arg::Text(Some(Cow::Borrowed(v)));
    String => |v| Arg::Text(Some(Cow::Owned(v)));
    Option<&'q str> => |v| Arg::Text(v.map(Cow::Borrowed));
    Option<String> => |v| Arg::Text(v.map(Cow::Owned));
    i64 => |v| Arg::Int(Some(v));
    Option<i64> => |v| Arg::Int(v);
    bool => |v| Arg::Bool(Some(v));
    Option<bool> => |v| Arg::Bool(v);
    DateTime<Utc> => |v| Arg::Time(Some(v));
    Option<DateTime<Utc>> => |v| Arg::Time(v);
    &'q [u8] => |v| Arg::Bytes(Some(Cow::Borrowed(v)));
    &'q Vec<u8> => |v| Arg::Bytes(Some(Cow::Borrowed(v)));
    Option<&'q [u8]> => |v| Arg::Bytes(v.map(Cow::Borrowed));
    &'q serde_json::Value => |v| Arg::Json(v);
    serde_json::Value => |v| Arg::OptJson(Some(v));
    Option<serde_json::Value> => |v| Arg::OptJson(v);
}

/// One statement and its values.
#[derive(Debug, Clone)]
pub(super) struct Query<'q> {
    sql: &'static str,
    args: Vec<Arg<'q>>,
}

/// A statement, in PostgreSQL's spelling with `$n` placeholders.
pub(super) fn query<'q>(sql: &'static str) -> Query<'q> {
    Query { sql, args: Vec::new() }
}

impl<'q> Query<'q> {
    /// Binds the next placeholder.
    pub(super) fn bind(mut self, value: impl IntoArg<'q>) -> Self {
        self.args.push(value.into_arg());
        self
    }

    fn pg(&self) -> sqlx::query::Query<'_, Postgres, PgArguments> {
        let mut query = sqlx::query(self.sql);
        for arg in &self.args {
            query = match arg {
                Arg::Uuid(v) => query.bind(*v),
                Arg::Text(v) => query.bind(v.as_deref()),
                Arg::Int(v) => query.bind(*v),
                Arg::Bool(v) => query.bind(*v),
                Arg::Time(v) => query.bind(*v),
                Arg::Bytes(v) => query.bind(v.as_deref()),
                Arg::Json(v) => query.bind(sqlx::types::Json(*v)),
                Arg::OptJson(v) => query.bind(v.as_ref().map(sqlx::types::Json)),
            };
        }
        query
    }

    fn sqlite(&self) -> sqlx::query::Query<'_, Sqlite, SqliteArguments> {
        let mut query = sqlx::query(sqlite_sql(self.sql));
        for arg in &self.args {
            query = match arg {
                Arg::Uuid(v) => query.bind(*v),
                Arg::Text(v) => query.bind(v.as_deref()),
                Arg::Int(v) => query.bind(*v),
                Arg::Bool(v) => query.bind(*v),
                Arg::Time(v) => query.bind(v.map(|t| t.timestamp_micros())),
                Arg::Bytes(v) => query.bind(v.as_deref()),
                Arg::Json(v) => query.bind(v.to_string()),
                Arg::OptJson(v) => query.bind(v.as_ref().map(serde_json::Value::to_string)),
            };
        }
        query
    }

    /// Runs the statement; returns how many rows it changed.
    pub(super) async fn execute<'a>(&self, on: impl Into<On<'a>>) -> Result<u64, StoreError> {
        Ok(match on.into() {
            On::SqlitePool(pool) => self.sqlite().execute(pool).await?.rows_affected(),
            On::SqliteConn(conn) => self.sqlite().execute(conn).await?.rows_affected(),
            On::PgPool(pool, name) => {
                let mut conn = pg_acquire(pool, name).await?;
                let done = within(conn.statement_timeout, self.pg().execute(conn.start())).await;
                conn.note(done)?.rows_affected()
            }
            On::PgConn(conn) => {
                let done = within(conn.statement_timeout, self.pg().execute(conn.start())).await;
                conn.note(done)?.rows_affected()
            }
        })
    }

    /// Runs the statement; returns its row, if any.
    pub(super) async fn fetch_optional<'a>(&self, on: impl Into<On<'a>>) -> Result<Option<Row>, StoreError> {
        Ok(match on.into() {
            On::SqlitePool(pool) => self.sqlite().fetch_optional(pool).await?.map(Row::Sqlite),
            On::SqliteConn(conn) => self.sqlite().fetch_optional(conn).await?.map(Row::Sqlite),
            On::PgPool(pool, name) => {
                let mut conn = pg_acquire(pool, name).await?;
                let row = within(conn.statement_timeout, self.pg().fetch_optional(conn.start())).await;
                conn.note(row)?.map(Row::Postgres)
            }
            On::PgConn(conn) => {
                let row = within(conn.statement_timeout, self.pg().fetch_optional(conn.start())).await;
                conn.note(row)?.map(Row::Postgres)
            }
        })
    }

    /// Runs the statement; returns its one row.
    pub(super) async fn fetch_one<'a>(&self, on: impl Into<On<'a>>) -> Result<Row, StoreError> {
        self.fetch_optional(on).await?.ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Runs the statement; returns all its rows.
    pub(super) async fn fetch_all<'a>(&self, on: impl Into<On<'a>>) -> Result<Vec<Row>, StoreError> {
        Ok(match on.into() {
            On::SqlitePool(pool) => self.sqlite().fetch_all(pool).await?.into_iter().map(Row::Sqlite).collect(),
            On::SqliteConn(conn) => self.sqlite().fetch_all(conn).await?.into_iter().map(Row::Sqlite).collect(),
            On::PgPool(pool, name) => {
                let mut conn = pg_acquire(pool, name).await?;
                let rows = within(conn.statement_timeout, self.pg().fetch_all(conn.start())).await;
                conn.note(rows)?.into_iter().map(Row::Postgres).collect()
            }
            On::PgConn(conn) => {
                let rows = within(conn.statement_timeout, self.pg().fetch_all(conn.start())).await;
                conn.note(rows)?.into_iter().map(Row::Postgres).collect()
            }
        })
    }
}

/// A result row of either backend.
pub(super) enum Row {
    /// From SQLite.
    Sqlite(SqliteRow),
    /// From PostgreSQL.
    Postgres(PgRow),
}

impl RowExt for SqliteRow {
    impl_row_ext_common!();

    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError> {
        from_micros(self.try_get(col)?)
    }

    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.try_get::<Option<i64>, _>(col)?.map(from_micros).transpose()
    }

    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.try_get::<Option<String>, _>(col)?
            .map(|text| serde_json::from_str(&text).map_err(|_| StoreError::Corrupt(format!("{col} is not JSON"))))
            .transpose()
    }
}

impl RowExt for PgRow {
    impl_row_ext_common!();

    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.try_get(col)?)
    }

    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.try_get(col)?)
    }

    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(self.try_get::<Option<sqlx::types::Json<serde_json::Value>>, _>(col)?.map(|json| json.0))
    }
}

fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("time {micros} out of range")))
}

macro_rules! dispatch {
    ($($name:ident -> $ty:ty;)*) => {
        $(fn $name(&self, col: &str) -> Result<$ty, StoreError> {
            match self {
                Row::Sqlite(row) => row.$name(col),
                Row::Postgres(row) => row.$name(col),
            }
        })*
    };
}

impl RowExt for Row {
    dispatch! {
        uuid -> Uuid;
        opt_uuid -> Option<Uuid>;
        text -> String;
        opt_text -> Option<String>;
        flag -> bool;
        int -> i64;
        opt_int -> Option<i64>;
        time -> DateTime<Utc>;
        opt_time -> Option<DateTime<Utc>>;
        bytes -> Vec<u8>;
        opt_bytes -> Option<Vec<u8>>;
        opt_json -> Option<serde_json::Value>;
    }
}

/// The row-lock clauses of PostgreSQL that SQLite has not.
const ROW_LOCKS: [&str; 4] = [" FOR UPDATE", " FOR NO KEY UPDATE", " FOR KEY SHARE", " FOR SHARE"];

/// PostgreSQL's byte-wise collation, for text ordered (and paged through) by bytes whatever the
/// cluster's locale: `ORDER BY c.id COLLATE "C"`. SQLite compares text by bytes already, and
/// knows no collation of that name.
const BYTEWISE: &str = " COLLATE \"C\"";

/// The SQLite spelling of a statement: row locks (`FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`,
/// `FOR KEY SHARE`, each with its `OF table` and `SKIP LOCKED`) dropped (SQLite has none; its write transactions
/// are serialised whole), and [`BYTEWISE`] too. Statements without either are used as they are;
/// rewritten ones are made once and kept for the process's life (there are a handful).
fn sqlite_sql(sql: &'static str) -> &'static str {
    if !ROW_LOCKS.iter().any(|lock| sql.contains(lock)) && !sql.contains(BYTEWISE) {
        return sql;
    }
    static REWRITTEN: LazyLock<Mutex<HashMap<&'static str, &'static str>>> = LazyLock::new(Default::default);
    let mut rewritten = REWRITTEN.lock().unwrap_or_else(|p| p.into_inner());
    rewritten.entry(sql).or_insert_with(|| Box::leak(without_row_locks(sql).replace(BYTEWISE, "").into_boxed_str()))
}

/// `sql` without its row-lock clauses (see [`sqlite_sql`]).
fn without_row_locks(sql: &str) -> String {
    let mut plain = sql.to_owned();
    while let Some((at, lock)) = ROW_LOCKS.iter().filter_map(|lock| plain.find(lock).map(|at| (at, lock))).min() {
        let mut end = at + lock.len();
        if plain[end..].starts_with(" OF ") {
            // `OF a, b`: names, each after " OF " or a comma and its spaces.
            end += " OF ".len();
            loop {
                let name = |s: &str| s.bytes().take_while(|b| b.is_ascii_alphanumeric() || b"_.".contains(b)).count();
                end += name(&plain[end..]);
                let rest = &plain[end..];
                let Some(next) = rest.strip_prefix(',') else { break };
                end += rest.len() - next.trim_start_matches(' ').len();
            }
        }
        if plain[end..].starts_with(" SKIP LOCKED") {
            end += " SKIP LOCKED".len();
        }
        plain.replace_range(at..end, "");
    }
    plain
}

/// SQL for the text of the UUID in `column`, as Rust's `Uuid` writes it (lower case, hyphenated):
/// a cast on PostgreSQL; on SQLite, where a UUID is its 16 bytes, their hex in groups.
pub(super) fn uuid_text_sql(backend: Backend, column: &str) -> String {
    match backend {
        Backend::Postgres => format!("CAST({column} AS TEXT)"),
        Backend::Sqlite => {
            let group = |from: usize, len: usize| format!("substr(hex({column}), {from}, {len})");
            format!(
                "lower({} || '-' || {} || '-' || {} || '-' || {} || '-' || {})",
                group(1, 8),
                group(9, 4),
                group(13, 4),
                group(17, 4),
                group(21, 12)
            )
        }
    }
}

/// SQL for the JSON object `json` (SQL for a JSON value bound or stored, or NULL for an empty
/// object) with `key` (a plain word) set to `value` (SQL for a text).
pub(super) fn json_set_sql(backend: Backend, json: &str, key: &str, value: &str) -> String {
    debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{key:?} is a plain word");
    match backend {
        Backend::Postgres => format!("COALESCE({json}, '{{}}'::jsonb) || jsonb_build_object('{key}', {value})"),
        Backend::Sqlite => format!("json_set(COALESCE({json}, '{{}}'), '$.{key}', {value})"),
    }
}

/// `chunk` (not empty) followed by its last item again, `len` items in all: the values of a
/// statement prepared for `len` rows, given fewer. The repeated row must be harmless twice (the
/// same key updated or deleted once).
pub(super) fn padded<T>(chunk: &[T], len: usize) -> impl Iterator<Item = &T> {
    let last = chunk.last().expect("a chunk is never empty");
    chunk.iter().chain(std::iter::repeat(last)).take(len)
}

/// PostgreSQL's one statement for `writes` (at least one): `WITH w0 AS (first), w1 AS (second), …
/// last`, each statement's placeholders renumbered after those of the statements before it, and
/// their values bound in the same order. PostgreSQL runs every clause exactly once, on one
/// snapshot, and a failing one fails the whole statement; but in an order of its choosing, so the
/// writes must not depend on each other (rows of one table whose order matters, such as audit
/// rows, go in one multi-row `INSERT`). The statements must not use `$` but for
/// placeholders (no dollar quoting, no `$` in literals). Each combination is composed once and
/// kept for the process's life (there are a handful).
fn together(writes: Vec<Query<'_>>) -> Query<'_> {
    static COMPOSED: LazyLock<Mutex<HashMap<Vec<&'static str>, &'static str>>> = LazyLock::new(Default::default);
    let key: Vec<&'static str> = writes.iter().map(|write| write.sql).collect();
    let sql = *COMPOSED.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert_with(|| {
        let mut offset = 0;
        let mut clauses: Vec<String> = writes
            .iter()
            .map(|write| {
                // The numbering is kept by the statements' text: each must bind exactly as many
                // values as its highest placeholder, whatever it is called with.
                let (renumbered, highest) = renumber_placeholders(write.sql, offset);
                assert_eq!(highest, offset + write.args.len(), "placeholders and values of {:?}", write.sql);
                assert!(!write.sql.trim_start().starts_with("WITH"), "a WITH statement cannot be a WITH clause");
                offset += write.args.len();
                renumbered
            })
            .collect();
        let last = clauses.pop().expect("at least one write");
        let composed = if clauses.is_empty() {
            last
        } else {
            let with: Vec<String> =
                clauses.iter().enumerate().map(|(n, clause)| format!("w{n} AS ({clause})")).collect();
            format!("WITH {} {last}", with.join(", "))
        };
        Box::leak(composed.into_boxed_str())
    });
    Query { sql, args: writes.into_iter().flat_map(|write| write.args).collect() }
}

/// `sql` with each placeholder `$n` written `$(n + offset)`, and the highest one written.
fn renumber_placeholders(sql: &str, offset: usize) -> (String, usize) {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut highest = offset;
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => {
                highest = highest.max(n + offset);
                out.push_str(&(n + offset).to_string());
            }
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    (out, highest)
}

/// Takes a lock that one transaction at a time holds until it ends, whatever the instance: on
/// PostgreSQL a transaction-level advisory lock (false, at once, when another holds it); on
/// SQLite write transactions are serialised whole, so it always is true.
pub(super) async fn try_exclusive(tx: &mut Tx, key: i64) -> Result<bool, StoreError> {
    match tx {
        Tx::Sqlite(_) => Ok(true),
        Tx::Postgres(_) => {
            query("SELECT pg_try_advisory_xact_lock($1) AS taken").bind(key).fetch_one(tx).await?.flag("taken")
        }
    }
}

/// Waits for the lock of [`try_exclusive`] and holds it until the transaction ends.
pub(super) async fn exclusive(tx: &mut Tx, key: i64) -> Result<(), StoreError> {
    match tx {
        Tx::Sqlite(_) => Ok(()),
        Tx::Postgres(_) => {
            query("SELECT pg_advisory_xact_lock($1)").bind(key).execute(tx).await?;
            Ok(())
        }
    }
}

/// Whether an SQLite URL names an in-memory database.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Creates a missing database file readable by its owner only (0600): it holds people's emails
/// and names, and SQLite gives its `-wal` and `-shm` files the database file's mode. An existing
/// file is left as it is (its mode is the operator's choice).
fn create_private_file(path: &std::path::Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => {
            let why = format!(
                "cannot create the SQLite database file {}: {error} (its directory must exist and be writable by \
                 this process)",
                path.display()
            );
            Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(error.kind(), why))))
        }
    }
}

/// Why the SQLite database file `url` names, missing, could not be created by this process: its
/// directory does not exist, or this process may not write there; `None` when it could (or the
/// URL names no file), for `tessera check` to say before `tessera serve` fails on it.
pub fn sqlite_file_uncreatable(url: &crate::config::DatabaseUrl) -> Option<String> {
    let file = sqlite_file(url.expose()).ok().flatten()?;
    let dir = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        return Some(format!("its directory {} does not exist", dir.display()));
    }
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    // Real ids (not setuid: the same as the effective ones): `faccessat2`, which the effective
    // ids would need, is refused outright by some container sandboxes.
    rustix::fs::access(dir, access)
        .err()
        .map(|error| format!("this process may not create files in its directory {} ({error})", dir.display()))
}

/// The database file a `sqlite:` URL names; `None` for an in-memory database.
pub fn sqlite_file(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    if is_in_memory(url) {
        return Ok(None);
    }
    Ok(Some(SqliteConnectOptions::from_str(url)?.get_filename().to_path_buf()))
}

/// Writes a consistent copy of the SQLite database `url` names into `into`, a file that must not
/// exist or be empty: SQLite's `VACUUM INTO`, on a read-only connection of its own (nothing is
/// created or switched to WAL), which reads one snapshot — what the `-wal` file holds included —
/// beside readers and writers. `into` should be absolute: SQLite reads a name that starts with
/// `file:` as a URI.
pub async fn copy_sqlite(url: &str, into: &str) -> Result<(), StoreError> {
    let options = SqliteConnectOptions::from_str(url)?.read_only(true).busy_timeout(Duration::from_secs(5));
    let mut connection = SqliteConnection::connect_with(&options).await?;
    sqlx::query("VACUUM INTO ?1").bind(into).execute(&mut connection).await?;
    connection.close().await?;
    Ok(())
}

/// Whether `url` names an SQLite database file that does not exist yet (in-memory databases
/// and PostgreSQL always exist, as far as this goes): nothing but a migration may create it, or
/// a mistyped path would leave an empty file behind.
pub fn sqlite_file_missing(url: &crate::config::DatabaseUrl) -> Result<bool, StoreError> {
    if url.backend() != Backend::Sqlite {
        return Ok(false);
    }
    Ok(sqlite_file(url.expose())?.is_some_and(|file| !file.exists()))
}

/// Creates the PostgreSQL database a URL names (for scratch databases of benchmarks and tests).
pub async fn create_pg_database(url: &str) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateDatabase;
    Ok(Postgres::create_database(url).await?)
}

/// The schema all of `migrations/sqlite/` produces, dumped from `sqlite_master` in creation order
/// (a test keeps it in step with the migrations).
const SQLITE_SCHEMA: &str = include_str!("../../migrations/sqlite-schema.sql");

/// On an SQLite database without any table, creates [`SQLITE_SCHEMA`] and records every migration
/// as applied (as sqlx does: version, description, checksum), in one transaction: a new file gets
/// its tables in a few milliseconds instead of replaying each migration, several of which rebuild
/// tables. Returns false, having changed nothing, when the database has tables.
async fn create_new_sqlite(writer: &SqlitePool) -> Result<bool, StoreError> {
    // IMMEDIATE: a second process starting on the same new file waits, then finds the tables.
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let objects: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master").fetch_one(&mut *tx).await?;
    if objects > 0 {
        return Ok(false);
    }
    sqlx::raw_sql(SQLITE_SCHEMA).execute(&mut *tx).await?;
    for migration in migrations::migrator(SQLITE_MIGRATIONS).iter() {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (?1, ?2, TRUE, ?3, 0)",
        )
        .bind(migration.version)
        .bind(&*migration.description)
        .bind(&*migration.checksum)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Drops the PostgreSQL database a URL names, disconnecting its sessions first.
pub async fn drop_pg_database(url: &str) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateDatabase;
    Ok(Postgres::force_drop_database(url).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes of each shipped migration's checksum, PostgreSQL's and SQLite's: a
    /// database that applied a migration refuses a binary whose copy differs, so an applied
    /// migration is never edited, not even its comments. A new one is pinned here when added.
    const PINNED: &[(i64, &str, &str)] = &[
        (1, "c0926c930156", "80981b74440f"),
        (2, "a9b56c954e0f", "36afe8a66e13"),
        (3, "21e6a294ffae", "1f30d12ead92"),
        (4, "55cd1b9d884c", "8d502514d3e9"),
        (5, "1db0f70eb539", "4748165527ee"),
        (6, "f7557f88fba7", "b2979652b80e"),
        (7, "77a6675bda59", "b2510e51a206"),
        (8, "f75807cd414e", "220f16eb76c7"),
        (9, "f5cdf8b28e9c", "9e1d3e435525"),
        (10, "c016380547e2", "2d3ca2abf77d"),
        (11, "979ae6913c3c", "979ae6913c3c"),
        (12, "a67c2353a26a", "ee6f7ef11151"),
        (13, "5b9c7de6d1e0", "575ea6e997d9"),
        (14, "0b50d1e49164", "0f259636146c"),
        (15, "1fbf94b92987", "e1c75c5055ff"),
        (16, "51c206c27223", "4b9017568908"),
        (17, "228582ddc76e", "9ff1bd838dac"),
        (18, "4105c5bb7c40", "4105c5bb7c40"),
        (19, "08899b393d2e", "18e14ea4db76"),
        (20, "d6e1099f726b", "ebe6f5f81fac"),
        (21, "5871f73b7aae", "5871f73b7aae"),
        (22, "0f56dd6c31ed", "48fffbef21c3"),
        (23, "3fe6af4d26d2", "3fe6af4d26d2"),
        (24, "83becd351839", "83becd351839"),
        (25, "cb16417a3b94", "b9650ee0553d"),
        (26, "516b68dfce11", "516b68dfce11"),
        (27, "bbed8f7cea74", "b3d224fefa8c"),
        (28, "6af789d9856a", "0d01c54e1255"),
        (29, "668889c8d1d4", "668889c8d1d4"),
        (30, "312ae25bc58e", "baf4159df361"),
        (31, "deb8b0de86f5", "deb8b0de86f5"),
        (32, "b8dda90568e3", "b8dda90568e3"),
        (33, "4da8970c11fb", "4da8970c11fb"),
        (34, "bc58a5e973ba", "bc58a5e973ba"),
        (35, "882135aa4b4d", "882135aa4b4d"),
        (36, "faed2e626412", "19e4bcb5c732"),
    ];

    #[test]
    fn shipped_migrations_are_never_edited() {
        let hex =
            |m: &sqlx::migrate::Migration| m.checksum.iter().take(6).map(|b| format!("{b:02x}")).collect::<String>();
        let (postgres, sqlite) = (migrations::migrator(POSTGRES_MIGRATIONS), migrations::migrator(SQLITE_MIGRATIONS));
        let shipped: Vec<(i64, String, String)> =
            postgres.iter().zip(sqlite.iter()).map(|(p, s)| (p.version, hex(p), hex(s))).collect();
        let pinned: Vec<(i64, String, String)> =
            PINNED.iter().map(|(v, p, s)| (*v, (*p).to_owned(), (*s).to_owned())).collect();
        assert_eq!(postgres.iter().count(), sqlite.iter().count(), "migrations come in pairs");
        assert_eq!(shipped, pinned, "an applied migration was edited, or a new one is not pinned in PINNED");
    }

    /// An SQLite file that cannot be opened (its directory gone) or written (read-only) is the
    /// store unavailable (503, and what is cached answers), not an internal error; a refused
    /// write of a healthy file is not.
    #[tokio::test]
    async fn an_sqlite_file_that_cannot_be_opened_or_written_is_unavailable() {
        use sqlx::ConnectOptions as _;
        let dir = tempfile::tempdir().unwrap();
        let gone = SqliteConnectOptions::new().filename(dir.path().join("gone/tessera.db"));
        let error = StoreError::from(gone.connect().await.expect_err("no such directory"));
        assert!(error.is_transient(), "{error:?}");
        let path = dir.path().join("tessera.db");
        let mut conn = SqliteConnectOptions::new().filename(&path).create_if_missing(true).connect().await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER PRIMARY KEY)").execute(&mut conn).await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)").execute(&mut conn).await.unwrap();
        let duplicate = sqlx::query("INSERT INTO t VALUES (1)").execute(&mut conn).await.expect_err("a duplicate");
        assert!(!StoreError::from(duplicate).is_transient());
        let mut read_only = SqliteConnectOptions::new().filename(&path).read_only(true).connect().await.unwrap();
        let refused = sqlx::query("INSERT INTO t VALUES (2)").execute(&mut read_only).await.expect_err("read-only");
        let refused = StoreError::from(refused);
        assert!(refused.is_transient(), "{refused:?}");
    }

    #[test]
    fn only_the_replicas_own_failures_switch_it_off() {
        assert!(replica_fault(&StoreError::Unavailable(sqlx::Error::PoolTimedOut)));
        assert!(!replica_fault(&StoreError::Corrupt("a value a newer binary wrote".into())));
        assert!(!replica_fault(&StoreError::Database(sqlx::Error::RowNotFound)));
    }

    #[test]
    fn only_an_answer_read_to_its_end_leaves_a_connection_reusable() {
        assert!(!breaks_the_connection(&sqlx::Error::RowNotFound));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(breaks_the_connection(&sqlx::Error::Io(io)));
        assert!(breaks_the_connection(&sqlx::Error::Protocol("unexpected message".into())));
        // A failure of the client's own may have stopped it half-way through an answer.
        assert!(breaks_the_connection(&sqlx::Error::Decode("a value it could not read".into())));
        assert!(breaks_the_connection(&sqlx::Error::TypeNotFound { type_name: "citext".into() }));
    }

    /// A replica that is never connected, for its bookkeeping alone.
    fn replica(max_lag: Duration) -> Replica {
        Replica {
            pool: pg_pool(
                "postgres://nobody@127.0.0.1:9/none",
                1,
                Duration::from_secs(1),
                Duration::from_secs(1),
                false,
            )
            .unwrap(),
            skip_until: Mutex::new(None),
            max_lag,
            caught_up_to: Mutex::new(None),
            positions: Mutex::new(VecDeque::new()),
        }
    }

    #[tokio::test]
    async fn a_replica_is_read_only_while_it_is_known_to_be_within_its_bound() {
        let bound = Duration::from_secs(10);
        let replica = replica(bound);
        assert!(!replica.available(), "never checked: not read");
        let start = Instant::now() - Duration::from_secs(30);
        let at = |s: u64| start + Duration::from_secs(s);
        // Behind the only position known: how far is unknown, but it is not read.
        assert_eq!(replica.caught_up(at(0), 100, Some(90)), ReplicaLag::Behind { lag: Some(Duration::ZERO) });
        assert!(!replica.available());
        // It has replayed the position of a check 3 s ago, not the one of this check.
        replica.caught_up(at(1), 150, Some(100));
        replica.caught_up(at(2), 200, Some(140));
        assert_eq!(replica.caught_up(at(4), 260, Some(200)), ReplicaLag::Readable { lag: Duration::from_secs(2) });
        // Caught up with this check's position: no lag. But that was at(4), 26 s ago: stale now.
        assert_eq!(replica.caught_up(at(4), 260, Some(260)), ReplicaLag::Readable { lag: Duration::ZERO });
        assert!(!replica.available(), "what a check found ages: 26 s past a 10 s bound");
        // Far behind: what it replayed was the primary's 16 s ago.
        assert_eq!(
            replica.caught_up(at(20), 400, Some(300)),
            ReplicaLag::Behind { lag: Some(Duration::from_secs(16)) },
            "it has replayed the position of at(4), not a later one"
        );
        assert_eq!(
            replica.caught_up(at(26), 450, Some(310)),
            ReplicaLag::Behind { lag: Some(Duration::from_secs(22)) },
            "the positions of at(0) to at(2) are dropped, the newest one older than 20 s is kept"
        );
        assert_eq!(
            replica.caught_up(at(26), 450, Some(250)),
            ReplicaLag::Behind { lag: Some(Duration::from_secs(22)) },
            "behind every position kept: at least as far as the oldest"
        );
        // Not replaying (a server not in recovery): never read.
        assert_eq!(replica.caught_up(at(29), 500, None), ReplicaLag::Behind { lag: None });
        assert!(!replica.available());
        assert_eq!(
            lock(&replica.positions).len(),
            5,
            "at(4) (the newest older than 20 s), at(20), at(26) twice and at(29)"
        );
        // A fresh check of a caught-up replica makes it readable; a failure sets it aside.
        assert_eq!(replica.caught_up(Instant::now(), 500, Some(500)), ReplicaLag::Readable { lag: Duration::ZERO });
        assert!(replica.available());
        replica.failed(&StoreError::Conflict { what: "test" });
        assert!(!replica.available() && replica.backing_off());
    }

    /// One connection to a new in-memory database.
    async fn memory() -> SqlitePool {
        SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap()
    }

    /// Every object of a database's schema, in creation order, as `migrations/sqlite-schema.sql`
    /// holds them.
    async fn schema_of(pool: &SqlitePool) -> String {
        let statements: Vec<String> = sqlx::query_scalar(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let mut out = String::from(
            "-- Generated from migrations/sqlite/ by `create_new_sqlite_matches_the_migrations` (src/store/db.rs):\n\
             -- the schema a new SQLite file gets in one transaction. Do not edit; after adding a migration,\n\
             -- run that test with TESSERA_BLESS_SCHEMA=1 to rewrite this file.\n",
        );
        for statement in statements {
            out.push('\n');
            out.push_str(&statement);
            out.push_str(";\n");
        }
        out
    }

    async fn applied(pool: &SqlitePool) -> Vec<(i64, String, Vec<u8>, bool)> {
        sqlx::query_as("SELECT version, description, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_backlog_is_deleted_whole_one_batch_a_statement() {
        let pool = memory().await;
        let db = Db::Sqlite { writer: pool.clone(), reader: pool.clone(), background: pool.clone() };
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, expired INTEGER NOT NULL)").execute(&pool).await.unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 28)
             INSERT INTO t (id, expired) SELECT i, i <= 25 FROM n",
        )
        .execute(&pool)
        .await
        .unwrap();
        let delete = query("DELETE FROM t WHERE id IN (SELECT id FROM t WHERE expired = 1 LIMIT $1)");
        // One statement deletes ten: the backlog of 25 takes three, and all of it goes.
        assert_eq!(db.delete_in_batches_of(delete.clone(), 10).await.unwrap(), 25);
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&pool).await.unwrap();
        assert_eq!(left, 3, "the live rows stay");
        assert_eq!(db.delete_in_batches_of(delete, 10).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn sweeps_and_unlinks_read_by_index_as_tables_grow() {
        let db = memory().await;
        migrations::migrator(SQLITE_MIGRATIONS).run(&db).await.unwrap();
        let plan = |sql: &'static str| {
            let db = db.clone();
            async move {
                // As SQLite is sent it: without the row locks it does not know.
                let sql = sqlite_sql(sql);
                let rows: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                        .fetch_all(&db)
                        .await
                        .unwrap();
                rows.into_iter().map(|row| row.3).collect::<Vec<_>>().join("; ")
            }
        };
        let audit_since: &'static str = super::super::audit::PAGE.replace("$5", "5").leak();
        for (sql, index) in [
            ("DELETE FROM sessions WHERE identity_id = 1", "sessions_identity_id_idx"),
            (
                "SELECT token_hash FROM sessions WHERE expires_at <= 1 OR last_seen_at < 2 LIMIT 3",
                "sessions_last_seen_at_idx",
            ),
            (super::super::sql::UNUSED_CODES_GRANTS, "oauth_codes_unused_expiry_idx"),
            (
                "SELECT id FROM auth_profiles p WHERE p.team_id = 1 AND p.connector_key = 'k' AND p.created_by = 2 \
                 AND p.profile_kind = 'oauth_account' AND p.status = 'active'",
                "auth_profiles_",
            ),
            (super::super::sql::ACCOUNT_IN_USE, "auth_profiles_account_idx"),
            // Another owner who can act: read among the team's owners, not all its members.
            (super::super::admin::MEMBERSHIPS_OF, "memberships_owners_idx"),
            (super::super::sql::FIRST_PROCESSED_SINCE, "outbox_events_processed_created_idx"),
            (super::super::audit::DELETE_BEFORE, "audit_events_at_idx"),
            // A page since a time: the log between the time's first id and the newest, not all of it.
            (audit_since, "rowid>? AND rowid<?"),
            (super::super::sql::PROFILES_MADE_BY, "auth_profiles_created_by_idx"),
            // "Remove access": the user's grants to the client, not every grant of the client.
            (
                "UPDATE oauth_grants SET revoked_at = 3 WHERE user_id = 1 AND client_id = 'c' AND revoked_at IS NULL",
                "oauth_grants_user_client_idx",
            ),
        ] {
            let plan = plan(sql).await;
            assert!(plan.contains(index) && !plan.contains("SCAN"), "{sql}: {plan}");
        }
        // A user's profile: their identities and memberships through their indexes.
        let profile = plan(&super::super::sql::USER_PROFILE).await;
        assert!(profile.contains("identities_user_id_idx") && profile.contains("memberships_user_id_idx"), "{profile}");
        assert!(!profile.contains("SCAN i") && !profile.contains("SCAN m"), "{profile}");
        // Each endpoint's queue from the pending indexes, the endpoints themselves walked.
        let queues = plan(super::super::sql::WEBHOOK_QUEUES).await;
        assert!(queues.contains("webhook_deliveries_pending_scheduled_idx") && !queues.contains("SCAN d"), "{queues}");
        // A filtered page of the audit log is found through the filter's index, not by walking
        // the log from its newest row.
        for (sql, index) in [
            (super::super::audit::PAGE_BY_TARGET, "audit_events_target_idx"),
            (super::super::audit::PAGE_BY_ACTOR, "audit_events_actor_name_idx"),
            (super::super::audit::PAGE_BY_ACTION, "audit_events_action_idx"),
        ] {
            let plan = plan(sql).await;
            // Nor by sorting every row of a frequent actor (the actor's page merges two
            // index-ordered reads of a page each).
            assert!(
                plan.contains(index) && !plan.contains("SCAN audit_events") && !plan.contains("FOR ORDER BY"),
                "{sql}: {plan}"
            );
        }
        // An admin's listing of a team's members, or of an identity's user, reads no more than
        // those: never every user.
        for sql in [super::super::admin::USERS_OF_TEAM, super::super::admin::USERS_OF_IDENTITY] {
            let plan = plan(sql).await;
            assert!(!plan.contains("SCAN"), "{sql}: {plan}");
        }
        // Nor every user of the database to find an email's.
        let of_email = plan(super::super::admin::USERS_OF_EMAIL).await;
        assert!(of_email.contains("users_email_key_idx") && !of_email.contains("SCAN"), "{of_email}");
        // A later page of a listing starts at its cursor, not from the first row again.
        for (sql, seek) in [
            (super::super::admin::USERS, "(id>?)"),
            (super::super::admin::USERS_OF_TEAM, "(team_id=? AND user_id>?)"),
            (super::super::admin::TEAMS, "(id>?)"),
            (super::super::admin::TEAM_MEMBERS, "(team_id=? AND user_id>?)"),
            (super::super::sql::DELIVERIES, "(endpoint_id=? AND event_seq<?)"),
        ] {
            let plan = plan(sql).await;
            // …and reads its page in order, not every row after the cursor to sort them.
            assert!(plan.contains(seek) && !plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        }
    }

    /// sqlx closes a pooled connection after 10 idle minutes or 30 in all; the one opened in its
    /// place to an in-memory database would hold a new, empty one.
    #[tokio::test]
    async fn the_sqlite_writer_is_never_closed_for_age_or_idleness() {
        let config = crate::config::Config::for_database("sqlite::memory:").unwrap();
        let Db::Sqlite { writer, .. } = Db::connect(&config.database).await.unwrap() else { unreachable!() };
        assert_eq!(writer.options().get_idle_timeout(), None);
        assert_eq!(writer.options().get_max_lifetime(), None);
    }

    /// With every request's reader taken (slow listings, say), the cache-invalidation log is
    /// still read at once: the caches stay fresh rather than every lookup joining the queue.
    #[tokio::test]
    async fn sqlite_background_reads_do_not_queue_behind_requests() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
        let mut config = crate::config::Config::for_database(&url).unwrap();
        config.database.max_connections = 1;
        let db = Db::connect(&config.database).await.unwrap();
        db.migrate().await.unwrap();
        let Db::Sqlite { reader, .. } = &db else { unreachable!() };
        let _taken = reader.acquire().await.unwrap();
        let read = super::super::cache_sync::changes_after(&db, 0, 10, None);
        let page = tokio::time::timeout(Duration::from_secs(2), read).await.expect("not queued").unwrap();
        assert_eq!(page.head, 0);
    }

    #[tokio::test]
    async fn create_new_sqlite_matches_the_migrations() {
        let migrated = memory().await;
        migrations::migrator(SQLITE_MIGRATIONS).run(&migrated).await.unwrap();
        let expected = schema_of(&migrated).await;
        if std::env::var_os("TESSERA_BLESS_SCHEMA").is_some() {
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite-schema.sql"), &expected).unwrap();
        }
        assert!(
            SQLITE_SCHEMA == expected,
            "migrations/sqlite-schema.sql is not what the migrations produce; rerun this test with \
             TESSERA_BLESS_SCHEMA=1 to rewrite it. The migrations produce:\n{expected}"
        );

        let created = memory().await;
        assert!(create_new_sqlite(&created).await.unwrap(), "an empty database gets the schema");
        assert_eq!(schema_of(&created).await, expected, "the file recreates the same schema");
        assert_eq!(applied(&created).await, applied(&migrated).await, "every migration is recorded as sqlx would");
        // sqlx finds nothing to apply and no checksum that differs.
        migrations::migrator(SQLITE_MIGRATIONS).run(&created).await.unwrap();
        assert_eq!(applied(&created).await.len(), SQLITE_MIGRATIONS.len());
        // A database with tables is left to the migrations.
        assert!(!create_new_sqlite(&migrated).await.unwrap());
        assert!(!create_new_sqlite(&created).await.unwrap());
    }

    #[test]
    fn sqlite_spelling_drops_row_locks() {
        assert_eq!(sqlite_sql("SELECT 1 FROM users WHERE id = $1 FOR UPDATE"), "SELECT 1 FROM users WHERE id = $1");
        assert_eq!(sqlite_sql("SELECT 1 FROM t WHERE id = $1 FOR NO KEY UPDATE"), "SELECT 1 FROM t WHERE id = $1");
        assert_eq!(sqlite_sql("SELECT 1 FROM t LIMIT 2 FOR UPDATE SKIP LOCKED"), "SELECT 1 FROM t LIMIT 2");
        assert_eq!(sqlite_sql("SELECT 1 FROM t ORDER BY seq FOR SHARE"), "SELECT 1 FROM t ORDER BY seq");
        assert_eq!(
            sqlite_sql("SELECT 1 FROM a, b WHERE a.id = $1 FOR KEY SHARE"),
            "SELECT 1 FROM a, b WHERE a.id = $1"
        );
        assert_eq!(
            sqlite_sql("INSERT INTO s SELECT 1 FROM a JOIN b ON a.x = b.x FOR SHARE OF b RETURNING a.x"),
            "INSERT INTO s SELECT 1 FROM a JOIN b ON a.x = b.x RETURNING a.x"
        );
        assert_eq!(
            sqlite_sql("SELECT 1 FROM a, b FOR UPDATE OF a, b SKIP LOCKED\n LIMIT 1"),
            "SELECT 1 FROM a, b\n LIMIT 1"
        );
        assert_eq!(sqlite_sql("SELECT 1 FROM a FOR UPDATE OF a FOR SHARE OF b"), "SELECT 1 FROM a");
        assert_eq!(
            sqlite_sql("SELECT id FROM c WHERE c.id COLLATE \"C\" > $1 ORDER BY c.id COLLATE \"C\" LIMIT 2"),
            "SELECT id FROM c WHERE c.id > $1 ORDER BY c.id LIMIT 2"
        );
        let plain = "SELECT 1";
        assert!(std::ptr::eq(sqlite_sql(plain), plain));
    }

    #[test]
    fn writes_together_are_one_statement_with_placeholders_in_order() {
        let first = query("INSERT INTO a (x, y, z) VALUES ($1, $2, $1)").bind("a").bind(1i64);
        let second = query("INSERT INTO b (x) VALUES ($1)").bind(true);
        let third = query("UPDATE c SET x = $2 WHERE id = $1").bind("c").bind(3i64);
        let composed = together(vec![first, second, third]);
        assert_eq!(
            composed.sql,
            "WITH w0 AS (INSERT INTO a (x, y, z) VALUES ($1, $2, $1)), w1 AS (INSERT INTO b (x) VALUES ($3)) \
             UPDATE c SET x = $5 WHERE id = $4"
        );
        assert_eq!(composed.args.len(), 5);
        assert!(matches!(&composed.args[2], Arg::Bool(Some(true))));
        assert!(matches!(&composed.args[3], Arg::Text(Some(text)) if text == "c"));
        // One write is itself; the same combination is composed once.
        let alone = together(vec![query("DELETE FROM d WHERE id = $1").bind(1i64)]);
        assert_eq!(alone.sql, "DELETE FROM d WHERE id = $1");
        let again = together(vec![query("INSERT INTO b (x) VALUES ($1)").bind(false)]);
        let once_more = together(vec![query("INSERT INTO b (x) VALUES ($1)").bind(true)]);
        assert!(std::ptr::eq(again.sql, once_more.sql));
        assert_eq!(renumber_placeholders("$10 $9 $ $x", 2), ("$12 $11 $ $x".to_owned(), 12));
    }
}
