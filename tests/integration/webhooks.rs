//! Webhooks: events from the outbox delivered to receivers running in the test (axum on
//! 127.0.0.1:0), signatures checked with an HMAC computed here, retries, order, replay, many
//! instances and the SSRF guard.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::{Value, json};
use tessera::config::Config;
use tessera::crypto::keyring::KeyRing;

use crate::helpers::{Backend, Sql, TestApp, TestDb, eventually, eventually_within, identity, json, on_both_backends};

on_both_backends!(
    events_arrive_signed_once_per_endpoint_and_filtered_by_type,
    a_failing_endpoint_is_retried_in_order_without_delaying_a_healthy_one,
    a_replay_sends_events_again,
    replays_sent_at_once_keep_one_delivery_per_event,
    concurrent_changes_of_different_fields_all_stick,
    an_endpoint_enabled_again_sends_what_waited_for_it,
    an_endpoint_pointed_elsewhere_sends_its_queue_there_at_once,
    a_signing_key_out_of_the_key_ring_fails_no_backlog_unsent,
    a_delivery_fails_for_good_when_retries_run_out,
    a_backlog_held_back_past_its_time_fails_without_a_request_each,
    a_slow_receiver_gets_every_event_however_long_its_backlog_waits,
    the_last_retry_comes_when_the_time_to_give_up_is_reached,
    deliveries_of_event_types_unsubscribed_since_are_not_sent,
    a_shutdown_finishes_the_request_under_way_and_releases_the_lease,
    a_shutdown_writes_the_counts_before_waiting_for_a_slow_delivery,
    a_rotation_during_a_batch_signs_its_next_requests,
    two_instances_deliver_each_event_once_per_endpoint,
    registrations_at_once_stop_at_the_limit,
);

/// One request a receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) id: String,
    pub(crate) timestamp: String,
    pub(crate) signature: String,
    pub(crate) body: Value,
    pub(crate) raw: Bytes,
}

/// A webhook receiver: records every request; answers 503 while `failing`, after `slow_ms`,
/// and not while `held` (until [`Receiver::release`]).
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    failing: Arc<AtomicBool>,
    slow_ms: Arc<AtomicU64>,
    held: Arc<AtomicBool>,
    released: Arc<tokio::sync::Notify>,
    pub(crate) url: String,
}

impl Receiver {
    pub(crate) async fn start() -> Self {
        let mut receiver = Receiver::default();
        let app = Router::new().route("/hook", post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        receiver.url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    pub(crate) fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Answers no request until [`Receiver::release`]: a request in flight while the test acts.
    pub(crate) fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Answers the requests held, and the next ones.
    pub(crate) fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.released.notify_waiters();
    }

    /// The event type of every request, in order of arrival.
    pub(crate) fn types(&self) -> Vec<String> {
        self.all().iter().map(|r| r.body["type"].as_str().unwrap().to_owned()).collect()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    receiver.got.lock().unwrap().push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: serde_json::from_slice(&body).unwrap(),
        raw: body,
    });
    loop {
        let released = receiver.released.notified();
        if !receiver.held.load(Ordering::SeqCst) {
            break;
        }
        released.await;
    }
    let slow = receiver.slow_ms.load(Ordering::SeqCst);
    if slow > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
    }
    if receiver.failing.load(Ordering::SeqCst) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::NO_CONTENT }
}

/// The Standard Webhooks check, computed here: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under the base64 key after `whsec_`.
pub(crate) fn signature_valid(secret: &str, received: &Received) -> bool {
    let expected = signature(secret, received);
    received.signature.split(' ').any(|s| s == expected)
}

/// The `v1,…` signature of `received` (its id, timestamp and raw body) under `secret`.
fn signature(secret: &str, received: &Received) -> String {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").expect("whsec_ prefix")).unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut signed = format!("{}.{}.", received.id, received.timestamp).into_bytes();
    signed.extend_from_slice(&received.raw);
    format!("v1,{}", STANDARD.encode(hmac::sign(&key, &signed).as_ref()))
}

/// Whether README's receiver check (its Python `verify`, run with `python -O`, which drops
/// `assert`s) accepts `received` under `secret`: what receivers copy is checked against what
/// Tessera sends.
async fn readme_verify_accepts(secret: &str, received: &Received) -> bool {
    let python = std::env::var("TESSERA_TEST_PYTHON")
        .expect("TESSERA_TEST_PYTHON is not set: run the suite with `scripts/test`, which installs Python");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```python\nimport base64, hashlib, hmac, time\n").expect("README's verify");
    let code = &readme[start + "```python\n".len()..];
    let code = &code[..code.find("```").unwrap()];
    let script = format!(
        "{code}\nimport os\nverify(os.environ['SECRET'], {{'webhook-id': os.environ['ID'], \
         'webhook-timestamp': os.environ['TIMESTAMP'], 'webhook-signature': os.environ['SIGNATURE']}}, \
         base64.b64decode(os.environ['BODY']))\n"
    );
    let mut command = tokio::process::Command::new(python);
    command
        .args(["-O", "-c", &script])
        .env("SECRET", secret)
        .env("ID", &received.id)
        .env("TIMESTAMP", &received.timestamp)
        .env("SIGNATURE", &received.signature)
        .env("BODY", STANDARD.encode(&received.raw));
    let out = crate::helpers::run_tool(&mut command, "README's verify", std::time::Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || stderr.contains("ValueError"), "README's verify broke: {stderr}");
    out.status.success()
}

pub(crate) fn with_keyring(config: &mut Config) {
    config.encryption = Some(Arc::new(KeyRing::parse(&with_keyring_value()).unwrap()));
}

/// The key ring [`with_keyring`] configures, as `TESSERA_ENCRYPTION_KEYS` would give it.
fn with_keyring_value() -> String {
    format!("k1:{}", STANDARD.encode([7u8; 32]))
}

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, with_keyring).await
}

/// Registers an endpoint; returns its id and secret.
pub(crate) async fn register(app: &TestApp, body: Value) -> (String, String) {
    let created = json(app.admin(Method::POST, "/admin/webhooks").json(&body).send().await.unwrap(), 201).await;
    (created["id"].as_str().unwrap().to_owned(), created["secret"].as_str().unwrap().to_owned())
}

