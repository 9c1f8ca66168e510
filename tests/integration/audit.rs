//! The audit log over HTTP, on both backends: the rows of admin changes (token, target, request
//! id), of sign-ins, links and unlinks (with the rule that decided), counted refusals of tokens and
//! admin tokens, `GET /admin/audit` with its filters and cursor, and retention.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera::config::{AuditConfig, Config, ProviderKind};
use tessera::crypto::keyring::KeyRing;
use tessera::domain::Issuer;
use tessera::service::audit::Audit;
use tessera::store::{ActorKind, AuditQuery, NewAuditEvent};
use tessera_testkit::local_issuer::{LocalIssuer, StubUser};

use crate::helpers::{
    ADMIN_TOKEN, AUDIENCE, Backend, ISSUER, TestApp, TestDb, eventually, identity, json as body, local_issuer_config,
    on_both_backends,
};
use crate::signin::{Browser, CLIENT_ID, CLIENT_SECRET, provider, world_with};

on_both_backends!(
    admin_changes_are_recorded_with_their_token_target_and_request_id,
    concurrent_admin_changes_write_one_row_per_change_that_happened,
    changes_an_admin_token_makes_on_behalf_of_a_user_are_recorded,
    members_changed_by_a_team_owner_are_recorded,
    sign_ins_and_their_failures_are_recorded,
    links_and_unlinks_are_recorded_with_the_rule_that_decided,
    automatic_links_and_refused_links_name_their_rule,
    refused_tokens_and_admin_tokens_are_counted_into_one_row_per_reason_and_issuer,
    the_log_is_read_latest_first_with_filters_and_a_cursor,
    bad_audit_queries_say_what_to_fix,
    rows_past_their_retention_are_swept,
    an_admin_change_that_fails_part_way_is_recorded_as_failed,
);

const SECOND_TOKEN: &str = "second-admin-token-0123456789abcdef";

fn with_keyring(config: &mut Config) {
    let ring = format!("k1:{}", STANDARD.encode([7u8; 32]));
    config.encryption = Some(Arc::new(KeyRing::parse(&ring).unwrap()));
}

/// Every row of the log matching `query` (a query string without `limit`), latest first.
async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let page =
        body(app.admin(Method::GET, &format!("/admin/audit?limit=200&{query}")).send().await.unwrap(), 200).await;
    assert!(page["next_before"].is_null(), "one page: {page}");
    page["events"].as_array().unwrap().clone()
}

fn actions(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["action"].as_str().unwrap()).collect()
}

