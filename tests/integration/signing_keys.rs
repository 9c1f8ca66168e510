//! Tessera's own signing keys (the OpenID Provider's): the JWKS over HTTP, signatures that a
//! relying party's JWT library checks against it for every algorithm, rotation that publishes a
//! key before it signs and keeps the old one until its tokens have expired, keys encrypted at
//! rest, and concurrent first use by two instances.
//!
//! Rotation stories run with durations of a fraction of a second; every assertion about which key
//! signs is made against the times the keys report, never against how long a step took.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};
use tessera::crypto::keyring::{DecryptError, KeyRing};
use tessera::domain::SigningAlg;
use tessera::error::PublicError;
use tessera::service::op::keys::{KeyStatus, SigningError, SigningKeySettings, SigningKeys, VerifyError};
use tessera::store::{SigningKeyRecord, Store};

use crate::helpers::{Backend, TestApp, TestDb, json, on_both_backends};

on_both_backends!(
    the_jwks_is_served_with_its_cache_lifetime_and_verifies_tokens_of_every_algorithm,
    the_jwks_answers_404_while_the_provider_is_off,
    a_rotated_key_is_published_before_it_signs_and_the_old_one_until_its_tokens_expired,
    a_key_that_signed_for_the_rotation_period_is_rotated_on_refresh,
    a_rotation_asked_for_when_one_is_due_makes_one_key,
    a_key_made_elsewhere_verifies_at_once_once_the_keys_are_marked_stale,
    verify_accepts_only_valid_tokens_of_the_expected_type_and_issuer,
    a_store_failure_is_not_reported_as_a_bad_token,
    a_rotation_that_cannot_be_written_leaves_the_keys_serving,
    private_keys_are_stored_encrypted_and_bound_to_their_row,
    concurrent_first_signatures_on_two_instances_leave_one_usable_key,
    an_instance_whose_ring_cannot_decrypt_the_next_key_is_not_ready,
    a_key_whose_ring_key_was_lost_is_rotated_away_at_once,
    a_public_key_that_is_not_its_key_ids_is_refused,
);

const ISSUER: &str = "https://tessera.example.com";

fn ring() -> Arc<KeyRing> {
    Arc::new(KeyRing::parse(&format!("k1:{}", STANDARD.encode([7u8; 32]))).unwrap())
}

async fn signing_keys(store: Arc<dyn Store>, settings: SigningKeySettings) -> SigningKeys {
    SigningKeys::new(store, ring(), settings).await.expect("signing keys")
}

/// Durations short enough for a test: a 400 ms JWKS lifetime (keys refreshed every 100 ms,
/// published 500 ms before they sign), tokens of at most 400 ms.
fn quick() -> SigningKeySettings {
    SigningKeySettings {
        jwks_max_age: Duration::from_millis(400),
        rotation_period: Duration::from_secs(86_400),
        max_token_lifetime: Duration::from_millis(400),
    }
}

fn claims(sub: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({ "iss": ISSUER, "sub": sub, "aud": "app", "iat": now, "exp": now + 3600 })
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

/// Verifies a token against a JWK Set with jsonwebtoken, as a relying party would, not through
/// Tessera's own verification.
fn verify_with_jwks(token: &str, jwks: &Value) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let jwk = set.find(header.kid.as_deref().ok_or("no kid")?).ok_or("unknown kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&["app"]);
    validation.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|data| data.claims).map_err(|e| e.to_string())
}

