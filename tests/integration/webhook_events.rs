//! Webhooks of issue 12's second part, on both backends with a receiver running in the test:
//! the events `user.updated`, `auth_profile.*` and `session.revoked` delivered once with their
//! payloads (none for calls that change nothing), signing-key rotation (two signatures during
//! the overlap, one after), and endpoints defined in the configuration file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera::config::{Config, ConfigWebhook, ConnectorConfig, EnvField, ProviderKind, WebhookKey};
use tessera::domain::UserId;
use tessera_testkit::local_issuer::{LocalIssuer, StubUser};

use crate::helpers::{
    ADMIN_TOKEN, Backend, TestApp, TestDb, concurrently, eventually_within, identity, json, on_both_backends,
};
use crate::signin::{Browser, CLIENT_ID, CLIENT_SECRET, provider};
use crate::webhooks::{Received, Receiver, deliveries, register, signature_valid, with_keyring};

on_both_backends!(
    the_new_events_reach_an_endpoint_once_with_their_payloads,
    a_rotated_key_signs_beside_the_new_one_until_the_overlap_ends,
    config_endpoints_receive_events_and_refuse_admin_changes,
    instances_starting_together_sync_the_file_s_endpoints_once,
);

const TOPICS: [&str; 4] = ["user.updated", "auth_profile.connected", "auth_profile.revoked", "session.revoked"];

fn configure(config: &mut Config, issuer: &LocalIssuer) {
    with_keyring(config);
    config.auth.cookie_secure = false;
    // Trusted, so that a sign-in's verified email is recorded as verified (and a new address
    // then makes it unverified: a `user.updated` naming both fields).
    let mut local = provider("local", ProviderKind::Oidc, issuer);
    local.trusted_email_verification = true;
    config.providers.push(local);
    config.auth.default_provider = Some("local".into());
    let field = EnvField { name: "TOKEN".into(), label: "Token".into(), secret: true, optional: false, pattern: None };
    config.connectors =
        vec![ConnectorConfig { key: "plain".into(), label: "Plain".into(), fields: vec![field], probe: None }];
}

