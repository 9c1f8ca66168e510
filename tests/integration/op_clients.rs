//! Registered clients of the OpenID Provider: the admin API over real HTTP, the clients of the
//! configuration file, and client authentication (`Clients::authenticate`) for every method, on
//! both backends.

use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};
use tessera::config::{Config, ConfigWebhook, WebhookKey};
use tessera::domain::ClientId;
use tessera::service::op::clients::{AuthMethod, ClientAuthError, ClientCredentials, Clients, JWT_BEARER};
use tessera_testkit::local_issuer::{LocalIssuer, encode_part};

use crate::helpers::{Backend, TestApp, TestDb, json as body, on_both_backends, send_at_once};

on_both_backends!(
    // The admin API
    a_client_is_registered_read_changed_and_deleted_with_its_secret_shown_once,
    a_client_registered_without_an_algorithm_gets_the_deployments,
    a_new_secret_replaces_the_old_one,
    a_rotation_with_an_overlap_accepts_the_replaced_secret_for_a_while,
    registrations_that_break_a_rule_are_refused_saying_what_to_fix,
    clients_are_listed_a_page_at_a_time,
    the_client_api_is_for_admins_only,
    config_clients_are_listed_and_read_only,
    a_config_client_leaves_the_store_when_it_leaves_the_file,
    concurrent_registrations_of_one_id_register_it_once,
    concurrent_secret_rotations_leave_one_working_secret,
    // Client authentication
    a_confidential_client_authenticates_with_its_secret_in_basic_or_post,
    a_public_client_authenticates_with_its_id_only,
    one_authentication_method_per_request,
    private_key_jwt_accepts_a_fresh_assertion_for_the_token_endpoint_or_issuer,
    private_key_jwt_refuses_bad_assertions,
    a_replayed_assertion_is_accepted_once_under_concurrency,
    an_assertion_at_the_end_of_its_leeway_is_still_single_use,
);

const TOKEN_ENDPOINT: &str = "https://id.example.com/oauth/token";
const OP_ISSUER: &str = "https://id.example.com";

async fn register(app: &TestApp, request: Value) -> Value {
    body(app.admin(Method::POST, "/admin/clients").json(&request).send().await.unwrap(), 201).await
}

fn confidential(id: &str) -> Value {
    json!({"id": id, "name": format!("App {id}"), "kind": "confidential",
           "redirect_uris": ["https://app.example.com/callback"]})
}

fn public(id: &str) -> Value {
    json!({"id": id, "name": "Single-page app", "kind": "public", "redirect_uris": ["http://127.0.0.1/callback"]})
}

fn clients(app: &TestApp) -> Clients {
    Clients::new(app.store.clone(), Some(OP_ISSUER.into()))
}

fn basic(id: &str, secret: &str) -> ClientCredentials {
    ClientCredentials { basic: Some((id.into(), secret.into())), ..Default::default() }
}

fn post(id: &str, secret: &str) -> ClientCredentials {
    ClientCredentials { client_id: Some(id.into()), client_secret: Some(secret.into()), ..Default::default() }
}

fn assertion(token: &str) -> ClientCredentials {
    ClientCredentials {
        client_assertion_type: Some(JWT_BEARER.into()),
        client_assertion: Some(token.into()),
        ..Default::default()
    }
}

/// Asserts that authentication fails with the RFC 6749 error `code`.
async fn refused(clients: &Clients, creds: &ClientCredentials, code: &str) -> ClientAuthError {
    let error = clients.authenticate(creds, &[TOKEN_ENDPOINT.to_owned()]).await.expect_err("authentication must fail");
    assert_eq!(error.oauth_error(), code, "{error:?}");
    error
}

// ---- The admin API -----------------------------------------------------------------------------

/// `oidc.signing_alg` is the algorithm of a client that names none (RS256 here, for relying
/// parties that know nothing else); one that names its own keeps it.
async fn a_client_registered_without_an_algorithm_gets_the_deployments(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| config.oidc.signing_alg = tessera::domain::SigningAlg::RS256).await;
    assert_eq!(register(&app, confidential("plain")).await["signing_alg"], "RS256");
    let mut named = confidential("named");
    named["signing_alg"] = json!("EdDSA");
    assert_eq!(register(&app, named).await["signing_alg"], "EdDSA");
    let read = body(app.admin(Method::GET, "/admin/clients/plain").send().await.unwrap(), 200).await;
    assert_eq!(read["signing_alg"], "RS256");
}

