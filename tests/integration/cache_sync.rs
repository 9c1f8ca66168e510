//! Cache invalidation across instances: two servers on one database (one SQLite file, or one
//! PostgreSQL database), each with its own caches. A change made through A is honoured by B
//! within a second, although B had the user, the identity or the client cached: principals are
//! cached for 60 s and clients for 10 s, so without the cache-invalidation log B would answer
//! from its cache (the first story shows it with a third instance that reads the log once a
//! minute only).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use tessera::config::{Config, DatabaseUrl};
use tessera::crypto::keyring::KeyRing;
use tessera::domain::{IdentityId, Issuer, Subject, UserId};
use tessera::store::{LinkOutcome, NewLink, NewSession};
use tessera_testkit::local_issuer::LocalIssuer;

use crate::helpers::{
    AUDIENCE, Backend, Sql, TestApp, TestDb, eventually_within, json as body, local_issuer_config, on_both_backends,
};

on_both_backends!(
    a_user_disabled_on_one_instance_is_refused_by_another_promptly,
    an_identity_unlinked_on_one_instance_stops_resolving_on_another_promptly,
    a_membership_removed_on_one_instance_fails_the_check_on_another_promptly,
    a_default_team_created_on_one_instance_is_seen_by_both_promptly,
    a_client_given_a_new_secret_or_deleted_on_one_instance_is_refused_by_another_promptly,
    a_session_cached_by_another_instance_follows_membership_changes_and_sign_out_promptly,
    a_role_change_and_a_team_deletion_on_one_instance_show_on_another_promptly,
    a_new_primary_identity_sign_out_elsewhere_and_deletion_show_on_another_promptly,
    cached_principals_answer_through_a_database_outage,
    a_new_algorithms_first_key_is_published_by_every_instance_promptly,
    a_log_that_went_back_is_followed_from_its_new_head,
    a_log_that_went_back_and_past_an_instances_cursor_while_it_could_not_poll_is_noticed,
);

/// How long a test waits for the other instance. The product's bound is 1 s (the default poll
/// every 250 ms, so four polls); each test prints the latency it measured (0.08–0.35 s on a busy
/// 2-core machine). The assertion allows five times that bound, because tests must not fail on
/// the timing of a loaded CI machine; a third instance polling once a minute shows that the
/// check does fail when the log is not read.
const BOUND: Duration = Duration::from_secs(5);

/// Instances A and B (and more, on request) sharing one database, with the OpenID Provider on.
struct Cluster {
    a: TestApp,
    b: TestApp,
    issuer: LocalIssuer,
    config: Config,
    db: TestDb,
}

async fn cluster(backend: Backend) -> Cluster {
    let issuer = LocalIssuer::start().await.unwrap();
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.issuers.push(local_issuer_config(&issuer));
    let ring = format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
    config.encryption = Some(Arc::new(KeyRing::parse(&ring).unwrap()));
    let a = TestApp::start(db.share(), &config).await;
    let b = TestApp::start(db.share(), &config).await;
    started(&a).await;
    started(&b).await;
    Cluster { a, b, issuer, config, db }
}

impl Cluster {
    fn token(&self, subject: &str) -> String {
        self.issuer.sign("rsa-1", &self.issuer.claims(subject, AUDIENCE))
    }

    /// Another instance on the same database, with the configuration changed by `adjust`.
    async fn another(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.config.clone();
        adjust(&mut config);
        let app = TestApp::start(self.db.share(), &config).await;
        started(&app).await;
        app
    }

    /// Starts an hour's session for `user` (written straight to the store) whose cookie value is
    /// `value`; returns the `Cookie` header's `name=value`.
    async fn session_of(&self, user: &str, value: &str) -> String {
        let now = tessera::domain::now();
        let session = NewSession {
            token_hash: tessera::crypto::sha256(value.as_bytes()),
            user_id: user.parse::<UserId>().unwrap(),
            identity_id: None,
            device: None,
            authenticated_at: None,
            now,
            expires_at: now + chrono::TimeDelta::hours(1),
        };
        self.a.store.start_session(&session, None, &[]).await.unwrap();
        let name = if self.config.auth.cookie_secure { "__Host-tessera_session" } else { "tessera_session" };
        format!("{name}={value}")
    }

