//! The provider catalogue against local stubs that behave like the providers, on both backends:
//! each provider is configured from its template (`template = "…"` plus the client and, since the
//! stubs are local, endpoint overrides) and driven through a real connect flow — create a profile,
//! follow the connect link through the stub, the callback, `POST …/token` — and a refresh where
//! the provider's quirk is about refreshing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use tessera::config::{Config, ProviderKind};
use tessera_testkit::local_issuer::{LocalIssuer, StubUser};

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, json as body, on_both_backends};
use crate::signin::{Browser, CLIENT_ID, CLIENT_SECRET, location, provider};

on_both_backends!(
    google_gives_a_refresh_token_because_the_template_asks_for_offline_consent,
    slack_scopes_are_comma_separated_and_its_rotated_refresh_tokens_are_kept,
    notion_takes_basic_auth_and_its_token_is_never_refreshed,
    microsoft_needs_the_tenant_in_the_path,
    github_app_tokens_expire_and_rotate,
);

/// How the stub wants the client at its token endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    Basic,
    Post,
}

/// How the stub answers errors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Errors {
    /// RFC 6749: 400 `{"error": "invalid_grant"}`.
    Standard,
    /// Slack: 200 `{"ok": false, "error": "invalid_refresh_token"}`.
    Slack,
    /// GitHub: 200 `{"error": "bad_refresh_token"}`.
    GitHub,
}

/// What makes the stub behave like one provider.
#[derive(Clone)]
struct Quirks {
    client_auth: ClientAuth,
    errors: Errors,
    /// Whether code exchanges answer a refresh token.
    refresh_tokens: bool,
    /// Whether every refresh answers a new refresh token and forgets the old one.
    rotates: bool,
    /// `expires_in` of access tokens; `None`: the answer has none.
    expires_in: Option<u64>,
    /// The scope of token answers, as the provider spells it.
    scope: Option<String>,
    /// Fields added to every code exchange's answer.
    token_fields: Value,
    /// The tenant the stub serves under `/{tenant}/oauth2/v2.0/…` (Microsoft).
    tenant: Option<String>,
    /// The profile answered at `/user` and `/api/user`.
    profile: Value,
}

impl Quirks {
    fn new(client_auth: ClientAuth, profile: Value) -> Self {
        Self {
            client_auth,
            errors: Errors::Standard,
            refresh_tokens: true,
            rotates: false,
            expires_in: Some(3600),
            scope: None,
            token_fields: json!({}),
            tenant: None,
            profile,
        }
    }
}

#[derive(Default)]
struct Record {
    authorize_queries: Mutex<Vec<HashMap<String, String>>>,
    codes: Mutex<HashSet<String>>,
    access_tokens: Mutex<HashSet<String>>,
    refresh_tokens: Mutex<HashSet<String>>,
    refreshes: AtomicU64,
    refused_refreshes: AtomicU64,
    refused_clients: AtomicU64,
    /// The tokens sent to GitHub's revocation endpoint, in order.
    revoked: Mutex<Vec<String>>,
}

struct StubState {
    quirks: Mutex<Quirks>,
    record: Record,
}

/// A local OAuth 2.0 provider with a provider's quirks.
struct Stub {
    base: String,
    state: Arc<StubState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Stub {
    async fn start(quirks: Quirks) -> Self {
        let state = Arc::new(StubState { quirks: Mutex::new(quirks), record: Record::default() });
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/{tenant}/oauth2/v2.0/authorize", get(tenant_authorize))
            .route("/{tenant}/oauth2/v2.0/token", post(tenant_token))
            .route("/user", get(user).post(user))
            .route("/api/user", get(user))
            .route("/api/user/emails", get(|| async { Json(json!([])) }))
            .route("/api/applications/{client}/token", axum::routing::delete(revoke_github))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, state, server }
    }

    /// The query of the last authorization request.
    fn last_authorize_query(&self) -> HashMap<String, String> {
        self.state.record.authorize_queries.lock().unwrap().last().cloned().expect("an authorization request")
    }

