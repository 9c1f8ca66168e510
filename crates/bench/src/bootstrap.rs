//! `tessera-bench bootstrap`: provisioning throughput and latency.
//!
//! For each backend and each client count it runs, on distinct new identities:
//! - `bare`: the provisioning service called directly on the store (no HTTP) — the ceiling;
//! - `http`: `POST /admin/users/bootstrap` over HTTP to a server in this process, sharing that
//!   store;
//!
//! and prints provisions/s, p50 and p99, and `http` as a ratio of `bare`. It then starts the real
//! binary several times and reports the time from process start to `/readyz` 200 and the idle
//! resident memory.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::harness::{Run, drive};
use tessera::config::{Config, IssuerConfig};
use tessera::domain::{DisplayName, Email, Issuer, Subject};
use tessera::service::principals::PrincipalCache;
use tessera::service::provisioning::{IdentityClaim, Provisioner};
use tessera::startup::{Application, prepare_schema};
use tessera::store;
use tessera::upstream::issuers::{IssuerRegistry, outbound_client};
use tessera_testkit::ScratchDb as BenchDatabase;

/// The issuer of every benchmark identity.
pub(crate) const ISSUER: &str = "https://bench.example.com";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// Options of `tessera-bench bootstrap`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// Concurrent clients to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,16")]
    pub clients: Vec<usize>,
    /// Provisions per measured run.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Admin URL of a PostgreSQL server; a scratch database is created there and dropped after.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
    /// Do not measure SQLite.
    #[arg(long)]
    pub no_sqlite: bool,
    /// How many process starts to time per backend.
    #[arg(long, default_value_t = 5)]
    pub startups: usize,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: BootstrapArgs) -> anyhow::Result<()> {
    if args.clients.contains(&0) || args.requests == 0 {
        bail!("--clients and --requests must be positive");
    }
    println!(
        "tessera-bench bootstrap: {} provisions per run, distinct new identities; `bare` calls the \
         provisioning service directly, `http` goes through POST /admin/users/bootstrap",
        args.requests
    );
    println!(
        "{:<9} {:>7} {:<5} {:>13} {:>8} {:>8} {:>11}",
        "backend", "clients", "path", "provisions/s", "p50 ms", "p99 ms", "http/bare"
    );
    let mut startup_lines = Vec::new();
    if !args.no_sqlite {
        let dir = tempfile::tempdir().context("temp dir")?;
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        measure_backend("sqlite", &url, &args).await?;
        startup_lines.push(
            measure_startups("sqlite (new file)", args.startups, |i| {
                let dir = dir.path().join(format!("start-{i}"));
                std::fs::create_dir_all(&dir).ok();
                format!("sqlite://{}", dir.join("tessera.db").display())
            })
            .await?,
        );
        // A restart: the first start above migrated `start-0`.
        startup_lines.push(
            measure_startups("sqlite (migrated)", args.startups, |_| {
                format!("sqlite://{}", dir.path().join("start-0").join("tessera.db").display())
            })
            .await?,
        );
    }
    if let Some(admin) = &args.postgres {
        let database = BenchDatabase::create(Some(admin)).await?;
        let mut line = String::new();
        let (args, line_ref) = (&args, &mut line);
        database
            .run(|url| async move {
                measure_backend("postgres", &url, args).await?;
                *line_ref = measure_startups("postgres (migrated)", args.startups, |_| url.clone()).await?;
                anyhow::Ok(())
            })
            .await?;
        startup_lines.push(line);
    }
    println!();
    for line in startup_lines {
        println!("{line}");
    }
    Ok(())
}

async fn measure_backend(backend: &str, url: &str, args: &BootstrapArgs) -> anyhow::Result<()> {
    let mut config = Config::for_database(url)?;
    config.admin_tokens = vec![ADMIN_TOKEN.to_owned().into()];
    let mut issuer = IssuerConfig::new(Issuer::parse(ISSUER)?);
    issuer.name = "bench".into();
    config.issuers = vec![issuer];
    config.database.max_connections = 32;
    let store = store::connect(&config.database).await.context("connect")?;
    prepare_schema(store.as_ref(), true).await.context("migrate")?;
    let issuers = IssuerRegistry::new(config.issuers.clone(), outbound_client(config.jwks.fetch_timeout), &config.jwks);
    let (principals, _) = PrincipalCache::with_token_cache(&config.cache);
    let provisioner = Provisioner::new(store.clone(), Arc::new(issuers), principals);

    let app = Application::build_with_store(&config, store.clone()).await?;
    let base = format!("http://{}/admin/users/bootstrap", app.local_addr());
    let server = crate::harness::InProcess::start(app);
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(max_clients).build()?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();

    // Warm both paths (connections, caches) before measuring.
    bare(&provisioner, &run_id, "warm-bare", max_clients, 200).await?;
    http(&client, &base, &run_id, "warm-http", max_clients, 200).await?;
    for &clients in &args.clients {
        let b = bare(&provisioner, &run_id, &format!("bare-{clients}"), clients, args.requests).await?;
        let h = http(&client, &base, &run_id, &format!("http-{clients}"), clients, args.requests).await?;
        print_row(backend, clients, "bare", &b, None);
        print_row(backend, clients, "http", &h, Some(h.rate() / b.rate()));
    }
    server.stop().await?;
    store.close().await;
    Ok(())
}

