//! `tessera-bench`: benchmarks of Tessera's hot paths. Every figure is printed beside a baseline
//! measured in the same run, as a ratio, because shared machines are noisy. Benchmarks are not
//! tests: nothing here asserts on timing. `scripts/bench NAME` builds and runs it.

mod bootstrap;
mod caches;
mod connections;
mod harness;
mod import;
mod me;
mod op;
mod purge;
mod scale;
mod scrape;
mod signin;
mod soak;
mod validate;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The `tessera` binary's allocator, so that in-process benchmarks measure what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks of the hot paths, printed beside baselines measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "tessera-bench", version, about)]
struct Cli {
    /// Which benchmark.
    #[command(subcommand)]
    which: Bench,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
enum Bench {
    /// Provisioning over HTTP against the bare provisioning service, on SQLite and PostgreSQL,
    /// plus start-up time and idle memory.
    Bootstrap(bootstrap::BootstrapArgs),
    /// `tessera import` of new identities from a file against the bare provisioning service, on
    /// SQLite and PostgreSQL, and the re-run of the same file.
    Import(import::ImportArgs),
    /// `/v1/validate` over HTTP against its composed ceiling (in-process verification and a bare
    /// endpoint of the same stack), RS256 and ES256.
    Validate(validate::ValidateArgs),
    /// `/v1/validate` of never-seen tokens of random identities as the identity table grows
    /// (1,000 then 1,000,000 rows loaded as a fixture), against the smallest size.
    Scale(scale::ScaleArgs),
    /// Tessera's own CPU time per browser sign-in against a local OpenID provider, and
    /// sign-ins/s at several concurrent browsers.
    Signin(signin::SigninArgs),
    /// Connected accounts: create-or-reuse and token reads at many concurrent members, beside a
    /// bare single-row SELECT of the same database.
    Connections(connections::ConnectionsArgs),
    /// `GET /v1/me` with a session cookie at many connections, beside a bare single-row SELECT.
    Me(me::MeArgs),
    /// The OpenID Provider: code exchanges, refresh grants and client_credentials tokens beside
    /// the store transactions and signing they run; introspection and forward-auth beside bare
    /// HTTP and in-process verification.
    Op(op::OpArgs),
    /// Mixed load at a steady rate for minutes against a `tessera serve` child: requests,
    /// errors, p99 and the server's resident memory per minute.
    Soak(soak::SoakArgs),
    /// The memory of each validation cache at its entry limit, beside a plain map of the same
    /// entries, and whether expired entries give their memory back for reuse.
    Caches(caches::CachesArgs),
    /// What a change to one user costs the instance that makes it (its caches purged of the
    /// user) as the principal cache fills, against a small cache in the same run.
    Purge(purge::PurgeArgs),
    /// Webhook delivery to a local receiver (events/s, lag from commit to receipt) beside the
    /// bare outbox insert rate of the same changes.
    Webhooks(webhooks::WebhooksArgs),
    /// The webhook fan-out of a backlog of events into deliveries, for one endpoint and for many,
    /// in the same run.
    Fanout(webhooks::FanOutArgs),
    /// The cost of a `/metrics` scrape, as its rate beside `GET /healthz` in the same run.
    Metrics(scrape::MetricsArgs),
}

/// The `tessera` binary the benchmarks start: `TESSERA_BIN`, else the one beside this binary
/// (both are built into the same target directory).
fn tessera_exe() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TESSERA_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().context("locate tessera-bench")?;
    let exe = me.with_file_name(format!("tessera{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(exe.exists(), "no tessera binary at {}: build it, or set TESSERA_BIN", exe.display());
    Ok(exe)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Per-request logs would be measured along with the requests.
    let filter = std::env::var("TESSERA_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tessera-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.which {
            Bench::Bootstrap(args) => bootstrap::run(args).await,
            Bench::Import(args) => import::run(args).await,
            Bench::Validate(args) => validate::run(args).await,
            Bench::Scale(args) => scale::run(args).await,
            Bench::Signin(args) => signin::run(args).await,
            Bench::Connections(args) => connections::run(args).await,
            Bench::Soak(args) => soak::run(args).await,
            Bench::Me(args) => me::run(args).await,
            Bench::Op(args) => op::run(args).await,
            Bench::Caches(args) => caches::run(args).await,
            Bench::Purge(args) => purge::run(args).await,
            Bench::Webhooks(args) => webhooks::run(args).await,
            Bench::Fanout(args) => webhooks::fan_out(args).await,
            Bench::Metrics(args) => scrape::run(args).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
