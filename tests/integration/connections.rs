//! Connected accounts over HTTP, on both backends: the seed's four cases (reuse, friendly 409,
//! two users in parallel, direct collision), concurrency, connect links, the connect flow
//! against the local OpenID provider, and refresh single-flight — within one instance and across
//! two instances sharing one database.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera::config::{Config, ProviderKind};
use tessera::crypto::keyring::KeyRing;
use tessera::domain::{AuthProfile, ProfileId, ProfileKind, ProfileStatus, Slug, TeamId, UserId};
use tessera::store::FirstWrite;
use tessera_testkit::local_issuer::{LocalIssuer, StubUser, TokenFault};

use crate::helpers::{
    ADMIN_TOKEN, Backend, Sql, TestApp, assert_no_leak, eventually, eventually_within, json as body, on_both_backends,
    send_at_once,
};
use crate::pages::csrf_of;
use crate::signin::{Browser, CLIENT_ID, CLIENT_SECRET, location, provider};

on_both_backends!(
    a_repeated_create_without_slug_reuses_the_pending_profile,
    a_different_slug_while_pending_is_a_friendly_409,
    a_member_cannot_take_over_someone_elses_pending_team_profile,
    two_members_connect_the_same_connector_in_parallel,
    the_database_refuses_a_second_pending_profile,
    concurrent_identical_creates_all_get_the_same_profile,
    slug_collisions_under_concurrency_are_clean,
    membership_decides_who_sees_what,
    a_connect_link_connects_the_profile_once,
    a_connect_link_is_bound_to_its_user_and_single_use,
    signing_out_while_connecting_says_so_and_revokes_the_tokens,
    a_member_disabled_while_connecting_is_told_so_and_the_tokens_are_revoked,
    concurrent_callbacks_activate_the_profile_once,
    concurrent_continues_of_one_connect_link_start_one_flow,
    reconnecting_keeps_the_profile_and_guards_the_account,
    tokens_are_refreshed_before_they_expire,
    short_lived_tokens_are_refreshed_at_half_their_life_not_on_every_use,
    fifty_concurrent_requests_refresh_once,
    concurrent_requests_meeting_a_refused_refresh_ask_the_provider_once,
    concurrent_requests_meeting_a_failed_refresh_ask_the_provider_once,
    requests_after_a_failed_refresh_get_the_stored_token_without_asking_again,
    two_instances_refresh_once,
    requests_queued_behind_another_instances_refresh_wait_once,
    a_slow_refresh_hands_out_the_stored_token_and_stores_its_answer_after,
    a_slow_refresh_whose_database_fails_meanwhile_hands_out_its_answer,
    a_refresh_answered_after_the_outbound_timeout_keeps_the_rotated_token,
    rotated_and_kept_refresh_tokens_are_persisted,
    invalid_grant_marks_the_profile_without_a_retry_storm,
    a_refusal_named_by_the_entry_marks_the_profile,
    an_expired_token_without_a_refresh_token_marks_the_profile,
    expired_pending_profiles_are_not_reused,
    revoking_frees_the_slug_and_revokes_upstream,
    concurrent_revocations_revoke_once,
    a_failed_refresh_never_hands_out_the_token_of_a_profile_revoked_meanwhile,
    a_refresh_that_lost_its_lease_to_a_reconnection_hands_out_the_new_connections_token,
    a_refresh_that_lost_its_lease_to_a_same_account_reconnection_keeps_its_rotated_token,
    team_members_are_managed_by_owners,
    other_kinds_start_without_an_oauth_link,
    a_former_member_s_links_and_flows_stop_working,
    only_its_creator_or_an_admin_reconnects_a_team_profile,
    a_refresh_during_a_reconnection_does_not_conflict,
    reconnecting_without_a_new_refresh_token_keeps_the_old_one,
    a_new_link_keeps_its_pending_profile_alive,
    a_refresh_survives_its_client_hanging_up,
    a_connection_survives_its_browser_leaving_the_callback,
    the_last_owner_cannot_step_down,
    a_role_change_never_puts_back_a_member_who_left,
    the_last_owner_alone_in_a_team_may_leave_it_and_the_team_goes,
    concurrent_adds_of_one_member_make_one_membership,
    disabling_a_user_ends_their_browser_sessions,
    concurrent_disables_of_one_user_end_their_sessions_once,
    concurrent_removals_of_one_member_remove_them_once,
);

struct World {
    app: TestApp,
    issuer: LocalIssuer,
    alice: Member,
    bob: Member,
    team: String,
}

/// A signed-in member: their browser and ids.
struct Member {
    browser: Browser,
    id: UserId,
}

fn ring() -> String {
    format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([3u8; 32]))
}

fn configure(config: &mut Config, issuer: &LocalIssuer) {
    config.auth.cookie_secure = false;
    config.providers.push(provider("local", ProviderKind::Oidc, issuer));
    config.auth.default_provider = Some("local".into());
    config.encryption = Some(Arc::new(KeyRing::parse(&ring()).unwrap()));
}

async fn sign_in(app: &TestApp, issuer: &LocalIssuer, subject: &str) -> Member {
    issuer.set_next_user(StubUser::new(subject, &format!("{subject}@example.com")));
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(app, "").await.status(), StatusCode::SEE_OTHER);
    let me = body(browser.me(app).await, 200).await;
    Member { browser, id: me["id"].as_str().unwrap().parse().unwrap() }
}

async fn world(backend: Backend) -> World {
    world_with(backend, |_| {}).await
}

/// [`world`], with `tweak` applied to the configuration last.
async fn world_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> World {
    let issuer = LocalIssuer::start().await.unwrap();
    issuer.set_client(CLIENT_ID, CLIENT_SECRET);
    let app = TestApp::spawn_with(backend, |config| {
        configure(config, &issuer);
        tweak(config);
    })
    .await;
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
    World { app, issuer, alice, bob, team }
}

impl World {
    /// A token request whose refresh the provider decides at once and answers 3 s later (what
    /// comes after it — a reconnection — is not delayed): the request, under way.
    async fn refresh_answered_late(&self, slug: &str) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        self.expire_soon(slug).await;
        let refreshes = self.issuer.refreshes();
        self.issuer.set_answer_delay(Duration::from_secs(3));
        let request = self.on_behalf(Method::POST, &format!("/auth-profiles/{slug}/token"), self.alice.id).send();
        let waiting = tokio::spawn(request);
        eventually("the refresh reaches the provider", || async { self.issuer.refreshes() > refreshes }).await;
        self.issuer.set_answer_delay(Duration::ZERO);
        waiting
    }

    fn url(&self, path: &str) -> String {
        self.app.url(&format!("/v1/teams/{}{path}", self.team))
    }

    /// A profile request by `user` through the admin token acting on their behalf.
    fn on_behalf(&self, method: Method, path: &str, user: UserId) -> reqwest::RequestBuilder {
        self.app
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header("x-on-behalf-of", user.to_string())
    }

    async fn create(&self, user: UserId, request: Value) -> reqwest::Response {
        self.on_behalf(Method::POST, "/auth-profiles", user).json(&request).send().await.unwrap()
    }

    async fn token(&self, user: UserId, slug: &str) -> reqwest::Response {
        self.on_behalf(Method::POST, &format!("/auth-profiles/{slug}/token"), user).send().await.unwrap()
    }

    /// Mints a connect link for `slug` as `user` (`POST …/connect`, with a body only when the
    /// link allows another account); returns its URL.
    async fn connect_link(&self, user: UserId, slug: &str, allow_account_change: bool) -> String {
        let mut request = self.on_behalf(Method::POST, &format!("/auth-profiles/{slug}/connect"), user);
        if allow_account_change {
            request = request.json(&json!({"allow_account_change": true}));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["cache-control"], "no-store", "a connect link is a bearer secret");
        body(response, 200).await["connect_url"].as_str().unwrap().to_owned()
    }

    /// Creates an OAuth profile for Alice and connects it; returns its slug.
    async fn connected(&mut self, slug: &str) -> String {
        let created = body(self.create(self.alice.id, profile_request(Some(slug))).await, 201).await;
        let link = created["connect_url"].as_str().unwrap().to_owned();
        let page = connect(&mut self.alice.browser, &link).await;
        assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
        slug.to_owned()
    }

    async fn sql_profile(&self, slug: &str) -> Value {
        let response =
            self.on_behalf(Method::GET, &format!("/auth-profiles/{slug}"), self.alice.id).send().await.unwrap();
        body(response, 200).await
    }

    /// Makes a profile's access token expire in a minute (inside the refresh window).
    /// Ages the profile's token: stored an hour ago, expiring in a minute.
    async fn expire_soon(&self, slug: &str) {
        self.app.db.expire_token_in(slug, 60).await;
    }

    /// A profile connected as [`World::connected`] does, whose token expires within a minute
    /// (a refresh is due), and that token.
    async fn connected_expiring(&mut self, slug: &str) -> (String, Value) {
        let slug = self.connected(slug).await;
        let stored = body(self.token(self.alice.id, &slug).await, 200).await["access_token"].clone();
        self.expire_soon(&slug).await;
        (slug, stored)
    }
}

fn profile_request(slug: Option<&str>) -> Value {
    let mut request = json!({
        "connector_key": "github-issues",
        "profile_kind": "oauth_account",
        "provider": "local",
        "display_name": "My Issues",
        "scopes": ["openid", "issues:read"],
    });
    if let Some(slug) = slug {
        request["slug"] = slug.into();
    }
    request
}

/// Follows a connect link in a signed-in browser through the provider to the callback and, when
/// it connected, on to the account page it sends the browser to (a 303, so that a reload
/// replays nothing); returns that page, or the callback's refusal.
async fn connect(browser: &mut Browser, link: &str) -> reqwest::Response {
    let start = browser.open_connect_link(link).await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER, "{:?}", start.text().await);
    assert_eq!(start.headers()["referrer-policy"], "no-referrer");
    let provider = browser.get(&location(&start)).await;
    let callback = location(&provider);
    browser.finish_connect(&callback).await
}

/// A time `minutes` from now, as an SQL expression of the backend.
fn sql_time(backend: Backend, minutes: i64) -> String {
    match backend {
        Backend::Sqlite => (chrono::Utc::now() + chrono::TimeDelta::minutes(minutes)).timestamp_micros().to_string(),
        Backend::Postgres => format!("now() + interval '{minutes} minutes'"),
    }
}

/// Starts a connect flow in a browser and stops at the provider's redirect back: returns the
/// callback URL, to follow later.
async fn start_flow(browser: &mut Browser, link: &str) -> String {
    let start = browser.open_connect_link(link).await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER, "{:?}", start.text().await);
    location(&browser.get(&location(&start)).await)
}

async fn count(app: &TestApp, filter: &str) -> i64 {
    app.db.sql().await.count(&format!("auth_profiles {filter}")).await
}

async fn a_repeated_create_without_slug_reuses_the_pending_profile(backend: Backend) {
    let w = world(backend).await;
    let first = w.create(w.alice.id, profile_request(None)).await;
    assert_eq!(first.headers()["cache-control"], "no-store", "a connect link is a bearer secret");
    let first = body(first, 201).await;
    assert_eq!(first["auth_profile"]["status"], "pending_auth");
    assert_eq!(first["auth_profile"]["slug"], "my-issues");
    assert!(first["connect_url"].as_str().unwrap().contains("/connect/"));
    let second = body(w.create(w.alice.id, profile_request(None)).await, 200).await;
    assert_eq!(second["auth_profile"]["id"], first["auth_profile"]["id"]);
    assert_ne!(second["connect_url"], first["connect_url"], "a fresh connect link");
    assert_eq!(count(&w.app, "").await, 1, "exactly one row");
    assert_eq!(w.app.db.sql().await.count("connect_tokens").await, 1, "the older link is gone");
}

