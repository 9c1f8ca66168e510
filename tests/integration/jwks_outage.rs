//! Issuer outages seen through `/v1/validate` (issue 14): what Tessera answers while it cannot
//! fetch an issuer's keys, and how soon it sees them again, against a local issuer that can
//! answer 503 or refuse connections, on both backends.

use std::sync::Arc;
use std::time::Duration;

use tessera::config::Config;
use tessera_testkit::local_issuer::{Alg, LocalIssuer};

use crate::helpers::{AUDIENCE, Backend, TestApp, eventually, json as body, local_issuer_config, on_both_backends};

on_both_backends!(
    a_key_added_under_a_cached_kid_is_found_by_the_refetch,
    a_never_seen_kid_is_a_503_for_the_whole_outage,
    a_rekey_during_an_outage_is_picked_up_within_the_back_off,
    forged_kids_cost_one_fetch_per_cooldown,
    a_caller_that_hangs_up_still_starts_the_cooldown,
    tokens_of_an_issuer_without_audiences_are_refused_without_a_fetch,
    forged_kids_during_an_outage_cost_one_fetch_per_back_off,
    after_an_outage_the_first_successful_fetch_starts_the_cooldown,
    every_key_under_a_reused_kid_is_tried_before_a_refetch,
);

/// Far longer than any test: whatever a cooldown holds back is held back for the whole test.
const LONG: Duration = Duration::from_secs(300);

/// How the issuer is down.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// It answers every request with 503.
    Unavailable,
    /// It refuses connections.
    Unreachable,
}

const OUTAGES: [Outage; 2] = [Outage::Unavailable, Outage::Unreachable];

struct World {
    app: Arc<TestApp>,
    issuer: LocalIssuer,
}

/// A server validating the local issuer's tokens, with the issuer's keys cached.
async fn world(backend: Backend, adjust: impl FnOnce(&mut Config)) -> World {
    let issuer = LocalIssuer::start().await.unwrap();
    let app = TestApp::spawn_with(backend, |config| {
        let mut local = local_issuer_config(&issuer);
        // Keys straight from the JWKS: every fetch attempt, failed or not, is one request the
        // issuer counts (through discovery, a failed attempt would not reach the JWKS).
        local.jwks_uri = Some(url::Url::parse(&issuer.jwks_uri()).unwrap());
        config.issuers.push(local);
        adjust(config);
    })
    .await;
    let w = World { app: Arc::new(app), issuer };
    body(w.app.validate(&w.token("rsa-1", "warm-up")).await, 200).await;
    w
}

impl World {
    fn token(&self, kid: &str, subject: &str) -> String {
        self.issuer.sign(kid, &self.issuer.claims(subject, AUDIENCE))
    }

    /// A token signed with a key the issuer never published, under a `kid` of its own.
    fn forged(&self, subject: &str) -> String {
        let kid = self.issuer.add_unpublished_key(Alg::Es256);
        self.token(&kid, subject)
    }

    async fn down(&self, outage: Outage) {
        match outage {
            Outage::Unavailable => self.issuer.set_available(false),
            Outage::Unreachable => self.issuer.stop().await,
        }
    }

    async fn up(&self, outage: Outage) {
        match outage {
            Outage::Unavailable => self.issuer.set_available(true),
            Outage::Unreachable => self.issuer.restart().await.unwrap(),
        }
    }

    /// The status and problem code of `/v1/validate` for `token` (code empty on success).
    async fn answer(&self, token: &str) -> (u16, String) {
        let response = self.app.validate(token).await;
        let status = response.status().as_u16();
        let value = body(response, status).await;
        (status, value["code"].as_str().unwrap_or_default().to_owned())
    }
}

fn unavailable() -> (u16, String) {
    (503, "issuer_unavailable".into())
}

fn unknown_key() -> (u16, String) {
    (401, "unknown_key".into())
}

/// Short failure back-offs under a long cooldown, so that which of the two a wait follows shows.
fn short_back_off(config: &mut Config) {
    config.jwks.refetch_cooldown = LONG;
    config.jwks.failure_backoff = Duration::from_millis(100);
    config.jwks.failure_backoff_max = Duration::from_millis(400);
}

