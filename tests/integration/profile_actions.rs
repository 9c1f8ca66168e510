//! Auth-profile actions over HTTP, on both backends: updates (and an update racing a connect
//! completion), the default profile per connector under concurrent switches, credentials by
//! connector, and credential tests (also during a refresh), against the local OpenID provider.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera::config::{
    Config, ConnectorConfig, EnvField, ProfileMapping, ProviderConfig, ProviderKind, UserinfoMethod,
};
use tessera::crypto::keyring::KeyRing;
use tessera::domain::UserId;
use tessera_testkit::local_issuer::{LocalIssuer, StubUser, TokenFault};

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, assert_no_leak, eventually, json as body, on_both_backends};
use crate::signin::{Browser, CLIENT_ID, CLIENT_SECRET, location, provider};

on_both_backends!(
    a_revocation_reaches_the_provider_though_its_client_hangs_up,
    an_update_renames_and_moves_the_slug,
    a_test_that_cannot_refresh_keeps_the_token_for_its_other_users,
    only_the_owner_or_an_admin_updates_a_profile,
    bad_updates_are_clean_4xx_and_write_nothing,
    concurrent_updates_to_one_slug_have_one_winner,
    widening_scopes_needs_a_reconnection_and_narrowing_does_not,
    an_update_racing_a_connect_completion_loses_neither,
    a_widening_update_racing_a_connect_completion_never_leaves_it_active,
    one_default_per_connector_and_concurrent_switches_leave_one,
    who_may_set_the_default_and_what_can_be_it,
    credentials_by_connector_prefer_the_callers_own_account,
    credentials_by_connector_explain_what_is_missing,
    a_test_says_ok_without_the_token,
    a_refused_token_is_refreshed_once_then_marks_the_profile,
    tests_of_other_kinds_and_states_are_clean_409s,
    a_test_during_a_refresh_refreshes_once,
    a_profile_revoked_during_its_refresh_hands_out_no_token,
    a_github_profile_is_tested_against_the_user_endpoint,
    a_success_that_names_no_account_is_a_refusal,
);

struct World {
    app: TestApp,
    issuer: LocalIssuer,
    alice: Member,
    bob: Member,
    team: String,
}

/// A signed-in member: their browser and id.
struct Member {
    browser: Browser,
    id: UserId,
}

fn configure(config: &mut Config, issuer: &LocalIssuer) {
    config.auth.cookie_secure = false;
    config.providers.push(provider("local", ProviderKind::Oidc, issuer));
    config.providers.push(plain_provider(issuer));
    config.providers.push(chat_provider(issuer));
    config.auth.default_provider = Some("local".into());
    let ring = format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([5u8; 32]));
    config.encryption = Some(Arc::new(KeyRing::parse(&ring).unwrap()));
    // The env connectors these stories use: one API key each.
    let keys = ["other", "ci", "crm"].into_iter().map(str::to_owned).chain((0..8).map(|i| format!("connector-{i}")));
    config.connectors = keys
        .map(|key| ConnectorConfig {
            label: key.clone(),
            key,
            fields: vec![EnvField {
                name: "API_KEY".into(),
                label: "API key".into(),
                secret: true,
                optional: false,
                pattern: None,
            }],
            probe: None,
        })
        .collect();
}

/// A plain OAuth 2.0 provider at the local issuer, for connected accounts only, that reads the
/// account from the token answer: it has no user endpoint to test a token with.
pub(crate) fn plain_provider(issuer: &LocalIssuer) -> ProviderConfig {
    let endpoint = |path: &str| Some(url::Url::parse(&format!("{}{path}", issuer.issuer())).unwrap());
    let mut plain = provider("plain", ProviderKind::OAuth2, issuer);
    plain.issuer = tessera::domain::Issuer::parse("https://plain.example.com").unwrap();
    plain.endpoints.authorization = endpoint("/authorize");
    plain.endpoints.token = endpoint("/token");
    plain.protocol.sign_in = false;
    plain.protocol.profile = Some(ProfileMapping {
        method: UserinfoMethod::Get,
        body: None,
        account_id: "/account/id".into(),
        login: None,
        email: None,
        email_verified: None,
        name: None,
    });
    plain
}

/// A plain OAuth 2.0 provider at the local issuer whose user endpoint answers a refused token
/// as Slack's `auth.test` does, when the issuer is told to (`refuse_userinfo_in_a_200`).
fn chat_provider(issuer: &LocalIssuer) -> ProviderConfig {
    let mut chat = plain_provider(issuer);
    chat.name = "chat".into();
    chat.issuer = tessera::domain::Issuer::parse("https://chat.example.com").unwrap();
    chat.endpoints.userinfo = Some(url::Url::parse(&format!("{}/userinfo", issuer.issuer())).unwrap());
    if let Some(profile) = chat.protocol.profile.as_mut() {
        profile.account_id = "/sub".into();
    }
    chat
}

async fn sign_in(app: &TestApp, issuer: &LocalIssuer, subject: &str) -> Member {
    issuer.set_next_user(StubUser::new(subject, &format!("{subject}@example.com")));
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(app, "").await.status(), StatusCode::SEE_OTHER);
    let me = body(browser.me(app).await, 200).await;
    Member { browser, id: me["id"].as_str().unwrap().parse().unwrap() }
}

