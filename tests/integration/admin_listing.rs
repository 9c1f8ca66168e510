//! Operators' admin endpoints over HTTP, on both backends: user, team and member listings with
//! their cursors and filters, team creation, and user deletion (what it deletes, what it
//! refuses, and a bootstrap racing it).

use std::collections::HashSet;

use chrono::{TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera::domain::{AuthProfile, ProfileId, ProfileKind, ProfileStatus, Slug, TeamId, UserId};
use tessera::store::{FirstWrite, NewSession};

use crate::helpers::{Backend, TestApp, identity, json as body, on_both_backends};

on_both_backends!(
    users_are_listed_a_page_at_a_time_with_filters,
    bad_listing_requests_say_what_to_fix,
    teams_are_created_and_listed_with_their_members,
    an_operator_deletes_a_team_once_but_never_a_default_one,
    deleting_a_user_leaves_nothing_of_theirs,
    the_last_owner_of_a_team_with_members_is_not_deleted,
    a_bootstrap_racing_a_deletion_sees_the_user_or_creates_a_new_one,
);

/// Bootstraps a user; returns their id and default team's slug.
async fn bootstrap(app: &TestApp, subject: &str, email: &str) -> (String, String) {
    let created = body(app.bootstrap(&identity(subject, email, Some("Test Person"))).await, 201).await;
    (created["user_id"].as_str().unwrap().to_owned(), created["team"]["slug"].as_str().unwrap().to_owned())
}

async fn get(app: &TestApp, path: &str, status: u16) -> Value {
    body(app.admin(Method::GET, path).send().await.unwrap(), status).await
}

/// The ids of every page of a listing, following `next_cursor`.
async fn every_page(app: &TestApp, path: &str, items: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    let separator = if path.contains('?') { '&' } else { '?' };
    for _ in 0..100 {
        let url = match &cursor {
            Some(cursor) => format!("{path}{separator}cursor={cursor}"),
            None => path.to_owned(),
        };
        let page = get(app, &url, 200).await;
        let key = if items == "members" { "user_id" } else { "id" };
        ids.extend(page[items].as_array().unwrap().iter().map(|i| i[key].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                return ids;
            }
        }
    }
    panic!("the listing never ended");
}

async fn users_are_listed_a_page_at_a_time_with_filters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut ids = Vec::new();
    for (i, email) in
        ["ada@example.com", "bob@example.com", "Ada@EXAMPLE.com", "cy@example.org", "di@example.org"].iter().enumerate()
    {
        ids.push(bootstrap(&app, &format!("user-{i}"), email).await.0);
    }
    let first = get(&app, "/admin/users", 200).await;
    assert_eq!(first["users"].as_array().unwrap().len(), 5);
    assert!(first["next_cursor"].is_null());
    let user = &first["users"][0];
    for field in ["id", "email", "email_verified", "name", "disabled", "created_at", "updated_at"] {
        assert!(user.get(field).is_some(), "{field} in {user}");
    }
    assert_eq!(every_page(&app, "/admin/users?limit=2", "users").await, ids, "oldest first, pages meet end to end");
    assert_eq!(every_page(&app, "/admin/users?limit=200", "users").await, ids);

    let by_email = every_page(&app, "/admin/users?email=ADA%40example.com", "users").await;
    assert_eq!(by_email, [ids[0].clone(), ids[2].clone()], "compared as linking does");
    let by_identity = format!("/admin/users?issuer={}&subject=user-3", crate::helpers::ISSUER);
    assert_eq!(every_page(&app, &by_identity, "users").await, [ids[3].clone()]);

    let (_, team) = bootstrap(&app, "owner", "owner@example.com").await;
    let added = app.admin(Method::POST, &format!("/admin/teams/{team}/members"));
    body(added.json(&json!({"user_id": ids[1], "role": "member"})).send().await.unwrap(), 201).await;
    let members = every_page(&app, &format!("/admin/users?team={team}"), "users").await;
    assert_eq!(members.len(), 2);
    assert!(members.contains(&ids[1]));

    // A misspelt field is refused, not ignored with a 200 that changed something else.
    let misspelt = app.admin(Method::PATCH, &format!("/admin/users/{}", ids[4]));
    let misspelt = body(misspelt.json(&json!({"name": "Di", "disable": true})).send().await.unwrap(), 400).await;
    assert_eq!(misspelt["code"], "invalid_request");
    let disabled = app.admin(Method::PATCH, &format!("/admin/users/{}", ids[4]));
    body(disabled.json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    assert_eq!(every_page(&app, "/admin/users?disabled=true", "users").await, [ids[4].clone()]);
    let enabled = every_page(&app, "/admin/users?disabled=false&limit=3", "users").await;
    assert_eq!(enabled.len(), 5, "four of the five, and the team owner");
    assert!(!enabled.contains(&ids[4]));
    let combined = every_page(&app, "/admin/users?email=di%40example.org&disabled=false", "users").await;
    assert!(combined.is_empty(), "filters combine");
    app.stop().await;
}

async fn bad_listing_requests_say_what_to_fix(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    bootstrap(&app, "someone", "someone@example.com").await;
    for (path, status, code, field) in [
        ("/admin/users?cursor=not-a-cursor", 400, "invalid_cursor", Some("cursor")),
        ("/admin/users?cursor=AAAA", 400, "invalid_cursor", Some("cursor")),
        ("/admin/teams?cursor=%21", 400, "invalid_cursor", Some("cursor")),
        ("/admin/users?limit=0", 400, "invalid_request", Some("limit")),
        ("/admin/users?limit=201", 400, "invalid_request", Some("limit")),
        ("/admin/users?limit=many", 400, "invalid_request", None),
        ("/admin/users?disabled=maybe", 400, "invalid_request", None),
        ("/admin/users?emial=a%40example.com", 400, "invalid_request", None),
        ("/admin/users?email=not-an-email", 400, "invalid_email", Some("email")),
        ("/admin/users?issuer=https%3A%2F%2Fissuer.example.com", 400, "missing_field", Some("subject")),
        ("/admin/users?subject=someone", 400, "missing_field", Some("issuer")),
        ("/admin/users?team=no-such-team", 404, "team_not_found", None),
        ("/admin/users?team=Not%20A%20Slug", 400, "invalid_team", None),
        ("/admin/teams/no-such-team/members", 404, "team_not_found", None),
    ] {
        let problem = get(&app, path, status).await;
        assert_eq!(problem["code"], code, "{path}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{path}: {problem}");
        }
    }
    let anonymous = app.client.get(app.url("/admin/users")).send().await.unwrap();
    assert_eq!(body(anonymous, 401).await["code"], "missing_credentials");
    let wrong = app.client.get(app.url("/admin/teams")).bearer_auth("not-the-admin-token").send().await.unwrap();
    assert_eq!(body(wrong, 401).await["code"], "invalid_credentials");
    app.stop().await;
}

