//! `tessera-bench soak`: mixed load at a steady rate for a few minutes against a `tessera serve`
//! child process, printing per minute the requests, errors, p99 latency and the server's
//! resident memory. Memory that keeps growing once the caches are full is a leak: the report gives
//! the growth from the end of the warm-up (`--warmup-minutes`, by default one minute past the
//! longest default cache lifetime, the token cache's 5 minutes) to the end of the run; the target
//! is under 10 %.
//!
//! The mix, per request: 60 % `/v1/validate` of a subject never seen before (a new user, a new
//! cache entry: what grows memory), 30 % `/v1/validate` of one of a few recurring subjects (cache
//! hits), 10 % `GET /healthz`. Tokens are signed by a local issuer in this process.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tessera_testkit::ScratchDb;
use tessera_testkit::local_issuer::LocalIssuer;

const AUDIENCE: &str = "api://tessera-soak";
const ADMIN_TOKEN: &str = "soak-admin-token-0123456789abcdef";

/// Options of `tessera-bench soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 8)]
    pub minutes: u64,
    /// Minutes after which the caches are full (their lifetimes have passed); memory growth is
    /// measured from then on.
    #[arg(long, default_value_t = 6)]
    pub warmup_minutes: u64,
    /// Requests per second, spread evenly.
    #[arg(long, default_value_t = 300)]
    pub rate: u64,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the soak and prints its report.
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    if args.minutes == 0 || args.rate == 0 || args.warmup_minutes >= args.minutes {
        bail!("--minutes and --rate must be positive, and --warmup-minutes less than --minutes");
    }
    let database = ScratchDb::create(args.postgres.as_deref()).await?;
    let dir = database.dir().to_owned();
    database.run(|url| async move { soak(&args, &url, &dir).await }).await
}

/// The resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read the server's memory")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

async fn soak(args: &SoakArgs, database: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let issuer = LocalIssuer::start().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "[[issuers]]\nissuer = \"{}\"\nname = \"soak\"\naudiences = [\"{AUDIENCE}\"]\njit = true\n",
            issuer.issuer()
        ),
    )?;
    let mut child = tokio::process::Command::new(crate::tessera_exe()?)
        .args(["serve", "--migrate"])
        .env_clear()
        .env("TESSERA_CONFIG", &config)
        .env("TESSERA_DATABASE_URL", database)
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        .env("TESSERA_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TESSERA_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("start tessera serve")?;
    let pid = child.id().context("the server has a pid")?;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    let started = Instant::now();
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("tessera serve did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sign = |subject: &str| {
        let mut claims = issuer.claims(subject, AUDIENCE);
        claims["exp"] = (chrono::Utc::now().timestamp() + 3600).into();
        issuer.sign("ec-1", &claims)
    };
    let recurring: Vec<String> = (0..8).map(|i| sign(&format!("soak-regular-{i}"))).collect();

    println!(
        "tessera-bench soak: {} req/s for {} min (60% new subjects, 30% recurring, 10% /healthz), server RSS at start {:.1} MiB",
        args.rate,
        args.minutes,
        rss_mib(pid)?
    );
    println!("{:>6} {:>9} {:>7} {:>8} {:>9}", "minute", "requests", "errors", "p99 ms", "RSS MiB");
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut after_warmup = None;
    let mut last = 0.0;
    let mut total_errors = 0;
    let mut fresh = 0usize;
    for minute in 1..=args.minutes {
        let mut tasks = tokio::task::JoinSet::new();
        let until = Instant::now() + Duration::from_secs(60);
        let mut i = 0u64;
        while Instant::now() < until {
            ticker.tick().await;
            i += 1;
            let request = match i % 10 {
                0 => client.get(format!("{base}/healthz")),
                1..=3 => client
                    .post(format!("{base}/v1/validate"))
                    .bearer_auth(&recurring[(i as usize / 10) % recurring.len()]),
                _ => {
                    fresh += 1;
                    client.post(format!("{base}/v1/validate")).bearer_auth(sign(&format!("soak-new-{fresh}")))
                }
            };
            tasks.spawn(async move {
                let t = Instant::now();
                let ok = request.send().await.is_ok_and(|r| r.status().is_success());
                (ok, t.elapsed())
            });
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        while let Some(done) = tasks.join_next().await {
            let (ok, latency) = done.context("a request task panicked")?;
            errors += usize::from(!ok);
            latencies.push(latency);
        }
        latencies.sort_unstable();
        let p99 = latencies.get(latencies.len().saturating_sub(1) * 99 / 100).map_or(0.0, |d| d.as_secs_f64() * 1e3);
        last = rss_mib(pid)?;
        if minute == args.warmup_minutes {
            after_warmup = Some(last);
        }
        total_errors += errors;
        println!("{minute:>6} {:>9} {errors:>7} {p99:>8.2} {last:>9.1}", latencies.len());
    }
    if let Some(warm) = after_warmup {
        println!(
            "RSS growth after minute {}: {:+.1}% ({warm:.1} → {last:.1} MiB; target < 10%); {total_errors} errors",
            args.warmup_minutes,
            (last - warm) / warm * 100.0
        );
    }
    child.kill().await.ok();
    Ok(())
}