/// Alice owns a team; Bob is a member of it.
async fn world(backend: Backend) -> World {
    let issuer = LocalIssuer::start().await.unwrap();
    issuer.set_client(CLIENT_ID, CLIENT_SECRET);
    let app = TestApp::spawn_with(backend, |config| configure(config, &issuer)).await;
    let mut alice = sign_in(&app, &issuer, "alice").await;
    let bob = sign_in(&app, &issuer, "bob").await;
    let me = body(alice.browser.me(&app).await, 200).await;
    let team = me["teams"][0]["slug"].as_str().unwrap().to_owned();
    let added = app
        .admin(Method::POST, &format!("/admin/teams/{team}/members"))
        .json(&json!({"user_id": bob.id, "role": "member"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    // The account connections get at the provider, unless a test says otherwise.
    issuer.set_next_user(StubUser::new("alice", "alice@provider.example"));
    World { app, issuer, alice, bob, team }
}

fn request(kind: &str, connector: &str, slug: &str, scopes: &[&str]) -> Value {
    json!({
        "connector_key": connector,
        "profile_kind": kind,
        "provider": "local",
        "display_name": format!("Profile {slug}"),
        "slug": slug,
        "scopes": scopes,
    })
}

/// Follows a connect link in a signed-in browser through the provider to the callback page.
async fn connect(browser: &mut Browser, link: &str) -> reqwest::Response {
    let start = browser.open_connect_link(link).await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER, "{:?}", start.text().await);
    let provider = browser.get(&location(&start)).await;
    browser.finish_connect(&location(&provider)).await
}

/// Starts a connect flow and stops at the provider's redirect back: the callback URL.
async fn start_flow(browser: &mut Browser, link: &str) -> String {
    let start = browser.open_connect_link(link).await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER, "{:?}", start.text().await);
    location(&browser.get(&location(&start)).await)
}

impl World {
    fn url(&self, path: &str) -> String {
        self.app.url(&format!("/v1/teams/{}{path}", self.team))
    }

    fn on_behalf(&self, method: Method, path: &str, user: UserId) -> reqwest::RequestBuilder {
        self.app
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header("x-on-behalf-of", user.to_string())
    }

    async fn create(&self, user: UserId, request: Value) -> Value {
        let response = self.on_behalf(Method::POST, "/auth-profiles", user).json(&request).send().await.unwrap();
        body(response, 201).await
    }

    async fn patch(&self, user: UserId, slug: &str, change: Value) -> reqwest::Response {
        self.on_behalf(Method::PATCH, &format!("/auth-profiles/{slug}"), user).json(&change).send().await.unwrap()
    }

    async fn post(&self, user: UserId, path: &str) -> reqwest::Response {
        self.on_behalf(Method::POST, path, user).send().await.unwrap()
    }

    async fn get(&self, user: UserId, slug: &str) -> Value {
        body(self.on_behalf(Method::GET, &format!("/auth-profiles/{slug}"), user).send().await.unwrap(), 200).await
    }

    async fn credentials(&self, user: UserId, connector: &str) -> reqwest::Response {
        self.post(user, &format!("/connectors/{connector}/credentials")).await
    }

    /// Creates an OAuth profile as Alice and connects it in her browser.
    async fn connected(&mut self, kind: &str, connector: &str, slug: &str, scopes: &[&str]) {
        let created = self.create(self.alice.id, request(kind, connector, slug, scopes)).await;
        let page = connect(&mut self.alice.browser, created["connect_url"].as_str().unwrap()).await;
        assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    }

    /// Makes a profile's access token expire in a minute (inside the refresh window).
    async fn expire_soon(&self, slug: &str) {
        self.app.db.expire_token_in(slug, 60).await;
    }
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

async fn an_update_renames_and_moves_the_slug(backend: Backend) {
    let w = world(backend).await;
    let created = w.create(w.alice.id, request("oauth_app", "crm", "crm-app", &["read"])).await;
    let response = w.patch(w.alice.id, "crm-app", json!({"display_name": "CRM", "slug": "crm"})).await;
    let updated = body(response, 200).await;
    assert_eq!(updated["reconnect_required"], false);
    assert_eq!(updated["connect_url"], Value::Null);
    let profile = &updated["auth_profile"];
    assert_eq!((profile["display_name"].as_str(), profile["slug"].as_str()), (Some("CRM"), Some("crm")));
    assert_eq!(profile["id"], created["auth_profile"]["id"], "the same profile");
    assert_eq!(profile["status"], "pending_auth");
    assert_eq!(w.get(w.alice.id, "crm").await["display_name"], "CRM");
    let old = w.on_behalf(Method::GET, "/auth-profiles/crm-app", w.alice.id).send().await.unwrap();
    assert_eq!(body(old, 404).await["code"], "profile_not_found");
    // The old slug is free again; the new one is taken.
    w.create(w.alice.id, request("env", "other", "crm-app", &[])).await;
    let taken = w.patch(w.alice.id, "crm-app", json!({"slug": "crm"})).await;
    let text = taken.text().await.unwrap();
    assert_no_leak(&text);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], "slug_taken");
    assert_eq!(w.app.db.sql().await.count("auth_profiles").await, 2);
}

async fn only_the_owner_or_an_admin_updates_a_profile(backend: Backend) {
    let w = world(backend).await;
    w.create(w.alice.id, request("oauth_account", "mail", "alices-mail", &[])).await;
    w.create(w.alice.id, request("oauth_app", "crm", "team-crm", &[])).await;
    w.create(w.bob.id, request("env", "ci", "bobs-ci", &[])).await;
    let change = json!({"display_name": "Mine now"});
    assert_eq!(body(w.patch(w.bob.id, "alices-mail", change.clone()).await, 403).await["code"], "not_profile_owner");
    assert_eq!(body(w.patch(w.bob.id, "team-crm", change.clone()).await, 403).await["code"], "not_team_admin");
    body(w.patch(w.bob.id, "bobs-ci", change.clone()).await, 200).await;
    body(w.patch(w.alice.id, "bobs-ci", json!({"display_name": "An admin's change"})).await, 200).await;
    assert_eq!(w.get(w.alice.id, "team-crm").await["display_name"], "Profile team-crm", "unchanged");
    // A non-member is told the team does not exist.
    let carol = sign_in(&w.app, &w.issuer, "carol").await;
    assert_eq!(body(w.patch(carol.id, "team-crm", change).await, 404).await["code"], "team_not_found");
}