pub(crate) async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    let log =
        json(app.admin(Method::GET, &format!("/admin/webhooks/{id}/deliveries")).send().await.unwrap(), 200).await;
    log["deliveries"].as_array().unwrap().clone()
}

async fn disable(app: &TestApp, user: &str, disabled: bool) {
    let path = format!("/admin/users/{user}");
    json(app.admin(Method::PATCH, &path).json(&json!({ "disabled": disabled })).send().await.unwrap(), 200).await;
}

async fn events_arrive_signed_once_per_endpoint_and_filtered_by_type(backend: Backend) {
    let app = spawn(backend).await;
    let (all, only_disabled) = (Receiver::start().await, Receiver::start().await);
    let (all_id, secret) = register(&app, json!({ "url": all.url })).await;
    let (_, other_secret) = register(&app, json!({ "url": only_disabled.url, "event_types": ["user.disabled"] })).await;

    let created = json(app.bootstrap(&identity("ada", "ada@example.com", Some("Ada Lovelace"))).await, 201).await;
    let user = created["user_id"].as_str().unwrap();
    // An idempotent re-bootstrap writes no event.
    json(app.bootstrap(&identity("ada", "ada@example.com", Some("Ada Lovelace"))).await, 200).await;
    disable(&app, user, true).await;
    disable(&app, user, false).await;

    eventually("both events reach the first endpoint", || async { all.all().len() >= 3 }).await;
    eventually("user.disabled reaches the second", || async { !only_disabled.all().is_empty() }).await;
    // The latest event arrived; an earlier one (from the re-bootstrap) would have come before it.
    assert_eq!(all.types(), ["user.created", "user.disabled", "user.enabled"], "one user.created only");
    assert_eq!(only_disabled.types(), ["user.disabled"], "the filter holds");

    for received in all.all() {
        assert!(signature_valid(&secret, &received), "the signature verifies: {received:?}");
        assert!(!signature_valid(&other_secret, &received), "each endpoint has its own key");
        let age = chrono::Utc::now().timestamp() - received.timestamp.parse::<i64>().unwrap();
        assert!((0..300).contains(&age), "webhook-timestamp is the sending time");
    }
    let first = &all.all()[0];
    assert!(readme_verify_accepts(&secret, first).await, "README's check accepts a delivery");
    assert!(!readme_verify_accepts(&other_secret, first).await, "and refuses another key's");
    let tampered = Received { raw: Bytes::from(first.raw.to_ascii_uppercase()), ..first.clone() };
    assert!(!readme_verify_accepts(&secret, &tampered).await, "and a changed body");
    let mut stale =
        Received { timestamp: (first.timestamp.parse::<i64>().unwrap() - 600).to_string(), ..first.clone() };
    stale.signature = signature(&secret, &stale);
    assert!(!readme_verify_accepts(&secret, &stale).await, "and a well-signed request sent ten minutes ago");
    assert_eq!(first.body["data"]["user"]["id"], user);
    assert_eq!(first.body["data"]["team"]["slug"], "adas-team");
    assert_eq!(first.body["data"]["identity"]["subject"], "ada");
    assert!(first.body["timestamp"].is_string());
    let ids: std::collections::HashSet<_> = all.all().iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 3, "each event has its own webhook-id");
    // The log in pages: `next_before` leads on while there is more, and is null on the last page,
    // also when that page is full.
    let page = |query: String| {
        let request = app.admin(Method::GET, &format!("/admin/webhooks/{all_id}/deliveries?{query}"));
        async move { json(request.send().await.unwrap(), 200).await }
    };
    let whole = page("limit=3".into()).await;
    assert_eq!(whole["deliveries"].as_array().unwrap().len(), 3);
    assert!(whole["next_before"].is_null(), "three of three: {whole}");
    let seqs: Vec<i64> =
        whole["deliveries"].as_array().unwrap().iter().map(|d| d["event_seq"].as_i64().unwrap()).collect();
    let first = page("limit=2".into()).await;
    assert_eq!(first["next_before"], seqs[1], "{first}");
    let rest = page(format!("limit=2&before={}", seqs[1])).await;
    assert_eq!(
        rest["deliveries"].as_array().unwrap().iter().map(|d| d["event_seq"].clone()).collect::<Vec<_>>(),
        [seqs[2]]
    );
    assert!(rest["next_before"].is_null(), "{rest}");
    app.stop().await;
}

async fn a_failing_endpoint_is_retried_in_order_without_delaying_a_healthy_one(backend: Backend) {
    let app = spawn(backend).await;
    let (flaky, healthy) = (Receiver::start().await, Receiver::start().await);
    flaky.failing.store(true, Ordering::SeqCst);
    let (flaky_id, _) = register(&app, json!({ "url": flaky.url })).await;
    register(&app, json!({ "url": healthy.url })).await;

    let created = json(app.bootstrap(&identity("bob", "bob@example.com", None)).await, 201).await;
    let user = created["user_id"].as_str().unwrap().to_owned();
    disable(&app, &user, true).await;
    eventually("the healthy endpoint gets both events", || async { healthy.all().len() == 2 }).await;
    eventually("the flaky endpoint was tried three times", || async { flaky.all().len() >= 3 }).await;
    assert!(
        flaky.types().iter().all(|t| t == "user.created"),
        "the second event waits while the first is retried: {:?}",
        flaky.types()
    );
    let log = deliveries(&app, &flaky_id).await;
    let first = log.iter().find(|d| d["event_type"] == "user.created").unwrap();
    assert_eq!(first["state"], "pending");
    assert_eq!(first["last_status"], 503);
    assert!(first["attempts"].as_i64().unwrap() >= 2);
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(time(&first["next_attempt_at"]) > time(&first["last_attempt_at"]), "backs off");

    flaky.failing.store(false, Ordering::SeqCst);
    eventually("the flaky endpoint recovers", || async {
        deliveries(&app, &flaky_id).await.iter().all(|d| d["state"] == "delivered")
    })
    .await;
    let types = flaky.types();
    let last_created = types.iter().rposition(|t| t == "user.created").unwrap();
    assert_eq!(types[last_created + 1..], ["user.disabled"], "in sequence order, once delivered: {types:?}");
    app.stop().await;
}

