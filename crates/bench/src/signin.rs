//! `tessera-bench signin`: Tessera's own CPU time per completed browser sign-in.
//!
//! A local OpenID provider runs in this process; `tessera serve` runs as a child process, so that
//! its CPU time (from `/proc/<pid>/stat`, every thread) excludes the provider's and the driver's.
//! A sign-in is `GET /auth/login` → the provider's `/authorize` → `GET /auth/callback/…` (state
//! consumed, code exchanged, id_token verified, user found, session created). The baseline,
//! measured the same way in the same run, is Tessera's CPU time per `GET /healthz`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::harness::drive;
use tessera_testkit::ScratchDb as BenchDatabase;
use tessera_testkit::local_issuer::LocalIssuer;

const CLIENT_ID: &str = "tessera-bench";
const CLIENT_SECRET: &str = "bench-client-secret";

/// Options of `tessera-bench signin`.
#[derive(Debug, Clone, clap::Args)]
pub struct SigninArgs {
    /// Sequential sign-ins measured for CPU time.
    #[arg(long, default_value_t = 1000)]
    pub sign_ins: usize,
    /// Concurrent browsers for the throughput run.
    #[arg(long, default_value_t = 8)]
    pub browsers: usize,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: SigninArgs) -> anyhow::Result<()> {
    if args.sign_ins == 0 || args.browsers == 0 {
        bail!("--sign-ins and --browsers must be positive");
    }
    let database = BenchDatabase::create(args.postgres.as_deref()).await?;
    let dir = database.dir().to_owned();
    database.run(|url| async move { measure(&args, &url, &dir).await }).await
}

async fn measure(args: &SigninArgs, database: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let provider = LocalIssuer::start().await?;
    provider.set_client(CLIENT_ID, CLIENT_SECRET);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"local\"\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret_env = \"BENCH_CLIENT_SECRET\"\n",
            provider.issuer()
        ),
    )?;
    let mut child = tokio::process::Command::new(crate::tessera_exe()?)
        .args(["serve", "--migrate"])
        .env_clear()
        .env("TESSERA_CONFIG", &config)
        .env("TESSERA_DATABASE_URL", database)
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        .env("TESSERA_PUBLIC_URL", &base)
        .env("TESSERA_COOKIE_SECURE", "false")
        .env("TESSERA_LOG", "error")
        .env("BENCH_CLIENT_SECRET", CLIENT_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("start tessera serve")?;
    let pid = child.id().context("the server has a pid")?;
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build()?;
    wait_ready(&client, &base, &mut child).await?;

    // Warm up: connections, the provider's discovery and keys, the user's first sign-in.
    for _ in 0..20 {
        sign_in(&client, &base).await?;
    }
    let healthz = format!("{base}/healthz");
    // A bare request costs far less than a sign-in: measure many more of them, so that the 10 ms
    // resolution of the kernel's CPU accounting does not matter.
    let bare_cpu = cpu_per(pid, args.sign_ins * 20, || {
        let (client, url) = (client.clone(), healthz.clone());
        async move {
            client.get(&url).send().await?.error_for_status()?;
            anyhow::Ok(())
        }
    })
    .await?;
    let started = Instant::now();
    let signin_cpu = cpu_per(pid, args.sign_ins, || sign_in(&client, &base)).await?;
    let sequential = started.elapsed() / args.sign_ins as u32;

    let run = {
        let base = base.clone();
        let client = client.clone();
        drive(args.browsers, args.sign_ins, move |_| {
            let (client, base) = (client.clone(), base.clone());
            async move { sign_in(&client, &base).await }
        })
        .await?
    };
    child.kill().await.ok();

    println!(
        "tessera-bench signin: sign-ins against a local OpenID provider (returning user), users on {}",
        if database.starts_with("sqlite") { "sqlite" } else { "postgres" }
    );
    println!(
        "sequential, {} sign-ins: {:.3} ms of Tessera CPU per sign-in ({:.1}x the {:.3} ms per bare GET /healthz), {:.2} ms wall per sign-in",
        args.sign_ins,
        ms(signin_cpu),
        signin_cpu.as_secs_f64() / bare_cpu.as_secs_f64(),
        ms(bare_cpu),
        ms(sequential)
    );
    println!(
        "{} concurrent browsers: {:.0} sign-ins/s, p50 {:.2} ms, p99 {:.2} ms",
        args.browsers,
        run.rate(),
        run.quantile_ms(0.5),
        run.quantile_ms(0.99)
    );
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn wait_ready(client: &reqwest::Client, base: &str, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == 200
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("tessera serve exited with {status}");
        }
        if Instant::now() > deadline {
            bail!("tessera serve did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One sign-in, following the redirects by hand with the login cookie.
async fn sign_in(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let login = client.get(format!("{base}/auth/login?provider=local")).send().await?;
    anyhow::ensure!(login.status() == 303, "login answered {}", login.status());
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no login cookie")?
        .to_owned();
    let authorize = header(&login, "location")?;
    let provider = client.get(authorize).send().await?;
    let callback = header(&provider, "location")?;
    let done = client.get(callback).header("cookie", cookie).send().await?;
    anyhow::ensure!(done.status() == 303, "the callback answered {}", done.status());
    Ok(())
}

fn header(response: &reqwest::Response, name: &str) -> anyhow::Result<String> {
    Ok(response.headers().get(name).and_then(|v| v.to_str().ok()).context("no Location")?.to_owned())
}

/// Tessera's CPU time per operation over `n` sequential operations.
async fn cpu_per<F, Fut>(pid: u32, n: usize, op: F) -> anyhow::Result<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let before = process_cpu(pid)?;
    for _ in 0..n {
        op().await?;
    }
    let used = process_cpu(pid)?.saturating_sub(before);
    Ok(used / n as u32)
}

/// User plus system CPU time of a process (all its threads, live or exited), from `/proc`.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Linux reports these in USER_HZ, which is 100 on every architecture Tessera runs on.
    Ok(Duration::from_millis(ticks * 10))
}