/// Waits until `receiver` got `n` requests; on a timeout, says what it got and what the log says.
async fn arrived(receiver: &Receiver, n: usize, app: &TestApp, hook: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while receiver.all().len() < n {
        if tokio::time::Instant::now() > deadline {
            let log = deliveries(app, hook).await;
            let outbox = app.db.sql().await.texts("SELECT topic FROM outbox_events ORDER BY seq").await;
            panic!("{n} requests did not arrive: got {:?}; log {log:?}; outbox {outbox:?}", receiver.types());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The signatures of a delivery, each checked against `secret` alone.
fn signatures(received: &Received) -> Vec<String> {
    received.signature.split(' ').map(str::to_owned).collect()
}

fn signed_by(secret: &str, signature: &str, received: &Received) -> bool {
    signature_valid(secret, &Received { signature: signature.to_owned(), ..received.clone() })
}

async fn the_new_events_reach_an_endpoint_once_with_their_payloads(backend: Backend) {
    let issuer = LocalIssuer::start().await.unwrap();
    issuer.set_client(CLIENT_ID, CLIENT_SECRET);
    let app = TestApp::spawn_with(backend, |config| configure(config, &issuer)).await;
    let receiver = Receiver::start().await;
    let (hook, secret) = register(&app, json!({ "url": receiver.url, "event_types": TOPICS })).await;

    // Sessions: a sign-in in a browser that has a session replaces it; signing out ends it.
    issuer.set_next_user(StubUser::new("alice", "alice@example.com"));
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&app, "").await.status(), StatusCode::SEE_OTHER);
    let me = json(browser.me(&app).await, 200).await;
    let alice: UserId = me["id"].as_str().unwrap().parse().unwrap();
    let team = me["teams"][0]["slug"].as_str().unwrap().to_owned();
    issuer.set_next_user(StubUser::new("alice", "alice@example.com"));
    assert_eq!(browser.sign_in(&app, "").await.status(), StatusCode::SEE_OTHER);
    let logout = browser.request(Method::POST, &app.url("/auth/logout")).await;
    assert!(logout.status().is_redirection() || logout.status().is_success(), "{}", logout.status());
    // No session left: nothing ends, nothing is written.
    browser.request(Method::POST, &app.url("/auth/logout")).await;

    // user.updated: once per change, named fields; a no-op and refused input write nothing.
    let patch = |body: Value| app.admin(Method::PATCH, &format!("/admin/users/{alice}")).json(&body).send();
    let renamed = json(patch(json!({ "name": "Alice Liddell" })).await.unwrap(), 200).await;
    assert_eq!(renamed["name"], "Alice Liddell");
    json(patch(json!({ "name": "Alice Liddell" })).await.unwrap(), 200).await;
    assert_eq!(json(patch(json!({})).await.unwrap(), 400).await["code"], "missing_field");
    assert_eq!(json(patch(json!({ "email": "nope" })).await.unwrap(), 400).await["code"], "invalid_email");
    let same: Vec<_> = (0..8)
        .map(|_| {
            let request = app.admin(Method::PATCH, &format!("/admin/users/{alice}"));
            tokio::spawn(request.json(&json!({ "email": "alice@wonder.example.com" })).send())
        })
        .collect();
    for response in same {
        assert_eq!(response.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    // auth_profile.connected / revoked: an env profile created with its values, then revoked.
    let profiles = format!("/v1/teams/{team}/auth-profiles");
    let as_alice = |method: Method, path: &str| {
        app.client.request(method, app.url(path)).bearer_auth(ADMIN_TOKEN).header("x-on-behalf-of", alice.to_string())
    };
    let create = json!({"connector_key": "plain", "profile_kind": "env", "display_name": "Plain", "slug": "plain",
                        "values": {"TOKEN": "t0ken-value-1"}});
    json(as_alice(Method::POST, &profiles).json(&create).send().await.unwrap(), 201).await;
    let revoke = || as_alice(Method::DELETE, &format!("{profiles}/plain")).send();
    assert!(revoke().await.unwrap().status().is_success());
    assert!(!revoke().await.unwrap().status().is_success(), "revoked once");

    let expected = [
        "session.revoked",
        "session.revoked",
        "user.updated",
        "user.updated",
        "auth_profile.connected",
        "auth_profile.revoked",
    ];
    arrived(&receiver, expected.len(), &app, &hook).await;
    // Later events would have arrived before the last one expected: the endpoint's order.
    assert_eq!(receiver.types(), expected);
    let got = receiver.all();
    let data = |i: usize| got[i].body["data"].clone();
    assert_eq!(data(0), json!({ "user_id": alice.to_string(), "reason": "replaced", "sessions": 1 }));
    assert_eq!(data(1), json!({ "user_id": alice.to_string(), "reason": "signed_out", "sessions": 1 }));
    assert_eq!(data(2)["changed"], json!(["name"]));
    assert_eq!(data(2)["user"]["name"], "Alice Liddell");
    assert_eq!(data(3)["changed"], json!(["email", "email_verified"]), "a new address is unverified");
    assert_eq!(data(3)["user"]["email"], "alice@wonder.example.com");
    let connected = data(4)["profile"].clone();
    assert_eq!((connected["slug"].as_str(), connected["connector_key"].as_str()), (Some("plain"), Some("plain")));
    assert_eq!((connected["status"].as_str(), connected["kind"].as_str()), (Some("active"), Some("env")));
    assert_eq!(data(5)["profile"]["status"], "revoked");
    assert_eq!(data(5)["profile"]["id"], connected["id"]);
    for received in &got {
        assert!(signature_valid(&secret, received));
        assert!(!String::from_utf8_lossy(&received.raw).contains("t0ken-value"), "no credential in an event");
    }
    let sql = app.db.sql().await;
    for topic in TOPICS {
        let written = sql.count(&format!("outbox_events WHERE topic = '{topic}'")).await;
        assert_eq!(written as usize, expected.iter().filter(|t| **t == topic).count(), "{topic} written once");
    }
    assert!(deliveries(&app, &hook).await.iter().all(|d| d["state"] == "delivered" && d["attempts"] == 1));
    app.stop().await;
}

async fn a_rotated_key_signs_beside_the_new_one_until_the_overlap_ends(backend: Backend) {
    const OVERLAP: Duration = Duration::from_secs(10);
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        config.webhooks.secret_overlap = OVERLAP;
    })
    .await;
    let receiver = Receiver::start().await;
    let (id, old) = register(&app, json!({ "url": receiver.url, "event_types": ["user.created"] })).await;
    let path = format!("/admin/webhooks/{id}/secret");
    let users = AtomicUsize::new(0);
    let bootstrap = async || {
        let n = users.fetch_add(1, Ordering::SeqCst);
        json(app.bootstrap(&identity(&format!("u{n}"), &format!("u{n}@example.com"), None)).await, 201).await;
    };
    bootstrap().await;
    arrived(&receiver, 1, &app, &id).await;
    assert_eq!(signatures(&receiver.all()[0]).len(), 1, "one key, one signature");

    let rotated = app.admin(Method::POST, &path).send().await.unwrap();
    assert_eq!(rotated.headers()["cache-control"], "no-store", "the new key is in the body");
    let text = rotated.text().await.unwrap();
    let rotated: Value = serde_json::from_str(&text).unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    assert!(!text.contains(&old), "the old key is not shown again");
    let until = chrono::DateTime::parse_from_rfc3339(rotated["previous_secret_expires_at"].as_str().unwrap()).unwrap();
    let shown = json(app.admin(Method::GET, &format!("/admin/webhooks/{id}")).send().await.unwrap(), 200).await;
    assert!(shown.get("secret").is_none() && !shown.to_string().contains(&new[6..]), "shown once");
    assert_eq!(shown["previous_secret_expires_at"], rotated["previous_secret_expires_at"]);

    // During the overlap: two signatures, one with each key (new first).
    bootstrap().await;
    arrived(&receiver, 2, &app, &id).await;
    let during = receiver.all()[1].clone();
    assert!(during.timestamp.parse::<i64>().unwrap() < until.timestamp(), "sent during the overlap");
    let both = signatures(&during);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(signed_by(&new, &both[0], &during) && signed_by(&old, &both[1], &during), "{both:?}");

    // After it: one signature, the new key's. Events keep coming until one is sent after it.
    eventually_within("a delivery after the overlap", Duration::from_secs(60), || async {
        let last = receiver.all().last().cloned().unwrap();
        if last.timestamp.parse::<i64>().unwrap() > until.timestamp() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        bootstrap().await;
        false
    })
    .await;
    let after = receiver.all().last().cloned().unwrap();
    assert_eq!(signatures(&after).len(), 1);
    assert!(signature_valid(&new, &after) && !signature_valid(&old, &after));
    let shown = json(app.admin(Method::GET, &format!("/admin/webhooks/{id}")).send().await.unwrap(), 200).await;
    assert!(shown["previous_secret_expires_at"].is_null());

    // Concurrent rotations all succeed, one after the other: the key that signs is the last one.
    let rotations: Vec<_> = (0..6).map(|_| tokio::spawn(app.admin(Method::POST, &path).send())).collect();
    let mut secrets = Vec::new();
    for response in rotations {
        secrets.push(json(response.await.unwrap().unwrap(), 200).await["secret"].as_str().unwrap().to_owned());
    }
    secrets.sort();
    secrets.dedup();
    assert_eq!(secrets.len(), 6, "six different keys");
    let seen = receiver.all().len();
    bootstrap().await;
    arrived(&receiver, seen + 1, &app, &id).await;
    let last = receiver.all().last().cloned().unwrap();
    let pair = signatures(&last);
    assert_eq!(pair.len(), 2);
    let (current, previous) = (&pair[0], &pair[1]);
    let current_key = secrets.iter().find(|s| signed_by(s, current, &last)).expect("signed by a returned key");
    assert!(secrets.iter().any(|s| s != current_key && signed_by(s, previous, &last)), "and the one before it");

    let missing = app.admin(Method::POST, &format!("/admin/webhooks/{}/secret", uuid::Uuid::new_v4())).send();
    assert_eq!(json(missing.await.unwrap(), 404).await["code"], "webhook_not_found");
    let bad = app.admin(Method::POST, "/admin/webhooks/nope/secret").send();
    assert_eq!(json(bad.await.unwrap(), 400).await["code"], "invalid_webhook_id");
    app.stop().await;
}

fn whsec(byte: u8) -> String {
    format!("whsec_{}", STANDARD.encode([byte; 32]))
}

fn billing(url: &str, secret: &str) -> ConfigWebhook {
    ConfigWebhook {
        name: "billing".into(),
        url: url.into(),
        event_types: vec!["user.created".into()],
        enabled: true,
        key: WebhookKey::from_whsec(secret).unwrap(),
    }
}

async fn config_endpoints_receive_events_and_refuse_admin_changes(backend: Backend) {
    let receiver = Receiver::start().await;
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    with_keyring(&mut config);
    config.webhooks.endpoints = vec![billing(&receiver.url, &whsec(1))];
    let app = TestApp::start(db, &config).await;

    json(app.bootstrap(&identity("cfg-1", "cfg-1@example.com", None)).await, 201).await;
    eventually_within("the event arrives", Duration::from_secs(30), || async { receiver.all().len() == 1 }).await;
    assert!(signature_valid(&whsec(1), &receiver.all()[0]), "signed with the key of the environment");
    let listed = json(app.admin(Method::GET, "/admin/webhooks").send().await.unwrap(), 200).await;
    let listed = listed["webhooks"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0]["config_name"].as_str(), listed[0]["url"].as_str()), (Some("billing"), Some(&*receiver.url)));
    assert!(!listed[0].to_string().contains(&whsec(1)[6..]), "the key is never shown");
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/webhooks/{id}");
    for refused in [
        app.admin(Method::PATCH, &path).json(&json!({ "enabled": false })),
        app.admin(Method::DELETE, &path),
        app.admin(Method::POST, &format!("{path}/secret")),
    ] {
        let body = json(refused.send().await.unwrap(), 409).await;
        assert_eq!(body["code"], "webhook_managed_in_config", "{body}");
        assert!(body["detail"].as_str().unwrap().contains("billing"));
    }
    assert_eq!(deliveries(&app, &id).await.len(), 1, "its log is readable");

    // Restarted with another key in the environment: the stored one signs beside it for the overlap.
    let db = app.stop_keeping_db().await;
    config.webhooks.endpoints = vec![billing(&receiver.url, &whsec(2))];
    let app = TestApp::start(db, &config).await;
    json(app.bootstrap(&identity("cfg-2", "cfg-2@example.com", None)).await, 201).await;
    eventually_within("the second event arrives", Duration::from_secs(30), || async { receiver.all().len() == 2 })
        .await;
    let second = receiver.all()[1].clone();
    let both = signatures(&second);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(signed_by(&whsec(2), &both[0], &second) && signed_by(&whsec(1), &both[1], &second));
    let listed = json(app.admin(Method::GET, "/admin/webhooks").send().await.unwrap(), 200).await;
    assert_eq!(listed["webhooks"][0]["id"], id.as_str(), "the same endpoint, by its name");

    // Removed from the file: deleted with its log at the next start — also when the key ring
    // went with it (deleting needs no key; nothing else could delete it).
    let db = app.stop_keeping_db().await;
    config.webhooks.endpoints.clear();
    let mut without_ring = config.clone();
    without_ring.encryption = None;
    let app = TestApp::start(db, &without_ring).await;
    let listed = json(app.admin(Method::GET, "/admin/webhooks").send().await.unwrap(), 200).await;
    assert_eq!(listed["webhooks"], json!([]));
    // Each start's change is in the audit log, as the admin API's are: by `config`.
    let rows = app.db.sql().await.config_changes().await;
    let expected = ["created", "updated", "deleted"].map(|action| format!("webhook.{action} {id}"));
    assert_eq!(rows, expected, "registered, its key changed, removed");
    let db = app.stop_keeping_db().await;

    // An unusable URL stops the start, naming the endpoint.
    let mut broken = config.clone();
    broken.webhooks.endpoints = vec![billing("ftp://billing.example.com/", &whsec(3))];
    let store = db.store().await;
    let error = tessera::startup::Application::build_with_store(&broken, store).await.unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert!(chain.contains("billing") && chain.contains("url"), "{chain}");
}