async fn a_different_slug_while_pending_is_a_friendly_409(backend: Backend) {
    let w = world(backend).await;
    body(w.create(w.alice.id, profile_request(Some("first-try"))).await, 201).await;
    let response = w.create(w.alice.id, profile_request(Some("second-try"))).await;
    let text = response.text().await.unwrap();
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["code"], "pending_auth_conflict");
    assert_eq!(problem["existing_slug"], "first-try");
    assert!(problem["detail"].as_str().unwrap().contains("first-try"));
    assert_no_leak(&text);
    let same = body(w.create(w.alice.id, profile_request(Some("first-try"))).await, 200).await;
    assert_eq!(same["auth_profile"]["slug"], "first-try");
    // Other scopes or another name are another request: the pending profile's link would ask the
    // provider for what was not asked for. The same scopes in another order are the same.
    let mut more = profile_request(None);
    more["scopes"] = json!(["openid", "issues:read", "issues:write"]);
    let problem = body(w.create(w.alice.id, more).await, 409).await;
    assert_eq!((&problem["code"], &problem["existing_slug"]), (&json!("pending_auth_conflict"), &json!("first-try")));
    let mut renamed = profile_request(None);
    renamed["display_name"] = "Other Issues".into();
    assert_eq!(body(w.create(w.alice.id, renamed).await, 409).await["code"], "pending_auth_conflict");
    let mut reordered = profile_request(None);
    reordered["scopes"] = json!(["issues:read", "openid"]);
    assert_eq!(body(w.create(w.alice.id, reordered).await, 200).await["auth_profile"]["slug"], "first-try");
    assert_eq!(count(&w.app, "").await, 1);
}

async fn a_member_cannot_take_over_someone_elses_pending_team_profile(backend: Backend) {
    let w = world(backend).await;
    let team_wide = || {
        let mut request = profile_request(None);
        request["profile_kind"] = "oauth_app".into();
        request
    };
    let created = body(w.create(w.alice.id, team_wide()).await, 201).await;
    // Bob, a plain member, asks for the same: Alice's pending profile is not his to connect, so
    // he gets no link to it, and hers keeps working.
    let taken = body(w.create(w.bob.id, team_wide()).await, 409).await;
    assert_eq!(
        (&taken["code"], &taken["existing_slug"]),
        (&json!("pending_auth_conflict"), &created["auth_profile"]["slug"])
    );
    let sql = w.app.db.sql().await;
    let alices = format!("connect_tokens WHERE user_id = {}", sql.uuid(&w.alice.id.to_string()));
    assert_eq!((sql.count("connect_tokens").await, sql.count(&alices).await), (1, 1));
    // Its creator (an owner too) reuses it as before.
    assert_eq!(
        body(w.create(w.alice.id, team_wide()).await, 200).await["auth_profile"]["id"],
        created["auth_profile"]["id"]
    );
}

async fn two_members_connect_the_same_connector_in_parallel(backend: Backend) {
    let w = Arc::new(world(backend).await);
    let (alice, bob) =
        tokio::join!(w.create(w.alice.id, profile_request(None)), w.create(w.bob.id, profile_request(None)));
    let (alice, bob) = (body(alice, 201).await, body(bob, 201).await);
    assert_ne!(alice["auth_profile"]["id"], bob["auth_profile"]["id"]);
    let mut slugs = [alice["auth_profile"]["slug"].as_str().unwrap(), bob["auth_profile"]["slug"].as_str().unwrap()];
    slugs.sort();
    assert_eq!(slugs, ["my-issues", "my-issues-2"], "the second to commit gets a deterministic suffix");
    // Each one's repeats, all at once, reuse their own pending profile.
    let again: Vec<_> = (0..8)
        .map(|i| {
            let w = w.clone();
            let user = if i % 2 == 0 { w.alice.id } else { w.bob.id };
            tokio::spawn(async move { body(w.create(user, profile_request(None)).await, 200).await })
        })
        .collect();
    for (i, task) in again.into_iter().enumerate() {
        let expected = if i % 2 == 0 { &alice } else { &bob };
        assert_eq!(task.await.unwrap()["auth_profile"]["id"], expected["auth_profile"]["id"]);
    }
    assert_eq!(count(&w.app, "WHERE status = 'pending_auth'").await, 2);
    assert_eq!(count(&w.app, "").await, 2);
}

async fn the_database_refuses_a_second_pending_profile(backend: Backend) {
    let w = world(backend).await;
    let created = body(w.create(w.alice.id, profile_request(Some("one"))).await, 201).await;
    let team: TeamId = created["auth_profile"]["team_id"].as_str().unwrap().parse().unwrap();
    let now = chrono::Utc::now();
    let store = w.app.db.store().await;
    let duplicate = AuthProfile {
        id: ProfileId::generate(),
        team_id: team,
        slug: Slug::parse("another-slug").unwrap(),
        connector_key: "github-issues".into(),
        profile_kind: ProfileKind::OauthAccount,
        provider: "local".into(),
        status: ProfileStatus::PendingAuth,
        created_by: w.alice.id,
        display_name: "Direct".into(),
        scopes: vec![],
        granted_scopes: None,
        is_default: false,
        upstream_account_id: None,
        access_token_expires_at: None,
        pending_expires_at: Some(now + chrono::TimeDelta::hours(1)),
        version: 0,
        created_at: now,
        updated_at: now,
        credential: None,
    };
    assert_eq!(
        store.insert_profile(&duplicate, FirstWrite::Nothing, u32::MAX).await.unwrap(),
        tessera::store::ProfileInsert::Taken,
        "refused by the database, not an error"
    );
    let mut bobs = duplicate.clone();
    bobs.id = ProfileId::generate();
    bobs.created_by = w.bob.id;
    assert!(
        matches!(
            store.insert_profile(&bobs, FirstWrite::Nothing, u32::MAX).await.unwrap(),
            tessera::store::ProfileInsert::Inserted(_)
        ),
        "another member may"
    );
    let mut active = duplicate.clone();
    active.id = ProfileId::generate();
    active.slug = Slug::parse("third-slug").unwrap();
    active.status = ProfileStatus::Active;
    assert!(
        matches!(
            store.insert_profile(&active, FirstWrite::Nothing, u32::MAX).await.unwrap(),
            tessera::store::ProfileInsert::Inserted(_)
        ),
        "the rule only binds pending profiles"
    );
    store.close().await;
}

async fn concurrent_identical_creates_all_get_the_same_profile(backend: Backend) {
    let w = Arc::new(world(backend).await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let response = w.create(w.alice.id, profile_request(None)).await;
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for task in tasks {
        let (status, value) = task.await.unwrap();
        assert!(status == 200 || status == 201, "{status}: {value}");
        created += usize::from(status == 201);
        ids.insert(value["auth_profile"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!((created, ids.len()), (1, 1), "the losers of the race got the winner's row");
    assert_eq!(count(&w.app, "").await, 1);
}

async fn slug_collisions_under_concurrency_are_clean(backend: Backend) {
    let w = Arc::new(world(backend).await);
    // The same explicit slug for 16 different connectors: one wins, the rest get a clean 409.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut request = profile_request(Some("contested"));
            request["connector_key"] = format!("connector-{i}").into();
            let response = w.create(w.alice.id, request).await;
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
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 15);
    assert_eq!(count(&w.app, "WHERE slug = 'contested'").await, 1, "the refused wrote nothing");
    assert_eq!(count(&w.app, "").await, 1);
    // Without a slug, names that collide get deterministic suffixes.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut request = profile_request(None);
            request["connector_key"] = format!("auto-{i}").into();
            request["display_name"] = "Shared Name".into();
            body(w.create(w.alice.id, request).await, 201).await["auth_profile"]["slug"].as_str().unwrap().to_owned()
        }));
    }
    let mut slugs = HashSet::new();
    for task in tasks {
        slugs.insert(task.await.unwrap());
    }
    let expected: HashSet<String> =
        std::iter::once("shared-name".to_owned()).chain((2..=8).map(|n| format!("shared-name-{n}"))).collect();
    assert_eq!(slugs, expected);
    // Past the numbered ones, random suffixes: many profiles of one name never run out.
    for i in 8..22 {
        let mut request = profile_request(None);
        request["connector_key"] = format!("auto-{i}").into();
        request["display_name"] = "Shared Name".into();
        let slug = body(w.create(w.alice.id, request).await, 201).await["auth_profile"]["slug"].clone();
        let slug = slug.as_str().unwrap().to_owned();
        assert!(slug.starts_with("shared-name-") && slugs.insert(slug.clone()), "{slug}");
    }
    assert_eq!(count(&w.app, "WHERE slug LIKE 'shared-name%'").await, 22);
}

