//! Token validation over HTTP (`/v1/validate`, `/v1/check`, `/v1/me`) against a real local issuer
//! serving discovery and a JWKS on 127.0.0.1, on both backends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera::config::Config;
use tessera_testkit::local_issuer::{Alg, LocalIssuer, encode_part};

use crate::helpers::{AUDIENCE, Backend, TestApp, eventually, json as body, local_issuer_config, on_both_backends};

on_both_backends!(
    keys_the_issuer_pulled_stop_verifying_even_when_none_is_left,
    validate_returns_the_internal_user_and_provisions_on_first_sight,
    an_identity_deleted_as_it_is_provisioned_is_a_conflict_to_retry,
    every_algorithm_of_the_allow_list_verifies,
    validate_after_bootstrap_returns_the_bootstrapped_user,
    every_refused_token_has_its_code_and_writes_nothing,
    jku_x5u_and_embedded_jwk_headers_are_ignored,
    an_issuer_without_jit_refuses_unknown_subjects,
    a_new_key_is_picked_up_without_a_restart,
    a_rekey_under_the_same_kid_costs_one_refetch,
    unknown_kids_refetch_at_most_once_per_cooldown,
    an_unreachable_issuer_serves_stale_keys,
    expired_keys_are_served_at_once_while_the_issuer_hangs,
    forged_signatures_do_not_hold_back_a_key_rotation,
    a_token_without_a_kid_takes_the_only_key_of_its_algorithm,
    an_unknown_kid_while_the_issuer_is_down_is_a_503,
    no_keys_at_all_is_a_503,
    concurrent_validations_of_one_new_subject_create_one_user,
    concurrent_validations_of_many_identities_each_find_their_own_user,
    check_answers_for_members_only,
    me_returns_the_user_with_identities_and_teams,
    disabling_a_user_refuses_their_tokens_at_once,
    a_cached_token_is_refused_once_expired,
    store_failure_is_a_503_never_a_fallback,
    both_es256_signature_forms_are_one_token_to_every_decision,
    a_backend_naming_itself_refuses_upstream_tokens_meant_for_another,
    api_audiences_keep_other_backends_tokens_off_tesseras_own_api,
);

struct World {
    app: TestApp,
    issuer: LocalIssuer,
}

async fn world(backend: Backend) -> World {
    world_with(backend, |_| {}).await
}

async fn world_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> World {
    let issuer = LocalIssuer::start().await.unwrap();
    let app = TestApp::spawn_with(backend, |config| {
        config.issuers.push(local_issuer_config(&issuer));
        config.jwks.min_max_age = Duration::from_secs(1);
        adjust(config);
    })
    .await;
    World { app, issuer }
}

impl World {
    fn token(&self, subject: &str) -> String {
        self.issuer.sign("rsa-1", &self.issuer.claims(subject, AUDIENCE))
    }

    /// Makes the cached keys expire within a second. The server fetches keys in the background
    /// at start-up, possibly before the max-age changes, so a refetch is forced with a token
    /// naming an unknown key.
    async fn keys_expiring_in_a_second(&self) {
        self.issuer.set_max_age(1);
        let unknown = self.issuer.add_unpublished_key(Alg::Rs256);
        let token = self.issuer.sign(&unknown, &self.issuer.claims("expiring", AUDIENCE));
        refused(self.app.validate(&token).await, "unknown_key").await;
    }

    fn token_with(&self, subject: &str, change: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.issuer.claims(subject, AUDIENCE);
        change(&mut claims);
        self.issuer.sign("rsa-1", &claims)
    }
}

/// Asserts a 401 invalid_token answer with `code`.
async fn refused(response: reqwest::Response, code: &str) {
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let problem = body(response, 401).await;
    assert_eq!(problem["code"], code, "{problem}");
    assert!(challenge.unwrap_or_default().contains("error=\"invalid_token\""), "the 401 carries the challenge");
}

/// An identity deleted between its just-in-time provisioning and the read of its user (an
/// operator's clean-up, a consumer of `user.created`) is a change made meanwhile: 409
/// `changed_meanwhile`, which a retry settles — not a 500.
async fn an_identity_deleted_as_it_is_provisioned_is_a_conflict_to_retry(backend: Backend) {
    let w = world(backend).await;
    let sql = w.app.db.sql().await;
    // Each new identity deleted as soon as its account's transaction has made it.
    let trigger = match backend {
        Backend::Sqlite => {
            vec!["CREATE TRIGGER gone AFTER INSERT ON identities BEGIN DELETE FROM identities WHERE id = NEW.id; END"]
        }
        Backend::Postgres => vec![
            "CREATE FUNCTION gone() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN DELETE FROM identities WHERE id = NEW.id; RETURN NULL; END $$",
            "CREATE TRIGGER gone AFTER INSERT ON identities FOR EACH ROW EXECUTE FUNCTION gone()",
        ],
    };
    for statement in trigger {
        sql.exec(statement).await.unwrap();
    }
    let token = w.token_with("fleeting", |c| c["email"] = "fleeting@example.com".into());
    assert_eq!(body(w.app.validate(&token).await, 409).await["code"], "changed_meanwhile");
    // Once nothing deletes it, the same token provisions it.
    let drop = if backend == Backend::Sqlite { "DROP TRIGGER gone" } else { "DROP TRIGGER gone ON identities" };
    sql.exec(drop).await.unwrap();
    assert_eq!(body(w.app.validate(&token).await, 200).await["created"], true);
}