async fn sleep_until(time: DateTime<Utc>) {
    let wait = (time - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
}

async fn the_jwks_is_served_with_its_cache_lifetime_and_verifies_tokens_of_every_algorithm(backend: Backend) {
    let db = TestDb::new(backend).await;
    // Another instance signs first (making the first key of each algorithm); the server reads
    // the keys at start-up.
    let other = signing_keys(db.store().await, SigningKeySettings::default()).await;
    let mut tokens = Vec::new();
    for alg in SigningAlg::ALL {
        tokens.push((alg, other.sign(alg, "JWT", &claims("ada")).await.unwrap()));
    }
    let mut config = db.config();
    config.encryption = Some(ring());
    config.oidc.jwks_max_age = Duration::from_secs(120);
    let app = TestApp::start(db, &config).await;

    let response = app.client.get(app.url("/oauth/jwks")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/jwk-set+json");
    assert_eq!(response.headers()["cache-control"], "public, max-age=120");
    let jwks: Value = response.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "{jwks}");
    for key in keys {
        assert_eq!(key["use"], "sig", "{key}");
        let members: Vec<&str> = key.as_object().unwrap().keys().map(String::as_str).collect();
        let expected: &[&str] = match key["alg"].as_str().unwrap() {
            "ES256" => &["alg", "crv", "kid", "kty", "use", "x", "y"],
            "RS256" => &["alg", "e", "kid", "kty", "n", "use"],
            "EdDSA" => &["alg", "crv", "kid", "kty", "use", "x"],
            other => panic!("unexpected alg {other}"),
        };
        assert_eq!(members, expected, "public members only: {key}");
    }
    for (alg, token) in &tokens {
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!((format!("{:?}", header.alg), header.typ.as_deref()), (alg.as_str().to_owned(), Some("JWT")));
        let claims = verify_with_jwks(token, &jwks).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(claims["sub"], "ada");
    }
    app.stop().await;
}

async fn the_jwks_answers_404_while_the_provider_is_off(backend: Backend) {
    // The test server has a public URL but no key ring.
    let app = TestApp::spawn(backend).await;
    let body = json(app.client.get(app.url("/oauth/jwks")).send().await.unwrap(), 404).await;
    assert_eq!(body["code"], "openid_provider_disabled");
    assert!(body["detail"].as_str().unwrap().contains("TESSERA_ENCRYPTION_KEYS"), "{body}");
    app.stop().await;
}

async fn a_rotated_key_is_published_before_it_signs_and_the_old_one_until_its_tokens_expired(backend: Backend) {
    // Windows of seconds, so that every step below runs inside the window it checks, however
    // loaded the machine (each is asserted to have, rather than skipped when it did not).
    let settings = SigningKeySettings {
        jwks_max_age: Duration::from_secs(3),
        max_token_lifetime: Duration::from_secs(3),
        ..quick()
    };
    let db = TestDb::new(backend).await;
    let keys = signing_keys(db.store().await, settings).await;
    // A second instance, to see that it publishes and switches on the same schedule.
    let other = signing_keys(db.store().await, settings).await;
    let old_token = keys.sign(SigningAlg::ES256, "JWT", &claims("ada")).await.unwrap();
    let old = kid(&old_token);

    let next = keys.rotate(SigningAlg::ES256, false).await.unwrap();
    assert_ne!(next.kid, old);
    assert_eq!(next.status, KeyStatus::Next);
    assert!(next.signs_from - next.created_at >= chrono::Duration::from_std(settings.publication_lead()).unwrap());
    other.refresh().await.unwrap(); // what its worker does every refresh interval
    for instance in [&keys, &other] {
        let published = kids(&instance.jwks().await.unwrap().document);
        assert_eq!(published, [old.clone(), next.kid.clone()], "published at once, before it signs");
        let token = instance.sign(SigningAlg::ES256, "JWT", &claims("ada")).await.unwrap();
        assert!(Utc::now() < next.signs_from, "the checks before the switch ran past it");
        assert_eq!(kid(&token), old, "the current key signs until the next one starts");
    }
    // Signed by the old key while it still signs, saying it was issued after the key retires:
    // what a leaked key would sign.
    let mut later = claims("mallory");
    later["iat"] = (next.signs_from.timestamp() + 120).into();
    let forged = keys.sign(SigningAlg::ES256, "JWT", &later).await.unwrap();
    assert_eq!(kid(&forged), old);
    let listed = keys.list().await.unwrap();
    let retiring = listed.iter().find(|k| k.kid == old).unwrap();
    assert_eq!(retiring.retired_at, Some(next.signs_from), "the old key stops when the next one starts");
    let published_for = settings.max_token_lifetime + tessera::service::op::keys::LEEWAY;
    let unpublish_at = next.signs_from + chrono::Duration::from_std(published_for).unwrap();
    assert_eq!(retiring.unpublish_at, Some(unpublish_at));

    sleep_until(next.signs_from).await;
    let new_tokens = [
        keys.sign(SigningAlg::ES256, "JWT", &claims("bob")).await.unwrap(),
        other.sign(SigningAlg::ES256, "JWT", &claims("bob")).await.unwrap(),
    ];
    for token in &new_tokens {
        assert_eq!(kid(token), next.kid, "both instances switch on time");
    }
    let jwks = keys.jwks().await.unwrap().document;
    assert!(kids(&jwks).contains(&old), "retired, still published");
    verify_with_jwks(&old_token, &jwks).unwrap();
    let _: Value = keys.verify(&old_token, "JWT", ISSUER).await.unwrap();
    let refused = keys.verify::<Value>(&forged, "JWT", ISSUER).await.unwrap_err();
    assert!(matches!(refused, VerifyError::SignatureInvalid), "issued after its key retired: {refused:?}");
    let statuses: Vec<KeyStatus> = keys.list().await.unwrap().iter().map(|k| k.status).collect();
    assert_eq!(statuses, [KeyStatus::Retired, KeyStatus::Signing]);
    assert_eq!(keys.forget_unpublished().await.unwrap(), 0, "retired, still published: its private key is kept");
    assert!(Utc::now() < unpublish_at, "the checks of the retired key ran past its unpublication");

    sleep_until(unpublish_at).await;
    for instance in [&keys, &other] {
        let jwks = instance.jwks().await.unwrap().document;
        assert_eq!(kids(&jwks), std::slice::from_ref(&next.kid), "gone once its last token has expired");
        assert_eq!(verify_with_jwks(&old_token, &jwks).unwrap_err(), "unknown kid");
        let refused = instance.verify::<Value>(&old_token, "JWT", ISSUER).await.unwrap_err();
        assert!(matches!(refused, VerifyError::UnknownKey), "{refused:?}");
        for token in &new_tokens {
            verify_with_jwks(token, &jwks).unwrap();
        }
    }

    // The sweeper forgets the unpublished key's private key, once; the row stays, and a
    // re-encryption under a new ring key passes it by.
    assert_eq!(keys.forget_unpublished().await.unwrap(), 1);
    assert_eq!(other.forget_unpublished().await.unwrap(), 0, "already forgotten");
    let store = db.store().await;
    let stored = store.all_signing_keys().await.unwrap();
    let private_of = |kid: &str| stored.iter().find(|k| k.kid == kid).unwrap().private_key.clone();
    assert!(private_of(&old).is_empty());
    assert!(ring().decrypt(&private_of(&next.kid), &SigningKeyRecord::aad(&next.kid)).is_ok(), "the signing key kept");
    let rotated = Arc::new(
        KeyRing::parse(&format!("k2:{},k1:{}", STANDARD.encode([8u8; 32]), STANDARD.encode([7u8; 32]))).unwrap(),
    );
    let rotation = tessera::service::keys::rotate_signing_keys(store.as_ref(), &rotated).await.unwrap();
    assert_eq!((rotation.rotated, rotation.failed, rotation.retired), (1, 0, 0), "{rotation:?}");
    for token in &new_tokens {
        let _: Value = keys.verify(token, "JWT", ISSUER).await.unwrap();
    }
}

async fn a_key_that_signed_for_the_rotation_period_is_rotated_on_refresh(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The next key starts signing 3.75 s after it is made (the publication lead): the checks
    // below, of a key not signing yet, have that long on a busy machine.
    let settings = SigningKeySettings {
        rotation_period: Duration::from_millis(300),
        jwks_max_age: Duration::from_secs(3),
        ..quick()
    };
    let keys = signing_keys(db.store().await, settings).await;
    let first = kid(&keys.sign(SigningAlg::EdDSA, "JWT", &claims("ada")).await.unwrap());
    tokio::time::sleep(Duration::from_millis(350)).await;
    keys.refresh().await.unwrap();
    let listed = keys.list().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!((listed[0].kid.as_str(), listed[0].status), (first.as_str(), KeyStatus::Signing));
    assert_eq!(listed[0].retired_at, Some(listed[1].signs_from));
    assert_eq!(listed[1].status, KeyStatus::Next);
    keys.refresh().await.unwrap();
    assert_eq!(keys.list().await.unwrap().len(), 2, "a key that has not signed yet is not rotated again");
}

/// `tessera keys signing rotate` when the current key is due: one rotation, the one asked for,
/// not the scheduled one first and then another (a key published for a day that signed for a
/// moment); with `--now`, the new key signs at once and the old one no longer.
async fn a_rotation_asked_for_when_one_is_due_makes_one_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settings = SigningKeySettings { rotation_period: Duration::from_millis(300), ..quick() };
    let keys = signing_keys(db.store().await, settings).await;
    let first = kid(&keys.sign(SigningAlg::EdDSA, "JWT", &claims("ada")).await.unwrap());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let rotated = keys.rotate(SigningAlg::EdDSA, false).await.unwrap();
    let listed = keys.list().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!((listed[0].kid.as_str(), listed[1].kid.as_str()), (first.as_str(), rotated.kid.as_str()));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let now = keys.rotate(SigningAlg::ES256, false).await.unwrap();
    assert_eq!(now.status, KeyStatus::Signing, "the first key of an algorithm signs at once");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let at_once = keys.rotate(SigningAlg::ES256, true).await.unwrap();
    let es256: Vec<_> = keys.list().await.unwrap().into_iter().filter(|k| k.alg == SigningAlg::ES256).collect();
    assert_eq!(es256.len(), 2, "{es256:?}");
    assert_eq!(at_once.status, KeyStatus::Signing);
    assert_eq!((es256[0].kid.as_str(), es256[0].status), (now.kid.as_str(), KeyStatus::Retired));
}