async fn a_client_is_registered_read_changed_and_deleted_with_its_secret_shown_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.admin(Method::POST, "/admin/clients").json(&confidential("grafana")).send().await.unwrap();
    assert_eq!(response.headers()["location"], "/admin/clients/grafana");
    let created = body(response, 201).await;
    let secret = created["client_secret"].as_str().expect("the secret, this once").to_owned();
    assert!(secret.len() >= 43, "256 bits: {secret}");
    assert_eq!(created["client_id"], "grafana");
    assert_eq!(created["kind"], "confidential");
    assert_eq!(created["source"], "admin");
    assert_eq!(created["has_secret"], true);
    assert_eq!(created["scopes"], json!(["openid", "profile", "email", "teams", "offline_access"]));
    assert_eq!(created["grant_types"], json!(["authorization_code", "refresh_token"]));
    assert_eq!(created["signing_alg"], "ES256");
    assert_eq!(created["first_party"], false);
    assert_eq!(created["access_token_ttl_seconds"], 600);
    assert_eq!(created["refresh_token_ttl_seconds"], 30 * 86400);
    assert_eq!(created["token_endpoint_auth_methods"], json!(["client_secret_basic", "client_secret_post"]));

    // Only the SHA-256 of the secret is stored.
    let stored = app.store.client(&ClientId::parse("grafana").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.secret_hash, Some(tessera::crypto::sha256(secret.as_bytes())));

    let read = body(app.admin(Method::GET, "/admin/clients/grafana").send().await.unwrap(), 200).await;
    assert!(read.get("client_secret").is_none() && read.get("secret_hash").is_none(), "{read}");
    assert!(!read.to_string().contains(&secret));
    assert_eq!(read["created_at"], created["created_at"]);

    let changed = body(
        app.admin(Method::PATCH, "/admin/clients/grafana")
            .json(&json!({"name": "Grafana (prod)", "scopes": ["openid", "email"], "first_party": true,
                          "access_token_ttl_seconds": 300}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(changed["name"], "Grafana (prod)");
    assert_eq!(changed["scopes"], json!(["openid", "email"]));
    assert_eq!(changed["first_party"], true);
    assert_eq!(changed["access_token_ttl_seconds"], 300);
    assert_eq!(changed["redirect_uris"], created["redirect_uris"], "absent fields stay");
    assert!(changed.get("client_secret").is_none());
    assert_ne!(changed["updated_at"], created["updated_at"]);
    assert_eq!(
        clients(&app).authenticate(&basic("grafana", &secret), &[TOKEN_ENDPOINT.to_owned()]).await.unwrap().name,
        "Grafana (prod)"
    );

    let kind = app.admin(Method::PATCH, "/admin/clients/grafana").json(&json!({"kind": "public"})).send().await;
    assert_eq!(body(kind.unwrap(), 400).await["field"], "kind");
    // A change that names nothing is refused; one that changes nothing writes nothing.
    let sql = app.db.sql().await;
    let logged = sql.count("cache_invalidations").await;
    for nothing in [json!({}), json!({"name": null})] {
        let patch = app.admin(Method::PATCH, "/admin/clients/grafana").json(&nothing).send().await;
        assert_eq!(body(patch.unwrap(), 400).await["code"], "invalid_request", "{nothing}");
    }
    let same = app.admin(Method::PATCH, "/admin/clients/grafana").json(&json!({"name": "Grafana (prod)"})).send();
    let same = body(same.await.unwrap(), 200).await;
    assert_eq!(same["updated_at"], changed["updated_at"], "not rewritten");
    assert_eq!(sql.count("cache_invalidations").await, logged, "nothing for other instances to forget");
    // A resource is any absolute URI (RFC 8707), a URN included.
    let urn = app.admin(Method::PATCH, "/admin/clients/grafana").json(&json!({"resources": ["urn:example:api"]}));
    assert_eq!(body(urn.send().await.unwrap(), 200).await["resources"], json!(["urn:example:api"]));

    let deleted = app.admin(Method::DELETE, "/admin/clients/grafana").send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let again = body(app.admin(Method::DELETE, "/admin/clients/grafana").send().await.unwrap(), 404).await;
    assert_eq!(again["code"], "client_not_found");
    let gone = body(app.admin(Method::GET, "/admin/clients/grafana").send().await.unwrap(), 404).await;
    assert_eq!(gone["code"], "client_not_found");
    let patch = app.admin(Method::PATCH, "/admin/clients/grafana").json(&json!({"name": "x"})).send().await;
    assert_eq!(body(patch.unwrap(), 404).await["code"], "client_not_found");
    assert_eq!(app.db.sql().await.count("clients").await, 0);

    // A public client has no secret; a client registered with keys gets none either.
    let spa = register(&app, public("spa")).await;
    assert_eq!(spa["client_secret"], Value::Null);
    assert_eq!(spa["token_endpoint_auth_methods"], json!(["none"]));
    let issuer = LocalIssuer::start().await.unwrap();
    let keys = jwks_of(&issuer).await;
    let with_keys = register(
        &app,
        json!({"id": "backend", "name": "Backend", "kind": "confidential",
        "grant_types": ["client_credentials"], "scopes": ["openid"], "jwks": keys}),
    )
    .await;
    assert_eq!(with_keys["client_secret"], Value::Null);
    assert_eq!(with_keys["token_endpoint_auth_methods"], json!(["private_key_jwt"]));
    assert_eq!(with_keys["jwks"], keys);
    app.stop().await;
}

async fn a_new_secret_replaces_the_old_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let old = register(&app, confidential("app")).await["client_secret"].as_str().unwrap().to_owned();
    let rotated = body(app.admin(Method::POST, "/admin/clients/app/secret").send().await.unwrap(), 200).await;
    let new = rotated["client_secret"].as_str().unwrap();
    assert_ne!(new, old);
    let service = clients(&app);
    service.authenticate(&basic("app", new), &[TOKEN_ENDPOINT.to_owned()]).await.unwrap();
    refused(&service, &basic("app", &old), "invalid_client").await;
    register(&app, public("spa")).await;
    let public = body(app.admin(Method::POST, "/admin/clients/spa/secret").send().await.unwrap(), 409).await;
    assert_eq!(public["code"], "client_is_public");
    let none = body(app.admin(Method::POST, "/admin/clients/nope/secret").send().await.unwrap(), 404).await;
    assert_eq!(none["code"], "client_not_found");
    // A key stored before today's key rules (an Ed25519 key of 31 bytes, which a PATCH would
    // have to take out) does not stand in the way of replacing a leaked secret.
    register(&app, confidential("keyed")).await;
    let keys = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ"}]}"#;
    app.db.sql().await.exec(&format!("UPDATE clients SET jwks = '{keys}' WHERE id = 'keyed'")).await.unwrap();
    let rotated = body(app.admin(Method::POST, "/admin/clients/keyed/secret").send().await.unwrap(), 200).await;
    service
        .authenticate(&basic("keyed", rotated["client_secret"].as_str().unwrap()), &[TOKEN_ENDPOINT.to_owned()])
        .await
        .unwrap();
    let kept = body(app.admin(Method::GET, "/admin/clients/keyed").send().await.unwrap(), 200).await;
    assert_eq!(
        kept["jwks"]["keys"][0]["x"], "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ",
        "the keys are left as they were"
    );
    app.stop().await;
}

/// `overlap_seconds`: the replaced secret is accepted beside the new one until the overlap ends,
/// so that the app can be given the new one meanwhile; the next rotation drops it.
async fn a_rotation_with_an_overlap_accepts_the_replaced_secret_for_a_while(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = register(&app, confidential("app")).await["client_secret"].as_str().unwrap().to_owned();
    let rotate = |query: &str| app.admin(Method::POST, &format!("/admin/clients/app/secret{query}")).send();
    let started = chrono::Utc::now();
    let rotated = body(rotate("?overlap_seconds=3600").await.unwrap(), 200).await;
    let second = rotated["client_secret"].as_str().unwrap().to_owned();
    let until: chrono::DateTime<chrono::Utc> = rotated["previous_secret_expires_at"].as_str().unwrap().parse().unwrap();
    assert!(until >= started + chrono::TimeDelta::seconds(3600), "{rotated}");
    assert!(until <= chrono::Utc::now() + chrono::TimeDelta::seconds(3600), "{rotated}");
    let read = body(app.admin(Method::GET, "/admin/clients/app").send().await.unwrap(), 200).await;
    assert_eq!(read["previous_secret_expires_at"], rotated["previous_secret_expires_at"]);
    // A service of its own reads the client from the store (no cache of the server's).
    let works = async |secret: &str| {
        clients(&app).authenticate(&basic("app", secret), &[TOKEN_ENDPOINT.to_owned()]).await.is_ok()
    };
    assert!(works(&first).await && works(&second).await, "both during the overlap");
    // Another rotation with an overlap keeps the one it replaces only.
    let third =
        body(rotate("?overlap_seconds=60").await.unwrap(), 200).await["client_secret"].as_str().unwrap().to_owned();
    assert_eq!((works(&first).await, works(&second).await, works(&third).await), (false, true, true));
    // Once the overlap is over, the replaced secret is refused.
    let past = match backend {
        Backend::Sqlite => "(CAST(strftime('%s', 'now') AS INTEGER) - 1) * 1000000",
        Backend::Postgres => "now() - interval '1 second'",
    };
    let sql = app.db.sql().await;
    assert_eq!(
        sql.exec(&format!("UPDATE clients SET previous_secret_until = {past} WHERE id = 'app'")).await.unwrap(),
        1
    );
    assert_eq!((works(&second).await, works(&third).await), (false, true));
    let read = body(app.admin(Method::GET, "/admin/clients/app").send().await.unwrap(), 200).await;
    assert!(read.get("previous_secret_expires_at").is_none(), "{read}");
    // Without an overlap (a leaked secret), the replaced one is refused at once.
    body(rotate("?overlap_seconds=3600").await.unwrap(), 200).await;
    let fourth = body(rotate("").await.unwrap(), 200).await;
    assert!(fourth.get("previous_secret_expires_at").is_none(), "{fourth}");
    assert!(!works(&third).await && works(fourth["client_secret"].as_str().unwrap()).await);
    assert_eq!(sql.count("clients WHERE previous_secret_hash IS NULL AND previous_secret_until IS NULL").await, 1);
    // The audit rows say which rotations left the replaced secret working, and until when.
    let rotations = "SELECT COALESCE(CAST(details AS TEXT), '{}') FROM audit_events \
                     WHERE action = 'client.secret_rotated' ORDER BY id";
    let rows: Vec<Value> = sql.texts(rotations).await.iter().map(|row| serde_json::from_str(row).unwrap()).collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0]["previous_secret_expires_at"], rotated["previous_secret_expires_at"], "{rows:?}");
    assert!(rows[3].get("previous_secret_expires_at").is_none(), "{rows:?}");
    // At most 30 days.
    let long = body(rotate("?overlap_seconds=2592001").await.unwrap(), 400).await;
    assert_eq!((long["code"].as_str(), long["field"].as_str()), (Some("invalid_ttl"), Some("overlap_seconds")));
    assert!(works(fourth["client_secret"].as_str().unwrap()).await, "a refused rotation changes nothing");
    app.stop().await;
}

