//! Home-realm discovery (`POST /v1/auth/discover`) and the admin API for team domains.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, ISSUER, OTHER_ISSUER, TestApp, identity, json as body, on_both_backends, send_at_once};

on_both_backends!(
    verified_domains_route_to_their_issuer_and_nothing_else_does,
    the_answer_does_not_depend_on_whether_the_email_has_an_account,
    domain_claims_are_validated_and_owned_by_one_team,
    concurrent_claims_of_one_domain_give_it_to_one_team,
);

async fn discover(app: &TestApp, email: &str) -> reqwest::Response {
    app.client.post(app.url("/v1/auth/discover")).json(&json!({ "email": email })).send().await.unwrap()
}

async fn team_of(app: &TestApp, subject: &str) -> String {
    let created = body(app.bootstrap(&identity(subject, &format!("{subject}@example.com"), None)).await, 201).await;
    created["team"]["slug"].as_str().unwrap().to_owned()
}

async fn claim(app: &TestApp, team: &str, claim: Value) -> reqwest::Response {
    app.admin(Method::POST, &format!("/admin/teams/{team}/domains")).json(&claim).send().await.unwrap()
}

async fn verified_domains_route_to_their_issuer_and_nothing_else_does(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let team = team_of(&app, "acme-admin").await;
    let created = body(
        claim(&app, &team, json!({"domain": "Acme.EXAMPLE", "issuer": OTHER_ISSUER, "verified": true})).await,
        201,
    )
    .await;
    assert_eq!(created["domain"], "acme.example");
    body(claim(&app, &team, json!({"domain": "pending.example", "issuer": ISSUER})).await, 201).await;

    let sso = body(discover(&app, "jane@ACME.example").await, 200).await;
    assert_eq!(sso, json!({"method": "sso", "issuer": OTHER_ISSUER, "provider": "test", "domain": "acme.example"}));
    let unverified = body(discover(&app, "joe@pending.example").await, 200).await;
    assert_eq!(unverified, json!({"method": "default", "domain": "pending.example"}));
    let subdomain = body(discover(&app, "x@eu.acme.example").await, 200).await;
    assert_eq!(subdomain["method"], "default", "claims match the exact domain");

    // Posted again without `verified` (say, to change nothing else), the claim stays verified.
    let again = body(claim(&app, &team, json!({"domain": "acme.example", "issuer": OTHER_ISSUER})).await, 200).await;
    assert_eq!(again, created, "a repeated claim changes nothing, not even updated_at");
    assert_eq!(body(discover(&app, "jane@acme.example").await, 200).await["method"], "sso");
    // Un-verifying the claim (an update by the same team) turns routing off again.
    let updated = body(
        claim(&app, &team, json!({"domain": "acme.example", "issuer": OTHER_ISSUER, "verified": false})).await,
        200,
    )
    .await;
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_eq!(body(discover(&app, "jane@acme.example").await, 200).await["method"], "default");

    let listed = body(app.admin(Method::GET, &format!("/admin/teams/{team}/domains")).send().await.unwrap(), 200).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let released =
        app.admin(Method::DELETE, &format!("/admin/teams/{team}/domains/acme.example")).send().await.unwrap();
    assert_eq!(released.status(), 204);
    let again = app.admin(Method::DELETE, &format!("/admin/teams/{team}/domains/acme.example")).send().await.unwrap();
    assert_eq!(body(again, 404).await["code"], "not_found");

    for bad in [json!({}), json!({"email": "not-an-email"}), json!({"email": ""})] {
        let response = app.client.post(app.url("/v1/auth/discover")).json(&bad).send().await.unwrap();
        let code = body(response, 400).await["code"].as_str().unwrap().to_owned();
        assert!(code == "missing_field" || code == "invalid_email", "{code}");
    }
}