async fn a_replay_sends_events_again(backend: Backend) {
    let app = spawn(backend).await;
    let receiver = Receiver::start().await;
    let before = chrono::Utc::now() - chrono::TimeDelta::seconds(5);
    // An event older than the endpoint: not sent, until replayed.
    json(app.bootstrap(&identity("early", "early@example.com", None)).await, 201).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (id, secret) = register(&app, json!({ "url": receiver.url })).await;
    json(app.bootstrap(&identity("late", "late@example.com", None)).await, 201).await;
    eventually("the new event arrives", || async { receiver.all().len() == 1 }).await;

    let since = before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let path = format!("/admin/webhooks/{id}/replay?since={}", since.replace('+', "%2B"));
    // Not answered yet, so that the replayed later event still waits behind the earlier one.
    receiver.hold();
    let replayed = json(app.admin(Method::POST, &path).send().await.unwrap(), 202).await;
    assert_eq!(replayed["scheduled"], 2);
    // A delivery scheduled again shows no attempt of its earlier series.
    let log = deliveries(&app, &id).await;
    receiver.release();
    let waiting: Vec<_> = log.iter().filter(|d| d["attempts"] == 0).collect();
    assert!(!waiting.is_empty(), "{log:?}");
    for d in waiting {
        assert!(d["last_status"].is_null() && d["last_attempt_at"].is_null() && d["last_error"].is_null(), "{d}");
    }
    eventually("both events arrive", || async { receiver.all().len() == 3 }).await;
    let got = receiver.all();
    assert_eq!(got[1].body["data"]["identity"]["subject"], "early", "in sequence order");
    assert_eq!(got[2].id, got[0].id, "a replay keeps the event's webhook-id");
    assert!(got.iter().all(|r| signature_valid(&secret, r)));

    let bad = app.admin(Method::POST, &format!("/admin/webhooks/{id}/replay?since=yesterday")).send().await.unwrap();
    assert_eq!(json(bad, 400).await["code"], "invalid_since");
    app.stop().await;
}

/// Eight replays of one window sent at once: each is answered, and the log keeps one delivery
/// per event and endpoint, each sent again — none written twice, none refused for a conflict.
async fn replays_sent_at_once_keep_one_delivery_per_event(backend: Backend) {
    let app = spawn(backend).await;
    let receiver = Receiver::start().await;
    let before = chrono::Utc::now() - chrono::TimeDelta::seconds(5);
    let (id, _) = register(&app, json!({ "url": receiver.url })).await;
    for name in ["ann", "bea", "cid"] {
        json(app.bootstrap(&identity(name, &format!("{name}@example.com"), None)).await, 201).await;
    }
    eventually("the three events arrive", || async { receiver.all().len() == 3 }).await;
    let since = before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let path = format!("/admin/webhooks/{id}/replay?since={}", since.replace('+', "%2B"));
    let replays: Vec<_> = (0..8).map(|_| app.admin(Method::POST, &path)).collect();
    // Each counts what it scheduled: an event another replay scheduled after this one began is
    // on its way already, and not scheduled twice.
    let mut scheduled = Vec::new();
    for answer in crate::helpers::send_at_once(&replays).await {
        scheduled.push(json(answer, 202).await["scheduled"].as_u64().unwrap());
    }
    assert!(scheduled.iter().all(|n| *n <= 3) && scheduled.iter().sum::<u64>() >= 3, "{scheduled:?}");
    assert_eq!(app.db.sql().await.count("webhook_deliveries").await, 3, "one row per event");
    eventually("each is sent again", || async {
        receiver.all().len() >= 6 && deliveries(&app, &id).await.iter().all(|d| d["state"] == "delivered")
    })
    .await;
    let sent = receiver.all();
    // A replay that finds an event still waiting from another's counts it as scheduled too, and
    // it goes once: never more sends than schedulings.
    assert!(sent.len() as u64 <= 3 + scheduled.iter().sum::<u64>(), "{} sent: {scheduled:?}", sent.len());
    let ids: std::collections::HashSet<_> = sent.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 3, "the same three events, by their webhook-id");
    app.stop().await;
}