/// Sixteen registrations of one chosen id at once (a deploy script run twice, say): one is
/// registered, the others told the id is taken; one row, one `client.created` audit row.
async fn concurrent_registrations_of_one_id_register_it_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let register = app.admin(Method::POST, "/admin/clients").json(&confidential("raced"));
    let answers = send_at_once(&(0..16).map(|_| register.try_clone().unwrap()).collect::<Vec<_>>()).await;
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!((statuses[0], statuses[1..].iter().all(|s| *s == 409)), (201, true), "{statuses:?}");
    for answer in answers.into_iter().filter(|a| a.status() == 409) {
        assert_eq!(body(answer, 409).await["code"], "client_id_taken");
    }
    let sql = app.db.sql().await;
    assert_eq!(sql.count("clients WHERE id = 'raced'").await, 1);
    assert_eq!(sql.count("audit_events WHERE action = 'client.created'").await, 1);
    app.stop().await;
}

/// Eight secret rotations of one client at once: each answers with a new secret (or asks to be
/// sent again), and exactly one of the secrets handed out works afterwards — the last written,
/// never a mix of two.
async fn concurrent_secret_rotations_leave_one_working_secret(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let old = register(&app, confidential("rotated")).await["client_secret"].as_str().unwrap().to_owned();
    let rotate = app.admin(Method::POST, "/admin/clients/rotated/secret");
    let answers = send_at_once(&(0..8).map(|_| rotate.try_clone().unwrap()).collect::<Vec<_>>()).await;
    let mut secrets = Vec::new();
    for answer in answers {
        match answer.status().as_u16() {
            200 => secrets.push(body(answer, 200).await["client_secret"].as_str().unwrap().to_owned()),
            _ => assert_eq!(body(answer, 409).await["code"], "client_changed"),
        }
    }
    assert!(!secrets.is_empty(), "at least one rotation went through");
    let service = clients(&app);
    let mut working = 0;
    for secret in secrets.iter().chain(std::iter::once(&old)) {
        if service.authenticate(&basic("rotated", secret), &[TOKEN_ENDPOINT.to_owned()]).await.is_ok() {
            working += 1;
        }
    }
    assert_eq!(working, 1, "one working secret of {} handed out, the old one refused", secrets.len());
    app.stop().await;
}

