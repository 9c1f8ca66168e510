//! Scratch databases: a fresh SQLite file in a temporary directory, or a fresh database on a
//! PostgreSQL server, dropped when done.

/// A database for one benchmark run or test: a scratch database on a PostgreSQL server (created here,
/// dropped by [`ScratchDb::run`]) or a SQLite file in a temporary directory.
pub struct ScratchDb {
    /// The database URL.
    pub url: String,
    scratch: bool,
    _dir: tempfile::TempDir,
}

impl ScratchDb {
    /// A scratch database on the server `postgres` (an admin URL) names, else SQLite.
    pub async fn create(postgres: Option<&str>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let dir = tempfile::tempdir().context("temp dir")?;
        let Some(admin) = postgres else {
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            return Ok(Self { url, scratch: false, _dir: dir });
        };
        let mut url = url::Url::parse(admin).context("the PostgreSQL admin URL is not a URL")?;
        url.set_path(&format!("tessera_bench_{}", uuid::Uuid::new_v4().simple()));
        let url = url.to_string();
        {
            use sqlx::migrate::MigrateDatabase;
            sqlx::Postgres::create_database(&url).await.context("create the scratch database")?;
        }
        Ok(Self { url, scratch: true, _dir: dir })
    }

    /// A directory that lives as long as the database.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Runs `measure` on the database, then drops a scratch database whatever the outcome.
    pub async fn run<F, Fut>(self, measure: F) -> anyhow::Result<()>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let outcome = measure(self.url.clone()).await;
        if self.scratch {
            {
                use sqlx::migrate::MigrateDatabase;
                sqlx::Postgres::force_drop_database(&self.url).await.ok();
            }
        }
        outcome
    }
}
