//! `POST /admin/users/bootstrap`, the legacy `POST /admin/users/{id}/bootstrap` and
//! `GET /admin/users/{id}`, over real HTTP, on both backends.

use std::collections::HashSet;
use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Backend, ISSUER, OTHER_ISSUER, TestApp, identity, json as body, on_both_backends};

on_both_backends!(
    bootstrap_creates_a_user_then_returns_the_same_answer,
    the_seed_field_names_are_accepted,
    a_trailing_slash_does_not_make_a_second_identity,
    one_subject_under_two_issuers_makes_two_users,
    an_issuer_outside_the_allow_list_is_refused_and_nothing_is_written,
    concurrent_bootstraps_of_one_identity_create_one_user,
    concurrent_bootstraps_with_one_name_never_fail_on_a_slug,
    bootstraps_racing_the_users_deletion_always_answer_with_a_user,
    teams_are_named_after_the_first_name,
    the_legacy_route_ensures_the_default_team_of_an_existing_user,
    the_two_bootstrap_routes_do_not_shadow_each_other,
    get_user_returns_identities_and_teams,
    a_disabled_user_is_refused,
    admin_routes_require_a_valid_token,
    health_and_readiness_answer,
    an_injection_attempt_is_stored_verbatim,
    bodies_of_another_shape_are_refused_and_what_a_user_reads_is_accepted_back,
);

async fn bootstrap_creates_a_user_then_returns_the_same_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = body(app.bootstrap(&identity("sub-1", "ada@example.com", Some("Ada Lovelace"))).await, 201).await;
    assert_eq!(first["created"], true);
    assert_eq!(first["team"]["name"], "Ada's Team");
    assert_eq!(first["team"]["slug"], "adas-team");
    let user_id = first["user_id"].as_str().unwrap();
    assert_ne!(user_id, "sub-1", "the internal id is never the upstream subject");
    assert_eq!(uuid::Uuid::parse_str(user_id).unwrap().get_version_num(), 7);

    let second = body(app.bootstrap(&identity("sub-1", "ada@example.com", Some("Ada Lovelace"))).await, 200).await;
    assert_eq!(second["created"], false);
    assert_eq!(second["user_id"], first["user_id"]);
    assert_eq!(second["team"], first["team"]);
    assert_eq!(app.db.sql().await.provisioning_counts().await, [1, 1, 1, 1, 1]);
}

async fn the_seed_field_names_are_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let seed = json!({
        "oidc_issuer": ISSUER,
        "oidc_user_id": "kratos-42",
        "oidc_user_email": "grace@example.com",
        "oidc_user_name": "Grace Hopper",
    });
    let created = body(app.bootstrap(&seed).await, 201).await;
    assert_eq!(created["team"]["name"], "Grace's Team");
    let again = body(app.bootstrap(&identity("kratos-42", "grace@example.com", None)).await, 200).await;
    assert_eq!(again["user_id"], created["user_id"]);
}

async fn a_trailing_slash_does_not_make_a_second_identity(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut with_slash = identity("sub-1", "a@example.com", None);
    with_slash["issuer"] = format!("{ISSUER}/").into();
    let mut shouty = identity("sub-1", "a@example.com", None);
    shouty["issuer"] = ISSUER.replace("issuer.example.com", "ISSUER.Example.COM:443").into();
    let a = body(app.bootstrap(&with_slash).await, 201).await;
    let b = body(app.bootstrap(&identity("sub-1", "a@example.com", None)).await, 200).await;
    let c = body(app.bootstrap(&shouty).await, 200).await;
    assert_eq!(a["user_id"], b["user_id"]);
    assert_eq!(a["user_id"], c["user_id"]);
    assert_eq!(app.db.sql().await.count("identities").await, 1);
}

async fn one_subject_under_two_issuers_makes_two_users(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut other = identity("shared-sub", "x@example.com", None);
    other["issuer"] = OTHER_ISSUER.into();
    let a = body(app.bootstrap(&identity("shared-sub", "x@example.com", None)).await, 201).await;
    let b = body(app.bootstrap(&other).await, 201).await;
    assert_ne!(a["user_id"], b["user_id"]);
    assert_ne!(a["team"]["id"], b["team"]["id"]);
    assert_eq!(app.db.sql().await.provisioning_counts().await, [2, 2, 2, 2, 2]);
}