/// A token signed with a key another instance has just made: once the cache-invalidation log
/// has marked this instance's keys stale, it verifies at once rather than after the cooldown
/// for unknown keys.
async fn a_key_made_elsewhere_verifies_at_once_once_the_keys_are_marked_stale(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    // Re-read every 15 s: within the test, only the stale mark makes it look again.
    let slow = SigningKeySettings { jwks_max_age: Duration::from_secs(60), ..quick() };
    let here = signing_keys(store.clone(), slow).await;
    let there = signing_keys(store, quick()).await;
    here.sign(SigningAlg::EdDSA, "JWT", &claims("ada")).await.unwrap();
    here.refresh().await.unwrap();
    there.rotate(SigningAlg::EdDSA, true).await.unwrap();
    let token = there.sign(SigningAlg::EdDSA, "JWT", &claims("ada")).await.unwrap();
    here.mark_stale();
    let verified: Value = here.verify(&token, "JWT", ISSUER).await.expect("verified at once");
    assert_eq!(verified["sub"], "ada");
}

async fn verify_accepts_only_valid_tokens_of_the_expected_type_and_issuer(backend: Backend) {
    let db = TestDb::new(backend).await;
    let keys = signing_keys(db.store().await, SigningKeySettings::default()).await;
    let access = keys.sign(SigningAlg::RS256, "at+jwt", &claims("ada")).await.unwrap();
    let claims_back: Value = keys.verify(&access, "at+jwt", ISSUER).await.unwrap();
    assert_eq!(claims_back["sub"], "ada");
    let _: Value = keys.verify(&access, "application/at+jwt", ISSUER).await.unwrap();

    let refused = |result: Result<Value, VerifyError>| result.unwrap_err();
    let id_token = keys.sign(SigningAlg::ES256, "JWT", &claims("ada")).await.unwrap();
    assert!(matches!(refused(keys.verify(&id_token, "at+jwt", ISSUER).await), VerifyError::TypeMismatch));
    assert!(matches!(
        refused(keys.verify(&access, "at+jwt", "https://else.example").await),
        VerifyError::IssuerMismatch
    ));
    let now = Utc::now().timestamp();
    let expired =
        keys.sign(SigningAlg::ES256, "JWT", &json!({ "iss": ISSUER, "sub": "ada", "exp": now - 3600 })).await.unwrap();
    assert!(matches!(refused(keys.verify(&expired, "JWT", ISSUER).await), VerifyError::Expired));
    let early = keys
        .sign(SigningAlg::ES256, "JWT", &json!({ "iss": ISSUER, "sub": "ada", "exp": now + 7200, "nbf": now + 3600 }))
        .await
        .unwrap();
    assert!(matches!(refused(keys.verify(&early, "JWT", ISSUER).await), VerifyError::NotYetValid));
    let no_iss = keys.sign(SigningAlg::ES256, "JWT", &json!({ "sub": "ada", "exp": now + 60 })).await.unwrap();
    assert!(matches!(refused(keys.verify(&no_iss, "JWT", ISSUER).await), VerifyError::IssuerMismatch));

    // Tampered with: another payload under the same signature; another algorithm in the header.
    let parts: Vec<&str> = id_token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims("mallory").to_string());
    let swapped = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert!(matches!(refused(keys.verify(&swapped, "JWT", ISSUER).await), VerifyError::SignatureInvalid));
    let header = URL_SAFE_NO_PAD.encode(json!({ "alg": "RS256", "typ": "JWT", "kid": kid(&id_token) }).to_string());
    let realg = format!("{header}.{}.{}", parts[1], parts[2]);
    assert!(matches!(refused(keys.verify(&realg, "JWT", ISSUER).await), VerifyError::AlgorithmNotAllowed));
    let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    assert!(matches!(refused(keys.verify(&none, "JWT", ISSUER).await), VerifyError::Malformed(_)));
    assert!(matches!(refused(keys.verify("not.a.token", "JWT", ISSUER).await), VerifyError::Malformed(_)));

    // Signed by another Tessera (another database): its key is not published here.
    let stranger_db = TestDb::new(backend).await;
    let stranger = signing_keys(stranger_db.store().await, SigningKeySettings::default()).await;
    let foreign = stranger.sign(SigningAlg::ES256, "JWT", &claims("ada")).await.unwrap();
    let error = refused(keys.verify(&foreign, "JWT", ISSUER).await);
    assert!(matches!(error, VerifyError::UnknownKey), "{error:?}");
    assert!(error.is_invalid_token());
    assert_eq!(error.code().as_str(), "unknown_key");
}