    fn refreshes(&self) -> u64 {
        self.state.record.refreshes.load(Ordering::SeqCst)
    }

    fn refused_refreshes(&self) -> u64 {
        self.state.record.refused_refreshes.load(Ordering::SeqCst)
    }

    fn refused_clients(&self) -> u64 {
        self.state.record.refused_clients.load(Ordering::SeqCst)
    }

    /// Forgets every refresh token, as a provider does when access is withdrawn.
    fn forget_refresh_tokens(&self) {
        self.state.record.refresh_tokens.lock().unwrap().clear();
    }

    /// Answers tokens with this `expires_in` from now on.
    fn set_expires_in(&self, seconds: Option<u64>) {
        self.state.quirks.lock().unwrap().expires_in = seconds;
    }
}

/// GitHub's `DELETE /applications/{client_id}/token`: an access token goes (204); a refresh token
/// is not what it takes (422); anything else is unknown (404).
async fn revoke_github(State(state): State<Arc<StubState>>, Json(body): Json<Value>) -> StatusCode {
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    state.record.revoked.lock().unwrap().push(token.clone());
    if state.record.access_tokens.lock().unwrap().remove(&token) {
        StatusCode::NO_CONTENT
    } else if state.record.refresh_tokens.lock().unwrap().contains(&token) {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::NOT_FOUND
    }
}

fn random() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn authorize(State(state): State<Arc<StubState>>, Query(query): Query<HashMap<String, String>>) -> Response {
    if state.quirks.lock().unwrap().tenant.is_some() {
        return (StatusCode::NOT_FOUND, "this provider serves its tenant's paths only").into_response();
    }
    redirect_with_code(&state, query)
}

async fn tenant_authorize(
    State(state): State<Arc<StubState>>,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if state.quirks.lock().unwrap().tenant.as_deref() != Some(tenant.as_str()) {
        // As Entra ID: AADSTS90002, the tenant is not found.
        return (StatusCode::BAD_REQUEST, "AADSTS90002: Tenant not found").into_response();
    }
    redirect_with_code(&state, query)
}

fn redirect_with_code(state: &StubState, query: HashMap<String, String>) -> Response {
    let (Some(redirect_uri), Some(client_state)) = (query.get("redirect_uri"), query.get("state")) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri and state are required").into_response();
    };
    let code = random();
    state.record.codes.lock().unwrap().insert(code.clone());
    let target = format!("{redirect_uri}?code={code}&state={client_state}");
    state.record.authorize_queries.lock().unwrap().push(query);
    Redirect::to(&target).into_response()
}

/// The client of a token request, and how it came.
fn client_of(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(ClientAuth, String, String)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.split_once(':').map(|(id, secret)| (id.to_owned(), secret.to_owned())));
    match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some((id, secret)), _, None) => Some((ClientAuth::Basic, id, secret)),
        (None, Some(id), Some(secret)) => Some((ClientAuth::Post, id.clone(), secret.clone())),
        _ => None,
    }
}

fn refused(errors: Errors, code: bool) -> Response {
    match errors {
        Errors::Standard => (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))).into_response(),
        Errors::Slack => {
            let error = if code { "invalid_code" } else { "invalid_refresh_token" };
            Json(json!({"ok": false, "error": error})).into_response()
        }
        Errors::GitHub => {
            let error = if code { "bad_verification_code" } else { "bad_refresh_token" };
            Json(json!({"error": error, "error_description": "The code passed is incorrect or expired."}))
                .into_response()
        }
    }
}

async fn tenant_token(
    State(state): State<Arc<StubState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if state.quirks.lock().unwrap().tenant.as_deref() != Some(tenant.as_str()) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request"}))).into_response();
    }
    answer_token(&state, &headers, &form)
}

async fn token(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if state.quirks.lock().unwrap().tenant.is_some() {
        return StatusCode::NOT_FOUND.into_response();
    }
    answer_token(&state, &headers, &form)
}

