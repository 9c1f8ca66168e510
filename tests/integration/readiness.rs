//! Readiness answers within `database.ready_timeout_ms` while the database is down, not after
//! the pool's acquire timeout: probes usually give up after one second.

use std::time::{Duration, Instant};

use tessera::config::DatabaseUrl;

use crate::helpers::{Backend, Relay, TestApp, TestDb, json as body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_within_its_bound_while_postgres_is_down() {
    let db = TestDb::new(Backend::Postgres).await;
    let relay = Relay::start(&db.url).await;
    let mut config = db.config();
    config.database.url = DatabaseUrl::parse(&relay.url).unwrap();
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
