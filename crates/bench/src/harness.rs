//! What every benchmark shares: driving operations on concurrent tasks and reading the run.

use std::time::{Duration, Instant};

/// Latencies and wall time of one measured run.
#[derive(Debug, Clone)]
pub struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Run {
    /// Builds a run from per-operation latencies and the wall time of the whole run.
    pub fn new(mut latencies: Vec<Duration>, wall: Duration) -> Self {
        latencies.sort_unstable();
        Self { latencies, wall }
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of latency, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

/// Runs `ops` operations on `clients` concurrent tasks; `op(i)` performs operation `i`.
pub async fn drive<F, Fut, E>(clients: usize, ops: usize, op: F) -> Result<Run, E>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: Send + 'static,
{
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let next = next.clone();
        let op = op.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= ops {
                    return Ok(latencies);
                }
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(ops);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("benchmark task panicked")?);
    }
    Ok(Run::new(all, started.elapsed()))
}

/// A Tessera server running on a task of this process until [`InProcess::stop`].
pub struct InProcess {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    /// Serves `app` until stopped.
    pub fn start(app: tessera::startup::Application) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self { stop, server }
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await??;
        Ok(())
    }
}

/// A Tessera server of a configuration on a task of this process, on its database's schema
/// migrated first.
pub struct Served {
    /// The server's store.
    pub store: std::sync::Arc<dyn tessera::store::Store>,
    /// `http://` and the address it listens on.
    pub base: String,
    /// The server, to stop.
    pub server: InProcess,
}

impl Served {
    /// Connects, migrates and serves `config`.
    pub async fn start(config: &tessera::config::Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let store = tessera::store::connect(&config.database).await.context("connect")?;
        tessera::startup::prepare_schema(store.as_ref(), true).await.context("migrate")?;
        let app = tessera::startup::Application::build_with_store(config, store.clone()).await?;
        let base = format!("http://{}", app.local_addr());
        Ok(Self { store, base, server: InProcess::start(app) })
    }
}

/// The issuer entry `bench` of the local OpenID provider, accepting `audience`.
pub fn bench_issuer(
    issuer: &tessera_testkit::local_issuer::LocalIssuer,
    audience: &str,
) -> anyhow::Result<tessera::config::IssuerConfig> {
    let mut config = tessera::config::IssuerConfig::new(tessera::domain::Issuer::parse(issuer.issuer())?);
    config.name = "bench".into();
    config.audiences = vec![audience.into()];
    Ok(config)
}