fn answer_token(state: &StubState, headers: &HeaderMap, form: &HashMap<String, String>) -> Response {
    let quirks = state.quirks.lock().unwrap().clone();
    let record = &state.record;
    let client = client_of(headers, form);
    if client != Some((quirks.client_auth, CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())) {
        record.refused_clients.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))).into_response();
    }
    let mut answer = json!({"access_token": random(), "token_type": "bearer"});
    if let Some(seconds) = quirks.expires_in {
        answer["expires_in"] = seconds.into();
    }
    if let Some(scope) = &quirks.scope {
        answer["scope"] = scope.clone().into();
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let known = form.get("code").is_some_and(|code| record.codes.lock().unwrap().remove(code));
            if !known {
                return refused(quirks.errors, true);
            }
            if quirks.refresh_tokens {
                let refresh_token = random();
                record.refresh_tokens.lock().unwrap().insert(refresh_token.clone());
                answer["refresh_token"] = refresh_token.into();
            }
            if let (Value::Object(answer), Value::Object(fields)) = (&mut answer, quirks.token_fields) {
                answer.extend(fields);
            }
        }
        Some("refresh_token") => {
            record.refreshes.fetch_add(1, Ordering::SeqCst);
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let mut known = record.refresh_tokens.lock().unwrap();
            if !known.contains(&presented) {
                record.refused_refreshes.fetch_add(1, Ordering::SeqCst);
                return refused(quirks.errors, false);
            }
            if quirks.rotates {
                known.remove(&presented);
                let rotated = random();
                known.insert(rotated.clone());
                answer["refresh_token"] = rotated.into();
            }
        }
        _ => return (StatusCode::BAD_REQUEST, Json(json!({"error": "unsupported_grant_type"}))).into_response(),
    }
    if quirks.errors == Errors::Slack {
        answer["ok"] = true.into();
    }
    if quirks.errors == Errors::GitHub && quirks.rotates {
        answer["refresh_token_expires_in"] = 15_897_600.into();
    }
    record.access_tokens.lock().unwrap().insert(answer["access_token"].as_str().unwrap().to_owned());
    Json(answer).into_response()
}

async fn user(State(state): State<Arc<StubState>>, headers: HeaderMap) -> Response {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match token.is_some_and(|t| state.record.access_tokens.lock().unwrap().contains(t)) {
        true => Json(state.quirks.lock().unwrap().profile.clone()).into_response(),
        false => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// A server, a signed-in member of a team, and the providers of `providers` (TOML entries, parsed
/// by the real configuration reader, so that templates apply).
struct World {
    app: TestApp,
    _issuer: LocalIssuer,
    browser: Browser,
    team: String,
    user: String,
    /// The last authorization URL Tessera sent the browser to.
    last_authorize: Option<url::Url>,
}

async fn world(backend: Backend, providers: &str) -> World {
    let text = format!("[auth]\npublic_url = \"http://127.0.0.1\"\n{providers}");
    let ring = format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([5u8; 32]));
    let parsed = Config::from_toml(&text, |var| match var {
        "CLIENT_SECRET" => Some(CLIENT_SECRET.to_owned()),
        "TESSERA_ENCRYPTION_KEYS" => Some(ring.clone()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let issuer = LocalIssuer::start().await.unwrap();
    issuer.set_client(CLIENT_ID, CLIENT_SECRET);
    let app = TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        config.providers = parsed.providers;
        config.providers.push(provider("local", ProviderKind::Oidc, &issuer));
        config.auth.default_provider = Some("local".into());
        config.encryption = parsed.encryption;
    })
    .await;
    issuer.set_next_user(StubUser::new("alice", "alice@example.com"));
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&app, "").await.status(), StatusCode::SEE_OTHER);
    let me = body(browser.me(&app).await, 200).await;
    let team = me["teams"][0]["slug"].as_str().unwrap().to_owned();
    let user = me["id"].as_str().unwrap().to_owned();
    World { app, _issuer: issuer, browser, team, user, last_authorize: None }
}

/// A `[[providers]]` entry from a template, with the test client.
fn entry(name: &str, template: &str, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\ntemplate = \"{template}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_env = \"CLIENT_SECRET\"\n{extra}\n"
    )
}