async fn membership_decides_who_sees_what(backend: Backend) {
    let mut w = world(backend).await;
    w.connected("alices").await;
    let id = w.sql_profile("alices").await["id"].as_str().unwrap().to_owned();
    // Bob is a member: he sees the team but not Alice's personal profile, by slug or by id.
    let listed = body(w.on_behalf(Method::GET, "/auth-profiles", w.bob.id).send().await.unwrap(), 200).await;
    assert_eq!(listed["auth_profiles"].as_array().unwrap().len(), 0);
    for named in ["alices", id.as_str()] {
        for (method, path) in [
            (Method::GET, format!("/auth-profiles/{named}")),
            (Method::POST, format!("/auth-profiles/{named}/token")),
            (Method::POST, format!("/auth-profiles/{named}/connect")),
            (Method::DELETE, format!("/auth-profiles/{named}")),
        ] {
            let response = w.on_behalf(method.clone(), &path, w.bob.id).send().await.unwrap();
            assert_eq!(body(response, 403).await["code"], "not_profile_owner", "{method} {path}");
        }
    }
    // A stranger is told the team does not exist, even for real slugs.
    let mut carol = sign_in(&w.app, &w.issuer, "carol").await;
    for path in ["/auth-profiles", "/auth-profiles/alices"] {
        let response = w.on_behalf(Method::GET, path, carol.id).send().await.unwrap();
        assert_eq!(body(response, 404).await["code"], "team_not_found");
    }
    // An id names a profile of its own team only: through Carol's team, Alice's is not found.
    let carols_team = body(carol.browser.me(&w.app).await, 200).await["teams"][0]["id"].as_str().unwrap().to_owned();
    let elsewhere = carol.browser.get(&w.app.url(&format!("/v1/teams/{carols_team}/auth-profiles/{id}"))).await;
    assert_eq!(body(elsewhere, 404).await["code"], "profile_not_found");
    let no_team = w
        .app
        .client
        .get(w.app.url("/v1/teams/no-such-team/auth-profiles"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-on-behalf-of", carol.id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(body(no_team, 404).await["code"], "team_not_found");
    // Alice uses her session cookie as well as the admin path.
    let own = w.alice.browser.request(Method::GET, &w.url("/auth-profiles/alices")).await;
    assert_eq!(body(own, 200).await["status"], "active");
    let admin_without_user = w.app.client.get(w.url("/auth-profiles")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(body(admin_without_user, 400).await["code"], "missing_field");
    let anonymous = w.app.client.get(w.url("/auth-profiles")).send().await.unwrap();
    assert_eq!(body(anonymous, 401).await["code"], "missing_credentials");
    // Nor, once revoked, in its own.
    let revoked = w.on_behalf(Method::DELETE, &format!("/auth-profiles/{id}"), w.alice.id).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let gone = w.on_behalf(Method::GET, &format!("/auth-profiles/{id}"), w.alice.id).send().await.unwrap();
    assert_eq!(body(gone, 404).await["code"], "profile_not_found");
}

async fn a_connect_link_connects_the_profile_once(backend: Backend) {
    let mut w = world(backend).await;
    w.issuer.set_next_user(StubUser::new("alice-at-provider", "alice@provider.example"));
    // An API's scopes alone: an OpenID Connect provider is asked for `openid` all the same (it
    // answers with no id token, which names the account, without it).
    let mut request = profile_request(Some("issues"));
    request["scopes"] = json!(["issues:read"]);
    let created = body(w.create(w.alice.id, request).await, 201).await;
    let link = created["connect_url"].as_str().unwrap().to_owned();
    let token = link.split("/connect/").nth(1).unwrap().split('/').next().unwrap().to_owned();
    assert_eq!(token.len(), 43, "256 random bits");
    let start = w.alice.browser.open_connect_link(&link).await;
    let upstream = url::Url::parse(&location(&start)).unwrap();
    let scope = upstream.query_pairs().find(|(k, _)| k == "scope").unwrap().1.into_owned();
    assert_eq!(scope, "openid issues:read");
    let callback = location(&w.alice.browser.get(upstream.as_str()).await);
    let page = w.alice.browser.finish_connect(&callback).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let page = page.text().await.unwrap();
    assert!(page.contains("The account is connected.") && page.contains("My Issues"), "{page}");
    let profile = w.sql_profile("issues").await;
    assert_eq!(profile["status"], "active");
    assert_eq!(profile["upstream_account_id"], "alice-at-provider");
    assert_eq!(profile["id"], created["auth_profile"]["id"]);
    // Only a hash of the link is stored, and the credentials are encrypted.
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("connect_tokens").await, 0, "the link was consumed");
    assert_eq!(sql.count("auth_profiles WHERE access_token IS NOT NULL AND refresh_token IS NOT NULL").await, 1);
    let token = body(w.token(w.alice.id, "issues").await, 200).await;
    assert_eq!(token["refreshed"], false);
    let plaintext = token["access_token"].as_str().unwrap();
    let store = w.app.db.store().await;
    let secrets = store.secrets_page(tessera::store::SecretKind::AuthProfiles, None, 10).await.unwrap();
    assert!(secrets.iter().all(|s| !s.ciphertext.windows(plaintext.len()).any(|w| w == plaintext.as_bytes())));
    store.close().await;
}

async fn a_connect_link_is_bound_to_its_user_and_single_use(backend: Backend) {
    let mut w = world(backend).await;
    let created = body(w.create(w.alice.id, profile_request(None)).await, 201).await;
    let link = created["connect_url"].as_str().unwrap().to_owned();
    // Another member's browser: a page saying why, and the link stays usable by Alice.
    let refused = w.bob.browser.navigate(&link).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(refused.headers()["referrer-policy"], "no-referrer");
    assert!(refused.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(refused.text().await.unwrap().contains("another user"));
    let anonymous = Browser::new().navigate(&link).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let api_client = Browser::new().get(&link).await;
    assert_eq!(body(api_client, 401).await["code"], "missing_credentials", "problem+json for API clients");
    assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
    // Used.
    let reused = w.alice.browser.get(&link).await;
    assert_eq!(body(reused, 404).await["code"], "invalid_connect_link");
    // A newer link invalidates the older; an expired one is refused.
    let slug = created["auth_profile"]["slug"].as_str().unwrap();
    let first = w.connect_link(w.alice.id, slug, false).await;
    let second = w.connect_link(w.alice.id, slug, false).await;
    let stale = w.alice.browser.get(&first).await;
    assert_eq!(body(stale, 404).await["code"], "invalid_connect_link");
    let past = if backend == Backend::Sqlite { "1" } else { "now() - interval '1 minute'" };
    w.app.db.sql().await.exec(&format!("UPDATE connect_tokens SET expires_at = {past}")).await.unwrap();
    let expired = w.alice.browser.get(&second).await;
    assert_eq!(body(expired, 404).await["code"], "invalid_connect_link");
    // A "token" that is not of a token's form is no link, whoever opens it — not a path that
    // the page's own links would carry elsewhere on this origin: with the store failing, a
    // signed-in browser's error page offers to try this page again.
    let sql = w.app.db.sql().await;
    sql.exec("ALTER TABLE connect_tokens RENAME TO connect_tokens_away").await.unwrap();
    for page in ["oauth/start", "env"] {
        let forged = w.app.url(&format!("/connect/..%2F..%2Fauth%2Flink%3Fprovider%3Dlocal/{page}"));
        let opened = w.alice.browser.navigate(&forged).await;
        let status = opened.status();
        let text = opened.text().await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{page}: {text}");
        assert!(text.contains("invalid_connect_link"), "{page}: {text}");
        assert!(!text.contains("auth/link"), "{page}: {text}");
    }
    sql.exec("ALTER TABLE connect_tokens_away RENAME TO connect_tokens").await.unwrap();
}

async fn signing_out_while_connecting_says_so_and_revokes_the_tokens(backend: Backend) {
    let mut w = world(backend).await;
    let created = body(w.create(w.alice.id, profile_request(None)).await, 201).await;
    let link = created["connect_url"].as_str().unwrap().to_owned();
    let callback = start_flow(&mut w.alice.browser, &link).await;
    // Signed out (in another tab, say) while at the provider.
    let session = w.alice.browser.cookies.remove("tessera_session").unwrap();
    let page = w.alice.browser.navigate(&callback).await;
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    let text = page.text().await.unwrap();
    assert!(
        text.contains("invalid_connect_link") && text.contains("ask the app that sent you for a new link"),
        "{text}"
    );
    assert_eq!(w.issuer.revocations(), 1, "the tokens nobody will have are revoked");
    w.alice.browser.cookies.insert("tessera_session".into(), session);
    assert_eq!(count(&w.app, "WHERE status = 'pending_auth'").await, 1, "the profile is still to be connected");
}

/// A member disabled while at the provider (the disable commits as the activation waits for the
/// team's lock, after the callback was let in): told `user_disabled`, nothing connected, and the
/// tokens the code exchange got are revoked at the provider — nobody will have them.
async fn a_member_disabled_while_connecting_is_told_so_and_the_tokens_are_revoked(backend: Backend) {
    let mut w = world(backend).await;
    let created = body(w.create(w.alice.id, profile_request(None)).await, 201).await;
    let link = created["connect_url"].as_str().unwrap().to_owned();
    let callback = start_flow(&mut w.alice.browser, &link).await;
    let sql = w.app.db.sql().await;
    let disable = format!("UPDATE users SET disabled = TRUE WHERE id = {}", sql.uuid(&w.alice.id.to_string()));
    let held = sql
        .hold(
            &format!("BEGIN IMMEDIATE; {disable}"),
            &format!("BEGIN; SELECT 1 FROM teams WHERE slug = '{}' FOR UPDATE; {disable}", w.team),
        )
        .await;
    let finished = tokio::spawn({
        let request = w.alice.browser.prepared(Method::GET, &callback).header("accept", "text/html");
        async move { request.send().await.unwrap() }
    });
    match &sql {
        Sql::Postgres(_) => sql.until_waiting_for_a_lock("teams").await,
        // Nothing shows an SQLite writer waiting: long enough for the callback to reach a write.
        Sql::Sqlite(_) => tokio::time::sleep(Duration::from_millis(700)).await,
    }
    held.end("COMMIT").await;
    let page = finished.await.unwrap();
    let status = page.status();
    let text = page.text().await.unwrap();
    assert_eq!((status, text.contains("user_disabled")), (StatusCode::FORBIDDEN, true), "{text}");
    assert_eq!(w.issuer.revocations(), 1, "the tokens nobody will have are revoked");
    assert_eq!(count(&w.app, "WHERE status = 'pending_auth'").await, 1, "nothing connected");
}

/// The start page only shows the link; its "Continue" form uses it up, exactly once: many
/// concurrent posts of one browser (a double click, whose first response the browser drops) all
/// go on to the one flow started; another browser of the same person gets the invalid-link page.
async fn concurrent_continues_of_one_connect_link_start_one_flow(backend: Backend) {
    let mut w = world(backend).await;
    let created = body(w.create(w.alice.id, profile_request(Some("once"))).await, 201).await;
    let link = created["connect_url"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let page = w.alice.browser.navigate(&link).await;
        assert_eq!(page.status(), StatusCode::OK, "looking does not use the link up");
    }
    let continue_from = |browser: &Browser, page: &str| {
        browser.prepared(Method::POST, &link).header("accept", "text/html").form(&[("csrf", csrf_of(page))])
    };
    // Alice again, in another browser: the same person, another session.
    let mut other = sign_in(&w.app, &w.issuer, "alice").await;
    assert_eq!(other.id, w.alice.id);
    let other_page = other.browser.navigate(&link).await.text().await.unwrap();
    let page = w.alice.browser.navigate(&link).await.text().await.unwrap();
    let mut outcomes = Vec::new();
    for response in send_at_once(&(0..12).map(|_| continue_from(&w.alice.browser, &page)).collect::<Vec<_>>()).await {
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let cookie = response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        outcomes.push((location(&response), cookie));
    }
    outcomes.dedup();
    assert_eq!(outcomes.len(), 1, "one flow, the same answer to every post: {outcomes:?}");
    assert!(outcomes[0].0.starts_with(w.issuer.issuer()), "to the provider: {outcomes:?}");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("connect_tokens").await, 0, "the link is used up");
    assert_eq!(sql.count("login_states WHERE profile_id IS NOT NULL").await, 1, "one flow started");
    let refused = continue_from(&other.browser, &other_page).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND, "another browser's post");
    let gone = w.alice.browser.navigate(&link).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert!(gone.text().await.unwrap().contains("This link was already used or has expired"));
}

async fn concurrent_callbacks_activate_the_profile_once(backend: Backend) {
    let mut w = world(backend).await;
    let created = body(w.create(w.alice.id, profile_request(Some("raced"))).await, 201).await;
    // Eight flows for one profile: start one, mint another link, start it too, and so on.
    let mut callbacks = Vec::new();
    let mut link = created["connect_url"].as_str().unwrap().to_owned();
    for _ in 0..8 {
        let start = w.alice.browser.open_connect_link(&link).await;
        let cookie = w.alice.browser.cookies["tessera_login"].clone();
        let provider = w.alice.browser.get(&location(&start)).await;
        callbacks.push((location(&provider), cookie));
        link = w.connect_link(w.alice.id, "raced", false).await;
    }
    let session = format!("tessera_session={}", w.alice.browser.cookies["tessera_session"]);
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let requests: Vec<_> = callbacks
        .into_iter()
        .map(|(callback, login)| client.get(callback).header("cookie", format!("{session}; tessera_login={login}")))
        .collect();
    let mut outcomes = Vec::new();
    let mut winners = Vec::new();
    for response in send_at_once(&requests).await {
        if response.status() == StatusCode::SEE_OTHER {
            winners.push(response.headers()["x-request-id"].to_str().unwrap().to_owned());
        }
        outcomes.push((response.status(), response.text().await.unwrap()));
    }
    let won = outcomes.iter().filter(|(s, _)| *s == StatusCode::SEE_OTHER).count();
    let lost: Vec<_> = outcomes.iter().filter(|(s, _)| *s == StatusCode::CONFLICT).collect();
    assert_eq!((won, lost.len()), (1, 7), "{outcomes:?}");
    assert!(lost.iter().all(|(_, page)| page.contains("connect_conflict")));
    assert_eq!(w.sql_profile("raced").await["version"], 1, "activated exactly once");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("outbox_events WHERE topic = 'auth_profile.connected'").await, 1);
    // One audit row, with the connection: by the member, of the profile, a first connection.
    let rows = sql
        .texts(
            "SELECT actor_kind || ' ' || actor_id || ' ' || target_kind || ' ' || request_id || ' ' || \
             CAST(details AS TEXT) FROM audit_events WHERE action = 'auth_profile.connected'",
        )
        .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let expected = format!("user {} auth_profile {} ", w.alice.id, winners[0]);
    assert!(rows[0].starts_with(&expected), "by the member, in the request that connected: {rows:?}");
    assert!(rows[0].contains("\"pending_auth\""), "the status it was connected from: {rows:?}");
    assert_eq!(sql.count("login_states").await, 0, "every flow is used up");
    // The loser's tokens are of the account the winner connected: revoking them could end the
    // winner's grant at the provider.
    assert_eq!(w.issuer.revocations(), 0);
}