async fn validate_returns_the_internal_user_and_provisions_on_first_sight(backend: Backend) {
    let w = world(backend).await;
    let token = w.token_with("upstream-sub-1", |c| {
        c["email"] = "Ada@Example.com".into();
        c["email_verified"] = true.into();
        c["name"] = "Ada Lovelace".into();
    });
    let first = body(w.app.validate(&token).await, 200).await;
    assert_eq!(first["created"], true);
    assert_eq!(first["issuer"], w.issuer.issuer());
    assert_eq!(first["subject"], "upstream-sub-1");
    assert_eq!(first["email"], "Ada@example.com");
    assert_eq!(first["email_verified"], true);
    let user_id = first["user_id"].as_str().unwrap();
    assert_ne!(user_id, "upstream-sub-1", "the internal id is never the upstream sub");
    uuid::Uuid::parse_str(user_id).unwrap();
    assert_eq!(first["teams"].as_array().unwrap().len(), 1);
    assert_eq!(first["teams"][0]["slug"], "adas-team");
    assert_eq!(first["teams"][0]["role"], "owner");
    assert!(first["expires_at"].as_str().unwrap().ends_with('Z'));

    // The same identity through the other header: the same user, not created again.
    let response = w.app.client.post(w.app.url("/v1/validate")).header("x-user-token", &token).send().await.unwrap();
    let second = body(response, 200).await;
    assert_eq!(second["user_id"], first["user_id"]);
    assert_eq!(second["created"], false);
    assert!(second.get("issued_for").is_none(), "an upstream token has no issued_for: {second}");
    // `audience` narrows upstream tokens too: to those whose `aud` names it.
    let named = |audience: &str| {
        let url = w.app.url(&format!("/v1/validate?audience={audience}"));
        w.app.client.post(url).bearer_auth(&token).send()
    };
    assert_eq!(body(named(AUDIENCE).await.unwrap(), 200).await["user_id"], first["user_id"]);
    refused(named("notes").await.unwrap(), "audience_mismatch").await;
    // A token without email makes a user without email.
    let bare = body(w.app.validate(&w.token("no-email")).await, 200).await;
    assert_eq!(bare["email"], Value::Null);
    assert_eq!(bare["teams"][0]["slug"], "default-team");
    assert_eq!(w.app.db.sql().await.provisioning_counts().await, [2, 2, 2, 2, 2]);
}

async fn every_algorithm_of_the_allow_list_verifies(backend: Backend) {
    let w = world(backend).await;
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let token = w.issuer.sign(kid, &w.issuer.claims(&format!("alg-{kid}"), AUDIENCE));
        let value = body(w.app.validate(&token).await, 200).await;
        assert_eq!(value["subject"], format!("alg-{kid}"));
    }
}

async fn validate_after_bootstrap_returns_the_bootstrapped_user(backend: Backend) {
    let w = world(backend).await;
    let mut claim = crate::helpers::identity("boot-1", "boot@example.com", Some("Boo"));
    claim["issuer"] = format!("{}/", w.issuer.issuer()).into();
    let booted = body(w.app.bootstrap(&claim).await, 201).await;
    let validated = body(w.app.validate(&w.token("boot-1")).await, 200).await;
    assert_eq!(validated["user_id"], booted["user_id"]);
    assert_eq!(validated["created"], false);
    assert_eq!(validated["teams"][0]["id"], booted["team"]["id"]);
}

