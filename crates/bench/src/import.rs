//! `tessera-bench import`: `tessera import` of N new identities from a JSON Lines file, beside the
//! bare bootstrap rate (the provisioning service called directly on the store, as `bootstrap`'s
//! `bare`) of N other new identities at the same concurrency, in the same run, on the same
//! database; then the re-run of the same file (every identity exists: the resume path).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use serde_json::json;

use crate::bootstrap::{ISSUER, claim};
use crate::harness::drive;
use tessera::cli::import::{Format, ProgressMode, import_file, importer};
use tessera::config::{Config, IssuerConfig};
use tessera::domain::Issuer;
use tessera::service::principals::PrincipalCache;
use tessera::service::provisioning::Provisioner;
use tessera::startup::prepare_schema;
use tessera::store;
use tessera::upstream::issuers::{IssuerRegistry, outbound_client};
use tessera_testkit::ScratchDb as BenchDatabase;

/// Options of `tessera-bench import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// Identities imported (and, separately, bootstrapped) per backend; the target is stated for
    /// 1000000.
    #[arg(long, default_value_t = 100_000)]
    pub identities: usize,
    /// Concurrent provisioning calls of both paths (`tessera import --concurrency`).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Admin URL of a PostgreSQL server; a scratch database is created there and dropped after.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
    /// Do not measure SQLite.
    #[arg(long)]
    pub no_sqlite: bool,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    if args.identities == 0 || args.concurrency == 0 {
        bail!("--identities and --concurrency must be positive");
    }
    println!(
        "tessera-bench import: {} new identities per path, {} at a time; `bare` calls the provisioning \
         service directly, `import` runs tessera import on a JSON Lines file, `re-run` imports it again",
        args.identities, args.concurrency
    );
    println!(
        "{:<9} {:>11} {:>14} {:>14} {:>12} {:>14}",
        "backend", "identities", "bare/s", "import/s", "import/bare", "re-run/s"
    );
    let dir = tempfile::tempdir().context("temp dir")?;
    if !args.no_sqlite {
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        measure("sqlite", &url, dir.path(), &args).await?;
    }
    if let Some(admin) = &args.postgres {
        let database = BenchDatabase::create(Some(admin)).await?;
        let (args, dir) = (&args, dir.path());
        database.run(|url| async move { measure("postgres", &url, dir, args).await }).await?;
    }
    Ok(())
}

async fn measure(backend: &str, url: &str, dir: &Path, args: &ImportArgs) -> anyhow::Result<()> {
    let mut config = Config::for_database(url)?;
    let mut issuer = IssuerConfig::new(Issuer::parse(ISSUER)?);
    issuer.name = "bench".into();
    config.issuers = vec![issuer];
    config.database.max_connections = args.concurrency.max(16) as u32;
    let store = store::connect(&config.database).await.context("connect")?;
    prepare_schema(store.as_ref(), true).await.context("migrate")?;
    let issuers = IssuerRegistry::new(config.issuers.clone(), outbound_client(config.jwks.fetch_timeout), &config.jwks);
    let (principals, _) = PrincipalCache::with_token_cache(&config.cache);
    let provisioner = Provisioner::new(store.clone(), Arc::new(issuers), principals);
    let run_id = uuid::Uuid::new_v4().simple().to_string();

    // The file first, so that writing it is not measured.
    let file = dir.join(format!("{backend}-import.jsonl"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).context("create the import file")?);
    for i in 0..args.identities {
        let line = json!({
            "issuer": ISSUER,
            "subject": format!("{run_id}-import-{i}"),
            "email": format!("user{i}@bench.example.com"),
            "email_verified": true,
            "name": format!("Uimport{i} Bench"),
        });
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    drop(out);

    let bare = {
        let (provisioner, run_id) = (provisioner.clone(), run_id.clone());
        drive(args.concurrency, args.identities, move |i| {
            let provisioner = provisioner.clone();
            let claim = claim(&run_id, "bare", i);
            async move {
                let provisioned = provisioner.provision(&claim?).await?;
                anyhow::ensure!(provisioned.created, "the identity already existed");
                Ok(())
            }
        })
        .await?
    };

    let import = |dry_run| {
        let importer = Arc::new(importer(&config, store.clone(), dry_run));
        let file = file.clone();
        async move {
            let started = Instant::now();
            let summary = import_file(importer, &file, Format::Jsonl, args.concurrency, ProgressMode::Hidden)
                .await
                .map_err(|(e, _)| anyhow::anyhow!("import: {e}"))?;
            anyhow::Ok((summary, started.elapsed()))
        }
    };
    let (first, first_wall) = import(false).await?;
    ensure!(first.created == args.identities as u64 && first.refused == 0, "the import created {first:?}");
    let (again, again_wall) = import(false).await?;
    ensure!(again.existing == args.identities as u64, "the re-run found {again:?}");
    let import_rate = args.identities as f64 / first_wall.as_secs_f64();
    let rerun_rate = args.identities as f64 / again_wall.as_secs_f64();
    println!(
        "{backend:<9} {:>11} {:>14.0} {:>14.0} {:>11.0}% {:>14.0}",
        args.identities,
        bare.rate(),
        import_rate,
        import_rate / bare.rate() * 100.0,
        rerun_rate
    );
    store.close().await;
    std::fs::remove_file(&file).ok();
    Ok(())
}