async fn bad_updates_are_clean_4xx_and_write_nothing(backend: Backend) {
    let w = world(backend).await;
    w.create(w.alice.id, request("oauth_app", "crm", "crm", &["read"])).await;
    let before = w.get(w.alice.id, "crm").await;
    let cases = [
        (json!({}), "invalid_request"),
        (json!({"slug": "Not A Slug!"}), "invalid_slug"),
        (json!({"display_name": " "}), "missing_field"),
        (json!({"display_name": "x".repeat(500)}), "field_too_long"),
        (json!({"scopes": ["a b"]}), "invalid_scope"),
        (json!({"scopes": "read"}), "invalid_request"),
        (json!({"display_name": 7}), "invalid_request"),
    ];
    for (change, code) in cases {
        let response = w.patch(w.alice.id, "crm", change.clone()).await;
        let status = response.status().as_u16();
        let problem = body(response, status).await;
        assert_eq!((status, problem["code"].as_str()), (400, Some(code)), "{change}");
    }
    let malformed = w
        .on_behalf(Method::PATCH, "/auth-profiles/crm", w.alice.id)
        .header("content-type", "application/json")
        .body("{\"slug\":")
        .send()
        .await
        .unwrap();
    assert_eq!(body(malformed, 400).await["code"], "malformed_json");
    let missing = w.patch(w.alice.id, "no-such-profile", json!({"display_name": "X"})).await;
    assert_eq!(body(missing, 404).await["code"], "profile_not_found");
    assert_eq!(w.get(w.alice.id, "crm").await, before, "nothing was written");
}

async fn concurrent_updates_to_one_slug_have_one_winner(backend: Backend) {
    let w = world(backend).await;
    for i in 0..8 {
        w.create(w.alice.id, request("env", &format!("connector-{i}"), &format!("p{i}"), &[])).await;
    }
    let w = Arc::new(w);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let response = w.patch(w.alice.id, &format!("p{i}"), json!({"slug": "contested"})).await;
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert_no_leak(&text);
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, value) = task.await.unwrap();
        if status == 409 {
            assert_eq!(value["code"], "slug_taken");
        }
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 7, "{statuses:?}");
    assert_eq!(w.app.db.sql().await.count("auth_profiles WHERE slug = 'contested'").await, 1);
}

async fn widening_scopes_needs_a_reconnection_and_narrowing_does_not(backend: Backend) {
    let mut w = world(backend).await;
    // The provider grants more than was asked for, and says so.
    w.issuer.grant_scope(Some("openid issues:read issues:write"));
    w.connected("oauth_account", "issues", "issues", &["openid", "issues:read"]).await;
    let profile = w.get(w.alice.id, "issues").await;
    assert_eq!(strings(&profile["scopes"]), ["openid", "issues:read"], "requested");
    assert_eq!(strings(&profile["granted_scopes"]), ["openid", "issues:read", "issues:write"], "granted");

    // Asking for what was granted already, or for less, keeps the profile active.
    for scopes in [json!(["openid", "issues:write"]), json!(["openid"])] {
        let updated = body(w.patch(w.alice.id, "issues", json!({"scopes": scopes})).await, 200).await;
        assert_eq!(updated["reconnect_required"], false);
        assert_eq!(updated["auth_profile"]["status"], "active");
        assert_eq!(updated["auth_profile"]["scopes"], scopes);
    }
    body(w.post(w.alice.id, "/auth-profiles/issues/token").await, 200).await;

    // Asking for more needs a reconnection: the response says so, with a fresh link.
    let version = w.get(w.alice.id, "issues").await["version"].as_i64().unwrap();
    let updated = body(w.patch(w.alice.id, "issues", json!({"scopes": ["openid", "admin"]})).await, 200).await;
    assert_eq!(updated["reconnect_required"], true);
    assert_eq!(updated["auth_profile"]["status"], "needs_reauth");
    assert_eq!(updated["auth_profile"]["version"], version + 1);
    let link = updated["connect_url"].as_str().unwrap().to_owned();
    assert!(link.contains("/connect/"), "{link}");
    let token = w.post(w.alice.id, "/auth-profiles/issues/token").await;
    assert_eq!(body(token, 409).await["code"], "needs_reauth");

    // Reconnecting with the new scopes: active again; the provider no longer says what it
    // granted, so the granted scopes are the requested ones.
    w.issuer.grant_scope(None);
    assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
    let profile = w.get(w.alice.id, "issues").await;
    assert_eq!(profile["status"], "active");
    assert_eq!(strings(&profile["granted_scopes"]), ["openid", "admin"]);
}

async fn an_update_racing_a_connect_completion_loses_neither(backend: Backend) {
    let mut w = world(backend).await;
    for round in 0..4 {
        let slug = format!("raced-{round}");
        let created = w.create(w.alice.id, request("oauth_account", &format!("c{round}"), &slug, &["openid"])).await;
        let callback = start_flow(&mut w.alice.browser, created["connect_url"].as_str().unwrap()).await;
        let name = format!("Renamed {round}");
        let patch = w
            .on_behalf(Method::PATCH, &format!("/auth-profiles/{slug}"), w.alice.id)
            .json(&json!({"display_name": name}))
            .send();
        let (patched, page) = tokio::join!(patch, w.alice.browser.finish_connect(&callback));
        assert_eq!(patched.unwrap().status(), StatusCode::OK, "round {round}");
        assert_eq!(page.status(), StatusCode::OK, "round {round}: {:?}", page.text().await);
        let profile = w.get(w.alice.id, &slug).await;
        assert_eq!(profile["status"], "active", "the connection is kept");
        assert_eq!(profile["display_name"], name.as_str(), "the update is kept");
        assert_eq!(profile["upstream_account_id"], "alice");
    }
}