async fn every_refused_token_has_its_code_and_writes_nothing(backend: Backend) {
    let w = world_with(backend, |config| {
        // A second issuer that only accepts ES256, to refuse an RS256 token by algorithm.
        let mut es_only = config.issuers.last().unwrap().clone();
        es_only.issuer = tessera::domain::Issuer::parse("http://127.0.0.1:9/es-only").unwrap();
        es_only.algorithms = vec![jsonwebtoken::Algorithm::ES256];
        config.issuers.push(es_only);
    })
    .await;
    let (app, issuer) = (&w.app, &w.issuer);
    let now = chrono::Utc::now().timestamp();

    let missing = app.client.post(app.url("/v1/validate")).send().await.unwrap();
    assert_eq!(body(missing, 401).await["code"], "missing_credentials");

    refused(app.validate(&w.token_with("s", |c| c["exp"] = (now - 10).into())).await, "token_expired").await;
    refused(app.validate(&w.token_with("s", |c| c["nbf"] = (now + 120).into())).await, "token_not_yet_valid").await;
    refused(app.validate(&w.token_with("s", |c| c["iat"] = (now + 120).into())).await, "token_not_yet_valid").await;
    refused(app.validate(&w.token_with("s", |c| c["iat"] = "yesterday".into())).await, "malformed_token").await;
    // An `exp` in milliseconds (an issuer's slip) is refused, not a token for 55,000 years.
    refused(app.validate(&w.token_with("s", |c| c["exp"] = (now * 1000).into())).await, "malformed_token").await;
    refused(app.validate(&w.token_with("s", |c| c["aud"] = "someone-else".into())).await, "audience_mismatch").await;
    refused(
        app.validate(&w.token_with("s", |c| {
            c.as_object_mut().unwrap().remove("aud");
        }))
        .await,
        "audience_mismatch",
    )
    .await;
    refused(
        app.validate(&w.token_with("s", |c| c["iss"] = "https://evil.example.com".into())).await,
        "issuer_not_allowed",
    )
    .await;
    refused(
        app.validate(&w.token_with("s", |c| c["iss"] = "http://127.0.0.1:9/es-only".into())).await,
        "algorithm_not_allowed",
    )
    .await;

    let claims = issuer.claims("s", AUDIENCE);
    let none = format!("{}.{}.", encode_part(&json!({"alg": "none", "typ": "JWT"})), encode_part(&claims));
    refused(app.validate(&none).await, "algorithm_not_allowed").await;
    let ps256 = issuer.sign_with_header("rsa-1", &json!({"alg": "PS256", "kid": "rsa-1"}), &claims);
    refused(app.validate(&ps256).await, "algorithm_not_allowed").await;
    // An allowed algorithm on a published key of another kind (an ES256 signature naming the
    // RSA key): refused for its algorithm, not as a key the issuer does not publish.
    let crossed = issuer.sign_with_header("ec-1", &json!({"alg": "ES256", "kid": "rsa-1"}), &claims);
    refused(app.validate(&crossed).await, "algorithm_not_allowed").await;
    // The same for a key published since the keys were read: read again, then refused for its
    // algorithm too, not as a key the issuer does not publish.
    let later = issuer.add_key(Alg::Rs256);
    let crossed = issuer.sign_with_header("ec-1", &json!({"alg": "ES256", "kid": later}), &claims);
    refused(app.validate(&crossed).await, "algorithm_not_allowed").await;
    // Algorithm confusion: HS256 "signed" with the issuer's public key as the HMAC secret.
    let jwks: Value = reqwest::get(issuer.jwks_uri()).await.unwrap().json().await.unwrap();
    let public_n = jwks["keys"][0]["n"].as_str().unwrap().to_owned();
    let message = format!("{}.{}", encode_part(&json!({"alg": "HS256", "kid": "rsa-1"})), encode_part(&claims));
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public_n.as_bytes()),
        message.as_bytes(),
    );
    let confused = format!("{message}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    refused(app.validate(&confused).await, "algorithm_not_allowed").await;

    // A valid token whose payload was changed after signing.
    let good = w.token("tamper");
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    payload["sub"] = "admin".into();
    parts[1] = encode_part(&payload);
    refused(app.validate(&parts.join(".")).await, "signature_invalid").await;

    let stranger = issuer.add_unpublished_key(Alg::Rs256);
    refused(app.validate(&issuer.sign(&stranger, &claims)).await, "unknown_key").await;

    for garbage in ["abc", "a.b.c", "a.b.c.d.e", "....", &"x".repeat(20_000)] {
        refused(app.validate(garbage).await, "malformed_token").await;
    }
    let no_sub = w.token_with("s", |c| {
        c.as_object_mut().unwrap().remove("sub");
    });
    refused(app.validate(&no_sub).await, "malformed_token").await;
    let crit = issuer.sign_with_header("rsa-1", &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}), &claims);
    refused(app.validate(&crit).await, "malformed_token").await;

    assert_eq!(app.db.sql().await.provisioning_counts().await, [0, 0, 0, 0, 0], "no refused token wrote anything");
}

async fn jku_x5u_and_embedded_jwk_headers_are_ignored(backend: Backend) {
    let w = world(backend).await;
    let attacker = LocalIssuer::start().await.unwrap();
    let claims = w.issuer.claims("victim", AUDIENCE);
    let attacker_jwks: Value = reqwest::get(attacker.jwks_uri()).await.unwrap().json().await.unwrap();
    let before = attacker.jwks_fetches();
    for header in [
        json!({"alg": "RS256", "kid": "rsa-1", "jku": attacker.jwks_uri()}),
        json!({"alg": "RS256", "kid": "rsa-1", "x5u": attacker.jwks_uri()}),
        json!({"alg": "RS256", "kid": "rsa-1", "jwk": attacker_jwks["keys"][0]}),
    ] {
        let forged = attacker.sign_with_header("rsa-1", &header, &claims);
        refused(w.app.validate(&forged).await, "signature_invalid").await;
    }
    assert_eq!(attacker.jwks_fetches(), before, "the attacker's URLs were never fetched");
}