async fn reconnecting_keeps_the_profile_and_guards_the_account(backend: Backend) {
    let mut w = world(backend).await;
    w.issuer.set_next_user(StubUser::new("first-account", "a@provider.example"));
    let slug = w.connected("reconnected").await;
    let before = w.sql_profile(&slug).await;

    w.issuer.set_next_user(StubUser::new("second-account", "b@provider.example"));
    let link = w.connect_link(w.alice.id, &slug, false).await;
    let revocations = w.issuer.revocations();
    let refused = connect(&mut w.alice.browser, &link).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(w.issuer.revocations(), revocations + 1, "the refused connection's new grant is revoked there");
    assert_eq!(w.sql_profile(&slug).await["upstream_account_id"], "first-account");
    // Recorded as a refused connection, not as a refused sign-in.
    let sql = w.app.db.sql().await;
    let by_alice = format!("audit_events WHERE action = 'auth_profile.connect_failed' AND actor_id = '{}'", w.alice.id);
    assert_eq!(sql.count(&by_alice).await, 1, "the row names who connected");
    assert_eq!(sql.count("audit_events WHERE action = 'sign_in.failed'").await, 0);

    let link = w.connect_link(w.alice.id, &slug, true).await;
    w.issuer.set_next_user(StubUser::new("second-account", "b@provider.example"));
    let revocations = w.issuer.revocations();
    assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
    let after = w.sql_profile(&slug).await;
    assert_eq!(after["id"], before["id"], "the same profile");
    assert_eq!(after["upstream_account_id"], "second-account");
    assert_eq!(count(&w.app, "").await, 1, "no duplicate rows");
    // The grant of the account it held is revoked there: no profile holds it any more.
    assert_eq!(w.issuer.revocations(), revocations + 1, "the first account's grant is revoked");

    // The same account reconnects without any flag, and its grant is not revoked (a provider
    // that revokes per grant would end the new tokens too).
    let link = w.connect_link(w.alice.id, &slug, false).await;
    w.issuer.set_next_user(StubUser::new("second-account", "b@provider.example"));
    assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
    assert_eq!(w.issuer.revocations(), revocations + 1);
}

async fn tokens_are_refreshed_before_they_expire(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("fresh").await;
    let first = body(w.token(w.alice.id, &slug).await, 200).await;
    assert_eq!(first["refreshed"], false);
    assert_eq!(w.issuer.refreshes(), 0);
    w.expire_soon(&slug).await;
    let refreshed = body(w.token(w.alice.id, &slug).await, 200).await;
    assert_eq!(refreshed["refreshed"], true);
    assert_ne!(refreshed["access_token"], first["access_token"]);
    assert_eq!(w.issuer.refreshes(), 1);
    let again = body(w.token(w.alice.id, &slug).await, 200).await;
    assert_eq!(again["access_token"], refreshed["access_token"], "the refreshed token is stored");
    assert_eq!(w.issuer.refreshes(), 1);
}

async fn short_lived_tokens_are_refreshed_at_half_their_life_not_on_every_use(backend: Backend) {
    let mut w = world(backend).await;
    // Two minutes, well inside the five-minute refresh window (Keycloak issues five).
    w.issuer.set_access_token_ttl(120);
    let slug = w.connected("short").await;
    let first = body(w.token(w.alice.id, &slug).await, 200).await;
    assert_eq!(first["refreshed"], false, "a token with two minutes left of two is not due");
    w.expire_soon(&slug).await;
    let refreshed = body(w.token(w.alice.id, &slug).await, 200).await;
    assert_eq!(refreshed["refreshed"], true);
    for _ in 0..5 {
        let again = body(w.token(w.alice.id, &slug).await, 200).await;
        assert_eq!(
            again["access_token"], refreshed["access_token"],
            "the refreshed token is used, not refreshed again"
        );
    }
    assert_eq!(w.issuer.refreshes(), 1, "one call to the provider");
}

async fn fifty_concurrent_requests_refresh_once(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("busy").await;
    w.expire_soon(&slug).await;
    w.issuer.set_token_delay(Duration::from_millis(300));
    let before = crate::metrics::scrape(&w.app).await.1;
    let w = Arc::new(w);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (w, slug) = (w.clone(), slug.clone());
        tasks.push(tokio::spawn(async move { body(w.token(w.alice.id, &slug).await, 200).await }));
    }
    let mut tokens = HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap()["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(w.issuer.refreshes(), 1, "exactly one call to the provider");
    assert_eq!(tokens.len(), 1, "everyone got the refreshed token");
    // Metrics are per process and other tests refresh at the same time: the counters grew at
    // least by this test's (so a series that is not counted, or renamed, fails), but their
    // exact growth is not this test's to check (the single call is counted above).
    let after = crate::metrics::scrape(&w.app).await.1;
    let grew = |name: &str, labels: &[(&str, &str)]| {
        crate::metrics::value(&after, name, labels) - crate::metrics::value(&before, name, labels)
    };
    assert!(grew("tessera_token_refresh_calls_total", &[("provider", "local"), ("outcome", "ok")]) >= 1.0);
    assert!(grew("tessera_token_refresh_waits_total", &[("scope", "process")]) >= 1.0, "the others waited");
}

/// Many requests for a token whose refresh the provider refuses (`invalid_grant`): one call to
/// the provider, every request told `needs_reauth`, one `auth_profile.needs_reauth` event — the
/// waiters read the refusal rather than each trying the dead refresh token again.
async fn concurrent_requests_meeting_a_refused_refresh_ask_the_provider_once(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("refused-at-once").await;
    w.expire_soon(&slug).await;
    w.issuer.set_token_delay(Duration::from_millis(300));
    w.issuer.fail_next_token_request(TokenFault::InvalidGrant);
    let sql = w.app.db.sql().await;
    let events = || sql.count("outbox_events WHERE topic = 'auth_profile.needs_reauth'");
    let (before, calls) = (events().await, w.issuer.refreshes());
    let w = Arc::new(w);
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (w, slug) = (w.clone(), slug.clone());
        tasks.push(tokio::spawn(async move { body(w.token(w.alice.id, &slug).await, 409).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap()["code"], "needs_reauth");
    }
    assert_eq!(w.issuer.refreshes() - calls, 1, "one call to the provider");
    assert_eq!(events().await - before, 1, "one event");
    assert_eq!(w.sql_profile(&slug).await["status"], "needs_reauth");
}

/// A refresh the provider fails (a 503) while 24 requests wait for it: it is asked once, not
/// once per waiting request in turn; each gets the failure (the stored token has too little
/// left to hand out), and the next request asks again.
async fn concurrent_requests_meeting_a_failed_refresh_ask_the_provider_once(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("failed-at-once").await;
    w.app.db.expire_token_in(&slug, 10).await;
    w.issuer.set_token_delay(Duration::from_millis(1000));
    w.issuer.fail_next_token_request(TokenFault::ServerError(503));
    let calls = w.issuer.refreshes();
    let path = format!("/auth-profiles/{slug}/token");
    let requests: Vec<_> = (0..24).map(|_| w.on_behalf(Method::POST, &path, w.alice.id)).collect();
    for answer in send_at_once(&requests).await {
        assert_eq!(body(answer, 502).await["code"], "provider_unavailable");
    }
    assert_eq!(w.issuer.refreshes() - calls, 1, "one call to the provider");
    let answer = body(w.token(w.alice.id, &slug).await, 200).await;
    assert_eq!(answer["refreshed"], true, "{answer}");
    assert_eq!(w.issuer.refreshes() - calls, 2, "the next request asks again");
}

/// A refresh that failed at the provider (down, answering errors) is not tried again by every
/// request that follows, each waiting for the provider's timeout before getting the stored token
/// all the same: while that token has time left, the next requests get it at once.
async fn requests_after_a_failed_refresh_get_the_stored_token_without_asking_again(backend: Backend) {
    let mut w = world(backend).await;
    let (slug, stored) = w.connected_expiring("failing-provider").await;
    w.issuer.fail_next_token_request(TokenFault::ServerError(503));
    let calls = w.issuer.refreshes();
    for round in 0..5 {
        let answer = body(w.token(w.alice.id, &slug).await, 200).await;
        assert_eq!((&answer["refreshed"], &answer["access_token"]), (&json!(false), &stored), "round {round}");
    }
    assert_eq!(w.issuer.refreshes() - calls, 1, "the provider was asked once, not once per request");
}

async fn two_instances_refresh_once(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("shared").await;
    w.expire_soon(&slug).await;
    w.issuer.set_token_delay(Duration::from_millis(300));
    // A second Tessera instance on the same database, with its own caches and in-process gates.
    let db = w.app.db.share();
    let mut config = db.config();
    configure(&mut config, &w.issuer);
    let second = Arc::new(TestApp::start(db, &config).await);
    let w = Arc::new(w);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (w, second, slug) = (w.clone(), second.clone(), slug.clone());
        tasks.push(tokio::spawn(async move {
            let base = if i % 2 == 0 { w.app.url("") } else { second.url("") };
            let url = format!("{base}/v1/teams/{}/auth-profiles/{slug}/token", w.team);
            let response = w
                .app
                .client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .header("x-on-behalf-of", w.alice.id.to_string())
                .send()
                .await
                .unwrap();
            body(response, 200).await["access_token"].as_str().unwrap().to_owned()
        }));
    }
    let mut tokens = HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap());
    }
    assert_eq!(w.issuer.refreshes(), 1, "one call to the provider across both instances");
    assert_eq!(tokens.len(), 1);
}

/// Another instance holds the refresh lease and does not finish (killed mid-refresh, say): three
/// requests of this instance, queued one behind the other on its own single-flight, each wait
/// for it at most 10 s from their arrival — not 10 s each in turn — and then get the stored
/// token, which has more than 30 s left.
async fn requests_queued_behind_another_instances_refresh_wait_once(backend: Backend) {
    let mut w = world(backend).await;
    let (slug, stored) = w.connected_expiring("held-elsewhere").await;
    let sql = w.app.db.sql().await;
    let owner = sql.uuid(&uuid::Uuid::new_v4().to_string());
    let lease = format!("refresh_lease_owner = {owner}, refresh_lease_until = {}", sql_time(backend, 1));
    let held = sql.exec(&format!("UPDATE auth_profiles SET {lease} WHERE slug = '{slug}'")).await.unwrap();
    assert_eq!(held, 1);
    let path = format!("/auth-profiles/{slug}/token");
    let requests: Vec<_> = (0..3).map(|_| w.on_behalf(Method::POST, &path, w.alice.id)).collect();
    let started = std::time::Instant::now();
    for answer in send_at_once(&requests).await {
        let answer = body(answer, 200).await;
        assert_eq!(answer["access_token"], stored, "the stored token, which has a minute left");
        assert_eq!(answer["refreshed"], false);
    }
    // Each waited 10 s from its arrival; in turn, the third would have waited 30 s.
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(25), "the requests waited {waited:?}");
    assert_eq!(w.issuer.refreshes(), 0, "the lease is another instance's");
}

/// A refresh slower than a request waits for one (8 s, past its 5 s): the requests — the one
/// that asked the provider and the one queued behind it — get the stored token (a minute left)
/// rather than waiting for the provider, and the refresh goes on: its answer is stored, and
/// handed out from then on without asking the provider again.
async fn a_slow_refresh_hands_out_the_stored_token_and_stores_its_answer_after(backend: Backend) {
    let mut w = world(backend).await;
    let (slug, stored) = w.connected_expiring("slow-here").await;
    w.issuer.set_token_delay(Duration::from_secs(8));
    let path = format!("/auth-profiles/{slug}/token");
    let requests: Vec<_> = (0..2).map(|_| w.on_behalf(Method::POST, &path, w.alice.id)).collect();
    for answer in send_at_once(&requests).await {
        let answer = body(answer, 200).await;
        assert_eq!((&answer["refreshed"], &answer["access_token"]), (&json!(false), &stored), "{answer}");
    }
    let w = &w;
    eventually_within("the slow refresh's answer is stored", Duration::from_secs(60), || async {
        body(w.token(w.alice.id, &slug).await, 200).await["access_token"] != stored
    })
    .await;
    assert_eq!(w.issuer.refreshes(), 1, "one call to the provider");
}