async fn an_issuer_outside_the_allow_list_is_refused_and_nothing_is_written(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for issuer in [
        "https://evil.example.com",
        "https://issuer.example.com.evil.example",
        "https://issuer.example.com/other-realm",
        "https://other.example.org/realms",
        "http://localhost:8080",
    ] {
        let mut claim = identity("sub-1", "a@example.com", None);
        claim["issuer"] = issuer.into();
        let problem = body(app.bootstrap(&claim).await, 403).await;
        assert_eq!(problem["code"], "issuer_not_allowed", "{issuer}");
    }
    assert_eq!(app.db.sql().await.provisioning_counts().await, [0, 0, 0, 0, 0]);
}

async fn concurrent_bootstraps_of_one_identity_create_one_user(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let claim = identity("racer", "racer@example.com", Some("Rita Racer"));
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let app = app.clone();
        let claim = claim.clone();
        tasks.push(tokio::spawn(async move {
            let response = app.bootstrap(&claim).await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }));
    }
    let mut created = 0;
    let mut users = HashSet::new();
    let mut teams = HashSet::new();
    for task in tasks {
        let (status, value) = task.await.unwrap();
        assert!(status == 200 || status == 201, "status {status}: {value}");
        if status == 201 {
            created += 1;
            assert_eq!(value["created"], true);
        }
        users.insert(value["user_id"].as_str().unwrap().to_owned());
        teams.insert(value["team"].to_string());
    }
    assert_eq!(created, 1, "exactly one caller created the user");
    assert_eq!(users.len(), 1, "every caller got the same user");
    assert_eq!(teams.len(), 1, "every caller got the same team");
    assert_eq!(app.db.sql().await.provisioning_counts().await, [1, 1, 1, 1, 1]);
}

async fn bootstraps_racing_the_users_deletion_always_answer_with_a_user(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let claim = identity("leaver", "leaver@example.com", Some("Lee"));
    let first = body(app.bootstrap(&claim).await, 201).await;
    let (user, team) =
        (first["user_id"].as_str().unwrap().to_owned(), first["team"]["id"].as_str().unwrap().to_owned());
    // The user's default team gets another owner, then the user leaves it: no default team left,
    // so a bootstrap of the identity makes one — while the user is being deleted.
    let other = body(app.bootstrap(&identity("stayer", "stayer@example.com", None)).await, 201).await;
    let add = json!({"user_id": other["user_id"], "role": "owner"});
    let members = format!("/admin/teams/{team}/members");
    assert!(app.admin(Method::POST, &members).json(&add).send().await.unwrap().status().is_success());
    let left = app.admin(Method::DELETE, &format!("{members}/{user}")).send().await.unwrap();
    assert_eq!(left.status(), 204);
    let bootstraps: Vec<_> = (0..8)
        .map(|_| {
            let (app, claim) = (app.clone(), claim.clone());
            tokio::spawn(async move { app.bootstrap(&claim).await.status().as_u16() })
        })
        .collect();
    let deleted = app.admin(Method::DELETE, &format!("/admin/users/{user}")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    for bootstrap in bootstraps {
        let status = bootstrap.await.unwrap();
        assert!(status == 200 || status == 201, "status {status}: an answer with a user, never user_not_found");
    }
    // Afterwards (made anew if every bootstrap ran before the deletion), the identity belongs
    // to one user with a default team, the same at every call.
    let again = app.bootstrap(&claim).await;
    assert!(again.status() == 200 || again.status() == 201);
    let again: Value = again.json().await.unwrap();
    let last = body(app.bootstrap(&claim).await, 200).await;
    assert_eq!((&last["user_id"], &last["team"]), (&again["user_id"], &again["team"]));
}

async fn concurrent_bootstraps_with_one_name_never_fail_on_a_slug(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let name = if i % 2 == 0 { Some("Sam Same") } else { None };
            let response = app.bootstrap(&identity(&format!("sam-{i}"), "sam@example.com", name)).await;
            body(response, 201).await
        }));
    }
    let mut slugs = HashSet::new();
    for task in tasks {
        let value = task.await.unwrap();
        assert!(slugs.insert(value["team"]["slug"].as_str().unwrap().to_owned()), "slugs are unique");
    }
    assert!(slugs.contains("sams-team"));
    assert!(slugs.contains("default-team"));
    assert_eq!(app.db.sql().await.provisioning_counts().await, [32, 32, 32, 32, 32]);
}

