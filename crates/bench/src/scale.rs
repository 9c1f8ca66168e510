//! `tessera-bench scale`: `/v1/validate` of never-seen tokens of random existing identities as
//! the identity table grows (1,000 then 1,000,000 rows by default).
//!
//! The rows are loaded with SQL as a fixture (a user, an identity last seen a day ago, a default
//! team and its owner membership per row, as provisioning makes them), because a million
//! provisioning calls would take longer than the measurement. At each size, every request carries
//! a token signed for this run (a fresh `jti`) for a subject drawn uniformly from every identity
//! in the table, so the token cache never answers and the principal cache answers as often as
//! its default size and lifetime allow. The baseline is the first size, measured in the same
//! run, on the same server with its caches at their defaults.

use anyhow::{Context, bail};

use crate::validate::validate_run;
use tessera::config::Config;
use tessera_testkit::ScratchDb as BenchDatabase;
use tessera_testkit::local_issuer::LocalIssuer;

const AUDIENCE: &str = "api://tessera-bench";
/// Rows inserted per fixture statement.
const CHUNK: u64 = 50_000;

/// Options of `tessera-bench scale`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Identity counts to measure at, ascending; the first is the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 1_000_000])]
    pub sizes: Vec<u64>,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Requests per measured run (each with its own never-seen token).
    #[arg(long, default_value_t = 40_000)]
    pub requests: usize,
    /// Measured runs per size (after one warm-up run); the report gives each.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Signing algorithm of the tokens: `RS256` or `ES256`.
    #[arg(long, default_value = "RS256")]
    pub alg: String,
    /// Turns the principal cache off (`cache.principal_ttl_seconds = 0`), so that every request
    /// at every size reads its identity from the database: the table's size alone, without the
    /// cache answering more often at the smaller size.
    #[arg(long)]
    pub no_principal_cache: bool,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.requests == 0 || args.rounds == 0 || args.sizes.is_empty() {
        bail!("--connections, --requests, --rounds and --sizes must be positive");
    }
    if args.sizes.windows(2).any(|w| w[0] >= w[1]) || args.sizes[0] == 0 {
        bail!("--sizes must be positive and ascending");
    }
    let kid = match args.alg.as_str() {
        "RS256" => "rsa-1",
        "ES256" => "ec-1",
        other => bail!("--alg {other}: RS256 or ES256"),
    };
    let database = BenchDatabase::create(args.postgres.as_deref()).await?;
    database.run(|url| async move { measure(&args, kid, &url).await }).await
}