/// Two instances on one database (one SQLite file, or one PostgreSQL database) fan events out
/// and deliver them: one delivery row per event and endpoint, each sent once.
async fn two_instances_deliver_each_event_once_per_endpoint(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    with_keyring(&mut config);
    let shared = db.share();
    let a = TestApp::start(db, &config).await;
    let b = TestApp::start(shared, &config).await;
    let (one, two) = (Receiver::start().await, Receiver::start().await);
    let (one_id, _) = register(&a, json!({ "url": one.url })).await;
    register(&b, json!({ "url": two.url })).await;

    const USERS: usize = 40;
    for i in 0..USERS {
        let app = if i % 2 == 0 { &a } else { &b };
        json(app.bootstrap(&identity(&format!("u{i}"), &format!("u{i}@example.com"), None)).await, 201).await;
    }
    // Normally well under a second; on a loaded machine an instance may lose its lease's release
    // and the other must wait for the lease to run out (30 s), which is how leases recover.
    eventually_within("every event reaches both endpoints", std::time::Duration::from_secs(60), || async {
        one.all().len() >= USERS && two.all().len() >= USERS
    })
    .await;
    let log = deliveries(&a, &one_id).await;
    assert_eq!(log.len(), USERS);
    assert!(log.iter().all(|d| d["state"] == "delivered" && d["attempts"] == 1), "{log:?}");
    let sql = a.db.sql().await;
    assert_eq!(sql.count("webhook_deliveries").await, 2 * USERS as i64, "one row per event and endpoint");
    assert_eq!(sql.count("webhook_deliveries WHERE state = 'delivered' AND attempts = 1").await, 2 * USERS as i64);
    for receiver in [&one, &two] {
        let ids: std::collections::HashSet<_> = receiver.all().iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids.len(), USERS);
        assert_eq!(receiver.all().len(), USERS, "no event was sent twice");
        let seqs: Vec<i64> = log.iter().rev().map(|d| d["event_seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    }
    a.stop().await;
    b.stop().await;
}

/// Deliveries that waited for a disabled endpoint longer than the time to give up are sent once
/// it is enabled again: their time counts from then.
async fn an_endpoint_enabled_again_sends_what_waited_for_it(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        config.webhooks.give_up_after = std::time::Duration::from_secs(1);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.hold();
    receiver.failing.store(true, Ordering::SeqCst);
    let (id, _) = register(&app, json!({ "url": receiver.url })).await;
    for name in ["first", "second"] {
        json(app.bootstrap(&identity(name, &format!("{name}@example.com"), None)).await, 201).await;
    }
    // The first is being sent (its answer held) when the endpoint is disabled, which leaves its
    // answer unrecorded; the second waits behind it.
    eventually("the first delivery is under way, the second queued", || async {
        receiver.all().len() == 1 && deliveries(&app, &id).await.len() == 2
    })
    .await;
    let path = format!("/admin/webhooks/{id}");
    json(app.admin(Method::PATCH, &path).json(&json!({ "enabled": false })).send().await.unwrap(), 200).await;
    // Past both's time to give up, the first answered with a failure (which, recorded, would fail
    // it for good).
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    receiver.release();
    let log = deliveries(&app, &id).await;
    assert!(log.iter().all(|d| d["state"] == "pending"), "a disabled endpoint's deliveries wait: {log:?}");
    receiver.failing.store(false, Ordering::SeqCst);
    json(app.admin(Method::PATCH, &path).json(&json!({ "enabled": true })).send().await.unwrap(), 200).await;
    eventually("both deliveries are sent", || async {
        deliveries(&app, &id).await.iter().all(|d| d["state"] == "delivered")
    })
    .await;
    // The first again (its answer was not recorded), then the second; the answer not recorded
    // is not counted either (as a failure for good it would call for an alert).
    assert_eq!(receiver.types(), ["user.created", "user.created", "user.created"]);
    let counted_at = async |app: &TestApp, result: &str| {
        let (_, samples) = crate::metrics::scrape(app).await;
        let labels = [("endpoint", id.as_str()), ("result", result)];
        crate::metrics::value(&samples, "tessera_webhook_attempts_total", &labels)
    };
    eventually("both deliveries are counted", || async { counted_at(&app, "delivered").await == 2.0 }).await;
    assert_eq!((counted_at(&app, "failed").await, counted_at(&app, "retry").await), (0.0, 0.0));
    app.stop().await;
}

/// Pointing an endpoint at a new address (the usual remedy for failing deliveries) starts its
/// queue's series of attempts anew there, not after the backoff earned at the old address.
async fn an_endpoint_pointed_elsewhere_sends_its_queue_there_at_once(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        config.webhooks.retry_base = std::time::Duration::from_secs(600);
        config.webhooks.retry_max = std::time::Duration::from_secs(600);
    })
    .await;
    let (dead, alive) = (Receiver::start().await, Receiver::start().await);
    dead.failing.store(true, Ordering::SeqCst);
    let (id, _) = register(&app, json!({ "url": dead.url })).await;
    json(app.bootstrap(&identity("dee", "dee@example.com", None)).await, 201).await;
    eventually("the first attempt failed", || async {
        deliveries(&app, &id).await.first().is_some_and(|d| d["attempts"] == 1)
    })
    .await;
    let path = format!("/admin/webhooks/{id}");
    json(app.admin(Method::PATCH, &path).json(&json!({ "url": alive.url })).send().await.unwrap(), 200).await;
    eventually("the delivery is sent to the new address", || async {
        deliveries(&app, &id).await.iter().all(|d| d["state"] == "delivered")
    })
    .await;
    assert_eq!(alive.types(), ["user.created"]);
    app.stop().await;
}

/// A signing key the key ring no longer holds is this side's fault, not the endpoint's: a backlog
/// held back past its time behind it fails with that reason, not as if the endpoint were not
/// answering, and nothing goes out unsigned.
async fn a_signing_key_out_of_the_key_ring_fails_no_backlog_unsent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    with_keyring(&mut config);
    config.webhooks.retry_base = std::time::Duration::from_secs(600);
    config.webhooks.retry_max = std::time::Duration::from_secs(600);
    let shared = db.share();
    let receiver = Receiver::start().await;
    receiver.failing.store(true, Ordering::SeqCst);
    // A first instance queues three deliveries; the first fails (503) and waits for its retry,
    // the two others behind it.
    let first = TestApp::start(shared, &config).await;
    let (id, _) = register(&first, json!({ "url": receiver.url })).await;
    for name in ["one", "two", "three"] {
        json(first.bootstrap(&identity(name, &format!("{name}@example.com"), None)).await, 201).await;
    }
    eventually("three deliveries queued, the first tried", || async {
        let log = deliveries(&first, &id).await;
        log.len() == 3 && log.iter().any(|d| d["attempts"] == 1)
    })
    .await;
    let sql = first.db.sql().await;
    // The OpenID Provider's signing key, under the same key, would stop the next start.
    sql.exec("DELETE FROM signing_keys").await.unwrap();
    first.stop().await;
    // An hour ago, as if the instances had been down since: all three are past their time.
    let earlier = match &sql {
        Sql::Sqlite(_) => "scheduled_at = scheduled_at - 3600000000, next_attempt_at = next_attempt_at - 3600000000",
        Sql::Postgres(_) => {
            "scheduled_at = scheduled_at - interval '1 hour', next_attempt_at = next_attempt_at - interval '1 hour'"
        }
    };
    sql.exec(&format!("UPDATE webhook_deliveries SET {earlier}")).await.unwrap();
    // Another key ring, without the key the endpoint's secret was encrypted under.
    config.encryption = Some(Arc::new(KeyRing::parse(&format!("k2:{}", STANDARD.encode([8u8; 32]))).unwrap()));
    config.webhooks.give_up_after = std::time::Duration::from_secs(1);
    let app = TestApp::start(db, &config).await;
    eventually("every delivery failed for good", || async {
        deliveries(&app, &id).await.iter().all(|d| d["state"] == "failed")
    })
    .await;
    for delivery in deliveries(&app, &id).await {
        let error = delivery["last_error"].as_str().unwrap();
        assert!(error.starts_with("not sent: the signing key cannot be decrypted"), "{delivery}");
    }
    assert_eq!(receiver.all().len(), 1, "nothing more sent, unsigned or not");
    app.stop().await;
}