async fn a_widening_update_racing_a_connect_completion_never_leaves_it_active(backend: Backend) {
    let mut w = world(backend).await;
    w.connected("oauth_account", "issues", "issues", &["openid"]).await;
    for round in 0..4 {
        // A reconnection in flight, asking for the scopes of the moment.
        let link = body(w.post(w.alice.id, "/auth-profiles/issues/connect").await, 200).await;
        let callback = start_flow(&mut w.alice.browser, link["connect_url"].as_str().unwrap()).await;
        let scopes = json!(["openid", format!("extra-{round}")]);
        let patch =
            w.on_behalf(Method::PATCH, "/auth-profiles/issues", w.alice.id).json(&json!({"scopes": scopes})).send();
        let (patched, page) = tokio::join!(patch, w.alice.browser.finish_connect(&callback));
        let patched = body(patched.unwrap(), 200).await;
        assert_eq!(patched["reconnect_required"], true);
        // Either the completion came first (and the update then asked for a reconnection) or the
        // update did (and the completion, for the old scopes, was refused): never active with
        // scopes it was not granted.
        let status = page.status();
        assert!(status == StatusCode::OK || status == StatusCode::CONFLICT, "round {round}: {status}");
        let profile = w.get(w.alice.id, "issues").await;
        assert_eq!(profile["status"], "needs_reauth", "round {round}");
        assert_eq!(profile["scopes"], scopes);
        // Repair it for the next round.
        let page = connect(&mut w.alice.browser, patched["connect_url"].as_str().unwrap()).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(w.get(w.alice.id, "issues").await["status"], "active");
    }
}

async fn one_default_per_connector_and_concurrent_switches_leave_one(backend: Backend) {
    let w = world(backend).await;
    for i in 0..8 {
        w.create(w.alice.id, request("env", "crm", &format!("crm-{i}"), &[])).await;
    }
    let w = Arc::new(w);
    for round in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                let response = w.post(w.alice.id, &format!("/auth-profiles/crm-{i}/default")).await;
                body(response, 200).await
            }));
        }
        // Every switch succeeds (its answer may already show the next one's result).
        for task in tasks {
            assert!(task.await.unwrap()["is_default"].is_boolean(), "round {round}");
        }
        let sql = w.app.db.sql().await;
        assert_eq!(sql.count("connector_defaults WHERE connector_key = 'crm'").await, 1, "round {round}");
        let listed = body(w.on_behalf(Method::GET, "/auth-profiles", w.alice.id).send().await.unwrap(), 200).await;
        let defaults: Vec<&Value> =
            listed["auth_profiles"].as_array().unwrap().iter().filter(|p| p["is_default"] == true).collect();
        assert_eq!(defaults.len(), 1, "round {round}");
        let stored = sql.uuids("SELECT profile_id FROM connector_defaults").await;
        assert_eq!(defaults[0]["id"].as_str().unwrap(), stored[0].to_string());
    }
    // Clearing, then revoking: no default is left either way.
    let listed = body(w.on_behalf(Method::GET, "/auth-profiles", w.alice.id).send().await.unwrap(), 200).await;
    let default = listed["auth_profiles"].as_array().unwrap().iter().find(|p| p["is_default"] == true).unwrap();
    let slug = default["slug"].as_str().unwrap();
    let cleared = w.on_behalf(Method::DELETE, &format!("/auth-profiles/{slug}/default"), w.alice.id).send().await;
    assert_eq!(body(cleared.unwrap(), 200).await["is_default"], false);
    assert_eq!(w.app.db.sql().await.count("connector_defaults").await, 0);
    body(w.post(w.alice.id, "/auth-profiles/crm-3/default").await, 200).await;
    let revoked = w.on_behalf(Method::DELETE, "/auth-profiles/crm-3", w.alice.id).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(w.app.db.sql().await.count("connector_defaults").await, 0, "a revoked profile is no default");
}

async fn who_may_set_the_default_and_what_can_be_it(backend: Backend) {
    let w = world(backend).await;
    w.create(w.alice.id, request("env", "crm", "alices-crm", &[])).await;
    w.create(w.bob.id, request("env", "crm", "bobs-crm", &[])).await;
    w.create(w.bob.id, request("oauth_account", "crm", "bobs-own", &[])).await;
    w.create(w.alice.id, request("oauth_account", "crm", "alices-own", &[])).await;
    // A member sets their own team-wide profile as the default, not someone else's.
    let refused = w.post(w.bob.id, "/auth-profiles/alices-crm/default").await;
    assert_eq!(body(refused, 403).await["code"], "not_team_admin");
    body(w.post(w.bob.id, "/auth-profiles/bobs-crm/default").await, 200).await;
    // An owner sets any team-wide one.
    body(w.post(w.alice.id, "/auth-profiles/alices-crm/default").await, 200).await;
    assert_eq!(w.get(w.bob.id, "bobs-crm").await["is_default"], false);
    // A member does not take the default back from someone else's profile: that would send every
    // teammate without an account of their own through the member's.
    let taken_back = body(w.post(w.bob.id, "/auth-profiles/bobs-crm/default").await, 403).await;
    assert_eq!(taken_back["code"], "not_team_admin");
    assert!(taken_back["detail"].as_str().unwrap().contains("another member's profile"), "{taken_back}");
    assert_eq!(w.get(w.bob.id, "alices-crm").await["is_default"], true, "the owner's choice stands");
    // A personal profile never is the team's default.
    let personal = w.post(w.bob.id, "/auth-profiles/bobs-own/default").await;
    assert_eq!(body(personal, 409).await["code"], "personal_profile_not_default");
    let others = w.post(w.alice.id, "/auth-profiles/bobs-own/default").await;
    assert_eq!(body(others, 403).await["code"], "not_profile_owner");
    let own = w.post(w.alice.id, "/auth-profiles/alices-own/default").await;
    assert_eq!(body(own, 409).await["code"], "personal_profile_not_default");
    let missing = w.post(w.alice.id, "/auth-profiles/nothing-here/default").await;
    assert_eq!(body(missing, 404).await["code"], "profile_not_found");
    assert_eq!(w.get(w.alice.id, "alices-crm").await["is_default"], true);
    assert_eq!(w.app.db.sql().await.count("connector_defaults").await, 1);
}

