//! Issuer outages seen through `/v1/validate` (issue 14): what Tessera answers while it cannot
//! fetch an issuer's keys, and how soon it sees them again, against a local issuer that can
//! answer 503 or refuse connections, on both backends.

use tessera::config::Config;
use tessera_testkit::local_issuer::{Alg, LocalIssuer};

use crate::helpers::{AUDIENCE, Backend, TestApp, json as body, local_issuer_config, on_both_backends};

on_both_backends!(a_never_seen_kid_is_a_503_for_the_whole_outage);

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
    app: TestApp,
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
    let w = World { app, issuer };
    body(w.app.validate(&w.token("rsa-1", "warm-up")).await, 200).await;
    w
}

impl World {
    fn token(&self, kid: &str, subject: &str) -> String {
        self.issuer.sign(kid, &self.issuer.claims(subject, AUDIENCE))
    }

    async fn down(&self, outage: Outage) {
        match outage {
            Outage::Unavailable => self.issuer.set_available(false),
            Outage::Unreachable => self.issuer.stop().await,
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
    }
}