impl World {
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.app
            .client
            .request(method, self.app.url(&format!("/v1/teams/{}{path}", self.team)))
            .bearer_auth(ADMIN_TOKEN)
            .header("x-on-behalf-of", &self.user)
    }

    /// Creates a profile for `provider`; returns its connect link.
    async fn create(&self, provider: &str, slug: &str) -> String {
        let request = json!({"connector_key": format!("{provider}-tools"), "profile_kind": "oauth_account",
                             "provider": provider, "display_name": slug, "slug": slug});
        let created =
            body(self.request(Method::POST, "/auth-profiles").json(&request).send().await.unwrap(), 201).await;
        created["connect_url"].as_str().unwrap().to_owned()
    }

    /// Follows a connect link through the provider; returns the provider's answer to the
    /// authorization request (a redirect back when it accepts it).
    async fn authorize(&mut self, link: &str) -> reqwest::Response {
        let start = self.browser.open_connect_link(link).await;
        assert_eq!(start.status(), StatusCode::SEE_OTHER, "{:?}", start.text().await);
        self.last_authorize = Some(url::Url::parse(&location(&start)).unwrap());
        self.browser.get(&location(&start)).await
    }

    /// A parameter of the last authorization request.
    fn asked(&self, name: &str) -> Option<String> {
        let url = self.last_authorize.as_ref().expect("an authorization request");
        url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    /// Creates a profile and connects it; returns the callback page.
    async fn connect(&mut self, provider: &str, slug: &str) -> reqwest::Response {
        let link = self.create(provider, slug).await;
        let back = self.authorize(&link).await;
        assert_eq!(back.status(), StatusCode::SEE_OTHER, "the provider sends the browser back");
        self.browser.finish_connect(&location(&back)).await
    }

    async fn profile(&self, slug: &str) -> Value {
        body(self.request(Method::GET, &format!("/auth-profiles/{slug}")).send().await.unwrap(), 200).await
    }

    async fn token(&self, slug: &str) -> reqwest::Response {
        self.request(Method::POST, &format!("/auth-profiles/{slug}/token")).send().await.unwrap()
    }

    /// Makes a profile's access token expire in a minute (inside the refresh window).
    async fn expire_soon(&self, slug: &str) {
        self.expire_in(slug, 60).await;
    }

    /// Makes a profile's access token expire `seconds` from now (in the past when negative).
    async fn expire_in(&self, slug: &str, seconds: i64) {
        assert_eq!(self.app.db.expire_token_in(slug, seconds).await, 1);
    }
}

/// Seconds from now until an RFC 3339 time.
fn seconds_until(time: &Value) -> i64 {
    let at = chrono::DateTime::parse_from_rfc3339(time.as_str().expect("a time")).unwrap();
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds()
}