async fn a_delivery_fails_for_good_when_retries_run_out(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        config.webhooks.give_up_after = std::time::Duration::from_secs(1);
    })
    .await;
    let dead = Receiver::start().await;
    dead.failing.store(true, Ordering::SeqCst);
    let (id, _) = register(&app, json!({ "url": dead.url })).await;
    let created = json(app.bootstrap(&identity("cy", "cy@example.com", None)).await, 201).await;
    disable(&app, created["user_id"].as_str().unwrap(), true).await;
    eventually("both deliveries fail for good", || async {
        let log = deliveries(&app, &id).await;
        log.len() == 2 && log.iter().all(|d| d["state"] == "failed")
    })
    .await;
    let log = deliveries(&app, &id).await;
    assert!(log.iter().all(|d| d["next_attempt_at"].is_null()), "{log:?}");
    // The first event was retried until its time ran out; the second, scheduled as early but held
    // back meanwhile, had run out of time by the time it was due (sent once, or not at all).
    assert_eq!(log[1]["event_type"], "user.created");
    assert_eq!(log[1]["last_error"], "answered 503 Service Unavailable");
    assert!(log[1]["attempts"].as_i64().unwrap() >= 2, "{log:?}");
    app.stop().await;
}

/// Behind an endpoint that never answers, the deliveries held back past their time fail without
/// a request each: the backlog drains at once instead of at one timeout a delivery.
async fn a_backlog_held_back_past_its_time_fails_without_a_request_each(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        config.webhooks.give_up_after = std::time::Duration::from_secs(1);
        config.webhooks.timeout = std::time::Duration::from_secs(3);
    })
    .await;
    let hanging = Receiver::start().await;
    hanging.slow_ms.store(30_000, Ordering::SeqCst);
    let (id, _) = register(&app, json!({ "url": hanging.url })).await;
    for i in 0..12 {
        json(app.bootstrap(&identity(&format!("h{i}"), &format!("h{i}@example.com"), None)).await, 201).await;
    }
    eventually("every delivery fails for good", || async {
        let log = deliveries(&app, &id).await;
        log.len() == 12 && log.iter().all(|d| d["state"] == "failed")
    })
    .await;
    // The first one was sent (and timed out); the rest were created within its 3 s timeout, so
    // they had all been held back longer than their time (1 s) by then: in each round of the
    // worker (the twelve may reach the queue over more than one) the first overdue one is sent
    // once and times out too, and the others fail unsent.
    let sent = hanging.all().len();
    assert!((1..=5).contains(&sent), "{sent} requests");
    let log = deliveries(&app, &id).await;
    let unsent = log.iter().filter(|d| d["last_error"] == tessera::worker::webhooks::NOT_SENT_PAST_GIVE_UP).count();
    assert_eq!(unsent, 12 - sent, "{log:?}");
    // Attempts counted are requests; the deliveries failed unsent are counted as dropped.
    let (_, samples) = crate::metrics::scrape(&app).await;
    let counted = |result: &str| {
        let labels = [("endpoint", id.as_str()), ("result", result)];
        crate::metrics::value(&samples, "tessera_webhook_attempts_total", &labels)
    };
    assert_eq!((counted("failed"), counted("dropped")), (sent as f64, (12 - sent) as f64));
    app.stop().await;
}

/// A receiver that answers, slowly, gets every event although the last ones wait in the queue
/// far longer than the time to give up: that time counts from a delivery's first attempt, and
/// an overdue one still gets its request.
async fn a_slow_receiver_gets_every_event_however_long_its_backlog_waits(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        config.webhooks.give_up_after = std::time::Duration::from_secs(1);
    })
    .await;
    let slow = Receiver::start().await;
    slow.slow_ms.store(1200, Ordering::SeqCst);
    let (id, _) = register(&app, json!({ "url": slow.url })).await;
    for i in 0..4 {
        json(app.bootstrap(&identity(&format!("s{i}"), &format!("s{i}@example.com"), None)).await, 201).await;
    }
    eventually_within("every delivery is delivered", std::time::Duration::from_secs(30), || async {
        let log = deliveries(&app, &id).await;
        log.len() == 4 && log.iter().all(|d| d["state"] != "pending")
    })
    .await;
    let log = deliveries(&app, &id).await;
    assert!(log.iter().all(|d| d["state"] == "delivered" && d["attempts"] == 1), "{log:?}");
    assert_eq!(slow.all().len(), 4);
    app.stop().await;
}

/// A delivery whose next wait would end after its time to give up is retried when that time is
/// reached rather than failed at once: a receiver back by then gets it.
async fn the_last_retry_comes_when_the_time_to_give_up_is_reached(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        config.webhooks.give_up_after = std::time::Duration::from_secs(2);
        config.webhooks.retry_base = std::time::Duration::from_secs(60);
        config.webhooks.retry_max = std::time::Duration::from_secs(60);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.failing.store(true, Ordering::SeqCst);
    let (id, _) = register(&app, json!({ "url": receiver.url })).await;
    json(app.bootstrap(&identity("lr", "lr@example.com", None)).await, 201).await;
    eventually("the first attempt fails", || async { receiver.all().len() == 1 }).await;
    receiver.failing.store(false, Ordering::SeqCst);
    eventually("delivered at the second attempt", || async {
        deliveries(&app, &id).await.iter().all(|d| d["state"] != "pending")
    })
    .await;
    let log = deliveries(&app, &id).await;
    assert_eq!((log[0]["state"].clone(), log[0]["attempts"].clone()), (json!("delivered"), json!(2)), "{log:?}");
    app.stop().await;
}