async fn the_answer_does_not_depend_on_whether_the_email_has_an_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    body(app.bootstrap(&identity("known", "known@unclaimed.example", None)).await, 201).await;
    let known = discover(&app, "known@unclaimed.example").await;
    let (known_status, known_body) = (known.status(), known.text().await.unwrap());
    let unknown = discover(&app, "nobody@unclaimed.example").await;
    assert_eq!(unknown.status(), known_status);
    assert_eq!(unknown.text().await.unwrap(), known_body, "byte-identical answers");
}

async fn domain_claims_are_validated_and_owned_by_one_team(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = team_of(&app, "first").await;
    let second = team_of(&app, "second").await;
    body(claim(&app, &first, json!({"domain": "shared.example", "issuer": ISSUER, "verified": true})).await, 201).await;
    let taken = body(claim(&app, &second, json!({"domain": "shared.example", "issuer": ISSUER})).await, 409).await;
    assert_eq!(taken["code"], "domain_already_claimed");
    let not_allowed =
        body(claim(&app, &first, json!({"domain": "x.example", "issuer": "https://evil.example.com"})).await, 403)
            .await;
    assert_eq!(not_allowed["code"], "issuer_not_allowed");
    for (bad, code) in [
        (json!({"domain": "no spaces.example", "issuer": ISSUER}), "invalid_domain"),
        (json!({"domain": "localhost", "issuer": ISSUER}), "invalid_domain"),
        (json!({"issuer": ISSUER}), "missing_field"),
        (json!({"domain": "a.example", "issuer": "ftp://x"}), "invalid_issuer"),
    ] {
        assert_eq!(body(claim(&app, &first, bad).await, 400).await["code"], code);
    }
    let unknown_team = claim(&app, "no-such-team", json!({"domain": "y.example", "issuer": ISSUER})).await;
    assert_eq!(body(unknown_team, 404).await["code"], "team_not_found");
    // Whatever the issuer: a team that does not exist is that first.
    let evil = json!({"domain": "y.example", "issuer": "https://evil.example.com"});
    assert_eq!(body(claim(&app, "no-such-team", evil).await, 404).await["code"], "team_not_found");
    let bad_team = claim(&app, "Bad%20Team", json!({"domain": "y.example", "issuer": ISSUER})).await;
    assert_eq!(body(bad_team, 400).await["code"], "invalid_team");
    // By id as well as by slug.
    let team = body(app.admin(Method::GET, &format!("/admin/teams/{first}")).send().await.unwrap(), 200).await;
    let by_id = app.admin(Method::GET, &format!("/admin/teams/{}/domains", team["id"].as_str().unwrap())).send().await;
    assert_eq!(body(by_id.unwrap(), 200).await[0]["domain"], "shared.example");
    assert_eq!(app.db.sql().await.count("team_domains").await, 1);
}

/// Twelve claims of one domain at once, half by each of two teams: one team holds it, with one
/// row; its own other claims update it (200), the other team's are refused (409).
async fn concurrent_claims_of_one_domain_give_it_to_one_team(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let teams = [team_of(&app, "first-admin").await, team_of(&app, "second-admin").await];
    let request = json!({"domain": "contested.example", "issuer": ISSUER, "verified": true});
    let claims: Vec<_> = (0..12)
        .map(|i| app.admin(Method::POST, &format!("/admin/teams/{}/domains", teams[i % 2])).json(&request))
        .collect();
    let mut answers = Vec::new();
    for (i, response) in send_at_once(&claims).await.into_iter().enumerate() {
        let status = response.status().as_u16();
        answers.push((teams[i % 2].clone(), status, response.json::<Value>().await.unwrap()));
    }
    let created: Vec<&String> =
        answers.iter().filter(|(_, status, _)| *status == 201).map(|(team, _, _)| team).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    for (team, status, answer) in &answers {
        if team == created[0] {
            assert!(*status == 201 || *status == 200, "{answer}");
        } else {
            assert_eq!((*status, answer["code"].as_str()), (409, Some("domain_already_claimed")), "{answer}");
        }
    }
    assert_eq!(app.db.sql().await.count("team_domains WHERE domain = 'contested.example'").await, 1);
}