fn print_row(backend: &str, clients: usize, path: &str, run: &Run, ratio: Option<f64>) {
    let ratio = ratio.map_or(String::new(), |r| format!("{:.0}%", r * 100.0));
    println!(
        "{backend:<9} {clients:>7} {path:<5} {:>13.0} {:>8.2} {:>8.2} {ratio:>11}",
        run.rate(),
        run.quantile_ms(0.5),
        run.quantile_ms(0.99)
    );
}

/// A distinct new identity: run, label and number make its subject.
pub(crate) fn claim(run_id: &str, label: &str, i: usize) -> anyhow::Result<IdentityClaim> {
    Ok(IdentityClaim {
        issuer: Issuer::parse(ISSUER)?,
        subject: Subject::parse(&format!("{run_id}-{label}-{i}"))?,
        email: Some(Email::parse(&format!("user{i}@bench.example.com"))?),
        email_verified: true,
        name: DisplayName::parse_optional(Some(&format!("U{label}{i} Bench")))?,
        provider: "bench".into(),
    })
}

async fn bare(provisioner: &Provisioner, run_id: &str, label: &str, clients: usize, ops: usize) -> anyhow::Result<Run> {
    let provisioner = provisioner.clone();
    let (run_id, label) = (run_id.to_owned(), label.to_owned());
    drive(clients, ops, move |i| {
        let provisioner = provisioner.clone();
        let claim = claim(&run_id, &label, i);
        async move {
            let provisioned = provisioner.provision(&claim?).await?;
            anyhow::ensure!(provisioned.created, "the identity already existed");
            Ok(())
        }
    })
    .await
}

async fn http(
    client: &reqwest::Client,
    url: &str,
    run_id: &str,
    label: &str,
    clients: usize,
    ops: usize,
) -> anyhow::Result<Run> {
    let (client, url) = (client.clone(), url.to_owned());
    let (run_id, label) = (run_id.to_owned(), label.to_owned());
    drive(clients, ops, move |i| {
        let request = client.post(&url).bearer_auth(ADMIN_TOKEN).json(&json!({
            "issuer": ISSUER,
            "subject": format!("{run_id}-{label}-{i}"),
            "email": format!("user{i}@bench.example.com"),
            "email_verified": true,
            "name": format!("U{label}{i} Bench"),
        }));
        async move {
            let response = request.send().await?;
            anyhow::ensure!(response.status() == 201, "unexpected status {}", response.status());
            Ok(())
        }
    })
    .await
}

/// Starts `tessera serve` `times` times on the database `url(i)` names, and reports the median
/// time from process start to the first `/readyz` 200 and the median idle resident memory.
async fn measure_startups(label: &str, times: usize, url: impl Fn(usize) -> String) -> anyhow::Result<String> {
    let exe = crate::tessera_exe()?;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(1)).build()?;
    let mut startups = Vec::new();
    let mut rss = Vec::new();
    for i in 0..times.max(1) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&exe)
            .arg("serve")
            .env_clear()
            .env("TESSERA_DATABASE_URL", url(i))
            .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
            .env("TESSERA_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start tessera serve")?;
        let ready = format!("http://127.0.0.1:{port}/readyz");
        loop {
            if let Ok(response) = client.get(&ready).send().await
                && response.status() == 200
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("tessera serve did not become ready within 30 s");
            }
            if let Some(status) = child.try_wait()? {
                bail!("tessera serve exited with {status}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        startups.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(pid) = child.id() {
            rss.push(resident_kib(pid)?);
            // Stopped as an operator would (SIGTERM), so the next start finds a closed database.
            tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await.ok();
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                child.kill().await.ok();
            }
        }
    }
    startups.sort_unstable();
    rss.sort_unstable();
    let median_ms = startups[startups.len() / 2].as_secs_f64() * 1000.0;
    let median_rss = rss.get(rss.len() / 2).copied().unwrap_or(0) as f64 / 1024.0;
    Ok(format!(
        "start-up {label}: median of {} starts {median_ms:.1} ms from process start to /readyz 200 \
         (min {:.1}, max {:.1}); idle RSS {median_rss:.1} MiB",
        startups.len(),
        startups[0].as_secs_f64() * 1000.0,
        startups[startups.len() - 1].as_secs_f64() * 1000.0,
    ))
}

/// The resident set size of a process, in KiB, from `/proc`.
fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")
}