async fn teams_are_named_after_the_first_name(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cases = [
        (Some("  Zoë   Ångström "), "Zoë's Team", "zos-team"),
        (Some("Madonna"), "Madonna's Team", "madonnas-team"),
        (None, "Default Team", "default-team"),
        (Some("   "), "Default Team", "default-team-"),
    ];
    for (i, (name, team, slug)) in cases.iter().enumerate() {
        let value = body(app.bootstrap(&identity(&format!("n-{i}"), "n@example.com", *name)).await, 201).await;
        assert_eq!(value["team"]["name"], *team);
        assert!(value["team"]["slug"].as_str().unwrap().starts_with(slug), "{value}");
    }
}

async fn the_legacy_route_ensures_the_default_team_of_an_existing_user(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = body(app.bootstrap(&identity("legacy", "l@example.com", Some("Lee"))).await, 201).await;
    let user_id = created["user_id"].as_str().unwrap();
    let path = format!("/admin/users/{user_id}/bootstrap");

    let existing = body(app.admin(Method::POST, &path).send().await.unwrap(), 200).await;
    assert_eq!(existing["team"], created["team"]);
    assert_eq!(existing["created"], false);

    // A user who lost their default team gets a new one, exactly once under concurrency.
    let sql = app.db.sql().await;
    sql.exec(&format!("DELETE FROM teams WHERE id = {}", sql.uuid(created["team"]["id"].as_str().unwrap())))
        .await
        .unwrap();
    assert_eq!(sql.count("memberships").await, 0);
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let app = app.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let response = app.admin(Method::POST, &path).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }));
    }
    let mut team_ids = HashSet::new();
    let mut created_count = 0;
    for task in tasks {
        let (status, value) = task.await.unwrap();
        assert!(status == 200 || status == 201, "{status} {value}");
        created_count += usize::from(status == 201);
        team_ids.insert(value["team"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created_count, 1);
    assert_eq!(team_ids.len(), 1);
    assert_eq!(sql.count("memberships WHERE is_default").await, 1);
    // The new team is announced once (the first one was, in `user.created`).
    let added = sql.texts("SELECT CAST(payload AS TEXT) FROM outbox_events WHERE topic = 'team.member.added'").await;
    assert_eq!(added.len(), 1, "{added:?}");
    let added: Value = serde_json::from_str(&added[0]).unwrap();
    assert_eq!(added["team_id"].as_str(), team_ids.iter().next().map(String::as_str));
    assert_eq!((added["user_id"].as_str(), added["role"].as_str()), (Some(user_id), Some("owner")));

    let unknown = format!("/admin/users/{}/bootstrap", uuid::Uuid::now_v7());
    let problem = body(app.admin(Method::POST, &unknown).send().await.unwrap(), 404).await;
    assert_eq!(problem["code"], "user_not_found");
    let problem = body(app.admin(Method::POST, "/admin/users/not-a-uuid/bootstrap").send().await.unwrap(), 400).await;
    assert_eq!(problem["code"], "invalid_user_id");
}

async fn the_two_bootstrap_routes_do_not_shadow_each_other(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // The identity route with a body that would also be a valid user-id route call.
    let created = body(app.bootstrap(&identity("route", "r@example.com", None)).await, 201).await;
    let user_id = created["user_id"].as_str().unwrap();
    // The user-id route, with a bootstrap body it must ignore.
    let response = app
        .admin(Method::POST, &format!("/admin/users/{user_id}/bootstrap"))
        .json(&identity("someone-else", "s@example.com", None))
        .send()
        .await
        .unwrap();
    let legacy = body(response, 200).await;
    assert_eq!(legacy["user_id"], created["user_id"]);
    // "bootstrap" in the user-id position is a malformed id, not the identity route.
    let problem = body(app.admin(Method::POST, "/admin/users/bootstrap/bootstrap").send().await.unwrap(), 400).await;
    assert_eq!(problem["code"], "invalid_user_id");
    // The identity route without a body is a request error, not a user lookup.
    let response = app
        .admin(Method::POST, "/admin/users/bootstrap")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(body(response, 400).await["code"], "malformed_json");
    // GET on the identity route is a wrong method, not a lookup of a user called "bootstrap".
    let response = app.admin(Method::GET, "/admin/users/bootstrap").send().await.unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(body(response, 405).await["code"], "method_not_allowed");
    assert_eq!(app.db.sql().await.count("users").await, 1);
}

async fn get_user_returns_identities_and_teams(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = body(app.bootstrap(&identity("prof", "Prof@Example.COM", Some("Pat Prof"))).await, 201).await;
    let user_id = created["user_id"].as_str().unwrap();
    let user = body(app.admin(Method::GET, &format!("/admin/users/{user_id}")).send().await.unwrap(), 200).await;
    assert_eq!(user["id"], user_id);
    assert_eq!(user["email"], "Prof@example.com");
    assert_eq!(user["name"], "Pat Prof");
    assert_eq!(user["disabled"], false);
    assert_eq!(user["identities"].as_array().unwrap().len(), 1);
    assert_eq!(user["identities"][0]["issuer"], ISSUER);
    assert_eq!(user["identities"][0]["subject"], "prof");
    assert_eq!(user["identities"][0]["provider"], "test");
    assert_eq!(user["teams"][0]["id"], created["team"]["id"]);
    assert_eq!(user["teams"][0]["role"], "owner");
    assert_eq!(user["teams"][0]["is_default"], true);

    let missing = format!("/admin/users/{}", uuid::Uuid::now_v7());
    assert_eq!(body(app.admin(Method::GET, &missing).send().await.unwrap(), 404).await["code"], "user_not_found");
    let bad = app.admin(Method::GET, "/admin/users/123").send().await.unwrap();
    assert_eq!(body(bad, 400).await["code"], "invalid_user_id");
}

async fn a_disabled_user_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = body(app.bootstrap(&identity("dis", "d@example.com", None)).await, 201).await;
    let user_id = created["user_id"].as_str().unwrap();
    let sql = app.db.sql().await;
    sql.exec(&format!("UPDATE users SET disabled = TRUE WHERE id = {}", sql.uuid(user_id))).await.unwrap();
    let problem = body(app.bootstrap(&identity("dis", "d@example.com", None)).await, 403).await;
    assert_eq!(problem["code"], "user_disabled");
    let legacy = app.admin(Method::POST, &format!("/admin/users/{user_id}/bootstrap")).send().await.unwrap();
    assert_eq!(body(legacy, 403).await["code"], "user_disabled");
}

