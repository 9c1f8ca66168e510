//! GitHub and GitLab sign-in against local stubs of their APIs, and upstream tokens at rest: kept
//! encrypted, bound to their row, and rotated to a new key by `tessera keys rotate`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use tessera::config::{ProviderConfig, ProviderEndpoints, ProviderKind};
use tessera::crypto::keyring::KeyRing;
use tessera::domain::Issuer;
use tessera::store::{SecretKind, StoredSecret};
use tessera::upstream::providers::TokenKind;
use tessera_testkit::local_issuer::{LocalIssuer, StubUser};

use crate::helpers::{Backend, TestApp, json as body, on_both_backends, run_tool};
use crate::signin::{Browser, CLIENT_ID, CLIENT_SECRET, provider};

on_both_backends!(
    github_identities_are_keyed_by_account_id_not_login,
    github_uses_the_primary_verified_email_only,
    a_refused_github_code_is_an_invalid_code,
    gitlab_signs_in_through_openid_connect,
    upstream_tokens_are_kept_encrypted_and_bound_to_their_row,
    keys_rotate_re_encrypts_everything_under_the_active_key,
);

/// A stub of GitHub's OAuth endpoints and REST API.
pub struct GitHubStub {
    pub base: String,
    state: Arc<StubState>,
    server: tokio::task::JoinHandle<()>,
}

/// How GitHub answers 403.
#[derive(Clone, Copy)]
pub enum Refusal {
    /// The primary rate limit: `x-ratelimit-remaining: 0`.
    RateLimit,
    /// A secondary rate limit: requests left, no `retry-after`, only the message says so.
    SecondaryRateLimit,
    /// A token that may not read the emails (a GitHub App without the permission).
    NotAccessible,
    /// A proxy's 403 in front of GitHub, without GitHub's JSON message.
    Proxy,
}

#[derive(Default)]
struct StubState {
    user: Mutex<Value>,
    emails: Mutex<Value>,
    codes: Mutex<HashMap<String, String>>,
    tokens: Mutex<HashMap<String, (Value, Value)>>,
    refuse_next_code: Mutex<bool>,
    /// The emails are answered 403 this way.
    emails_refused: Mutex<Option<Refusal>>,
    user_refused: Mutex<Option<Refusal>>,
    /// The tokens sent to the revocation endpoint, in order.
    revoked: Mutex<Vec<String>>,
}

impl GitHubStub {
    pub async fn start() -> Self {
        let state = Arc::new(StubState::default());
        *state.user.lock().unwrap() = json!({"id": 583231, "login": "octocat", "name": "Mona Lisa", "avatar_url": "https://avatars.example/u/583231"});
        *state.emails.lock().unwrap() = json!([
            {"email": "octocat@old.example", "primary": false, "verified": true},
            {"email": "mona@github.example", "primary": true, "verified": true},
        ]);
        let app = Router::new()
            .route("/login/oauth/authorize", get(stub_authorize))
            .route("/login/oauth/access_token", post(stub_token))
            .route("/api/user", get(stub_user))
            .route("/api/user/emails", get(stub_emails))
            .route("/api/applications/{client}/token", delete(stub_revoke))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, state, server }
    }

    pub fn set_user(&self, user: Value, emails: Value) {
        *self.state.user.lock().unwrap() = user;
        *self.state.emails.lock().unwrap() = emails;
    }

    /// How `GET /user` answers from now on: refused that way, or (`None`) with the user.
    pub fn refuse_user(&self, refusal: Option<Refusal>) {
        *self.state.user_refused.lock().unwrap() = refusal;
    }

    pub fn refuse_next_code(&self) {
        *self.state.refuse_next_code.lock().unwrap() = true;
    }

    /// A provider configuration pointing at this stub.
    pub fn provider(&self, name: &str) -> ProviderConfig {
        let url = |path: &str| Some(url::Url::parse(&format!("{}{path}", self.base)).unwrap());
        ProviderConfig {
            name: name.into(),
            kind: ProviderKind::GitHub,
            client_id: "gh-client".into(),
            client_secret: Some(SecretString::from("gh-secret")),
            scopes: vec!["read:user".into(), "user:email".into()],
            issuer: Issuer::parse("https://github.com").unwrap(),
            endpoints: ProviderEndpoints {
                authorization: url("/login/oauth/authorize"),
                token: url("/login/oauth/access_token"),
                api: url("/api"),
                ..ProviderEndpoints::default()
            },
            algorithms: tessera::config::DEFAULT_ALGORITHMS.to_vec(),
            trusted_email_verification: false,
            auto_link_by_email: false,
            store_tokens: false,
            protocol: tessera::config::ProviderProtocol::default(),
            icon_url: None,
        }
    }
}