async fn credentials_by_connector_prefer_the_callers_own_account(backend: Backend) {
    let mut w = world(backend).await;
    w.issuer.set_next_user(StubUser::new("team-account", "team@provider.example"));
    w.connected("oauth_app", "issues", "team-issues", &["openid"]).await;
    body(w.post(w.alice.id, "/auth-profiles/team-issues/default").await, 200).await;
    let app_token = body(w.post(w.alice.id, "/auth-profiles/team-issues/token").await, 200).await;

    // Bob has no account of his own: the team default serves him.
    let text = w.credentials(w.bob.id, "issues").await.text().await.unwrap();
    let credential: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(credential["source"], "team_default", "{text}");
    assert_eq!(credential["auth_profile"]["slug"], "team-issues");
    assert_eq!(credential["access_token"], app_token["access_token"]);
    assert_eq!(credential["token_type"], "Bearer");

    // Once Bob connects his own, it wins, for him only.
    let created = w.create(w.bob.id, request("oauth_account", "issues", "bobs-issues", &["openid"])).await;
    w.issuer.set_next_user(StubUser::new("bob-account", "bob@provider.example"));
    let page = connect(&mut w.bob.browser, created["connect_url"].as_str().unwrap()).await;
    assert_eq!(page.status(), StatusCode::OK);
    let credential = body(w.credentials(w.bob.id, "issues").await, 200).await;
    assert_eq!(credential["source"], "personal");
    assert_eq!(credential["auth_profile"]["slug"], "bobs-issues");
    assert_eq!(credential["auth_profile"]["upstream_account_id"], "bob-account");
    assert_ne!(credential["access_token"], app_token["access_token"]);
    let alices = body(w.credentials(w.alice.id, "issues").await, 200).await;
    assert_eq!(alices["source"], "team_default");
    // Connector keys are case-insensitive, as everywhere.
    assert_eq!(body(w.credentials(w.bob.id, "ISSUES").await, 200).await["source"], "personal");
    // Refreshed on the way: the profile is answered as the refresh left it.
    w.expire_soon("bobs-issues").await;
    let refreshed = body(w.credentials(w.bob.id, "issues").await, 200).await;
    assert_eq!(refreshed["refreshed"], true);
    assert!(refreshed["expires_at"].is_string(), "{refreshed}");
    assert_eq!(refreshed["auth_profile"]["access_token_expires_at"], refreshed["expires_at"], "{refreshed}");
}

async fn credentials_by_connector_explain_what_is_missing(backend: Backend) {
    let mut w = world(backend).await;
    let none = body(w.credentials(w.bob.id, "issues").await, 404).await;
    assert_eq!(none["code"], "no_credential_for_connector");
    assert_eq!(none.get("default_slug"), None);
    let invalid = w.credentials(w.bob.id, "not%20a%20key").await;
    assert_eq!(body(invalid, 400).await["code"], "invalid_connector_key");
    let carol = sign_in(&w.app, &w.issuer, "carol").await;
    assert_eq!(body(w.credentials(carol.id, "issues").await, 404).await["code"], "team_not_found");

    // A default that is not active does not serve, and the answer names it.
    w.connected("oauth_app", "issues", "team-issues", &["openid"]).await;
    body(w.post(w.alice.id, "/auth-profiles/team-issues/default").await, 200).await;
    let widened = w.patch(w.alice.id, "team-issues", json!({"scopes": ["openid", "more"]})).await;
    assert_eq!(body(widened, 200).await["auth_profile"]["status"], "needs_reauth");
    let inactive = body(w.credentials(w.bob.id, "issues").await, 404).await;
    assert_eq!(inactive["code"], "no_credential_for_connector");
    assert_eq!(
        (inactive["default_slug"].as_str(), inactive["default_status"].as_str()),
        (Some("team-issues"), Some("needs_reauth"))
    );

    // A default of another kind is handed out as its own kind of credential.
    let state =
        json!({"cookies": [{"name": "sid", "value": "s3cret", "domain": "ci.example", "path": "/"}], "origins": []});
    let mut browser = request("browser_session", "ci", "ci-browser", &[]);
    browser["storage_state"] = state.clone();
    w.create(w.alice.id, browser).await;
    body(w.post(w.alice.id, "/auth-profiles/ci-browser/default").await, 200).await;
    let served = body(w.credentials(w.bob.id, "ci").await, 200).await;
    assert_eq!(
        (served["source"].as_str(), served["kind"].as_str(), served["auth_profile"]["slug"].as_str()),
        (Some("team_default"), Some("browser_session"), Some("ci-browser"))
    );
    assert_eq!(served["storage_state"], state);
    assert_eq!(served.get("refreshed"), None, "only OAuth credentials are refreshed");
    // A pending personal profile does not count.
    w.create(w.bob.id, request("oauth_account", "drive", "bobs-drive", &[])).await;
    assert_eq!(body(w.credentials(w.bob.id, "drive").await, 404).await["code"], "no_credential_for_connector");
}