/// A refresh slower than a request waits (8 s), while the database fails (its table renamed
/// away): past its wait the request cannot read the stored token, and gets what the refresh
/// gets — the provider's new token, handed out unstored — not the database's error.
async fn a_slow_refresh_whose_database_fails_meanwhile_hands_out_its_answer(backend: Backend) {
    let mut w = world(backend).await;
    let (slug, stored) = w.connected_expiring("slow-and-failing").await;
    let refreshes = w.issuer.refreshes();
    w.issuer.set_answer_delay(Duration::from_secs(8));
    let request = w.on_behalf(Method::POST, &format!("/auth-profiles/{slug}/token"), w.alice.id).send();
    let waiting = tokio::spawn(request);
    eventually("the refresh reaches the provider", || async { w.issuer.refreshes() > refreshes }).await;
    let sql = w.app.db.sql().await;
    sql.exec("ALTER TABLE auth_profiles RENAME TO auth_profiles_away").await.unwrap();
    let answer = body(waiting.await.unwrap().unwrap(), 200).await;
    sql.exec("ALTER TABLE auth_profiles_away RENAME TO auth_profiles").await.unwrap();
    assert_eq!(answer["refreshed"], true, "{answer}");
    assert_ne!(answer["access_token"], stored);
    w.issuer.set_answer_delay(Duration::ZERO);
}

/// Outbound requests time out after `jwks.fetch_timeout_ms`, but not a refresh: a provider that
/// rotates refresh tokens has spent the old one when it decides, so an answer cut off on its way
/// back would leave the connection with a refresh token that no longer works.
async fn a_refresh_answered_after_the_outbound_timeout_keeps_the_rotated_token(backend: Backend) {
    let mut w = world_with(backend, |config| config.jwks.fetch_timeout = Duration::from_millis(300)).await;
    let slug = w.connected("slow-answer").await;
    w.issuer.rotate_refresh_tokens(true);
    w.expire_soon(&slug).await;
    w.issuer.set_answer_delay(Duration::from_millis(1500));
    assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], true, "the answer was waited for");
    w.issuer.set_answer_delay(Duration::ZERO);
    w.expire_soon(&slug).await;
    assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], true, "the rotated token was kept");
    assert_eq!(w.issuer.refreshes(), 2);
}

async fn rotated_and_kept_refresh_tokens_are_persisted(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("rotating").await;
    // The provider rotates: the new refresh token must be stored, or the next refresh fails.
    w.issuer.rotate_refresh_tokens(true);
    for round in 1..=3 {
        w.expire_soon(&slug).await;
        assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], true, "round {round}");
    }
    // The provider stops sending refresh tokens: the stored one is kept and keeps working.
    w.issuer.rotate_refresh_tokens(false);
    for round in 1..=2 {
        w.expire_soon(&slug).await;
        assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], true, "round {round}");
    }
    assert_eq!(w.issuer.refreshes(), 5);
}

async fn invalid_grant_marks_the_profile_without_a_retry_storm(backend: Backend) {
    let mut w = world(backend).await;
    w.issuer.set_next_user(StubUser::new("alice-upstream", "alice@provider.example"));
    let slug = w.connected("revoked-upstream").await;
    w.expire_soon(&slug).await;
    w.issuer.fail_next_token_request(TokenFault::InvalidGrant);
    assert_eq!(body(w.token(w.alice.id, &slug).await, 409).await["code"], "needs_reauth");
    assert_eq!(w.sql_profile(&slug).await["status"], "needs_reauth");
    let calls = w.issuer.refreshes();
    for _ in 0..10 {
        assert_eq!(body(w.token(w.alice.id, &slug).await, 409).await["code"], "needs_reauth");
    }
    assert_eq!(w.issuer.refreshes(), calls, "no further calls to the provider");
    // Reconnecting makes it active again.
    let link = w.connect_link(w.alice.id, &slug, false).await;
    w.issuer.set_next_user(StubUser::new("alice-upstream", "alice@provider.example"));
    assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
    assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], false);
}

/// A provider whose refusal is another error than `invalid_grant` (Zoom's `invalid_request`) is
/// read as one only where its entry says so (`refusal_errors`); elsewhere that error is the
/// provider's failure, which leaves the profile as it is and hands out the stored token.
async fn a_refusal_named_by_the_entry_marks_the_profile(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("zoom-like-untold").await;
    w.expire_soon(&slug).await;
    w.issuer.fail_next_token_request(TokenFault::Error("invalid_request"));
    let failed = w.token(w.alice.id, &slug).await;
    assert_eq!(body(failed, 200).await["refreshed"], false, "the stored token, while it lasts");
    assert_eq!(w.sql_profile(&slug).await["status"], "active");

    let mut w = world_with(backend, |config| {
        config.providers[0].protocol.refusal_errors = vec!["invalid_request".into()];
    })
    .await;
    let slug = w.connected("zoom-like").await;
    w.expire_soon(&slug).await;
    w.issuer.fail_next_token_request(TokenFault::Error("invalid_request"));
    assert_eq!(body(w.token(w.alice.id, &slug).await, 409).await["code"], "needs_reauth");
    assert_eq!(w.sql_profile(&slug).await["status"], "needs_reauth");
}

/// A token that expired with no refresh token to renew it (a provider that gives none, or scopes
/// without `offline_access`) is answered 409 `needs_reauth`, and the profile says so too: its
/// listing, and the choice of a connector's credentials, see it.
async fn an_expired_token_without_a_refresh_token_marks_the_profile(backend: Backend) {
    let mut w = world(backend).await;
    w.issuer.set_next_user(StubUser::new("alice-upstream", "alice@provider.example"));
    let slug = w.connected("no-refresh").await;
    w.app.db.expire_token_in(&slug, -60).await;
    let sql = w.app.db.sql().await;
    sql.exec(&format!("UPDATE auth_profiles SET refresh_token = NULL WHERE slug = '{slug}'")).await.unwrap();
    assert_eq!(w.sql_profile(&slug).await["status"], "active");
    assert_eq!(body(w.token(w.alice.id, &slug).await, 409).await["code"], "needs_reauth");
    assert_eq!(w.sql_profile(&slug).await["status"], "needs_reauth");
    let shown = w.on_behalf(Method::GET, &format!("/auth-profiles/{slug}"), w.alice.id).send().await.unwrap();
    assert_eq!(body(shown, 200).await["status"], "needs_reauth");
    assert_eq!(w.issuer.refreshes(), 0, "nothing to refresh with");
    // A reconnection makes it active again.
    let link = w.connect_link(w.alice.id, &slug, false).await;
    w.issuer.set_next_user(StubUser::new("alice-upstream", "alice@provider.example"));
    assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
    assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], false);
}

async fn expired_pending_profiles_are_not_reused(backend: Backend) {
    let w = world(backend).await;
    let first = body(w.create(w.alice.id, profile_request(None)).await, 201).await;
    let past = if backend == Backend::Sqlite { "1" } else { "now() - interval '1 minute'" };
    w.app.db.sql().await.exec(&format!("UPDATE auth_profiles SET pending_expires_at = {past}")).await.unwrap();
    let second = body(w.create(w.alice.id, profile_request(None)).await, 201).await;
    assert_ne!(second["auth_profile"]["id"], first["auth_profile"]["id"]);
    assert_eq!(count(&w.app, "").await, 1, "the expired one was deleted");
}

async fn revoking_frees_the_slug_and_revokes_upstream(backend: Backend) {
    // The authorization and token endpoints configured, as for a self-hosted GitLab: the
    // revocation endpoint still comes from discovery.
    let mut w = world_with(backend, |config| {
        let local = config.providers.iter_mut().find(|p| p.name == "local").unwrap();
        let issuer = local.issuer.as_str().trim_end_matches('/').to_owned();
        local.endpoints.authorization = Some(format!("{issuer}/authorize").parse().unwrap());
        local.endpoints.token = Some(format!("{issuer}/token").parse().unwrap());
    })
    .await;
    let slug = w.connected("gone").await;
    let revoked = w.on_behalf(Method::DELETE, &format!("/auth-profiles/{slug}"), w.alice.id).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(w.issuer.revocations(), 1, "revoked at the provider too");
    assert_eq!(w.issuer.revocation_hints(), ["refresh_token"], "the refresh token, which ends the grant");
    let gone = w.on_behalf(Method::GET, &format!("/auth-profiles/{slug}"), w.alice.id).send().await.unwrap();
    assert_eq!(body(gone, 404).await["code"], "profile_not_found");
    assert_eq!(count(&w.app, "WHERE status = 'revoked' AND access_token IS NULL").await, 1, "credentials wiped");
    // Two profiles of one provider account (a mailbox and a calendar through one client): a
    // provider may revoke the whole grant, so the first one's revocation is not sent there.
    let (mail, calendar) = (w.connected("mail").await, w.connected("calendar").await);
    for (slug, sent) in [(mail, 1), (calendar, 2)] {
        let revoked = w.on_behalf(Method::DELETE, &format!("/auth-profiles/{slug}"), w.alice.id).send().await;
        assert_eq!(revoked.unwrap().status(), StatusCode::NO_CONTENT);
        assert_eq!(w.issuer.revocations(), sent, "after {slug}");
    }
    // A grant without a refresh token: its access token is revoked, and named as one.
    w.issuer.refresh_token_only_with(&[("never", "sent")]);
    let online = w.connected("online").await;
    let revoked = w.on_behalf(Method::DELETE, &format!("/auth-profiles/{online}"), w.alice.id).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(w.issuer.revocation_hints().last().map(String::as_str), Some("access_token"));
    body(w.create(w.alice.id, profile_request(Some("gone"))).await, 201).await;
}

/// Several revocations of one connection at once (a double click, a retried request): one
/// succeeds, the rest find nothing to revoke, and the provider is asked once.
async fn concurrent_revocations_revoke_once(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("twice").await;
    let sql = w.app.db.sql().await;
    let before = sql.count("outbox_events WHERE topic = 'auth_profile.revoked'").await;
    let revoke = || w.on_behalf(Method::DELETE, &format!("/auth-profiles/{slug}"), w.alice.id);
    let answers = send_at_once(&(0..8).map(|_| revoke()).collect::<Vec<_>>()).await;
    let statuses: Vec<StatusCode> = answers.iter().map(reqwest::Response::status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::NO_CONTENT).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::NO_CONTENT || *s == StatusCode::NOT_FOUND), "{statuses:?}");
    assert_eq!(w.issuer.revocations(), 1, "revoked at the provider once");
    assert_eq!(sql.count("outbox_events WHERE topic = 'auth_profile.revoked'").await - before, 1);
    assert_eq!(count(&w.app, "WHERE status = 'revoked' AND access_token IS NULL").await, 1);
    // By the member it was revoked for, in the request that revoked it.
    let winner = answers.iter().find(|a| a.status() == StatusCode::NO_CONTENT).unwrap();
    let request = winner.headers()["x-request-id"].to_str().unwrap();
    let revoked = format!(
        "audit_events WHERE action = 'auth_profile.revoked' AND actor_id = '{}' AND request_id = '{request}'",
        w.alice.id
    );
    assert_eq!(sql.count(&revoked).await, 1, "one audit row, by the member, of the request");
    assert_eq!(sql.count("audit_events WHERE action = 'auth_profile.revoked'").await, 1);
}