async fn google_gives_a_refresh_token_because_the_template_asks_for_offline_consent(backend: Backend) {
    // The local OpenID provider plays Google: after the first consent, a refresh token only for
    // access_type=offline&prompt=consent.
    let google = LocalIssuer::start().await.unwrap();
    google.set_client(CLIENT_ID, CLIENT_SECRET);
    google.refresh_token_only_with(&[("access_type", "offline"), ("prompt", "consent")]);
    let issuer = format!("issuer = \"{}\"", google.issuer());
    let providers = format!(
        "{}{}{}",
        entry("google", "google", &issuer),
        entry("google-online", "google", &format!("{issuer}\noffline_authorize_params = {{}}")),
        entry("google-kept", "google", &format!("{issuer}\nstore_tokens = true"))
    );
    let mut w = world(backend, &providers).await;

    // A sign-in keeps no tokens: no refresh token asked for, and no consent screen every time.
    let asked_by_sign_in = |provider: &str| {
        let url = w.app.url(&format!("/auth/login?provider={provider}"));
        async move {
            let start = Browser::new().get(&url).await;
            assert_eq!(start.status(), StatusCode::SEE_OTHER);
            let to = url::Url::parse(&location(&start)).unwrap();
            let asked = |name: &str| to.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
            (asked("access_type"), asked("prompt"))
        }
    };
    assert_eq!(asked_by_sign_in("google").await, (None, None));
    let kept = (Some("offline".to_owned()), Some("consent".to_owned()));
    assert_eq!(asked_by_sign_in("google-kept").await, kept, "a sign-in that keeps the tokens asks for a refresh token");

    google.set_next_user(StubUser::new("google-account-1", "ada@gmail.example"));
    let page = w.connect("google", "drive").await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    assert_eq!(w.asked("access_type").as_deref(), Some("offline"));
    assert_eq!(w.asked("prompt").as_deref(), Some("consent"));
    assert_eq!(w.profile("drive").await["upstream_account_id"], "google-account-1");
    w.expire_soon("drive").await;
    let refreshed = body(w.token("drive").await, 200).await;
    assert_eq!(refreshed["refreshed"], true, "the refresh token Google sent is used");
    assert_eq!(google.refreshes(), 1);

    // The same template without the parameters: no refresh token, so once the access token
    // runs out the profile must be connected again.
    let page = w.connect("google-online", "drive-online").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(w.asked("access_type"), None);
    w.expire_soon("drive-online").await;
    assert_eq!(body(w.token("drive-online").await, 200).await["refreshed"], false, "still valid for a minute");
    w.expire_in("drive-online", -60).await;
    assert_eq!(body(w.token("drive-online").await, 409).await["code"], "needs_reauth");
    assert_eq!(google.refreshes(), 1, "nothing to refresh with");
}

async fn slack_scopes_are_comma_separated_and_its_rotated_refresh_tokens_are_kept(backend: Backend) {
    let mut quirks =
        Quirks::new(ClientAuth::Post, json!({"ok": true, "team_id": "T0001", "team": "Acme", "user_id": "U1"}));
    quirks.errors = Errors::Slack;
    quirks.rotates = true;
    quirks.expires_in = Some(43_200);
    quirks.scope = Some("channels:read,chat:write".into());
    quirks.token_fields = json!({"team": {"id": "T0001", "name": "Acme"}, "bot_user_id": "U1", "app_id": "A1"});
    let slack = Stub::start(quirks).await;
    let overrides = format!(
        "authorization_endpoint = \"{0}/authorize\"\ntoken_endpoint = \"{0}/token\"\nuserinfo_endpoint = \"{0}/user\"",
        slack.base
    );
    let mut w = world(backend, &entry("slack", "slack", &overrides)).await;

    let page = w.connect("slack", "workspace").await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    let asked = slack.last_authorize_query();
    assert_eq!(asked["scope"], "channels:read,chat:write", "Slack joins scopes with commas");
    assert!(!asked.contains_key("code_challenge"), "the template sends no PKCE");
    let profile = w.profile("workspace").await;
    assert_eq!(profile["upstream_account_id"], "T0001", "the workspace is the account");
    assert_eq!(profile["granted_scopes"], json!(["channels:read", "chat:write"]), "the answer's commas are split");
    assert!((43_000..=43_200).contains(&seconds_until(&profile["access_token_expires_at"])));

    // Every refresh rotates the refresh token; the old one stops working at Slack. Three
    // refreshes in a row succeed only if each rotated token was stored.
    for round in 1..=3 {
        w.expire_soon("workspace").await;
        assert_eq!(body(w.token("workspace").await, 200).await["refreshed"], true, "round {round}");
    }
    assert_eq!((slack.refreshes(), slack.refused_refreshes()), (3, 0));

    // A workspace is no person: nobody signs in (or links an identity) with Slack.
    let providers = body(w.app.client.get(w.app.url("/auth/providers")).send().await.unwrap(), 200).await;
    assert_eq!(providers["providers"].as_array().unwrap().len(), 1, "only the sign-in provider: {providers}");
    let login = w.app.client.get(w.app.url("/auth/login?provider=slack")).send().await.unwrap();
    assert_eq!(body(login, 404).await["code"], "unknown_provider");
    assert_eq!(w.app.db.sql().await.count("identities").await, 1);

    // Slack refuses with status 200 and {"ok": false}: still a refused refresh token.
    slack.forget_refresh_tokens();
    w.expire_soon("workspace").await;
    assert_eq!(body(w.token("workspace").await, 409).await["code"], "needs_reauth");
    assert_eq!(w.profile("workspace").await["status"], "needs_reauth");
    assert_eq!(slack.refused_refreshes(), 1);
}