async fn admin_routes_require_a_valid_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.url("/admin/users/bootstrap");
    let claim = identity("auth", "a@example.com", None);

    let missing = app.client.post(&url).json(&claim).send().await.unwrap();
    assert!(missing.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_eq!(body(missing, 401).await["code"], "missing_credentials");

    for wrong in [&ADMIN_TOKEN[1..], "x", &format!("{ADMIN_TOKEN}x")] {
        let response = app.client.post(&url).bearer_auth(wrong).json(&claim).send().await.unwrap();
        assert_eq!(body(response, 401).await["code"], "invalid_credentials");
    }
    let basic = app.client.post(&url).basic_auth("admin", Some(ADMIN_TOKEN)).json(&claim).send().await.unwrap();
    assert_eq!(body(basic, 401).await["code"], "missing_credentials");

    // Authentication happens before the body is read: an oversized body without a token is a 401.
    let big = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 401);
    assert_eq!(app.db.sql().await.count("users").await, 0);

    let via_header = app.client.post(&url).header("x-admin-token", ADMIN_TOKEN).json(&claim).send().await.unwrap();
    assert_eq!(via_header.status(), 201);
    let via_bearer = app.client.post(&url).bearer_auth(ADMIN_TOKEN).json(&claim).send().await.unwrap();
    assert_eq!(via_bearer.status(), 200);
}

async fn health_and_readiness_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let health = body(app.client.get(app.url("/healthz")).send().await.unwrap(), 200).await;
    assert_eq!(health["status"], "ok");
    let ready = body(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    assert_eq!(ready["status"], "ready");
    app.stop().await;
}

async fn an_injection_attempt_is_stored_verbatim(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let subject = "x'); DROP TABLE users; --";
    let name = "Robert'); DROP TABLE teams;--";
    let created = body(app.bootstrap(&identity(subject, "bobby@example.com", Some(name))).await, 201).await;
    let user_id = created["user_id"].as_str().unwrap();
    let user = body(app.admin(Method::GET, &format!("/admin/users/{user_id}")).send().await.unwrap(), 200).await;
    assert_eq!(user["identities"][0]["subject"], subject);
    assert_eq!(user["name"], name);
    assert_eq!(app.db.sql().await.provisioning_counts().await, [1, 1, 1, 1, 1]);
}