async fn a_store_failure_is_not_reported_as_a_bad_token(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    // A JWKS lifetime of 40 ms: the cached keys are soon too old to sign with.
    let settings = SigningKeySettings { jwks_max_age: Duration::from_millis(40), ..quick() };
    let keys = signing_keys(store.clone(), settings).await;
    let token = keys.sign(SigningAlg::ES256, "JWT", &claims("ada")).await.unwrap();
    store.close().await;
    tokio::time::sleep(Duration::from_millis(60)).await;

    let _: Value = keys.verify(&token, "JWT", ISSUER).await.expect("verification uses the cached keys");
    let unknown = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT","kid":"not-cached"}"#),
        token.split('.').nth(1).unwrap(),
        token.split('.').nth(2).unwrap()
    );
    let error = keys.verify::<Value>(&unknown, "JWT", ISSUER).await.unwrap_err();
    assert!(!error.is_invalid_token(), "the key may exist: {error:?}");
    assert_eq!(error.code().as_str(), "store_unavailable");
    let error = keys.sign(SigningAlg::ES256, "JWT", &claims("ada")).await.unwrap_err();
    assert!(
        matches!(error, SigningError::Store(_) | SigningError::Unreadable),
        "no signature with keys older than the JWKS lifetime: {error:?}"
    );
    assert_eq!(error.code().as_str(), "store_unavailable");
    // The JWKS is still served, as last read — relying parties keep verifying the tokens they
    // hold —, to be fetched again next time (a key made since could sign by now).
    let jwks = keys.jwks().await.expect("the keys as last read");
    assert_eq!(kids(&jwks.document), [kid(&token)]);
    assert_eq!(jwks.max_age, Duration::ZERO);
}