async fn an_issuer_without_jit_refuses_unknown_subjects(backend: Backend) {
    let w = world_with(backend, |config| config.issuers.last_mut().unwrap().jit = false).await;
    let problem = body(w.app.validate(&w.token("stranger")).await, 403).await;
    assert_eq!(problem["code"], "identity_not_provisioned");
    assert_eq!(w.app.db.sql().await.count("users").await, 0);
    let mut claim = crate::helpers::identity("stranger", "s@example.com", None);
    claim["issuer"] = w.issuer.issuer().into();
    let booted = body(w.app.bootstrap(&claim).await, 201).await;
    let validated = body(w.app.validate(&w.token("stranger")).await, 200).await;
    assert_eq!(validated["user_id"], booted["user_id"]);
}

async fn a_new_key_is_picked_up_without_a_restart(backend: Backend) {
    let w = world(backend).await;
    body(w.app.validate(&w.token("rot")).await, 200).await;
    let fetches = w.issuer.jwks_fetches();
    let rotated = w.issuer.add_key(Alg::Rs256);
    w.issuer.remove_key("rsa-1");
    let token = w.issuer.sign(&rotated, &w.issuer.claims("rot", AUDIENCE));
    body(w.app.validate(&token).await, 200).await;
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "one refetch for the unknown kid");
    body(w.app.validate(&w.issuer.sign(&rotated, &w.issuer.claims("rot-2", AUDIENCE))).await, 200).await;
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "the new key is cached");
}

/// An issuer that pulls its keys (a compromise) and publishes an empty set meanwhile: the empty
/// set is its answer, not a failed fetch that would keep the old keys verifying — nor a token
/// verified (and cached) before, replayed.
async fn keys_the_issuer_pulled_stop_verifying_even_when_none_is_left(backend: Backend) {
    let w = world(backend).await;
    let verified_before = w.token("pulled");
    body(w.app.validate(&verified_before).await, 200).await;
    body(w.app.validate(&verified_before).await, 200).await;
    let signed_before = w.token("pulled-later");
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        w.issuer.remove_key(kid);
    }
    // A bad signature under a pulled key's id makes them be fetched again too, which shows the
    // id is no longer published: the answer says so, as it does for the next token under it.
    let forger = w.issuer.add_unpublished_key(Alg::Rs256);
    let forged = w.issuer.sign_with_header(
        &forger,
        &json!({"alg": "RS256", "kid": "rsa-1"}),
        &w.issuer.claims("forged", AUDIENCE),
    );
    let fetches = w.issuer.jwks_fetches();
    refused(w.app.validate(&forged).await, "unknown_key").await;
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "found out by a refetch");
    // A token under a key id not seen yet makes the keys be fetched again.
    let probe = w.issuer.add_unpublished_key(Alg::Rs256);
    refused(w.app.validate(&w.issuer.sign(&probe, &w.issuer.claims("probe", AUDIENCE))).await, "unknown_key").await;
    refused(w.app.validate(&signed_before).await, "unknown_key").await;
    refused(w.app.validate(&verified_before).await, "unknown_key").await;
}

async fn a_rekey_under_the_same_kid_costs_one_refetch(backend: Backend) {
    let w = world(backend).await;
    body(w.app.validate(&w.token("rekey")).await, 200).await;
    let fetches = w.issuer.jwks_fetches();
    w.issuer.rekey("rsa-1");
    body(w.app.validate(&w.token("rekey-2")).await, 200).await;
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1);

    // Forgeries under a known kid cannot make Tessera hammer the issuer: within the cooldown
    // they cost no refetch at all.
    let forger = w.issuer.add_unpublished_key(Alg::Rs256);
    let app = Arc::new(w.app);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let forged = w.issuer.sign_with_header(
            &forger,
            &json!({"alg": "RS256", "kid": "rsa-1"}),
            &w.issuer.claims(&format!("f{i}"), AUDIENCE),
        );
        let app = app.clone();
        tasks.push(tokio::spawn(async move { app.validate(&forged).await }));
    }
    for task in tasks {
        refused(task.await.unwrap(), "signature_invalid").await;
    }
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1);
}

async fn unknown_kids_refetch_at_most_once_per_cooldown(backend: Backend) {
    let w = world(backend).await;
    body(w.app.validate(&w.token("warm")).await, 200).await;
    let fetches = w.issuer.jwks_fetches();
    let unknown = w.issuer.add_unpublished_key(Alg::Rs256);
    let app = Arc::new(w.app);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let token = w.issuer.sign(&unknown, &w.issuer.claims(&format!("u{i}"), AUDIENCE));
        let app = app.clone();
        tasks.push(tokio::spawn(async move { app.validate(&token).await }));
    }
    for task in tasks {
        refused(task.await.unwrap(), "unknown_key").await;
    }
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "concurrent misses collapse into one refetch");
}