/// Admin bodies are JSON objects of known fields (an array in a struct's place, or an unknown
/// field, is refused, and the detail names no type of Tessera's); a `provider` read from a user
/// is accepted back as it is; a name cannot reorder the text around it; an email that is
/// removed is not verified.
async fn bodies_of_another_shape_are_refused_and_what_a_user_reads_is_accepted_back(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let positional = json!([ISSUER, "pos-1", "pos@example.com", "Pos Itional", true, "ory"]);
    let refused = body(app.bootstrap(&positional).await, 400).await;
    assert_eq!(
        (refused["code"].as_str(), refused["detail"].as_str()),
        (Some("invalid_request"), Some("the body must be a JSON object"))
    );
    let mut unknown = identity("u9", "u9@example.com", None);
    unknown["foo"] = json!(1);
    assert_eq!(body(app.bootstrap(&unknown).await, 400).await["code"], "invalid_request");
    let string = body(app.bootstrap(&json!("x")).await, 400).await;
    let detail = string["detail"].as_str().unwrap();
    assert!(!detail.contains("BootstrapRequest") && !detail.contains("Failed to deserialize"), "{detail}");
    let mut reordering = identity("u10", "u10@example.com", None);
    reordering["name"] = json!("\u{202E}evil");
    let refused = body(app.bootstrap(&reordering).await, 400).await;
    assert_eq!((refused["code"].as_str(), refused["field"].as_str()), (Some("invalid_name"), Some("name")));
    assert_eq!(app.db.sql().await.count("users").await, 0, "nothing written");

    let mut named = identity("u11", "u11@example.com", None);
    named["provider"] = json!("Okta Prod.eu");
    named["email_verified"] = json!(true);
    let user = body(app.bootstrap(&named).await, 201).await["user_id"].as_str().unwrap().to_owned();
    let path = format!("/admin/users/{user}");
    let read = body(app.admin(Method::GET, &path).send().await.unwrap(), 200).await;
    assert_eq!(read["identities"][0]["provider"], "Okta Prod.eu");
    assert_eq!(read["email_verified"], true);
    // The name of an issuer entry without one, its host, which may be longer than a name set:
    // what identities record, an export writes, so a bootstrap (and an import) takes it back.
    let host = format!("keycloak.{}.internal.example.com", "identity-platform".repeat(3));
    let mut long = identity("u12", "u12@example.com", None);
    long["provider"] = json!(host);
    assert_eq!(app.bootstrap(&long).await.status(), reqwest::StatusCode::CREATED, "{} characters", host.len());
    let mut too_long = identity("u13", "u13@example.com", None);
    too_long["provider"] = json!("p".repeat(254));
    let refused = body(app.bootstrap(&too_long).await, 400).await;
    assert_eq!((refused["code"].as_str(), refused["field"].as_str()), (Some("field_too_long"), Some("provider")));
    let contradiction = json!({"email": null, "email_verified": true});
    let refused = body(app.admin(Method::PATCH, &path).json(&contradiction).send().await.unwrap(), 400).await;
    assert_eq!(refused["field"], "email_verified");
    let removed = body(app.admin(Method::PATCH, &path).json(&json!({"email": null})).send().await.unwrap(), 200).await;
    assert_eq!((&removed["email"], &removed["email_verified"]), (&json!(null), &json!(false)));
    // No address to verify: refused, not answered as done — and what is sent beside it is not
    // changed either.
    for verified in [json!({"email_verified": true}), json!({"email_verified": true, "name": "Renamed"})] {
        let refused = body(app.admin(Method::PATCH, &path).json(&verified).send().await.unwrap(), 400).await;
        assert_eq!(
            (refused["code"].as_str(), refused["field"].as_str()),
            (Some("invalid_request"), Some("email_verified"))
        );
    }
    let read = body(app.admin(Method::GET, &path).send().await.unwrap(), 200).await;
    assert_eq!((&read["email_verified"], &read["name"]), (&json!(false), &removed["name"]));
    let unverified = json!({"email_verified": false});
    assert_eq!(
        body(app.admin(Method::PATCH, &path).json(&unverified).send().await.unwrap(), 200).await["email"],
        json!(null)
    );
}