    /// Links the local issuer's `subject` to `user` (written straight to the store); returns the
    /// new identity's id.
    async fn link(&self, user: &str, subject: &str) -> IdentityId {
        let link = NewLink {
            identity_id: IdentityId::generate(),
            issuer: Issuer::parse(self.issuer.issuer()).unwrap(),
            subject: Subject::parse(subject).unwrap(),
            provider: "local".into(),
            email: None,
            email_verified: false,
            now: tessera::domain::now(),
            audit: None,
            by_email: None,
        };
        let linked = self.a.store.link_identity(user.parse::<UserId>().unwrap(), &link).await.unwrap();
        assert!(matches!(linked, LinkOutcome::Linked(_)));
        link.identity_id
    }

    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

/// Validates `token` on `app`; returns the user id.
async fn user_of(app: &TestApp, token: &str) -> String {
    body(app.validate(token).await, 200).await["user_id"].as_str().unwrap().to_owned()
}

/// How long an instance may take to read the log at all (its next poll, on a loaded machine).
const READ_BOUND: Duration = Duration::from_secs(30);

/// Waits until each of `apps` has read the log in a read that began after this call, and so has
/// applied every change committed before it: what a test caches next is not purged by an earlier
/// change.
async fn settle(apps: &[&TestApp]) {
    let since = Instant::now();
    eventually_within("every instance has read the log", READ_BOUND, || async {
        apps.iter().all(|app| app.cache_sync.last_read_at().is_some_and(|at| at > since))
    })
    .await;
}

/// Waits until `app` has read the log once: its first read forgets whatever was cached before,
/// so a test caches nothing on it until then.
async fn started(app: &TestApp) {
    eventually_within("the instance has read the log", READ_BOUND, || async {
        app.cache_sync.last_read_at().is_some()
    })
    .await;
}

/// Waits until `condition` holds on the other instance, failing after [`BOUND`] from `since`
/// (when the change's response arrived); returns how long it took.
async fn honoured_within_bound<F, Fut>(what: &str, since: Instant, condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, BOUND.saturating_sub(since.elapsed()), condition).await;
    let took = since.elapsed();
    eprintln!("{what}: honoured by the other instance after {took:?}");
    took
}

/// A response's status and problem `code` (empty for a success).
async fn code_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    (status, answer["code"].as_str().unwrap_or_default().to_owned())
}

fn refused(code: &str) -> (u16, String) {
    (403, code.to_owned())
}