/// Deliveries queued for event types the endpoint no longer subscribes to are never sent.
async fn deliveries_of_event_types_unsubscribed_since_are_not_sent(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        // A retry far beyond `eventually`'s bound: the change of types must not wait for it.
        config.webhooks.retry_base = std::time::Duration::from_secs(60);
        config.webhooks.retry_max = std::time::Duration::from_secs(60);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.failing.store(true, Ordering::SeqCst);
    let (id, _) = register(&app, json!({ "url": receiver.url })).await;
    let created = json(app.bootstrap(&identity("un", "un@example.com", None)).await, 201).await;
    disable(&app, created["user_id"].as_str().unwrap(), true).await;
    eventually("the first delivery's failure is recorded", || async {
        deliveries(&app, &id).await.iter().any(|d| d["event_type"] == "user.created" && d["attempts"] == 1)
    })
    .await;
    let tried = receiver.all().len();
    let path = format!("/admin/webhooks/{id}");
    let patched = app.admin(Method::PATCH, &path).json(&json!({ "event_types": ["user.disabled"] }));
    json(patched.send().await.unwrap(), 200).await;
    receiver.failing.store(false, Ordering::SeqCst);
    // The change makes the delivery holding the queue due at once: it fails for good, unsent,
    // and the rest go on.
    eventually("user.created fails for good, unsent", || async {
        deliveries(&app, &id).await.iter().any(|d| {
            d["event_type"] == "user.created"
                && d["state"] == "failed"
                && d["last_error"] == "not sent: the endpoint no longer subscribes to user.created"
        })
    })
    .await;
    eventually("user.disabled is delivered", || async {
        deliveries(&app, &id).await.iter().any(|d| d["event_type"] == "user.disabled" && d["state"] == "delivered")
    })
    .await;
    let since = receiver.types()[tried..].to_vec();
    assert!(!since.is_empty() && since.iter().all(|t| t == "user.disabled"), "{since:?}");
    app.stop().await;
}

/// An endpoint whose signing key is encrypted under `k1`, served by an instance whose key ring has
/// lost `k1`, with an event for it; and the configuration with `k1` back.
struct LostKey {
    app: TestApp,
    receiver: Receiver,
    id: String,
    secret: String,
    restored: Config,
}