async fn registrations_that_break_a_rule_are_refused_saying_what_to_fix(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let with = |base: Value, patch: Value| {
        let mut request = base;
        for (key, value) in patch.as_object().unwrap() {
            request[key] = value.clone();
        }
        request
    };
    let cases = [
        (
            with(confidential("a"), json!({"redirect_uris": ["https://*.example.com/cb"]})),
            "invalid_redirect_uri",
            "redirect_uris[0]",
        ),
        (
            with(confidential("a"), json!({"redirect_uris": ["http://app.example.com/cb"]})),
            "invalid_redirect_uri",
            "redirect_uris[0]",
        ),
        (
            with(confidential("a"), json!({"redirect_uris": ["https://app.example.com/cb#x"]})),
            "invalid_redirect_uri",
            "redirect_uris[0]",
        ),
        (with(confidential("a"), json!({"redirect_uris": []})), "invalid_redirect_uri", "redirect_uris"),
        // No URI has a space or a control character (a NUL would reach PostgreSQL's JSON).
        (
            with(confidential("a"), json!({"redirect_uris": ["https://app.example.com/cb\u{0}"]})),
            "invalid_redirect_uri",
            "redirect_uris[0]",
        ),
        (
            with(confidential("a"), json!({"post_logout_redirect_uris": ["https://app.example.com/out\u{0}"]})),
            "invalid_redirect_uri",
            "post_logout_redirect_uris[0]",
        ),
        // A space would let one registered resource read as two in a stored consent.
        (
            with(confidential("a"), json!({"resources": ["https://tools.example.com/a https://id.example.com/mcp"]})),
            "invalid_client_metadata",
            "resources[0]",
        ),
        (
            with(confidential("a"), json!({"resources": ["https://tools.example.com/\u{0}"]})),
            "invalid_client_metadata",
            "resources[0]",
        ),
        (with(public("a"), json!({"grant_types": ["client_credentials"]})), "invalid_grant_type", "grant_types"),
        (
            with(confidential("a"), json!({"grant_types": ["authorization_code", "password"]})),
            "invalid_grant_type",
            "grant_types[1]",
        ),
        (with(confidential("a"), json!({"grant_types": ["refresh_token"]})), "invalid_grant_type", "grant_types"),
        (with(confidential("a"), json!({"access_token_ttl_seconds": 30})), "invalid_ttl", "access_token_ttl_seconds"),
        (
            with(confidential("a"), json!({"refresh_token_ttl_seconds": 100 * 86400})),
            "invalid_ttl",
            "refresh_token_ttl_seconds",
        ),
        (with(confidential("a"), json!({"scopes": ["email"]})), "invalid_scope", "scopes"),
        (with(confidential("a"), json!({"scopes": ["openid", "bad scope"]})), "invalid_scope", "scopes[1]"),
        (with(confidential("a"), json!({"signing_alg": "HS256"})), "invalid_client_metadata", "signing_alg"),
        (with(confidential("a"), json!({"client_secret": "chosen-by-me"})), "invalid_client_metadata", "client_secret"),
        (with(confidential("a"), json!({"kind": "spa"})), "invalid_client_metadata", "kind"),
        (with(confidential("a"), json!({"id": "not ok!"})), "invalid_client_id", "id"),
        // A client's id is the `sub` of its client_credentials tokens, where a user's id would be.
        (with(confidential("a"), json!({"id": "0193a5e2-7c1d-7b2e-9f00-1234567890ab"})), "invalid_client_id", "id"),
        (with(confidential("a"), json!({"id": "0193a5e27c1d7b2e9f001234567890ab"})), "invalid_client_id", "id"),
        (with(confidential("a"), json!({"name": "  "})), "missing_field", "name"),
        (with(public("a"), json!({"jwks": {"keys": []}})), "invalid_client_metadata", "jwks"),
        (with(confidential("a"), json!({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}})), "invalid_jwks", "jwks"),
        // A 1,024-bit RSA key: decoded, but never verifying an assertion.
        (
            with(
                confidential("a"),
                json!({"jwks": {"keys": [{"kty": "RSA", "e": "AQAB", "n": "xcXF".repeat(42) + "xcU"}]}}),
            ),
            "invalid_jwks",
            "jwks",
        ),
    ];
    for (request, code, field) in cases {
        let refused = body(app.admin(Method::POST, "/admin/clients").json(&request).send().await.unwrap(), 400).await;
        assert_eq!((refused["code"].as_str().unwrap(), refused["field"].as_str().unwrap()), (code, field), "{request}");
        assert!(!refused["detail"].as_str().unwrap().is_empty());
    }
    // What was sent in a field with a fixed set of values is not quoted back.
    for (field, value) in [
        ("kind", json!("sk-pasted-here")),
        ("signing_alg", json!("sk-pasted-here")),
        ("grant_types", json!(["sk-pasted-here"])),
    ] {
        let mut request = confidential("a");
        request[field] = value;
        let refused =
            app.admin(Method::POST, "/admin/clients").json(&request).send().await.unwrap().text().await.unwrap();
        assert!(!refused.contains("sk-pasted"), "{field}: {refused}");
    }
    let missing_kind = json!({"id": "a", "name": "A", "redirect_uris": ["https://a.example/cb"]});
    let refused = body(app.admin(Method::POST, "/admin/clients").json(&missing_kind).send().await.unwrap(), 400).await;
    assert_eq!((refused["code"].as_str(), refused["field"].as_str()), (Some("missing_field"), Some("kind")));
    let unknown = with(confidential("a"), json!({"redirect_uri": "https://a.example/cb"}));
    let refused = body(app.admin(Method::POST, "/admin/clients").json(&unknown).send().await.unwrap(), 400).await;
    assert_eq!(refused["code"], "invalid_request");
    assert!(refused["detail"].as_str().unwrap().contains("redirect_uri"), "{refused}");
    assert_eq!(app.db.sql().await.count("clients").await, 0, "nothing refused is written");
    // A client registered before these rules, with a space in a redirect URI, still reads: the
    // rules apply to what is registered, not to what is stored.
    register(&app, confidential("older")).await;
    let sql = app.db.sql().await;
    sql.exec(r#"UPDATE clients SET redirect_uris = '["https://app.example.com/a b"]' WHERE id = 'older'"#)
        .await
        .unwrap();
    let older = body(app.admin(Method::GET, "/admin/clients/older").send().await.unwrap(), 200).await;
    assert_eq!(older["redirect_uris"], json!(["https://app.example.com/a b"]));

    register(&app, confidential("a")).await;
    let taken =
        body(app.admin(Method::POST, "/admin/clients").json(&confidential("a")).send().await.unwrap(), 409).await;
    assert_eq!(taken["code"], "client_id_taken");
    // A change is judged like a registration, and a refused change writes nothing.
    let patch = app.admin(Method::PATCH, "/admin/clients/a").json(&json!({"grant_types": ["refresh_token"]}));
    assert_eq!(body(patch.send().await.unwrap(), 400).await["code"], "invalid_grant_type");
    let patch = app.admin(Method::PATCH, "/admin/clients/a").json(&json!({"redirect_uris": ["http://a.example/cb"]}));
    assert_eq!(body(patch.send().await.unwrap(), 400).await["code"], "invalid_redirect_uri");
    let patch = app.admin(Method::PATCH, "/admin/clients/a").json(&json!({"jwks": null}));
    body(patch.send().await.unwrap(), 200).await;
    let read = body(app.admin(Method::GET, "/admin/clients/a").send().await.unwrap(), 200).await;
    assert_eq!(read["grant_types"], json!(["authorization_code", "refresh_token"]));
    app.stop().await;
}