async fn a_user_disabled_on_one_instance_is_refused_by_another_promptly(backend: Backend) {
    let c = cluster(backend).await;
    // The control: an instance that reads the log once a minute answers from its cache.
    let slow = c.another(|config| config.cache.sync_interval = Duration::from_secs(60)).await;
    let token = c.token("to-disable");
    let user = user_of(&c.a, &token).await;
    settle(&[&c.a, &c.b]).await;
    for app in [&c.b, &slow] {
        assert_eq!(user_of(app, &token).await, user, "cached on this instance now");
    }

    let changed = Instant::now();
    let path = format!("/admin/users/{user}");
    body(c.a.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    honoured_within_bound("a disabled user is refused", changed, || async {
        code_of(c.b.validate(&token).await).await == refused("user_disabled")
    })
    .await;
    assert_eq!(body(c.a.validate(&token).await, 403).await["code"], "user_disabled");
    let (status, _) = code_of(slow.validate(&token).await).await;
    assert_eq!(status, 200, "without reading the log, the cache still answers: the test above can fail");

    // Enabled again: the cached refusal is not a thing (refusals are never cached).
    body(c.a.admin(Method::PATCH, &path).json(&json!({"disabled": false})).send().await.unwrap(), 200).await;
    assert_eq!(user_of(&c.b, &token).await, user);
    slow.stop().await;
    c.stop().await;
}

async fn an_identity_unlinked_on_one_instance_stops_resolving_on_another_promptly(backend: Backend) {
    let c = cluster(backend).await;
    let (first, second) = (c.token("first-identity"), c.token("second-identity"));
    let user = user_of(&c.a, &first).await;
    c.link(&user, "second-identity").await;
    assert_eq!(user_of(&c.a, &second).await, user, "both identities are the user's");
    settle(&[&c.a, &c.b]).await;
    assert_eq!(user_of(&c.b, &first).await, user, "cached on B now");
    let me = body(c.a.client.get(c.a.url("/v1/me")).bearer_auth(&second).send().await.unwrap(), 200).await;
    let first_id = me["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["subject"] == "first-identity")
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .unwrap();

    let changed = Instant::now();
    let unlink = c.a.client.delete(c.a.url(&format!("/v1/me/identities/{first_id}"))).bearer_auth(&second);
    assert_eq!(unlink.send().await.unwrap().status(), 204);
    // The identity is gone, so its token no longer leads to the user: with `jit` on, it
    // provisions a new one.
    honoured_within_bound("an unlinked identity no longer resolves to its former user", changed, || async {
        let response = c.b.validate(&first).await;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        status == 200 && answer["user_id"] != user.as_str()
    })
    .await;
    assert_eq!(user_of(&c.b, &second).await, user, "the other identity still resolves");
    c.stop().await;
}

async fn a_membership_removed_on_one_instance_fails_the_check_on_another_promptly(backend: Backend) {
    let c = cluster(backend).await;
    let token = c.token("member");
    let user = user_of(&c.a, &token).await;
    body(
        c.a.admin(Method::POST, "/admin/teams")
            .json(&json!({"slug": "sync-team", "name": "Sync"}))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    let add = c.a.admin(Method::POST, "/admin/teams/sync-team/members");
    let added = add.json(&json!({"user_id": user, "role": "member"})).send().await.unwrap();
    assert!(added.status().is_success(), "{}", added.status());
    settle(&[&c.a, &c.b]).await;
    let check = || c.b.client.get(c.b.url("/v1/check?team=sync-team")).bearer_auth(&token).send();
    assert_eq!(check().await.unwrap().status(), 204, "a member, as B has cached");

    let changed = Instant::now();
    let removed = c.a.admin(Method::DELETE, &format!("/admin/teams/sync-team/members/{user}")).send().await.unwrap();
    assert_eq!(removed.status(), 204);
    honoured_within_bound("a removed member fails the check", changed, || async {
        code_of(check().await.unwrap()).await == refused("not_a_member")
    })
    .await;
    c.stop().await;
}

async fn a_default_team_created_on_one_instance_is_seen_by_both_promptly(backend: Backend) {
    let c = cluster(backend).await;
    let token = c.token("teamless");
    let account = json!({"issuer": c.issuer.issuer(), "subject": "teamless", "email": "t@example.com"});
    let created = body(c.a.bootstrap(&account).await, 201).await;
    let user = created["user_id"].as_str().unwrap().to_owned();
    // A user who lost their default team (deleted behind Tessera's back, before either instance
    // resolved them), whom both instances now cache without a team.
    let sql = c.db.sql().await;
    sql.exec(&format!("DELETE FROM teams WHERE id = {}", sql.uuid(created["team"]["id"].as_str().unwrap())))
        .await
        .unwrap();
    let teams = async |app: &TestApp| body(app.validate(&token).await, 200).await["teams"].as_array().unwrap().len();
    assert_eq!((teams(&c.a).await, teams(&c.b).await), (0, 0));

    let changed = Instant::now();
    let bootstrap = c.a.admin(Method::POST, &format!("/admin/users/{user}/bootstrap")).send().await.unwrap();
    assert_eq!(bootstrap.status(), 201, "a new default team");
    assert_eq!(teams(&c.a).await, 1, "the instance that made the team sees it at once");
    honoured_within_bound("a new default team", changed, || async { teams(&c.b).await == 1 }).await;
    c.stop().await;
}

/// `GET /v1/me` with a session cookie on `app`: the status and the user's team slugs.
async fn me_by_session(app: &TestApp, cookie: &str) -> (u16, Vec<String>) {
    let response = app.client.get(app.url("/v1/me")).header("cookie", cookie);
    let response = response.send().await.unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let teams = answer["teams"]
        .as_array()
        .map_or_else(Vec::new, |teams| teams.iter().filter_map(|t| t["slug"].as_str().map(str::to_owned)).collect());
    (status, teams)
}

async fn a_session_cached_by_another_instance_follows_membership_changes_and_sign_out_promptly(backend: Backend) {
    let c = cluster(backend).await;
    let slow = c.another(|config| config.cache.sync_interval = Duration::from_secs(60)).await;
    let user = user_of(&c.a, &c.token("session-user")).await;
    let cookie = &c.session_of(&user, "a-session-cookie-value-for-the-cache-sync-story").await;
    settle(&[&c.a, &c.b]).await;
    let (status, before) = me_by_session(&c.b, cookie).await;
    assert_eq!(status, 200, "the session is live");
    assert!(!before.contains(&"session-team".to_owned()), "{before:?}");
    assert_eq!(me_by_session(&slow, cookie).await, (200, before.clone()), "cached on the slow instance now");

    // A membership added on A shows on B, which had the session and the profile cached.
    let team = c.a.admin(Method::POST, "/admin/teams").json(&json!({"slug": "session-team", "name": "Session"}));
    body(team.send().await.unwrap(), 201).await;
    let add = c.a.admin(Method::POST, "/admin/teams/session-team/members");
    let added = add.json(&json!({"user_id": user, "role": "member"})).send().await.unwrap();
    assert!(added.status().is_success(), "{}", added.status());
    let changed = Instant::now();
    honoured_within_bound("a new membership shows in the cached session's profile", changed, || async {
        me_by_session(&c.b, cookie).await.1.contains(&"session-team".to_owned())
    })
    .await;
    assert_eq!(me_by_session(&slow, cookie).await, (200, before), "the slow instance still answers from its cache");

    // A page of another origin (a sibling subdomain's, say) cannot sign the user out, even
    // without a form.
    let other_origin =
        c.a.client.post(c.a.url("/auth/logout")).header("cookie", cookie).header("sec-fetch-site", "same-site");
    assert_eq!(body(other_origin.body("x").send().await.unwrap(), 403).await["code"], "csrf_failed");
    assert_eq!(me_by_session(&c.a, cookie).await.0, 200);

    // Signed out on A: refused on A at once, and on B promptly.
    let signed_out = c.a.client.post(c.a.url("/auth/logout")).header("cookie", cookie);
    assert_eq!(signed_out.send().await.unwrap().status(), 204);
    let ended = Instant::now();
    assert_eq!(me_by_session(&c.a, cookie).await.0, 401, "refused at once where it was ended");
    honoured_within_bound("an ended session is refused", ended, || async {
        me_by_session(&c.b, cookie).await.0 == 401
    })
    .await;
    assert_eq!(me_by_session(&slow, cookie).await.0, 200, "without reading the log, the cache still answers");
    slow.stop().await;
    c.stop().await;
}

/// The role the user of `token` holds in `team`, as `app` resolves them (`None`: not a member).
async fn role_in(app: &TestApp, token: &str, team: &str) -> Option<String> {
    let answer = body(app.validate(token).await, 200).await;
    let teams = answer["teams"].as_array().unwrap();
    teams.iter().find(|t| t["slug"] == team).map(|t| t["role"].as_str().unwrap().to_owned())
}

async fn a_role_change_and_a_team_deletion_on_one_instance_show_on_another_promptly(backend: Backend) {
    let c = cluster(backend).await;
    let slow = c.another(|config| config.cache.sync_interval = Duration::from_secs(60)).await;
    let token = c.token("role-holder");
    let user = user_of(&c.a, &token).await;
    let team = c.a.admin(Method::POST, "/admin/teams").json(&json!({"slug": "roles-team", "name": "Roles"}));
    body(team.send().await.unwrap(), 201).await;
    let add = c.a.admin(Method::POST, "/admin/teams/roles-team/members");
    let added = add.json(&json!({"user_id": user, "role": "member"})).send().await.unwrap();
    assert!(added.status().is_success(), "{}", added.status());
    settle(&[&c.a, &c.b]).await;
    let member = Some("member".to_owned());
    for app in [&c.b, &slow] {
        assert_eq!(role_in(app, &token, "roles-team").await, member, "cached on this instance now");
    }

    let path = format!("/admin/teams/roles-team/members/{user}");
    let changed = Instant::now();
    body(c.a.admin(Method::PATCH, &path).json(&json!({"role": "admin"})).send().await.unwrap(), 200).await;
    honoured_within_bound("a new role", changed, || async {
        role_in(&c.b, &token, "roles-team").await.as_deref() == Some("admin")
    })
    .await;
    assert_eq!(role_in(&slow, &token, "roles-team").await, member, "without reading the log, the old role");

    let changed = Instant::now();
    let deleted = c.a.admin(Method::DELETE, "/admin/teams/roles-team").send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    honoured_within_bound("a deleted team is no longer the user's", changed, || async {
        role_in(&c.b, &token, "roles-team").await.is_none()
    })
    .await;
    let check = c.b.client.get(c.b.url("/v1/check?team=roles-team")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(code_of(check).await, refused("not_a_member"), "the check fails as for any team not the user's");
    assert_eq!(role_in(&slow, &token, "roles-team").await, member, "without reading the log, still a member");
    slow.stop().await;
    c.stop().await;
}

/// `GET /v1/me` with a session cookie on `app`: the status and the user's primary identity.
async fn primary_by_session(app: &TestApp, cookie: &str) -> (u16, Value) {
    let response = app.client.get(app.url("/v1/me")).header("cookie", cookie).send().await.unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    (status, answer["primary_identity_id"].clone())
}

async fn a_new_primary_identity_sign_out_elsewhere_and_deletion_show_on_another_promptly(backend: Backend) {
    let c = cluster(backend).await;
    let slow = c.another(|config| config.cache.sync_interval = Duration::from_secs(60)).await;
    let second = c.token("second-sign-in");
    let user = user_of(&c.a, &c.token("first-sign-in")).await;
    let second_id = c.link(&user, "second-sign-in").await;
    let kept = &c.session_of(&user, "the-session-that-signs-the-others-out").await;
    let other = &c.session_of(&user, "a-session-signed-out-from-elsewhere").await;
    settle(&[&c.a, &c.b]).await;
    let (status, before) = primary_by_session(&c.b, kept).await;
    assert_eq!(status, 200);
    assert_ne!(before, json!(second_id.to_string()), "not the primary identity yet");
    for app in [&c.b, &slow] {
        assert_eq!(primary_by_session(app, kept).await, (200, before.clone()), "cached on this instance now");
        assert_eq!(me_by_session(app, other).await.0, 200, "cached on this instance now");
    }

    // A new primary identity.
    let changed = Instant::now();
    let path = format!("/v1/me/identities/{second_id}/primary");
    let made = c.a.client.post(c.a.url(&path)).bearer_auth(&second).send().await.unwrap();
    assert!(made.status().is_success(), "{}", made.status());
    honoured_within_bound("a new primary identity", changed, || async {
        primary_by_session(&c.b, kept).await == (200, json!(second_id.to_string()))
    })
    .await;
    assert_eq!(primary_by_session(&slow, kept).await, (200, before), "without reading the log, the old one");
    // The change forgot the user's sessions on B: cached again.
    assert_eq!(me_by_session(&c.b, other).await.0, 200);

    // Signed out everywhere else, from the account page of the kept session on A.
    let account = c.a.client.get(c.a.url("/account")).header("cookie", kept).header("accept", "text/html");
    let token = crate::pages::csrf_of(&account.send().await.unwrap().text().await.unwrap());
    let form = c.a.client.post(c.a.url("/account/sessions/sign-out-others")).header("cookie", kept);
    let done = form.header("accept", "text/html").form(&[("csrf", token)]).send().await.unwrap();
    assert_eq!((done.status().as_u16(), done.url().query()), (200, Some("done=signed-out-others")), "followed");
    let changed = Instant::now();
    honoured_within_bound("a session signed out from elsewhere is refused", changed, || async {
        me_by_session(&c.b, other).await.0 == 401
    })
    .await;
    assert_eq!(me_by_session(&c.b, kept).await.0, 200, "the session that asked stays");
    assert_eq!(me_by_session(&slow, other).await.0, 200, "without reading the log, still live");

    // The user deleted: their sessions and their identities go on every instance.
    let changed = Instant::now();
    let deleted = c.a.admin(Method::DELETE, &format!("/admin/users/{user}")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    honoured_within_bound("a deleted user's session is refused", changed, || async {
        me_by_session(&c.b, kept).await.0 == 401
    })
    .await;
    // Their identity no longer leads to them: with `jit` on, it provisions someone new.
    assert_ne!(user_of(&c.b, &second).await, user);
    assert_eq!(me_by_session(&slow, kept).await.0, 200, "without reading the log, still live");
    slow.stop().await;
    c.stop().await;
}

async fn a_client_given_a_new_secret_or_deleted_on_one_instance_is_refused_by_another_promptly(backend: Backend) {
    let c = cluster(backend).await;
    let registration = json!({"id": "sync-app", "name": "Sync app", "kind": "confidential",
                              "redirect_uris": ["https://app.example.com/callback"]});
    let created = body(c.a.admin(Method::POST, "/admin/clients").json(&registration).send().await.unwrap(), 201).await;
    let old = created["client_secret"].as_str().unwrap().to_owned();
    settle(&[&c.a, &c.b]).await;
    let introspect = |secret: String| {
        c.b.client
            .post(c.b.url("/oauth/introspect"))
            .basic_auth("sync-app", Some(secret))
            .form(&[("token", "x")])
            .send()
    };
    assert_eq!(introspect(old.clone()).await.unwrap().status(), 200, "the client authenticates; B caches it");

    let changed = Instant::now();
    let rotated = body(c.a.admin(Method::POST, "/admin/clients/sync-app/secret").send().await.unwrap(), 200).await;
    let new = rotated["client_secret"].as_str().unwrap().to_owned();
    honoured_within_bound("the old secret is refused", changed, || async {
        introspect(old.clone()).await.unwrap().status() == 401
    })
    .await;
    assert_eq!(introspect(new.clone()).await.unwrap().status(), 200, "the new secret works on B");

    let changed = Instant::now();
    assert_eq!(c.a.admin(Method::DELETE, "/admin/clients/sync-app").send().await.unwrap().status(), 204);
    honoured_within_bound("a deleted client is refused", changed, || async {
        introspect(new.clone()).await.unwrap().status() == 401
    })
    .await;
    c.stop().await;
}

/// On PostgreSQL a change's sequence number is taken at insert and visible at commit: a
/// transaction that wrote its row before another one but commits after it must still be applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_after_a_later_numbered_one_is_still_applied_on_postgres() {
    let c = cluster(Backend::Postgres).await;
    let (early, late) = (c.token("commits-late"), c.token("commits-early"));
    let early_user = user_of(&c.a, &early).await;
    let late_user = user_of(&c.a, &late).await;
    settle(&[&c.a, &c.b]).await;
    assert_eq!(user_of(&c.b, &early).await, early_user);
    assert_eq!(user_of(&c.b, &late).await, late_user);

    // A transaction takes the next number and holds it, uncommitted, as a slow change would.
    let Sql::Postgres(pool) = c.db.sql().await else { unreachable!("a PostgreSQL test") };
    let mut held = pool.begin().await.unwrap();
    let early_id = uuid::Uuid::parse_str(&early_user).unwrap();
    sqlx::query("UPDATE users SET disabled = TRUE WHERE id = $1").bind(early_id).execute(&mut *held).await.unwrap();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO cache_invalidations (kind, user_id, created_at) VALUES ('user', $1, now()) RETURNING seq",
    )
    .bind(early_id)
    .fetch_one(&mut *held)
    .await
    .unwrap();

    // Another change takes the number after it and commits first; B reads past the held one.
    let path = format!("/admin/users/{late_user}");
    body(c.a.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    let later: i64 = sqlx::query_scalar("SELECT max(seq) FROM cache_invalidations").fetch_one(&pool).await.unwrap();
    assert!(later > seq, "the committed change is numbered after the held one");
    honoured_within_bound("the change that committed first is applied", Instant::now(), || async {
        code_of(c.b.validate(&late).await).await == refused("user_disabled")
    })
    .await;

    held.commit().await.unwrap();
    let committed = Instant::now();
    honoured_within_bound("the change committed late is applied", committed, || async {
        code_of(c.b.validate(&early).await).await == refused("user_disabled")
    })
    .await;
    c.stop().await;
}

/// An instance reading a replica that replays 2 s late: once it has read a change from the log, it
/// reads that user from the primary, so the lagging replica cannot bring the old user back into its
/// cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reading_a_lagging_replica_honours_a_change_made_elsewhere_promptly() {
    let issuer = LocalIssuer::start().await.unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    db.store().await.close().await;
    let replica = crate::replica::replica_url("TESSERA_TEST_PG_DELAYED_REPLICA_URL", &db);
    let delayed = crate::replica::caught_up(&replica).await;
    let mut config = db.config();
    config.issuers.push(local_issuer_config(&issuer));
    let a = TestApp::start(db.share(), &config).await;
    config.database.replica_url = Some(DatabaseUrl::parse(&replica).unwrap());
    let b = TestApp::start(db.share(), &config).await;

    let token = issuer.sign("rsa-1", &issuer.claims("behind-a-replica", AUDIENCE));
    let user = user_of(&a, &token).await;
    let id = uuid::Uuid::parse_str(&user).unwrap();
    let on_replica = || async {
        sqlx::query_scalar::<_, bool>("SELECT disabled FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&delayed)
            .await
            .unwrap()
    };
    eventually_within("the replica has the user", Duration::from_secs(20), || async {
        on_replica().await == Some(false)
    })
    .await;
    settle(&[&a, &b]).await;
    assert_eq!(user_of(&b, &token).await, user, "cached on B, read from the replica");

    let changed = Instant::now();
    let path = format!("/admin/users/{user}");
    body(a.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    honoured_within_bound("a disabled user is refused despite the lagging replica", changed, || async {
        code_of(b.validate(&token).await).await == refused("user_disabled")
    })
    .await;
    assert_eq!(on_replica().await, Some(false), "the replica really lagged behind the primary");
    a.stop().await;
    b.stop().await;
}

/// B's only request connection is held by a request that waits on a lock, so every request of
/// B that needs the database queues; a user disabled through A is still honoured by B within
/// the bound, because B reads the log on a connection of its own. (With the log read on the
/// request pool, the poll would queue too and time out, and B would go on answering from its
/// cache for as long as the lock is held.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_elsewhere_is_honoured_while_every_request_connection_is_taken() {
    let c = cluster(Backend::Postgres).await;
    let b = c
        .another(|config| {
            config.database.max_connections = 1;
            config.database.acquire_timeout = Duration::from_millis(300);
        })
        .await;
    let token = c.token("behind-a-busy-pool");
    let user = user_of(&c.a, &token).await;
    settle(&[&c.a, &c.b, &b]).await;
    assert_eq!(user_of(&b, &token).await, user, "cached on B now");

    // A request of B that reads the teams waits for this lock, holding B's one connection.
    let Sql::Postgres(locker) = c.db.sql().await else { unreachable!() };
    let mut lock = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE teams IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let waiting = tokio::spawn(b.admin(Method::GET, "/admin/teams").send());
    c.db.sql().await.until_waiting_for_a_lock("teams").await;
    assert_eq!(code_of(b.validate(&token).await).await.0, 200, "answered from B's cache");

    let changed = Instant::now();
    let path = format!("/admin/users/{user}");
    body(c.a.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    // Purged from B's cache, the user must be read again, and that read queues for the busy
    // connection (503 after B's acquire timeout): anything but the cached answer.
    honoured_within_bound("a change is honoured while B's request connections are taken", changed, || async {
        code_of(b.validate(&token).await).await.0 != 200
    })
    .await;
    lock.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().status(), 200);
    assert_eq!(code_of(b.validate(&token).await).await, refused("user_disabled"));
    b.stop().await;
    c.stop().await;
}

/// B cannot read the log (its poll waits behind a lock on the log's table) while its requests
/// read the database as usual: within the log's interval and 0.75 s, B stops answering from its
/// cache and reads the database, which says the user is disabled. The user is disabled with SQL
/// alone, so no instance could learn of it from the log; without the rule, B would answer from
/// its cache for the cache's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_read_the_log_reads_the_database_instead_of_its_cache() {
    let c = cluster(Backend::Postgres).await;
    let token = c.token("log-unreadable");
    let user = user_of(&c.b, &token).await;
    // A client too, which B caches as it authenticates.
    let registration = json!({"id": "unlogged-app", "name": "App", "kind": "confidential",
                              "redirect_uris": ["https://app.example.com/callback"]});
    let created = body(c.a.admin(Method::POST, "/admin/clients").json(&registration).send().await.unwrap(), 201).await;
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    let introspect = || {
        c.b.client
            .post(c.b.url("/oauth/introspect"))
            .basic_auth("unlogged-app", Some(secret.clone()))
            .form(&[("token", "x")])
            .send()
    };
    settle(&[&c.a, &c.b]).await;
    assert_eq!(user_of(&c.b, &token).await, user, "cached on B");
    assert_eq!(introspect().await.unwrap().status(), 200, "the client authenticates; B caches it");
    let Sql::Postgres(pool) = c.db.sql().await else { unreachable!() };
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE cache_invalidations IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    c.db.sql().await.until_waiting_for_a_lock("cache_invalidations").await;
    let id = uuid::Uuid::parse_str(&user).unwrap();
    sqlx::query("UPDATE users SET disabled = TRUE WHERE id = $1").bind(id).execute(&pool).await.unwrap();
    let changed = Instant::now();
    honoured_within_bound("an instance that cannot read the log reads the database", changed, || async {
        code_of(c.b.validate(&token).await).await == refused("user_disabled")
    })
    .await;
    // The client deleted with SQL alone: B does not answer from its cached copy either.
    sqlx::query("DELETE FROM clients WHERE id = 'unlogged-app'").execute(&pool).await.unwrap();
    let changed = Instant::now();
    honoured_within_bound("a client deleted while the log cannot be read", changed, || async {
        introspect().await.unwrap().status() == 401
    })
    .await;
    lock.rollback().await.unwrap();
    c.stop().await;
}

/// While the database cannot be reached at all, what an instance cached answers on, also once
/// the log has gone unread for longer than its bound: a read of the database is tried first, and
/// its failure falls back to the cached copy, for a principal and for a session alike.
async fn cached_principals_answer_through_a_database_outage(backend: Backend) {
    let c = cluster(backend).await;
    let b = c.another(|config| config.database.acquire_timeout = Duration::from_millis(500)).await;
    let token = c.token("through-an-outage");
    let user = user_of(&b, &token).await;
    let cookie = &c.session_of(&user, "a-session-cookie-value-through-an-outage").await;
    settle(&[&c.a, &c.b, &b]).await;
    assert_eq!(user_of(&b, &token).await, user, "cached on B now");
    let (status, teams) = me_by_session(&b, cookie).await;
    assert_eq!(status, 200, "the session is live, and cached on B now");
    crate::errors::make_database_unreachable(&b).await;
    // Longer than the log's interval and 0.75 s: the log is not fresh any more.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(user_of(&b, &token).await, user, "answered from the cache");
    assert_eq!(me_by_session(&b, cookie).await, (200, teams), "the session too");
    let stranger = c.token("never-seen-before-the-outage");
    assert_eq!(code_of(b.validate(&stranger).await).await, (503, "store_unavailable".to_owned()));
    b.stop().await;
    c.stop().await;
}

/// A first key signs at once, so every instance must publish it before a relying party can hold
/// a token it signed: it is made when a client of a new algorithm is registered, and the other
/// instances re-read the keys at once (told through the log), not at their next refresh (a
/// quarter of `jwks_max_age`: 150 s here), so a JWKS fetched from any instance after the
/// client's first token names its key.
async fn a_new_algorithms_first_key_is_published_by_every_instance_promptly(backend: Backend) {
    let c = cluster(backend).await;
    assert!(c.config.oidc.jwks_max_age >= Duration::from_secs(600), "B would not re-read by itself");
    let algs = |app: &TestApp| {
        let request = app.client.get(app.url("/oauth/jwks"));
        async move {
            let jwks: Value = request.send().await.unwrap().json().await.unwrap();
            jwks["keys"].as_array().unwrap().iter().map(|k| k["alg"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    settle(&[&c.a, &c.b]).await;
    assert_eq!(algs(&c.b).await, ["ES256"], "B's keys, read before the client exists");
    let registration = json!({"name": "RSA app", "kind": "confidential", "signing_alg": "RS256",
                              "redirect_uris": ["https://app.example.com/callback"]});
    let changed = Instant::now();
    body(c.a.admin(Method::POST, "/admin/clients").json(&registration).send().await.unwrap(), 201).await;
    assert!(algs(&c.a).await.contains(&"RS256".to_owned()), "made at registration");
    honoured_within_bound("B publishes the new key", changed, || async {
        algs(&c.b).await.contains(&"RS256".to_owned())
    })
    .await;
    c.stop().await;
}

/// An instance that cannot read the log is not told of a key retired at once on another (the
/// answer to a leaked key): it re-reads its keys rather than sign with its cached copy until their
/// refresh (a quarter of `jwks_max_age`: 150 s here). On PostgreSQL, where a lock on the log's
/// table holds back B's poll alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_read_the_log_re_reads_its_signing_keys() {
    use tessera::domain::SigningAlg;
    use tessera::service::op::keys::{SigningKeySettings, SigningKeys};
    let c = cluster(Backend::Postgres).await;
    assert!(c.config.oidc.jwks_max_age >= Duration::from_secs(600), "B would not re-read by itself");
    let registration = json!({"id": "log-job", "name": "Job", "kind": "confidential", "redirect_uris": [],
                              "grant_types": ["client_credentials"], "scopes": ["openid"]});
    let created = body(c.a.admin(Method::POST, "/admin/clients").json(&registration).send().await.unwrap(), 201).await;
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    let kid_from_b = || {
        let request = c.b.client.post(c.b.url("/oauth/token")).basic_auth("log-job", Some(secret.clone()));
        async move {
            let answer = body(request.form(&[("grant_type", "client_credentials")]).send().await.unwrap(), 200).await;
            let (header, _) = crate::op_flow::jwt_parts(answer["access_token"].as_str().unwrap());
            header["kid"].as_str().unwrap().to_owned()
        }
    };
    // The next key, made ahead of its time as a scheduled rotation makes it; both instances read it.
    let ring = c.config.encryption.clone().unwrap();
    let settings = SigningKeySettings::from_config(&c.config.oidc);
    let keys = SigningKeys::new(c.db.store().await, ring, settings).await.unwrap();
    let next = keys.rotate(SigningAlg::ES256, false).await.unwrap().kid;
    settle(&[&c.a, &c.b]).await;
    let current = kid_from_b().await;
    assert_ne!(current, next, "the next key does not sign yet");

    let Sql::Postgres(pool) = c.db.sql().await else { unreachable!() };
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE cache_invalidations IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    c.db.sql().await.until_waiting_for_a_lock("cache_invalidations").await;
    // Rotated at once, with SQL alone: B is not told.
    sqlx::query("UPDATE signing_keys SET signs_from = created_at WHERE kid = $1")
        .bind(&next)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE signing_keys SET retired_at = now(), unpublish_at = now() + interval '1 day' WHERE kid = $1")
        .bind(&current)
        .execute(&pool)
        .await
        .unwrap();
    let changed = Instant::now();
    honoured_within_bound("B signs with the new key", changed, || async { kid_from_b().await == next }).await;
    // Its JWKS does not wait for a read of them, which may hang (here, behind a lock): a relying
    // party's fetch would give up first. A bound far below the statement timeout a read waits for.
    sqlx::query("LOCK TABLE signing_keys IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let fetched = tokio::time::timeout(Duration::from_secs(2), c.b.client.get(c.b.url("/oauth/jwks")).send()).await;
    let jwks = body(fetched.expect("the JWKS waited for the database").unwrap(), 200).await;
    let published: Vec<_> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(published.contains(&next.as_str()) && published.contains(&current.as_str()), "{jwks}");
    lock.rollback().await.unwrap();
    c.stop().await;
}

/// A failover to a replica that had not received the last commits (or a restored backup) takes
/// the log's last rows with it, and new changes take their numbers again. An instance that had
/// read those rows must not skip the new ones as already read: a user disabled after the log
/// went back is refused by B within the bound, although B read past that number before.
async fn a_log_that_went_back_is_followed_from_its_new_head(backend: Backend) {
    let (c, token, user, _) = churned_cluster(backend).await;

    // The log loses its last three rows and its sequence goes back with them.
    let sql = c.db.sql().await;
    let highest = highest_seq(&sql).await;
    assert!(highest >= 4, "the churn was logged");
    let kept = highest - 3;
    sql.exec(&format!("DELETE FROM cache_invalidations WHERE seq > {kept}")).await.unwrap();
    sql.exec(&match &sql {
        Sql::Sqlite(_) => format!("UPDATE sqlite_sequence SET seq = {kept} WHERE name = 'cache_invalidations'"),
        Sql::Postgres(_) => format!("SELECT setval(pg_get_serial_sequence('cache_invalidations', 'seq'), {kept})"),
    })
    .await
    .unwrap();
    settle(&[&c.a, &c.b]).await;
    assert_eq!(user_of(&c.b, &token).await, user, "cached on B");

    let changed = Instant::now();
    let path = format!("/admin/users/{user}");
    body(c.a.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    let renumbered = highest_seq(&sql).await;
    assert!(renumbered <= highest, "the change took a number B had read before ({renumbered} <= {highest})");
    honoured_within_bound("a change numbered below what B had read is applied", changed, || async {
        code_of(c.b.validate(&token).await).await == refused("user_disabled")
    })
    .await;
    c.stop().await;
}

/// The same failover, but the instance cannot poll until the new rows have gone past the numbers
/// it read (every instance is cut off while the failover itself runs): the head is no lower than
/// its cursor, yet the last row it read is another now. The test makes the failover and the
/// changes after it in one transaction, so that B cannot poll in between: the rows B read lose
/// their numbers to the user's being disabled and to four changes of another user, the last two
/// past B's cursor.
async fn a_log_that_went_back_and_past_an_instances_cursor_while_it_could_not_poll_is_noticed(backend: Backend) {
    let (c, token, user, other) = churned_cluster(backend).await;
    assert_eq!(user_of(&c.b, &token).await, user, "cached on B");

    let sql = c.db.sql().await;
    let highest = highest_seq(&sql).await;
    let kept = highest - 3;
    let (set_back, yes, written) = match &sql {
        Sql::Sqlite(_) => (
            format!("UPDATE sqlite_sequence SET seq = {kept} WHERE name = 'cache_invalidations'"),
            "1",
            tessera::domain::now().timestamp_micros().to_string(),
        ),
        Sql::Postgres(_) => (
            format!("SELECT setval(pg_get_serial_sequence('cache_invalidations', 'seq'), {kept})"),
            "TRUE",
            "now()".to_owned(),
        ),
    };
    let logged = |id: &str| {
        format!(
            "INSERT INTO cache_invalidations (kind, user_id, created_at) VALUES ('user', {}, {written});",
            sql.uuid(id)
        )
    };
    let changed = Instant::now();
    sql.exec(&format!(
        "BEGIN;
         DELETE FROM cache_invalidations WHERE seq > {kept};
         {set_back};
         UPDATE users SET disabled = {yes} WHERE id = {user_id};
         {disabled}
         {churn}
         COMMIT;",
        user_id = sql.uuid(&user),
        disabled = logged(&user),
        churn = logged(&other).repeat(4),
    ))
    .await
    .unwrap();
    assert_eq!(highest_seq(&sql).await, highest + 2, "the new rows went past what B had read");
    honoured_within_bound("a change numbered below what B had read is applied", changed, || async {
        code_of(c.b.validate(&token).await).await == refused("user_disabled")
    })
    .await;
    c.stop().await;
}

/// A cluster with a user (its token and id) and rows in the log for B to read past: another user
/// (whose id comes last) disabled and enabled again, four times, and B settled after them.
async fn churned_cluster(backend: Backend) -> (Cluster, String, String, String) {
    let c = cluster(backend).await;
    let token = c.token("after-the-failover");
    let user = user_of(&c.a, &token).await;
    let other = user_of(&c.a, &c.token("churns-the-log")).await;
    let other_path = format!("/admin/users/{other}");
    for disabled in [true, false, true, false] {
        body(c.a.admin(Method::PATCH, &other_path).json(&json!({"disabled": disabled})).send().await.unwrap(), 200)
            .await;
    }
    settle(&[&c.a, &c.b]).await;
    (c, token, user, other)
}

/// The highest sequence number in the log.
async fn highest_seq(sql: &Sql) -> i64 {
    let highest = "SELECT max(seq) FROM cache_invalidations";
    match sql {
        Sql::Sqlite(pool) => sqlx::query_scalar(highest).fetch_one(pool).await,
        Sql::Postgres(pool) => sqlx::query_scalar(highest).fetch_one(pool).await,
    }
    .unwrap()
}