/// A rotation falls due when the store reads but does not write (a demoted primary, a full disk):
/// the keys read still serve — signing, verifying — rather than the whole re-read counting as
/// failed; the rotation is written by the first re-read once the store writes again.
async fn a_rotation_that_cannot_be_written_leaves_the_keys_serving(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settings = SigningKeySettings { rotation_period: Duration::from_millis(300), ..quick() };
    let keys = signing_keys(db.store().await, settings).await;
    let first = kid(&keys.sign(SigningAlg::EdDSA, "JWT", &claims("ada")).await.unwrap());
    let sql = db.sql().await;
    let refuse = match backend {
        Backend::Sqlite => {
            "CREATE TRIGGER refuse_keys BEFORE INSERT ON signing_keys BEGIN SELECT RAISE(ABORT, 'read-only'); END"
        }
        Backend::Postgres => {
            "CREATE FUNCTION refuse_keys() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'read-only'; END $$;
             CREATE TRIGGER refuse_keys BEFORE INSERT ON signing_keys FOR EACH ROW EXECUTE FUNCTION refuse_keys()"
        }
    };
    sql.exec(refuse).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    keys.refresh().await.expect("the keys as read, the rotation left for later");
    // Past the JWKS lifetime of the keys read before: only the re-read above lets them sign.
    tokio::time::sleep(Duration::from_millis(450)).await;
    keys.refresh().await.expect("the keys as read, the rotation left for later");
    let token = keys.sign(SigningAlg::EdDSA, "JWT", &claims("ada")).await.expect("signs with the key it read");
    assert_eq!(kid(&token), first);
    let _: Value = keys.verify(&token, "JWT", ISSUER).await.unwrap();
    assert_eq!(kids(&keys.jwks().await.unwrap().document).len(), 1);
    let allow = match backend {
        Backend::Sqlite => "DROP TRIGGER refuse_keys",
        Backend::Postgres => "DROP TRIGGER refuse_keys ON signing_keys",
    };
    sql.exec(allow).await.unwrap();
    keys.refresh().await.unwrap();
    assert_eq!(keys.list().await.unwrap().len(), 2, "rotated once the store writes again");
}