async fn a_test_says_ok_without_the_token(backend: Backend) {
    let mut w = world(backend).await;
    w.connected("oauth_account", "issues", "issues", &["openid"]).await;
    let token = body(w.post(w.alice.id, "/auth-profiles/issues/token").await, 200).await;
    let token = token["access_token"].as_str().unwrap().to_owned();
    let response = w.post(w.alice.id, "/auth-profiles/issues/test").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(!text.contains(&token), "the test never returns the token");
    let outcome: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        outcome,
        json!({"ok": true, "status": 200, "error": null, "refreshed": false, "profile_status": "active"})
    );
    assert_eq!(w.issuer.refreshes(), 0);
    // Bob may not test Alice's personal account.
    let refused = w.post(w.bob.id, "/auth-profiles/issues/test").await;
    assert_eq!(body(refused, 403).await["code"], "not_profile_owner");
}

async fn a_refused_token_is_refreshed_once_then_marks_the_profile(backend: Backend) {
    let mut w = world(backend).await;
    w.connected("oauth_account", "issues", "issues", &["openid"]).await;
    // The provider forgot the access token but still honours the refresh token: a refresh fixes it.
    w.issuer.revoke_access_tokens();
    let outcome = body(w.post(w.alice.id, "/auth-profiles/issues/test").await, 200).await;
    assert_eq!(
        outcome,
        json!({"ok": true, "status": 200, "error": null, "refreshed": true, "profile_status": "active"})
    );
    assert_eq!(w.issuer.refreshes(), 1);
    // A user endpoint that refuses even a fresh token (one for another audience): reported, but
    // the grant the provider just honoured stays active.
    w.issuer.revoke_access_tokens();
    w.issuer.refuse_userinfo(true);
    let outcome = body(w.post(w.alice.id, "/auth-profiles/issues/test").await, 200).await;
    assert_eq!(
        outcome,
        json!({"ok": false, "status": 401, "error": "invalid_token", "refreshed": true, "profile_status": "active"})
    );
    assert_eq!(w.issuer.refreshes(), 2);
    assert_eq!(body(w.post(w.alice.id, "/auth-profiles/issues/token").await, 200).await["refreshed"], false);
    w.issuer.refuse_userinfo(false);
    // Everything forgotten: the refresh is refused, the profile needs a reconnection.
    w.issuer.revoke_all_tokens();
    let outcome = body(w.post(w.alice.id, "/auth-profiles/issues/test").await, 200).await;
    assert_eq!(
        outcome,
        json!({"ok": false, "status": 401, "error": "invalid_token", "refreshed": false, "profile_status": "needs_reauth"})
    );
    assert_eq!(w.issuer.refreshes(), 3);
    let token = w.post(w.alice.id, "/auth-profiles/issues/token").await;
    assert_eq!(body(token, 409).await["code"], "needs_reauth");

    // Without a refresh token, a refused token marks the profile at once.
    w.issuer.refresh_token_on_code_exchange(false);
    w.connected("oauth_account", "mail", "mail", &["openid"]).await;
    w.issuer.revoke_access_tokens();
    let outcome = body(w.post(w.alice.id, "/auth-profiles/mail/test").await, 200).await;
    assert_eq!(
        outcome,
        json!({"ok": false, "status": 401, "error": "invalid_token", "refreshed": false, "profile_status": "needs_reauth"})
    );
    assert_eq!(w.issuer.refreshes(), 3, "nothing to refresh with");
    // Marked for what the test found, not for an expiry: the token had not expired.
    let sql = w.app.db.sql().await;
    let marked = sql
        .texts("SELECT CAST(payload AS TEXT) FROM outbox_events WHERE topic = 'auth_profile.needs_reauth' ORDER BY seq")
        .await;
    let last: Value = serde_json::from_str(marked.last().unwrap()).unwrap();
    assert_eq!(last["reason"], "test_failed", "{marked:?}");
    // A test of a profile that needs a reconnection says so, without asking the provider.
    let again = w.post(w.alice.id, "/auth-profiles/mail/test").await;
    assert_eq!(body(again, 409).await["code"], "needs_reauth");
}

/// A token the user endpoint refuses is not known to be dead (one for another audience is
/// refused too): a test whose refresh fails with the provider down answers 502, and the token,
/// which had its life left, is still handed out — not taken from the profile's other users until
/// the provider is back.
async fn a_test_that_cannot_refresh_keeps_the_token_for_its_other_users(backend: Backend) {
    let mut w = world(backend).await;
    w.connected("oauth_account", "issues", "issues", &["openid"]).await;
    let before = body(w.post(w.alice.id, "/auth-profiles/issues/token").await, 200).await;
    w.issuer.refuse_userinfo(true);
    w.issuer.fail_next_token_request(TokenFault::ServerError(503));
    let outcome = w.post(w.alice.id, "/auth-profiles/issues/test").await;
    assert_eq!(body(outcome, 502).await["code"], "provider_unavailable");
    let after = body(w.post(w.alice.id, "/auth-profiles/issues/token").await, 200).await;
    assert_eq!(after["refreshed"], false, "not due: {after}");
    assert_eq!(after["access_token"], before["access_token"]);
    assert_eq!(after["expires_at"], before["expires_at"], "the expiry it had");

    // The same with a client that hangs up while the refresh waits on the provider: the expiry
    // is put back all the same.
    let sql = w.app.db.sql().await;
    let expiry = "SELECT CAST(access_token_expires_at AS TEXT) FROM auth_profiles WHERE slug = 'issues'";
    let held = sql.texts(expiry).await;
    let refreshes = w.issuer.refreshes();
    w.issuer.set_token_delay(Duration::from_millis(700));
    w.issuer.fail_next_token_request(TokenFault::ServerError(503));
    let test = w.on_behalf(Method::POST, "/auth-profiles/issues/test", w.alice.id);
    assert!(test.timeout(Duration::from_millis(200)).send().await.is_err(), "hung up before the answer");
    // Marked expired for the refresh, which the provider answers with a 503; then given back.
    eventually("the refresh was asked", async || w.issuer.refreshes() > refreshes).await;
    eventually("the expiry is put back", async || sql.texts(expiry).await == held).await;
    w.issuer.set_token_delay(Duration::ZERO);
    let after = body(w.post(w.alice.id, "/auth-profiles/issues/token").await, 200).await;
    assert_eq!((&after["access_token"], &after["expires_at"]), (&before["access_token"], &before["expires_at"]));
}

