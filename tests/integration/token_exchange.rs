//! Token exchange (RFC 8693) over HTTP: a resource server that received a user's access token
//! trades it for one for another of its resources, whose `act` names the clients that acted, and
//! which ends with the grant it came from.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};
use tessera::crypto::keyring::KeyRing;
use tessera::domain::SigningAlg;
use tessera::service::op::keys::{SigningKeySettings, SigningKeys};

use crate::helpers::{Backend, TestApp, json as body, on_both_backends};
use crate::op_flow::{
    REDIRECT, authorize_url, code_from, introspect, jwt_parts, oauth_error, op_world, pkce, register, ring,
    token_request, urlencode,
};
use crate::signin::{Browser, World};

on_both_backends!(an_exchanged_token_acts_for_the_user_and_ends_with_the_grant, bad_exchanges_are_refused_saying_why,);

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The orders API: the resource the web app's token is for, and whose server exchanges it.
const ORDERS: &str = "https://orders.example.com";
/// The billing API, which the orders API calls for the user.
const BILLING: &str = "https://billing.example.com";

struct Parties {
    /// The web app the user signs in to: id, secret.
    app: (String, String),
    /// The orders API's server, which may exchange tokens.
    orders: (String, String),
    /// The billing API's server (it introspects).
    billing: (String, String),
}

async fn confidential(app: &TestApp, fields: Value) -> (String, String) {
    let (id, secret) = register(app, fields).await;
    (id, secret.unwrap())
}

/// Tessera's own API and MCP server, as resources.
fn own_resources(app: &TestApp) -> [String; 2] {
    let issuer = app.url("").trim_end_matches('/').to_owned();
    [format!("{issuer}/v1"), format!("{issuer}/mcp")]
}

async fn parties(app: &TestApp) -> Parties {
    let [api, mcp] = own_resources(app);
    // The web app's tokens last a minute, the orders API's an hour: an exchanged token still ends
    // with the token exchanged.
    let web = confidential(
        app,
        json!({"name": "Web app", "kind": "confidential", "redirect_uris": [REDIRECT],
               "grant_types": ["authorization_code", "refresh_token"], "access_token_ttl_seconds": 60,
               "scopes": ["openid", "email", "teams"], "resources": [ORDERS, api], "first_party": true}),
    )
    .await;
    let orders = confidential(
        app,
        json!({"name": "Orders API", "kind": "confidential", "redirect_uris": [],
               "grant_types": [EXCHANGE], "scopes": ["openid", "email"], "access_token_ttl_seconds": 3600,
               "resources": [ORDERS, BILLING, api, mcp]}),
    )
    .await;
    let billing = confidential(
        app,
        json!({"name": "Billing API", "kind": "confidential", "redirect_uris": [],
               "grant_types": ["client_credentials"], "scopes": ["openid"], "resources": [BILLING]}),
    )
    .await;
    Parties { app: web, orders, billing }
}

/// A user signs in to the web app, which gets an access token for `resource` (none: for itself).
async fn user_token(w: &World, parties: &Parties, resource: Option<&str>) -> String {
    let (verifier, challenge) = pkce();
    let extra = resource.map(|r| format!("&resource={}", urlencode(r))).unwrap_or_default();
    let code = code_from(w, &mut Browser::new(), authorize_url(&w.app, &parties.app.0, &challenge, &extra)).await;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    if let Some(resource) = resource {
        form.push(("resource", resource));
    }
    let tokens = body(token_request(&w.app, (&parties.app.0, &parties.app.1), &form).await, 200).await;
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// `client` exchanges `subject` with the `extra` parameters.
async fn exchange(
    app: &TestApp,
    client: &(String, String),
    subject: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = vec![("grant_type", EXCHANGE), ("subject_token", subject), ("subject_token_type", ACCESS_TOKEN)];
    form.extend_from_slice(extra);
    token_request(app, (&client.0, &client.1), &form).await
}

async fn exchanged(app: &TestApp, client: &(String, String), subject: &str, resource: &str) -> String {
    let answer = body(exchange(app, client, subject, &[("resource", resource)]).await, 200).await;
    answer["access_token"].as_str().unwrap().to_owned()
}

/// An OAuth error response (RFC 6749 5.2) of status 400: its body.
async fn refusal(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["cache-control"], "no-store");
    response.json().await.unwrap()
}

fn creds(client: &(String, String)) -> (&str, &str) {
    (&client.0, &client.1)
}