/// A store that hangs (the keys' table locked: a read of them waits for the statement timeout,
/// 30 s): a key the instance knows still verifies, and the keys still sign and serve the JWKS,
/// at once from the keys as last read, re-read behind — forward-auth and token checks do not
/// queue up behind the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_keys_answer_at_once_while_the_store_hangs() {
    let db = TestDb::new(Backend::Postgres).await;
    // Keys re-read every second, and usable to sign for four.
    let settings = SigningKeySettings { jwks_max_age: Duration::from_secs(4), ..quick() };
    let keys = signing_keys(db.store().await, settings).await;
    let token = keys.sign(SigningAlg::ES256, "JWT", &claims("ada")).await.unwrap();
    let sql = db.sql().await;
    let held = sql.hold("", "BEGIN; LOCK TABLE signing_keys IN ACCESS EXCLUSIVE MODE").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A bound far below the statement timeout a read waits for.
    let bound = Duration::from_secs(2);
    let _: Value = tokio::time::timeout(bound, keys.verify(&token, "JWT", ISSUER))
        .await
        .expect("verify waited for the store")
        .unwrap();
    sql.until_waiting_for_a_lock("signing_keys").await;
    let mut checks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (keys, token) = (keys.clone(), token.clone());
        checks.spawn(async move { tokio::time::timeout(bound, keys.verify::<Value>(&token, "JWT", ISSUER)).await });
    }
    for checked in checks.join_all().await {
        checked.expect("verify waited for the store").unwrap();
    }
    let signed = tokio::time::timeout(bound, keys.sign(SigningAlg::ES256, "JWT", &claims("ada"))).await;
    assert_eq!(kid(&signed.expect("sign waited for the store").unwrap()), kid(&token));
    let jwks = tokio::time::timeout(bound, keys.jwks()).await.expect("the JWKS waited for the store").unwrap();
    assert_eq!(kids(&jwks.document), [kid(&token)]);
    held.end("ROLLBACK").await;
}

async fn private_keys_are_stored_encrypted_and_bound_to_their_row(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let keys = signing_keys(store.clone(), SigningKeySettings::default()).await;
    for alg in SigningAlg::ALL {
        keys.sign(alg, "JWT", &claims("ada")).await.unwrap();
    }
    let stored = store.all_signing_keys().await.unwrap();
    assert_eq!(stored.len(), 3);
    let ring = ring();
    for key in &stored {
        assert_eq!(KeyRing::key_id_of(&key.private_key), Some("k1"));
        let der = ring.decrypt(&key.private_key, &SigningKeyRecord::aad(&key.kid)).unwrap();
        assert_eq!(der[0], 0x30, "a PKCS#8 DER sequence");
        assert!(!key.private_key.windows(der.len()).any(|w| w == der.as_slice()), "the DER is not stored");
        assert!(!key.private_key.windows(16).any(|w| der.windows(16).any(|d| d == w)), "nor any part of it");
        let other_row = stored.iter().find(|k| k.kid != key.kid).unwrap();
        for aad in [
            SigningKeyRecord::aad(&other_row.kid),
            format!("signing_keys|{}|public_jwk", key.kid).into_bytes(),
            format!("identity_tokens|{}|private_key", key.kid).into_bytes(),
        ] {
            assert_eq!(ring.decrypt(&key.private_key, &aad), Err(DecryptError::Unauthentic));
        }
        let jwk: Value = serde_json::from_str(&key.public_jwk).unwrap();
        assert!(jwk.get("d").is_none(), "{jwk}");
    }
    // An instance without the ring key that encrypted them cannot start: it could not sign.
    let wrong = Arc::new(KeyRing::parse(&format!("k2:{}", STANDARD.encode([8u8; 32]))).unwrap());
    let error = SigningKeys::new(store.clone(), wrong, SigningKeySettings::default()).await.unwrap_err();
    assert!(matches!(&error, SigningError::Unusable { .. }), "{error:?}");
    assert!(error.to_string().contains("\"k1\""), "names the missing ring key: {error}");
    // Nor can one whose ring key of that id is another (made anew under the same id): said so.
    let remade = Arc::new(KeyRing::parse(&format!("k1:{}", STANDARD.encode([8u8; 32]))).unwrap());
    let error = SigningKeys::new(store.clone(), remade, SigningKeySettings::default()).await.unwrap_err();
    assert!(
        error.to_string().contains("ring key \"k1\", and does not authenticate with this ring's key \"k1\""),
        "{error}"
    );
}