async fn an_unreachable_issuer_serves_stale_keys(backend: Backend) {
    let w = world(backend).await;
    w.keys_expiring_in_a_second().await;
    body(w.app.validate(&w.token("stale-1")).await, 200).await;
    w.issuer.set_available(false);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fetches = w.issuer.jwks_fetches();
    // Past max-age: a refresh is tried (in the background), fails, and the cached keys keep
    // working.
    body(w.app.validate(&w.token("stale-2")).await, 200).await;
    eventually("a refresh is attempted", || async { w.issuer.jwks_fetches() + w.issuer.discovery_fetches() > fetches })
        .await;
    body(w.app.validate(&w.token("stale-2b")).await, 200).await;
    w.issuer.shut_down();
    body(w.app.validate(&w.token("stale-3")).await, 200).await;
}

async fn expired_keys_are_served_at_once_while_the_issuer_hangs(backend: Backend) {
    // A fetch may take up to a minute here: a request that waited for it would time out below.
    let w = world_with(backend, |config| config.jwks.fetch_timeout = Duration::from_secs(60)).await;
    w.keys_expiring_in_a_second().await;
    body(w.app.validate(&w.token("hang-1")).await, 200).await;
    let fetches = w.issuer.jwks_fetches();
    w.issuer.hold_jwks(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    for i in 0..5 {
        let token = w.token(&format!("hang-2-{i}"));
        let response = client.post(w.app.url("/v1/validate")).bearer_auth(token).send().await;
        let response = response.expect("answered without waiting for the hanging issuer");
        body(response, 200).await;
    }
    // One refresh is in flight, held by the issuer; the requests did not start more.
    eventually("the refresh reaches the issuer", || async { w.issuer.jwks_fetches() == fetches + 1 }).await;
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "one background refresh, however many requests");
    // Released, the refresh lands; a key published meanwhile verifies with no further fetch.
    let added = w.issuer.add_key(Alg::Es256);
    w.issuer.set_max_age(300);
    w.issuer.hold_jwks(false);
    eventually("the held refresh completes", || async {
        let token = w.issuer.sign(&added, &w.issuer.claims("hang-3", AUDIENCE));
        w.app.validate(&token).await.status() == 200
    })
    .await;
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1);
}

async fn forged_signatures_do_not_hold_back_a_key_rotation(backend: Backend) {
    let w = world_with(backend, |config| config.jwks.refetch_cooldown = Duration::from_secs(300)).await;
    body(w.app.validate(&w.token("rotation-0")).await, 200).await;
    // A forgery under a published kid spends the bad-signature refetch...
    let forger = w.issuer.add_unpublished_key(Alg::Rs256);
    let forged = w.issuer.sign_with_header(
        &forger,
        &json!({"alg": "RS256", "kid": "rsa-1"}),
        &w.issuer.claims("rotation-forged", AUDIENCE),
    );
    refused(w.app.validate(&forged).await, "signature_invalid").await;
    // ...but not the unknown-kid one: the issuer's new key is picked up at its first token.
    let fetches = w.issuer.jwks_fetches();
    let rotated = w.issuer.add_key(Alg::Rs256);
    let token = w.issuer.sign(&rotated, &w.issuer.claims("rotation-1", AUDIENCE));
    body(w.app.validate(&token).await, 200).await;
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1);
}

/// A token without a kid takes the only key of its algorithm. Where several fit it is
/// `unknown_key`, and the miss refetches: once the issuer has dropped all but one (the end of a
/// rotation), that one is found. No cooldown here, so that the refetch is made at once.
async fn a_token_without_a_kid_takes_the_only_key_of_its_algorithm(backend: Backend) {
    let w = world_with(backend, |config| config.jwks.refetch_cooldown = Duration::ZERO).await;
    body(w.app.validate(&w.token("kidless-0")).await, 200).await;
    let second = w.issuer.add_key(Alg::Rs256);
    body(w.app.validate(&w.issuer.sign(&second, &w.issuer.claims("kidless-1", AUDIENCE))).await, 200).await;
    let kidless = w.issuer.sign_with_header("rsa-1", &json!({"alg": "RS256"}), &w.issuer.claims("kidless-2", AUDIENCE));
    refused(w.app.validate(&kidless).await, "unknown_key").await;
    w.issuer.remove_key(&second);
    let fetches = w.issuer.jwks_fetches();
    body(w.app.validate(&kidless).await, 200).await;
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "found by the miss's refetch");
    let kidless = w.issuer.sign_with_header("ec-1", &json!({"alg": "ES256"}), &w.issuer.claims("kidless-3", AUDIENCE));
    body(w.app.validate(&kidless).await, 200).await;
}

