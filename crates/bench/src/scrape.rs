//! `tessera-bench metrics`: the cost of a `/metrics` scrape, as its rate beside `GET /healthz`
//! (the cheapest route of the same stack) at the same concurrency, measured in the same run,
//! after traffic over many routes, statuses and issuers has filled the registry with series.

use std::time::Duration;

use anyhow::bail;
use tessera::config::{Config, IssuerConfig};
use tessera::domain::Issuer;
use tessera_testkit::ScratchDb;

use crate::harness::{Run, drive};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// Options of `tessera-bench metrics`.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests per measured run.
    #[arg(long, default_value_t = 2_000)]
    pub requests: usize,
    /// Allowed issuers, each bootstrapping users (a provisioning series apiece).
    #[arg(long, default_value_t = 20)]
    pub issuers: usize,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: MetricsArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.requests == 0 || args.issuers == 0 {
        bail!("--connections, --requests and --issuers must be positive");
    }
    let database = ScratchDb::create(args.postgres.as_deref()).await?;
    database.run(|url| async move { measure(&args, &url).await }).await
}

async fn measure(args: &MetricsArgs, url: &str) -> anyhow::Result<()> {
    let mut config = Config::for_database(url)?;
    config.issuers = (0..args.issuers)
        .map(|i| {
            let mut issuer = IssuerConfig::new(Issuer::parse(&format!("https://issuer-{i}.bench.example.com"))?);
            // Nothing listens there: no key prefetch leaves the machine.
            issuer.jwks_uri = Some(url::Url::parse("http://127.0.0.1:9/jwks")?);
            Ok(issuer)
        })
        .collect::<anyhow::Result<_>>()?;
    config.admin_tokens = vec![ADMIN_TOKEN.to_owned().into()];
    let crate::harness::Served { store, base, server } = crate::harness::Served::start(&config).await?;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.connections).build()?;

    // Series: provisioning per issuer (created, existing), routes with several statuses.
    for i in 0..args.issuers {
        for _ in 0..2 {
            client
                .post(format!("{base}/admin/users/bootstrap"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&serde_json::json!({
                    "issuer": format!("https://issuer-{i}.bench.example.com"), "subject": format!("s-{i}"),
                    "email": format!("u{i}@bench.example.com")
                }))
                .send()
                .await?
                .error_for_status()?;
        }
    }
    for path in ["/readyz", "/v1/me", "/admin/users", "/nowhere", "/admin/teams"] {
        let _ = client.get(format!("{base}{path}")).send().await?;
        let _ = client.get(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN).send().await?;
    }
    let _ = client.post(format!("{base}/v1/validate")).bearer_auth("not.a.token").send().await?;
    let body = scrape_once(&client, &base).await?;
    let series = body.lines().filter(|line| !line.starts_with('#') && !line.is_empty()).count();

    println!(
        "tessera-bench metrics: {} requests per run at {} connections, {} series ({} bytes) per scrape",
        args.requests,
        args.connections,
        series,
        body.len()
    );
    println!("{:<26} {:>11} {:>7} {:>7} {:>9}", "what", "per second", "p50 ms", "p99 ms", "share");
    // Warm-up.
    get_run(&client, &base, "/healthz", args.connections, args.requests / 10 + 1).await?;
    for round in 1..=2 {
        let health = get_run(&client, &base, "/healthz", args.connections, args.requests).await?;
        let metrics = get_run(&client, &base, "/metrics", args.connections, args.requests).await?;
        for (what, run, share) in [
            (format!("GET /healthz (round {round})"), &health, None),
            (format!("GET /metrics (round {round})"), &metrics, Some(metrics.rate() / health.rate())),
        ] {
            println!(
                "{what:<26} {:>11.0} {:>7.2} {:>7.2} {:>9}",
                run.rate(),
                run.quantile_ms(0.5),
                run.quantile_ms(0.99),
                share.map_or(String::new(), |s| format!("{:.1}%", s * 100.0))
            );
        }
    }
    server.stop().await?;
    store.close().await;
    Ok(())
}

async fn scrape_once(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let response = client.get(format!("{base}/metrics")).bearer_auth(ADMIN_TOKEN).send().await?;
    Ok(response.error_for_status()?.text().await?)
}

/// `requests` GETs of `path` (with the admin token, which `/metrics` needs and `/healthz` ignores).
async fn get_run(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    connections: usize,
    requests: usize,
) -> anyhow::Result<Run> {
    let (client, url) = (client.clone(), format!("{base}{path}"));
    drive(connections, requests, move |_| {
        let request = client.get(&url).bearer_auth(ADMIN_TOKEN).timeout(Duration::from_secs(30));
        async move {
            request.send().await?.error_for_status()?.bytes().await?;
            anyhow::Ok(())
        }
    })
    .await
}