async fn concurrent_first_signatures_on_two_instances_leave_one_usable_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    let instances = [
        signing_keys(db.store().await, SigningKeySettings::default()).await,
        signing_keys(db.store().await, SigningKeySettings::default()).await,
    ];
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (keys, barrier) = (instances[i % 2].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                keys.sign(SigningAlg::ES256, "JWT", &claims(&format!("user-{i}"))).await.unwrap()
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap());
    }
    let store = db.store().await;
    assert_eq!(store.all_signing_keys().await.unwrap().len(), 1, "one first key");
    for keys in &instances {
        let jwks = keys.jwks().await.unwrap().document;
        assert_eq!(kids(&jwks).len(), 1);
        for token in &tokens {
            verify_with_jwks(token, &jwks).unwrap();
            let _: Value = keys.verify(token, "JWT", ISSUER).await.unwrap();
        }
    }

    // Concurrent rotations leave one un-retired key, and both instances still sign.
    let rotations: Vec<_> = (0..8)
        .map(|i| {
            let keys = instances[i % 2].clone();
            tokio::spawn(async move { keys.rotate(SigningAlg::ES256, false).await.unwrap() })
        })
        .collect();
    for rotation in rotations {
        rotation.await.unwrap();
    }
    let stored = store.all_signing_keys().await.unwrap();
    assert_eq!(stored.iter().filter(|k| k.retired_at.is_none()).count(), 1, "{stored:?}");
    for keys in &instances {
        keys.refresh().await.unwrap();
        let token = keys.sign(SigningAlg::ES256, "JWT", &claims("ada")).await.unwrap();
        verify_with_jwks(&token, &keys.jwks().await.unwrap().document).unwrap();
    }
}

/// The key ring's rollout gone wrong: another instance, whose ring has a newer ring key first,
/// starts a rotation, and this instance cannot decrypt the next key. Rather than answer every
/// token request with an error once that key signs, it says at once that it is not ready.
async fn an_instance_whose_ring_cannot_decrypt_the_next_key_is_not_ready(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.encryption = Some(ring());
    let store = db.store().await;
    let app = TestApp::start(db, &config).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let newer = format!("k2:{},k1:{}", STANDARD.encode([9u8; 32]), STANDARD.encode([7u8; 32]));
    let elsewhere = SigningKeys::new(store, Arc::new(KeyRing::parse(&newer).unwrap()), SigningKeySettings::default())
        .await
        .unwrap();
    let next = elsewhere.rotate(SigningAlg::ES256, false).await.unwrap();
    assert_eq!(next.status, KeyStatus::Next);
    crate::helpers::eventually("the instance is no longer ready", || async {
        app.client.get(app.url("/readyz")).send().await.unwrap().status() == 503
    })
    .await;
    let answer = json(app.client.get(app.url("/readyz")).send().await.unwrap(), 503).await;
    assert_eq!(answer["code"], "signing_key_unusable");
    assert!(answer["detail"].as_str().unwrap().contains("TESSERA_ENCRYPTION_KEYS"), "{answer}");
    app.stop().await;
}

/// The ring key of the signing key was lost (the ring is now another): `tessera keys signing
/// rotate --now` retires it at once and its successor signs at once — an instance with the new
/// ring starts and signs straight away, rather than failing until the publication lead (up to
/// 30 h with a day-long JWKS lifetime) is over. Tokens of the old key still verify. Without
/// `--now` the lead stands, whatever the ring: the command's ring need not be the instances'.
async fn a_key_whose_ring_key_was_lost_is_rotated_away_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let settings = SigningKeySettings::default();
    let before = signing_keys(store.clone(), settings).await;
    let old_token = before.sign(SigningAlg::ES256, "JWT", &claims("ada")).await.unwrap();
    let other_ring = Arc::new(KeyRing::parse(&format!("k9:{}", STANDARD.encode([9u8; 32]))).unwrap());
    let refused = SigningKeys::new(store.clone(), other_ring.clone(), settings).await.map(drop).unwrap_err();
    assert!(matches!(refused, SigningError::Unusable { .. }), "{refused:?}");
    let rotating = SigningKeys::open(store.clone(), other_ring.clone(), settings).await.unwrap();
    let scheduled = rotating.rotate(SigningAlg::ES256, false).await.unwrap();
    assert_eq!(scheduled.status, KeyStatus::Next, "not at once unless asked: {scheduled:?}");
    let next = rotating.rotate(SigningAlg::ES256, true).await.unwrap();
    assert_eq!(next.status, KeyStatus::Signing, "{next:?}");
    let started = SigningKeys::new(store.clone(), other_ring, settings).await.expect("starts with the new ring");
    assert!(started.unusable_key().is_none());
    let token = started.sign(SigningAlg::ES256, "JWT", &claims("bob")).await.unwrap();
    assert_eq!(kid(&token), next.kid);
    let _: Value = started.verify(&old_token, "JWT", ISSUER).await.expect("the old key's tokens still verify");
    let old = started.list().await.unwrap().into_iter().find(|k| k.kid == kid(&old_token)).unwrap();
    assert_eq!(old.status, KeyStatus::Retired);
    assert!(old.retired_at.unwrap() <= Utc::now(), "its signing ended now, not at the scheduled successor's start");
    let published_for = settings.max_token_lifetime + tessera::service::op::keys::LEEWAY;
    assert!(old.unpublish_at.unwrap() >= old.retired_at.unwrap() + chrono::Duration::from_std(published_for).unwrap());
}