async fn an_unknown_kid_while_the_issuer_is_down_is_a_503(backend: Backend) {
    let w = world(backend).await;
    body(w.app.validate(&w.token("down-0")).await, 200).await;
    let unknown = w.issuer.add_key(Alg::Rs256);
    w.issuer.set_available(false);
    let token = w.issuer.sign(&unknown, &w.issuer.claims("down-1", AUDIENCE));
    let response = w.app.validate(&token).await;
    assert_eq!(body(response, 503).await["code"], "issuer_unavailable", "the key may exist: not a 401");
    // Known keys keep working meanwhile.
    body(w.app.validate(&w.token("down-2")).await, 200).await;
}

async fn no_keys_at_all_is_a_503(backend: Backend) {
    let issuer = LocalIssuer::start().await.unwrap();
    issuer.set_available(false);
    let app = TestApp::spawn_with(backend, |config| config.issuers.push(local_issuer_config(&issuer))).await;
    let token = issuer.sign("rsa-1", &issuer.claims("nobody", AUDIENCE));
    let problem = body(app.validate(&token).await, 503).await;
    assert_eq!(problem["code"], "issuer_unavailable");
    assert_eq!(app.db.sql().await.count("users").await, 0);
}

async fn concurrent_validations_of_one_new_subject_create_one_user(backend: Backend) {
    let w = world(backend).await;
    // Distinct tokens for one subject, so that no token cache is involved.
    let tokens: Vec<String> = (0..40).map(|i| w.token_with("crowd", |c| c["jti"] = i.into())).collect();
    let app = Arc::new(w.app);
    let mut tasks = Vec::new();
    for token in tokens {
        let app = app.clone();
        tasks.push(tokio::spawn(async move { body(app.validate(&token).await, 200).await }));
    }
    let mut users = HashSet::new();
    let mut created = 0;
    for task in tasks {
        let value = task.await.unwrap();
        users.insert(value["user_id"].as_str().unwrap().to_owned());
        created += usize::from(value["created"] == true);
    }
    assert_eq!((users.len(), created), (1, 1));
    assert_eq!(app.db.sql().await.provisioning_counts().await, [1, 1, 1, 1, 1]);
}