/// Instances starting together with a changed file (a rolling deploy of a new key and URL):
/// one endpoint of the name, its key rotated once — the stored key signs beside the new one,
/// never the new key twice — and the endpoint dropped from the file deleted once.
async fn instances_starting_together_sync_the_file_s_endpoints_once(backend: Backend) {
    let receiver = Receiver::start().await;
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    with_keyring(&mut config);
    let gone = ConfigWebhook { name: "gone".into(), ..billing(&receiver.url, &whsec(3)) };
    config.webhooks.endpoints = vec![billing(&format!("{}/old", receiver.url), &whsec(1)), gone];
    TestApp::start(db.share(), &config).await.stop().await;

    config.webhooks.endpoints = vec![billing(&receiver.url, &whsec(2))];
    let apps = concurrently(4, |_| {
        let (db, config) = (db.share(), config.clone());
        async move { TestApp::start(db, &config).await }
    })
    .await;
    // Each has synced once it serves (requests wait in the backlog meanwhile).
    for app in &apps {
        assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    }
    let app = &apps[0];
    let sql = app.db.sql().await;
    assert_eq!(sql.count("webhook_endpoints WHERE config_name = 'billing'").await, 1);
    let names = sql.texts("SELECT COALESCE(config_name, '-') || ' ' || url FROM webhook_endpoints").await;
    assert_eq!(sql.count("webhook_endpoints").await, 1, "the dropped endpoint is deleted: {names:?}");
    json(app.bootstrap(&identity("sync-1", "sync-1@example.com", None)).await, 201).await;
    eventually_within("the event arrives", Duration::from_secs(30), || async { receiver.all().len() == 1 }).await;
    let received = receiver.all()[0].clone();
    let both = signatures(&received);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(signed_by(&whsec(2), &both[0], &received), "the file's key signs");
    assert!(signed_by(&whsec(1), &both[1], &received), "beside the stored one, not the new key twice");
    for app in apps {
        app.stop().await;
    }
}