async fn clients_are_listed_a_page_at_a_time(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for id in ["c", "a", "b"] {
        register(&app, confidential(id)).await;
    }
    let page = body(app.admin(Method::GET, "/admin/clients?limit=2").send().await.unwrap(), 200).await;
    let ids: Vec<&str> = page["clients"].as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(page["next_after"], "b");
    assert!(page["clients"].as_array().unwrap().iter().all(|c| c.get("client_secret").is_none()));
    let next = body(app.admin(Method::GET, "/admin/clients?limit=2&after=b").send().await.unwrap(), 200).await;
    assert_eq!(next["clients"][0]["client_id"], "c");
    assert_eq!(next["next_after"], Value::Null);
    // A full last page says so too: no cursor to an empty page.
    let full = body(app.admin(Method::GET, "/admin/clients?limit=1&after=b").send().await.unwrap(), 200).await;
    assert_eq!((&full["clients"][0]["client_id"], &full["next_after"]), (&json!("c"), &Value::Null));
    // Admin answers stay out of caches (the token may come in `X-Admin-Token`).
    let listed = app.admin(Method::GET, "/admin/clients").send().await.unwrap();
    assert_eq!(listed.headers()["cache-control"], "no-store");
    let all = body(listed, 200).await;
    assert_eq!(all["clients"].as_array().unwrap().len(), 3);
    for after in ["%20x", ""] {
        let bad = body(app.admin(Method::GET, &format!("/admin/clients?after={after}")).send().await.unwrap(), 400);
        let bad = bad.await;
        assert_eq!((bad["code"].as_str(), bad["field"].as_str()), (Some("invalid_cursor"), Some("after")), "{after}");
    }
    for limit in ["0", "501"] {
        let bad =
            body(app.admin(Method::GET, &format!("/admin/clients?limit={limit}")).send().await.unwrap(), 400).await;
        assert_eq!((bad["code"].as_str(), bad["field"].as_str()), (Some("invalid_request"), Some("limit")));
    }
    app.stop().await;
}

async fn the_client_api_is_for_admins_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    register(&app, confidential("app")).await;
    for (method, path) in [
        (Method::POST, "/admin/clients"),
        (Method::GET, "/admin/clients"),
        (Method::GET, "/admin/clients/app"),
        (Method::PATCH, "/admin/clients/app"),
        (Method::DELETE, "/admin/clients/app"),
        (Method::POST, "/admin/clients/app/secret"),
    ] {
        let anonymous = app.client.request(method.clone(), app.url(path)).json(&confidential("evil")).send().await;
        assert_eq!(body(anonymous.unwrap(), 401).await["code"], "missing_credentials", "{method} {path}");
        let wrong = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth("not-the-admin-token-0123456789")
            .json(&confidential("evil"))
            .send()
            .await;
        assert_eq!(body(wrong.unwrap(), 401).await["code"], "invalid_credentials", "{method} {path}");
    }
    let stored = app.store.list_clients(None, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].name, "App app", "nothing changed");
    app.stop().await;
}

const CONFIG_SECRET: &str = "config-secret-0123456789abcdef0123456789";

/// A configuration whose file defines the clients of `toml`, with `CFG_SECRET` set.
fn with_config_clients(db: &TestDb, toml: &str) -> Config {
    let file = Config::from_toml(toml, |var| (var == "CFG_SECRET").then(|| CONFIG_SECRET.to_owned())).unwrap();
    let mut config = db.config();
    config.oidc = file.oidc;
    config
}

const CONFIG_CLIENTS: &str = r#"
    [[oidc.clients]]
    id = "wiki"
    name = "The wiki"
    kind = "confidential"
    secret_env = "CFG_SECRET"
    redirect_uris = ["https://wiki.example.com/oauth/callback"]
    [[oidc.clients]]
    id = "desktop"
    name = "Desktop app"
    kind = "public"
    redirect_uris = ["http://127.0.0.1/cb"]
"#;