async fn team_members_are_managed_by_owners(backend: Backend) {
    let mut w = world(backend).await;
    let carol = sign_in(&w.app, &w.issuer, "carol").await;
    // Bob is a plain member: he cannot add anyone.
    let by_bob =
        w.bob.browser.json(Method::POST, &w.url("/members"), &json!({"user_id": carol.id, "role": "member"})).await;
    assert_eq!(body(by_bob, 403).await["code"], "not_team_admin");
    // Alice owns the team.
    let by_alice =
        w.alice.browser.json(Method::POST, &w.url("/members"), &json!({"user_id": carol.id, "role": "admin"})).await;
    assert_eq!(by_alice.status(), StatusCode::CREATED);
    let changed =
        w.alice.browser.json(Method::POST, &w.url("/members"), &json!({"user_id": carol.id, "role": "member"})).await;
    assert_eq!(changed.status(), StatusCode::OK);
    let bad =
        w.alice.browser.json(Method::POST, &w.url("/members"), &json!({"user_id": carol.id, "role": "king"})).await;
    assert_eq!(body(bad, 400).await["code"], "invalid_role");
    let unknown = w
        .alice
        .browser
        .json(Method::POST, &w.url("/members"), &json!({"user_id": UserId::generate(), "role": "member"}))
        .await;
    assert_eq!(body(unknown, 404).await["code"], "user_not_found");
    // The last owner cannot leave, through either API.
    let last = w.alice.browser.request(Method::DELETE, &w.url(&format!("/members/{}", w.alice.id))).await;
    assert_eq!(body(last, 409).await["code"], "last_owner");
    let admin_last =
        w.app.admin(Method::DELETE, &format!("/admin/teams/{}/members/{}", w.team, w.alice.id)).send().await.unwrap();
    assert_eq!(body(admin_last, 409).await["code"], "last_owner");
    // A plain member removes no one else, but may leave.
    let by_carol = w.bob.browser.request(Method::DELETE, &w.url(&format!("/members/{}", carol.id))).await;
    assert_eq!(body(by_carol, 403).await["code"], "not_team_admin");
    let mut carol_browser = carol.browser;
    let left = carol_browser.request(Method::DELETE, &w.url(&format!("/members/{}", carol.id))).await;
    assert_eq!(left.status(), StatusCode::NO_CONTENT);
    let again = carol_browser.request(Method::DELETE, &w.url(&format!("/members/{}", carol.id))).await;
    assert_eq!(body(again, 404).await["code"], "team_not_found");
    // Removing Bob takes his access away at once.
    let removed = w.alice.browser.request(Method::DELETE, &w.url(&format!("/members/{}", w.bob.id))).await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let after = w.on_behalf(Method::GET, "/auth-profiles", w.bob.id).send().await.unwrap();
    assert_eq!(body(after, 404).await["code"], "team_not_found");
    let twice =
        w.app.admin(Method::DELETE, &format!("/admin/teams/{}/members/{}", w.team, w.bob.id)).send().await.unwrap();
    assert_eq!(body(twice, 404).await["code"], "member_not_found");
}

async fn other_kinds_start_without_an_oauth_link(backend: Backend) {
    let w = world(backend).await;
    let mut request = profile_request(None);
    request["profile_kind"] = "browser_session".into();
    request["provider"] = "OpenAI".into();
    let created = body(w.create(w.alice.id, request).await, 201).await;
    // Pending until its storage state is set (see profile_credentials.rs).
    assert_eq!(created["auth_profile"]["status"], "pending_auth");
    assert_eq!(created["auth_profile"]["provider"], "openai", "providers are lower case everywhere");
    assert_eq!(created["connect_url"], Value::Null);
    let slug = created["auth_profile"]["slug"].as_str().unwrap();
    assert_eq!(body(w.token(w.alice.id, slug).await, 409).await["code"], "not_oauth_profile");
    for (field, value, code) in [
        ("profile_kind", json!("magic"), "invalid_profile_kind"),
        ("connector_key", json!("has spaces"), "invalid_connector_key"),
        ("provider", json!(""), "missing_field"),
        ("slug", json!("Not A Slug"), "invalid_slug"),
        ("scopes", json!(["a b"]), "invalid_scope"),
        ("scopes", json!(["say\"hi\""]), "invalid_scope"),
        ("scopes", json!(["é"]), "invalid_scope"),
        ("provider", json!("nope"), "unknown_provider"),
        ("storageState", json!({}), "invalid_request"),
        ("cdp_url", json!("ws://127.0.0.1:9222"), "invalid_request"),
    ] {
        let mut request = profile_request(None);
        request[field] = value;
        let response = w.create(w.alice.id, request).await;
        let status = response.status().as_u16();
        assert!((400..500).contains(&status));
        assert_eq!(body(response, status).await["code"], code, "{field}");
    }
    // The provider in a callback path is compared in lower case.
    let mut upper = profile_request(Some("upper"));
    upper["provider"] = "LOCAL".into();
    assert_eq!(body(w.create(w.alice.id, upper).await, 201).await["auth_profile"]["provider"], "local");
}

async fn a_former_member_s_links_and_flows_stop_working(backend: Backend) {
    let mut w = world(backend).await;
    let created = body(w.create(w.bob.id, profile_request(Some("bobs"))).await, 201).await;
    // Bob has one flow under way and one link left when he is removed from the team.
    let callback = start_flow(&mut w.bob.browser, created["connect_url"].as_str().unwrap()).await;
    let link = w.connect_link(w.bob.id, "bobs", false).await;
    assert_eq!(w.app.db.sql().await.count("connect_tokens").await, 1);
    let removed = w.alice.browser.request(Method::DELETE, &w.url(&format!("/members/{}", w.bob.id))).await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    assert_eq!(w.app.db.sql().await.count("connect_tokens").await, 0, "his links went with him");
    let opened = w.bob.browser.get(&link).await;
    assert_eq!(body(opened, 404).await["code"], "invalid_connect_link");
    let returned = w.bob.browser.navigate(&callback).await;
    assert_ne!(returned.status(), StatusCode::OK, "the flow under way cannot finish");
    // His personal account in the team went too (revoked), and the flow did not fill it.
    assert_eq!(count(&w.app, "WHERE status = 'revoked' AND access_token IS NULL").await, 1);
}

async fn only_its_creator_or_an_admin_reconnects_a_team_profile(backend: Backend) {
    let mut w = world(backend).await;
    let mut request = profile_request(Some("team-app"));
    request["profile_kind"] = "oauth_app".into();
    let created = body(w.create(w.alice.id, request).await, 201).await;
    let page = connect(&mut w.alice.browser, created["connect_url"].as_str().unwrap()).await;
    assert_eq!(page.status(), StatusCode::OK);
    // Bob, a plain member, may use the team's account but not re-point it.
    body(w.token(w.bob.id, "team-app").await, 200).await;
    let by_bob = w
        .on_behalf(Method::POST, "/auth-profiles/team-app/connect", w.bob.id)
        .json(&json!({"allow_account_change": true}))
        .send();
    assert_eq!(body(by_bob.await.unwrap(), 403).await["code"], "not_team_admin");
    // The optional body: JSON of the wrong shape is named as such, text that is not JSON too.
    for (sent, code) in [
        (r#"{"allow_account_change": "yes"}"#, "invalid_request"),
        (r#"{"allow": true}"#, "invalid_request"),
        ("yes", "malformed_json"),
        ("[true]", "invalid_request"),
    ] {
        let bad = w
            .on_behalf(Method::POST, "/auth-profiles/team-app/connect", w.alice.id)
            .header("content-type", "application/json")
            .body(sent)
            .send();
        assert_eq!(body(bad.await.unwrap(), 400).await["code"], code, "{sent}");
    }
    // A body not declared as JSON is refused as such, as on every other JSON route.
    let untyped = w.on_behalf(Method::POST, "/auth-profiles/team-app/connect", w.alice.id).body("{}").send();
    assert_eq!(body(untyped.await.unwrap(), 415).await["code"], "unsupported_media_type");
    // Any JSON media type is JSON here too.
    let typed = w.on_behalf(Method::POST, "/auth-profiles/team-app/connect", w.alice.id);
    let typed = typed.header("content-type", "application/merge-patch+json").body("{}").send();
    assert_eq!(typed.await.unwrap().status(), StatusCode::OK);
    // As an admin he may; demoted again before he opens the link, he may not.
    let role = |role: &str| {
        w.app
            .admin(Method::POST, &format!("/admin/teams/{}/members", w.team))
            .json(&json!({"user_id": w.bob.id, "role": role}))
            .send()
    };
    assert_eq!(role("admin").await.unwrap().status(), StatusCode::OK);
    let link = w.connect_link(w.bob.id, "team-app", false).await;
    assert_eq!(role("member").await.unwrap().status(), StatusCode::OK);
    let opened = w.bob.browser.get(&link).await;
    assert_eq!(body(opened, 403).await["code"], "not_team_admin");
    assert_eq!(w.app.db.sql().await.count("connect_tokens").await, 1, "a refused link is not used up");
}

async fn a_refresh_during_a_reconnection_does_not_conflict(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("busy-reconnect").await;
    let link = w.connect_link(w.alice.id, &slug, false).await;
    let callback = start_flow(&mut w.alice.browser, &link).await;
    // While Alice is at the provider, a backend's request refreshes the token.
    w.expire_soon(&slug).await;
    assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], true);
    let page = w.alice.browser.finish_connect(&callback).await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.text().await);
    assert_eq!(w.sql_profile(&slug).await["version"], 2, "connected twice; the refresh is not a connection");
}

async fn reconnecting_without_a_new_refresh_token_keeps_the_old_one(backend: Backend) {
    let mut w = world(backend).await;
    w.issuer.set_next_user(StubUser::new("same-account", "same@provider.example"));
    let slug = w.connected("kept").await;
    // Like Google after the first consent: the code exchange brings no refresh token.
    w.issuer.refresh_token_on_code_exchange(false);
    let link = w.connect_link(w.alice.id, &slug, false).await;
    w.issuer.set_next_user(StubUser::new("same-account", "same@provider.example"));
    assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
    w.expire_soon(&slug).await;
    assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], true, "the old one still refreshes");
    // Another account's connection does not inherit the previous account's refresh token.
    let link = w.connect_link(w.alice.id, &slug, true).await;
    w.issuer.set_next_user(StubUser::new("other-account", "other@provider.example"));
    assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
    assert_eq!(count(&w.app, "WHERE refresh_token IS NULL AND upstream_account_id = 'other-account'").await, 1);
}

async fn a_new_link_keeps_its_pending_profile_alive(backend: Backend) {
    let w = world(backend).await;
    body(w.create(w.alice.id, profile_request(None)).await, 201).await;
    let sql = w.app.db.sql().await;
    let soon = sql_time(backend, 1);
    sql.exec(&format!("UPDATE auth_profiles SET pending_expires_at = {soon}")).await.unwrap();
    // Reused with a fresh link: the profile now outlives the link, so the janitor cannot delete
    // it (and the link with it) first.
    body(w.create(w.alice.id, profile_request(None)).await, 200).await;
    let link_lifetime = sql_time(backend, 29);
    assert_eq!(count(&w.app, &format!("WHERE pending_expires_at > {link_lifetime}")).await, 1);
}

async fn a_refresh_survives_its_client_hanging_up(backend: Backend) {
    let mut w = world(backend).await;
    let slug = w.connected("hung-up").await;
    w.issuer.rotate_refresh_tokens(true);
    w.expire_soon(&slug).await;
    w.issuer.set_token_delay(Duration::from_secs(3));
    let request = w.on_behalf(Method::POST, &format!("/auth-profiles/{slug}/token"), w.alice.id).send();
    let waiting = tokio::spawn(request);
    let sql = w.app.db.sql().await;
    eventually("the refresh has begun", || async {
        sql.count("auth_profiles WHERE refresh_lease_owner IS NOT NULL").await == 1
    })
    .await;
    // The client hangs up while the provider is still answering (and rotating the token).
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    // The refresh still lands, rotated refresh token included.
    eventually("the refresh is stored", || async { sql.count("auth_profiles WHERE token_version = 2").await == 1 })
        .await;
    w.issuer.set_token_delay(Duration::ZERO);
    assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], false, "stored, not lost");
    assert_eq!(w.issuer.refreshes(), 1);
    w.expire_soon(&slug).await;
    assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], true, "the rotated token works");
}