async fn admin_changes_are_recorded_with_their_token_target_and_request_id(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        with_keyring(config);
        config.admin_tokens.push(SECOND_TOKEN.to_owned().into());
    })
    .await;
    let bootstrap = app
        .admin(Method::POST, "/admin/users/bootstrap")
        .header("x-request-id", "req-bootstrap")
        .json(&identity("ada", "ada@example.com", None));
    let user = body(bootstrap.send().await.unwrap(), 201).await["user_id"].as_str().unwrap().to_owned();
    // A user id may be written in any form a UUID parses from; rows hold the canonical one.
    let shouting = user.to_uppercase().replace('-', "");
    let disable = app
        .client
        .patch(app.url(&format!("/admin/users/{shouting}")))
        .bearer_auth(SECOND_TOKEN)
        .header("x-request-id", "req-disable")
        .json(&json!({ "disabled": true }));
    body(disable.send().await.unwrap(), 200).await;
    // Renaming a disabled user is an update, not another disabling.
    let rename = app.admin(Method::PATCH, &format!("/admin/users/{user}")).json(&json!({ "name": "Ada L." }));
    assert_eq!(body(rename.send().await.unwrap(), 200).await["disabled"], json!(true));
    let enable = app.admin(Method::PATCH, &format!("/admin/users/{user}")).json(&json!({ "disabled": false }));
    body(enable.send().await.unwrap(), 200).await;
    // A request that changes nothing (already enabled, already so named) writes no row.
    let again = json!({ "disabled": false, "name": "Ada L." });
    let again = app.admin(Method::PATCH, &format!("/admin/users/{user}")).json(&again);
    assert_eq!(body(again.send().await.unwrap(), 200).await["name"], json!("Ada L."));
    // Named by what changed: `disabled: false` beside a new email, for a user enabled already,
    // is an update of the email (the row names the fields, never their values).
    let email = json!({ "disabled": false, "email": "ada.new@example.com", "email_verified": true });
    let email = app.admin(Method::PATCH, &format!("/admin/users/{user}")).json(&email);
    body(email.send().await.unwrap(), 200).await;
    let team = app.admin(Method::POST, "/admin/teams").json(&json!({ "slug": "acme", "name": "Acme" }));
    let team = body(team.send().await.unwrap(), 201).await["id"].as_str().unwrap().to_owned();
    // Added, then added again with the same role (nothing changed: no row), then promoted.
    for (role, status) in [("member", StatusCode::CREATED), ("member", StatusCode::OK), ("admin", StatusCode::OK)] {
        let member =
            app.admin(Method::POST, "/admin/teams/acme/members").json(&json!({ "user_id": user, "role": role }));
        assert_eq!(member.send().await.unwrap().status(), status);
    }
    let claim = json!({ "domain": "acme.example", "issuer": ISSUER, "verified": true });
    body(app.admin(Method::POST, "/admin/teams/acme/domains").json(&claim).send().await.unwrap(), 201).await;
    // Claimed again as it is: nothing changed, no row.
    body(app.admin(Method::POST, "/admin/teams/acme/domains").json(&claim).send().await.unwrap(), 200).await;
    let hook = app.admin(Method::POST, "/admin/webhooks").json(&json!({ "url": "http://127.0.0.1:9/hook" }));
    let hook = body(hook.send().await.unwrap(), 201).await;
    let client = json!({"id": "grafana", "name": "Grafana", "kind": "confidential",
                        "redirect_uris": ["https://app.example.com/callback"]});
    let client = body(app.admin(Method::POST, "/admin/clients").json(&client).send().await.unwrap(), 201).await;
    let rotated = body(app.admin(Method::POST, "/admin/clients/grafana/secret").send().await.unwrap(), 200).await;
    // Renamed, then renamed again to the same name: nothing changed the second time, no row.
    for _ in 0..2 {
        let renamed = app.admin(Method::PATCH, "/admin/clients/grafana").json(&json!({ "name": "Grafana 2" }));
        body(renamed.send().await.unwrap(), 200).await;
    }
    // Released as typed in another spelling: the row names the domain as claimed.
    let released = app.admin(Method::DELETE, "/admin/teams/acme/domains/ACME.Example.").send().await.unwrap();
    assert_eq!(released.status(), StatusCode::NO_CONTENT);
    let braced = format!("{{{}}}", user.to_uppercase());
    let removed = app.admin(Method::DELETE, &format!("/admin/teams/acme/members/{braced}")).send().await.unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let deleted = app.admin(Method::DELETE, &format!("/admin/users/urn:uuid:{user}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    // Reads and refused requests write nothing.
    body(app.admin(Method::GET, "/admin/users").send().await.unwrap(), 200).await;
    body(app.admin(Method::POST, "/admin/teams").json(&json!({ "slug": "acme" })).send().await.unwrap(), 400).await;
    body(app.admin(Method::DELETE, &format!("/admin/users/{user}")).send().await.unwrap(), 404).await;

    let rows = audit(&app, "").await;
    let mut oldest_first = actions(&rows);
    oldest_first.reverse();
    assert_eq!(
        oldest_first,
        [
            "user.bootstrapped",
            "user.disabled",
            "user.updated",
            "user.enabled",
            "user.updated",
            "team.created",
            "team.member_added",
            "team.member_role_changed",
            "team.domain_claimed",
            "webhook.created",
            "client.created",
            "client.secret_rotated",
            "client.updated",
            "team.domain_released",
            "team.member_removed",
            "user.deleted",
        ]
    );
    let row = |action: &str| rows.iter().find(|r| r["action"] == action).unwrap().clone();
    let bootstrapped = row("user.bootstrapped");
    assert_eq!(
        (&bootstrapped["actor_kind"], &bootstrapped["actor_id"], &bootstrapped["actor_name"]),
        (&json!("admin_token"), &json!("0"), &json!("admin_tokens[0]"))
    );
    assert_eq!((&bootstrapped["target_kind"], &bootstrapped["target_id"]), (&json!("user"), &json!(user)));
    assert_eq!((&bootstrapped["request_id"], &bootstrapped["outcome"]), (&json!("req-bootstrap"), &json!("success")));
    assert_eq!(bootstrapped["details"], json!({ "created": true }));
    let disabled = row("user.disabled");
    assert_eq!(disabled["details"], json!({ "fields": ["disabled"] }));
    assert_eq!(row("user.updated")["details"], json!({ "fields": ["email", "email_verified"] }), "the latest update");
    assert_eq!(row("user.enabled")["details"], json!({ "fields": ["disabled"] }));
    assert_eq!((&disabled["actor_id"], &disabled["actor_name"]), (&json!("1"), &json!("admin_tokens[1]")));
    assert_eq!((&disabled["target_id"], &disabled["request_id"]), (&json!(user), &json!("req-disable")));
    assert_eq!(row("team.created")["target_id"], json!(team));
    assert_eq!(row("team.member_added")["details"], json!({ "user_id": user, "role": "member" }));
    assert_eq!(row("team.member_role_changed")["details"], json!({ "user_id": user, "role": "admin" }));
    assert_eq!(row("team.domain_claimed")["details"], json!({ "domain": "acme.example", "verified": true }));
    assert_eq!(row("webhook.created")["target_id"], hook["id"]);
    assert_eq!(
        (row("client.created")["target_kind"].clone(), row("client.created")["target_id"].clone()),
        (json!("client"), json!("grafana"))
    );
    assert_eq!(row("client.secret_rotated")["target_id"], "grafana");
    assert_eq!(row("team.domain_released")["details"], json!({ "domain": "acme.example" }));
    assert_eq!(row("team.member_removed")["details"], json!({ "user_id": user }));
    assert_eq!(row("user.deleted")["target_id"], json!(user));
    let about_the_user = audit(&app, &format!("target_id={user}")).await;
    assert_eq!(
        actions(&about_the_user),
        ["user.deleted", "user.updated", "user.enabled", "user.updated", "user.disabled", "user.bootstrapped"],
        "each found by the canonical id"
    );
    for spelling in [shouting.clone(), braced.clone(), format!("urn:uuid:{user}")] {
        let encoded: String = url::form_urlencoded::byte_serialize(spelling.as_bytes()).collect();
        let found = audit(&app, &format!("target_kind=user&target_id={encoded}")).await;
        assert_eq!(actions(&found), actions(&about_the_user), "found by {spelling} too");
    }
    for row in &rows {
        let id = row["request_id"].as_str().unwrap();
        assert!(!id.is_empty() && row["at"].is_string() && row["id"].is_i64(), "{row}");
    }
    // No secret, token or email in any row.
    let text = serde_json::to_string(&rows).unwrap();
    for secret in [ADMIN_TOKEN, SECOND_TOKEN, "ada@example.com", "ada.new@example.com"]
        .into_iter()
        .chain([&hook["secret"], &client["client_secret"], &rotated["client_secret"]].map(|v| v.as_str().unwrap()))
    {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
}

async fn concurrent_admin_changes_write_one_row_per_change_that_happened(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    // Twelve teams at once, and eight requests for one slug: one wins, seven are refused.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = app.clone();
        let slug = if i < 12 { format!("team-{i}") } else { "contested".to_owned() };
        tasks.push(tokio::spawn(async move {
            let request = app.admin(Method::POST, "/admin/teams").json(&json!({ "slug": slug, "name": "T" }));
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            (StatusCode::CREATED, _) => created += 1,
            // Refused as taken, not failed.
            (status, body) => assert_eq!((status, body["code"].as_str()), (StatusCode::CONFLICT, Some("slug_taken"))),
        }
    }
    assert_eq!(created, 13);
    let rows = audit(&app, "action=team.created").await;
    assert_eq!(rows.len(), 13, "one row per team created, none for the refused requests");
    let mut targets: Vec<&str> = rows.iter().map(|r| r["target_id"].as_str().unwrap()).collect();
    targets.sort_unstable();
    targets.dedup();
    assert_eq!(targets.len(), 13);
    let sql = app.db.sql().await;
    assert_eq!(sql.count("audit_events").await, 13);
    assert_eq!(sql.count("teams WHERE slug = 'contested'").await, 1);
    assert_eq!(sql.count("teams WHERE slug LIKE 'team-%'").await, 12);
}

async fn changes_an_admin_token_makes_on_behalf_of_a_user_are_recorded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = body(app.bootstrap(&identity("ada", "ada@example.com", None)).await, 201).await;
    let bob = body(app.bootstrap(&identity("bob", "bob@example.com", None)).await, 201).await;
    let (ada_id, team) = (ada["user_id"].as_str().unwrap(), ada["team"]["slug"].as_str().unwrap());
    let bob_id = bob["user_id"].as_str().unwrap();
    let add = app
        .admin(Method::POST, &format!("/v1/teams/{team}/members"))
        .header("x-on-behalf-of", ada_id)
        .header("x-request-id", "req-on-behalf")
        .json(&json!({ "user_id": bob_id, "role": "member" }));
    assert_eq!(add.send().await.unwrap().status(), StatusCode::CREATED);
    // The user named in the query, beside a blank header (which names nobody).
    let remove = app.admin(Method::DELETE, &format!("/v1/teams/{team}/members/{bob_id}?on_behalf_of={ada_id}"));
    assert_eq!(remove.header("x-on-behalf-of", "").send().await.unwrap().status(), StatusCode::NO_CONTENT);
    // A refused request (Bob is not a member of the team) writes nothing.
    let refused =
        app.admin(Method::DELETE, &format!("/v1/teams/{team}/members/{ada_id}")).header("x-on-behalf-of", bob_id);
    assert!(refused.send().await.unwrap().status().is_client_error());

    let rows = audit(&app, "target_kind=team").await;
    assert_eq!(actions(&rows), ["team.member_removed", "team.member_added"]);
    for row in &rows {
        assert_eq!((&row["actor_kind"], &row["actor_id"]), (&json!("admin_token"), &json!("0")));
        assert_eq!((&row["target_id"], &row["details"]["on_behalf_of"]), (&json!(team), &json!(ada_id)));
        assert_eq!(row["details"]["user_id"], json!(bob_id));
    }
    assert_eq!(rows[1]["request_id"], "req-on-behalf");
    assert_eq!(audit(&app, "").await.len(), 4, "two bootstraps and the two changes");
    // An admin token sent to a route that acts for nobody is not an admin change.
    let discover = app
        .client
        .post(app.url("/v1/auth/discover"))
        .header("x-admin-token", crate::helpers::ADMIN_TOKEN)
        .json(&json!({ "email": "ada@example.com" }));
    assert!(discover.send().await.unwrap().status().is_success());
    assert_eq!(audit(&app, "").await.len(), 4, "nothing recorded for it");
    // Nor when it names a user beside it: the route acts for nobody still.
    let named = app
        .client
        .post(app.url("/v1/auth/discover"))
        .header("x-admin-token", crate::helpers::ADMIN_TOKEN)
        .header("x-on-behalf-of", ada_id)
        .json(&json!({ "email": "ada@example.com" }));
    assert!(named.send().await.unwrap().status().is_success());
    assert_eq!(audit(&app, "").await.len(), 4, "nothing recorded for it");
}

/// A team owner who adds, promotes or removes a member with their own session (no admin token)
/// leaves a row each, naming them: a grant of ownership is what the log is for.
async fn members_changed_by_a_team_owner_are_recorded(backend: Backend) {
    let w = world_with(backend, |_, _| {}).await;
    let mut people = Vec::new();
    for name in ["ada", "bob"] {
        w.issuer.set_next_user(StubUser::new(name, &format!("{name}@example.com")));
        let mut browser = Browser::new();
        assert_eq!(browser.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
        let me = body(browser.me(&w.app).await, 200).await;
        people.push((browser, me));
    }
    let (mut ada, ada_me) = people.remove(0);
    let bob_id = people[0].1["id"].as_str().unwrap().to_owned();
    let (ada_id, team) = (ada_me["id"].as_str().unwrap(), ada_me["teams"][0]["slug"].as_str().unwrap());
    let members = w.app.url(&format!("/v1/teams/{team}/members"));
    for (role, status) in [("member", StatusCode::CREATED), ("owner", StatusCode::OK), ("owner", StatusCode::OK)] {
        let answer = ada.json(Method::POST, &members, &json!({ "user_id": bob_id, "role": role })).await;
        assert_eq!(answer.status(), status, "{role}");
    }
    let removed = ada.request(Method::DELETE, &format!("{members}/{bob_id}")).await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);

    let rows = audit(&w.app, "target_kind=team").await;
    assert_eq!(actions(&rows), ["team.member_removed", "team.member_role_changed", "team.member_added"]);
    for row in &rows {
        assert_eq!((&row["actor_kind"], &row["actor_id"]), (&json!("user"), &json!(ada_id)), "{row}");
        assert_eq!((&row["target_id"], &row["details"]["user_id"]), (&json!(team), &json!(bob_id)), "{row}");
        assert!(row["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{row}");
    }
    assert_eq!(rows[1]["details"]["role"], "owner");
    // A team named by its id in another spelling is recorded under its canonical id.
    let team_id = ada_me["teams"][0]["id"].as_str().unwrap();
    let upper = w.app.url(&format!("/v1/teams/{}/members", team_id.to_uppercase()));
    let added = ada.json(Method::POST, &upper, &json!({ "user_id": bob_id, "role": "member" })).await;
    assert_eq!(added.status(), StatusCode::CREATED);
    let by_id = audit(&w.app, &format!("target_kind=team&target_id={team_id}")).await;
    assert_eq!(actions(&by_id), ["team.member_added"]);
    // The acting user is found by any spelling of their id, as a target is.
    let by_actor = audit(&w.app, &format!("actor={}", ada_id.to_uppercase())).await;
    assert_eq!(by_actor.len(), 5, "{by_actor:?}");
    // A team an admin creates with an owner: the row names who was made its owner.
    let guild = json!({ "slug": "guild", "name": "Guild", "owner": ada_id });
    let guild = body(w.app.admin(Method::POST, "/admin/teams").json(&guild).send().await.unwrap(), 201).await;
    let created = audit(&w.app, "action=team.created").await;
    assert_eq!(created[0]["target_id"], guild["id"]);
    assert_eq!(created[0]["details"], json!({ "slug": "guild", "owner": ada_id }));
}

/// An admin change is committed before its row is written: a transient failure of that write
/// (a failover, a serialization failure) is tried again rather than leaving the change without
/// its row. PostgreSQL only: an SQLite trigger cannot fail with a busy database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_first_writes_fail_transiently_is_written_still() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let sql = app.db.sql().await;
    sql.exec("CREATE SEQUENCE injected_failures").await.unwrap();
    sql.inject(
        "INSERT",
        "audit_events",
        None,
        "",
        "IF nextval('injected_failures') <= 2 THEN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END IF; \
         RETURN NEW;",
    )
    .await;
    let created = body(app.bootstrap(&identity("ada", "ada@example.com", None)).await, 201).await;
    let rows = audit(&app, "action=user.bootstrapped").await;
    assert_eq!(rows.len(), 1, "written at the third attempt");
    assert_eq!(rows[0]["target_id"], created["user_id"]);
    sql.remove_injected("audit_events").await;
}

async fn sign_ins_and_their_failures_are_recorded(backend: Backend) {
    let w = world_with(backend, |config, _| config.audit.flush_interval = Duration::from_millis(50)).await;
    w.issuer.set_next_user(StubUser::new("alice-sub", "alice@example.com"));
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    let me = body(browser.me(&w.app).await, 200).await;
    let (alice, alice_identity) = (me["id"].as_str().unwrap().to_owned(), me["identities"][0]["id"].clone());
    // A returning user in a browser without a session (the session is found with the identity,
    // in the statement that writes it): the same row, with its request id.
    w.issuer.set_next_user(StubUser::new("alice-sub", "alice@example.com"));
    let mut elsewhere = Browser::new();
    let returning = elsewhere.sign_in(&w.app, "").await;
    assert_eq!(returning.status(), StatusCode::SEE_OTHER);
    let returning_request = returning.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(body(elsewhere.me(&w.app).await, 200).await["id"], alice);

    // Callbacks that match no flow started in their browser (a replay, a forged or missing
    // cookie) are counted: anyone can send them.
    let callback = browser.start(&w.app, "").await;
    let login_cookie = browser.cookies["tessera_login"].clone();
    assert_eq!(browser.get(&callback).await.status(), StatusCode::SEE_OTHER);
    browser.cookies.insert("tessera_login".into(), login_cookie);
    assert_eq!(body(browser.get(&callback).await, 400).await["code"], "invalid_state");
    for _ in 0..3 {
        assert_eq!(body(Browser::new().get(&callback).await, 400).await["code"], "invalid_state");
    }
    let mut forged = Browser::new();
    forged.cookies.insert("tessera_login".into(), "forged".into());
    assert_eq!(body(forged.get(&callback).await, 400).await["code"], "invalid_state");
    // So are callbacks whose query does not parse (a parameter twice): no flow's state is read.
    for _ in 0..3 {
        let repeated = Browser::new().get(&w.app.url("/auth/callback/local?state=a&state=a&code=c")).await;
        assert_eq!(body(repeated, 400).await["code"], "invalid_request");
    }
    // So are sign-ins refused before the provider vouched for anyone (cancelled there, a code
    // made up): anyone can start one and send it back that way, over and over.
    let answers =
        [("access_denied", "provider_denied"); 4].into_iter().chain([("unauthorized_client", "provider_refused"); 2]);
    for (error, code) in answers {
        let mut browser = Browser::new();
        let callback = browser.start(&w.app, "").await;
        let refused = crate::signin::with_param(&callback, "error", Some(error));
        let refused = crate::signin::with_param(&refused, "code", None);
        assert_eq!(body(browser.get(&refused).await, 400).await["code"], code);
    }
    let mut browser = Browser::new();
    let callback = browser.start(&w.app, "").await;
    let made_up = crate::signin::with_param(&callback, "code", Some("not-a-code"));
    assert_eq!(body(browser.get(&made_up).await, 400).await["code"], "invalid_code");
    // A failure of a real flow gets a row of its own, with its request id.
    let disable = w.app.admin(Method::PATCH, &format!("/admin/users/{alice}")).json(&json!({ "disabled": true }));
    body(disable.send().await.unwrap(), 200).await;
    w.issuer.set_next_user(StubUser::new("alice-sub", "alice@example.com"));
    let refused = Browser::new().sign_in(&w.app, "").await;
    let request_id = refused.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(body(refused, 403).await["code"], "user_disabled");

    let succeeded = audit(&w.app, "action=sign_in.succeeded").await;
    assert_eq!(succeeded.len(), 3);
    for row in &succeeded {
        assert_eq!((&row["actor_kind"], &row["actor_id"]), (&json!("user"), &json!(alice)));
        assert_eq!((&row["target_kind"], &row["target_id"]), (&json!("user"), &json!(alice)));
        assert_eq!(row["outcome"], "success");
        assert_eq!(row["details"], json!({ "provider": "local", "identity_id": alice_identity }));
    }
    assert_eq!(succeeded[1]["request_id"], returning_request);
    eventually("the counted failures are written", || async {
        let counted = audit(&w.app, "action=sign_in.failed&actor=refusal_counter").await;
        counted.iter().map(|r| r["details"]["count"].as_u64().unwrap()).sum::<u64>() == 15
    })
    .await;
    let failed = audit(&w.app, "action=sign_in.failed").await;
    let own: Vec<&Value> = failed.iter().filter(|r| r["actor_name"].is_null()).collect();
    assert_eq!(own.len(), 1, "{failed:?}");
    assert_eq!((&own[0]["request_id"], &own[0]["reason"]), (&json!(request_id), &json!("user_disabled")));
    assert_eq!((&own[0]["outcome"], &own[0]["details"]["provider"]), (&json!("failure"), &json!("local")));
    let mut reasons = std::collections::BTreeMap::new();
    for counted in failed.iter().filter(|r| !r["actor_name"].is_null()) {
        assert_eq!((&counted["target_kind"], &counted["target_id"]), (&json!("provider"), &json!("local")));
        let reason = counted["reason"].as_str().unwrap().to_owned();
        *reasons.entry(reason).or_default() += counted["details"]["count"].as_u64().unwrap();
    }
    let expected = [
        ("invalid_code", 1),
        ("invalid_request", 3),
        ("invalid_state", 5),
        ("provider_denied", 4),
        ("provider_refused", 2),
    ];
    assert_eq!(reasons, expected.map(|(reason, n)| (reason.to_owned(), n)).into());
    // A callback for a provider that is not configured is counted without naming it.
    let unknown = Browser::new().get(&w.app.url("/auth/callback/nosuchprovider?state=x&code=y")).await;
    assert_eq!(body(unknown, 400).await["code"], "invalid_state");
    eventually("the unnamed failure is written", || async {
        let counted = audit(&w.app, "action=sign_in.failed&actor=refusal_counter").await;
        counted.iter().any(|r| r["target_id"].is_null())
    })
    .await;
}

async fn links_and_unlinks_are_recorded_with_the_rule_that_decided(backend: Backend) {
    let second = LocalIssuer::start().await.unwrap();
    second.set_client(CLIENT_ID, CLIENT_SECRET);
    let w =
        world_with(backend, |config, _| config.providers.push(provider("second", ProviderKind::Oidc, &second))).await;
    w.issuer.set_next_user(StubUser::new("alice", "alice@example.com"));
    let mut alice = Browser::new();
    alice.sign_in(&w.app, "").await;
    second.set_next_user(StubUser::new("alice-elsewhere", "alice@elsewhere.example"));
    let callback = alice.start_link(&w.app, "provider=second").await;
    let linked = alice.get(&callback).await;
    assert_eq!(linked.status(), StatusCode::SEE_OTHER);
    let link_request = linked.headers()["x-request-id"].to_str().unwrap().to_owned();
    let me = body(alice.me(&w.app).await, 200).await;
    let (user, identity) = (me["id"].clone(), me["identities"][1]["id"].clone());
    let unlinked =
        alice.request(Method::DELETE, &w.app.url(&format!("/v1/me/identities/{}", identity.as_str().unwrap()))).await;
    assert_eq!(unlinked.status(), StatusCode::NO_CONTENT);

    let rows = audit(&w.app, "target_kind=identity").await;
    assert_eq!(actions(&rows), ["identity.unlinked", "identity.linked"]);
    for row in &rows {
        assert_eq!((&row["actor_kind"], &row["actor_id"], &row["target_id"]), (&json!("user"), &user, &identity));
    }
    assert_eq!(rows[1]["details"], json!({ "provider": "second", "rule": "signed_in_user" }));
    assert_eq!(rows[1]["request_id"], link_request);
    assert_eq!(rows[0]["details"], json!({ "provider": "second", "rule": "owner_request" }));
    // Found by any spelling of its id, as a user's is.
    let shouting = identity.as_str().unwrap().to_uppercase();
    assert_eq!(audit(&w.app, &format!("target_kind=identity&target_id={shouting}")).await.len(), 2);
    assert!(audit(&w.app, "action=sign_in.succeeded").await.len() == 1, "a link is not a sign-in");

    // A link the provider refuses is recorded as a failed link, not as a failed sign-in.
    let state = crate::signin::state_of(&alice.start_link(&w.app, "provider=second").await);
    let denied = alice.get(&w.app.url(&format!("/auth/callback/second?state={state}&error=access_denied"))).await;
    assert!(denied.status().is_client_error(), "{}", denied.status());
    let failed = audit(&w.app, "action=identity.link_failed").await;
    assert_eq!((failed.len(), &failed[0]["reason"]), (1, &json!("provider_denied")), "{failed:?}");
    // So is one whose callback comes back on another provider's path.
    let swapped =
        alice.start_link(&w.app, "provider=second").await.replace("/auth/callback/second", "/auth/callback/local");
    assert_eq!(body(alice.get(&swapped).await, 400).await["code"], "provider_mismatch");
    let failed = audit(&w.app, "action=identity.link_failed").await;
    assert_eq!((failed.len(), &failed[0]["reason"]), (2, &json!("provider_mismatch")), "{failed:?}");
    assert_eq!(failed[0]["details"]["provider"], "second", "the flow's provider, not the path's");
    assert!(audit(&w.app, "action=sign_in.failed").await.is_empty());
    // So is one that comes back to a browser no longer signed in (its session cookie gone while
    // it was at the provider): the flow matched, the provider vouched for an account, and the
    // link was refused — told to sign in, not that the sign-in took too long or began elsewhere.
    let callback = alice.start_link(&w.app, "provider=second").await;
    let session = alice.cookies.remove("tessera_session").expect("the session cookie");
    assert_eq!(body(alice.get(&callback).await, 401).await["code"], "missing_credentials");
    alice.cookies.insert("tessera_session".into(), session);
    let failed = audit(&w.app, "action=identity.link_failed").await;
    assert_eq!((failed.len(), &failed[0]["reason"]), (3, &json!("missing_credentials")), "{failed:?}");
    // Signed in as someone else since: not theirs to link, the flow's state refused.
    let callback = alice.start_link(&w.app, "provider=second").await;
    w.issuer.set_next_user(StubUser::new("mallory", "mallory@example.com"));
    let mut other = Browser::new();
    other.sign_in(&w.app, "").await;
    let session = alice.cookies.insert("tessera_session".into(), other.cookies["tessera_session"].clone()).unwrap();
    assert_eq!(body(alice.get(&callback).await, 400).await["code"], "invalid_state");
    alice.cookies.insert("tessera_session".into(), session);
    let failed = audit(&w.app, "action=identity.link_failed").await;
    assert_eq!((failed.len(), &failed[0]["reason"]), (4, &json!("invalid_state")), "{failed:?}");
    // Each names who started the link.
    for row in &failed {
        assert_eq!((&row["actor_kind"], &row["actor_id"]), (&json!("user"), &user), "{row}");
    }
    assert!(audit(&w.app, "action=sign_in.failed").await.is_empty(), "not counted as a stray callback");

    // Its page says nothing changed and leads to the account, not to a sign-in that would end
    // the session, which is still there.
    let state = crate::signin::state_of(&alice.start_link(&w.app, "provider=second").await);
    let page = alice.navigate(&w.app.url(&format!("/auth/callback/second?state={state}&error=access_denied"))).await;
    assert!(page.status().is_client_error(), "{}", page.status());
    let page = page.text().await.unwrap();
    assert!(page.contains("Cancelled at the provider") && page.contains("Nothing was linked or connected"), "{page}");
    assert!(page.contains("href=\"/account\"") && !page.contains("href=\"/login"), "{page}");
    assert_eq!(alice.get(&w.app.url("/v1/me")).await.status(), StatusCode::OK, "still signed in");
}

async fn automatic_links_and_refused_links_name_their_rule(backend: Backend) {
    let w = world_with(backend, |config, _| {
        let local = config.providers.iter_mut().find(|p| p.name == "local").unwrap();
        local.trusted_email_verification = true;
        local.auto_link_by_email = true;
    })
    .await;
    let mut claim = identity("dave-admin", "dave@example.com", None);
    claim["email_verified"] = true.into();
    let dave = body(w.app.bootstrap(&claim).await, 201).await["user_id"].clone();
    let mut unverified = identity("erin-admin", "erin@example.com", None);
    unverified["email_verified"] = false.into();
    body(w.app.bootstrap(&unverified).await, 201).await;

    w.issuer.set_next_user(StubUser::new("dave-upstream", "dave@example.com"));
    assert_eq!(Browser::new().sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    let linked = audit(&w.app, "action=identity.linked").await;
    assert_eq!(linked.len(), 1);
    assert_eq!((&linked[0]["actor_id"], &linked[0]["details"]["rule"]), (&dave, &json!("verified_email")));
    assert_eq!(audit(&w.app, "action=sign_in.succeeded").await[0]["actor_id"], dave);

    // An address the provider does not vouch for finds the account that claims it: link first.
    let mut unvouched = StubUser::new("erin-upstream", "erin@example.com");
    unvouched.email_verified = false;
    w.issuer.set_next_user(unvouched);
    assert_eq!(body(Browser::new().sign_in(&w.app, "").await, 409).await["code"], "link_required");
    let refused = audit(&w.app, "action=sign_in.failed").await;
    assert_eq!(refused.len(), 1);
    assert_eq!((&refused[0]["reason"], &refused[0]["outcome"]), (&json!("link_required"), &json!("failure")));
    assert_eq!(refused[0]["details"], json!({ "provider": "local", "rule": "email_owned_by_existing_user" }));
    assert!(!serde_json::to_string(&audit(&w.app, "").await).unwrap().contains("@example.com"), "no email");
}

async fn refused_tokens_and_admin_tokens_are_counted_into_one_row_per_reason_and_issuer(backend: Backend) {
    let issuer = LocalIssuer::start().await.unwrap();
    let app = Arc::new(
        TestApp::spawn_with(backend, |config| {
            config.issuers.push(local_issuer_config(&issuer));
            // Counts are written at shutdown only here, so each key makes exactly one row.
            config.audit.flush_interval = Duration::from_secs(3600);
        })
        .await,
    );
    let wrong_audience = issuer.sign("rsa-1", &issuer.claims("someone", "api://another-service"));
    let good = issuer.sign("rsa-1", &issuer.claims("someone", AUDIENCE));
    let mut tasks = Vec::new();
    for i in 0..30 {
        let app = app.clone();
        let token = match i % 3 {
            0 => wrong_audience.clone(),
            1 => "not-a-jwt".to_owned(),
            _ => String::new(),
        };
        tasks.push(tokio::spawn(async move {
            if token.is_empty() {
                // At the admin API, and at a route where the admin token acts for a user.
                let refused = match i % 2 {
                    0 => app.client.get(app.url("/admin/users")).bearer_auth("wrong-admin-token-0123456789"),
                    _ => app
                        .client
                        .get(app.url(&format!("/v1/teams/any/auth-profiles?on_behalf_of={}", uuid::Uuid::new_v4())))
                        .header("x-admin-token", "wrong-admin-token-0123456789"),
                };
                refused.send().await.unwrap().status()
            } else {
                app.validate(&token).await.status()
            }
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.validate(&good).await.status(), StatusCode::OK, "an accepted token is not counted");
    let app = Arc::into_inner(app).expect("no other handle");
    let db = app.stop_keeping_db().await;
    let store = db.store().await;
    let rows = store.audit_events(&AuditQuery { limit: 100, ..AuditQuery::default() }).await.unwrap();
    let mut found: Vec<(String, Option<String>, Option<String>, u64)> = rows
        .iter()
        .map(|r| {
            let e = &r.event;
            assert!(!e.success);
            assert_eq!((e.actor_kind, e.actor_name.as_deref()), (ActorKind::System, Some("refusal_counter")));
            let count = e.details.as_ref().unwrap()["count"].as_u64().unwrap();
            (e.action.clone(), e.reason.clone(), e.target_id.clone(), count)
        })
        .collect();
    found.sort();
    let local = Issuer::parse(issuer.issuer()).unwrap().as_str().to_owned();
    assert_eq!(
        found,
        [
            ("admin_token.refused".to_owned(), Some("invalid_credentials".to_owned()), None, 10),
            ("token.refused".to_owned(), Some("audience_mismatch".to_owned()), Some(local), 10),
            ("token.refused".to_owned(), Some("malformed_token".to_owned()), None, 10),
        ]
    );
}

async fn the_log_is_read_latest_first_with_filters_and_a_cursor(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let before_all = chrono::Utc::now() - chrono::TimeDelta::seconds(5);
    body(app.bootstrap(&identity("ada", "ada@example.com", None)).await, 201).await;
    let mut teams = Vec::new();
    for i in 0..7 {
        let team = app.admin(Method::POST, "/admin/teams").json(&json!({ "slug": format!("team-{i}"), "name": "T" }));
        teams.push(body(team.send().await.unwrap(), 201).await["id"].as_str().unwrap().to_owned());
    }
    let after_all = chrono::Utc::now() + chrono::TimeDelta::seconds(5);

    // Pages of three, following `next_before`, meet end to end, latest first: unfiltered, and
    // through the actor's indexes (by id, and by name).
    let app = &app;
    let pages = |filter: &'static str| async move {
        let mut ids = Vec::new();
        let mut path = format!("/admin/audit?limit=3{filter}");
        loop {
            let page = body(app.admin(Method::GET, &path).send().await.unwrap(), 200).await;
            ids.extend(page["events"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()));
            match page["next_before"].as_i64() {
                Some(next) => path = format!("/admin/audit?limit=3{filter}&before={next}"),
                None => break,
            }
        }
        ids
    };
    let ids = pages("").await;
    assert_eq!(pages("&actor=0").await, ids);
    assert_eq!(pages("&actor=admin_tokens%5B0%5D").await, ids);
    assert_eq!(ids.len(), 8);
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
    let all = audit(app, "").await;
    assert_eq!(all.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), ids);
    assert_eq!(actions(&all)[7], "user.bootstrapped");

    assert_eq!(audit(app, "action=team.created").await.len(), 7);
    assert_eq!(audit(app, "action=user.bootstrapped").await.len(), 1);
    let one = audit(app, &format!("target_kind=team&target_id={}", teams[3])).await;
    assert_eq!((one.len(), &one[0]["target_id"]), (1, &json!(teams[3])));
    assert_eq!(audit(app, "actor=admin_tokens%5B0%5D").await.len(), 8);
    assert_eq!(audit(app, "actor=0").await.len(), 8);
    assert!(audit(app, "actor=1").await.is_empty());
    let rfc = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let window = format!("since={}&until={}", rfc(before_all), rfc(after_all));
    assert_eq!(audit(app, &window.replace('+', "%2B")).await.len(), 8);
    // An offset sent without percent-encoding (its `+` arrives as a space) is read as sent.
    let east = chrono::FixedOffset::east_opt(3600).unwrap();
    let offset =
        |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&east).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let unencoded = format!("since={}&until={}", offset(before_all), offset(after_all));
    assert!(unencoded.contains("+01:00"), "{unencoded}");
    assert_eq!(audit(app, &unencoded).await.len(), 8);
    assert!(audit(app, &format!("since={}", rfc(after_all))).await.is_empty());
    assert!(audit(app, &format!("until={}", rfc(before_all))).await.is_empty());
    // An `until` between rows (which bounds the walk by the last row before it): exactly the
    // rows before it, page by page.
    let at = |row: &Value| chrono::DateTime::parse_from_rfc3339(row["at"].as_str().unwrap()).unwrap();
    let middle = at(&all[3]);
    let older: Vec<i64> = all.iter().filter(|r| at(r) < middle).map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(!older.is_empty() && older.len() < all.len(), "{older:?}");
    let until = format!("&until={}", rfc(middle.to_utc()).replace('+', "%2B"));
    assert_eq!(pages(until.leak()).await, older);
    let last = ids[5];
    assert_eq!(audit(app, &format!("before={last}")).await.len(), 2);
}

async fn bad_audit_queries_say_what_to_fix(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (query, code, field) in [
        ("action=User%20Disabled", "invalid_audit_filter", Some("action")),
        ("action=user..disabled", "invalid_audit_filter", Some("action")),
        ("action=", "invalid_audit_filter", Some("action")),
        ("target_kind=a-b", "invalid_audit_filter", Some("target_kind")),
        ("target_id=a%0Ab", "invalid_audit_filter", Some("target_id")),
        ("actor=a%00b", "invalid_audit_filter", Some("actor")),
        ("before=abc", "invalid_cursor", Some("before")),
        ("before=0", "invalid_cursor", Some("before")),
        ("since=yesterday", "invalid_since", Some("since")),
        ("until=tomorrow", "invalid_until", Some("until")),
        ("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "invalid_until", Some("until")),
        ("limit=0", "invalid_request", Some("limit")),
        ("limit=201", "invalid_request", Some("limit")),
        ("limit=many", "invalid_request", None),
        ("cursor=abc", "invalid_request", None),
    ] {
        let problem = body(app.admin(Method::GET, &format!("/admin/audit?{query}")).send().await.unwrap(), 400).await;
        assert_eq!(problem["code"], code, "{query}: {problem}");
        assert_eq!(problem["field"].as_str(), field, "{query}: {problem}");
    }
    let anonymous = app.client.get(app.url("/admin/audit")).send().await.unwrap();
    assert_eq!(body(anonymous, 401).await["code"], "missing_credentials");
}

async fn rows_past_their_retention_are_swept(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let now = chrono::Utc::now();
    let row = |days: i64| NewAuditEvent {
        at: now - chrono::TimeDelta::days(days),
        ..NewAuditEvent::new(ActorKind::System, "test.old")
    };
    let old: Vec<NewAuditEvent> = (0..2100).map(|_| row(400)).collect();
    store.append_audit_events(&old).await.unwrap();
    store.append_audit_events(&[row(30), row(0)]).await.unwrap();
    let forever = Audit::new(store.clone(), &AuditConfig { retention: None, ..AuditConfig::default() });
    assert_eq!(forever.sweep().await.unwrap(), 0, "0 keeps rows forever");
    let year = Audit::new(store.clone(), &AuditConfig::default());
    assert_eq!(year.sweep().await.unwrap(), 2100, "in batches, all of them");
    assert_eq!(year.sweep().await.unwrap(), 0);
    let month = AuditConfig { retention: Some(Duration::from_secs(7 * 86_400)), ..AuditConfig::default() };
    assert_eq!(Audit::new(store.clone(), &month).sweep().await.unwrap(), 1);
    assert_eq!(db.sql().await.count("audit_events").await, 1);
}

/// An admin change whose client hangs up while it is being made (PostgreSQL, where a trigger can
/// hold the statement for a second) is made and recorded all the same: the change and its row go
/// to their end together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_whose_client_hangs_up_is_made_and_recorded() {
    let app = TestApp::spawn_with(Backend::Postgres, |_| {}).await;
    let bootstrap = app.admin(Method::POST, "/admin/users/bootstrap").json(&identity("ada", "ada@example.com", None));
    let user = body(bootstrap.send().await.unwrap(), 201).await["user_id"].as_str().unwrap().to_owned();
    let sql = app.db.sql().await;
    sql.inject("UPDATE", "users", None, "", "PERFORM pg_sleep(5); RETURN NEW;").await;
    let disable = app.admin(Method::PATCH, &format!("/admin/users/{user}")).json(&json!({ "disabled": true })).send();
    let disable = tokio::spawn(disable);
    // The client hangs up once the change is under way (its statement in the trigger's sleep).
    let sleeping = "pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'";
    eventually("the change is under way", || async { sql.count(sleeping).await > 0 }).await;
    disable.abort();
    assert!(disable.await.unwrap_err().is_cancelled(), "the client hung up first");
    eventually("the change is recorded", || async { actions(&audit(&app, "action=user.disabled").await).len() == 1 })
        .await;
    sql.remove_injected("users").await;
    let now = body(app.admin(Method::GET, &format!("/admin/users/{user}")).send().await.unwrap(), 200).await;
    assert_eq!(now["disabled"], json!(true), "and the change was made");
}

/// A webhook's deletion that the database fails part way (its delivery log cannot be deleted)
/// leaves the endpoint disabled: the attempt is recorded, as a failure with its code, so that
/// what changed is in the log; a refused request (4xx) changed nothing and writes no row.
async fn an_admin_change_that_fails_part_way_is_recorded_as_failed(backend: Backend) {
    let app = TestApp::spawn_with(backend, with_keyring).await;
    let created = app.admin(Method::POST, "/admin/webhooks").json(&json!({ "url": "https://h.example.com/hook" }));
    let id = body(created.send().await.unwrap(), 201).await["id"].as_str().unwrap().to_owned();
    body(app.bootstrap(&identity("ada", "ada@example.com", None)).await, 201).await;
    let sql = app.db.sql().await;
    eventually("the event is fanned out", || async { sql.count("webhook_deliveries").await > 0 }).await;
    sql.inject("DELETE", "webhook_deliveries", None, "SELECT RAISE(ABORT, 'injected');", "RAISE EXCEPTION 'injected';")
        .await;
    let path = format!("/admin/webhooks/{id}");
    let failed = app.admin(Method::DELETE, &path).send().await.unwrap();
    let status = failed.status().as_u16();
    assert!((500..600).contains(&status), "{status}");
    let code = body(failed, status).await["code"].clone();
    let shown = body(app.admin(Method::GET, &path).send().await.unwrap(), 200).await;
    assert_eq!(shown["enabled"], false, "made in part: disabled, not deleted");
    let rows = audit(&app, "action=webhook.deleted").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0]["outcome"].as_str(), rows[0]["target_id"].as_str()), (Some("failure"), Some(id.as_str())));
    assert_eq!(rows[0]["reason"], code);
    // Refused: no row.
    assert_eq!(app.admin(Method::DELETE, "/admin/webhooks/nope").send().await.unwrap().status(), 400);
    sql.remove_injected("webhook_deliveries").await;
    assert_eq!(app.admin(Method::DELETE, &path).send().await.unwrap().status(), 204);
    let rows = audit(&app, "action=webhook.deleted").await;
    let outcomes: Vec<&str> = rows.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["success", "failure"], "latest first");
}