async fn teams_are_created_and_listed_with_their_members(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ada, ada_team) = bootstrap(&app, "ada", "ada@example.com").await;
    let (bob, _) = bootstrap(&app, "bob", "bob@example.com").await;

    let create = |body: Value| app.admin(Method::POST, "/admin/teams").json(&body).send();
    let response = create(json!({"slug": "acme", "name": "Acme Inc", "owner": ada})).await.unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let acme = body(response, 201).await;
    assert_eq!((acme["slug"].as_str(), acme["name"].as_str()), (Some("acme"), Some("Acme Inc")));
    assert_eq!(location, format!("/admin/teams/{}", acme["id"].as_str().unwrap()));
    assert_eq!(get(&app, &location, 200).await, acme);
    let plain = body(create(json!({"slug": "acme-labs", "name": "Acme Labs"})).await.unwrap(), 201).await;

    let taken = body(create(json!({"slug": "acme", "name": "Another"})).await.unwrap(), 409).await;
    assert_eq!(taken["code"], "slug_taken");
    for (request, code, field) in [
        (json!({"slug": "Acme!", "name": "x"}), "invalid_slug", "slug"),
        (json!({"slug": "0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a", "name": "x"}), "invalid_slug", "slug"),
        (json!({"name": "x"}), "missing_field", "slug"),
        (json!({"slug": "fine"}), "missing_field", "name"),
        (json!({"slug": "fine", "name": "  "}), "missing_field", "name"),
        (json!({"slug": "fine", "name": "x".repeat(201)}), "field_too_long", "name"),
        (json!({"slug": "fine", "name": "x", "owner": "someone"}), "invalid_user_id", "owner"),
    ] {
        let problem = body(create(request.clone()).await.unwrap(), 400).await;
        assert_eq!((problem["code"].as_str(), problem["field"].as_str()), (Some(code), Some(field)), "{request}");
    }
    // A misspelt field would make a team without its owner: refused.
    let misspelt = body(create(json!({"slug": "fine", "name": "x", "ownr": ada})).await.unwrap(), 400).await;
    assert_eq!(misspelt["code"], "invalid_request", "{misspelt}");
    let ghost = json!({"slug": "fine", "name": "x", "owner": UserId::generate().to_string()});
    assert_eq!(body(create(ghost).await.unwrap(), 404).await["code"], "user_not_found");
    assert_eq!(get(&app, "/admin/teams/fine", 404).await["code"], "team_not_found", "nothing was written");

    let all = every_page(&app, "/admin/teams?limit=1", "teams").await;
    assert_eq!(all.len(), 4, "two default teams and two created ones: {all:?}");
    let acmes = every_page(&app, "/admin/teams?slug_prefix=acme", "teams").await;
    assert_eq!(acmes, [acme["id"].as_str().unwrap(), plain["id"].as_str().unwrap()]);
    // No slug has such a prefix: refused, never handed to the database (a NUL is an error there).
    for prefix in ["%00", "Acme", "acme%20", &"a".repeat(64)] {
        let problem = get(&app, &format!("/admin/teams?slug_prefix={prefix}"), 400).await;
        assert_eq!(
            (problem["code"].as_str(), problem["field"].as_str()),
            (Some("invalid_request"), Some("slug_prefix"))
        );
    }

    let added = app.admin(Method::POST, "/admin/teams/acme/members");
    body(added.json(&json!({"user_id": bob, "role": "admin"})).send().await.unwrap(), 201).await;
    let members = get(&app, "/admin/teams/acme/members", 200).await;
    let rows = members["members"].as_array().unwrap();
    let roles: HashSet<(String, String)> = rows
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap().to_owned(), m["role"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(roles, HashSet::from([(ada.clone(), "owner".into()), (bob.clone(), "admin".into())]));
    let ada_row = rows.iter().find(|m| m["user_id"] == ada.as_str()).unwrap();
    assert_eq!(ada_row["email"], "ada@example.com");
    assert!(ada_row["joined_at"].is_string());
    let by_id = format!("/admin/teams/{}/members?limit=1", acme["id"].as_str().unwrap());
    assert_eq!(every_page(&app, &by_id, "members").await.len(), 2);
    assert_eq!(
        every_page(&app, &format!("/admin/teams/{ada_team}/members"), "members").await,
        std::slice::from_ref(&ada)
    );
    // The owner joined a team that is not their default one.
    let profile = get(&app, &format!("/admin/users/{ada}"), 200).await;
    let acme_membership = profile["teams"].as_array().unwrap().iter().find(|t| t["slug"] == "acme").unwrap().clone();
    assert_eq!(
        (acme_membership["role"].as_str(), acme_membership["is_default"].as_bool()),
        (Some("owner"), Some(false))
    );
    app.stop().await;
}