async fn config_clients_are_listed_and_read_only(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = with_config_clients(&db, CONFIG_CLIENTS);
    let app = TestApp::start(db, &config).await;
    let list = body(app.admin(Method::GET, "/admin/clients").send().await.unwrap(), 200).await;
    let ids: Vec<&str> = list["clients"].as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["desktop", "wiki"]);
    let wiki = body(app.admin(Method::GET, "/admin/clients/wiki").send().await.unwrap(), 200).await;
    assert_eq!((wiki["source"].as_str(), wiki["has_secret"].as_bool()), (Some("config"), Some(true)));
    for (method, path) in [
        (Method::PATCH, "/admin/clients/wiki"),
        (Method::DELETE, "/admin/clients/wiki"),
        (Method::POST, "/admin/clients/wiki/secret"),
        (Method::PATCH, "/admin/clients/desktop"),
    ] {
        let refused = app.admin(method.clone(), path).json(&json!({"name": "Mine now"})).send().await.unwrap();
        let refused = body(refused, 409).await;
        assert_eq!(refused["code"], "client_managed_in_config", "{method} {path}");
        assert!(refused["detail"].as_str().unwrap().contains("configuration file"), "{refused}");
    }
    let service = clients(&app);
    service.authenticate(&basic("wiki", CONFIG_SECRET), &[TOKEN_ENDPOINT.to_owned()]).await.unwrap();
    let desktop = ClientCredentials { client_id: Some("desktop".into()), ..Default::default() };
    assert!(service.authenticate(&desktop, &[TOKEN_ENDPOINT.to_owned()]).await.unwrap().from_config);
    let stored = app.store.client(&ClientId::parse("wiki").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.secret_hash, Some(tessera::crypto::sha256(CONFIG_SECRET.as_bytes())));
    app.stop().await;
}

async fn a_config_client_leaves_the_store_when_it_leaves_the_file(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(db.share(), &with_config_clients(&db, CONFIG_CLIENTS)).await;
    register(&app, confidential("admin-made")).await;
    app.stop().await;

    // The file changed: the wiki is gone, the desktop app renamed.
    let changed = CONFIG_CLIENTS.replace("Desktop app", "Desktop app 2");
    let changed = &changed[changed.find("[[oidc.clients]]\n    id = \"desktop\"").unwrap()..];
    let app = TestApp::start(db.share(), &with_config_clients(&db, changed)).await;
    let list = body(app.admin(Method::GET, "/admin/clients").send().await.unwrap(), 200).await;
    let names: Vec<&str> = list["clients"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["App admin-made", "Desktop app 2"]);
    // Each change of the file is in the audit log, as the admin API's are: by `config`.
    let rows = db.sql().await.config_changes().await;
    let expected = ["client.created desktop", "client.created wiki", "client.updated desktop", "client.deleted wiki"];
    assert_eq!(rows, expected, "the first start's, then the second's");
    app.stop().await;

    // A file client may not take the id of a registered one: the server does not start.
    let clash = r#"
        [[oidc.clients]]
        id = "admin-made"
        name = "Clash"
        kind = "public"
        redirect_uris = ["http://127.0.0.1/cb"]
    "#;
    // With a webhook endpoint beside it, which the instances still running would deliver to.
    let mut clashing = with_config_clients(&db, clash);
    let ring = format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([3u8; 32]));
    clashing.encryption = Some(Arc::new(tessera::crypto::keyring::KeyRing::parse(&ring).unwrap()));
    let key = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([9u8; 32]));
    clashing.webhooks.endpoints.push(ConfigWebhook {
        name: "billing".into(),
        url: "https://hooks.example.com/billing".into(),
        event_types: vec!["user.created".into()],
        enabled: true,
        key: WebhookKey::from_whsec(&key).unwrap(),
    });
    let store = db.store().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut server = tessera::startup::Application::build_on(&clashing, store.clone(), listener).await.unwrap();
    let error = server.sync_config_clients().await.unwrap_err();
    assert!(error.to_string().contains("admin-made"), "{error}");
    assert_eq!(store.client(&ClientId::parse("admin-made").unwrap()).await.unwrap().unwrap().name, "App admin-made");
    assert!(store.client(&ClientId::parse("desktop").unwrap()).await.unwrap().is_some(), "nothing was written");
    assert_eq!(db.sql().await.count("webhook_endpoints").await, 0, "nor the file's webhook endpoint");
    // An endpoint whose URL is refused stops the start before any other endpoint is written.
    let mut broken = clashing.clone();
    broken.oidc.clients.clear();
    let mut bad = broken.webhooks.endpoints[0].clone();
    (bad.name, bad.url) = ("broken".into(), "ftp://hooks.example.com/billing".into());
    broken.webhooks.endpoints.push(bad);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut server = tessera::startup::Application::build_on(&broken, store.clone(), listener).await.unwrap();
    let error = server.sync_config_clients().await.unwrap_err();
    assert!(format!("{error:?}").contains("broken"), "{error:?}");
    assert_eq!(db.sql().await.count("webhook_endpoints").await, 0, "nothing of the file");
}

// ---- Client authentication ---------------------------------------------------------------------

async fn a_confidential_client_authenticates_with_its_secret_in_basic_or_post(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let secret = register(&app, confidential("app")).await["client_secret"].as_str().unwrap().to_owned();
    let service = clients(&app);
    assert_eq!(
        service.authenticate(&basic("app", &secret), &[TOKEN_ENDPOINT.to_owned()]).await.unwrap().id.as_str(),
        "app"
    );
    assert_eq!(
        service.authenticate(&post("app", &secret), &[TOKEN_ENDPOINT.to_owned()]).await.unwrap().id.as_str(),
        "app"
    );
    let with_id = ClientCredentials { client_id: Some("app".into()), ..basic("app", &secret) };
    service.authenticate(&with_id, &[TOKEN_ENDPOINT.to_owned()]).await.unwrap();

    for creds in [basic("app", "wrong"), post("app", "wrong"), basic("app", ""), basic("nobody", &secret)] {
        let error = refused(&service, &creds, "invalid_client").await;
        assert_eq!(error.description(), "unknown client or wrong secret", "the same answer for both");
    }
    let only_id = ClientCredentials { client_id: Some("app".into()), ..Default::default() };
    refused(&service, &only_id, "invalid_client").await;
    refused(&service, &ClientCredentials::default(), "invalid_client").await;
    let other_id = ClientCredentials { client_id: Some("other".into()), ..basic("app", &secret) };
    refused(&service, &other_id, "invalid_request").await;
    app.stop().await;
}

