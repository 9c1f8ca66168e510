//! `tessera-bench webhooks`: webhook delivery to a receiver on loopback — events delivered per
//! second and the lag from an event's commit to its receipt (p50, p99) — beside the bare outbox
//! insert rate: the same changes written with no endpoint registered, in the same run.
//!
//! Each operation renames a user (`PATCH`-equivalent through the store: one transaction, one
//! `user.updated` event), spread over `--users` users at `--writers` concurrent writers. The lag
//! is the receipt time minus the event's `timestamp` (written in the change's transaction), on
//! the same clock. Delivery to one endpoint is one request at a time, in order; with
//! `--endpoints N` every event goes to N receivers and the rate counts deliveries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use chrono::{DateTime, Utc};
use tessera::config::{Config, IssuerConfig};
use tessera::crypto::keyring::KeyRing;
use tessera::domain::{Issuer, UserId};
use tessera::store::{Store, UserChange};
use tessera_testkit::ScratchDb;

use crate::harness::{Run, drive};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
const ISSUER: &str = "https://bench.example.com";

/// Options of `tessera-bench webhooks`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhooksArgs {
    /// Events per measured run.
    #[arg(long, default_value_t = 5_000)]
    pub events: usize,
    /// Concurrent writers of the changes.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Users the changes are spread over.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Endpoints (each with its own receiver) every event is delivered to.
    #[arg(long, default_value_t = 1)]
    pub endpoints: usize,
    /// `webhooks.poll_interval_ms` of the server (the product's default: 1000).
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.writers == 0 || args.users == 0 || args.endpoints == 0 {
        bail!("--events, --writers, --users and --endpoints must be positive");
    }
    let database = ScratchDb::create(args.postgres.as_deref()).await?;
    database.run(|url| async move { measure(&args, &url).await }).await
}

/// One request a receiver got: when it arrived, and the event's own timestamp.
type Receipt = (DateTime<Utc>, DateTime<Utc>);

/// What a receiver got.
#[derive(Clone, Default)]
struct Receipts(Arc<Mutex<Vec<Receipt>>>);

async fn receive(State(receipts): State<Receipts>, body: Bytes) -> StatusCode {
    let at = Utc::now();
    let written = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["timestamp"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()))
        .map(|t| t.with_timezone(&Utc));
    match written {
        Some(written) => {
            receipts.0.lock().unwrap_or_else(|p| p.into_inner()).push((at, written));
            StatusCode::NO_CONTENT
        }
        None => StatusCode::BAD_REQUEST,
    }
}

/// Starts a receiver on loopback; returns its URL and what it gets.
async fn receiver() -> anyhow::Result<(String, Receipts)> {
    let receipts = Receipts::default();
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receipts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, receipts))
}

/// The benchmarks' server configuration on the database at `url`: one issuer, the admin token,
/// a key ring (webhook keys are encrypted at rest), and the worker polling every `poll_interval`.
fn bench_config(url: &str, poll_interval: Duration) -> anyhow::Result<Config> {
    let mut config = Config::for_database(url)?;
    config.issuers = vec![IssuerConfig::new(Issuer::parse(ISSUER)?)];
    config.admin_tokens = vec![ADMIN_TOKEN.to_owned().into()];
    let ring = format!(
        "bench:{}",
        base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2))
    );
    config.encryption = Some(Arc::new(KeyRing::parse(&ring).context("the key ring")?));
    config.webhooks.poll_interval = poll_interval;
    Ok(config)
}