/// `DELETE /admin/teams/{team}`: the team goes with its memberships, domain claims and
/// connected accounts (revoked, each with its event), each member told; sent eight times at
/// once, it is deleted once; a member's default team is refused, nothing written.
async fn an_operator_deletes_a_team_once_but_never_a_default_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ada, ada_team) = bootstrap(&app, "ada", "ada@example.com").await;
    let (bob, _) = bootstrap(&app, "bob", "bob@example.com").await;
    let created = app.admin(Method::POST, "/admin/teams").json(&json!({"slug": "oops", "name": "Oops", "owner": ada}));
    let oops = body(created.send().await.unwrap(), 201).await["id"].as_str().unwrap().to_owned();
    let added = app.admin(Method::POST, "/admin/teams/oops/members").json(&json!({"user_id": bob, "role": "member"}));
    assert_eq!(added.send().await.unwrap().status(), StatusCode::CREATED);
    let claim = json!({"domain": "oops.example", "issuer": crate::helpers::ISSUER, "verified": true});
    let claimed = app.admin(Method::POST, "/admin/teams/oops/domains").json(&claim).send().await.unwrap();
    assert_eq!(claimed.status(), StatusCode::CREATED);
    let shared = profile(&app, &oops, &bob, ProfileKind::Env, "shared").await;
    let kept = profile(&app, &team_id(&app, &ada_team).await, &ada, ProfileKind::Env, "kept").await;
    let sql = app.db.sql().await;
    let removed = "outbox_events WHERE topic = 'team.member.removed'";
    let (removed_before, revoked_before) =
        (sql.count(removed).await, sql.count("outbox_events WHERE topic = 'auth_profile.revoked'").await);

    // Ada's default team goes with Ada, not by itself.
    let default = body(app.admin(Method::DELETE, &format!("/admin/teams/{ada_team}")).send().await.unwrap(), 409).await;
    assert_eq!(default["code"], "default_team", "{default}");
    assert_eq!(get(&app, &format!("/admin/teams/{ada_team}"), 200).await["slug"], ada_team.as_str());

    let deletions: Vec<_> = (0..8).map(|_| app.admin(Method::DELETE, "/admin/teams/oops")).collect();
    let mut statuses: Vec<u16> =
        crate::helpers::send_at_once(&deletions).await.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [204, 404, 404, 404, 404, 404, 404, 404], "deleted once");
    assert_eq!(get(&app, "/admin/teams/oops", 404).await["code"], "team_not_found");
    let team = sql.uuid(&oops);
    for table in
        ["teams WHERE id", "memberships WHERE team_id", "team_domains WHERE team_id", "auth_profiles WHERE team_id"]
    {
        assert_eq!(sql.count(&format!("{table} = {team}")).await, 0, "{table}");
    }
    assert_eq!(sql.count(removed).await - removed_before, 2, "each member told");
    let told = sql.texts(&format!("SELECT CAST(payload AS TEXT) FROM {removed} ORDER BY seq DESC LIMIT 1")).await;
    assert!(told[0].contains("\"team_deleted\":true") || told[0].contains("\"team_deleted\": true"), "{told:?}");
    assert_eq!(sql.count("outbox_events WHERE topic = 'auth_profile.revoked'").await - revoked_before, 1);
    assert_eq!(sql.count("audit_events WHERE action = 'team.deleted'").await, 1);
    // The members' other teams are theirs still; the deleted one is no longer among them.
    let teams_of = async |user: &str| {
        let user = get(&app, &format!("/admin/users/{user}"), 200).await;
        user["teams"].as_array().unwrap().iter().map(|t| t["slug"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(teams_of(&ada).await, std::slice::from_ref(&ada_team));
    assert_eq!(teams_of(&bob).await.len(), 1);
    assert!(app.store.profile(shared).await.unwrap().is_none());
    assert!(app.store.profile(kept).await.unwrap().is_some());
    app.stop().await;
}

/// The id of the team whose slug is `slug`.
async fn team_id(app: &TestApp, slug: &str) -> String {
    get(app, &format!("/admin/teams/{slug}"), 200).await["id"].as_str().unwrap().to_owned()
}

/// A profile of `team` made by `by`, written through the store.
async fn profile(app: &TestApp, team: &str, by: &str, kind: ProfileKind, slug: &str) -> ProfileId {
    let now = Utc::now();
    let team: TeamId = team.parse().unwrap();
    let profile = AuthProfile {
        id: ProfileId::generate(),
        team_id: team,
        slug: Slug::parse(slug).unwrap(),
        connector_key: "github-issues".into(),
        profile_kind: kind,
        provider: "github".into(),
        status: ProfileStatus::Active,
        created_by: by.parse().unwrap(),
        display_name: slug.into(),
        scopes: vec![],
        granted_scopes: None,
        is_default: false,
        upstream_account_id: None,
        access_token_expires_at: None,
        pending_expires_at: None,
        version: 0,
        created_at: now,
        updated_at: now,
        credential: None,
    };
    match app.store.insert_profile(&profile, FirstWrite::Nothing, u32::MAX).await.unwrap() {
        tessera::store::ProfileInsert::Inserted(inserted) => inserted.id,
        refused => panic!("not inserted: {refused:?}"),
    }
}

async fn deleting_a_user_leaves_nothing_of_theirs(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ada, ada_team) = bootstrap(&app, "ada", "ada@example.com").await;
    let (bob, bob_team) = bootstrap(&app, "bob", "bob@example.com").await;
    let team_id =
        async |slug: &str| get(&app, &format!("/admin/teams/{slug}"), 200).await["id"].as_str().unwrap().to_owned();
    let bob_team_id = team_id(&bob_team).await;
    let added = app.admin(Method::POST, &format!("/admin/teams/{bob_team}/members"));
    body(added.json(&json!({"user_id": ada, "role": "admin"})).send().await.unwrap(), 201).await;
    let personal = profile(&app, &bob_team_id, &ada, ProfileKind::OauthAccount, "adas-account").await;
    let shared = profile(&app, &bob_team_id, &ada, ProfileKind::Env, "team-key").await;
    let in_own_team = profile(&app, &team_id(&ada_team).await, &ada, ProfileKind::OauthApp, "adas-app").await;
    let now = Utc::now();
    app.store
        .start_session(
            &NewSession {
                token_hash: [7; 32],
                user_id: ada.parse::<UserId>().unwrap(),
                identity_id: None,
                device: None,
                authenticated_at: None,
                now,
                expires_at: now + TimeDelta::hours(1),
            },
            None,
            &[],
        )
        .await
        .unwrap();
    let sql = app.db.sql().await;
    let id = sql.uuid(&ada);
    let count_of_ada = || async {
        let mut counts = Vec::new();
        for (table, column) in [
            ("users", "id"),
            ("identities", "user_id"),
            ("sessions", "user_id"),
            ("memberships", "user_id"),
            ("auth_profiles", "created_by"),
            ("identity_events", "user_id"),
        ] {
            counts.push(sql.count(&format!("{table} WHERE {column} = {id}")).await);
        }
        counts
    };
    assert_eq!(count_of_ada().await, [1, 1, 1, 2, 3, 1], "an identity audit row from provisioning");
    let teams_before = sql.count("teams").await;

    let deleted = app.admin(Method::DELETE, &format!("/admin/users/{ada}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(count_of_ada().await, [0, 0, 0, 0, 0, 0], "nothing of hers remains");
    assert_eq!(sql.count("teams").await, teams_before - 1, "her default team went, Bob's stayed");
    assert!(app.store.profile(personal).await.unwrap().is_none(), "her personal account is gone");
    let kept = app.store.profile(shared).await.unwrap().expect("the team's profile stays");
    assert_eq!(kept.created_by.to_string(), bob, "credited to the team's owner");

    let events = sql.texts("SELECT topic FROM outbox_events ORDER BY seq").await;
    assert_eq!(events.last().map(String::as_str), Some("user.deleted"), "{events:?}");
    // Each connected account that ended with her is told, as a revocation would be.
    let revoked = sql
        .texts("SELECT CAST(payload AS TEXT) FROM outbox_events WHERE topic = 'auth_profile.revoked' ORDER BY seq")
        .await;
    let mut revoked: Vec<(String, String, String)> = revoked
        .iter()
        .map(|text| serde_json::from_str::<Value>(text).unwrap())
        .map(|e| {
            (
                e["profile"]["id"].as_str().unwrap().to_owned(),
                e["profile"]["status"].to_string(),
                e["reason"].to_string(),
            )
        })
        .collect();
    revoked.sort();
    let mut expected = vec![
        (in_own_team.to_string(), "\"revoked\"".to_owned(), "\"team_deleted\"".to_owned()),
        (personal.to_string(), "\"revoked\"".to_owned(), "\"user_deleted\"".to_owned()),
    ];
    expected.sort();
    assert_eq!(revoked, expected);
    assert_eq!(get(&app, &format!("/admin/users/{ada}"), 404).await["code"], "user_not_found");
    let again = app.admin(Method::DELETE, &format!("/admin/users/{ada}")).send().await.unwrap();
    assert_eq!(body(again, 404).await["code"], "user_not_found");
    let bad = app.admin(Method::DELETE, "/admin/users/not-a-uuid").send().await.unwrap();
    assert_eq!(body(bad, 400).await["code"], "invalid_user_id");
    let listed = every_page(&app, "/admin/users", "users").await;
    assert_eq!(listed, std::slice::from_ref(&bob));
    // Her identity is free: a bootstrap makes a new user.
    let (again, _) = bootstrap(&app, "ada", "ada@example.com").await;
    assert_ne!(again, ada);
    app.stop().await;
}

async fn the_last_owner_of_a_team_with_members_is_not_deleted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ada, ada_team) = bootstrap(&app, "ada", "ada@example.com").await;
    let (bob, _) = bootstrap(&app, "bob", "bob@example.com").await;
    let members = format!("/admin/teams/{ada_team}/members");
    let add =
        |role: &'static str| app.admin(Method::POST, &members).json(&json!({"user_id": bob, "role": role})).send();
    body(add("member").await.unwrap(), 201).await;
    let sql = app.db.sql().await;
    let before = sql.provisioning_counts().await;

    let refused = app.admin(Method::DELETE, &format!("/admin/users/{ada}")).send().await.unwrap();
    let problem = body(refused, 409).await;
    assert_eq!((problem["code"].as_str(), problem["team"].as_str()), (Some("last_owner"), Some(ada_team.as_str())));
    assert_eq!(sql.provisioning_counts().await, before, "nothing written");

    body(add("owner").await.unwrap(), 200).await;
    let deleted = app.admin(Method::DELETE, &format!("/admin/users/{ada}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let left = get(&app, &members, 200).await;
    assert_eq!(left["members"].as_array().unwrap().len(), 1);
    assert_eq!(left["members"][0]["user_id"], bob.as_str());
    app.stop().await;
}

async fn a_bootstrap_racing_a_deletion_sees_the_user_or_creates_a_new_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let sql = app.db.sql().await;
    for round in 0..5 {
        let subject = format!("racer-{round}");
        let (user, _) = bootstrap(&app, &subject, "racer@example.com").await;
        let mut tasks = Vec::new();
        for i in 0..9 {
            let (client, url) = (app.client.clone(), app.url(&format!("/admin/users/{user}")));
            let bootstrap_url = app.url("/admin/users/bootstrap");
            let body = identity(&subject, "racer@example.com", None);
            tasks.push(tokio::spawn(async move {
                let request = if i == 4 { client.delete(url) } else { client.post(bootstrap_url).json(&body) };
                let response = request.bearer_auth(crate::helpers::ADMIN_TOKEN).send().await.unwrap();
                let status = response.status().as_u16();
                let text = response.text().await.unwrap();
                (i, status, text)
            }));
        }
        let mut new_users = HashSet::new();
        for task in tasks {
            let (i, status, text) = task.await.unwrap();
            if i == 4 {
                assert_eq!(status, 204, "the deletion: {text}");
                continue;
            }
            assert!(status == 200 || status == 201, "a bootstrap answered {status}: {text}");
            let answer: Value = serde_json::from_str(&text).unwrap();
            let id = answer["user_id"].as_str().unwrap().to_owned();
            if id != user {
                new_users.insert(id);
            }
        }
        assert!(new_users.len() <= 1, "one new user at most: {new_users:?}");
        // Whatever the interleaving: every user left is whole (one identity, one default team).
        let [users, identities, teams, memberships, _] = sql.provisioning_counts().await;
        assert_eq!((identities, teams, memberships), (users, users, users), "round {round}");
        let holders = sql.count(&format!("identities WHERE subject = '{subject}'")).await;
        assert_eq!(holders, new_users.len() as i64, "round {round}: the identity is held by the new user, if any");
        // Start the next round from a clean slate.
        for id in new_users {
            let deleted = app.admin(Method::DELETE, &format!("/admin/users/{id}")).send().await.unwrap();
            assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
        }
    }
    app.stop().await;
}