/// The browser leaves the callback while the provider is answering the code exchange (the tab
/// closed, say): the code is spent by then, and the tokens it brought are stored — the profile
/// connects — rather than dropped half-way, live at the provider and nowhere here.
async fn a_connection_survives_its_browser_leaving_the_callback(backend: Backend) {
    let mut w = world(backend).await;
    let created = body(w.create(w.alice.id, profile_request(Some("left"))).await, 201).await;
    let callback = start_flow(&mut w.alice.browser, created["connect_url"].as_str().unwrap()).await;
    w.issuer.set_answer_delay(Duration::from_secs(3));
    let waiting = tokio::spawn(w.alice.browser.prepared(Method::GET, &callback).send());
    let sql = w.app.db.sql().await;
    eventually("the callback took its flow", || async { sql.count("login_states").await == 0 }).await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    eventually("the connection is stored", || async {
        sql.count("auth_profiles WHERE slug = 'left' AND status = 'active' AND access_token IS NOT NULL").await == 1
    })
    .await;
    w.issuer.set_answer_delay(Duration::ZERO);
    assert_eq!(body(w.token(w.alice.id, "left").await, 200).await["refreshed"], false);
}

/// SQLite only: its write lock, held from a connection of the test's, is how a database that
/// fails writes for a while is made (every writer waits, and fails when its busy timeout of 5 s
/// runs out); PostgreSQL has no such timeout configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_that_cannot_be_stored_at_once_is_stored_when_the_database_is_back() {
    let mut w = world(Backend::Sqlite).await;
    let slug = w.connected("busy").await;
    w.issuer.rotate_refresh_tokens(true);
    w.expire_soon(&slug).await;
    w.issuer.set_token_delay(Duration::from_millis(2000));
    let request = w.token(w.alice.id, &slug);
    let sql = w.app.db.sql().await;
    let Sql::Sqlite(pool) = w.app.db.sql().await else { unreachable!("SQLite") };
    let (answer, ()) = tokio::join!(request, async {
        eventually("the refresh lease is taken", || async {
            sql.count("auth_profiles WHERE refresh_lease_owner IS NOT NULL").await == 1
        })
        .await;
        // The provider answers (rotating the refresh token, revoking the old one) while every
        // write waits: the first attempt to store its answer fails when the busy timeout ends.
        let mut lock = pool.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await.unwrap();
        assert_eq!(w.issuer.refreshes(), 0, "the lock is held before the provider answers");
        // It answers at 2 s; the write that follows waits its 5 s busy timeout, fails, and is
        // tried again: the lock goes 8 s after the answer, well after that first attempt failed
        // however late it began (timed from the answer, not from the lease).
        eventually("the provider answers", || async { w.issuer.refreshes() == 1 }).await;
        tokio::time::sleep(Duration::from_millis(8000)).await;
        sqlx::query("ROLLBACK").execute(&mut *lock).await.unwrap();
    });
    // The request gets the stored token once it has waited 5 s (a minute is left); the refresh
    // goes on in its task.
    assert_eq!(body(answer, 200).await["refreshed"], false);
    eventually("stored once the lock was gone", || async {
        sql.count("auth_profiles WHERE token_version = 2").await == 1
    })
    .await;
    w.issuer.set_token_delay(Duration::ZERO);
    w.expire_soon(&slug).await;
    assert_eq!(body(w.token(w.alice.id, &slug).await, 200).await["refreshed"], true, "the rotated token works");
    assert_eq!(w.issuer.refreshes(), 2);
}

async fn the_last_owner_cannot_step_down(backend: Backend) {
    let mut w = world(backend).await;
    let demote = json!({"user_id": w.alice.id, "role": "member"});
    let own = w.alice.browser.json(Method::POST, &w.url("/members"), &demote).await;
    assert_eq!(body(own, 409).await["code"], "last_owner");
    let admin = w.app.admin(Method::POST, &format!("/admin/teams/{}/members", w.team)).json(&demote).send();
    assert_eq!(body(admin.await.unwrap(), 409).await["code"], "last_owner");
    // With a second owner, she may; then he is the last one.
    let promote = json!({"user_id": w.bob.id, "role": "owner"});
    assert_eq!(w.alice.browser.json(Method::POST, &w.url("/members"), &promote).await.status(), StatusCode::OK);
    assert_eq!(w.alice.browser.json(Method::POST, &w.url("/members"), &demote).await.status(), StatusCode::OK);
    let bob_down = json!({"user_id": w.bob.id, "role": "admin"});
    let refused = w.bob.browser.json(Method::POST, &w.url("/members"), &bob_down).await;
    assert_eq!(body(refused, 409).await["code"], "last_owner");
}

