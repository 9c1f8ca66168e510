//! `tessera-bench me`: `GET /v1/me` with a session cookie — session → user with identities and
//! teams — at many connections, beside a bare single-row `SELECT` (a user by id, through the
//! store) of the same database at the same concurrency, measured in the same run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use tessera::config::{Config, IssuerConfig};
use tessera::domain::{Issuer, UserId};
use tessera::service::sessions::Sessions;
use tessera::store::Store;
use tessera::worker::LastSeen;
use tessera_testkit::ScratchDb;

use crate::harness::{Run, drive};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
const ISSUER: &str = "https://bench.example.com";

/// Options of `tessera-bench me`.
#[derive(Debug, Clone, clap::Args)]
pub struct MeArgs {
    /// Concurrent HTTP connections (and concurrent SELECTs for the baseline).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Requests per measured run.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Distinct users, each with a session, requested round-robin.
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: MeArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.requests == 0 || args.users == 0 {
        bail!("--connections, --requests and --users must be positive");
    }
    let database = ScratchDb::create(args.postgres.as_deref()).await?;
    database.run(|url| async move { measure(&args, &url).await }).await
}

async fn measure(args: &MeArgs, url: &str) -> anyhow::Result<()> {
    let mut config = Config::for_database(url)?;
    config.issuers = vec![IssuerConfig::new(Issuer::parse(ISSUER)?)];
    config.admin_tokens = vec![ADMIN_TOKEN.to_owned().into()];
    config.database.max_connections = 32;
    config.auth.cookie_secure = false;
    let crate::harness::Served { store, base, server } = crate::harness::Served::start(&config).await?;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.connections).build()?;

    // Users through the admin API, each with a session made by the session service itself.
    let sessions = Sessions::new(
        store.clone(),
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
        Arc::new(LastSeen::new(config.server.last_seen_flush)),
        tessera::service::principals::PrincipalCache::with_token_cache(&config.cache).0,
    );
    let mut users = Vec::with_capacity(args.users);
    let mut cookies = Vec::with_capacity(args.users);
    for i in 0..args.users {
        let created: serde_json::Value = client
            .post(format!("{base}/admin/users/bootstrap"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({
                "issuer": ISSUER, "subject": format!("me-{i}"),
                "email": format!("me-{i}@bench.example.com"), "name": format!("Bench User {i}")
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let user: UserId = created["user_id"].as_str().context("user_id")?.parse()?;
        let cookie = sessions.create(user, None, None, None, None, &[]).await?.context("a session for a new user")?;
        users.push(user);
        cookies.push(format!("tessera_session={}", cookie.expose_secret()));
    }

    println!(
        "tessera-bench me: {} requests per run at {} connections, {} users with a session, on {}",
        args.requests,
        args.connections,
        args.users,
        store.backend().name()
    );
    println!("{:<24} {:>11} {:>7} {:>7} {:>9}", "what", "per second", "p50 ms", "p99 ms", "share");
    let cookies = Arc::new(cookies);
    let users = Arc::new(users);
    // Warm-up: connections, statement caches.
    me_run(&client, &base, &cookies, args.connections, args.users).await?;
    for round in 1..=2 {
        let bare = bare_selects(&store, &users, args.connections, args.requests).await?;
        let me = me_run(&client, &base, &cookies, args.connections, args.requests).await?;
        for (what, run, share) in [
            (format!("bare SELECT (round {round})"), &bare, None),
            (format!("GET /v1/me (round {round})"), &me, Some(me.rate() / bare.rate())),
        ] {
            println!(
                "{what:<24} {:>11.0} {:>7.2} {:>7.2} {:>9}",
                run.rate(),
                run.quantile_ms(0.5),
                run.quantile_ms(0.99),
                share.map_or(String::new(), |s| format!("{:.0}%", s * 100.0))
            );
        }
    }
    server.stop().await?;
    store.close().await;
    Ok(())
}

async fn me_run(
    client: &reqwest::Client,
    base: &str,
    cookies: &Arc<Vec<String>>,
    connections: usize,
    requests: usize,
) -> anyhow::Result<Run> {
    let (client, url, cookies) = (client.clone(), format!("{base}/v1/me"), cookies.clone());
    drive(connections, requests, move |i| {
        let request = client.get(&url).header("cookie", &cookies[i % cookies.len()]);
        async move {
            request.send().await?.error_for_status()?;
            anyhow::Ok(())
        }
    })
    .await
}

async fn bare_selects(
    store: &Arc<dyn Store>,
    users: &Arc<Vec<UserId>>,
    clients: usize,
    requests: usize,
) -> anyhow::Result<Run> {
    let (store, users) = (store.clone(), users.clone());
    drive(clients, requests, move |i| {
        let (store, user) = (store.clone(), users[i % users.len()]);
        async move {
            store.get_user(user).await?.context("the user exists")?;
            Ok(())
        }
    })
    .await
}
