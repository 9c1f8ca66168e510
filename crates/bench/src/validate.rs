//! `tessera-bench validate`: `/v1/validate` throughput and latency against its composed ceiling.
//!
//! A local issuer (in this process) signs RS256 and ES256 tokens; a Tessera server (in this
//! process, on SQLite by default) validates them over HTTP at `--connections` concurrent
//! connections, in three scenarios per algorithm:
//! - `one identity`: one token, over and over;
//! - `many identities`: one token for each of `--identities` subjects, round-robin;
//! - `distinct tokens`: a token never seen before on every request, for those subjects.
//!
//! Measured in the same run, for the same tokens: (a) the in-process verification rate (the
//! token verifier with its cache off, on every core) and (b) the rate of a bare endpoint of the
//! same server stack (`GET /healthz`). The ceiling is 1/(1/a + 1/b); the report gives validate
//! throughput as a share of it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use crate::harness::{Run, drive};
use tessera::config::Config;
use tessera::upstream::issuers::{IssuerRegistry, outbound_client};
use tessera::upstream::tokens::{TokenCache, TokenVerifier};
use tessera_testkit::ScratchDb as BenchDatabase;
use tessera_testkit::local_issuer::LocalIssuer;

const AUDIENCE: &str = "api://tessera-bench";

/// Options of `tessera-bench validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Requests per measured run.
    #[arg(long, default_value_t = 60_000)]
    pub requests: usize,
    /// Distinct subjects in the `many identities` and `distinct tokens` scenarios.
    #[arg(long, default_value_t = 1_000)]
    pub identities: usize,
    /// Admin URL of a PostgreSQL server to store users in (a scratch database is created and
    /// dropped); SQLite in a temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: ValidateArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.requests == 0 || args.identities == 0 {
        bail!("--connections, --requests and --identities must be positive");
    }
    let database = BenchDatabase::create(args.postgres.as_deref()).await?;
    database.run(|url| async move { measure(&args, &url).await }).await
}

async fn measure(args: &ValidateArgs, url: &str) -> anyhow::Result<()> {
    let issuer = LocalIssuer::start().await?;
    let issuer_config = crate::harness::bench_issuer(&issuer, AUDIENCE)?;
    let mut config = Config::for_database(url)?;
    config.issuers = vec![issuer_config.clone()];
    config.database.max_connections = 32;
    let crate::harness::Served { store, base, server } = crate::harness::Served::start(&config).await?;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.connections).build()?;

    // The verifier of the ceiling: same issuer, same keys, no token cache.
    let registry =
        Arc::new(IssuerRegistry::new(vec![issuer_config], outbound_client(config.jwks.fetch_timeout), &config.jwks));
    let verifier = Arc::new(TokenVerifier::new(registry, Arc::new(TokenCache::new(0)), Duration::ZERO));

    println!(
        "tessera-bench validate: {} requests per run at {} connections, {} identities, users on {}",
        args.requests,
        args.connections,
        args.identities,
        store.backend().name()
    );
    println!(
        "{:<6} {:<16} {:>11} {:>7} {:>7} {:>12} {:>12} {:>10} {:>9}",
        "alg", "scenario", "validate/s", "p50 ms", "p99 ms", "(a) verify/s", "(b) bare/s", "ceiling/s", "share"
    );
    let subjects: Vec<String> = (0..args.identities).map(|i| format!("bench-subject-{i}")).collect();
    for kid in ["rsa-1", "ec-1"] {
        let alg = if kid == "rsa-1" { "RS256" } else { "ES256" };
        let sign = |subject: &str, nonce: usize| {
            let mut claims = issuer.claims(subject, AUDIENCE);
            claims["exp"] = (chrono::Utc::now().timestamp() + 3600).into();
            claims["jti"] = nonce.into();
            issuer.sign(kid, &claims)
        };
        let one = vec![sign("bench-one", 0)];
        let many: Vec<String> = subjects.iter().map(|s| sign(s, 0)).collect();
        let distinct: Vec<String> = (0..args.requests).map(|i| sign(&subjects[i % subjects.len()], i + 1)).collect();
        // Warm-up: provisions every subject and fills the caches the way production traffic would.
        validate_run(&client, &base, &many, args.connections, many.len()).await?;
        validate_run(&client, &base, &one, args.connections, 100).await?;
        for (scenario, tokens) in [("one identity", &one), ("many identities", &many), ("distinct tokens", &distinct)] {
            let verify = verify_run(&verifier, tokens, args.requests).await?;
            let bare = bare_run(&client, &base, args.connections, args.requests).await?;
            let validate = validate_run(&client, &base, tokens, args.connections, args.requests).await?;
            let ceiling = 1.0 / (1.0 / verify.rate() + 1.0 / bare.rate());
            println!(
                "{alg:<6} {scenario:<16} {:>11.0} {:>7.2} {:>7.2} {:>12.0} {:>12.0} {:>10.0} {:>8.0}%",
                validate.rate(),
                validate.quantile_ms(0.5),
                validate.quantile_ms(0.99),
                verify.rate(),
                bare.rate(),
                ceiling,
                validate.rate() / ceiling * 100.0
            );
        }
    }
    server.stop().await?;
    store.close().await;
    Ok(())
}

/// `requests` validations of `tokens`, round-robin, at `connections` concurrent connections; each
/// must answer 200.
pub(crate) async fn validate_run(
    client: &reqwest::Client,
    base: &str,
    tokens: &[String],
    connections: usize,
    requests: usize,
) -> anyhow::Result<Run> {
    let tokens: Arc<Vec<String>> = Arc::new(tokens.to_vec());
    let (client, url) = (client.clone(), format!("{base}/v1/validate"));
    drive(connections, requests, move |i| {
        let request = client.post(&url).bearer_auth(&tokens[i % tokens.len()]);
        async move {
            let response = request.send().await?;
            anyhow::ensure!(response.status() == 200, "validate answered {}", response.status());
            response.bytes().await?;
            Ok(())
        }
    })
    .await
}

async fn bare_run(client: &reqwest::Client, base: &str, connections: usize, requests: usize) -> anyhow::Result<Run> {
    let (client, url) = (client.clone(), format!("{base}/healthz"));
    drive(connections, requests, move |_| {
        let request = client.get(&url);
        async move {
            let response = request.send().await?;
            anyhow::ensure!(response.status() == 200, "healthz answered {}", response.status());
            response.bytes().await?;
            Ok(())
        }
    })
    .await
}

async fn verify_run(verifier: &Arc<TokenVerifier>, tokens: &[String], requests: usize) -> anyhow::Result<Run> {
    let tokens: Arc<Vec<String>> = Arc::new(tokens.to_vec());
    let verifier = verifier.clone();
    // One task per core keeps every core busy with verification and nothing else.
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    drive(workers, requests, move |i| {
        let (verifier, tokens) = (verifier.clone(), tokens.clone());
        async move {
            verifier
                .verify(&tokens[i % tokens.len()])
                .await
                .map_err(|e| anyhow::anyhow!("verification failed: {e}"))?;
            Ok(())
        }
    })
    .await
}