/// A key's id is its public key's thumbprint: a row whose public key was replaced (another key's
/// written over it, by someone who can write to the database but not decrypt it) is refused as
/// unusable, not published and trusted for verification.
async fn a_public_key_that_is_not_its_key_ids_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let keys = signing_keys(store.clone(), SigningKeySettings::default()).await;
    for alg in [SigningAlg::ES256, SigningAlg::EdDSA] {
        keys.sign(alg, "JWT", &claims("ada")).await.unwrap();
    }
    let stored = store.all_signing_keys().await.unwrap();
    let (victim, other) = (&stored[0], &stored[1]);
    assert!(SigningKeys::new(store.clone(), ring(), SigningKeySettings::default()).await.is_ok(), "as written");
    let swap = format!(
        "UPDATE signing_keys SET public_jwk = (SELECT public_jwk FROM signing_keys WHERE kid = '{}') WHERE kid = '{}'",
        other.kid, victim.kid
    );
    db.sql().await.exec(&swap).await.unwrap();
    // The row is the same for every instance: starting (and readiness) does not fail on it,
    // which would take them all out of rotation; the other keys go on serving.
    let started = SigningKeys::new(store.clone(), ring(), SigningKeySettings::default()).await.unwrap();
    assert!(started.unusable_key().is_none());

    // A running instance that re-reads the keys keeps the others: it publishes and signs with
    // them, does not publish the damaged one, and refuses its algorithm by name.
    let signed_by_victim = keys.sign(victim.alg, "JWT", &claims("ada")).await.unwrap();
    keys.refresh().await.unwrap();
    let published = keys.jwks().await.unwrap().document;
    let kids: Vec<&str> = published["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [other.kid.as_str()], "{published}");
    let token = keys.sign(other.alg, "JWT", &claims("ada")).await.unwrap();
    verify_with_jwks(&token, &published).unwrap();
    let error = keys.sign(victim.alg, "JWT", &claims("ada")).await.unwrap_err();
    assert!(matches!(&error, SigningError::Unusable { kid, .. } if *kid == victim.kid), "{error:?}");
    assert!(error.to_string().contains("does not match its key id"), "{error}");
    assert!(keys.unusable_key().is_none(), "readiness is for this instance's ring, not a shared row");
    // `tessera check` names it.
    assert!(matches!(keys.damaged_key(), Some(SigningError::Unusable { kid, .. }) if kid == victim.kid));
    let refused = keys.verify::<Value>(&signed_by_victim, "JWT", ISSUER).await.unwrap_err();
    assert!(matches!(refused, VerifyError::UnknownKey), "{refused:?}");

    // The way out: `tessera keys signing rotate`, whose successor of a damaged key signs at once
    // (the damaged one signs nothing meanwhile), not after the publication lead.
    let opened = SigningKeys::open(store.clone(), ring(), SigningKeySettings::default()).await.unwrap();
    let successor = opened.rotate(victim.alg, false).await.unwrap();
    assert_eq!(successor.status, KeyStatus::Signing);
    keys.refresh().await.unwrap();
    assert!(keys.damaged_key().is_none(), "retired, it signs nothing more");
    let token = keys.sign(victim.alg, "JWT", &claims("ada")).await.unwrap();
    verify_with_jwks(&token, &keys.jwks().await.unwrap().document).unwrap();
    assert_eq!(jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(), Some(successor.kid.as_str()));
}