impl Drop for GitHubStub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    redirect_uri: String,
    state: String,
}

async fn stub_authorize(State(state): State<Arc<StubState>>, Query(query): Query<AuthorizeQuery>) -> Response {
    let code = uuid::Uuid::new_v4().simple().to_string();
    state.codes.lock().unwrap().insert(code.clone(), query.redirect_uri.clone());
    Redirect::to(&format!("{}?code={code}&state={}", query.redirect_uri, query.state)).into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    code: String,
    client_id: String,
    client_secret: String,
}

async fn stub_token(State(state): State<Arc<StubState>>, Form(form): Form<TokenForm>) -> Response {
    let refused = std::mem::take(&mut *state.refuse_next_code.lock().unwrap());
    let known = state.codes.lock().unwrap().remove(&form.code).is_some();
    if refused || !known || form.client_id != "gh-client" || form.client_secret != "gh-secret" {
        // GitHub answers errors with status 200.
        return Json(
            json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."}),
        )
        .into_response();
    }
    let token = format!("gho_{}", uuid::Uuid::new_v4().simple());
    let profile = (state.user.lock().unwrap().clone(), state.emails.lock().unwrap().clone());
    state.tokens.lock().unwrap().insert(token.clone(), profile);
    Json(json!({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"})).into_response()
}

/// GitHub's `DELETE /applications/{client_id}/token`: an access token it knows goes (204), a
/// refresh token is not what it takes (422), an unknown token is 404.
async fn stub_revoke(State(state): State<Arc<StubState>>, Json(body): Json<Value>) -> StatusCode {
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    state.revoked.lock().unwrap().push(token.clone());
    if token.starts_with("ghr_") {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if state.tokens.lock().unwrap().remove(&token).is_some() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

fn profile_of(state: &StubState, headers: &HeaderMap) -> Option<(Value, Value)> {
    let token = headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")?;
    state.tokens.lock().unwrap().get(token).cloned()
}

async fn stub_user(State(state): State<Arc<StubState>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = *state.user_refused.lock().unwrap() {
        return refused(refusal);
    }
    match profile_of(&state, &headers) {
        Some((user, _)) => Json(user).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// GitHub's 403 of each kind.
fn refused(refusal: Refusal) -> Response {
    let (remaining, message) = match refusal {
        Refusal::Proxy => return (StatusCode::FORBIDDEN, "Forbidden").into_response(),
        Refusal::RateLimit => ("0", "API rate limit exceeded for user ID 583231."),
        Refusal::SecondaryRateLimit => {
            ("4998", "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.")
        }
        Refusal::NotAccessible => ("4997", "Resource not accessible by integration"),
    };
    let body = json!({"message": message, "documentation_url": "https://docs.github.com/rest"});
    (StatusCode::FORBIDDEN, [("x-ratelimit-remaining", remaining)], Json(body)).into_response()
}

async fn stub_emails(State(state): State<Arc<StubState>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = *state.emails_refused.lock().unwrap() {
        return refused(refusal);
    }
    match profile_of(&state, &headers) {
        Some((_, emails)) => Json(emails).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

async fn github_identities_are_keyed_by_account_id_not_login(backend: Backend) {
    let github = GitHubStub::start().await;
    let app = TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        config.providers.push(github.provider("github"));
    })
    .await;
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&app, "provider=github").await.status(), StatusCode::SEE_OTHER);
    let me = body(browser.me(&app).await, 200).await;
    assert_eq!(me["identities"][0]["issuer"], "https://github.com");
    assert_eq!(me["identities"][0]["subject"], "583231");
    assert_eq!(me["name"], "Mona Lisa");

    github.set_user(
        json!({"id": 583231, "login": "renamed-octocat", "name": "Mona"}),
        json!([{"email": "mona@github.example", "primary": true, "verified": true}]),
    );
    let mut again = Browser::new();
    again.sign_in(&app, "provider=github").await;
    assert_eq!(body(again.me(&app).await, 200).await["id"], me["id"], "a renamed login is the same person");
    assert_eq!(app.db.sql().await.count("identities").await, 1);
}

async fn github_uses_the_primary_verified_email_only(backend: Backend) {
    let github = GitHubStub::start().await;
    let app = TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        // Trusted: only then is GitHub's "verified" recorded as such.
        let mut provider = github.provider("github");
        provider.trusted_email_verification = true;
        config.providers.push(provider);
    })
    .await;
    let mut browser = Browser::new();
    browser.sign_in(&app, "provider=github").await;
    let me = body(browser.me(&app).await, 200).await;
    assert_eq!(me["email"], "mona@github.example");
    assert_eq!(me["email_verified"], true);

    github.set_user(
        json!({"id": 42, "login": "unverified"}),
        json!([
            {"email": "primary-unverified@example.com", "primary": true, "verified": false},
            {"email": "secondary@example.com", "primary": false, "verified": true},
        ]),
    );
    let mut other = Browser::new();
    other.sign_in(&app, "provider=github").await;
    let me = body(other.me(&app).await, 200).await;
    assert_eq!(me["email"], Value::Null, "no primary verified email: none is used");
    assert_eq!(me["email_verified"], false);
}

async fn a_refused_github_code_is_an_invalid_code(backend: Backend) {
    let github = GitHubStub::start().await;
    let app = TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        config.providers.push(github.provider("github"));
    })
    .await;
    github.refuse_next_code();
    let mut browser = Browser::new();
    assert_eq!(body(browser.sign_in(&app, "provider=github").await, 400).await["code"], "invalid_code");
    assert_eq!(app.db.sql().await.count("users").await, 0);
    // GitHub's rate limit (403 with no requests left) is the provider unavailable, not a user
    // without an email: provisioned without one, a person whose address an account holds would
    // get a second account instead of the link question.
    // A secondary rate limit leaves requests and names no wait; only its message says so.
    // Nor is a 403 that is not GitHub's (a proxy's) read as "no emails".
    for limit in [Refusal::RateLimit, Refusal::SecondaryRateLimit, Refusal::Proxy] {
        *github.state.emails_refused.lock().unwrap() = Some(limit);
        let refused = body(Browser::new().sign_in(&app, "provider=github").await, 502).await;
        assert_eq!(refused["code"], "provider_unavailable");
        assert_eq!(app.db.sql().await.count("users").await, 0);
    }
    // A token that may not read the emails signs in without one.
    *github.state.emails_refused.lock().unwrap() = Some(Refusal::NotAccessible);
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&app, "provider=github").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(body(browser.me(&app).await, 200).await["email"], Value::Null);
}