/// Bootstraps `count` users through the admin API (subjects `{prefix}-{n}`); their ids.
async fn bootstrap_users(
    client: &reqwest::Client,
    base: &str,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Arc<Vec<UserId>>> {
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        let created: serde_json::Value = client
            .post(format!("{base}/admin/users/bootstrap"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({
                "issuer": ISSUER, "subject": format!("{prefix}-{i}"), "email": format!("{prefix}-{i}@bench.example.com")
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        users.push(created["user_id"].as_str().context("user_id")?.parse::<UserId>()?);
    }
    Ok(Arc::new(users))
}

async fn measure(args: &WebhooksArgs, url: &str) -> anyhow::Result<()> {
    let mut config = bench_config(url, Duration::from_millis(args.poll_interval_ms))?;
    config.database.max_connections = 32;
    config.webhooks.allow_private_addresses = true;
    let crate::harness::Served { store, base, server } = crate::harness::Served::start(&config).await?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let users = bootstrap_users(&client, &base, "hook", args.users).await?;

    println!(
        "tessera-bench webhooks: {} events per run, {} writers over {} users, {} endpoint(s), poll every {} ms, on {}",
        args.events,
        args.writers,
        args.users,
        args.endpoints,
        args.poll_interval_ms,
        store.backend().name()
    );
    println!("{:<40} {:>11} {:>9} {:>9}", "what", "per second", "p50 ms", "p99 ms");

    // The bare rate: the same changes, no endpoint (the outbox fills; the worker only marks it).
    let bare = write_changes(&store, &users, args.writers, args.events, "bare").await?;
    print_row("outbox writes, no endpoint (latency)", &bare);

    let mut receivers = Vec::with_capacity(args.endpoints);
    for _ in 0..args.endpoints {
        let (url, receipts) = receiver().await?;
        client
            .post(format!("{base}/admin/webhooks"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "url": url, "event_types": ["user.updated"] }))
            .send()
            .await?
            .error_for_status()?;
        receivers.push(receipts);
    }
    let started = Instant::now();
    let written = write_changes(&store, &users, args.writers, args.events, "hooked").await?;
    print_row("outbox writes, endpoints registered", &written);
    let expected = args.events * args.endpoints;
    let bound = Duration::from_secs(120) + Duration::from_millis(50 * args.events as u64);
    loop {
        let got: usize = receivers.iter().map(|r| r.0.lock().unwrap_or_else(|p| p.into_inner()).len()).sum();
        if got >= expected {
            break;
        }
        if started.elapsed() > bound {
            bail!("only {got} of {expected} deliveries arrived within {} s", bound.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed();
    let mut lags = Vec::with_capacity(expected);
    for receipts in &receivers {
        for (at, written) in receipts.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            lags.push((*at - *written).to_std().unwrap_or_default());
        }
    }
    let delivered = Run::new(lags, wall);
    print_row("delivered (rate; lag commit → receipt)", &delivered);
    println!("delivery rate / bare outbox write rate: {:.0}%", 100.0 * delivered.rate() / bare.rate());

    server.stop().await?;
    store.close().await;
    Ok(())
}

fn print_row(what: &str, run: &Run) {
    println!("{what:<40} {:>11.0} {:>9.2} {:>9.2}", run.rate(), run.quantile_ms(0.5), run.quantile_ms(0.99));
}

/// Renames users `ops` times on `writers` concurrent tasks: each a transaction with one event.
async fn write_changes(
    store: &Arc<dyn Store>,
    users: &Arc<Vec<UserId>>,
    writers: usize,
    ops: usize,
    tag: &'static str,
) -> anyhow::Result<Run> {
    let (store, users) = (store.clone(), users.clone());
    drive(writers, ops, move |i| {
        let (store, user) = (store.clone(), users[i % users.len()]);
        async move {
            let change = UserChange { name: Some(Some(format!("{tag} {i}"))), ..UserChange::default() };
            store.update_user(user, &change, Utc::now()).await?.updated().context("the user exists")?;
            anyhow::Ok(())
        }
    })
    .await
}

/// Options of `tessera-bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanOutArgs {
    /// Events in each backlog.
    #[arg(long, default_value_t = 5_000)]
    pub events: usize,
    /// Endpoints of the second backlog (the first has one).
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// `tessera-bench fanout`: the fan-out of a backlog of events (an import's, say) into pending
/// deliveries — the store's fan-out call, 5,000 events a call (the worker's calls are of 500) —,
/// timed for one endpoint and then for `--endpoints`, in the same run: how the time grows with
/// the endpoints.
pub async fn fan_out(args: FanOutArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.endpoints < 2 {
        bail!("--events must be positive and --endpoints at least 2");
    }
    let database = ScratchDb::create(args.postgres.as_deref()).await?;
    database.run(|url| async move { measure_fan_out(&args, &url).await }).await
}

async fn measure_fan_out(args: &FanOutArgs, url: &str) -> anyhow::Result<()> {
    // The worker's first round runs at start; the backlogs are the benchmark's to fan out.
    let config = bench_config(url, Duration::from_secs(3600))?;
    let crate::harness::Served { store, base, server } = crate::harness::Served::start(&config).await?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let users = bootstrap_users(&client, &base, "fan", 200).await?;
    println!(
        "tessera-bench fanout: backlogs of {} events, 1 then {} endpoints, on {}",
        args.events,
        args.endpoints,
        store.backend().name()
    );
    println!("{:<12} {:>12} {:>10} {:>16}", "endpoints", "deliveries", "seconds", "deliveries/s");
    let mut registered = 0;
    let mut times = Vec::new();
    for endpoints in [1, args.endpoints] {
        for i in registered..endpoints {
            client
                .post(format!("{base}/admin/webhooks"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&serde_json::json!({ "url": format!("https://hook-{i}.bench.example.com/"),
                                           "event_types": ["user.updated"] }))
                .send()
                .await?
                .error_for_status()?;
        }
        registered = endpoints;
        write_changes(&store, &users, 16, args.events, "backlog").await?;
        let started = Instant::now();
        let mut events = 0;
        loop {
            let round = store.fan_out_events(5_000, Some(i64::MAX), Utc::now()).await?;
            if round.events == 0 {
                break;
            }
            events += round.events as usize;
        }
        let took = started.elapsed();
        // The users' creation events are fanned out in the first backlog too (to no endpoint:
        // they came before it, and are not `user.updated`).
        let deliveries = args.events * endpoints;
        anyhow::ensure!(events >= args.events, "only {events} of {} events fanned out", args.events);
        println!(
            "{endpoints:<12} {deliveries:>12} {:>10.3} {:>16.0}",
            took.as_secs_f64(),
            deliveries as f64 / took.as_secs_f64()
        );
        times.push(took.as_secs_f64());
    }
    println!(
        "time with {} endpoints / time with 1 (deliveries x{}): {:.2}",
        args.endpoints,
        args.endpoints,
        times[1] / times[0]
    );
    server.stop().await?;
    store.close().await;
    Ok(())
}
