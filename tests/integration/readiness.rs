//! Readiness answers within `database.ready_timeout_ms` while the database is down, not after
//! the pool's acquire timeout: probes usually give up after one second.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tessera::config::DatabaseUrl;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::helpers::{Backend, TestApp, TestDb, json as body};

/// A TCP relay between the server and PostgreSQL, so that a test can take "the database" down
/// under the server's feet: [`Relay::cut`] closes the port (connections are refused, which the
/// pool retries until its acquire timeout) and drops every open connection.
struct Relay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Dropped with the task, which aborts every relayed connection.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, task }
    }

    /// Takes the database down: the port refuses connections and open ones are dropped.
    async fn cut(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_within_its_bound_while_postgres_is_down() {
    let db = TestDb::new(Backend::Postgres).await;
    let real = url::Url::parse(&db.url).unwrap();
    let target = tokio::net::lookup_host((real.host_str().unwrap(), real.port().unwrap_or(5432)))
        .await
        .unwrap()
        .next()
        .expect("the test cluster's address");
    let relay = Relay::start(target).await;
    let mut relayed = real.clone();
    relayed.set_ip_host(relay.addr.ip()).unwrap();
    relayed.set_port(Some(relay.addr.port())).unwrap();
    let mut config = db.config();
    config.database.url = DatabaseUrl::parse(relayed.as_str()).unwrap();
    // The defaults: readiness must not wait for the pool's 5 s acquire timeout.
    let bound = config.database.ready_timeout;
    assert!(bound < Duration::from_secs(1) && config.database.acquire_timeout >= Duration::from_secs(5));
    let app = TestApp::start(db, &config).await;
    let ready = body(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    assert_eq!(ready["status"], "ready");

    relay.cut().await;
    for attempt in 0..3 {
        let started = Instant::now();
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(body(response, 503).await["code"], "store_unavailable", "attempt {attempt}");
        assert!(
            elapsed < bound + Duration::from_secs(1),
            "attempt {attempt}: /readyz answered after {elapsed:?}, past its bound of {bound:?} (+1 s slack)"
        );
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness does not depend on the database");
    app.stop().await;
}