async fn an_endpoint_whose_key_the_ring_lost() -> LostKey {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = db.config();
    let ring = |value: &str| Config { encryption: Some(Arc::new(KeyRing::parse(value).unwrap())), ..config.clone() };
    let (k1, k2) = (with_keyring_value(), format!("k2:{}", STANDARD.encode([9u8; 32])));
    // First k2 (which encrypts the server's own signing keys), then a rotation to k1, under
    // which the endpoint's signing key is encrypted...
    let db = TestApp::start(db, &ring(&k2)).await.stop_keeping_db().await;
    let app = TestApp::start(db, &ring(&format!("{k1},{k2}"))).await;
    let receiver = Receiver::start().await;
    let (id, secret) = register(&app, json!({ "url": receiver.url })).await;
    let db = app.stop_keeping_db().await;
    // ... then back to a ring without k1.
    let app = TestApp::start(db, &ring(&k2)).await;
    json(app.bootstrap(&identity("eve", "eve@example.com", None)).await, 201).await;
    LostKey { app, receiver, id, secret, restored: ring(&format!("{k2},{k1}")) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_the_key_ring_lost_fails_deliveries_with_backoff_until_it_is_back() {
    let LostKey { app, receiver, id, secret, restored } = an_endpoint_whose_key_the_ring_lost().await;
    eventually("the delivery fails, and is tried again", || async {
        deliveries(&app, &id).await.first().is_some_and(|d| d["attempts"].as_i64().unwrap() >= 2)
    })
    .await;
    let log = deliveries(&app, &id).await;
    assert_eq!(log[0]["state"], "pending", "retried, not given up: {log:?}");
    assert!(log[0]["last_status"].is_null());
    let error = log[0]["last_error"].as_str().unwrap();
    assert!(error.contains("signing key") && error.contains("\"k1\""), "{error}");
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(time(&log[0]["next_attempt_at"]) > time(&log[0]["last_attempt_at"]), "backs off");
    assert!(receiver.all().is_empty(), "nothing unsigned was sent");
    let db = app.stop_keeping_db().await;

    // With k1 back, the same delivery goes out, signed.
    let app = TestApp::start(db, &restored).await;
    eventually("the delivery goes out", || async { receiver.all().len() == 1 }).await;
    assert!(signature_valid(&secret, &receiver.all()[0]));
    eventually("it is logged as delivered", || async { deliveries(&app, &id).await[0]["state"] == "delivered" }).await;
    app.stop().await;
}

/// A shutdown while a delivery is under way lets that request finish and records it, starts no
/// other, and gives the endpoint's lease back: another instance goes on at once, and the answered
/// event is not sent again.
async fn a_shutdown_finishes_the_request_under_way_and_releases_the_lease(backend: Backend) {
    let app = spawn(backend).await;
    let receiver = Receiver::start().await;
    receiver.slow_ms.store(1_000, Ordering::SeqCst);
    let (id, _) = register(&app, json!({ "url": receiver.url })).await;
    for name in ["ann", "ben"] {
        json(app.bootstrap(&identity(name, &format!("{name}@example.com"), None)).await, 201).await;
    }
    eventually("the first request is under way", || async { !receiver.all().is_empty() }).await;
    // Both events fanned out (the first request takes a second; polls go on meanwhile).
    let sql = app.db.sql().await;
    let rows = format!("webhook_deliveries WHERE endpoint_id = {}", sql.uuid(&id));
    eventually("both deliveries are scheduled", || async { sql.count(&rows).await == 2 }).await;
    let db = app.stop_keeping_db().await;
    assert_eq!(receiver.all().len(), 1, "no request started after the stop");
    let sql = db.sql().await;
    let id = sql.uuid(&id);
    let states =
        sql.texts(&format!("SELECT state FROM webhook_deliveries WHERE endpoint_id = {id} ORDER BY event_seq")).await;
    assert_eq!(states, ["delivered", "pending"], "the answered request is recorded");
    assert_eq!(sql.count(&format!("webhook_endpoints WHERE id = {id} AND lease_owner IS NULL")).await, 1, "released");
}

/// At shutdown, what requests counted in memory (here a refused admin token) is written before
/// waiting for a webhook delivery under way, which may take up to its timeout: an orchestrator's
/// grace period must not end with the counts still unwritten behind a slow endpoint.
async fn a_shutdown_writes_the_counts_before_waiting_for_a_slow_delivery(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        config.audit.flush_interval = std::time::Duration::from_secs(3600);
        config.webhooks.timeout = std::time::Duration::from_secs(10);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.slow_ms.store(30_000, Ordering::SeqCst);
    register(&app, json!({ "url": receiver.url })).await;
    json(app.bootstrap(&identity("ann", "ann@example.com", None)).await, 201).await;
    eventually("a request is under way", || async { !receiver.all().is_empty() }).await;
    let refused = app.client.get(app.url("/admin/users")).bearer_auth("wrong-admin-token-0123456789");
    assert_eq!(refused.send().await.unwrap().status(), 401);
    let sql = app.db.sql().await;
    let stopping = tokio::spawn(app.stop_keeping_db());
    eventually("the count is written", || async { sql.count("audit_events WHERE outcome = 'failure'").await >= 1 })
        .await;
    assert!(!stopping.is_finished(), "written while the delivery is still under way");
    stopping.await.unwrap();
}

/// A key rotated while a batch of deliveries is under way signs that batch's next requests: each
/// request takes the endpoint's keys as they are then, not as they were leased.
async fn a_rotation_during_a_batch_signs_its_next_requests(backend: Backend) {
    let app = spawn(backend).await;
    let receiver = Receiver::start().await;
    receiver.slow_ms.store(400, Ordering::SeqCst);
    let (id, old_secret) = register(&app, json!({ "url": receiver.url })).await;
    for name in ["ann", "ben", "cid"] {
        json(app.bootstrap(&identity(name, &format!("{name}@example.com"), None)).await, 201).await;
    }
    eventually("the first request is under way", || async { !receiver.all().is_empty() }).await;
    let rotated = app.admin(Method::POST, &format!("/admin/webhooks/{id}/secret")).send().await.unwrap();
    let secret = json(rotated, 200).await["secret"].as_str().unwrap().to_owned();
    eventually("the batch goes on", || async { receiver.all().len() == 3 }).await;
    let all = receiver.all();
    assert!(!signature_valid(&secret, &all[0]), "the first went out before the rotation");
    assert!(signature_valid(&secret, &all[2]) && signature_valid(&old_secret, &all[2]), "both keys, in the overlap");
    app.stop().await;
}

/// When the key id of an endpoint's signing key is gone for good, rotating the key is the way out:
/// a new key at once (no overlap: the old one cannot sign), and the waiting delivery goes out
/// signed with it, and with it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_the_key_ring_lost_is_replaced_by_a_rotation() {
    let LostKey { app, receiver, id, secret: old_secret, .. } = an_endpoint_whose_key_the_ring_lost().await;
    eventually("the delivery fails for want of its key", || async {
        deliveries(&app, &id).await.first().is_some_and(|d| d["attempts"].as_i64().unwrap() >= 1)
    })
    .await;
    let rotated = app.admin(Method::POST, &format!("/admin/webhooks/{id}/secret")).send().await.unwrap();
    let rotated = json(rotated, 200).await;
    let secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(secret, old_secret);
    eventually("the delivery goes out at its next attempt", || async { !receiver.all().is_empty() }).await;
    let sent = &receiver.all()[0];
    assert!(signature_valid(&secret, sent), "signed with the new key");
    assert!(!signature_valid(&old_secret, sent), "and not with the lost one");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_guard_refuses_loopback_addresses() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut open = db.config();
    with_keyring(&mut open);
    let mut guarded = open.clone();
    guarded.webhooks.allow_private_addresses = false;

    // Registered while the guard is off...
    let app = TestApp::start(db, &open).await;
    let receiver = Receiver::start().await;
    let https = receiver.url.replace("http:", "https:");
    let (literal, _) = register(&app, json!({ "url": https })).await;
    let (named, _) = register(&app, json!({ "url": https.replace("127.0.0.1", "localhost") })).await;
    let (plain, _) = register(&app, json!({ "url": receiver.url })).await;
    let db = app.stop_keeping_db().await;

    // ... and refused, at registration and at delivery, once it is on.
    let app = TestApp::start(db, &guarded).await;
    let urls = ["https://127.0.0.1:9/hook", "https://localhost:9/", "https://[::1]/", "https://169.254.169.254/"];
    for url in urls.into_iter().chain(["http://hooks.example.com/tessera"]) {
        let refused = app.admin(Method::POST, "/admin/webhooks").json(&json!({ "url": url })).send().await.unwrap();
        let body = json(refused, 400).await;
        assert_eq!((body["code"].as_str(), body["field"].as_str()), (Some("invalid_webhook_url"), Some("url")));
        // Plain http to a public host: the events (emails, names) would cross the network in clear.
        let why = if url.starts_with("http:") { "must be https" } else { "addresses are refused" };
        assert!(body["detail"].as_str().unwrap().contains(why), "{url}: {body}");
    }
    json(app.bootstrap(&identity("dee", "dee@example.com", None)).await, 201).await;
    for (id, why) in [(&literal, "public"), (&named, "public"), (&plain, "must be https")] {
        eventually("the delivery is refused", || async {
            deliveries(&app, id).await.first().is_some_and(|d| d["attempts"].as_i64().unwrap() >= 1)
        })
        .await;
        let error = deliveries(&app, id).await[0]["last_error"].as_str().unwrap().to_owned();
        assert!(error.contains(why), "{error}");
    }
    assert!(receiver.all().is_empty(), "nothing reached the loopback receiver");
    app.stop().await;
}

async fn concurrent_changes_of_different_fields_all_stick(backend: Backend) {
    let app = spawn(backend).await;
    let created = app.admin(Method::POST, "/admin/webhooks").json(&json!({ "url": "https://h.example.com/a" }));
    let created = json(created.send().await.unwrap(), 201).await;
    let path = format!("/admin/webhooks/{}", created["id"].as_str().unwrap());
    // Eight rounds of three patches at once, each naming one field.
    for round in 0..8 {
        let url = format!("https://h.example.com/{round}");
        let types = if round % 2 == 0 { json!(["user.created"]) } else { json!(["team.member.added"]) };
        let enabled = round % 2 == 1;
        let patches = [json!({ "url": url }), json!({ "event_types": types }), json!({ "enabled": enabled })];
        let tasks: Vec<_> = patches
            .into_iter()
            .map(|patch| tokio::spawn(app.admin(Method::PATCH, &path).json(&patch).send()))
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().status(), 200);
        }
        let now = json(app.admin(Method::GET, &path).send().await.unwrap(), 200).await;
        assert_eq!((now["url"].as_str(), &now["event_types"]), (Some(url.as_str()), &types), "round {round}");
        assert_eq!(now["enabled"].as_bool(), Some(enabled), "round {round}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_admin_api_validates_and_manages_endpoints() {
    let plain = TestApp::spawn(Backend::Sqlite).await;
    let refused = plain.admin(Method::POST, "/admin/webhooks").json(&json!({ "url": "https://h.example.com/" }));
    assert_eq!(json(refused.send().await.unwrap(), 503).await["code"], "encryption_not_configured");
    plain.stop().await;

    let app = spawn(Backend::Sqlite).await;
    let post = |body: Value| app.admin(Method::POST, "/admin/webhooks").json(&body).send();
    assert_eq!(json(post(json!({})).await.unwrap(), 400).await["code"], "missing_field");
    assert_eq!(
        json(post(json!({ "url": "ftp://x.example.com" })).await.unwrap(), 400).await["code"],
        "invalid_webhook_url"
    );
    let bad_type = json!({ "url": "https://h.example.com/", "event_types": ["user.created", "user.exploded"] });
    let refused = json(post(bad_type).await.unwrap(), 400).await;
    assert_eq!(refused["code"], "invalid_event_type");
    let detail = refused["detail"].as_str().unwrap();
    assert!(detail.contains("event_types[1]") && !detail.contains("exploded"), "named by position: {detail}");

    let body = json!({ "url": "https://h.example.com/hook", "event_types": ["user.created", "team.member.added"] });
    let created = post(body).await.unwrap();
    assert_eq!(created.headers()["cache-control"], "no-store", "the secret is in the body");
    let created = json(created, 201).await;
    let id = created["id"].as_str().unwrap();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let path = format!("/admin/webhooks/{id}");
    let shown = json(app.admin(Method::GET, &path).send().await.unwrap(), 200).await;
    assert!(shown.get("secret").is_none(), "the secret is shown once");
    assert_eq!(shown["event_types"], json!(["user.created", "team.member.added"]));
    let listed = json(app.admin(Method::GET, "/admin/webhooks").send().await.unwrap(), 200).await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);

    let patched = app.admin(Method::PATCH, &path).json(&json!({ "enabled": false, "event_types": [] }));
    let patched = json(patched.send().await.unwrap(), 200).await;
    assert_eq!((patched["enabled"].as_bool(), patched["event_types"].clone()), (Some(false), json!([])));
    let empty = app.admin(Method::PATCH, &path).json(&json!({})).send().await.unwrap();
    assert_eq!(json(empty, 400).await["code"], "invalid_request", "a change that names nothing");
    let unchanged = json(app.admin(Method::GET, &path).send().await.unwrap(), 200).await;
    assert_eq!(unchanged["updated_at"], patched["updated_at"], "nothing was written");
    for query in ["limit=0", "limit=501", "page=2"] {
        let listed = app.admin(Method::GET, &format!("{path}/deliveries?{query}")).send().await.unwrap();
        assert_eq!(json(listed, 400).await["code"], "invalid_request", "{query}");
    }
    for before in ["0", "-5", "x"] {
        let listed = app.admin(Method::GET, &format!("{path}/deliveries?before={before}")).send().await.unwrap();
        assert_eq!(json(listed, 400).await["code"], "invalid_cursor", "{before}");
    }
    let stored = app.db.sql().await.blobs("SELECT secret FROM webhook_endpoints").await;
    let key = STANDARD.decode(created["secret"].as_str().unwrap().trim_start_matches("whsec_")).unwrap();
    assert_eq!(key.len(), 32);
    assert!(!stored[0].windows(32).any(|w| w == key.as_slice()), "the key is stored encrypted");

    assert_eq!(app.admin(Method::DELETE, &path).send().await.unwrap().status(), 204);
    assert_eq!(json(app.admin(Method::GET, &path).send().await.unwrap(), 404).await["code"], "webhook_not_found");
    let bad = app.admin(Method::GET, "/admin/webhooks/nope").send().await.unwrap();
    assert_eq!(json(bad, 400).await["code"], "invalid_webhook_id");
    assert_eq!(plain_unauthenticated(&app).await, 401);
    app.stop().await;
}