async fn measure(args: &ScaleArgs, kid: &str, url: &str) -> anyhow::Result<()> {
    let issuer = LocalIssuer::start().await?;
    let issuer_config = crate::harness::bench_issuer(&issuer, AUDIENCE)?;
    let mut config = Config::for_database(url)?;
    config.issuers = vec![issuer_config];
    config.database.max_connections = 32;
    if args.no_principal_cache {
        config.cache.principal_ttl = std::time::Duration::ZERO;
    }
    let crate::harness::Served { store, base, server } = crate::harness::Served::start(&config).await?;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.connections).build()?;
    let sign = |subject: &str, jti: u64| {
        let mut claims = issuer.claims(subject, AUDIENCE);
        claims["exp"] = (chrono::Utc::now().timestamp() + 3600).into();
        claims["jti"] = jti.into();
        issuer.sign(kid, &claims)
    };

    // One real JIT provisioning tells the fixture how Tessera writes the issuer and provider.
    validate_run(&client, &base, &[sign("bench-seed", 0)], 1, 1).await.context("seed")?;
    let fixture = Fixture::connect(url).await?;
    let (issuer_text, provider) = fixture.seed_identity().await?;

    println!(
        "tessera-bench scale: {} never-seen {} tokens per run at {} connections, {} run(s) per size, users on {}, principal cache {}",
        args.requests,
        args.alg,
        args.connections,
        args.rounds,
        store.backend().name(),
        if args.no_principal_cache { "off" } else { "at its defaults" }
    );
    println!(
        "{:>10} {:>9} {:>11} {:>7} {:>7} {:>9} {:>8}",
        "identities", "load s", "validate/s", "p50 ms", "p99 ms", "rate", "p99"
    );
    let mut loaded = 0u64;
    let mut jti = 1u64;
    let mut baseline: Option<(f64, f64)> = None;
    for &size in &args.sizes {
        let started = std::time::Instant::now();
        fixture.load(loaded, size, &issuer_text, &provider).await?;
        let load_s = started.elapsed().as_secs_f64();
        loaded = size;
        let mut tokens_for = |count: usize| -> Vec<String> {
            (0..count)
                .map(|_| {
                    jti += 1;
                    let subject = format!("bench-subject-{}", random_below(size));
                    sign(&subject, jti)
                })
                .collect()
        };
        // Warm-up: the caches fill the way this traffic fills them.
        validate_run(&client, &base, &tokens_for(args.requests), args.connections, args.requests).await?;
        for round in 0..args.rounds {
            let run = validate_run(&client, &base, &tokens_for(args.requests), args.connections, args.requests).await?;
            let (rate, p99) = (run.rate(), run.quantile_ms(0.99));
            let (base_rate, base_p99) = *baseline.get_or_insert((rate, p99));
            println!(
                "{size:>10} {:>9} {rate:>11.0} {:>7.2} {p99:>7.2} {:>8.2}x {:>7.2}x",
                if round == 0 { format!("{load_s:.1}") } else { String::new() },
                run.quantile_ms(0.5),
                rate / base_rate,
                p99 / base_p99
            );
        }
        // Every token named a fixture identity: none was provisioned on the way.
        let count = fixture.identities().await?;
        anyhow::ensure!(count == size + 1, "{count} identities after the runs at {size}: the fixture was not found");
    }
    server.stop().await?;
    fixture.close().await;
    store.close().await;
    Ok(())
}

/// A uniform random number below `n` (tokens are signed before a run, so this is off the
/// measured path).
fn random_below(n: u64) -> u64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) % n
}

/// The bench fixture's own connection, for bulk inserts in the schema's shape. Benchmark code,
/// not the product: the product's SQL stays in its store.
pub(crate) enum Fixture {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Fixture {
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        use std::str::FromStr;
        if url.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                .busy_timeout(std::time::Duration::from_secs(30))
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
            Ok(Self::Sqlite(sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await?))
        } else {
            Ok(Self::Postgres(sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await?))
        }
    }

    /// The issuer and provider strings of the identity the seed token provisioned.
    pub(crate) async fn seed_identity(&self) -> anyhow::Result<(String, String)> {
        const QUERY: &str = "SELECT issuer, provider FROM identities WHERE subject = 'bench-seed'";
        Ok(match self {
            Self::Sqlite(pool) => sqlx::query_as(QUERY).fetch_one(pool).await?,
            Self::Postgres(pool) => sqlx::query_as(QUERY).fetch_one(pool).await?,
        })
    }

    /// How many identities exist.
    pub(crate) async fn identities(&self) -> anyhow::Result<u64> {
        const QUERY: &str = "SELECT COUNT(*) FROM identities";
        let count: i64 = match self {
            Self::Sqlite(pool) => sqlx::query_scalar(QUERY).fetch_one(pool).await?,
            Self::Postgres(pool) => sqlx::query_scalar(QUERY).fetch_one(pool).await?,
        };
        Ok(u64::try_from(count)?)
    }

    /// Adds the rows numbered `from..to`, in chunks of one transaction each.
    pub(crate) async fn load(&self, from: u64, to: u64, issuer: &str, provider: &str) -> anyhow::Result<()> {
        let mut lo = from;
        while lo < to {
            let hi = (lo + CHUNK).min(to);
            match self {
                Self::Sqlite(pool) => load_sqlite(pool, lo, hi, issuer, provider).await?,
                Self::Postgres(pool) => load_postgres(pool, lo, hi, issuer, provider).await?,
            }
            lo = hi;
        }
        if let Self::Postgres(pool) = self {
            // The tables as autovacuum leaves them some time after such a load: statistics,
            // hint bits and the visibility map. Otherwise its first pass over the fresh rows
            // (four million at a million identities) runs during the measurement, on the same
            // cores.
            sqlx::query("VACUUM (ANALYZE) users, identities, teams, memberships").execute(pool).await?;
        }
        Ok(())
    }

    pub(crate) async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// Ids are 16-byte blobs there, times microseconds since the epoch; ids are derived from the row