/// `/v1/validate` for each token at once; the answers in order.
async fn concurrently(app: &Arc<TestApp>, tokens: Vec<String>) -> Vec<(u16, String)> {
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let app = app.clone();
            tokio::spawn(async move {
                let response = app.validate(&token).await;
                let status = response.status().as_u16();
                let value = body(response, status).await;
                (status, value["code"].as_str().unwrap_or_default().to_owned())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// A `kid` Tessera has never seen may be the issuer's new key: while the issuer's keys cannot be
/// fetched, Tessera cannot know it is not, so every attempt is a 503 — not a 401 `unknown_key`
/// made up after the first one failed.
async fn a_never_seen_kid_is_a_503_for_the_whole_outage(backend: Backend) {
    for outage in OUTAGES {
        let w = world(backend, |_| {}).await;
        let new_kid = w.issuer.add_key(Alg::Es256);
        w.down(outage).await;
        let token = w.token(&new_kid, "new-key");
        for attempt in 1..=5 {
            assert_eq!(w.answer(&token).await, unavailable(), "{outage:?}, attempt {attempt}");
        }
        // Known keys keep working meanwhile.
        body(w.app.validate(&w.token("rsa-1", "known-key")).await, 200).await;
        // Back, the issuer is asked again after the failure back-off (1 s, at most 5 s, by
        // default), not after the 30 s cooldown: the failed fetches did not start it.
        w.up(outage).await;
        eventually("the new key is accepted", || async { w.answer(&token).await.0 == 200 }).await;
    }
}

/// A re-key under the same `kid` while the issuer is down is refused (the cached key is the only
/// one Tessera has). The refetch that failed then must not hold the new key back for a cooldown:
/// once the issuer is back, it is picked up within the failure back-off.
async fn a_rekey_during_an_outage_is_picked_up_within_the_back_off(backend: Backend) {
    for outage in OUTAGES {
        let w = world(backend, short_back_off).await;
        w.down(outage).await;
        w.issuer.rekey("rsa-1");
        let token = w.token("rsa-1", "rekeyed");
        for attempt in 1..=3 {
            assert_eq!(w.answer(&token).await, (401, "signature_invalid".into()), "{outage:?}, attempt {attempt}");
        }
        w.up(outage).await;
        eventually("the new key is accepted", || async { w.answer(&token).await.0 == 200 }).await;
    }
}

/// With the issuer up, a forged `kid` is looked up once and is then `unknown_key`; other forged
/// kids within the cooldown are answered from that fetch without asking the issuer again.
async fn forged_kids_cost_one_fetch_per_cooldown(backend: Backend) {
    let w = world(backend, |config| config.jwks.refetch_cooldown = LONG).await;
    let fetches = w.issuer.jwks_fetches();
    assert_eq!(w.answer(&w.forged("forged-0")).await, unknown_key());
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "the first forged kid is looked up");
    let tokens = (1..=10).map(|i| w.forged(&format!("forged-{i}"))).collect();
    assert_eq!(concurrently(&w.app, tokens).await, vec![unknown_key(); 10]);
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "none of the others is");
}

/// A caller that hangs up while its forged `kid` is being looked up does not take the lookup
/// with it: the fetch ends and starts the cooldown, so hanging up and trying the next forged kid
/// does not make Tessera ask the issuer once per request.
async fn a_caller_that_hangs_up_still_starts_the_cooldown(backend: Backend) {
    let w = world(backend, |config| config.jwks.refetch_cooldown = LONG).await;
    let fetches = w.issuer.jwks_fetches();
    w.issuer.hold_jwks(true);
    let request = w.app.client.post(w.app.url("/v1/validate")).bearer_auth(w.forged("forged-0")).send();
    let hung_up = tokio::spawn(request);
    eventually("the lookup reached the issuer", || async { w.issuer.jwks_fetches() == fetches + 1 }).await;
    hung_up.abort();
    assert!(hung_up.await.unwrap_err().is_cancelled(), "the caller hung up");
    w.issuer.hold_jwks(false);
    eventually("the forged kid is known to be unknown", || async {
        w.answer(&w.forged("forged-1")).await == unknown_key()
    })
    .await;
    for i in 2..5 {
        assert_eq!(w.answer(&w.forged(&format!("forged-{i}"))).await, unknown_key());
    }
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "the lookup of the caller that hung up was the only one");
}

/// An issuer configured without audiences only bootstraps users: every token of it is refused,
/// before anything is fetched from it (it need not even be reachable).
async fn tokens_of_an_issuer_without_audiences_are_refused_without_a_fetch(backend: Backend) {
    let issuer = LocalIssuer::start().await.unwrap();
    let app = TestApp::spawn_with(backend, |config| {
        let mut local = local_issuer_config(&issuer);
        local.audiences.clear();
        config.issuers.push(local);
    })
    .await;
    let token = issuer.sign("rsa-1", &issuer.claims("ann", AUDIENCE));
    let response = app.validate(&token).await;
    assert_eq!(body(response, 401).await["code"], "audience_mismatch");
    assert_eq!((issuer.jwks_fetches(), issuer.discovery_fetches()), (0, 0));
}