async fn concurrent_validations_of_many_identities_each_find_their_own_user(backend: Backend) {
    // The principal cache off: every validation reads its principal, and those in flight together
    // share reads (coalesced), which must still give each token its own user.
    let w = world_with(backend, |config| config.cache.principal_ttl = Duration::ZERO).await;
    let mut known = Vec::new();
    for i in 0..40 {
        let subject = format!("known-{i}");
        let user = body(w.app.validate(&w.token(&subject)).await, 200).await["user_id"].as_str().unwrap().to_owned();
        known.push((subject, user));
    }
    let path = format!("/admin/users/{}", known[0].1);
    body(w.app.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    let before = w.app.db.sql().await.provisioning_counts().await;

    // Fresh tokens (a new `jti`: no token cache) of every known identity and of eight new ones.
    let subjects: Vec<String> =
        known.iter().map(|(subject, _)| subject.clone()).chain((0..8).map(|i| format!("new-{i}"))).collect();
    let tokens: Vec<String> = subjects.iter().map(|s| w.token_with(s, |c| c["jti"] = "again".into())).collect();
    let app = Arc::new(w.app);
    let mut tasks = Vec::new();
    for token in tokens {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let response = app.validate(&token).await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }));
    }
    let mut new_users = HashSet::new();
    for (subject, task) in subjects.iter().zip(tasks) {
        let (status, answer) = task.await.unwrap();
        let known_user = known.iter().find(|(s, _)| s == subject).map(|(_, user)| user);
        if subject == &known[0].0 {
            assert_eq!((status, answer["code"].as_str()), (403, Some("user_disabled")), "{subject}");
        } else if let Some(user) = known_user {
            assert_eq!(status, 200, "{subject}: {answer}");
            assert_eq!((answer["user_id"].as_str(), &answer["created"]), (Some(user.as_str()), &json!(false)));
            assert_eq!(answer["subject"], subject.as_str());
        } else {
            assert_eq!((status, &answer["created"]), (200, &json!(true)), "{subject}: {answer}");
            new_users.insert(answer["user_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(new_users.len(), 8);
    let after = app.db.sql().await.provisioning_counts().await;
    // Eight users, identities, teams and memberships more, and their eight `user.created` events.
    assert_eq!(after.map(|n| n - 8), before);
}

async fn check_answers_for_members_only(backend: Backend) {
    let w = world(backend).await;
    let token = w.token("member");
    let me = body(w.app.validate(&token).await, 200).await;
    let other = body(w.app.validate(&w.token("other")).await, 200).await;
    let check = |team: String| {
        let url = format!(
            "{}?team={}",
            w.app.url("/v1/check"),
            url::form_urlencoded::byte_serialize(team.as_bytes()).collect::<String>()
        );
        let request = w.app.client.get(url).bearer_auth(&token);
        async move { request.send().await.unwrap() }
    };
    for own in [me["teams"][0]["slug"].as_str().unwrap(), me["teams"][0]["id"].as_str().unwrap()] {
        assert_eq!(check(own.to_owned()).await.status(), 204);
    }
    for foreign in [other["teams"][0]["slug"].as_str().unwrap(), "no-such-team", &uuid::Uuid::now_v7().to_string()] {
        assert_eq!(body(check(foreign.to_owned()).await, 403).await["code"], "not_a_member");
    }
    assert_eq!(body(check("Not A Slug".into()).await, 400).await["code"], "invalid_team");
    let missing = w.app.client.get(w.app.url("/v1/check")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(body(missing, 400).await["code"], "missing_field");
    let unauthenticated = w.app.client.get(w.app.url("/v1/check?team=x")).send().await.unwrap();
    assert_eq!(body(unauthenticated, 401).await["code"], "missing_credentials");
}

async fn me_returns_the_user_with_identities_and_teams(backend: Backend) {
    let w = world(backend).await;
    let token = w.token_with("me", |c| c["name"] = "Meg Me".into());
    let response = w.app.client.get(w.app.url("/v1/me")).bearer_auth(&token).send().await.unwrap();
    let me = body(response, 200).await;
    assert_eq!(me["name"], "Meg Me");
    assert_eq!(me["identities"][0]["subject"], "me");
    assert_eq!(me["identities"][0]["provider"], "local");
    assert_eq!(me["teams"][0]["name"], "Meg's Team");
    assert_eq!(me["teams"][0]["is_default"], true);
    let bad = w.app.client.get(w.app.url("/v1/me")).bearer_auth("nope").send().await.unwrap();
    refused(bad, "malformed_token").await;
}

async fn disabling_a_user_refuses_their_tokens_at_once(backend: Backend) {
    let w = world(backend).await;
    let token = w.token("dis");
    let user = body(w.app.validate(&token).await, 200).await;
    let path = format!("/admin/users/{}", user["user_id"].as_str().unwrap());
    let disabled =
        body(w.app.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    assert_eq!(disabled["disabled"], true);
    assert_eq!(body(w.app.validate(&token).await, 403).await["code"], "user_disabled");
    body(w.app.admin(Method::PATCH, &path).json(&json!({"disabled": false})).send().await.unwrap(), 200).await;
    body(w.app.validate(&token).await, 200).await;
    let missing = w.app.admin(Method::PATCH, &path).json(&json!({})).send().await.unwrap();
    assert_eq!(body(missing, 400).await["code"], "missing_field");
}

async fn a_cached_token_is_refused_once_expired(backend: Backend) {
    let w = world(backend).await;
    let token = w.token_with("short", |c| c["exp"] = (chrono::Utc::now().timestamp() + 1).into());
    body(w.app.validate(&token).await, 200).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    refused(w.app.validate(&token).await, "token_expired").await;
}

async fn store_failure_is_a_503_never_a_fallback(backend: Backend) {
    let w = world(backend).await;
    body(w.app.validate(&w.token("before")).await, 200).await;
    w.app.close_store().await;
    let problem = body(w.app.validate(&w.token("after")).await, 503).await;
    assert_eq!(problem["code"], "store_unavailable");
}

/// The order of the P-256 group.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The other valid ES256 signature of the same claims: `(r, n - s)` for `(r, s)`. Anyone can make
/// it from a token they hold, without the key.
fn other_s_form(token: &str) -> String {
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    assert_eq!(signature.len(), 64, "an ES256 signature is r || s");
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let difference = i16::from(P256_ORDER[i]) - i16::from(signature[32 + i]) - borrow;
        borrow = i16::from(difference < 0);
        signature[32 + i] = difference.rem_euclid(256) as u8;
    }
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// ES256 signatures are malleable: `(r, s)` and `(r, n - s)` both verify, so one set of claims has
/// two token strings. Tessera accepts both (issuers differ in which they emit) and decides
/// nothing on the token string: both resolve to the same user, and disabling the user refuses
/// both at once although each has its own entry in the verified-token cache.
async fn both_es256_signature_forms_are_one_token_to_every_decision(backend: Backend) {
    let w = world(backend).await;
    let token = w.issuer.sign("ec-1", &w.issuer.claims("malleable", AUDIENCE));
    let twin = other_s_form(&token);
    assert_ne!(token, twin);
    let first = body(w.app.validate(&token).await, 200).await;
    let second = body(w.app.validate(&twin).await, 200).await;
    assert_eq!((first["created"].clone(), second["created"].clone()), (json!(true), json!(false)));
    assert_eq!(first["user_id"], second["user_id"]);
    assert_eq!(w.app.db.sql().await.provisioning_counts().await, [1, 1, 1, 1, 1]);

    // Both forms are now cached; a decision about the user reaches both.
    let path = format!("/admin/users/{}", first["user_id"].as_str().unwrap());
    let set_disabled = |disabled: bool| w.app.admin(Method::PATCH, &path).json(&json!({ "disabled": disabled })).send();
    body(set_disabled(true).await.unwrap(), 200).await;
    for form in [&token, &twin] {
        assert_eq!(body(w.app.validate(form).await, 403).await["code"], "user_disabled");
    }
    body(set_disabled(false).await.unwrap(), 200).await;
    for form in [&token, &twin] {
        assert_eq!(body(w.app.validate(form).await, 200).await["user_id"], first["user_id"]);
    }

    // The encoding itself is not malleable: non-zero padding bits in the signature's last
    // character are refused.
    let (message, signature) = token.rsplit_once('.').unwrap();
    let last = signature.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let flipped = alphabet.chars().nth(alphabet.find(last).unwrap() ^ 1).unwrap();
    let padded = format!("{message}.{}{flipped}", &signature[..signature.len() - 1]);
    refused(w.app.validate(&padded).await, "malformed_token").await;

    // Ed25519 is not malleable: `S + L` (a non-canonical scalar) is refused.
    let ed = w.issuer.sign("ed-1", &w.issuer.claims("not-malleable", AUDIENCE));
    body(w.app.validate(&ed).await, 200).await;
    let (message, signature) = ed.rsplit_once('.').unwrap();
    let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let mut carry = 0u16;
    for (i, byte) in ED25519_ORDER_LE.iter().enumerate() {
        let sum = u16::from(signature[32 + i]) + u16::from(*byte) + carry;
        signature[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    let non_canonical = format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature));
    refused(w.app.validate(&non_canonical).await, "signature_invalid").await;
}

/// The order of the Ed25519 group, little-endian.
const ED25519_ORDER_LE: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// An issuer whose tokens serve two backends (two configured audiences): with `?audience=`, each
/// backend is answered only for the tokens meant for it — also from the token cache, warmed by
/// the other's request — at `/v1/validate` and at `/v1/check`.
async fn a_backend_naming_itself_refuses_upstream_tokens_meant_for_another(backend: Backend) {
    let w = world_with(backend, |config| config.issuers.last_mut().unwrap().audiences.push("reports".into())).await;
    let validate = |token: String, audience: &str| {
        let url = w.app.url(&format!("/v1/validate?audience={audience}"));
        w.app.client.post(url).bearer_auth(token).send()
    };
    let for_api = w.token("ada");
    let for_reports = w.token_with("ada", |c| c["aud"] = json!(["reports", "elsewhere"]));
    for token in [&for_api, &for_reports] {
        body(w.app.validate(token).await, 200).await;
    }
    let team = body(w.app.validate(&for_api).await, 200).await["teams"][0]["slug"].as_str().unwrap().to_owned();
    let check = |token: &str, audience: &str| {
        let url = w.app.url(&format!("/v1/check?team={team}&audience={audience}"));
        w.app.client.get(url).bearer_auth(token).send()
    };
    assert_eq!(check(&for_api, AUDIENCE).await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(check(&for_reports, "reports").await.unwrap().status(), StatusCode::NO_CONTENT);
    refused(check(&for_api, "reports").await.unwrap(), "audience_mismatch").await;
    refused(check(&for_reports, AUDIENCE).await.unwrap(), "audience_mismatch").await;
    body(validate(for_api.clone(), AUDIENCE).await.unwrap(), 200).await;
    body(validate(for_reports.clone(), "reports").await.unwrap(), 200).await;
    refused(validate(for_api, "reports").await.unwrap(), "audience_mismatch").await;
    refused(validate(for_reports.clone(), AUDIENCE).await.unwrap(), "audience_mismatch").await;
    // An audience the issuer is not configured with names no backend here.
    refused(validate(for_reports, "elsewhere").await.unwrap(), "audience_mismatch").await;
}

/// An issuer whose `api_audiences` name the audience meant for Tessera's own API: a token meant
/// for another backend still says who its user is at `/v1/validate`, but does not act for them on
/// `/v1/me` and the rest — refused before its user is looked up or made.
async fn api_audiences_keep_other_backends_tokens_off_tesseras_own_api(backend: Backend) {
    let w = world_with(backend, |config| {
        let issuer = config.issuers.last_mut().unwrap();
        issuer.audiences.push("tessera-api".into());
        issuer.api_audiences = Some(vec!["tessera-api".into()]);
    })
    .await;
    let me = |token: &str| w.app.client.get(w.app.url("/v1/me")).bearer_auth(token).send();
    let for_a_backend = w.token("newcomer");
    refused(me(&for_a_backend).await.unwrap(), "audience_mismatch").await;
    assert_eq!(w.app.db.sql().await.count("users").await, 0, "nobody was provisioned by the refused token");
    body(w.app.validate(&for_a_backend).await, 200).await;
    refused(me(&for_a_backend).await.unwrap(), "audience_mismatch").await;
    let for_tessera = w.token_with("newcomer", |c| c["aud"] = json!(["tessera-api"]));
    let mine = body(me(&for_tessera).await.unwrap(), 200).await;
    assert_eq!(mine["identities"][0]["subject"], "newcomer");
}