async fn notion_takes_basic_auth_and_its_token_is_never_refreshed(backend: Backend) {
    let mut quirks = Quirks::new(ClientAuth::Basic, json!({}));
    quirks.refresh_tokens = false;
    quirks.expires_in = None;
    quirks.token_fields = json!({
        "bot_id": "bot-1", "workspace_id": "ws-42", "workspace_name": "Acme Docs",
        "owner": {"type": "user", "user": {"id": "u-1", "name": "Ada Lovelace", "person": {"email": "ada@acme.example"}}},
    });
    let notion = Stub::start(quirks).await;
    let overrides = format!("authorization_endpoint = \"{0}/authorize\"\ntoken_endpoint = \"{0}/token\"", notion.base);
    let providers = format!(
        "{}{}",
        entry("notion", "notion", &overrides),
        entry("notion-post", "notion", &format!("{overrides}\ntoken_auth = \"client_secret_post\""))
    );
    let mut w = world(backend, &providers).await;

    let page = w.connect("notion", "docs").await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    assert_eq!(notion.last_authorize_query()["owner"], "user");
    assert!(!notion.last_authorize_query().contains_key("scope"), "Notion takes no scopes");
    let profile = w.profile("docs").await;
    assert_eq!(profile["upstream_account_id"], "ws-42", "read from the token answer");
    assert_eq!(profile["access_token_expires_at"], Value::Null);
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("auth_profiles WHERE slug = 'docs' AND refresh_token IS NULL").await, 1);
    let first = body(w.token("docs").await, 200).await;
    for _ in 0..3 {
        let again = body(w.token("docs").await, 200).await;
        assert_eq!((&again["refreshed"], &again["expires_at"]), (&json!(false), &Value::Null));
        assert_eq!(again["access_token"], first["access_token"], "used until revoked");
    }
    assert_eq!(notion.refreshes(), 0, "never refreshed");
    assert_eq!(notion.refused_clients(), 0);
    // Some providers say `"expires_in": 0` for a token that does not expire: the same.
    notion.set_expires_in(Some(0));
    let page = w.connect("notion", "docs-zero").await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    assert_eq!(w.profile("docs-zero").await["access_token_expires_at"], Value::Null);
    for _ in 0..2 {
        let answer = body(w.token("docs-zero").await, 200).await;
        assert_eq!((&answer["refreshed"], &answer["expires_at"]), (&json!(false), &Value::Null));
    }
    assert_eq!(w.profile("docs-zero").await["status"], "active");

    // The stub holds Notion's rule: the client in the form body is refused.
    let link = w.create("notion-post", "docs-post").await;
    let back = w.authorize(&link).await;
    let callback = w.browser.navigate(&location(&back)).await;
    assert_eq!(callback.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(notion.refused_clients(), 1);
    assert_eq!(w.profile("docs-post").await["status"], "pending_auth");
}