/// During an outage, forged kids cannot make Tessera ask the issuer on every request either:
/// concurrent misses share one attempt, and later ones wait for the failure back-off.
async fn forged_kids_during_an_outage_cost_one_fetch_per_back_off(backend: Backend) {
    let w = world(backend, |config| {
        config.jwks.refetch_cooldown = LONG;
        config.jwks.failure_backoff = Duration::from_secs(60);
        config.jwks.failure_backoff_max = Duration::from_secs(60);
    })
    .await;
    w.down(Outage::Unavailable).await;
    let fetches = w.issuer.jwks_fetches();
    let tokens = (0..20).map(|i| w.forged(&format!("forged-{i}"))).collect();
    assert_eq!(concurrently(&w.app, tokens).await, vec![unavailable(); 20]);
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "one attempt for all of them");
    for i in 20..25 {
        assert_eq!(w.answer(&w.forged(&format!("forged-{i}"))).await, unavailable());
    }
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "none within the back-off");
}

/// A forged kid is 503 while the issuer is down and `unknown_key` once a fetch has succeeded
/// without it; that fetch, not the failed ones, starts the cooldown.
async fn after_an_outage_the_first_successful_fetch_starts_the_cooldown(backend: Backend) {
    let w = world(backend, short_back_off).await;
    w.down(Outage::Unavailable).await;
    let forged = w.forged("forged-0");
    assert_eq!(w.answer(&forged).await, unavailable());
    w.up(Outage::Unavailable).await;
    let back = w.issuer.jwks_fetches();
    eventually("the forged kid is found unknown", || async { w.answer(&forged).await == unknown_key() }).await;
    let fetches = w.issuer.jwks_fetches();
    assert_eq!(fetches, back + 1, "unknown_key is the answer of a fetch made once the issuer was back");
    for i in 1..=5 {
        assert_eq!(w.answer(&w.forged(&format!("forged-{i}"))).await, unknown_key());
    }
    assert_eq!(w.issuer.jwks_fetches(), fetches, "no fetch within the cooldown");
}

/// An issuer that publishes two keys under one `kid` (reused across a rotation, against RFC 7517's
/// advice): a token signed by the second is valid, found without a refetch, which would bring the
/// same set; a token whose signature neither key made is still refused.
async fn every_key_under_a_reused_kid_is_tried_before_a_refetch(backend: Backend) {
    let w = world(backend, |_| {}).await;
    w.issuer.add_key_reusing_kid("rsa-1");
    // Another server, whose first fetch brings the set with both keys.
    let app = TestApp::spawn_with(backend, |config| {
        let mut local = local_issuer_config(&w.issuer);
        local.jwks_uri = Some(url::Url::parse(&w.issuer.jwks_uri()).unwrap());
        config.issuers.push(local);
    })
    .await;
    let first = body(app.validate(&w.token("rsa-1", "first-key")).await, 200).await;
    let fetches = w.issuer.jwks_fetches();
    let second = w.issuer.sign_with_last("rsa-1", &w.issuer.claims("second-key", AUDIENCE));
    let answer = body(app.validate(&second).await, 200).await;
    assert_ne!(answer["user_id"], first["user_id"], "{answer}");
    assert_eq!(w.issuer.jwks_fetches(), fetches, "found in the cached set");
    // The first key's signature over the second token's header and claims, swapped: neither key
    // made it for this message.
    let (message, _) = second.rsplit_once('.').unwrap();
    let other = w.token("rsa-1", "another");
    let (_, other_signature) = other.rsplit_once('.').unwrap();
    let forged = format!("{message}.{other_signature}");
    assert_eq!(body(app.validate(&forged).await, 401).await["code"], "signature_invalid");
    app.stop().await;
}

/// An issuer that adds a key under a kid its cached set already holds, and signs with it: the
/// refetch that the failed signature causes brings the new key, which is tried — not only the
/// first key under the kid, the one that just failed.
async fn a_key_added_under_a_cached_kid_is_found_by_the_refetch(backend: Backend) {
    let w = world(backend, |_| {}).await;
    body(w.app.validate(&w.token("rsa-1", "before")).await, 200).await;
    let fetches = w.issuer.jwks_fetches();
    w.issuer.add_key_reusing_kid("rsa-1");
    let second = w.issuer.sign_with_last("rsa-1", &w.issuer.claims("after", AUDIENCE));
    body(w.app.validate(&second).await, 200).await;
    assert_eq!(w.issuer.jwks_fetches(), fetches + 1, "one refetch");
    body(w.app.validate(&w.token("rsa-1", "before")).await, 200).await;
}