/// The admin API registers at most 100 endpoints: registrations sent at once near the limit pass
/// it by none (each counted under the registration lock), and a deletion makes room again.
async fn registrations_at_once_stop_at_the_limit(backend: Backend) {
    let app = spawn(backend).await;
    let post = || app.admin(Method::POST, "/admin/webhooks").json(&json!({ "url": "https://h.example.com/hook" }));
    for _ in 0..97 {
        json(post().send().await.unwrap(), 201).await;
    }
    let answers = crate::helpers::send_at_once(&(0..8).map(|_| post()).collect::<Vec<_>>()).await;
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 201, 201, 409, 409, 409, 409, 409]);
    for refused in answers.into_iter().filter(|a| a.status() == 409) {
        let body = json(refused, 409).await;
        assert_eq!(body["code"], "webhook_limit_reached");
        assert!(body["detail"].as_str().unwrap().contains("100"), "{body}");
    }
    let sql = app.db.sql().await;
    assert_eq!(sql.count("webhook_endpoints").await, 100);
    let listed = json(app.admin(Method::GET, "/admin/webhooks").send().await.unwrap(), 200).await;
    let id = listed["webhooks"][0]["id"].as_str().unwrap().to_owned();
    let deleted = app.admin(Method::DELETE, &format!("/admin/webhooks/{id}")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    json(post().send().await.unwrap(), 201).await;
    assert_eq!(sql.count("webhook_endpoints").await, 100);
    app.stop().await;
}

async fn plain_unauthenticated(app: &TestApp) -> u16 {
    app.client.get(app.url("/admin/webhooks")).send().await.unwrap().status().as_u16()
}