async fn microsoft_needs_the_tenant_in_the_path(backend: Backend) {
    let graph_me = json!({"id": "00000000-aaaa-4bbb-8ccc-000000000001", "displayName": "Ada Lovelace",
                          "userPrincipalName": "ada@contoso.example", "mail": "ada@contoso.example"});
    let mut quirks = Quirks::new(ClientAuth::Post, graph_me);
    quirks.tenant = Some("contoso-tenant-id".into());
    quirks.rotates = true;
    quirks.scope = Some("openid profile email offline_access User.Read".into());
    let entra = Stub::start(quirks).await;
    let overrides = format!(
        "authorization_endpoint = \"{0}/{{tenant}}/oauth2/v2.0/authorize\"\n\
         token_endpoint = \"{0}/{{tenant}}/oauth2/v2.0/token\"\nuserinfo_endpoint = \"{0}/user\"",
        entra.base
    );
    let providers = format!(
        "{}{}",
        entry("microsoft", "microsoft", &format!("{overrides}\ntenant = \"contoso-tenant-id\"")),
        entry("microsoft-common", "microsoft", &overrides)
    );
    let mut w = world(backend, &providers).await;

    let page = w.connect("microsoft", "outlook").await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    let asked = entra.last_authorize_query();
    assert!(asked["scope"].split(' ').any(|s| s == "offline_access"), "asks for a refresh token");
    assert!(asked.contains_key("code_challenge"), "PKCE");
    let profile = w.profile("outlook").await;
    assert_eq!(profile["upstream_account_id"], "00000000-aaaa-4bbb-8ccc-000000000001", "the Graph object id");
    w.expire_soon("outlook").await;
    assert_eq!(body(w.token("outlook").await, 200).await["refreshed"], true);
    w.expire_soon("outlook").await;
    assert_eq!(body(w.token("outlook").await, 200).await["refreshed"], true, "the rotated refresh token was kept");
    // A test calls the template's user endpoint with the token (and never returns it).
    let tested = w.request(Method::POST, "/auth-profiles/outlook/test").send().await.unwrap();
    let tested = body(tested, 200).await;
    assert_eq!((&tested["ok"], &tested["status"]), (&json!(true), &json!(200)), "{tested}");
    assert_eq!(tested.get("access_token"), None);

    // The default tenant, common, is not the one this directory serves: the provider refuses.
    let link = w.create("microsoft-common", "wrong-tenant").await;
    let refused = w.authorize(&link).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused.text().await.unwrap().contains("AADSTS90002"));
    assert_eq!(w.profile("wrong-tenant").await["status"], "pending_auth");
}

async fn github_app_tokens_expire_and_rotate(backend: Backend) {
    let mut quirks = Quirks::new(ClientAuth::Post, json!({"id": 583231, "login": "octocat", "name": "Mona Lisa"}));
    quirks.errors = Errors::GitHub;
    quirks.rotates = true;
    quirks.expires_in = Some(28_800);
    let github = Stub::start(quirks).await;
    // A stand-in for GitHub elsewhere than github.com is keyed by its own issuer (start-up refuses
    // one left on github.com's).
    let overrides = format!(
        "issuer = \"{0}\"\nauthorization_endpoint = \"{0}/authorize\"\ntoken_endpoint = \"{0}/token\"\n\
         api_base_url = \"{0}/api\"",
        github.base
    );
    let mut w = world(backend, &entry("github-app", "github", &overrides)).await;

    let page = w.connect("github-app", "repos").await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    let profile = w.profile("repos").await;
    assert_eq!(profile["upstream_account_id"], "583231");
    assert!((28_700..=28_800).contains(&seconds_until(&profile["access_token_expires_at"])), "8 hours");
    for round in 1..=3 {
        w.expire_soon("repos").await;
        let token = body(w.token("repos").await, 200).await;
        assert_eq!(token["refreshed"], true, "round {round}");
        assert!(seconds_until(&token["expires_at"]) > 28_000);
    }
    assert_eq!((github.refreshes(), github.refused_refreshes()), (3, 0), "never an old refresh token replayed");
    // Removing a second connection revokes its access token at GitHub: GitHub's API takes access
    // tokens, not a GitHub App's refresh token, which the profile holds too.
    assert_eq!(w.connect("github-app", "spare").await.status(), StatusCode::OK);
    let spare = body(w.token("spare").await, 200).await["access_token"].as_str().unwrap().to_owned();
    let removed = w.request(Method::DELETE, "/auth-profiles/spare").send().await.unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    assert_eq!(*github.state.record.revoked.lock().unwrap(), [spare], "the access token, not the refresh token");

    // GitHub refuses an expired or revoked refresh token with status 200: a reconnection is needed.
    github.forget_refresh_tokens();
    w.expire_soon("repos").await;
    assert_eq!(body(w.token("repos").await, 409).await["code"], "needs_reauth");
    assert_eq!(w.profile("repos").await["status"], "needs_reauth");
    assert_eq!(github.refused_refreshes(), 1);
}