async fn tests_of_other_kinds_and_states_are_clean_409s(backend: Backend) {
    let mut w = world(backend).await;
    w.create(w.alice.id, request("env", "ci", "ci", &[])).await;
    w.create(w.alice.id, request("oauth_account", "issues", "pending", &[])).await;
    assert_eq!(body(w.post(w.alice.id, "/auth-profiles/ci/test").await, 409).await["code"], "test_not_supported");
    let pending = w.post(w.alice.id, "/auth-profiles/pending/test").await;
    assert_eq!(body(pending, 409).await["code"], "profile_not_connected");
    let missing = w.post(w.alice.id, "/auth-profiles/missing/test").await;
    assert_eq!(body(missing, 404).await["code"], "profile_not_found");

    // A provider without a user endpoint: no test, and its token is not refreshed for one.
    let mut notes = request("oauth_account", "notes", "notes", &[]);
    notes["provider"] = json!("plain");
    let created = w.create(w.alice.id, notes).await;
    w.issuer.name_account_in_token_answers(true);
    let page = connect(&mut w.alice.browser, created["connect_url"].as_str().unwrap()).await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    w.expire_soon("notes").await;
    let refreshes = w.issuer.refreshes();
    let refused = body(w.post(w.alice.id, "/auth-profiles/notes/test").await, 409).await;
    assert_eq!(refused["code"], "test_not_supported", "{refused}");
    assert_eq!(w.issuer.refreshes(), refreshes, "nothing refreshed for a test that cannot be made");

    // The provider taken out of the configuration: the profile stays, and says why it cannot work.
    let mut config = w.app.db.config();
    configure(&mut config, &w.issuer);
    config.providers.retain(|p| p.name != "plain");
    let without = TestApp::start(w.app.db.share(), &config).await;
    for action in ["test", "connect"] {
        let url = without.url(&format!("/v1/teams/{}/auth-profiles/notes/{action}", w.team));
        let request =
            without.client.post(url).bearer_auth(ADMIN_TOKEN).header("x-on-behalf-of", w.alice.id.to_string());
        let refused = body(request.send().await.unwrap(), 409).await;
        assert_eq!(refused["code"], "provider_not_configured", "{action}: {refused}");
        assert!(refused["detail"].as_str().unwrap().contains("\"plain\" is no longer configured"), "{refused}");
    }
    // Widening its scopes would need a reconnection that cannot happen: refused before anything
    // is written, so the profile keeps its scopes, its status and its working token.
    let url = without.url(&format!("/v1/teams/{}/auth-profiles/notes", w.team));
    let widen = without.client.patch(url).bearer_auth(ADMIN_TOKEN).header("x-on-behalf-of", w.alice.id.to_string());
    let refused = body(widen.json(&json!({"scopes": ["notes", "more"]})).send().await.unwrap(), 409).await;
    assert_eq!(refused["code"], "provider_not_configured", "{refused}");
    let profile = w.get(w.alice.id, "notes").await;
    assert_eq!(profile["status"], "active", "{profile}");
    assert_eq!(profile["scopes"], json!([]), "{profile}");
    without.stop().await;
}