async fn an_exchanged_token_acts_for_the_user_and_ends_with_the_grant(backend: Backend) {
    let w = op_world(backend).await;
    let p = parties(&w.app).await;
    let subject = user_token(&w, &p, Some(ORDERS)).await;
    let (_, held) = jwt_parts(&subject);
    assert_eq!(held["aud"], ORDERS);

    let response = exchange(&w.app, &p.orders, &subject, &[("resource", BILLING)]).await;
    assert_eq!(response.headers()["cache-control"], "no-store");
    let answer = body(response, 200).await;
    assert_eq!(answer["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(answer["token_type"], "Bearer");
    assert!(answer.get("refresh_token").is_none() && answer.get("id_token").is_none(), "{answer}");
    // The orders API is not registered for `teams`: it is left out.
    assert_eq!(answer["scope"], "openid email");
    let token = answer["access_token"].as_str().unwrap();
    let (header, claims) = jwt_parts(token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(claims["sub"], held["sub"], "the user's internal id");
    assert_eq!(claims["aud"], BILLING);
    assert_eq!(claims["client_id"], p.orders.0.as_str());
    assert_eq!(claims["act"], json!({"sub": p.orders.0, "act": {"sub": p.app.0}}));
    assert_eq!(claims["email"], held["email"]);
    assert!(claims.get("teams").is_none(), "{claims}");
    assert_eq!(claims["exp"], held["exp"], "never outlives the token exchanged");
    assert_eq!(claims["auth_time"], held["auth_time"]);

    // The billing API sees it active, with who acted.
    let seen = introspect(&w.app, creds(&p.billing), token).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["act"], claims["act"]);
    assert_eq!(seen["sub"], held["sub"]);
    assert!(seen.get("gid").is_none(), "{seen}");

    // The orders API cannot end the user's grant with the token it got by exchange.
    let revoke = |client: &(String, String), token: &str| {
        w.app
            .client
            .post(w.app.url("/oauth/revoke"))
            .basic_auth(&client.0, Some(&client.1))
            .form(&[("token", token)])
            .send()
    };
    assert_eq!(oauth_error(revoke(&p.orders, token).await.unwrap(), 400).await, "unsupported_token_type");
    assert_eq!(introspect(&w.app, creds(&p.app), &subject).await["active"], true);
    assert_eq!(introspect(&w.app, creds(&p.billing), token).await["active"], true);
    // Nor once it has expired (signed again here, as Tessera would have, with an `exp` passed).
    let ring = Arc::new(KeyRing::parse(&ring()).unwrap());
    let keys = SigningKeys::new(w.app.db.store().await, ring, SigningKeySettings::default()).await.unwrap();
    let mut expired = claims.clone();
    expired["exp"] = (chrono::Utc::now().timestamp() - 5).into();
    let expired = keys.sign(SigningAlg::ES256, "at+jwt", &expired).await.unwrap();
    assert_eq!(revoke(&p.orders, &expired).await.unwrap().status(), 200);
    assert_eq!(introspect(&w.app, creds(&p.app), &subject).await["active"], true);
    // A subject token as long as Tessera's may be (a user in many teams): exchanged.
    let mut long = held.clone();
    long["teams"] = (0..300).map(|i| format!("team-with-a-long-slug-{i}")).collect::<Vec<_>>().into();
    let long = keys.sign(SigningAlg::ES256, "at+jwt", &long).await.unwrap();
    assert!(long.len() > 8192, "{}", long.len());
    body(exchange(&w.app, &p.orders, &long, &[("resource", BILLING)]).await, 200).await;

    // Another backend's exchanged token ends when that backend is no longer registered for the
    // token's audience, or deleted; the orders API's stands.
    let reports = confidential(
        &w.app,
        json!({"name": "Reports", "kind": "confidential", "redirect_uris": [], "grant_types": [EXCHANGE],
               "scopes": ["openid"], "resources": [ORDERS, BILLING]}),
    )
    .await;
    let by_reports = exchanged(&w.app, &reports, &subject, BILLING).await;
    assert_eq!(introspect(&w.app, creds(&p.billing), &by_reports).await["active"], true);
    // Passed on by the orders API: it counts while every client in its `act` may exchange.
    let passed_on = exchanged(&w.app, &p.orders, &by_reports, BILLING).await;
    let (_, passed_claims) = jwt_parts(&passed_on);
    assert_eq!(passed_claims["act"], json!({"sub": p.orders.0, "act": {"sub": reports.0, "act": {"sub": p.app.0}}}));
    assert_eq!(introspect(&w.app, creds(&p.billing), &passed_on).await["active"], true);
    // The billing API, validating it through Tessera, sees on whose behalf it was called.
    let validate = w.app.client.post(w.app.url("/v1/validate?audience=https%3A%2F%2Fbilling.example.com"));
    let validated = body(validate.bearer_auth(&passed_on).send().await.unwrap(), 200).await;
    assert_eq!(validated["issued_for"]["client_id"], p.orders.0);
    assert_eq!(validated["issued_for"]["act"], passed_claims["act"]);
    let direct = body(w.app.validate(&subject).await, 200).await;
    assert!(direct["issued_for"].get("act").is_none(), "a token not got by exchange has none: {direct}");
    let path = format!("/admin/clients/{}", reports.0);
    let narrowed = json!({"resources": [ORDERS]});
    body(w.app.admin(Method::PATCH, &path).json(&narrowed).send().await.unwrap(), 200).await;
    assert_eq!(introspect(&w.app, creds(&p.billing), &by_reports).await, json!({"active": false}));
    // An earlier actor is held to the grant type (not to the audience of the token passed on).
    let seen = || introspect(&w.app, creds(&p.billing), &passed_on);
    assert_eq!(seen().await["active"], true);
    let no_exchange = json!({"grant_types": ["client_credentials"]});
    body(w.app.admin(Method::PATCH, &path).json(&no_exchange).send().await.unwrap(), 200).await;
    assert_eq!(seen().await, json!({"active": false}));
    let exchange_again = json!({"grant_types": [EXCHANGE]});
    body(w.app.admin(Method::PATCH, &path).json(&exchange_again).send().await.unwrap(), 200).await;
    let by_reports = exchanged(&w.app, &reports, &subject, ORDERS).await;
    assert_eq!(introspect(&w.app, creds(&p.orders), &by_reports).await["active"], true);
    assert_eq!(w.app.admin(Method::DELETE, &path).send().await.unwrap().status(), 204);
    assert_eq!(introspect(&w.app, creds(&p.orders), &by_reports).await, json!({"active": false}));
    assert_eq!(introspect(&w.app, creds(&p.billing), &passed_on).await, json!({"active": false}));
    assert_eq!(introspect(&w.app, creds(&p.billing), token).await["active"], true);

    // Exchanged again (a token for billing is the orders API's to exchange too): each exchange
    // adds its actor, up to four clients.
    let again = exchanged(&w.app, &p.orders, token, BILLING).await;
    let (_, again_claims) = jwt_parts(&again);
    assert_eq!(again_claims["act"], json!({"sub": p.orders.0, "act": claims["act"]}));
    let third = exchanged(&w.app, &p.orders, &again, BILLING).await;
    let too_often = refusal(exchange(&w.app, &p.orders, &third, &[("resource", BILLING)]).await).await;
    assert_eq!(too_often["error"], "invalid_request");
    assert!(too_often["error_description"].as_str().unwrap().contains("exchanged too often"), "{too_often}");

    // The web app revokes its grant: everything exchanged from it stops counting at once.
    assert_eq!(revoke(&p.app, &subject).await.unwrap().status(), 200);
    for token in [token, again.as_str(), third.as_str()] {
        assert_eq!(introspect(&w.app, creds(&p.billing), token).await, json!({"active": false}));
    }
    // A token that counts no more is nothing to refuse: revoking it is a 200 (RFC 7009).
    assert_eq!(revoke(&p.orders, token).await.unwrap().status(), 200);
    let after = exchange(&w.app, &p.orders, &subject, &[("resource", BILLING)]).await;
    assert_eq!(oauth_error(after, 400).await, "invalid_request");
}

/// A refused exchange: who asks, with what token and parameters, the error and words of its
/// description.
type Case<'a> = (&'a (String, String), &'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);

async fn bad_exchanges_are_refused_saying_why(backend: Backend) {
    let w = op_world(backend).await;
    let p = parties(&w.app).await;
    let [api, mcp] = own_resources(&w.app);
    let subject = user_token(&w, &p, Some(ORDERS)).await;
    // The web app's token for itself: not the orders API's to exchange; nor its token for
    // Tessera's own API, although the orders API registered that resource.
    let own = user_token(&w, &p, None).await;
    let for_api = user_token(&w, &p, Some(&api)).await;
    // A client's own token (no user), for the orders API.
    let job = confidential(
        &w.app,
        json!({"name": "Job", "kind": "confidential", "redirect_uris": [], "grant_types": ["client_credentials"],
               "scopes": ["openid"], "resources": [ORDERS]}),
    )
    .await;
    let job_token = body(
        token_request(&w.app, creds(&job), &[("grant_type", "client_credentials"), ("resource", ORDERS)]).await,
        200,
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let refresh_type = "urn:ietf:params:oauth:token-type:refresh_token";
    let cases: Vec<Case> = vec![
        // A client that has not registered the grant type.
        (&p.app, &subject, vec![("resource", BILLING)], "unauthorized_client", "may not use"),
        (&p.orders, &subject, vec![], "invalid_target", "resource is missing"),
        (
            &p.orders,
            &subject,
            vec![("resource", "https://elsewhere.example.com")],
            "invalid_target",
            "registered resources",
        ),
        (&p.orders, &subject, vec![("resource", "")], "invalid_target", "registered resources"),
        (&p.orders, &subject, vec![("resource", BILLING), ("audience", ORDERS)], "invalid_target", "differ"),
        (&p.orders, &subject, vec![("resource", BILLING), ("actor_token", "x")], "invalid_request", "actor_token"),
        // RFC 8693 2.1: never without an actor_token; a client sending it believes it named an actor.
        (
            &p.orders,
            &subject,
            vec![("resource", BILLING), ("actor_token_type", ACCESS_TOKEN)],
            "invalid_request",
            "actor_token_type",
        ),
        (
            &p.orders,
            &subject,
            vec![("resource", BILLING), ("requested_token_type", refresh_type)],
            "invalid_request",
            "requested_token_type",
        ),
        (
            &p.orders,
            &subject,
            vec![("resource", BILLING), ("scope", "openid teams")],
            "invalid_scope",
            "not allowed for this client",
        ),
        (&p.orders, &subject, vec![("resource", BILLING), ("scope", "openid profile")], "invalid_scope", "only narrow"),
        (
            &p.orders,
            &subject,
            vec![("resource", BILLING), ("resource", ORDERS)],
            "invalid_target",
            "one resource per request",
        ),
        (
            &p.orders,
            &subject,
            vec![("audience", BILLING), ("audience", ORDERS)],
            "invalid_target",
            "one resource per request",
        ),
        // Tessera's own API and MCP server take only tokens the user authorized for them.
        (&p.orders, &subject, vec![("resource", api.as_str())], "invalid_target", "take no exchanged token"),
        (&p.orders, &subject, vec![("resource", mcp.as_str())], "invalid_target", "take no exchanged token"),
        (&p.orders, "garbage", vec![("resource", BILLING)], "invalid_request", "invalid, expired or revoked"),
        (&p.orders, &own, vec![("resource", BILLING)], "invalid_request", "not issued for this client"),
        (&p.orders, &for_api, vec![("resource", BILLING)], "invalid_request", "no client's to exchange"),
        (&p.orders, &job_token, vec![("resource", BILLING)], "invalid_request", "has no user"),
    ];
    for (client, token, extra, expected, why) in cases {
        let refused = refusal(exchange(&w.app, client, token, &extra).await).await;
        assert_eq!(refused["error"], expected, "{extra:?}");
        assert!(refused["error_description"].as_str().unwrap().contains(why), "{extra:?}: {refused}");
    }
    // Without its type, or of another type.
    for form in [
        vec![("grant_type", EXCHANGE), ("subject_token", subject.as_str()), ("resource", BILLING)],
        vec![
            ("grant_type", EXCHANGE),
            ("subject_token", subject.as_str()),
            ("subject_token_type", refresh_type),
            ("resource", BILLING),
        ],
        vec![("grant_type", EXCHANGE), ("subject_token_type", ACCESS_TOKEN), ("resource", BILLING)],
    ] {
        assert_eq!(oauth_error(token_request(&w.app, creds(&p.orders), &form).await, 400).await, "invalid_request");
    }
    // What works: `audience` alone names the resource too, and a narrower scope is kept.
    let fresh = user_token(&w, &p, Some(ORDERS)).await;
    let answer = body(
        exchange(
            &w.app,
            &p.orders,
            &fresh,
            &[("audience", BILLING), ("requested_token_type", ACCESS_TOKEN), ("scope", "email")],
        )
        .await,
        200,
    )
    .await;
    assert_eq!(answer["scope"], "email");
    assert_eq!(jwt_parts(answer["access_token"].as_str().unwrap()).1["aud"], BILLING);
    // The discovery document lists the grant type.
    let doc = body(w.app.client.get(w.app.url("/.well-known/openid-configuration")).send().await.unwrap(), 200).await;
    assert!(doc["grant_types_supported"].as_array().unwrap().contains(&json!(EXCHANGE)), "{doc}");
    // A disabled user's token is not exchanged.
    let (_, claims) = jwt_parts(&subject);
    let path = format!("/admin/users/{}", claims["sub"].as_str().unwrap());
    body(w.app.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    let disabled = exchange(&w.app, &p.orders, &subject, &[("resource", BILLING)]).await;
    assert_eq!(oauth_error(disabled, 400).await, "invalid_request");
}