async fn a_public_client_authenticates_with_its_id_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    register(&app, public("spa")).await;
    let service = clients(&app);
    let id_only = ClientCredentials { client_id: Some("spa".into()), ..Default::default() };
    let spa = service.authenticate(&id_only, &[TOKEN_ENDPOINT.to_owned()]).await.unwrap();
    assert!(spa.is_public());
    // Its id as Basic with an empty password (some libraries send it so): the id alone.
    let (spa, method) =
        service.authenticate_with_method(&basic("spa", ""), &[TOKEN_ENDPOINT.to_owned()]).await.unwrap();
    assert_eq!((spa.id.as_str(), method), ("spa", AuthMethod::None));
    for creds in [post("spa", "anything"), basic("spa", "anything")] {
        let error = refused(&service, &creds, "invalid_client").await;
        assert!(error.description().contains("public client"), "{}", error.description());
    }
    let unknown = ClientCredentials { client_id: Some("nobody".into()), ..Default::default() };
    refused(&service, &unknown, "invalid_client").await;
    app.stop().await;
}

async fn one_authentication_method_per_request(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let secret = register(&app, confidential("app")).await["client_secret"].as_str().unwrap().to_owned();
    let service = clients(&app);
    let basic_and_post = ClientCredentials { client_secret: Some(secret.clone()), ..basic("app", &secret) };
    let post_and_assertion =
        ClientCredentials { client_id: Some("app".into()), client_secret: Some(secret.clone()), ..assertion("a.b.c") };
    let basic_and_assertion = ClientCredentials { basic: Some(("app".into(), secret.clone())), ..assertion("a.b.c") };
    for creds in [basic_and_post, post_and_assertion, basic_and_assertion] {
        refused(&service, &creds, "invalid_request").await;
    }
    let type_only = ClientCredentials { client_assertion: None, ..assertion("a.b.c") };
    refused(&service, &type_only, "invalid_request").await;
    let other_type = ClientCredentials { client_assertion_type: Some("urn:other".into()), ..assertion("a.b.c") };
    refused(&service, &other_type, "invalid_request").await;
    app.stop().await;
}

