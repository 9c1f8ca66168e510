//! Relying parties written by others against Tessera as an OpenID Provider: panva's
//! openid-client (npm) and Authlib (PyPI), both installed by `scripts/test`. Each runs a script in
//! `tests/support/` that signs in through the local upstream issuer and exercises discovery, the
//! code flow with PKCE, id token validation, userinfo, refresh rotation, introspection,
//! revocation (and, for openid-client, logout); a library refusing one of Tessera's answers fails
//! the test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use tessera_testkit::local_issuer::StubUser;
use tokio::process::Command;

use crate::helpers::{Backend, on_both_backends, run_tool};
use crate::op_flow::{POST_LOGOUT, REDIRECT, op_world, register};

on_both_backends!(openid_client_runs_every_flow, authlib_runs_every_flow);

fn support() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

async fn run(mut command: Command) -> serde_json::Value {
    let output = run_tool(&mut command, "the relying party", Duration::from_secs(300)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the relying party failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| panic!("its result: {stdout}"))
}

async fn openid_client_runs_every_flow(backend: Backend) {
    assert!(
        support().join("node_modules/openid-client").exists(),
        "openid-client is not installed: run the suite with `scripts/test`, which installs it"
    );
    let w = op_world(backend).await;
    w.issuer.set_next_user(StubUser::new("rp-sub", "rp-user@example.com"));
    let (client, secret) = register(
        &w.app,
        json!({
            "name": "openid-client",
            "kind": "confidential",
            "redirect_uris": [REDIRECT],
            "post_logout_redirect_uris": [POST_LOGOUT],
            "first_party": true,
        }),
    )
    .await;
    let mut command = Command::new("node");
    command
        .arg("openid-client-flow.mjs")
        .current_dir(support())
        .env("TESSERA_ISSUER", w.app.url(""))
        .env("CLIENT_ID", &client)
        .env("CLIENT_SECRET", secret.unwrap())
        .env("REDIRECT_URI", REDIRECT)
        .env("POST_LOGOUT_URI", POST_LOGOUT);
    let result = run(command).await;
    let user = w.app.db.sql().await.uuids("SELECT id FROM users").await;
    assert_eq!(result["sub"], user[0].to_string(), "the library saw Tessera's user id");
}

async fn authlib_runs_every_flow(backend: Backend) {
    let python = std::env::var("TESSERA_TEST_PYTHON")
        .expect("TESSERA_TEST_PYTHON is not set: run the suite with `scripts/test`, which installs Authlib");
    let w = op_world(backend).await;
    w.issuer.set_next_user(StubUser::new("authlib-sub", "authlib-user@example.com"));
    // The app asks for a token for its API, whose server exchanges it for one for the billing API.
    // The app is not registered for `offline_access`, which its library asks for all the same (at
    // authorization and again at each refresh).
    let (api, billing) = ("https://orders.example.com", "https://billing.example.com");
    let (client, secret) = register(
        &w.app,
        json!({"name": "Authlib", "kind": "confidential", "redirect_uris": [REDIRECT], "first_party": true,
               "resources": [api], "scopes": ["openid", "profile", "email"]}),
    )
    .await;
    // The server authenticates with a key (`private_key_jwt`), signing as the library does.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                     "y": URL_SAFE_NO_PAD.encode(&point[33..])});
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(pkcs8.as_ref()));
    let (server, _) = register(
        &w.app,
        json!({"name": "Orders API", "kind": "confidential", "redirect_uris": [],
               "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"],
               "scopes": ["openid", "email"], "resources": [api, billing], "jwks": {"keys": [jwk]}}),
    )
    .await;
    let mut command = Command::new(python);
    command
        .arg("authlib_flow.py")
        .current_dir(support())
        .env("TESSERA_ISSUER", w.app.url(""))
        .env("CLIENT_ID", &client)
        .env("CLIENT_SECRET", secret.unwrap())
        .env("REDIRECT_URI", REDIRECT)
        .env("RESOURCE", api)
        .env("EXCHANGE_CLIENT_ID", &server)
        .env("EXCHANGE_CLIENT_KEY", pem)
        .env("EXCHANGE_RESOURCE", billing);
    let result = run(command).await;
    let user = w.app.db.sql().await.uuids("SELECT id FROM users").await;
    assert_eq!(result["sub"], user[0].to_string());
}