async fn gitlab_signs_in_through_openid_connect(backend: Backend) {
    let gitlab = LocalIssuer::start().await.unwrap();
    gitlab.set_client(CLIENT_ID, CLIENT_SECRET);
    let mut user = StubUser::new("1234", "dev@gitlab.example");
    user.username = Some("dev".into());
    gitlab.set_next_user(user);
    let app = TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        config.providers.push(provider("gitlab", ProviderKind::GitLab, &gitlab));
    })
    .await;
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&app, "provider=gitlab").await.status(), StatusCode::SEE_OTHER);
    let me = body(browser.me(&app).await, 200).await;
    assert_eq!(me["identities"][0]["subject"], "1234");
    assert_eq!(me["identities"][0]["provider"], "gitlab");
    assert_eq!(me["email"], "dev@gitlab.example");
}

/// The ciphertexts of the identity_tokens rows, by identity id.
async fn stored_tokens(app: &TestApp) -> Vec<(uuid::Uuid, Vec<u8>)> {
    let store = app.db.store().await;
    let secrets = store.secrets_page(SecretKind::IdentityTokens, None, 100).await.unwrap();
    store.close().await;
    secrets.into_iter().filter(|s| s.column == "access_token").map(|s| (s.row_id, s.ciphertext)).collect()
}

/// A server signing in with `github`, keeping upstream tokens encrypted under `ring`.
async fn app_keeping_tokens(backend: Backend, github: &GitHubStub, ring: &str) -> TestApp {
    TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        let mut github_provider = github.provider("github");
        github_provider.store_tokens = true;
        config.providers.push(github_provider);
        config.encryption = Some(Arc::new(KeyRing::parse(ring).unwrap()));
    })
    .await
}

async fn upstream_tokens_are_kept_encrypted_and_bound_to_their_row(backend: Backend) {
    let github = GitHubStub::start().await;
    let ring = format!("k1:{}", key(1));
    let app = app_keeping_tokens(backend, &github, &ring).await;
    for id in [1, 2] {
        github.set_user(json!({"id": id, "login": format!("u{id}")}), json!([]));
        Browser::new().sign_in(&app, "provider=github").await;
    }
    let rows = stored_tokens(&app).await;
    assert_eq!(rows.len(), 2);
    let keyring = KeyRing::parse(&ring).unwrap();
    let aad = |row: uuid::Uuid| StoredSecret::aad(SecretKind::IdentityTokens, row, "access_token");
    for (row, ciphertext) in &rows {
        assert_eq!(KeyRing::key_id_of(ciphertext), Some("k1"));
        let plaintext = keyring.decrypt(ciphertext, &aad(*row)).unwrap();
        assert!(plaintext.starts_with(b"gho_"), "the stored value is the upstream token");
        assert!(!ciphertext.windows(4).any(|w| w == b"gho_"), "but it is not stored in the clear");
    }
    // Swapping two rows' ciphertexts makes both undecryptable.
    let ((a, a_ct), (b, b_ct)) = (&rows[0], &rows[1]);
    assert!(keyring.decrypt(a_ct, &aad(*b)).is_err());
    assert!(keyring.decrypt(b_ct, &aad(*a)).is_err());
}

