//! `tessera-bench purge`: what a change to one user costs the instance that makes it, as the
//! principal cache fills (1,000 then 100,000 cached identities by default, the default
//! `cache.max_entries`).
//!
//! A change to a user (here `PATCH /admin/users/{id}` toggling `disabled`, so that every request
//! changes something) purges that user from the instance's caches before it answers, and every
//! other instance purges it when it reads the cache-invalidation log. The identities are loaded
//! with SQL as the `scale` fixture; at each size the cache is filled by validating one token of
//! every identity below the size, then the changes run one at a time. The baseline is the first
//! size, in the same run, on the same server.

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::json;

use crate::scale::Fixture;
use crate::validate::validate_run;
use tessera::config::Config;
use tessera_testkit::ScratchDb as BenchDatabase;
use tessera_testkit::local_issuer::LocalIssuer;

const AUDIENCE: &str = "api://tessera-bench";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// Options of `tessera-bench purge`.
#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    /// Cached identities to measure at, ascending; the first is the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 100_000])]
    pub sizes: Vec<u64>,
    /// Changes per size, one at a time.
    #[arg(long, default_value_t = 300)]
    pub changes: usize,
    /// Concurrent connections that fill the cache.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: PurgeArgs) -> anyhow::Result<()> {
    if args.changes == 0 || args.connections == 0 || args.sizes.is_empty() || args.sizes[0] == 0 {
        bail!("--changes, --connections and --sizes must be positive");
    }
    if args.sizes.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--sizes must be ascending");
    }
    let database = BenchDatabase::create(args.postgres.as_deref()).await?;
    database.run(|url| async move { measure(&args, &url).await }).await
}

async fn measure(args: &PurgeArgs, url: &str) -> anyhow::Result<()> {
    let issuer = LocalIssuer::start().await?;
    let issuer_config = crate::harness::bench_issuer(&issuer, AUDIENCE)?;
    let mut config = Config::for_database(url)?;
    config.issuers = vec![issuer_config];
    config.admin_tokens = vec![ADMIN_TOKEN.to_owned().into()];
    config.database.max_connections = 32;
    let crate::harness::Served { store, base, server } = crate::harness::Served::start(&config).await?;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.connections).build()?;
    let sign = |subject: &str| {
        let mut claims = issuer.claims(subject, AUDIENCE);
        claims["exp"] = (chrono::Utc::now().timestamp() + 3600).into();
        issuer.sign("ec-1", &claims)
    };

    // The user the changes are made to, provisioned for real; it tells the fixture how Tessera
    // writes the issuer and provider too.
    let seed = client.post(format!("{base}/v1/validate")).bearer_auth(sign("bench-seed")).send().await?;
    anyhow::ensure!(seed.status() == 200, "validate answered {}", seed.status());
    let user = seed.json::<serde_json::Value>().await?["user_id"].as_str().context("user_id")?.to_owned();
    let fixture = Fixture::connect(url).await?;
    let (issuer_text, provider) = fixture.seed_identity().await?;
    let largest = *args.sizes.last().expect("sizes checked");
    fixture.load(0, largest, &issuer_text, &provider).await?;

    println!(
        "tessera-bench purge: {} changes to one user per size, one at a time (PATCH /admin/users/{{id}}), \
         with the principal cache holding that many other identities; users on {}",
        args.changes,
        store.backend().name()
    );
    println!(
        "{:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "cached", "fill s", "changes/s", "p50 ms", "p99 ms", "p50", "p99"
    );
    let path = format!("{base}/admin/users/{user}");
    let mut baseline: Option<(f64, f64)> = None;
    let mut filled = 0u64;
    for &size in &args.sizes {
        let started = std::time::Instant::now();
        let tokens: Vec<String> = (filled..size).map(|i| sign(&format!("bench-subject-{i}"))).collect();
        let fill = usize::try_from(size - filled)?;
        validate_run(&client, &base, &tokens, args.connections, fill).await?;
        filled = size;
        let fill_s = started.elapsed().as_secs_f64();
        let (client, path) = (client.clone(), path.clone());
        let run = crate::harness::drive(1, args.changes, move |i| {
            let request =
                client.request(Method::PATCH, &path).bearer_auth(ADMIN_TOKEN).json(&json!({"disabled": i % 2 == 0}));
            async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status() == 200, "the change answered {}", response.status());
                response.bytes().await?;
                Ok(())
            }
        })
        .await?;
        let (p50, p99) = (run.quantile_ms(0.5), run.quantile_ms(0.99));
        let (base_p50, base_p99) = *baseline.get_or_insert((p50, p99));
        println!(
            "{size:>10} {fill_s:>8.1} {:>10.0} {p50:>8.2} {p99:>8.2} {:>7.2}x {:>7.2}x",
            run.rate(),
            p50 / base_p50,
            p99 / base_p99
        );
    }
    server.stop().await?;
    fixture.close().await;
    store.close().await;
    Ok(())
}