async fn a_test_during_a_refresh_refreshes_once(backend: Backend) {
    let mut w = world(backend).await;
    w.connected("oauth_app", "issues", "issues", &["openid"]).await;
    w.expire_soon("issues").await;
    w.issuer.set_token_delay(Duration::from_millis(300));
    let w = Arc::new(w);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let path = if i % 2 == 0 { "/auth-profiles/issues/token" } else { "/auth-profiles/issues/test" };
            let user = if i % 4 < 2 { w.alice.id } else { w.bob.id };
            (i, body(w.post(user, path).await, 200).await)
        }));
    }
    let mut tokens = HashSet::new();
    for task in tasks {
        let (i, value) = task.await.unwrap();
        if i % 2 == 0 {
            tokens.insert(value["access_token"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(value["ok"], true, "{value}");
            assert_eq!(value["profile_status"], "active");
        }
    }
    assert_eq!(w.issuer.refreshes(), 1, "tests and token requests share one refresh");
    assert_eq!(tokens.len(), 1);
}

async fn a_profile_revoked_during_its_refresh_hands_out_no_token(backend: Backend) {
    let mut w = world(backend).await;
    w.connected("oauth_app", "issues", "issues", &["openid"]).await;
    w.expire_soon("issues").await;
    w.issuer.set_answer_delay(Duration::from_secs(3));
    let w = Arc::new(w);
    let refreshing = {
        let w = w.clone();
        tokio::spawn(async move { w.post(w.alice.id, "/auth-profiles/issues/token").await })
    };
    // The provider has refreshed (rotating the refresh token) and its answer is on the way
    // (3 s): the profile is revoked meanwhile, which revokes the stored refresh token there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w.issuer.refreshes() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let revoked = w.on_behalf(Method::DELETE, "/auth-profiles/issues", w.alice.id).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let revocations = w.issuer.revocations();
    // The refresh's answer is no one's: not handed out, and its new token revoked too.
    let answer = refreshing.await.unwrap();
    assert_eq!(body(answer, 404).await["code"], "profile_not_found");
    assert_eq!(w.issuer.revocations(), revocations + 1, "the refresh's new token is revoked at the provider");
}

/// A revocation is finished at the provider even when its client hangs up once it is committed
/// (a double click drops the first request; the second finds nothing to revoke): the grant does
/// not stay live there.
async fn a_revocation_reaches_the_provider_though_its_client_hangs_up(backend: Backend) {
    let mut w = world(backend).await;
    w.connected("oauth_app", "issues", "issues", &["openid"]).await;
    w.issuer.set_revocation_delay(Duration::from_secs(3));
    let before = w.issuer.revocations();
    // With her own session (an admin token's requests run to their end for their audit row).
    let request = w.alice.browser.prepared(Method::DELETE, &w.url("/auth-profiles/issues"));
    assert!(request.timeout(Duration::from_secs(1)).send().await.is_err(), "the client gave up first");
    crate::helpers::eventually("the provider revokes the grant", || async { w.issuer.revocations() == before + 1 })
        .await;
    let gone = w.on_behalf(Method::GET, "/auth-profiles/issues", w.alice.id).send().await.unwrap();
    assert_eq!(body(gone, 404).await["code"], "profile_not_found");
}

async fn a_github_profile_is_tested_against_the_user_endpoint(backend: Backend) {
    let github = crate::github::GitHubStub::start().await;
    let issuer = LocalIssuer::start().await.unwrap();
    issuer.set_client(CLIENT_ID, CLIENT_SECRET);
    let app = TestApp::spawn_with(backend, |config| {
        configure(config, &issuer);
        config.providers.push(github.provider("github"));
    })
    .await;
    let mut alice = sign_in(&app, &issuer, "alice").await;
    let team = body(alice.browser.me(&app).await, 200).await["teams"][0]["slug"].as_str().unwrap().to_owned();
    let url = |path: &str| app.url(&format!("/v1/teams/{team}/auth-profiles{path}"));
    let mut created = request("oauth_app", "gh-issues", "gh", &["repo", "read:user"]);
    created["provider"] = "github".into();
    let created = body(alice.browser.json(Method::POST, &url(""), &created).await, 201).await;
    let page = connect(&mut alice.browser, created["connect_url"].as_str().unwrap()).await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    // GitHub says what it granted, comma-separated.
    let profile = body(alice.browser.request(Method::GET, &url("/gh")).await, 200).await;
    assert_eq!(strings(&profile["granted_scopes"]), ["read:user", "user:email"]);
    assert_eq!(strings(&profile["scopes"]), ["repo", "read:user"]);
    let outcome = body(alice.browser.request(Method::POST, &url("/gh/test")).await, 200).await;
    assert_eq!(
        outcome,
        json!({"ok": true, "status": 200, "error": null, "refreshed": false, "profile_status": "active"})
    );
    // A rate limit is GitHub's to lift, not the token's scopes to fix: an outage, the profile
    // as it was. A token that may not read the user is the scope's.
    use crate::github::Refusal;
    for limit in [Refusal::RateLimit, Refusal::SecondaryRateLimit] {
        github.refuse_user(Some(limit));
        let limited = alice.browser.request(Method::POST, &url("/gh/test")).await;
        assert_eq!(body(limited, 502).await["code"], "provider_unavailable");
    }
    github.refuse_user(Some(Refusal::NotAccessible));
    let outcome = body(alice.browser.request(Method::POST, &url("/gh/test")).await, 200).await;
    assert_eq!((outcome["ok"].as_bool(), outcome["status"].as_u64()), (Some(false), Some(403)), "{outcome}");
    assert_eq!(outcome["error"], "insufficient_scope");
    let profile = body(alice.browser.request(Method::GET, &url("/gh")).await, 200).await;
    assert_eq!(profile["status"], "active");
}

/// A user endpoint that answers a dead token with a 200 whose body names no account (Slack's
/// `auth.test`: `{"ok": false, "error": "token_revoked"}`): the test reports the refusal, and a
/// refresh the provider refuses too marks the profile, as a 401 would.
async fn a_success_that_names_no_account_is_a_refusal(backend: Backend) {
    let mut w = world(backend).await;
    let mut chat = request("oauth_account", "chat", "chat", &[]);
    chat["provider"] = json!("chat");
    let created = w.create(w.alice.id, chat).await;
    let page = connect(&mut w.alice.browser, created["connect_url"].as_str().unwrap()).await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    let live = body(w.post(w.alice.id, "/auth-profiles/chat/test").await, 200).await;
    assert_eq!((live["ok"].as_bool(), live["status"].as_u64()), (Some(true), Some(200)), "{live}");
    // The provider's own outage, said in a 200 (`service_unavailable`): nothing is known of the
    // token, and the profile stays as it was.
    w.issuer.fail_userinfo_in_a_200(Some("service_unavailable"));
    let outage = w.post(w.alice.id, "/auth-profiles/chat/test").await;
    assert_eq!(body(outage, 502).await["code"], "provider_unavailable");
    let profile = body(w.on_behalf(Method::GET, "/auth-profiles/chat", w.alice.id).send().await.unwrap(), 200).await;
    assert_eq!(profile["status"], "active");
    w.issuer.fail_userinfo_in_a_200(None);
    w.issuer.refuse_userinfo_in_a_200(true);
    w.issuer.revoke_all_tokens();
    let dead = body(w.post(w.alice.id, "/auth-profiles/chat/test").await, 200).await;
    assert_eq!(
        dead,
        json!({"ok": false, "status": 401, "error": "invalid_token", "refreshed": false, "profile_status": "needs_reauth"})
    );
}