/// number with a per-table prefix, so the tables' rows find each other without lookups.
async fn load_sqlite(pool: &sqlx::SqlitePool, lo: u64, hi: u64, issuer: &str, provider: &str) -> anyhow::Result<()> {
    macro_rules! series {
        ($insert:literal) => {
            concat!("WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) ", $insert)
        };
    }
    let (lo, hi) = (i64::try_from(lo)?, i64::try_from(hi)? - 1);
    let now = chrono::Utc::now().timestamp_micros();
    let day_ago = now - 86_400_000_000;
    let mut tx = pool.begin().await?;
    sqlx::query(series!(
        "INSERT INTO users (id, email, email_verified, name, disabled, created_at, updated_at) \
         SELECT unhex(printf('1%031x', i)), 'bench-' || i || '@example.com', 1, 'Bench ' || i, 0, ?3, ?3 FROM n"
    ))
    .bind(lo)
    .bind(hi)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(series!(
        "INSERT INTO identities \
         (id, user_id, issuer, subject, provider, email, email_verified, created_at, last_seen_at) \
         SELECT unhex(printf('2%031x', i)), unhex(printf('1%031x', i)), ?3, 'bench-subject-' || i, ?4, \
                'bench-' || i || '@example.com', 1, ?5, ?6 FROM n"
    ))
    .bind(lo)
    .bind(hi)
    .bind(issuer)
    .bind(provider)
    .bind(now)
    .bind(day_ago)
    .execute(&mut *tx)
    .await?;
    sqlx::query(series!(
        "INSERT INTO teams (id, slug, name, created_at, updated_at) \
         SELECT unhex(printf('3%031x', i)), 'bench-team-' || i, 'Bench team ' || i, ?3, ?3 FROM n"
    ))
    .bind(lo)
    .bind(hi)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(series!(
        "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) \
         SELECT unhex(printf('3%031x', i)), unhex(printf('1%031x', i)), 'owner', 1, ?3 FROM n"
    ))
    .bind(lo)
    .bind(hi)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The same rows; `('1' || lpad(to_hex(i), 31, '0'))::uuid` is the same id as SQLite's.
async fn load_postgres(pool: &sqlx::PgPool, lo: u64, hi: u64, issuer: &str, provider: &str) -> anyhow::Result<()> {
    let (lo, hi) = (i64::try_from(lo)?, i64::try_from(hi)? - 1);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO users (id, email, email_verified, name, disabled, created_at, updated_at) \
         SELECT ('1' || lpad(to_hex(i), 31, '0'))::uuid, 'bench-' || i || '@example.com', TRUE, 'Bench ' || i, \
                FALSE, now(), now() \
         FROM generate_series($1::bigint, $2::bigint) AS i",
    )
    .bind(lo)
    .bind(hi)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO identities \
         (id, user_id, issuer, subject, provider, email, email_verified, created_at, last_seen_at) \
         SELECT ('2' || lpad(to_hex(i), 31, '0'))::uuid, ('1' || lpad(to_hex(i), 31, '0'))::uuid, $3, \
                'bench-subject-' || i, $4, 'bench-' || i || '@example.com', TRUE, now(), now() - interval '1 day' \
         FROM generate_series($1::bigint, $2::bigint) AS i",
    )
    .bind(lo)
    .bind(hi)
    .bind(issuer)
    .bind(provider)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO teams (id, slug, name, created_at, updated_at) \
         SELECT ('3' || lpad(to_hex(i), 31, '0'))::uuid, 'bench-team-' || i, 'Bench team ' || i, now(), now() \
         FROM generate_series($1::bigint, $2::bigint) AS i",
    )
    .bind(lo)
    .bind(hi)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) \
         SELECT ('3' || lpad(to_hex(i), 31, '0'))::uuid, ('1' || lpad(to_hex(i), 31, '0'))::uuid, 'owner', TRUE, now() \
         FROM generate_series($1::bigint, $2::bigint) AS i",
    )
    .bind(lo)
    .bind(hi)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