/// `PATCH …/members/{user_id}` changes a member's role and never adds anyone: an owner whose
/// screen still shows someone who left does not put them back (`POST …/members` would).
async fn a_role_change_never_puts_back_a_member_who_left(backend: Backend) {
    let mut w = world(backend).await;
    let sql = w.app.db.sql().await;
    let team_id = body(w.app.admin(Method::GET, &format!("/admin/teams/{}", w.team)).send().await.unwrap(), 200).await
        ["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bobs =
        format!("memberships WHERE team_id = {} AND user_id = {}", sql.uuid(&team_id), sql.uuid(&w.bob.id.to_string()));
    let bob = w.url(&format!("/members/{}", w.bob.id));
    let admin = json!({"role": "admin"});
    let promoted = body(w.alice.browser.json(Method::PATCH, &bob, &admin).await, 200).await;
    assert_eq!(
        (promoted["user_id"].as_str(), promoted["role"].as_str()),
        (Some(&*w.bob.id.to_string()), Some("admin"))
    );
    assert_eq!(body(w.alice.browser.json(Method::PATCH, &bob, &admin).await, 200).await["role"], "admin", "again");
    // Refused as a POST's body would be: a role it does not know, a member named in the body.
    for (wrong, code) in [
        (json!({"role": "boss"}), "invalid_role"),
        (json!({}), "missing_field"),
        (json!({"role": "member", "user_id": w.alice.id}), "invalid_request"),
    ] {
        assert_eq!(body(w.alice.browser.json(Method::PATCH, &bob, &wrong).await, 400).await["code"], code, "{wrong}");
    }
    // Bob leaves; the owner's role change finds nobody, through either door.
    assert_eq!(w.bob.browser.request(Method::DELETE, &bob).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(body(w.alice.browser.json(Method::PATCH, &bob, &admin).await, 404).await["code"], "member_not_found");
    let by_admin = w.app.admin(Method::PATCH, &format!("/admin/teams/{}/members/{}", w.team, w.bob.id)).json(&admin);
    assert_eq!(body(by_admin.send().await.unwrap(), 404).await["code"], "member_not_found");
    assert_eq!(sql.count(&bobs).await, 0, "not put back");
    // The last owner cannot step down this way either.
    let alice = w.url(&format!("/members/{}", w.alice.id));
    let down = w.alice.browser.json(Method::PATCH, &alice, &json!({"role": "member"})).await;
    assert_eq!(body(down, 409).await["code"], "last_owner");
    // A leave and a role change at once, many times: whichever comes first, Bob is not a member.
    let add = json!({"user_id": w.bob.id, "role": "member"});
    let mut changes_through_the_admin_token = 0;
    for _ in 0..5 {
        let added = w.alice.browser.json(Method::POST, &w.url("/members"), &add).await;
        assert_eq!(added.status(), StatusCode::CREATED);
        let path = format!("/members/{}", w.bob.id);
        let leave = w.on_behalf(Method::DELETE, &path, w.bob.id);
        let change = w.on_behalf(Method::PATCH, &path, w.alice.id).json(&admin);
        let answers = send_at_once(&[leave, change]).await;
        assert_eq!(answers[0].status(), StatusCode::NO_CONTENT);
        assert!(matches!(answers[1].status().as_u16(), 200 | 404), "{:?}", answers[1].status());
        changes_through_the_admin_token += i64::from(answers[1].status() == StatusCode::OK);
        assert_eq!(sql.count(&bobs).await, 0, "not put back");
    }
    // Each role that changed is in the audit log once: Alice's own, and the admin token's for her.
    let changed = sql.count("audit_events WHERE action = 'team.member_role_changed'").await;
    let admin_token =
        sql.count("audit_events WHERE action = 'team.member_role_changed' AND actor_kind = 'admin_token'").await;
    assert_eq!((changed - admin_token, admin_token), (1, changes_through_the_admin_token));
}

/// An owner may make anyone an owner of their team, and then leave it: the user so made the last
/// owner must not be held there for good. Alone in it, they may leave, and the team goes with
/// them; their own default team they cannot leave that way.
async fn the_last_owner_alone_in_a_team_may_leave_it_and_the_team_goes(backend: Backend) {
    let mut w = world(backend).await;
    let carol = sign_in(&w.app, &w.issuer, "carol").await;
    let (carol_id, mut carol_browser) = (carol.id, carol.browser);
    let own_team = body(carol_browser.me(&w.app).await, 200).await["teams"][0]["slug"].as_str().unwrap().to_owned();
    let made_owner =
        w.alice.browser.json(Method::POST, &w.url("/members"), &json!({"user_id": carol_id, "role": "owner"})).await;
    assert_eq!(made_owner.status(), StatusCode::CREATED);
    let alice_left = w.alice.browser.request(Method::DELETE, &w.url(&format!("/members/{}", w.alice.id))).await;
    assert_eq!(alice_left.status(), StatusCode::NO_CONTENT);
    // With a member beside her, the last owner still cannot leave.
    let leave = w.url(&format!("/members/{carol_id}"));
    assert_eq!(body(carol_browser.request(Method::DELETE, &leave).await, 409).await["code"], "last_owner");
    let bob_removed = carol_browser.request(Method::DELETE, &w.url(&format!("/members/{}", w.bob.id))).await;
    assert_eq!(bob_removed.status(), StatusCode::NO_CONTENT);
    // Alone now: an admin still may not remove her, but she may leave, and the team goes.
    let by_admin = w.app.admin(Method::DELETE, &format!("/admin/teams/{}/members/{carol_id}", w.team)).send();
    assert_eq!(body(by_admin.await.unwrap(), 409).await["code"], "last_owner");
    assert_eq!(carol_browser.request(Method::DELETE, &leave).await.status(), StatusCode::NO_CONTENT);
    let gone = w.app.admin(Method::GET, &format!("/admin/teams/{}", w.team)).send().await.unwrap();
    assert_eq!(body(gone, 404).await["code"], "team_not_found");
    let teams = body(carol_browser.me(&w.app).await, 200).await["teams"].clone();
    assert_eq!(teams.as_array().unwrap().len(), 1, "her own team only: {teams}");
    let sql = w.app.db.sql().await;
    let removed = sql
        .texts("SELECT CAST(payload AS TEXT) FROM outbox_events WHERE topic = 'team.member.removed' ORDER BY seq")
        .await;
    let removed: Vec<Value> = removed.iter().map(|text| serde_json::from_str(text).unwrap()).collect();
    let deleted: Vec<&Value> = removed.iter().filter(|event| event["team_deleted"] == true).collect();
    assert_eq!(deleted.len(), 1, "{removed:?}");
    assert_eq!(deleted[0]["user_id"], carol_id.to_string());
    assert_eq!(removed.iter().filter(|event| event["team_deleted"] == false).count(), 2, "Alice's and Bob's");
    // Her audit row says the team went with her.
    let audited = sql
        .texts(&format!(
            "SELECT CAST(details AS TEXT) FROM audit_events WHERE action = 'team.member_removed' AND actor_id = '{carol_id}'"
        ))
        .await;
    let audited: Vec<Value> = audited.iter().map(|text| serde_json::from_str(text).unwrap()).collect();
    assert_eq!(audited.len(), 2, "Bob's removal and her leaving: {audited:?}");
    assert_eq!(audited.iter().filter(|details| details["team_deleted"] == true).count(), 1, "{audited:?}");
    // Leaving through the admin token acting for her, its row says so as well.
    let lone = json!({"slug": "lone", "name": "Lone", "owner": carol_id});
    body(w.app.admin(Method::POST, "/admin/teams").json(&lone).send().await.unwrap(), 201).await;
    let leave = w.app.client.delete(w.app.url(&format!("/v1/teams/lone/members/{carol_id}"))).bearer_auth(ADMIN_TOKEN);
    let left = leave.header("x-on-behalf-of", carol_id.to_string()).send().await.unwrap();
    assert_eq!(left.status(), StatusCode::NO_CONTENT);
    let audited = sql
        .texts("SELECT CAST(details AS TEXT) FROM audit_events WHERE action = 'team.member_removed' AND actor_kind = 'admin_token'")
        .await;
    let audited: Vec<Value> = audited.iter().map(|text| serde_json::from_str(text).unwrap()).collect();
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["team_deleted"], true, "{audited:?}");
    assert_eq!(audited[0]["on_behalf_of"], carol_id.to_string(), "{audited:?}");
    // Her default team, which she is alone in, she cannot leave.
    let own = w.app.url(&format!("/v1/teams/{own_team}/members/{carol_id}"));
    assert_eq!(body(carol_browser.request(Method::DELETE, &own).await, 409).await["code"], "last_owner");
}

async fn concurrent_adds_of_one_member_make_one_membership(backend: Backend) {
    let w = world(backend).await;
    let carol = sign_in(&w.app, &w.issuer, "carol").await;
    let path = format!("/admin/teams/{}/members", w.team);
    let sql = w.app.db.sql().await;
    let added = "outbox_events WHERE topic = 'team.member.added'";
    let before = sql.count(added).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let role = if i % 2 == 0 { "member" } else { "admin" };
        // Some with the id padded, as a directory sync may send it (trimmed, as `owner` is).
        let user_id = if i % 4 == 1 { format!(" {} ", carol.id) } else { carol.id.to_string() };
        let request = w.app.admin(Method::POST, &path).json(&json!({"user_id": user_id, "role": role}));
        tasks.push(tokio::spawn(async move { request.send().await.unwrap().status() }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(sql.count(&format!("memberships WHERE user_id = {}", sql.uuid(&carol.id.to_string()))).await, 2);
    // One `team.member.added` event: the others changed a role, or nothing.
    assert_eq!(sql.count(added).await - before, 1);
}

async fn disabling_a_user_ends_their_browser_sessions(backend: Backend) {
    let mut w = world(backend).await;
    body(w.bob.browser.me(&w.app).await, 200).await;
    let path = format!("/admin/users/{}", w.bob.id);
    let disable = w.app.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap();
    assert_eq!(disable.status(), StatusCode::OK);
    assert_eq!(body(w.bob.browser.me(&w.app).await, 401).await["code"], "missing_credentials");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count(&format!("sessions WHERE user_id = {}", sql.uuid(&w.bob.id.to_string()))).await, 0);
    // Enabling him again does not bring the session back; Alice's is untouched.
    let enable = w.app.admin(Method::PATCH, &path).json(&json!({"disabled": false})).send().await.unwrap();
    assert_eq!(enable.status(), StatusCode::OK);
    assert_eq!(w.bob.browser.me(&w.app).await.status(), StatusCode::UNAUTHORIZED);
    body(w.alice.browser.me(&w.app).await, 200).await;
}

/// Several disables of one user at once (an operator's retries, two consoles): each answers
/// 200, the user's sessions end, and there is one `user.disabled` event, one `session.revoked`
/// for them all and one audit row, not one per request.
async fn concurrent_disables_of_one_user_end_their_sessions_once(backend: Backend) {
    let w = world(backend).await;
    for _ in 0..2 {
        sign_in(&w.app, &w.issuer, "bob").await;
    }
    let sql = w.app.db.sql().await;
    let bobs_sessions = format!("sessions WHERE user_id = {}", sql.uuid(&w.bob.id.to_string()));
    assert_eq!(sql.count(&bobs_sessions).await, 3);
    let counts = || async {
        [
            sql.count("outbox_events WHERE topic = 'user.disabled'").await,
            sql.count("outbox_events WHERE topic = 'session.revoked'").await,
            sql.count("audit_events WHERE action = 'user.disabled'").await,
        ]
    };
    let before = counts().await;
    let path = format!("/admin/users/{}", w.bob.id);
    let disable = w.app.admin(Method::PATCH, &path).json(&json!({"disabled": true}));
    for answer in send_at_once(&(0..8).map(|_| disable.try_clone().unwrap()).collect::<Vec<_>>()).await {
        assert_eq!(answer.status(), StatusCode::OK);
    }
    assert_eq!(sql.count(&bobs_sessions).await, 0);
    let after = counts().await;
    assert_eq!([after[0] - before[0], after[1] - before[1], after[2] - before[2]], [1, 1, 1], "once each");
}

/// Several removals of one member at once (owners clicking together, the member leaving): one
/// succeeds, the others find no member — to the owners, the member is not found; to the member
/// leaving, the team, which is no longer theirs, whether or not their leave had started — and the
/// removal's event and audit row are written once.
async fn concurrent_removals_of_one_member_remove_them_once(backend: Backend) {
    let w = world(backend).await;
    let sql = w.app.db.sql().await;
    let bobs = format!("memberships WHERE user_id = {}", sql.uuid(&w.bob.id.to_string()));
    assert_eq!(sql.count(&bobs).await, 2, "his own team and Alice's");
    let counts = || async {
        [
            sql.count("outbox_events WHERE topic = 'team.member.removed'").await,
            sql.count("audit_events WHERE action = 'team.member_removed'").await,
        ]
    };
    let before = counts().await;
    let path = format!("/admin/teams/{}/members/{}", w.team, w.bob.id);
    let remove = w.app.admin(Method::DELETE, &path);
    let mut removals: Vec<reqwest::RequestBuilder> = (0..8).map(|_| remove.try_clone().unwrap()).collect();
    let leave = w.bob.browser.prepared(Method::DELETE, &w.url(&format!("/members/{}", w.bob.id)));
    removals.extend((0..4).map(|_| leave.try_clone().unwrap()));
    let answers = send_at_once(&removals).await;
    let done = answers.iter().filter(|a| a.status() == StatusCode::NO_CONTENT).count();
    assert_eq!(done, 1, "{:?}", answers.iter().map(reqwest::Response::status).collect::<Vec<_>>());
    assert!(answers.iter().all(|a| matches!(a.status().as_u16(), 204 | 404)));
    for (i, answer) in answers.into_iter().enumerate().filter(|(_, a)| a.status() == StatusCode::NOT_FOUND) {
        let expected = if i < 8 { "member_not_found" } else { "team_not_found" };
        assert_eq!(body(answer, 404).await["code"], expected, "answer {i}");
    }
    assert_eq!(sql.count(&bobs).await, 1, "his own team only");
    let after = counts().await;
    assert_eq!([after[0] - before[0], after[1] - before[1]], [1, 1], "once each");
}

/// A refresh the provider fails leaves the stored token to hand out while it lasts — as the row
/// is after the call, not before it: a profile revoked while the provider was asked hands out
/// nothing.
async fn a_failed_refresh_never_hands_out_the_token_of_a_profile_revoked_meanwhile(backend: Backend) {
    let mut w = world(backend).await;
    // A provider failing, and one refusing the refresh token (the revocation revoked it there):
    // the profile is gone, as a refresh that succeeded would say, not "try again".
    for (slug, fault) in [("revoked-meanwhile", TokenFault::ServerError(503)), ("refused", TokenFault::InvalidGrant)] {
        let slug = w.connected(slug).await;
        w.expire_soon(&slug).await;
        let refreshes = w.issuer.refreshes();
        w.issuer.fail_next_token_request(fault);
        // Answered well after the revocation below (a bound, not a timing: a slower revocation
        // makes the refused refresh mark the profile for reconnection, and the test fail).
        w.issuer.set_answer_delay(Duration::from_secs(4));
        let request = w.on_behalf(Method::POST, &format!("/auth-profiles/{slug}/token"), w.alice.id).send();
        let waiting = tokio::spawn(request);
        eventually("the refresh reaches the provider", || async { w.issuer.refreshes() > refreshes }).await;
        let revoked = w.on_behalf(Method::DELETE, &format!("/auth-profiles/{slug}"), w.alice.id).send().await.unwrap();
        assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
        let answer = waiting.await.unwrap().unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert_ne!(status, StatusCode::OK, "{text}");
        assert!(!text.contains("access_token"), "{text}");
        assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
        assert!(text.contains("profile_not_found"), "{text}");
        w.issuer.set_answer_delay(Duration::ZERO);
    }
}

/// A refresh whose answer comes back after a reconnection (to another account) took its lease:
/// its caller gets the reconnection's token, which the row holds, not the old grant's — also
/// when that token is too near its end to be handed out in place of a refresh — and the old
/// account's new tokens are revoked at the provider.
async fn a_refresh_that_lost_its_lease_to_a_reconnection_hands_out_the_new_connections_token(backend: Backend) {
    let mut w = world(backend).await;
    for (slug, ttl) in [("switched", 3600), ("switched-short", 20)] {
        w.issuer.set_access_token_ttl(3600);
        w.issuer.set_next_user(StubUser::new("old-account", "old@provider.example"));
        let slug = w.connected(slug).await;
        let waiting = w.refresh_answered_late(&slug).await;
        w.issuer.set_access_token_ttl(ttl);
        let link = w.connect_link(w.alice.id, &slug, true).await;
        w.issuer.set_next_user(StubUser::new("new-account", "new@provider.example"));
        assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
        assert_eq!(w.sql_profile(&slug).await["upstream_account_id"], "new-account");
        let revoked = w.issuer.revocations();
        let answer = body(waiting.await.unwrap().unwrap(), 200).await;
        // The old account's new tokens are no one's: revoked at the provider, not left live.
        assert_eq!(w.issuer.revocations(), revoked + 1, "ttl {ttl}: the late refresh's tokens are revoked");
        // Whose token it is, as the provider says.
        let whose = reqwest::Client::new()
            .get(format!("{}/userinfo", w.issuer.issuer()))
            .bearer_auth(answer["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(
            body(whose, 200).await["sub"],
            "new-account",
            "ttl {ttl}: the reconnection's token, not the old grant's"
        );
    }
}

/// A refresh whose answer comes back after a reconnection of the same account whose code
/// exchange brought no refresh token (so the row kept the one the refresh spent): the provider's
/// rotated refresh token is kept, not lost with the answer — the next refresh works.
async fn a_refresh_that_lost_its_lease_to_a_same_account_reconnection_keeps_its_rotated_token(backend: Backend) {
    let mut w = world(backend).await;
    w.issuer.set_next_user(StubUser::new("same-account", "same@provider.example"));
    let slug = w.connected("kept-rotation").await;
    w.issuer.rotate_refresh_tokens(true);
    w.issuer.refresh_token_on_code_exchange(false);
    let waiting = w.refresh_answered_late(&slug).await;
    let link = w.connect_link(w.alice.id, &slug, false).await;
    w.issuer.set_next_user(StubUser::new("same-account", "same@provider.example"));
    assert_eq!(connect(&mut w.alice.browser, &link).await.status(), StatusCode::OK);
    body(waiting.await.unwrap().unwrap(), 200).await;
    w.expire_soon(&slug).await;
    let next = body(w.token(w.alice.id, &slug).await, 200).await;
    assert_eq!(next["refreshed"], true, "the rotated refresh token was kept: {next}");
}
