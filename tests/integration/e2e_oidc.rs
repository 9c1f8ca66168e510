//! The whole browser flow against a real third-party OpenID provider run locally
//! (oauth2-mock-server, installed by `scripts/test`), driven by an HTTP client with a cookie jar:
//! login → provider → callback → session → `/v1/me` → logout.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tessera::config::{ProviderConfig, ProviderEndpoints, ProviderKind};
use tessera::domain::Issuer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{Backend, TestApp, json as body, on_both_backends};

on_both_backends!(a_browser_signs_in_through_a_real_openid_provider);

/// Starts oauth2-mock-server; returns the process (killed on drop) and its issuer URL.
async fn start_provider() -> (Child, String) {
    let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
    assert!(
        support.join("node_modules/oauth2-mock-server").exists(),
        "oauth2-mock-server is not installed: run the suite with `scripts/test`, which installs it"
    );
    let mut child = Command::new("node")
        .arg("mock-oidc.mjs")
        .current_dir(&support)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Node.js is part of this machine)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the provider starts in time")
        .unwrap()
        .expect("the provider prints its issuer");
    let issuer = serde_json::from_str::<Value>(&line).unwrap()["issuer"].as_str().unwrap().to_owned();
    (child, issuer)
}

async fn a_browser_signs_in_through_a_real_openid_provider(backend: Backend) {
    let (_provider, issuer) = start_provider().await;
    let app = TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        config.providers.push(ProviderConfig {
            name: "mock".into(),
            kind: ProviderKind::Oidc,
            client_id: "tessera-e2e".into(),
            client_secret: Some(SecretString::from("e2e-secret")),
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            issuer: Issuer::parse(&issuer).unwrap(),
            endpoints: ProviderEndpoints::default(),
            algorithms: tessera::config::DEFAULT_ALGORITHMS.to_vec(),
            trusted_email_verification: false,
            auto_link_by_email: false,
            store_tokens: false,
            protocol: tessera::config::ProviderProtocol::default(),
            icon_url: None,
        });
    })
    .await;
    let browser = reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
        .unwrap();

    // One navigation: Tessera → the provider's /authorize → Tessera's callback → /v1/me.
    let landed = browser.get(app.url("/auth/login?provider=mock&return_to=/v1/me")).send().await.unwrap();
    assert_eq!(landed.url().path(), "/v1/me", "the browser ends where return_to said");
    let me = body(landed, 200).await;
    assert_eq!(me["identities"][0]["issuer"], Issuer::parse(&issuer).unwrap().as_str());
    assert_eq!(me["identities"][0]["subject"], "johndoe");
    assert_eq!(me["identities"][0]["provider"], "mock");
    assert_eq!(me["email"], "e2e.user@example.com");
    assert_eq!(me["name"], "Erin Endtoend");
    let user_id = me["id"].clone();

    // The session persists; a second sign-in is the same user.
    let again = body(browser.get(app.url("/v1/me")).send().await.unwrap(), 200).await;
    assert_eq!(again["id"], user_id);
    let second = browser.get(app.url("/auth/login?provider=mock&return_to=/v1/me")).send().await.unwrap();
    assert_eq!(body(second, 200).await["id"], user_id);
    assert_eq!(app.db.sql().await.count("users").await, 1);

    let logout = browser.post(app.url("/auth/logout")).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    let after = browser.get(app.url("/v1/me")).send().await.unwrap();
    assert_eq!(body(after, 401).await["code"], "missing_credentials");
}