/// The JWK Set of a local issuer (its public keys `rsa-1`, `ec-1` and `ed-1`), to register as a
/// client's keys.
async fn jwks_of(issuer: &LocalIssuer) -> Value {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(issuer.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Claims of a client assertion of `client` for `aud`, expiring in `exp_in` seconds.
fn claims(client: &str, aud: &str, exp_in: i64, jti: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": client, "sub": client, "aud": aud, "iat": now, "exp": now + exp_in, "jti": jti})
}

/// Registers `id` as a confidential client with the keys of `issuer` (and, after a rotation, a
/// secret too), returning the secret.
async fn register_with_keys(app: &TestApp, issuer: &LocalIssuer, id: &str) -> String {
    register(
        app,
        json!({"id": id, "name": id, "kind": "confidential", "jwks": jwks_of(issuer).await,
                         "redirect_uris": ["https://app.example.com/cb"]}),
    )
    .await;
    let rotated = app.admin(Method::POST, &format!("/admin/clients/{id}/secret")).send().await.unwrap();
    body(rotated, 200).await["client_secret"].as_str().unwrap().to_owned()
}

async fn private_key_jwt_accepts_a_fresh_assertion_for_the_token_endpoint_or_issuer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let issuer = LocalIssuer::start().await.unwrap();
    register_with_keys(&app, &issuer, "backend").await;
    let service = clients(&app);
    for (kid, aud, jti) in [("ec-1", TOKEN_ENDPOINT, "j1"), ("rsa-1", TOKEN_ENDPOINT, "j2"), ("ed-1", OP_ISSUER, "j3")]
    {
        let token = issuer.sign(kid, &claims("backend", aud, 120, jti));
        let client = service
            .authenticate(&assertion(&token), &[TOKEN_ENDPOINT.to_owned()])
            .await
            .unwrap_or_else(|e| panic!("{kid}: {e}"));
        assert_eq!(client.id.as_str(), "backend");
    }
    // The client_id parameter may name the client too.
    let token = issuer.sign("ec-1", &claims("backend", TOKEN_ENDPOINT, 120, "j4"));
    let named = ClientCredentials { client_id: Some("backend".into()), ..assertion(&token) };
    service.authenticate(&named, &[TOKEN_ENDPOINT.to_owned()]).await.unwrap();
    assert_eq!(app.db.sql().await.count("client_assertions").await, 4, "each jti is kept until it expires");
    // And for minutes past the last second it would be accepted (exp + 30 s): the sweeper of an
    // instance whose clock runs ahead must not free a jti another instance still takes.
    let store = app.db.store().await;
    let accepted_until = chrono::Utc::now() + chrono::TimeDelta::seconds(120 + 31);
    let sweep_at =
        |seconds| store.delete_expired_client_assertions(accepted_until + chrono::TimeDelta::seconds(seconds));
    assert_eq!(sweep_at(4 * 60 + 50).await.unwrap(), 0, "kept for five minutes past it");
    assert_eq!(sweep_at(5 * 60 + 10).await.unwrap(), 4, "then swept");
    // A key registered without its `kid` answers an assertion whose library names one.
    let mut keys = jwks_of(&issuer).await;
    keys["keys"] = keys["keys"].as_array().unwrap().iter().filter(|k| k["kid"] == "ec-1").cloned().collect();
    keys["keys"][0].as_object_mut().unwrap().remove("kid");
    register(
        &app,
        json!({"id": "kidless", "name": "kidless", "kind": "confidential", "jwks": keys,
                          "redirect_uris": ["https://app.example.com/cb"]}),
    )
    .await;
    let token = issuer.sign("ec-1", &claims("kidless", TOKEN_ENDPOINT, 120, "j5"));
    let client = service.authenticate(&assertion(&token), &[TOKEN_ENDPOINT.to_owned()]).await.unwrap();
    assert_eq!(client.id.as_str(), "kidless");
    app.stop().await;
}

async fn private_key_jwt_refuses_bad_assertions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let issuer = LocalIssuer::start().await.unwrap();
    let secret = register_with_keys(&app, &issuer, "backend").await;
    let stranger = LocalIssuer::start().await.unwrap();
    register_with_keys(&app, &stranger, "other").await;
    register(&app, public("spa")).await;
    let service = clients(&app);
    let sign = |claims: &Value| issuer.sign("ec-1", claims);
    let unsigned = |claims: &Value| format!("{}.{}.", encode_part(&json!({"alg": "none"})), encode_part(claims));
    let hs256 = |claims: &Value| {
        let message = format!("{}.{}", encode_part(&json!({"alg": "HS256", "typ": "JWT"})), encode_part(claims));
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(hmac::sign(&key, message.as_bytes())))
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong aud", sign(&claims("backend", "https://elsewhere.example/token", 120, "a")), "aud"),
        ("expired", sign(&claims("backend", TOKEN_ENDPOINT, -120, "b")), "expired"),
        ("too long-lived", sign(&claims("backend", TOKEN_ENDPOINT, 3700, "c")), "too far ahead"),
        ("alg none", unsigned(&claims("backend", TOKEN_ENDPOINT, 120, "d")), "alg"),
        ("HS256 with the secret", hs256(&claims("backend", TOKEN_ENDPOINT, 120, "e")), "alg"),
        (
            "no jti",
            sign(&json!({"iss": "backend", "sub": "backend", "aud": TOKEN_ENDPOINT,
                                 "exp": chrono::Utc::now().timestamp() + 60})),
            "jti",
        ),
        (
            "iss is not sub",
            sign(&json!({"iss": "other", "sub": "backend", "aud": TOKEN_ENDPOINT,
                                         "exp": chrono::Utc::now().timestamp() + 60, "jti": "f"})),
            "iss and sub",
        ),
        ("another client's key", stranger.sign("ec-1", &claims("backend", TOKEN_ENDPOINT, 120, "g")), "signature"),
        ("signed for another client", sign(&claims("other", TOKEN_ENDPOINT, 120, "h")), "signature"),
        ("a public client", sign(&claims("spa", TOKEN_ENDPOINT, 120, "i")), "no registered keys"),
        ("an unknown client", sign(&claims("nobody", TOKEN_ENDPOINT, 120, "j")), "unknown client"),
        ("not a JWT", "not-a-jwt".to_owned(), "not a signed JWT"),
        ("a NUL in the jti", sign(&claims("backend", TOKEN_ENDPOINT, 120, "l\u{0}m")), "control characters"),
    ];
    for (what, token, says) in cases {
        let error = refused(&service, &assertion(&token), "invalid_client").await;
        assert!(error.description().contains(says), "{what}: {}", error.description());
    }
    let token = sign(&claims("backend", TOKEN_ENDPOINT, 120, "k"));
    let mismatch = ClientCredentials { client_id: Some("other".into()), ..assertion(&token) };
    refused(&service, &mismatch, "invalid_client").await;
    assert_eq!(app.db.sql().await.count("client_assertions").await, 0, "no refused assertion burns a jti");
    service.authenticate(&assertion(&token), &[TOKEN_ENDPOINT.to_owned()]).await.unwrap();
    let replay = refused(&service, &assertion(&token), "invalid_client").await;
    assert!(replay.description().contains("used before"), "{}", replay.description());
    app.stop().await;
}

/// An assertion whose exp lies exactly the leeway (30 s) in the past is still accepted, for the
/// rest of that second (the JWT library compares whole seconds): it must be single-use all the
/// while, not found "expired" by the store's finer clock and taken again.
async fn an_assertion_at_the_end_of_its_leeway_is_still_single_use(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let issuer = LocalIssuer::start().await.unwrap();
    register_with_keys(&app, &issuer, "backend").await;
    let service = clients(&app);
    let endpoints = [TOKEN_ENDPOINT.to_owned()];
    for attempt in 0..3 {
        // At the start of a second, so that the first use falls within it; on a machine so busy
        // that it does not, again.
        let into_second = chrono::Utc::now().timestamp_subsec_millis();
        tokio::time::sleep(std::time::Duration::from_millis(u64::from(1050 - into_second.min(1000)))).await;
        let token = issuer.sign("ec-1", &claims("backend", TOKEN_ENDPOINT, -30, &format!("late-{attempt}")));
        if service.authenticate(&assertion(&token), &endpoints).await.is_err() {
            continue;
        }
        let replay = service.authenticate(&assertion(&token), &endpoints).await.unwrap_err();
        assert_eq!(replay.oauth_error(), "invalid_client", "{}", replay.description());
        // Refused as expired, the replay fell into the next second: it proves nothing; again.
        if !replay.description().contains("used before") {
            continue;
        }
        app.stop().await;
        return;
    }
    panic!("no assertion was used within its last second");
}

async fn a_replayed_assertion_is_accepted_once_under_concurrency(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let issuer = LocalIssuer::start().await.unwrap();
    register_with_keys(&app, &issuer, "backend").await;
    let token = Arc::new(issuer.sign("ec-1", &claims("backend", TOKEN_ENDPOINT, 120, "once")));
    // Each task has its own service, as if on its own instance: no memory is shared but the store.
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (service, token, barrier) = (clients(&app), token.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                service.authenticate(&assertion(&token), &[TOKEN_ENDPOINT.to_owned()]).await
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(error) => assert_eq!(
                (error.oauth_error(), error.description()),
                ("invalid_client", "this client assertion was used before: make a new one")
            ),
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(app.db.sql().await.count("client_assertions WHERE jti = 'once'").await, 1);
    app.stop().await;
}