async fn keys_rotate_re_encrypts_everything_under_the_active_key(backend: Backend) {
    let github = GitHubStub::start().await;
    let old_ring = format!("old:{}", key(7));
    let app = app_keeping_tokens(backend, &github, &old_ring).await;
    for id in 1..=12 {
        github.set_user(json!({"id": id, "login": format!("u{id}")}), json!([]));
        Browser::new().sign_in(&app, "provider=github").await;
    }
    let before = stored_tokens(&app).await;
    assert!(before.iter().all(|(_, ct)| KeyRing::key_id_of(ct) == Some("old")));

    let rotated_ring = format!("new:{},old:{}", key(8), key(7));
    let dir = tempfile::tempdir().unwrap();
    let command = |ring: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
        command
            .args(["keys", "rotate"])
            .current_dir(dir.path())
            .env_clear()
            .env("TESSERA_DATABASE_URL", &app.db.url)
            .env("TESSERA_ENCRYPTION_KEYS", ring)
            .env("TESSERA_LOG", "error");
        command
    };
    let limit = std::time::Duration::from_secs(60);
    // Two runs at once (a job retried beside the first): each value is re-encrypted once, by one
    // of them (a compare-and-swap per value), and neither fails. (Over twelve rows the runs may
    // not overlap at all; the sum holds either way, and two runs that wait on each other fail
    // at the limit rather than hang.)
    let (mut first, mut second) = (command(&rotated_ring), command(&rotated_ring));
    let outputs = tokio::join!(run_tool(&mut first, "keys rotate", limit), run_tool(&mut second, "keys rotate", limit));
    let mut rotated = 0;
    for output in [outputs.0, outputs.1] {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("identity_tokens: 12/12 rows"), "progress is shown: {stdout}");
        let summary = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("identity_tokens: "))
            .find_map(|line| line.split_once(" re-encrypted"))
            .unwrap_or_else(|| panic!("a summary: {stdout}"));
        rotated += summary.0.parse::<u64>().unwrap();
    }
    assert_eq!(rotated, 12, "each value re-encrypted once, by one run or the other");

    let after = stored_tokens(&app).await;
    let new_only = KeyRing::parse(&format!("new:{}", key(8))).unwrap();
    for ((row, old_ct), (_, new_ct)) in before.iter().zip(&after) {
        assert_eq!(KeyRing::key_id_of(new_ct), Some("new"));
        let aad = StoredSecret::aad(SecretKind::IdentityTokens, *row, "access_token");
        let old_ring = KeyRing::parse(&old_ring).unwrap();
        assert_eq!(new_only.decrypt(new_ct, &aad).unwrap(), old_ring.decrypt(old_ct, &aad).unwrap(), "same token");
    }
    let again = run_tool(&mut command(&rotated_ring), "keys rotate", limit).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 re-encrypted, 12 current"));

    // Without the old key, values it made are reported, not silently skipped.
    let unrelated = run_tool(&mut command(&format!("other:{}", key(9))), "keys rotate", limit).await;
    assert!(!unrelated.status.success());
    assert!(String::from_utf8_lossy(&unrelated.stdout).contains("12 do not decrypt"));
}

/// GitHub revokes access tokens only: the provider says so, so that a connected account's
/// revocation sends the access token even when a GitHub App gave a refresh token too; a token
/// GitHub no longer knows is nothing to end, and any other refusal is an error (logged).
#[tokio::test]
async fn github_revokes_access_tokens_and_reports_refusals() {
    let stub = GitHubStub::start().await;
    let registry = tessera::upstream::providers::ProviderRegistry::new(
        &[stub.provider("github")],
        None,
        reqwest::Client::new(),
        &tessera::config::Config::from_toml("", |_: &str| None).unwrap().jwks,
    );
    let github = registry.get(Some("github")).unwrap();
    assert!(github.revokes_by_access_token());
    stub.state.tokens.lock().unwrap().insert("ghu_live".into(), (json!({}), json!([])));
    assert!(github.revoke("ghu_live", TokenKind::Access).await.unwrap(), "revoked");
    assert!(github.revoke("ghu_live", TokenKind::Access).await.unwrap(), "gone already: nothing to end");
    assert!(github.revoke("ghr_refresh", TokenKind::Access).await.is_err(), "a refusal is an error");
    assert_eq!(*stub.state.revoked.lock().unwrap(), ["ghu_live", "ghu_live", "ghr_refresh"]);
}
