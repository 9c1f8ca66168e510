//! Tessera as an OpenID Provider, end to end over HTTP: a browser signs in through the local
//! upstream issuer, apps registered through the admin API get codes and tokens, and every
//! single-use value is raced. Real third-party relying parties (openid-client, Authlib) run the
//! same flows in `op_third_party.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera::config::Config;
use tessera::crypto::keyring::KeyRing;
use tessera::domain::SigningAlg;
use tessera::service::op::keys::{SigningKeySettings, SigningKeys};
use tessera_testkit::local_issuer::{StubUser, UPSTREAM_SESSION_AGE_SECONDS};

use crate::helpers::{Backend, TestApp, eventually, json as body, on_both_backends, send_at_once};
use crate::pages::{confirmed, csrf_of};
use crate::signin::{Browser, World, location, world_with};

on_both_backends!(
    a_token_borrowing_another_grant_is_refused,
    discovery_describes_the_provider_and_its_keys,
    a_code_flow_issues_tokens_whose_subject_is_the_internal_user,
    bad_authorization_requests_never_go_to_an_unregistered_uri,
    bad_token_requests_are_refused_and_issue_nothing,
    a_code_is_redeemed_once_under_concurrency_and_a_replay_revokes_its_grant,
    a_used_code_without_its_verifier_revokes_nothing,
    a_refresh_token_rotates_once_under_concurrency_and_reuse_revokes_the_family,
    refused_client_authentications_are_counted_into_the_audit_log,
    revocations_racing_a_refresh_leave_nothing_of_the_grant_working,
    within_the_reuse_interval_every_concurrent_refresh_gets_its_own_token,
    introspection_answers_inactive_alike_and_at_once,
    a_token_that_cannot_be_checked_is_not_answered_as_revoked,
    an_expired_access_token_still_revokes_its_grant,
    an_access_token_never_outlives_its_grant,
    client_credentials_tokens_name_the_client,
    third_party_clients_ask_for_consent_once,
    a_consent_grants_no_scope_its_page_did_not_show,
    consent_clicks_sent_to_two_instances_issue_one_code,
    a_consent_that_cannot_be_checked_stays_for_the_form_sent_again,
    a_public_client_on_a_loopback_redirect_asks_for_consent_every_time,
    a_public_clients_access_token_does_not_end_its_offline_grant,
    prompt_and_max_age_are_honoured,
    a_provider_asked_to_choose_the_account_is_held_to_the_auth_time_it_states,
    a_failure_after_the_request_is_validated_is_told_to_the_app,
    someone_else_can_sign_in_from_a_consent_page,
    refreshing_an_apps_tokens_keeps_its_browser_session_in_use,
    select_account_lets_a_signed_in_user_go_on_or_use_another_account,
    another_site_cannot_force_a_signed_in_browser_to_sign_in_again,
    a_login_hint_of_a_teams_domain_signs_in_through_the_teams_provider,
    pushed_requests_are_single_use,
    a_pushed_request_that_cannot_be_checked_stays_for_the_retry,
    a_reloaded_page_of_a_used_request_shows_it_again_in_that_browser_only,
    a_pushed_request_used_at_once_on_two_instances_issues_one_code,
    forward_auth_answers_for_sessions_and_tokens,
    logout_ends_the_session_and_its_grants,
    an_apps_server_ends_the_session_its_id_token_names,
    a_grant_ends_when_its_session_goes_idle_not_at_the_sweep,
    an_offline_grant_outlives_the_browser_session,
    offline_access_is_ignored_from_a_client_that_may_not_refresh,
    tessera_access_tokens_work_at_validate_check_and_me,
    private_key_jwt_authenticates_at_the_token_endpoint_once_per_assertion,
    browser_apps_on_other_origins_reach_the_public_client_endpoints_only,
    a_user_removes_an_apps_access_from_the_account_page,
    a_consent_covers_the_resources_it_was_given_for,
    a_resource_matches_however_the_client_spells_its_url,
    a_client_that_registered_tesseras_mcp_server_does_not_introspect_anothers_token_for_it,
    narrowing_a_client_narrows_what_its_standing_grants_issue,
    forward_auth_says_an_email_is_verified_on_a_trusted_providers_word,
    an_authorization_request_posted_from_another_site_does_not_replace_the_session,
    a_fresh_login_asked_for_survives_the_provider_chooser,
    a_provider_that_does_not_say_when_the_user_authenticated_is_asked_again,
    prompt_none_with_a_hint_of_another_user_is_login_required,
    a_consent_whose_first_click_the_browser_dropped_answers_the_second_alike,
);

pub const REDIRECT: &str = "https://app.example.com/callback";
pub const POST_LOGOUT: &str = "https://app.example.com/signed-out";

pub fn ring() -> String {
    format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
}

/// A world with the provider enabled: a key ring, the local upstream issuer as the only
/// sign-in provider.
pub async fn op_world(backend: Backend) -> World {
    op_world_with(backend, |_| {}).await
}

pub async fn op_world_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> World {
    world_with(backend, |config, _| {
        config.encryption = Some(Arc::new(KeyRing::parse(&ring()).unwrap()));
        adjust(config);
    })
    .await
}

/// A web app and a user signed in to it through the provider: the app's id and secret, and the
/// tokens of its first code.
async fn first_tokens(w: &World) -> (String, String, Value) {
    let (client, secret) = web_app(&w.app).await;
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(w, &mut browser, &client, &challenge).await;
    let tokens = body(exchange(&w.app, (&client, &secret), &code, &verifier).await, 200).await;
    (client, secret, tokens)
}

/// Registers a client through the admin API; returns its id and secret (if confidential).
pub async fn register(app: &TestApp, fields: Value) -> (String, Option<String>) {
    let response = app.admin(Method::POST, "/admin/clients").json(&fields).send().await.unwrap();
    let created = body(response, 201).await;
    let id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().map(str::to_owned);
    (id, secret)
}

/// A confidential first-party web app.
pub async fn web_app(app: &TestApp) -> (String, String) {
    let (id, secret) = register(
        app,
        json!({
            "name": "Web app",
            "kind": "confidential",
            "redirect_uris": [REDIRECT],
            "post_logout_redirect_uris": [POST_LOGOUT],
            "grant_types": ["authorization_code", "refresh_token"],
            "scopes": ["openid", "profile", "email", "teams", "offline_access"],
            "first_party": true,
        }),
    )
    .await;
    (id, secret.expect("a confidential client gets a secret"))
}

/// PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = format!("v{}", uuid::Uuid::new_v4().simple()).repeat(2);
    let digest = tessera::crypto::sha256(verifier.as_bytes());
    (verifier, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest))
}

pub fn authorize_url(app: &TestApp, client: &str, challenge: &str, extra: &str) -> String {
    app.url(&format!(
        "/oauth/authorize?response_type=code&client_id={client}&redirect_uri={}&scope=openid%20email%20teams\
         &state=st-1&nonce=n-1&code_challenge={challenge}&code_challenge_method=S256{extra}",
        urlencode(REDIRECT)
    ))
}

/// `token` with a `kid` no key of Tessera's has (one no longer published, as after a rotation):
/// its signature can no longer be checked.
fn with_unpublished_kid(token: &str) -> String {
    let (header, rest) = token.split_once('.').unwrap();
    let mut header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"] = json!("a-key-no-longer-published");
    format!("{}.{rest}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string()))
}

pub fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Follows redirects (through the upstream sign-in) until one leaves for the client; returns it.
pub async fn follow(browser: &mut Browser, mut url: String) -> String {
    for _ in 0..12 {
        if url.starts_with("https://app.example.com/") {
            return url;
        }
        let response = browser.navigate(&url).await;
        assert!(response.status().is_redirection(), "{url}: {} {:?}", response.status(), response.text().await);
        let next = location(&response);
        url = if next.starts_with('/') { format!("{}{next}", base(&url)) } else { next };
    }
    panic!("too many redirects");
}

fn base(url: &str) -> String {
    let parsed = url::Url::parse(url).unwrap();
    format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap())
        + &parsed.port().map(|p| format!(":{p}")).unwrap_or_default()
}

fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url).unwrap().query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Signs `browser` in as a fresh upstream user and authorizes `client`; returns the code.
pub async fn code_for(w: &World, browser: &mut Browser, client: &str, challenge: &str) -> String {
    code_from(w, browser, authorize_url(&w.app, client, challenge, "")).await
}

/// Follows the authorization request `url` through the sign-in; returns the code it gives.
pub async fn code_from(w: &World, browser: &mut Browser, url: String) -> String {
    let back = follow(browser, url).await;
    assert_eq!(param(&back, "state").as_deref(), Some("st-1"), "{back}");
    assert_eq!(param(&back, "iss").as_deref(), Some(w.app.url("").trim_end_matches('/')), "RFC 9207 iss");
    param(&back, "code").unwrap_or_else(|| panic!("a code in {back}"))
}

pub async fn token_request(app: &TestApp, client: (&str, &str), form: &[(&str, &str)]) -> reqwest::Response {
    app.client.post(app.url("/oauth/token")).basic_auth(client.0, Some(client.1)).form(form).send().await.unwrap()
}

async fn exchange(app: &TestApp, client: (&str, &str), code: &str, verifier: &str) -> reqwest::Response {
    token_request(
        app,
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

pub async fn introspect(app: &TestApp, client: (&str, &str), token: &str) -> Value {
    let response = app
        .client
        .post(app.url("/oauth/introspect"))
        .basic_auth(client.0, Some(client.1))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    body(response, 200).await
}

/// The payload and header of a JWT, unverified (the tests that verify use the JWKS).
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut decode = || {
        let part = parts.next().unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    let header = decode();
    (header, decode())
}

/// An OAuth error response (RFC 6749 5.2): its `error`, after checking the status and headers.
pub async fn oauth_error(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers().get("cache-control").map(|v| v.to_str().unwrap()), Some("no-store"));
    assert_eq!(response.headers()["content-type"], "application/json");
    let json: Value = response.json().await.unwrap();
    assert!(json["error_description"].is_string(), "{json}");
    json["error"].as_str().unwrap().to_owned()
}

async fn discovery_describes_the_provider_and_its_keys(backend: Backend) {
    let w = op_world(backend).await;
    let issuer = w.app.url("").trim_end_matches('/').to_owned();
    for path in ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"] {
        let doc = body(w.app.client.get(w.app.url(path)).send().await.unwrap(), 200).await;
        assert_eq!(doc["issuer"], issuer);
        assert_eq!(doc["token_endpoint"], format!("{issuer}/oauth/token"));
        assert_eq!(doc["jwks_uri"], format!("{issuer}/oauth/jwks"));
        assert_eq!(doc["response_types_supported"], json!(["code"]));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
        // RFC 8414 section 2: with private_key_jwt listed, each endpoint names its algorithms.
        let assertion_algs = &doc["token_endpoint_auth_signing_alg_values_supported"];
        assert!(assertion_algs.as_array().is_some_and(|algs| algs.contains(&json!("RS256"))), "{doc}");
        for endpoint in ["introspection", "revocation"] {
            assert_eq!(&doc[format!("{endpoint}_endpoint_auth_signing_alg_values_supported")], assertion_algs);
        }
        assert_eq!(doc["prompt_values_supported"], json!(["none", "login", "consent", "select_account"]));
    }
    // Without a key ring the provider is off, and says what to configure.
    let off = TestApp::spawn(backend).await;
    let response = off.client.get(off.url("/.well-known/openid-configuration")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("TESSERA_ENCRYPTION_KEYS"));
}

async fn a_code_flow_issues_tokens_whose_subject_is_the_internal_user(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    w.issuer.set_next_user(StubUser::new("upstream-sub-1", "ada@example.com"));
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let tokens = body(exchange(&w.app, (&client, &secret), &code, &verifier).await, 200).await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 600);
    // A session cookie sent twice is refused, not taken for no session (whose sign-in would end
    // in the same refusal at the callback).
    let session = browser.cookies["tessera_session"].clone();
    let doubled = w
        .app
        .client
        .get(authorize_url(&w.app, &client, &challenge, ""))
        .header("cookie", format!("tessera_session={session}; tessera_session={session}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_error(doubled, 400).await, "invalid_request");
    let user_id = w.app.db.sql().await.uuids("SELECT id FROM users").await[0].to_string();

    let (header, id_token) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(header["alg"], "ES256");
    assert_eq!(id_token["sub"], user_id, "the subject is Tessera's user id, never the upstream sub");
    assert_ne!(id_token["sub"], "upstream-sub-1");
    assert_eq!(id_token["aud"], client);
    assert_eq!(id_token["nonce"], "n-1");
    assert_eq!(id_token["email"], "ada@example.com");
    assert_eq!(id_token["idp"], "local");
    assert!(id_token["auth_time"].is_i64());

    let (header, access) = jwt_parts(tokens["access_token"].as_str().unwrap());
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(access["sub"], user_id);
    assert_eq!(access["client_id"], client);
    assert_eq!(access["aud"], client);
    assert_eq!(access["scope"], "openid email teams");

    let info = w.app.client.get(w.app.url("/oauth/userinfo")).bearer_auth(tokens["access_token"].as_str().unwrap());
    let info = body(info.send().await.unwrap(), 200).await;
    assert_eq!(info["sub"], user_id);
    assert_eq!(info["teams"].as_array().unwrap().len(), 1);

    // Only hashes are stored.
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("oauth_codes").await, 1);
    assert_eq!(sql.count("oauth_refresh_tokens").await, 1);
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let stored = sql.blobs("SELECT token_hash FROM oauth_refresh_tokens").await;
    assert_eq!(stored, vec![tessera::crypto::sha256(refresh.as_bytes()).to_vec()], "only the hash is stored");
}

async fn bad_authorization_requests_never_go_to_an_unregistered_uri(backend: Backend) {
    let w = op_world(backend).await;
    let (client, _) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    let good = authorize_url(&w.app, &client, &challenge, "");
    // Never redirected: unknown client, and every near miss of the registered URI.
    let near_misses = [
        "https://app.example.com/callback/extra",
        "https://app.example.com/callback?x=1",
        "https://app.example.com/callback#frag",
        "https://APP.example.com/callback",
        "https://app.example.com:8443/callback",
        "http://app.example.com/callback",
        "https://evil.example/callback",
    ];
    let mut urls = vec![good.replace(&format!("client_id={client}"), "client_id=nobody")];
    for uri in near_misses {
        urls.push(good.replace(&urlencode(REDIRECT), &urlencode(uri)));
    }
    urls.push(good.replace("&redirect_uri=", "&x="));
    urls.push(format!("{good}&state=again"));
    urls.push(format!("{good}&redirect_uri={}", urlencode(REDIRECT)));
    urls.push(format!("{good}&client_id={client}"));
    // Also behind another repeated parameter.
    urls.push(format!("{good}&nonce=again&redirect_uri={}", urlencode("https://evil.example/cb")));
    // A state too long to send back in a redirect's URL.
    urls.push(good.replace("state=st-1", &format!("state={}", "x".repeat(2049))));
    for url in urls {
        let response = browser.navigate(&url).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{url}");
        assert!(response.headers().get("location").is_none(), "{url}");
        assert!(response.text().await.unwrap().contains("error: "), "the page names the error");
    }
    // With the client and URI right, errors go back to the client.
    let long_hint = format!("&login_hint={}", "x".repeat(2049));
    for (extra, error) in [
        // Text no column, header or token may hold, and over-long text, too: a client waiting in
        // a hidden frame hears of its mistake.
        ("&login_hint=a%00b", "invalid_request"),
        ("&login_hint=a%0Ab", "invalid_request"),
        (long_hint.as_str(), "invalid_request"),
        ("&response_type=token", "invalid_request"),
        // Nothing the client is registered for (`openid admin` signs in with `openid`).
        ("&scope=admin%20groups", "invalid_scope"),
        // An empty one is not taken for none (which would mean `openid`).
        ("&scope=", "invalid_scope"),
        ("&prompt=none", "login_required"),
        ("&resource=https%3A%2F%2Fapi.example.com", "invalid_target"),
        ("&max_age=soon", "invalid_request"),
        ("&nonce=again", "invalid_request"),
        ("&resource=https%3A%2F%2Fa.example.com&resource=https%3A%2F%2Fb.example.com", "invalid_target"),
        // An empty one (a template that did not fill it in) is not taken for none.
        ("&resource=", "invalid_target"),
        // A request object is refused, not ignored with whatever it held (OpenID Connect Core 6.1).
        ("&request=eyJhbGciOiJub25lIn0.eyJtYXhfYWdlIjowfQ.", "request_not_supported"),
        // So is one by reference (6.2): a request_uri that this server did not hand out.
        ("&request_uri=https%3A%2F%2Fapp.example.com%2Frequest.jwt", "request_uri_not_supported"),
        (
            "&registration=%7B%22logo_uri%22%3A%22https%3A%2F%2Fapp.example.com%2Flogo.png%22%7D",
            "registration_not_supported",
        ),
    ] {
        let url = good.clone() + extra;
        let url = if extra.starts_with("&response_type") { url.replace("response_type=code&", "") } else { url };
        let url = if extra.starts_with("&scope") { url.replace("scope=openid%20email%20teams&", "") } else { url };
        let response = browser.navigate(&url).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{url}");
        let to = location(&response);
        assert!(to.starts_with(REDIRECT), "{to}");
        if extra.starts_with("&response_type") {
            // An implicit client reads its answer from the fragment (RFC 6749 4.2.2.1).
            let fragment = url::Url::parse(&to).unwrap().fragment().unwrap_or_default().to_owned();
            let answer: HashMap<String, String> =
                url::form_urlencoded::parse(fragment.as_bytes()).into_owned().collect();
            assert_eq!(answer.get("error").map(String::as_str), Some("unsupported_response_type"), "{to}");
            assert_eq!(answer.get("state").map(String::as_str), Some("st-1"), "{to}");
            assert!(answer.contains_key("iss") && param(&to, "error").is_none(), "{to}");
            continue;
        }
        assert_eq!(param(&to, "error").as_deref(), Some(error), "{url}");
        assert_eq!(param(&to, "state").as_deref(), Some("st-1"));
    }
    // A nonce with a control character (in place of the request's own: sent twice, it would be
    // refused as repeated) goes back to the client too.
    let to = location(&browser.navigate(&good.replace("nonce=n-1", "nonce=a%00b")).await);
    assert!(to.starts_with(REDIRECT), "{to}");
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"), "{to}");
    // A response_type Tessera does not know, without token in it, is answered in the query.
    let url = good.replace("response_type=code&", "") + "&response_type=code%20unknown";
    let to = location(&browser.navigate(&url).await);
    assert_eq!(param(&to, "error").as_deref(), Some("unsupported_response_type"), "{to}");
    // A parameter of no protocol's is ignored, repeated or not (RFC 6749 3.1): on to sign in.
    let to = location(&browser.navigate(&format!("{good}&utm_x=1&utm_x=2")).await);
    assert!(param(&to, "error").is_none() && !to.starts_with(REDIRECT), "on to sign in: {to}");
    // A request object by reference posted from another site is refused the same way (at once:
    // no session decides it), not held and taken for a request without one.
    let foreign = format!("{good}&request_uri=https%3A%2F%2Fapp.example.com%2Frequest.jwt");
    let (path, query) = foreign.split_once('?').unwrap();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let posted = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let posted = posted.post(path).header("sec-fetch-site", "cross-site").form(&form).send().await.unwrap();
    let to = location(&posted);
    assert!(to.starts_with(REDIRECT), "{to}");
    assert_eq!(param(&to, "error").as_deref(), Some("request_uri_not_supported"), "{to}");
    // A missing response_type is a missing parameter (RFC 6749 4.1.2.1), not an unsupported one.
    let missing = good.replace("response_type=code&", "");
    assert_ne!(missing, good);
    let to = location(&browser.navigate(&missing).await);
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"), "{to}");
    // A public client must use PKCE.
    let (public, _) =
        register(&w.app, json!({"name": "SPA", "kind": "public", "redirect_uris": [REDIRECT], "first_party": true}))
            .await;
    let no_pkce = authorize_url(&w.app, &public, &challenge, "")
        .replace(&format!("&code_challenge={challenge}&code_challenge_method=S256"), "");
    let to = location(&browser.navigate(&no_pkce).await);
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"));
    // So must a confidential one, but for an OpenID Connect sign-in with a nonce, which binds the
    // code to the client's session in PKCE's place: without `openid`, or without the nonce, the
    // request is refused.
    let no_pkce = good.replace(&format!("&code_challenge={challenge}&code_challenge_method=S256"), "");
    assert_ne!(no_pkce, good);
    for refused in [no_pkce.replace("&nonce=n-1", ""), no_pkce.replace("scope=openid%20email%20teams", "scope=email")] {
        let to = location(&browser.navigate(&refused).await);
        assert!(to.starts_with(REDIRECT), "{refused}: {to}");
        assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"), "{refused}");
        assert!(param(&to, "error_description").unwrap().contains("PKCE is required"), "{to}");
    }
    let to = location(&browser.navigate(&no_pkce).await);
    assert!(param(&to, "error").is_none() && !to.starts_with(REDIRECT), "on to sign in: {to}");
    assert_eq!(w.app.db.sql().await.count("oauth_grants").await, 0, "nothing was granted");
}

async fn bad_token_requests_are_refused_and_issue_nothing(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let (other, other_secret) = web_app(&w.app).await;
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let me = (client.as_str(), secret.as_str());
    let (wrong_verifier, _) = pkce();
    type Case<'a> = (Vec<(&'a str, &'a str)>, (&'a str, &'a str), u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)],
            me,
            400,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &wrong_verifier),
            ],
            me,
            400,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "https://app.example.com/other"),
                ("code_verifier", &verifier),
            ],
            me,
            400,
            "invalid_grant",
        ),
        (
            vec![("grant_type", "authorization_code"), ("code", &code), ("code_verifier", &verifier)],
            me,
            400,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
                ("resource", "https://api.example.com"),
            ],
            me,
            400,
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
            ],
            (&other, &other_secret),
            400,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
            ],
            (&client, "wrong-secret"),
            401,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
                ("resource", "https://api.example.com"),
                ("resource", "https://other.example.com"),
            ],
            me,
            400,
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
                ("resource", ""),
            ],
            me,
            400,
            "invalid_target",
        ),
        (vec![("grant_type", "password"), ("username", "a")], me, 400, "unsupported_grant_type"),
        // A grant type this client has not registered.
        (vec![("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")], me, 400, "unauthorized_client"),
        (vec![("grant_type", "client_credentials")], me, 400, "unauthorized_client"),
        (vec![("code", &code)], me, 400, "invalid_request"),
        (
            vec![("grant_type", "authorization_code"), ("grant_type", "authorization_code"), ("code", &code)],
            me,
            400,
            "invalid_request",
        ),
    ];
    for (form, creds, status, error) in cases {
        let response = token_request(&w.app, creds, &form).await;
        assert_eq!(oauth_error(response, status).await, error, "{form:?}");
    }
    // A JSON body is not a token request.
    let json_body = w.app.client.post(w.app.url("/oauth/token")).basic_auth(&client, Some(&secret));
    let json_body = json_body.json(&json!({"grant_type": "authorization_code"})).send().await.unwrap();
    assert_eq!(oauth_error(json_body, 400).await, "invalid_request");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("oauth_refresh_tokens").await, 0, "nothing was issued");
    // The code survived the misses: its own client with the right verifier still gets tokens.
    body(exchange(&w.app, me, &code, &verifier).await, 200).await;
}

async fn a_code_is_redeemed_once_under_concurrency_and_a_replay_revokes_its_grant(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", &verifier),
    ];
    let responses =
        send_at_once(&(0..16).map(|_| token_builder(&w.app, (&client, &secret), &form)).collect::<Vec<_>>()).await;
    let mut issued = Vec::new();
    for response in responses {
        match response.status().as_u16() {
            200 => issued.push(body(response, 200).await),
            400 => assert_eq!(oauth_error(response, 400).await, "invalid_grant"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(issued.len(), 1, "exactly one redemption wins");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("oauth_refresh_tokens").await, 1);
    // The losers were replays: the grant, and the winner's tokens, are revoked — audited once,
    // however many replays found it.
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 1);
    assert_eq!(sql.count("audit_events WHERE action = 'grant.revoked' AND request_id IS NOT NULL").await, 1);
    let access = issued[0]["access_token"].as_str().unwrap();
    assert_eq!(introspect(&w.app, (&client, &secret), access).await, json!({"active": false}));
    let refresh = issued[0]["refresh_token"].as_str().unwrap();
    let again =
        token_request(&w.app, (&client, &secret), &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    assert_eq!(oauth_error(again, 400).await, "invalid_grant");
}

/// A public client's code leaked after its use (a browser's history, a proxy's log) revokes
/// nothing in the hands of someone without its flow's PKCE verifier, which is all that tells the
/// app from anyone else; the app presenting it again is a replay, and revokes the grant.
async fn a_used_code_without_its_verifier_revokes_nothing(backend: Backend) {
    let w = op_world(backend).await;
    let (public, _) =
        register(&w.app, json!({"name": "SPA", "kind": "public", "redirect_uris": [REDIRECT], "first_party": true}))
            .await;
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &public, &challenge).await;
    let redeem = |verifier: Option<&str>| {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", public.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
        ];
        form.extend(verifier.map(|v| ("code_verifier", v)));
        w.app.client.post(w.app.url("/oauth/token")).form(&form).send()
    };
    let tokens = body(redeem(Some(&verifier)).await.unwrap(), 200).await;
    assert!(tokens["access_token"].is_string());
    let (guess, _) = pkce();
    for attempt in [None, Some(guess.as_str())] {
        assert_eq!(oauth_error(redeem(attempt).await.unwrap(), 400).await, "invalid_grant", "{attempt:?}");
    }
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 0, "the grant stands");
    assert_eq!(oauth_error(redeem(Some(&verifier)).await.unwrap(), 400).await, "invalid_grant");
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 1, "a replay revokes");
}

/// A public client's access token reaches every resource server it is sent to, and its client id
/// is no secret: with them, anyone could revoke; such a token does not end an offline grant (an
/// agent's standing access), which the client ends with its refresh token.
async fn a_public_clients_access_token_does_not_end_its_offline_grant(backend: Backend) {
    let w = op_world(backend).await;
    let (public, _) = register(
        &w.app,
        json!({"name": "SPA", "kind": "public", "redirect_uris": [REDIRECT], "first_party": true,
               "scopes": ["openid", "offline_access"]}),
    )
    .await;
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let url =
        authorize_url(&w.app, &public, &challenge, "").replace("openid%20email%20teams", "openid%20offline_access");
    let code = code_from(&w, &mut browser, url).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", public.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    let tokens = body(w.app.client.post(w.app.url("/oauth/token")).form(&form).send().await.unwrap(), 200).await;
    let revoke = |token: &str| {
        let form = [("token", token.to_owned()), ("client_id", public.clone())];
        w.app.client.post(w.app.url("/oauth/revoke")).form(&form).send()
    };
    let sql = w.app.db.sql().await;
    assert_eq!(revoke(tokens["access_token"].as_str().unwrap()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 0, "the offline grant stands");
    // An access token narrowed by a refresh to less than `offline_access` is still one of the
    // offline grant's: it is the grant's scope that counts, not the token's.
    // (Its id sent as `Basic` with an empty password, as some libraries send a public client's:
    // the id alone, as `client_id` would be.)
    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ("scope", "openid"),
    ];
    let narrowed = w.app.client.post(w.app.url("/oauth/token")).basic_auth(&public, Some("")).form(&refresh);
    let narrowed = body(narrowed.send().await.unwrap(), 200).await;
    assert_eq!(narrowed["scope"], "openid");
    assert_eq!(revoke(narrowed["access_token"].as_str().unwrap()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 0, "a narrowed token does not end it");
    let tokens = narrowed;
    assert_eq!(revoke(tokens["refresh_token"].as_str().unwrap()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 1, "its refresh token ends it");
}

/// Eight revocations of a refresh token sent at once with a refresh of it: every revocation is
/// answered 200 and the grant is revoked once; whichever way the race went, nothing of the grant
/// works afterwards — the refresh is refused, or the tokens it handed out are dead already.
async fn revocations_racing_a_refresh_leave_nothing_of_the_grant_working(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    let sql = w.app.db.sql().await;
    for round in 0..6 {
        let mut browser = Browser::new();
        let (verifier, challenge) = pkce();
        let code = code_for(&w, &mut browser, &client, &challenge).await;
        let tokens = body(exchange(&w.app, creds, &code, &verifier).await, 200).await;
        let refresh = tokens["refresh_token"].as_str().unwrap();
        let mut requests =
            vec![token_builder(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", refresh)])];
        for _ in 0..8 {
            let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&client, Some(&secret));
            requests.push(revoke.form(&[("token", refresh)]));
        }
        let mut answers = send_at_once(&requests).await.into_iter();
        let rotated = answers.next().unwrap();
        for revoked in answers {
            assert_eq!(revoked.status(), StatusCode::OK, "round {round}");
        }
        assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, round + 1, "round {round}");
        let mut dead = vec![tokens["access_token"].as_str().unwrap().to_owned()];
        if rotated.status() == StatusCode::OK {
            let new = body(rotated, 200).await;
            let again = [("grant_type", "refresh_token"), ("refresh_token", new["refresh_token"].as_str().unwrap())];
            assert_eq!(oauth_error(token_request(&w.app, creds, &again).await, 400).await, "invalid_grant");
            dead.push(new["access_token"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(oauth_error(rotated, 400).await, "invalid_grant", "round {round}");
        }
        for token in dead {
            assert_eq!(introspect(&w.app, creds, &token).await, json!({"active": false}), "round {round}");
        }
    }
}

async fn a_refresh_token_rotates_once_under_concurrency_and_reuse_revokes_the_family(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let first = body(exchange(&w.app, creds, &code, &verifier).await, 200).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    // A plain rotation.
    let second =
        body(token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", &r1)]).await, 200).await;
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert_eq!(jwt_parts(second["id_token"].as_str().unwrap()).1["aud"], client);
    // Narrowing the scope is allowed; a scope the grant was not given (registered for the client
    // or not) is left out, never granted: a refresh does not widen.
    let widen = token_request(
        &w.app,
        creds,
        &[("grant_type", "refresh_token"), ("refresh_token", &r2), ("scope", "openid profile")],
    )
    .await;
    let narrowed = body(widen, 200).await;
    assert_eq!(narrowed["scope"], "openid", "{narrowed}");
    let r3 = narrowed["refresh_token"].as_str().unwrap().to_owned();
    let only_new = [("grant_type", "refresh_token"), ("refresh_token", r3.as_str()), ("scope", "profile")];
    let only_new = token_request(&w.app, creds, &only_new).await;
    assert_eq!(oauth_error(only_new, 400).await, "invalid_scope", "nothing left to grant");
    let blank =
        token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", &r3), ("scope", " ")]).await;
    assert_eq!(oauth_error(blank, 400).await, "invalid_scope");
    // Sixteen at once with r3: one wins, the others are reuse, which revokes the family.
    let form = [("grant_type", "refresh_token"), ("refresh_token", r3.as_str())];
    let responses = send_at_once(&(0..16).map(|_| token_builder(&w.app, creds, &form)).collect::<Vec<_>>()).await;
    let wins = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(wins, 1, "exactly one rotation wins");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("oauth_refresh_tokens").await, 4, "r1, r2, r3 and the winner's r4");
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 1);
    // Audited once, in the revocation's transaction, however many reuses found it.
    let revoked_rows = "audit_events WHERE action = 'grant.revoked' AND target_kind = 'grant'";
    assert_eq!(sql.count(revoked_rows).await, 1);
    assert_eq!(introspect(&w.app, creds, second["access_token"].as_str().unwrap()).await, json!({"active": false}));

    // A rotated token presented again revokes its grant whatever else the request gets wrong
    // (here a scope it may not widen to): the reuse is what counts.
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let old =
        body(exchange(&w.app, creds, &code, &verifier).await, 200).await["refresh_token"].as_str().unwrap().to_owned();
    let rotated = token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", &old)]).await;
    let current = body(rotated, 200).await["refresh_token"].as_str().unwrap().to_owned();
    let reuse = [("grant_type", "refresh_token"), ("refresh_token", old.as_str()), ("scope", "openid profile")];
    let reused = token_request(&w.app, creds, &reuse).await;
    let reuse_request = reused.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(oauth_error(reused, 400).await, "invalid_grant");
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 2);
    let next = token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", &current)]).await;
    assert_eq!(oauth_error(next, 400).await, "invalid_grant");
    let reuse_again = token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", &old)]).await;
    assert_eq!(oauth_error(reuse_again, 400).await, "invalid_grant");
    assert_eq!(sql.count(revoked_rows).await, 2, "a replay into a revoked grant writes no more");
    let audit = w.app.admin(Method::GET, "/admin/audit?action=grant.revoked").send().await.unwrap();
    let rows = body(audit, 200).await;
    let row = &rows["events"][0];
    assert_eq!(
        (row["actor_name"].as_str(), row["details"]["cause"].as_str()),
        (Some("oauth_token"), Some("refresh_token_reused"))
    );
    assert_eq!(row["details"]["client_id"], client);
    assert_eq!(row["request_id"], reuse_request.as_str(), "the request that reused it");
}

/// A refused client authentication at the back-channel endpoints (`invalid_client`, which anyone
/// can send) is counted into the audit log as `client.refused`, as a wrong admin token is; a
/// refused bearer token at userinfo is not a client's.
async fn refused_client_authentications_are_counted_into_the_audit_log(backend: Backend) {
    let w = op_world_with(backend, |config| config.audit.flush_interval = Duration::from_millis(50)).await;
    let (client, _) = web_app(&w.app).await;
    for path in ["/oauth/token", "/oauth/introspect", "/oauth/revoke", "/oauth/par"] {
        let form = [("grant_type", "client_credentials"), ("token", "t"), ("response_type", "code")];
        let refused = w.app.client.post(w.app.url(path)).basic_auth(&client, Some("wrong")).form(&form);
        assert_eq!(oauth_error(refused.send().await.unwrap(), 401).await, "invalid_client", "{path}");
    }
    let userinfo = w.app.client.get(w.app.url("/oauth/userinfo")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(userinfo.status(), StatusCode::UNAUTHORIZED);
    let counted = || async {
        let page = body(w.app.admin(Method::GET, "/admin/audit?action=client.refused").send().await.unwrap(), 200);
        let rows = page.await["events"].as_array().unwrap().clone();
        assert!(rows.iter().all(|row| row["reason"] == "invalid_client" && row["target_id"].is_null()), "{rows:?}");
        rows.iter().map(|row| row["details"]["count"].as_u64().unwrap()).sum::<u64>()
    };
    eventually("the four refusals are written", || async { counted().await == 4 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counted().await, 4, "and nothing more");
}

/// With `oidc.refresh_token_reuse_seconds`, a client that retries a refresh (its answer lost) or
/// refreshes from two tabs at once is not logged out: each use within the interval gets a new
/// refresh token of the same grant. (Past the interval a use revokes the grant: the store's tests
/// run that with set clocks, the test above with no interval.)
async fn within_the_reuse_interval_every_concurrent_refresh_gets_its_own_token(backend: Backend) {
    let w = op_world_with(backend, |config| config.oidc.refresh_token_reuse = std::time::Duration::from_secs(60)).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let first = body(exchange(&w.app, creds, &code, &verifier).await, 200).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    let form = [("grant_type", "refresh_token"), ("refresh_token", r1.as_str())];
    let responses = send_at_once(&(0..16).map(|_| token_builder(&w.app, creds, &form)).collect::<Vec<_>>()).await;
    let mut successors = HashSet::new();
    for response in responses {
        successors.insert(body(response, 200).await["refresh_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(successors.len(), 16, "each use gets a token of its own");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("oauth_refresh_tokens").await, 17, "r1 and sixteen successors");
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 0);
    // r1 is still usable within the interval, so introspection says so, with the interval's end
    // as its `exp` (the grant's own lasts days); every successor works.
    let described = introspect(&w.app, creds, &r1).await;
    assert_eq!(described["active"], true);
    let exp = described["exp"].as_i64().unwrap();
    assert!(exp <= chrono::Utc::now().timestamp() + 60, "{described}");
    assert!(exp >= chrono::Utc::now().timestamp() + 30, "{described}");
    for successor in &successors {
        let next = token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", successor)]).await;
        assert_eq!(next.status(), 200);
    }
    // Revoking any token of the family ends them all.
    let any = successors.iter().next().unwrap();
    let form = [("token", any.as_str())];
    let revoked = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(creds.0, Some(creds.1)).form(&form).send();
    assert_eq!(revoked.await.unwrap().status(), 200);
    let after = token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", &r1)]).await;
    assert_eq!(oauth_error(after, 400).await, "invalid_grant");
}

/// A token whose key the instance cannot read (a key made by another instance, while the
/// database is unreachable) may well be one of Tessera's: revocation answers 503 rather than
/// 200 for a grant it did not end (RFC 7009 2.2.1), and introspection does not call it inactive.
async fn a_token_that_cannot_be_checked_is_not_answered_as_revoked(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    // The client is read (and kept for a while) before the database goes.
    assert_eq!(introspect(&w.app, creds, "garbage").await, json!({"active": false}));
    let encode = |value: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    let header = encode(json!({"alg": "ES256", "typ": "at+jwt", "kid": "made-by-another-instance"}));
    let now = chrono::Utc::now().timestamp();
    let issuer = w.app.url("");
    let payload =
        encode(json!({"iss": issuer.trim_end_matches('/'), "sub": "u", "client_id": client, "exp": now + 60}));
    let token = format!("{header}.{payload}.c2lnbmF0dXJl");
    // Past the instance's first poll of the cache log (within a second of its start, which has
    // it re-read the keys once) and then the second to wait between two reads of the keys for an
    // unknown kid: the next such token makes it read them, from a database now gone.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    w.app.close_store().await;
    let closed = std::time::Instant::now();
    let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&client, Some(&secret));
    let answer = revoke.form(&[("token", token.as_str())]).send().await.unwrap();
    assert_eq!(oauth_error(answer, 503).await, "temporarily_unavailable");
    let looked = w.app.client.post(w.app.url("/oauth/introspect")).basic_auth(&client, Some(&secret));
    let answer = looked.form(&[("token", token.as_str())]).send().await.unwrap();
    assert_eq!(oauth_error(answer, 503).await, "temporarily_unavailable");
    // Userinfo and forward-auth alike: an outage to retry, not a token to throw away.
    let info = w.app.client.get(w.app.url("/oauth/userinfo")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(oauth_error(info, 503).await, "temporarily_unavailable");
    let verify = w.app.client.get(w.app.url("/auth/verify?audience=https%3A%2F%2Fapi.example.com"));
    let verified = verify.bearer_auth(&token).send().await.unwrap();
    assert_eq!(verified.status(), 503);
    // A sign-in request whose session cannot be read, and one from a browser without a session,
    // once the instance can no longer vouch for the client it read (its last read of the cache
    // log more than `cache.sync_interval_ms` + 750 ms ago: none succeeds after the close): a
    // browser gets the page of `store_unavailable` (try again), not one blaming the app for its
    // request, whose "Try again" is the request itself — not a new sign-in, which would end the
    // session the browser may still have, nor `/login` with the whole request as its
    // `return_to` —; a client, the RFC's JSON.
    tokio::time::sleep(std::time::Duration::from_millis(1200).saturating_sub(closed.elapsed())).await;
    let (_, challenge) = pkce();
    for (cookie, accept) in [("tessera_session=s", "text/html"), ("", "text/html"), ("tessera_session=s", "*/*")] {
        let answer = authorize_without_store(&w.app, &client, &challenge, cookie, accept).await;
        if accept == "text/html" {
            assert_eq!(answer.status(), 503, "{cookie}");
            let html = answer.text().await.unwrap();
            assert!(html.contains("store_unavailable") && !html.contains("The app that sent you here"), "{html}");
            assert!(html.contains("href=\"/oauth/authorize?") && !html.contains("href=\"/login"), "{html}");
        } else {
            assert_eq!(oauth_error(answer, 503).await, "temporarily_unavailable");
        }
    }
    // While the instance still vouches for the client (here, reading the cache log once a
    // minute), a request whose session cannot be read is sent back to the app's redirect URI
    // with `temporarily_unavailable` (RFC 6749 4.1.2.1) and its state, so that a silent
    // `prompt=none` check hears back.
    let w = op_world_with(backend, |config| config.cache.sync_interval = std::time::Duration::from_secs(60)).await;
    let (client, secret) = web_app(&w.app).await;
    // The client is read (and kept) after the first read of the log, which forgets every cache.
    eventually("the first read of the cache log", || async { w.app.cache_sync.last_read_at().is_some() }).await;
    assert_eq!(introspect(&w.app, (&client, &secret), "garbage").await, json!({"active": false}));
    w.app.close_store().await;
    for accept in ["text/html", "*/*"] {
        let answer = authorize_without_store(&w.app, &client, &challenge, "tessera_session=s", accept).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{accept}");
        let to = location(&answer);
        assert!(to.starts_with(REDIRECT), "{to}");
        assert_eq!(param(&to, "error").as_deref(), Some("temporarily_unavailable"), "{to}");
        assert_eq!(param(&to, "state").as_deref(), Some("st-1"), "{to}");
    }
}

/// An authorization request of `client` (with `prompt=none` when it sends a cookie), sent without
/// following redirects.
async fn authorize_without_store(
    app: &TestApp,
    client: &str,
    challenge: &str,
    cookie: &str,
    accept: &str,
) -> reqwest::Response {
    let prompt = if cookie.is_empty() { "" } else { "&prompt=none" };
    let plain = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let request = plain.get(authorize_url(app, client, challenge, prompt)).header("accept", accept);
    let request = if cookie.is_empty() { request } else { request.header("cookie", cookie) };
    request.send().await.unwrap()
}

/// A client signing out with the last access token it holds, expired by then, ends the grant
/// behind it — the refresh token stops too — rather than nothing (RFC 7009 lets it; a sign-out
/// that leaves the refresh token working is not one). An expired `client_credentials` token has
/// nothing left to end: 200, not `unsupported_token_type`.
async fn an_expired_access_token_still_revokes_its_grant(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret, tokens) = first_tokens(&w).await;
    let creds = (client.as_str(), secret.as_str());
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let ring = Arc::new(KeyRing::parse(&ring()).unwrap());
    let keys = SigningKeys::new(w.app.db.store().await, ring, SigningKeySettings::default()).await.unwrap();
    let (_, mut claims) = jwt_parts(tokens["access_token"].as_str().unwrap());
    claims["exp"] = (chrono::Utc::now().timestamp() - 5).into();
    let expired = keys.sign(SigningAlg::ES256, "at+jwt", &claims).await.unwrap();
    assert_eq!(introspect(&w.app, creds, &expired).await["active"], false);
    // Another client's revocation of it ends nothing.
    let (other, other_secret) = web_app(&w.app).await;
    let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&other, Some(&other_secret));
    assert_eq!(revoke.form(&[("token", expired.as_str())]).send().await.unwrap().status(), 200);
    assert_eq!(introspect(&w.app, creds, refresh).await["active"], true);
    // Nor does a token of its own naming that grant's id (minted with a leaked key): the grant
    // is read as every use reads it, the token's client's and user's only.
    let mut borrowed = claims.clone();
    borrowed["client_id"] = other.clone().into();
    borrowed["exp"] = (chrono::Utc::now().timestamp() + 60).into();
    let borrowed = keys.sign(SigningAlg::ES256, "at+jwt", &borrowed).await.unwrap();
    let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&other, Some(&other_secret));
    assert_eq!(revoke.form(&[("token", borrowed.as_str())]).send().await.unwrap().status(), 200);
    assert_eq!(introspect(&w.app, creds, refresh).await["active"], true);
    let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&client, Some(&secret));
    assert_eq!(revoke.form(&[("token", expired.as_str())]).send().await.unwrap().status(), 200);
    assert_eq!(introspect(&w.app, creds, refresh).await["active"], false);
    let refreshed = token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    assert_eq!(oauth_error(refreshed, 400).await, "invalid_grant");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("oauth_grants WHERE revoked_at IS NOT NULL").await, 1);

    let (job, job_secret) = register(
        &w.app,
        json!({"name": "Job", "kind": "confidential", "redirect_uris": [], "grant_types": ["client_credentials"],
               "scopes": ["openid", "jobs"]}),
    )
    .await;
    let job_secret = job_secret.unwrap();
    let minted = w.app.client.post(w.app.url("/oauth/token")).basic_auth(&job, Some(&job_secret));
    let minted = minted.form(&[("grant_type", "client_credentials")]).send().await.unwrap();
    let (_, mut claims) = jwt_parts(body(minted, 200).await["access_token"].as_str().unwrap());
    claims["exp"] = (chrono::Utc::now().timestamp() - 5).into();
    let expired = keys.sign(SigningAlg::ES256, "at+jwt", &claims).await.unwrap();
    let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&job, Some(&job_secret));
    assert_eq!(revoke.form(&[("token", expired.as_str())]).send().await.unwrap().status(), 200);
}

/// A token minted with a leaked key cannot borrow a real grant's id to pass for another user or
/// client: where Tessera reads the grant (`/v1`, userinfo, introspection), it must be the
/// token's own.
async fn a_token_borrowing_another_grant_is_refused(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret, tokens) = first_tokens(&w).await;
    let creds = (client.as_str(), secret.as_str());
    let ring = Arc::new(KeyRing::parse(&ring()).unwrap());
    let keys = SigningKeys::new(w.app.db.store().await, ring, SigningKeySettings::default()).await.unwrap();
    let (_, claims) = jwt_parts(tokens["access_token"].as_str().unwrap());
    let as_is = keys.sign(SigningAlg::ES256, "at+jwt", &claims).await.unwrap();
    let mut other_user = claims.clone();
    other_user["sub"] = json!(uuid::Uuid::new_v4().to_string());
    let mut other_client = claims.clone();
    other_client["client_id"] = json!("trusted-app");
    let other_user = keys.sign(SigningAlg::ES256, "at+jwt", &other_user).await.unwrap();
    let other_client = keys.sign(SigningAlg::ES256, "at+jwt", &other_client).await.unwrap();
    let userinfo = |token: String| w.app.client.get(w.app.url("/oauth/userinfo")).bearer_auth(token).send();
    // The same claims, signed again, pass everywhere: what is refused below is the borrowing.
    assert_eq!(w.app.validate(&as_is).await.status(), StatusCode::OK);
    assert_eq!(userinfo(as_is.clone()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(introspect(&w.app, creds, &as_is).await["active"], true);
    for forged in [other_user, other_client] {
        assert_eq!(body(w.app.validate(&forged).await, 401).await["code"], "token_revoked", "{forged}");
        assert_eq!(userinfo(forged.clone()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
        assert_eq!(introspect(&w.app, creds, &forged).await["active"], false);
    }
}

/// A refresh near the end of its grant gets an access token that ends with the grant, not a
/// full lifetime past it: a resource server that verifies it locally would take it for longer.
async fn an_access_token_never_outlives_its_grant(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret, tokens) = first_tokens(&w).await;
    let creds = (client.as_str(), secret.as_str());
    assert_eq!(tokens["expires_in"], 600, "a full lifetime while the grant lasts longer");
    let ends = match backend {
        Backend::Sqlite => (chrono::Utc::now() + chrono::TimeDelta::seconds(90)).timestamp_micros().to_string(),
        Backend::Postgres => "now() + interval '90 seconds'".to_owned(),
    };
    let changed = w.app.db.sql().await.exec(&format!("UPDATE oauth_grants SET expires_at = {ends}")).await.unwrap();
    assert_eq!(changed, 1);
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let refreshed = token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    let refreshed = body(refreshed, 200).await;
    let expires_in = refreshed["expires_in"].as_u64().unwrap();
    assert!((80..=90).contains(&expires_in), "{refreshed}");
    let (_, claims) = jwt_parts(refreshed["access_token"].as_str().unwrap());
    let exp = claims["exp"].as_i64().unwrap();
    assert!(exp <= chrono::Utc::now().timestamp() + 90, "{claims}");
}

async fn introspection_answers_inactive_alike_and_at_once(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret, tokens) = first_tokens(&w).await;
    let creds = (client.as_str(), secret.as_str());
    let access = tokens["access_token"].as_str().unwrap();
    let active = introspect(&w.app, creds, access).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["client_id"], client);
    assert!(active.get("gid").is_none());
    // Past its `exp` a token is inactive, although verification allows for clock skew: tokens
    // signed with the server's own key, one expired 5 s ago beside one valid for a minute. So it
    // is everywhere a token of Tessera's is taken: userinfo, and forward-auth for its audience.
    let ring = Arc::new(KeyRing::parse(&ring()).unwrap());
    let keys = SigningKeys::new(w.app.db.store().await, ring, SigningKeySettings::default()).await.unwrap();
    let (header, claims) = jwt_parts(access);
    assert_eq!(header["alg"], "ES256");
    let audience = claims["aud"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().timestamp();
    for (exp, active) in [(now + 60, true), (now - 5, false)] {
        let mut claims = claims.clone();
        claims["exp"] = exp.into();
        let signed = keys.sign(SigningAlg::ES256, "at+jwt", &claims).await.unwrap();
        assert_eq!(introspect(&w.app, creds, &signed).await["active"], active, "exp {exp}");
        let info = w.app.client.get(w.app.url("/oauth/userinfo")).bearer_auth(&signed).send().await.unwrap();
        assert_eq!(info.status().is_success(), active, "userinfo, exp {exp}");
        let verify = w.app.url(&format!("/auth/verify?audience={audience}"));
        let verified = w.app.client.get(verify).bearer_auth(&signed).send().await.unwrap();
        assert_eq!(verified.status().is_success(), active, "forward-auth, exp {exp}");
        if !active {
            let challenge = verified.headers()["www-authenticate"].to_str().unwrap();
            assert_eq!(
                challenge, r#"Bearer realm="tessera", error="invalid_token""#,
                "a refused token is told apart from none"
            );
        }
    }
    let refresh = introspect(&w.app, creds, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refresh["active"], true);
    assert!(refresh.get("token_type").is_none(), "RFC 7662's token_type is an access token's: {refresh}");
    // A client no longer allowed to refresh cannot use its refresh token: not active while so.
    for (grant_types, active) in
        [(json!(["authorization_code"]), false), (json!(["authorization_code", "refresh_token"]), true)]
    {
        let patch = w.app.admin(Method::PATCH, &format!("/admin/clients/{client}"));
        let patched = patch.json(&json!({ "grant_types": grant_types })).send().await.unwrap();
        assert_eq!(patched.status(), StatusCode::OK);
        let refresh = introspect(&w.app, creds, tokens["refresh_token"].as_str().unwrap()).await;
        assert_eq!(refresh["active"], active, "{grant_types}");
    }
    // Another client does not see this client's refresh token.
    let (other, other_secret) = web_app(&w.app).await;
    assert_eq!(
        introspect(&w.app, (&other, &other_secret), tokens["refresh_token"].as_str().unwrap()).await,
        json!({"active": false})
    );

    // Garbage, a token of another issuer, a tampered one: the same answer.
    let foreign =
        w.issuer.sign(&w.issuer.add_key(tessera_testkit::local_issuer::Alg::Es256), &w.issuer.claims("s", &client));
    // A different signature: one character in its middle changed.
    let mut tampered = access.to_owned().into_bytes();
    let middle = tampered.len() - 20;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for token in ["garbage", "a.b.c", foreign.as_str(), tampered.as_str()] {
        assert_eq!(introspect(&w.app, creds, token).await, json!({"active": false}), "{token}");
    }
    // Disabling the user: inactive at once.
    let user_id = w.app.db.sql().await.uuids("SELECT id FROM users").await[0].to_string();
    let path = format!("/admin/users/{user_id}");
    body(w.app.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    assert_eq!(introspect(&w.app, creds, access).await, json!({"active": false}));
    body(w.app.admin(Method::PATCH, &path).json(&json!({"disabled": false})).send().await.unwrap(), 200).await;
    // Without client authentication: 401.
    let anonymous = w.app.client.post(w.app.url("/oauth/introspect")).form(&[("token", access)]).send().await.unwrap();
    assert_eq!(oauth_error(anonymous, 401).await, "invalid_client");
    // Basic credentials that do not decode are a failed authentication too (RFC 6749 5.2: 401,
    // with the challenge of the scheme the client tried).
    for malformed in ["Basic not-base64!", "Basic bm8tY29sb24=", "Basic OnNlY3JldA=="] {
        let refused = w.app.client.post(w.app.url("/oauth/introspect")).header("authorization", malformed);
        let refused = refused.form(&[("token", access)]).send().await.unwrap();
        assert_eq!(refused.headers()["www-authenticate"], r#"Basic realm="tessera""#, "{malformed}");
        assert_eq!(oauth_error(refused, 401).await, "invalid_client", "{malformed}");
    }
}

async fn client_credentials_tokens_name_the_client(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = register(
        &w.app,
        json!({
            "name": "Backend job",
            "kind": "confidential",
            "redirect_uris": [],
            "grant_types": ["client_credentials"],
            "scopes": ["openid", "reports:read"],
            "resources": ["https://api.example.com"],
        }),
    )
    .await;
    let secret = secret.unwrap();
    // client_secret_post this time.
    let response = w
        .app
        .client
        .post(w.app.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client.as_str()),
            ("client_secret", secret.as_str()),
            ("resource", "https://api.example.com"),
        ])
        .send()
        .await
        .unwrap();
    let tokens = body(response, 200).await;
    assert!(tokens.get("refresh_token").is_none() && tokens.get("id_token").is_none());
    let (_, claims) = jwt_parts(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], client);
    assert_eq!(claims["aud"], "https://api.example.com");
    assert_eq!(claims["scope"], "reports:read");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(introspect(&w.app, (&client, &secret), access).await["active"], true);
    // Where a user is needed it is refused as a client's token, not as a revoked one.
    let at_validate = w.app.validate(access).await;
    assert!(at_validate.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_eq!(body(at_validate, 401).await["code"], "token_without_user");
    // The resource server it was issued for (registered with that resource) may introspect it;
    // an unrelated client learns nothing about it (RFC 7662 section 4).
    let (api, api_secret) = register(
        &w.app,
        json!({"name": "Reports API", "kind": "confidential", "redirect_uris": [],
               "grant_types": ["client_credentials"], "scopes": ["openid"], "resources": ["https://api.example.com"]}),
    )
    .await;
    let at_api = introspect(&w.app, (&api, api_secret.as_deref().unwrap()), access).await;
    assert_eq!((at_api["active"].clone(), at_api["client_id"].clone()), (json!(true), json!(client)));
    let (other, other_secret) = web_app(&w.app).await;
    assert_eq!(introspect(&w.app, (&other, &other_secret), access).await, json!({"active": false}));
    // No grant to end: revocation says so instead of answering 200 for a token that still counts.
    let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&client, Some(&secret));
    let refused = revoke.form(&[("token", access)]).send().await.unwrap();
    assert_eq!(oauth_error(refused, 400).await, "unsupported_token_type");
    assert_eq!(introspect(&w.app, (&client, &secret), access).await["active"], true);
    let both = w.app.client.post(w.app.url("/oauth/token")).basic_auth(&client, Some(&secret));
    let both = both.form(&[
        ("grant_type", "client_credentials"),
        ("client_id", client.as_str()),
        ("client_secret", secret.as_str()),
    ]);
    assert_eq!(oauth_error(both.send().await.unwrap(), 400).await, "invalid_request", "two authentication methods");
    // `audience` (as some libraries send it) names a target for token exchange only: elsewhere it
    // is refused, not dropped for a token of another audience than the one asked for.
    let https_api = "https://api.example.com";
    let asked = w.app.client.post(w.app.url("/oauth/token")).basic_auth(&client, Some(&secret));
    let asked = asked.form(&[("grant_type", "client_credentials"), ("audience", https_api)]);
    assert_eq!(oauth_error(asked.send().await.unwrap(), 400).await, "invalid_target");
    let asked = w.app.client.post(w.app.url("/oauth/token")).basic_auth(&other, Some(&other_secret));
    let asked = asked.form(&[("grant_type", "authorization_code"), ("code", "x"), ("audience", https_api)]);
    assert_eq!(oauth_error(asked.send().await.unwrap(), 400).await, "invalid_target");
    // A blank scope names none (not a token of no scope); one longer than the authorization
    // endpoint takes is refused before it is split.
    let long: Vec<String> = (0..3000).map(|n| format!("s{n}")).collect();
    for (scope, code) in [(" ".to_owned(), "invalid_scope"), (long.join(" "), "invalid_request")] {
        let asked = w.app.client.post(w.app.url("/oauth/token")).basic_auth(&client, Some(&secret));
        let asked = asked.form(&[("grant_type", "client_credentials"), ("scope", scope.as_str())]);
        assert_eq!(oauth_error(asked.send().await.unwrap(), 400).await, code, "{}", &scope[..scope.len().min(20)]);
    }
    // Deleted (after a compromise, say) and registered again under its id within the second its
    // last token was issued in: the old client's tokens do not count for the new one. Aimed at
    // the start of a second; on a machine so busy that the token and the new registration fall
    // in different seconds, again (else the test would check only the easy case).
    let mut secret = secret;
    let mut within_one_second = false;
    for _ in 0..3 {
        let past_second = 1_000_000_000 - chrono::Utc::now().timestamp_subsec_nanos() as u64;
        tokio::time::sleep(Duration::from_nanos(past_second + 20_000_000)).await;
        let fresh = w.app.client.post(w.app.url("/oauth/token")).basic_auth(&client, Some(&secret));
        let fresh = fresh.form(&[("grant_type", "client_credentials"), ("resource", "https://api.example.com")]);
        let fresh = body(fresh.send().await.unwrap(), 200).await["access_token"].as_str().unwrap().to_owned();
        assert_eq!(introspect(&w.app, (&client, &secret), &fresh).await["active"], true);
        let deleted = w.app.admin(Method::DELETE, &format!("/admin/clients/{client}")).send().await.unwrap();
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
        let again = json!({"id": client, "name": "Backend job", "kind": "confidential", "redirect_uris": [],
                           "grant_types": ["client_credentials"], "scopes": ["openid", "reports:read"],
                           "resources": ["https://api.example.com"]});
        let created = w.app.admin(Method::POST, "/admin/clients").json(&again).send().await.unwrap();
        let created = body(created, 201).await;
        secret = created["client_secret"].as_str().unwrap().to_owned();
        for token in [access, fresh.as_str()] {
            let at_api = introspect(&w.app, (&api, api_secret.as_deref().unwrap()), token).await;
            assert_eq!(at_api, json!({"active": false}));
            // Counting nowhere, it is an invalid token to revoke: 200 (RFC 7009 2.2), not
            // `unsupported_token_type` as a token that still counts is.
            let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&client, Some(&secret));
            assert_eq!(revoke.form(&[("token", token)]).send().await.unwrap().status(), StatusCode::OK);
        }
        let registered = chrono::DateTime::parse_from_rfc3339(created["created_at"].as_str().unwrap()).unwrap();
        if jwt_parts(&fresh).1["iat"] == json!(registered.timestamp()) {
            within_one_second = true;
            break;
        }
    }
    assert!(within_one_second, "no token and re-registration fell within one second");
}

async fn third_party_clients_ask_for_consent_once(backend: Backend) {
    let w = op_world(backend).await;
    let (client, _secret) = register(
        &w.app,
        json!({"name": "Partner <app>", "kind": "confidential", "redirect_uris": [REDIRECT], "first_party": false}),
    )
    .await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    // Sign in first, through the provider, and stop at the consent page.
    let page = first_page(&w.app, &mut browser, authorize_url(&w.app, &client, &challenge, "")).await;
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    // Escaped with named or numeric references (askama writes `&#60;`).
    assert!(
        (html.contains("Partner &lt;app&gt;") || html.contains("Partner &#60;app&#62;")) && !html.contains("<app>"),
        "the name is escaped"
    );
    // The scopes in words.
    for said in ["know who you are", "see your email address", "see your teams and your role in each"] {
        assert!(html.contains(said), "{said}: {html}");
    }
    // And the account the app would get, on a browser several people may share.
    let me = body(browser.me(&w.app).await, 200).await;
    let who = me["name"].as_str().or(me["email"].as_str()).unwrap();
    assert!(html.contains(&format!("Signed in as <strong>{who}</strong>")), "{who}: {html}");
    let request_id = request_id_of(&html);
    // A double click, or eight: each answer sends the browser on with the one code issued (the
    // browser keeps only the last response).
    let cookies: Vec<String> = browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // Without a session at all: 401 `login_required`, with the challenge every 401 carries.
    for accept in ["application/json", "text/html"] {
        let form = [("request_id", request_id.as_str()), ("decision", "approve")];
        let anonymous = http.post(w.app.url("/oauth/consent")).header("accept", accept).form(&form);
        let anonymous = anonymous.send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{accept}");
        assert_eq!(anonymous.headers()["www-authenticate"], r#"Bearer realm="tessera""#, "{accept}");
        // A browser is sent back to the app (a sign-in here could not take the request on); the
        // app is not blamed for a session that ended.
        if accept == "text/html" {
            let page = anonymous.text().await.unwrap();
            assert!(page.contains("Go back to the app you came from"), "{page}");
            assert!(!page.contains("href=\"/login") && !page.contains("The app that sent you here"), "{page}");
        }
    }
    let mut tasks = Vec::new();
    for i in 0..8 {
        let send = http.post(w.app.url("/oauth/consent")).header("cookie", cookies.join("; "));
        let decision = if i == 7 { "deny" } else { "approve" };
        let send =
            send.header("accept", "text/html").form(&[("request_id", request_id.as_str()), ("decision", decision)]);
        tasks.push(tokio::spawn(async move { send.send().await.unwrap() }));
    }
    let mut answers = HashSet::new();
    for task in tasks {
        answers.insert(location(&task.await.unwrap()));
    }
    assert_eq!(answers.len(), 1, "{answers:?}");
    let to = answers.into_iter().next().unwrap();
    assert!(param(&to, "code").is_some() || param(&to, "error").as_deref() == Some("access_denied"), "{to}");
    let approved = param(&to, "code").is_some();
    assert_eq!(w.app.db.sql().await.count("oauth_codes").await, i64::from(approved), "one answer, at most one code");
    if !approved {
        // The deny won the race: approve once more, through a fresh consent page.
        let page = browser.navigate(&authorize_url(&w.app, &client, &challenge, "")).await;
        let request_id = request_id_of(&page.text().await.unwrap());
        let form = [("request_id", request_id.as_str()), ("decision", "approve")];
        assert!(
            param(&location(&browser_post(&mut browser, &w.app.url("/oauth/consent"), &form).await), "code").is_some()
        );
    }
    // Another session cannot use the id, nor see its answer.
    let mut stranger = Browser::new();
    stranger.sign_in(&w.app, "").await;
    let form = [("request_id", request_id.as_str()), ("decision", "approve")];
    let refused = browser_post(&mut stranger, &w.app.url("/oauth/consent"), &form).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    // A page that says what happened and what to do, without blaming the app.
    let page = refused.text().await.unwrap();
    assert!(page.contains("This approval page has expired") && !page.contains("The app that sent you"), "{page}");
    // Remembered: the next authorization goes straight back with a code.
    let to = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "")).await);
    assert!(param(&to, "code").is_some(), "{to}");
    // prompt=consent asks again; denying sends access_denied.
    let page = browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=consent")).await;
    let html = page.text().await.unwrap();
    let request_id = request_id_of(&html);
    let deny =
        browser_post(&mut browser, &w.app.url("/oauth/consent"), &[("request_id", &request_id), ("decision", "deny")])
            .await;
    assert_eq!(param(&location(&deny), "error").as_deref(), Some("access_denied"));
    assert_eq!(w.app.db.sql().await.count("oauth_consents").await, 1);
    // The approval is in the audit log, once (not the remembered consent, nor a denial): who
    // approved which app for what.
    let rows = w
        .app
        .db
        .sql()
        .await
        .texts(
            "SELECT actor_kind || ' ' || actor_id || ' ' || target_kind || ' ' || target_id || ' ' || \
             CAST(details AS TEXT) FROM audit_events WHERE action = 'app.authorized'",
        )
        .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let who = me["id"].as_str().unwrap();
    assert!(rows[0].starts_with(&format!("user {who} client {client} ")), "{rows:?}");
    assert!(rows[0].contains("\"scopes\"") && rows[0].contains("openid"), "{rows:?}");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("audit_events WHERE action = 'app.authorized' AND request_id IS NOT NULL").await, 1);
}

/// A third-party app's authorization request, a browser signed in through it and stopped at its
/// consent page: the app's id, the consent request's id and the browser's cookies.
async fn partner_consent_page(w: &World) -> (String, String, Vec<String>) {
    let third_party =
        json!({"name": "Partner", "kind": "confidential", "redirect_uris": [REDIRECT], "first_party": false});
    let (client, _secret) = register(&w.app, third_party).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    let page = first_page(&w.app, &mut browser, authorize_url(&w.app, &client, &challenge, "")).await;
    let request_id = request_id_of(&page.text().await.unwrap());
    (client, request_id, browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// A scope the client is not registered for is left out of the request, and so of its consent
/// page; registered while the page is open, it is not granted by the page's approval either (the
/// held request keeps the scopes as checked, which a later check may only narrow).
async fn a_consent_grants_no_scope_its_page_did_not_show(backend: Backend) {
    let w = op_world(backend).await;
    let partner = json!({"name": "Partner", "kind": "confidential", "redirect_uris": [REDIRECT],
                         "first_party": false, "scopes": ["openid", "email"]});
    let (client, secret) = register(&w.app, partner).await;
    let secret = secret.expect("a confidential client gets a secret");
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new();
    let page = first_page(&w.app, &mut browser, authorize_url(&w.app, &client, &challenge, "")).await;
    let request_id = request_id_of(&page.text().await.unwrap());
    let widened = json!({"scopes": ["openid", "email", "teams"]});
    let widened = w.app.admin(Method::PATCH, &format!("/admin/clients/{client}")).json(&widened);
    body(widened.send().await.unwrap(), 200).await;
    let form = [("request_id", request_id.as_str()), ("decision", "approve")];
    let approved = browser_post(&mut browser, &w.app.url("/oauth/consent"), &form).await;
    let code = param(&location(&approved), "code").expect("a code");
    let tokens = body(exchange(&w.app, (&client, &secret), &code, &verifier).await, 200).await;
    assert_eq!(tokens["scope"], "openid email", "{tokens}");
}

/// Clicks on one consent page reaching two instances at once (a double click behind a load
/// balancer): the database's single use of the held request decides, so one code and one grant
/// are issued; an instance that lost the race answers that the request is used up.
async fn consent_clicks_sent_to_two_instances_issue_one_code(backend: Backend) {
    let w = op_world(backend).await;
    let other = w.another().await;
    let (_, request_id, cookies) = partner_consent_page(&w).await;
    let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let click = |app: &TestApp| {
        http.post(app.url("/oauth/consent"))
            .header("cookie", cookies.join("; "))
            .header("accept", "text/html")
            .form(&[("request_id", request_id.as_str()), ("decision", "approve")])
    };
    let clicks: Vec<_> = (0..16).map(|i| click(if i % 2 == 0 { &w.app } else { &other })).collect();
    let (mut codes, mut refused) = (HashSet::new(), 0);
    for answer in send_at_once(&clicks).await {
        match answer.status() {
            StatusCode::SEE_OTHER => {
                codes.insert(param(&location(&answer), "code").expect("a redirect carries the code"));
            }
            StatusCode::BAD_REQUEST => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(codes.len(), 1, "one code, whichever instance answered: {codes:?} ({refused} refused)");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("oauth_codes").await, 1);
    assert_eq!(sql.count("oauth_grants").await, 1);
    assert_eq!(sql.count("oauth_consents").await, 1);
    assert_eq!(sql.count("oauth_requests").await, 0, "the held request is used up");
    other.stop().await;
}

/// A consent that cannot be checked (the client's row unreadable on an instance that has not
/// cached it) leaves the request held: the same form sent again once the store answers issues
/// the code, rather than finding the request used up and the app never told.
async fn a_consent_that_cannot_be_checked_stays_for_the_form_sent_again(backend: Backend) {
    let w = op_world(backend).await;
    let (_, request_id, cookies) = partner_consent_page(&w).await;
    let cold = w.another().await;
    // Serving (its start-up, which writes the configuration's clients, over).
    assert!(cold.client.get(cold.url("/healthz")).send().await.unwrap().status().is_success());
    let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let click = || {
        http.post(cold.url("/oauth/consent"))
            .header("cookie", cookies.join("; "))
            .header("accept", "text/html")
            .form(&[("request_id", request_id.as_str()), ("decision", "approve")])
    };
    let sql = w.app.db.sql().await;
    sql.exec("ALTER TABLE clients RENAME TO clients_away").await.unwrap();
    let failed = click().send().await.unwrap();
    sql.exec("ALTER TABLE clients_away RENAME TO clients").await.unwrap();
    assert!(failed.status().is_server_error(), "{}", failed.status());
    assert_eq!(sql.count("oauth_requests").await, 1, "still held");
    let again = click().send().await.unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER, "{:?}", again.text().await);
    assert!(param(&location(&again), "code").is_some());
    assert_eq!(sql.count("oauth_requests").await, 0, "used up once it answered");
    cold.stop().await;

    // One the check refuses is used up with that answer: the app is told once, never twice.
    let (client, request_id, cookies) = partner_consent_page(&w).await;
    // No longer allowed the code flow.
    let patch = json!({"grant_types": ["client_credentials"]});
    let narrowed = w.app.admin(Method::PATCH, &format!("/admin/clients/{client}")).json(&patch);
    body(narrowed.send().await.unwrap(), 200).await;
    let answer = http
        .post(w.app.url("/oauth/consent"))
        .header("cookie", cookies.join("; "))
        .header("accept", "text/html")
        .form(&[("request_id", request_id.as_str()), ("decision", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(param(&location(&answer), "error").as_deref(), Some("unauthorized_client"));
    assert_eq!(sql.count("oauth_requests").await, 0, "used up by its answer");
}

/// A double click whose first request the browser drops (it keeps only the last) once the first
/// began to use the held request up: the second gets the code the first issued, not "expired".
/// The held requests are locked meanwhile (a transaction of the test's), so that the first is
/// dropped while it waits inside the store.
async fn a_consent_whose_first_click_the_browser_dropped_answers_the_second_alike(backend: Backend) {
    let w = op_world(backend).await;
    let (_, request_id, cookies) = partner_consent_page(&w).await;
    let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let click = || {
        http.post(w.app.url("/oauth/consent"))
            .header("cookie", cookies.join("; "))
            .header("accept", "text/html")
            .form(&[("request_id", request_id.as_str()), ("decision", "approve")])
    };

    let sql = w.app.db.sql().await;
    let lock = sql.hold("BEGIN IMMEDIATE", "BEGIN; SELECT 1 FROM oauth_requests FOR UPDATE").await;
    let first = click().timeout(Duration::from_millis(700)).send().await;
    assert!(first.is_err_and(|e| e.is_timeout()), "the first click waits on the lock, and is dropped");
    let second = tokio::spawn(click().send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.end("ROLLBACK").await;
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.status(), StatusCode::SEE_OTHER, "{:?}", second.text().await);
    let to = location(&second);
    assert!(param(&to, "code").is_some(), "the code the first click issued: {to}");
    assert_eq!(sql.count("oauth_codes").await, 1, "one code");
}

/// RFC 8252 section 8.6: anyone can send a public client's id, and any program on the device can
/// answer its loopback redirect (on any port), so a remembered consent does not show that the app
/// asking is the one approved. Through its `https` redirect, the consent is remembered.
async fn a_public_client_on_a_loopback_redirect_asks_for_consent_every_time(backend: Backend) {
    let w = op_world(backend).await;
    let (agent, _) = register(
        &w.app,
        json!({"name": "Agent", "kind": "public", "redirect_uris": ["http://127.0.0.1/callback", REDIRECT],
               "first_party": false}),
    )
    .await;
    let (_, challenge) = pkce();
    let to = |redirect: &str, extra: &str| {
        authorize_url(&w.app, &agent, &challenge, extra).replace(&urlencode(REDIRECT), &urlencode(redirect))
    };
    let mut browser = Browser::new();
    let page = first_page(&w.app, &mut browser, to("http://127.0.0.1:5555/callback", "")).await;
    let request_id = request_id_of(&page.text().await.unwrap());
    let form = [("request_id", request_id.as_str()), ("decision", "approve")];
    let approved = location(&browser_post(&mut browser, &w.app.url("/oauth/consent"), &form).await);
    assert!(approved.starts_with("http://127.0.0.1:5555/callback?code="), "{approved}");
    // Another program, on another port: the page again, not a code; without a page, no code.
    let again = browser.navigate(&to("http://127.0.0.1:6666/callback", "")).await;
    assert!(!request_id_of(&html_of(again).await).is_empty(), "asked again");
    let silent = browser.navigate(&to("http://127.0.0.1:6666/callback", "&prompt=none")).await;
    assert_eq!(param(&location(&silent), "error").as_deref(), Some("consent_required"));
    // Its https redirect belongs to the origin that registered it: the consent counts there.
    let remembered = location(&browser.navigate(&to(REDIRECT, "")).await);
    assert!(param(&remembered, "code").is_some(), "{remembered}");
    // Made first-party, it skips the page through its https redirect, but not through the
    // loopback one, which any program can answer.
    let path = format!("/admin/clients/{agent}");
    body(w.app.admin(Method::PATCH, &path).json(&json!({"first_party": true})).send().await.unwrap(), 200).await;
    let silent = browser.navigate(&to("http://127.0.0.1:7777/callback", "&prompt=none")).await;
    assert_eq!(param(&location(&silent), "error").as_deref(), Some("consent_required"));
    let skipped = location(&browser.navigate(&to(REDIRECT, "")).await);
    assert!(param(&skipped, "code").is_some(), "{skipped}");
    // Unless it asks for the page itself: `prompt=consent` is honoured for a first-party app too.
    let asked = browser.navigate(&to(REDIRECT, "&prompt=consent")).await;
    assert!(!request_id_of(&html_of(asked).await).is_empty(), "prompt=consent shows the page");
}

/// Follows redirects from `url` (signing in through the provider on the way) to the first page
/// that answers 200.
async fn first_page(app: &TestApp, browser: &mut Browser, mut url: String) -> reqwest::Response {
    let mut visited = Vec::new();
    loop {
        assert!(visited.len() < 20, "redirected more than 20 times: {visited:#?}");
        let response = browser.navigate(&url).await;
        if response.status() == StatusCode::OK {
            return response;
        }
        let next = location(&response);
        visited.push(std::mem::replace(&mut url, if next.starts_with('/') { app.url(&next) } else { next }));
    }
}

async fn browser_post(browser: &mut Browser, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
    browser.form(url, form).await
}

/// With several providers and no default, an app's `login_hint` of a domain a team claimed goes
/// straight to that team's provider — found by its issuer when the issuer's configured name is
/// not a provider's — and without a hint to the sign-in chooser.
async fn a_login_hint_of_a_teams_domain_signs_in_through_the_teams_provider(backend: Backend) {
    let w = world_with(backend, |config, issuer| {
        config.encryption = Some(Arc::new(KeyRing::parse(&ring()).unwrap()));
        config.auth.default_provider = None;
        config.providers.push(crate::signin::provider("other", tessera::config::ProviderKind::Oidc, issuer));
        let mut sso = crate::helpers::local_issuer_config(issuer);
        sso.name = "corp-sso".into();
        config.issuers.push(sso);
    })
    .await;
    let (client, _) = web_app(&w.app).await;
    let owner = crate::helpers::identity("owner", "owner@acme.example", Some("Acme"));
    let team = body(w.app.bootstrap(&owner).await, 201).await["team"]["id"].as_str().unwrap().to_owned();
    let claim = json!({"domain": "acme.example", "issuer": w.issuer.issuer(), "verified": true});
    let claimed = w.app.admin(Method::POST, &format!("/admin/teams/{team}/domains")).json(&claim).send().await;
    body(claimed.unwrap(), 201).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    let hinted = browser.navigate(&authorize_url(&w.app, &client, &challenge, "&login_hint=jane%40acme.example")).await;
    assert_eq!(hinted.status(), StatusCode::SEE_OTHER);
    let to = location(&hinted);
    assert!(to.starts_with(w.issuer.issuer()), "to the team's provider: {to}");
    let unhinted = browser.navigate(&authorize_url(&w.app, &client, &challenge, "")).await;
    assert!(location(&unhinted).starts_with("/login?return_to="), "the chooser: {}", location(&unhinted));
    // A domain that cannot be looked up is said so, not sent to the chooser or a default provider
    // its team may not use.
    let sql = w.app.db.sql().await;
    sql.exec("ALTER TABLE team_domains RENAME TO team_domains_away").await.unwrap();
    let unknown = browser.navigate(&authorize_url(&w.app, &client, &challenge, "&login_hint=ann%40else.example")).await;
    sql.exec("ALTER TABLE team_domains_away RENAME TO team_domains").await.unwrap();
    assert!(unknown.status().is_server_error(), "{}", unknown.status());
    assert!(unknown.text().await.unwrap().contains("<html"), "a page");
}

/// `prompt=login` through the provider chooser (several providers, no default): the provider
/// the user picks is asked for a fresh login too, as it is when Tessera picks it — the held
/// request says so, not a parameter the browser could drop.
async fn a_fresh_login_asked_for_survives_the_provider_chooser(backend: Backend) {
    let w = world_with(backend, |config, issuer| {
        config.encryption = Some(Arc::new(KeyRing::parse(&ring()).unwrap()));
        config.auth.default_provider = None;
        config.providers.push(crate::signin::provider("other", tessera::config::ProviderKind::Oidc, issuer));
    })
    .await;
    let (client, _) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    // Through the chooser, picking `other`: the held request's own URL to come back to.
    let pick = async |browser: &mut Browser, extra: &str| {
        let chooser = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, extra)).await);
        let return_to = param(&w.app.url(&chooser), "return_to").expect("the chooser comes back to the request");
        let picked = format!("/auth/login?provider=other&return_to={}", urlencode(&return_to));
        browser.request_from("same-origin", Method::GET, &w.app.url(&picked)).await
    };
    let first = pick(&mut browser, "").await;
    assert_eq!(param(&location(&first), "prompt"), None, "an ordinary sign-in");
    assert!(param(&follow(&mut browser, location(&first)).await, "code").is_some());
    // Another site's `prompt=login` asks the signed-in browser first here too, rather than
    // showing the chooser, a click on which (this origin's) would end its session unasked.
    let sessions = w.app.db.sql().await.count("sessions").await;
    let url = authorize_url(&w.app, &client, &challenge, "&prompt=login");
    let asked = browser.request_from("cross-site", Method::GET, &url).await;
    assert_eq!(asked.status(), StatusCode::OK);
    let page = asked.text().await.unwrap();
    assert!(page.contains("You are already signed in"), "{page}");
    assert!(page.contains("href=\"/login?return_to="), "signing in anew goes by the chooser: {page}");
    assert_eq!(w.app.db.sql().await.count("sessions").await, sessions, "the session lives");
    let again = pick(&mut browser, "&prompt=login").await;
    let upstream = location(&again);
    assert!(upstream.starts_with(w.issuer.issuer()), "{upstream}");
    assert_eq!(param(&upstream, "prompt").as_deref(), Some("login"), "a fresh login, asked of the provider");
    assert_eq!(param(&upstream, "max_age").as_deref(), Some("0"));

    // Leaving that flow for a sign-in of one's own choosing — the same provider, opened without
    // the request to come back to, which its own session answers — and then going back to the
    // request: a new session, but no fresh authentication, so the request asks for one again.
    let chooser = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=login")).await);
    let held = param(&w.app.url(&chooser), "return_to").unwrap();
    let own = browser.request_from("same-origin", Method::GET, &w.app.url("/auth/login?provider=other")).await;
    let upstream = location(&own);
    assert_eq!(param(&upstream, "prompt"), None, "an ordinary sign-in");
    let callback = location(&browser.navigate(&upstream).await);
    let landed = browser.navigate(&callback).await;
    assert_eq!(landed.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&landed), "/", "signed in, with a new session");
    let sessions = w.app.db.sql().await.count("sessions").await;
    let resumed = location(&browser.navigate(&w.app.url(&held)).await);
    assert!(resumed.starts_with("/login?"), "no code without the fresh login asked for, but the chooser: {resumed}");
    let return_to = param(&w.app.url(&resumed), "return_to").expect("the chooser again");
    let picked = format!("/auth/login?provider=other&return_to={}", urlencode(&return_to));
    let upstream = location(&browser.request_from("same-origin", Method::GET, &w.app.url(&picked)).await);
    assert_eq!(param(&upstream, "prompt").as_deref(), Some("login"), "{upstream}");
    assert!(param(&follow(&mut browser, upstream).await, "code").is_some(), "and then a code");
    assert_eq!(w.app.db.sql().await.count("sessions").await, sessions, "the fresh sign-in replaced the session");
}

/// A plain OAuth 2.0 provider does not say when the user authenticated: a session it started is
/// no proof of a recent authentication, so `max_age` sends the user to it again, asking for a
/// fresh login, after which the request is answered (asked, not checked).
async fn a_provider_that_does_not_say_when_the_user_authenticated_is_asked_again(backend: Backend) {
    let w = world_with(backend, |config, issuer| {
        config.encryption = Some(Arc::new(KeyRing::parse(&ring()).unwrap()));
        let mut plain = crate::profile_actions::plain_provider(issuer);
        plain.protocol.sign_in = true;
        config.providers.push(plain);
        config.auth.default_provider = Some("plain".into());
    })
    .await;
    w.issuer.name_account_in_token_answers(true);
    let (client, _) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    assert!(!code.is_empty());
    let within_an_hour = authorize_url(&w.app, &client, &challenge, "&max_age=3600");
    let upstream = location(&browser.navigate(&within_an_hour).await);
    assert!(
        upstream.starts_with(w.issuer.issuer()),
        "signed in a moment ago, but when it authenticated is unknown: {upstream}"
    );
    assert_eq!(param(&upstream, "prompt").as_deref(), Some("login"), "{upstream}");
    assert!(param(&follow(&mut browser, upstream).await, "code").is_some(), "asked for a fresh login: a code");
    let to = location(&browser.navigate(&within_an_hour).await);
    assert!(param(&to, "code").is_some(), "the fresh login's start counts: {to}");
}

/// `prompt=none` with an `id_token_hint` (OpenID Connect Core 3.1.2.1): a browser signed in as
/// the hinted user gets a code; one signed in as someone else gets `login_required`, not a code
/// for another user than the app expects. A hint for another client, or not Tessera's, is refused.
async fn prompt_none_with_a_hint_of_another_user_is_login_required(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    let id_token_of = async |browser: &mut Browser| {
        let (verifier, challenge) = pkce();
        let code = code_for(&w, browser, &client, &challenge).await;
        body(exchange(&w.app, creds, &code, &verifier).await, 200).await["id_token"].as_str().unwrap().to_owned()
    };
    w.issuer.set_next_user(StubUser::new("hint-ada", "ada@example.com"));
    let mut ada = Browser::new();
    let adas = id_token_of(&mut ada).await;
    w.issuer.set_next_user(StubUser::new("hint-bob", "bob@example.com"));
    let mut bob = Browser::new();
    let bobs = id_token_of(&mut bob).await;
    let (_, challenge) = pkce();
    let silent = |hint: &str| authorize_url(&w.app, &client, &challenge, &format!("&prompt=none&id_token_hint={hint}"));
    let to = location(&ada.navigate(&silent(&adas)).await);
    assert!(param(&to, "code").is_some(), "{to}");
    let to = location(&ada.navigate(&silent(&bobs)).await);
    assert_eq!(param(&to, "error").as_deref(), Some("login_required"), "{to}");
    let (other, _) = web_app(&w.app).await;
    let elsewhere = authorize_url(&w.app, &other, &challenge, &format!("&prompt=none&id_token_hint={adas}"));
    let to = location(&ada.navigate(&elsewhere).await);
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"), "a hint for another client: {to}");
    let to = location(&ada.navigate(&silent("a.b.c")).await);
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"), "{to}");
    // One signed by a key no longer published (kept by the app since before a rotation) cannot
    // be checked: it names nobody, and the request goes on as without it (the app compares
    // `sub`) — unless it says it is another client's.
    let unverifiable = with_unpublished_kid(&bobs);
    let to = location(&ada.navigate(&silent(&unverifiable)).await);
    assert!(param(&to, "code").is_some(), "{to}");
    let elsewhere = authorize_url(&w.app, &other, &challenge, &format!("&prompt=none&id_token_hint={unverifiable}"));
    let to = location(&ada.navigate(&elsewhere).await);
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"), "a hint for another client: {to}");
    // Another issuer's id token for the client (the upstream provider's) names a key Tessera
    // never published too: it is not Tessera's, and refused.
    let upstream = w.issuer.sign("rsa-1", &w.issuer.claims("hint-bob", &client));
    let to = location(&ada.navigate(&silent(&upstream)).await);
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"), "another issuer's token: {to}");
    // The hint holds for a request held before it is used: pushed (RFC 9126), or posted from
    // the app's site (which goes on as a GET that carries the session cookie).
    for (hint, user) in [(&bobs, "bob"), (&adas, "ada")] {
        let form = [
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("state", "st-1"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("prompt", "none"),
            ("id_token_hint", hint.as_str()),
        ];
        let pushed = w.app.client.post(w.app.url("/oauth/par")).basic_auth(&client, Some(&secret)).form(&form);
        let pushed = body(pushed.send().await.unwrap(), 201).await;
        let uri = urlencode(pushed["request_uri"].as_str().unwrap());
        let to = location(
            &ada.navigate(&w.app.url(&format!("/oauth/authorize?client_id={client}&request_uri={uri}"))).await,
        );
        let posted = cross_site_post(&silent(hint)).await;
        let bounced = location(&ada.navigate(&w.app.url(&posted)).await);
        for to in [to, bounced] {
            match user {
                "bob" => assert_eq!(param(&to, "error").as_deref(), Some("login_required"), "{to}"),
                _ => assert!(param(&to, "code").is_some(), "{to}"),
            }
        }
    }

    // Without `prompt=none`, the hinted user must be signed in by the request: not a code for the
    // browser's user, but a fresh sign-in, after which the code is for whoever signed in.
    let (verifier, challenge) = pkce();
    let hinted = |hint: &str| authorize_url(&w.app, &client, &challenge, &format!("&id_token_hint={hint}"));
    let to = location(&ada.navigate(&hinted(&adas)).await);
    assert!(param(&to, "code").is_some(), "the hinted user is the browser's: {to}");
    let to = location(&ada.navigate(&hinted(&bobs)).await);
    assert!(!to.starts_with("https://app.example.com/"), "a sign-in, not a code: {to}");
    assert_eq!(param(&to, "prompt").as_deref(), Some("login"), "a fresh login, asked of the provider: {to}");
    w.issuer.set_next_user(StubUser::new("hint-bob", "bob@example.com"));
    let code = code_from(&w, &mut ada, hinted(&bobs)).await;
    let tokens = body(exchange(&w.app, creds, &code, &verifier).await, 200).await;
    let sub = |token: &str| jwt_parts(token).1["sub"].clone();
    assert_eq!(sub(tokens["id_token"].as_str().unwrap()), sub(&bobs), "signed in as the hinted user");
}

/// "Not you? Use another account" on a consent page: the request goes on for whoever signs in
/// now, by a fresh login at the provider (whose own session would pick the same person again),
/// and the app gets the code of the person who did, once they consented themselves.
async fn someone_else_can_sign_in_from_a_consent_page(backend: Backend) {
    let w = op_world(backend).await;
    let partner = json!({"name": "Partner", "kind": "confidential", "redirect_uris": [REDIRECT], "first_party": false});
    let (client, secret) = register(&w.app, partner).await;
    let secret = secret.expect("a confidential client gets a secret");
    let (verifier, challenge) = pkce();
    let mut ada = StubUser::new("switch-ada", "ada@example.com");
    ada.name = Some("Ada".into());
    w.issuer.set_next_user(ada);
    let mut browser = Browser::new();
    let page = html_of(first_page(&w.app, &mut browser, authorize_url(&w.app, &client, &challenge, "")).await).await;
    assert!(page.contains("Signed in as <strong>Ada</strong> (ada@example.com). Not you?"), "{page}");
    let request_id = request_id_of(&page);
    let switch = [("request_id", request_id.as_str()), ("decision", "another_account")];
    let switched = browser_post(&mut browser, &w.app.url("/oauth/consent"), &switch).await;
    assert_eq!(switched.status(), StatusCode::SEE_OTHER);
    let to = location(&switched);
    assert!(to.starts_with(&format!("/oauth/authorize?client_id={client}&request_uri=")), "{to}");
    // The consent request is used up: the page's Allow, sent after, grants Ada nothing.
    let approve = [("request_id", request_id.as_str()), ("decision", "approve")];
    let late = browser_post(&mut browser, &w.app.url("/oauth/consent"), &approve).await;
    assert!(!location(&late).starts_with(REDIRECT), "{}", location(&late));
    assert_eq!(w.app.db.sql().await.count("oauth_grants").await, 0);
    // Followed, the request asks the provider for a fresh login.
    let upstream = location(&browser.request_from("same-origin", Method::GET, &w.app.url(&to)).await);
    assert_eq!(param(&upstream, "prompt").as_deref(), Some("login"), "{upstream}");
    w.issuer.set_next_user(StubUser::new("switch-bob", "bob@example.com"));
    let page = html_of(first_page(&w.app, &mut browser, upstream).await).await;
    assert!(page.contains("Signed in as <strong>bob@example.com</strong>. Not you?"), "{page}");
    let approve = [("request_id", request_id_of(&page)), ("decision", "approve".to_owned())];
    let approve: Vec<(&str, &str)> = approve.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let back = location(&browser_post(&mut browser, &w.app.url("/oauth/consent"), &approve).await);
    assert_eq!(param(&back, "state").as_deref(), Some("st-1"), "{back}");
    let code = param(&back, "code").expect("a code");
    let tokens = body(exchange(&w.app, (&client, &secret), &code, &verifier).await, 200).await;
    let bob = body(browser.me(&w.app).await, 200).await;
    assert_eq!(bob["email"], "bob@example.com");
    assert_eq!(jwt_parts(tokens["id_token"].as_str().unwrap()).1["sub"], bob["id"]);
    assert_eq!(w.app.db.sql().await.count("sessions").await, 1, "Ada's session here ended with Bob's sign-in");

    // The request, used up, cannot be held again (the store failing): the app is told, as of any
    // failure after validation, rather than left waiting for an answer that cannot come.
    let asking = authorize_url(&w.app, &client, &challenge, "&prompt=consent");
    let page = html_of(first_page(&w.app, &mut browser, asking).await).await;
    let switch = [("request_id", request_id_of(&page)), ("decision", "another_account".to_owned())];
    let switch: Vec<(&str, &str)> = switch.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sql = w.app.db.sql().await;
    sql.inject("INSERT", "oauth_requests", None, "SELECT RAISE(ABORT, 'injected');", "RAISE EXCEPTION 'injected';")
        .await;
    let told = location(&browser_post(&mut browser, &w.app.url("/oauth/consent"), &switch).await);
    sql.remove_injected("oauth_requests").await;
    assert!(told.starts_with(REDIRECT), "{told}");
    assert_eq!(param(&told, "error").as_deref(), Some("server_error"), "{told}");
    assert_eq!(param(&told, "state").as_deref(), Some("st-1"), "{told}");
}

/// RFC 6749 4.1.2.1: once the client and its redirect URI are known good, a failure of
/// Tessera's own is told to the app at its redirect URI, with the state and `iss` — a silent
/// `prompt=none` check in a hidden frame would otherwise never hear back — and without the
/// cause, which is logged.
async fn a_failure_after_the_request_is_validated_is_told_to_the_app(backend: Backend) {
    let w = op_world(backend).await;
    let (client, _) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    code_for(&w, &mut browser, &client, &challenge).await;
    // The grants' table gone, as a broken database would fail the code's write.
    let sql = w.app.db.sql().await;
    sql.exec("ALTER TABLE oauth_grants RENAME TO oauth_grants_away").await.unwrap();
    for prompt in ["&prompt=none", ""] {
        let to = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, prompt)).await);
        assert!(to.starts_with(REDIRECT), "{prompt}: {to}");
        assert_eq!(param(&to, "error").as_deref(), Some("server_error"), "{to}");
        assert_eq!(param(&to, "state").as_deref(), Some("st-1"), "{to}");
        assert_eq!(param(&to, "iss").as_deref(), Some(w.app.url("").trim_end_matches('/')), "{to}");
        assert!(param(&to, "code").is_none(), "{to}");
        assert!(!to.contains("oauth_grants"), "no SQL in the answer: {to}");
    }
    sql.exec("ALTER TABLE oauth_grants_away RENAME TO oauth_grants").await.unwrap();
    let to = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=none")).await);
    assert!(param(&to, "code").is_some(), "{to}");
    // A failure before: the browser's session unreadable (a cookie this instance has not seen,
    // and the sessions' table gone). The request checks out all the same, so the app is told.
    sql.exec("ALTER TABLE sessions RENAME TO sessions_away").await.unwrap();
    let plain = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let unread = |url: String| {
        plain.get(url).header("cookie", "tessera_session=not-seen-before").header("accept", "text/html").send()
    };
    for prompt in ["&prompt=none", ""] {
        let to = location(&unread(authorize_url(&w.app, &client, &challenge, prompt)).await.unwrap());
        assert!(to.starts_with(REDIRECT), "{prompt}: {to}");
        assert_eq!(param(&to, "error").as_deref(), Some("server_error"), "{to}");
        assert_eq!(param(&to, "state").as_deref(), Some("st-1"), "{to}");
        assert!(!to.contains("sessions"), "no SQL in the answer: {to}");
    }
    // One that does not check out is refused as it would be anyway: not sent to an unknown
    // client's redirect URI.
    let unknown = unread(authorize_url(&w.app, "no-such-client", &challenge, "")).await.unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    sql.exec("ALTER TABLE sessions_away RENAME TO sessions").await.unwrap();
}

/// A provider that takes no `prompt=login` (Google) is asked to choose the account again, and
/// no `max_age`; choosing the account does not sign the user in again, so an `auth_time` it
/// states all the same (Google's session age claims) must be recent.
async fn a_provider_asked_to_choose_the_account_is_held_to_the_auth_time_it_states(backend: Backend) {
    let w = op_world_with(backend, |config| {
        for provider in &mut config.providers {
            provider.protocol.fresh_login = tessera::config::FreshLogin::SelectAccount;
        }
    })
    .await;
    let (client, _) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    code_for(&w, &mut browser, &client, &challenge).await;
    let upstream = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=login")).await);
    assert!(upstream.starts_with(w.issuer.issuer()), "{upstream}");
    assert_eq!(param(&upstream, "prompt").as_deref(), Some("select_account"), "{upstream}");
    assert_eq!(param(&upstream, "max_age"), None, "{upstream}");
    // The provider answers from its session, begun minutes ago, and says so.
    let callback = location(&browser.navigate(&upstream).await);
    let refused = browser.navigate(&callback).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused.text().await.unwrap().contains("login_not_fresh"));
}

async fn prompt_and_max_age_are_honoured(backend: Backend) {
    let w = op_world(backend).await;
    // Its id_tokens' auth_time has a fraction of a second, as a NumericDate may: a time all the same.
    w.issuer.fractional_auth_time(true);
    let (client, _) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    code_for(&w, &mut browser, &client, &challenge).await;
    // Signed in: prompt=none answers at once.
    let to = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=none")).await);
    assert!(param(&to, "code").is_some());
    // The provider answered that sign-in from its own session, begun ten minutes before (its
    // id_token's auth_time): max_age is measured from then, not from the session's start.
    let max_age = |seconds: i64| authorize_url(&w.app, &client, &challenge, &format!("&max_age={seconds}"));
    let older = UPSTREAM_SESSION_AGE_SECONDS;
    let to = location(&browser.navigate(&max_age(older + 60)).await);
    assert!(param(&to, "code").is_some(), "authenticated within max_age: {to}");
    let to = location(&browser.navigate(&max_age(older - 60)).await);
    assert!(to.starts_with(w.issuer.issuer()), "authenticated too long ago, though signed in just now: {to}");
    // prompt=login sends the user upstream again, and back with a code.
    let response = browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=login")).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(location(&response).starts_with(w.issuer.issuer()), "to the upstream provider: {}", location(&response));
    assert_eq!(param(&location(&response), "prompt").as_deref(), Some("login"), "which must not answer silently");
    assert_eq!(param(&location(&response), "max_age").as_deref(), Some("0"), "and must say when it signed in");
    let back = follow(&mut browser, location(&response)).await;
    assert!(param(&back, "code").is_some(), "{back}");
    let to = location(&browser.navigate(&max_age(older - 60)).await);
    assert!(param(&to, "code").is_some(), "authenticated afresh: {to}");
    // A provider that answers from its old session anyway (or a browser that dropped the
    // parameters on the way): its id_token's auth_time shows it, and no one is signed in. The
    // page says so, and its retry resumes the request, still held: sent on to the app as
    // `login_required`, it would have the app ask again, and the provider answer silently again.
    w.issuer.ignore_reauthentication(true);
    let sql = w.app.db.sql().await;
    let sessions = sql.count("sessions").await;
    let held = sql.count("oauth_requests").await;
    let upstream = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=login")).await);
    let callback = location(&browser.navigate(&upstream).await);
    let refused = browser.navigate(&callback).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let page = refused.text().await.unwrap();
    assert!(page.contains("Please sign in again") && page.contains("login_not_fresh"), "{page}");
    assert_eq!(sql.count("sessions").await, sessions, "no new session");
    assert_eq!(sql.count("oauth_requests").await, held + 1, "still held, for the retry");
    w.issuer.ignore_reauthentication(false);
    let held = held + 1;
    // The user cancels at the provider: the app hears `access_denied`. A sign-in refused for a
    // reason a retry may cure (here, a callback whose code is missing) offers the retry instead.
    let upstream = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=login")).await);
    let back_to = param(&upstream, "redirect_uri").unwrap();
    let upstream_state = param(&upstream, "state").unwrap();
    let cancelled = url::Url::parse_with_params(
        &back_to,
        [("state", upstream_state.as_str()), ("error", "access_denied"), ("iss", w.issuer.issuer())],
    )
    .unwrap();
    let told = location(&browser.navigate(cancelled.as_str()).await);
    assert!(told.starts_with(REDIRECT), "{told}");
    assert_eq!(param(&told, "error").as_deref(), Some("access_denied"), "{told}");
    assert_eq!(param(&told, "state").as_deref(), Some("st-1"));
    assert_eq!(sql.count("oauth_requests").await, held, "the request is used up");
    // Another of the provider's errors may be cured by a retry or by the operator: the page.
    let upstream = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=login")).await);
    let failed = url::Url::parse_with_params(
        &param(&upstream, "redirect_uri").unwrap(),
        [
            ("state", param(&upstream, "state").unwrap().as_str()),
            ("error", "temporarily_unavailable"),
            ("iss", w.issuer.issuer()),
        ],
    )
    .unwrap();
    let page = browser.navigate(failed.as_str()).await;
    assert_eq!(page.status(), StatusCode::BAD_GATEWAY, "the provider's outage");
    assert!(page.text().await.unwrap().contains("provider_unavailable"));
    assert_eq!(sql.count("oauth_requests").await, held + 1, "still held");
    let held = held + 1;
    let upstream = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=login")).await);
    let no_code = url::Url::parse_with_params(
        &param(&upstream, "redirect_uri").unwrap(),
        [("state", param(&upstream, "state").unwrap().as_str()), ("iss", w.issuer.issuer())],
    )
    .unwrap();
    let page = browser.navigate(no_code.as_str()).await;
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.text().await.unwrap().contains("invalid_code"));
    assert_eq!(sql.count("oauth_requests").await, held + 1, "still held, for the retry the page offers");
    // max_age=0 forces a sign-in too; with prompt=none that is login_required.
    let to = location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&max_age=0&prompt=none")).await);
    assert_eq!(param(&to, "error").as_deref(), Some("login_required"));
    // A fresh browser with prompt=none: login_required, nothing held.
    let to = location(&Browser::new().navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=none")).await);
    assert_eq!(param(&to, "error").as_deref(), Some("login_required"));
}

/// `prompt=select_account` (OpenID Connect Core 3.1.2.1) shows a signed-in browser a choice:
/// go on as who is signed in (a code for them), or sign in with another account — the upstream
/// provider then asked for a fresh login, so that its own session does not pick the account.
async fn select_account_lets_a_signed_in_user_go_on_or_use_another_account(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new();
    w.issuer.set_next_user(StubUser::new("choosing-ada", "ada@example.com"));
    let first = code_for(&w, &mut browser, &client, &challenge).await;
    let sub = |tokens: &Value| jwt_parts(tokens["id_token"].as_str().unwrap()).1["sub"].clone();
    let ada = sub(&body(exchange(&w.app, creds, &first, &verifier).await, 200).await);
    let choose = authorize_url(&w.app, &client, &challenge, "&prompt=select_account");
    let page = browser.navigate(&choose).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("Choose an account") && page.contains("Continue as"), "{page}");
    let links = hrefs(&page);
    let go_on = links.iter().find(|h| h.starts_with("/oauth/authorize?")).expect("a link back to the request");
    let code = code_from(&w, &mut browser, w.app.url(go_on)).await;
    assert_eq!(sub(&body(exchange(&w.app, creds, &code, &verifier).await, 200).await), ada, "went on as Ada");

    let page = browser.navigate(&choose).await.text().await.unwrap();
    let another = hrefs(&page).into_iter().find(|h| h.starts_with("/auth/login?")).expect("a link to sign in anew");
    w.issuer.set_next_user(StubUser::new("choosing-bob", "bob@example.com"));
    let started = browser.request_from("same-origin", Method::GET, &w.app.url(&another)).await;
    let upstream = location(&started);
    assert!(upstream.starts_with(w.issuer.issuer()), "{upstream}");
    assert_eq!(
        param(&upstream, "prompt").as_deref(),
        Some("login"),
        "the provider's session must not choose: {upstream}"
    );
    let code = code_from(&w, &mut browser, upstream).await;
    let bob = sub(&body(exchange(&w.app, creds, &code, &verifier).await, 200).await);
    assert_ne!(bob, ada, "signed in with the other account");
    // With an id_token_hint of Ada's: choosing Bob's account answers it (the app compares `sub`),
    // with no second sign-in.
    let ada_hint = {
        let mut other = Browser::new();
        w.issuer.set_next_user(StubUser::new("choosing-ada", "ada@example.com"));
        let code = code_for(&w, &mut other, &client, &challenge).await;
        body(exchange(&w.app, creds, &code, &verifier).await, 200).await["id_token"].as_str().unwrap().to_owned()
    };
    let mut ada_browser = Browser::new();
    w.issuer.set_next_user(StubUser::new("choosing-ada", "ada@example.com"));
    code_for(&w, &mut ada_browser, &client, &challenge).await;
    let hinted = format!("&prompt=select_account&id_token_hint={ada_hint}");
    let page = ada_browser.navigate(&authorize_url(&w.app, &client, &challenge, &hinted)).await.text().await.unwrap();
    let another = hrefs(&page).into_iter().find(|h| h.starts_with("/auth/login?")).expect("a link to sign in anew");
    w.issuer.set_next_user(StubUser::new("choosing-bob", "bob@example.com"));
    let started = ada_browser.request_from("same-origin", Method::GET, &w.app.url(&another)).await;
    let code = code_from(&w, &mut ada_browser, location(&started)).await;
    assert_eq!(sub(&body(exchange(&w.app, creds, &code, &verifier).await, 200).await), bob);
    // Without a session, signing in is the choice: the provider is not asked for a fresh login.
    let mut fresh = Browser::new();
    let upstream = location(&fresh.navigate(&choose).await);
    assert!(upstream.starts_with(w.issuer.issuer()), "{upstream}");
    assert_eq!(param(&upstream, "prompt"), None, "{upstream}");
    // prompt=none cannot be combined with it.
    let to =
        location(&browser.navigate(&authorize_url(&w.app, &client, &challenge, "&prompt=none%20select_account")).await);
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"));
}

/// `prompt=login` (or `max_age=0`) from another site would end a signed-in browser's session,
/// and every app grant bound to it, with no click — a plain OAuth provider answers a fresh login
/// silently. The browser is asked first; its own click on that page signs in afresh.
async fn another_site_cannot_force_a_signed_in_browser_to_sign_in_again(backend: Backend) {
    let w = op_world(backend).await;
    let (client, _) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    code_for(&w, &mut browser, &client, &challenge).await;
    let sessions = w.app.db.sql().await.count("sessions").await;
    for (forcing, from) in [("&prompt=login", "cross-site"), ("&max_age=0", "cross-site"), ("&prompt=login", "none")] {
        let case = format!("{forcing} from {from}");
        let url = authorize_url(&w.app, &client, &challenge, forcing);
        let asked = browser.request_from(from, Method::GET, &url).await;
        assert_eq!(asked.status(), StatusCode::OK, "{case}");
        let page = asked.text().await.unwrap();
        assert!(page.contains("You are already signed in"), "{case}: {page}");
        assert_eq!(w.app.db.sql().await.count("sessions").await, sessions, "{case}: the session lives");
        // The page's own link, followed from this origin, goes upstream for a fresh login.
        let href = hrefs(&page).into_iter().find(|h| h.starts_with("/auth/login")).unwrap();
        let started = browser.request_from("same-origin", Method::GET, &w.app.url(&href)).await;
        assert_eq!(started.status(), StatusCode::SEE_OTHER);
        let upstream = location(&started);
        assert!(upstream.starts_with(w.issuer.issuer()), "{case}: {upstream}");
        assert_eq!(param(&upstream, "prompt").as_deref(), Some("login"), "{case}: {upstream}");
        // Staying signed in keeps the session, and the app is told so rather than left waiting;
        // the page says so.
        assert!(page.contains("action=\"/auth/continue\""), "{case}: {page}");
        assert!(page.contains("the app is then told that you declined"), "{case}: {page}");
        assert!(page.contains("Stay signed in as") && !page.contains("Continue as"), "{case}: {page}");
        let field = |name: &str| {
            let value = page.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap();
            value.replace("&amp;", "&").replace("&#38;", "&").replace("&#x2f;", "/").replace("&#47;", "/")
        };
        let (csrf, return_to) = (field("csrf"), field("return_to"));
        let form = [("csrf", csrf.as_str()), ("return_to", return_to.as_str())];
        let continue_url = w.app.url("/auth/continue");
        // A cookie made up with the token it would have is no session: nothing is answered.
        let made_up = "a-made-up-session";
        let plain = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let forged = plain.post(&continue_url).header("cookie", format!("tessera_session={made_up}"));
        let forged = forged.header("sec-fetch-site", "same-origin").header("accept", "text/html");
        let token = tessera::http::csrf::token(made_up);
        let forged = forged.form(&[("csrf", token.as_str()), ("return_to", return_to.as_str())]).send().await.unwrap();
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED, "{case}");
        // Eight clicks at once (a double click, tabs): the request is used up once, and every
        // click is sent to the app with that one answer — the browser follows whichever answer
        // it kept, and a dropped first one must not leave the app waiting.
        let held = w.app.db.sql().await.count("oauth_requests").await;
        let clicks: Vec<_> = (0..8)
            .map(|_| browser.prepared(Method::POST, &continue_url).header("accept", "text/html").form(&form))
            .collect();
        let answers = send_at_once(&clicks).await;
        assert!(answers.iter().all(|a| a.status() == StatusCode::SEE_OTHER), "{case}");
        let places: Vec<String> = answers.iter().map(location).collect();
        assert!(places.iter().all(|to| to == &places[0] && to.starts_with(REDIRECT)), "{case}: {places:?}");
        assert_eq!(param(&places[0], "error").as_deref(), Some("access_denied"), "{case}: {places:?}");
        assert_eq!(w.app.db.sql().await.count("oauth_requests").await, held - 1, "{case}: used up once");
        assert_eq!(w.app.db.sql().await.count("sessions").await, sessions, "{case}: the session lives");
        // The same form sent again a moment later gets the same answer.
        assert_eq!(location(&browser.form(&continue_url, &form).await), places[0], "{case}");
        // Without the session's token, nothing is answered.
        let forged = [("csrf", "forged"), ("return_to", return_to.as_str())];
        assert_eq!(browser.form(&continue_url, &forged).await.status(), StatusCode::FORBIDDEN);
        // Without a session (ended meanwhile), the person is sent back to the app.
        let ended = Browser::new().prepared(Method::POST, &continue_url).header("accept", "text/html").form(&form);
        let ended = ended.send().await.unwrap();
        assert_eq!(ended.status(), StatusCode::UNAUTHORIZED, "{case}");
        let ended = ended.text().await.unwrap();
        assert!(ended.contains("Go back to the app you came from") && !ended.contains("href=\"/login"), "{ended}");
    }
    // "Continue as …" when the app cannot be told (the store failing): an error page, still
    // signed in, not a redirect as if the app had its answer; its way on is the account, not the
    // request (opened from this page, it would sign in anew, as the person declined).
    let url = authorize_url(&w.app, &client, &challenge, "&prompt=login");
    let page = browser.request_from("cross-site", Method::GET, &url).await.text().await.unwrap();
    let field = |name: &str| {
        let value = page.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap();
        value.replace("&amp;", "&").replace("&#38;", "&").replace("&#x2f;", "/").replace("&#47;", "/")
    };
    let (csrf, return_to) = (field("csrf"), field("return_to"));
    let sql = w.app.db.sql().await;
    sql.inject("DELETE", "oauth_requests", None, "SELECT RAISE(ABORT, 'injected');", "RAISE EXCEPTION 'injected';")
        .await;
    let kept = browser.prepared(Method::POST, &w.app.url("/auth/continue")).header("accept", "text/html");
    let kept = kept.form(&[("csrf", csrf.as_str()), ("return_to", return_to.as_str())]).send().await.unwrap();
    assert!(kept.status().is_server_error(), "{}", kept.status());
    let kept = kept.text().await.unwrap();
    assert!(kept.contains("href=\"/account\""), "{kept}");
    assert!(!kept.contains("href=\"/oauth/authorize") && !kept.contains("href=\"/login"), "{kept}");
    sql.remove_injected("oauth_requests").await;
    // From this origin (the chooser, an app on it) the sign-in goes ahead as asked.
    let url = authorize_url(&w.app, &client, &challenge, "&prompt=login");
    let ahead = browser.request_from("same-origin", Method::GET, &url).await;
    assert!(location(&ahead).starts_with(w.issuer.issuer()));
}

async fn pushed_requests_are_single_use(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let uri = push_code_request(&w.app, (&client, &secret), &challenge, &[]).await;
    assert!(uri.starts_with("urn:ietf:params:oauth:request_uri:"));
    let url = w.app.url(&format!("/oauth/authorize?client_id={client}&request_uri={}", urlencode(&uri)));
    let mut browser = Browser::new();
    let back = follow(&mut browser, url.clone()).await;
    assert!(param(&back, "code").is_some());
    let replay = browser.navigate(&url).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST, "a request_uri is used once");
    // A bad pushed request is a JSON error, not a redirect.
    let bad = w.app.client.post(w.app.url("/oauth/par")).basic_auth(&client, Some(&secret));
    let bad = bad.form(&[("response_type", "code"), ("redirect_uri", "https://evil.example/cb")]).send().await.unwrap();
    assert_eq!(oauth_error(bad, 400).await, "invalid_request");
    // Each parameter may have 2048 characters, but not all of them at once: a request is stored
    // as it came.
    let long = "n".repeat(2040);
    let fits = [("nonce", long.as_str()), ("login_hint", long.as_str())];
    push_code_request(&w.app, (&client, &secret), &challenge, &fits).await;
    let (prompt, resource) = ("login ".repeat(340), format!("https://api.example.com/{}", "r".repeat(2000)));
    let over = [fits[0], fits[1], ("prompt", prompt.trim_end()), ("resource", resource.as_str())];
    let mut form = vec![("response_type", "code"), ("redirect_uri", REDIRECT), ("code_challenge", challenge.as_str())];
    form.extend_from_slice(&over);
    let pushed = w.app.client.post(w.app.url("/oauth/par")).basic_auth(&client, Some(&secret)).form(&form);
    let refused = pushed.send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"], "invalid_request");
    assert!(refused["error_description"].as_str().unwrap().contains("8192 characters together"), "{refused}");
}

/// A pushed request that cannot be checked (the client's row unreadable on an instance that has
/// not cached it) stays held: the browser's retry, once the store answers, goes on with it
/// rather than finding it used up and the app never told.
async fn a_pushed_request_that_cannot_be_checked_stays_for_the_retry(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let uri = push_code_request(&w.app, (&client, &secret), &challenge, &[]).await;
    let cold = w.another().await;
    // Serving (its start-up, which writes the configuration's clients, over).
    assert!(cold.client.get(cold.url("/healthz")).send().await.unwrap().status().is_success());
    let url = cold.url(&format!("/oauth/authorize?client_id={client}&request_uri={}", urlencode(&uri)));
    let sql = w.app.db.sql().await;
    sql.exec("ALTER TABLE clients RENAME TO clients_away").await.unwrap();
    let failed = Browser::new().navigate(&url).await;
    sql.exec("ALTER TABLE clients_away RENAME TO clients").await.unwrap();
    assert!(failed.status().is_server_error(), "{}", failed.status());
    assert_eq!(sql.count("oauth_requests").await, 1, "still held");
    let back = follow(&mut Browser::new(), url).await;
    assert!(param(&back, "code").is_some(), "{back}");
    assert_eq!(sql.count("oauth_requests").await, 0, "used up once it went on");
    cold.stop().await;
}

/// The consent page a sign-in comes back to, and the account chooser of a pushed request, are
/// shown at a URL naming a request they used up: a reload shows the same page again (RFC 9126
/// section 4 allows for reloads), to that browser only, and no more once it is answered.
async fn a_reloaded_page_of_a_used_request_shows_it_again_in_that_browser_only(backend: Backend) {
    let w = op_world(backend).await;
    let sql = w.app.db.sql().await;
    let third_party =
        json!({"name": "Partner", "kind": "confidential", "redirect_uris": [REDIRECT], "first_party": false});
    let (client, _) = register(&w.app, third_party).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    let page = first_page(&w.app, &mut browser, authorize_url(&w.app, &client, &challenge, "")).await;
    let at = page.url().to_string();
    assert!(at.contains("request_uri="), "the page of a held request: {at}");
    let request_id = request_id_of(&html_of(page).await);
    for _ in 0..2 {
        assert_eq!(request_id_of(&html_of(browser.navigate(&at).await).await), request_id, "the same consent");
    }
    assert_eq!(sql.count("oauth_requests").await, 1, "one consent request, however often shown");
    let mut stranger = Browser::new();
    stranger.sign_in(&w.app, "").await;
    assert_eq!(stranger.navigate(&at).await.status(), StatusCode::BAD_REQUEST, "another browser's");
    assert_eq!(Browser::new().navigate(&at).await.status(), StatusCode::BAD_REQUEST, "nobody's");
    let form = [("request_id", request_id.as_str()), ("decision", "approve")];
    let to = location(&browser_post(&mut browser, &w.app.url("/oauth/consent"), &form).await);
    assert!(param(&to, "code").is_some(), "{to}");
    assert_eq!(browser.navigate(&at).await.status(), StatusCode::BAD_REQUEST, "answered");
    assert_eq!(sql.count("oauth_codes").await, 1);

    // A pushed request asking the user to choose an account.
    let (client, secret) = web_app(&w.app).await;
    // The URL of a pushed request with `prompt`.
    let pushed = async |prompt: &str| {
        let uri = push_code_request(&w.app, (&client, &secret), &challenge, &[("prompt", prompt)]).await;
        w.app.url(&format!("/oauth/authorize?client_id={client}&request_uri={}", urlencode(&uri)))
    };
    let at = pushed("select_account").await;
    let go_on = |page: &str| hrefs(page).into_iter().find(|href| href.starts_with("/oauth/authorize?")).unwrap();
    let first = go_on(&html_of(browser.navigate(&at).await).await);
    assert_eq!(go_on(&html_of(browser.navigate(&at).await).await), first, "the same choice");
    assert_eq!(stranger.navigate(&at).await.status(), StatusCode::BAD_REQUEST);
    let back = follow(&mut browser, w.app.url(&first)).await;
    assert!(param(&back, "code").is_some(), "{back}");
    assert_eq!(browser.navigate(&at).await.status(), StatusCode::BAD_REQUEST, "chosen");

    // A pushed request for a fresh login, sent by another site to a browser signed in here: the
    // page asking whether to sign in again comes back too, going on to the same held request.
    let at = pushed("login").await;
    let asked = |page: &str| {
        assert!(page.contains("You are already signed in"), "{page}");
        page.split("name=\"return_to\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    let first = asked(&html_of(browser.request_from("cross-site", Method::GET, &at).await).await);
    let again = asked(&html_of(browser.request_from("cross-site", Method::GET, &at).await).await);
    assert_eq!(again, first, "the same held request");
    assert_eq!(stranger.request_from("cross-site", Method::GET, &at).await.status(), StatusCode::BAD_REQUEST);
}

/// Pushes a code request of `client` (RFC 9126) for `REDIRECT`, state `st-1`; returns its
/// `request_uri`.
async fn push_code_request(app: &TestApp, client: (&str, &str), challenge: &str, extra: &[(&str, &str)]) -> String {
    let mut form = vec![
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid"),
        ("state", "st-1"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    form.extend_from_slice(extra);
    let pushed = app.client.post(app.url("/oauth/par")).basic_auth(client.0, Some(client.1)).form(&form);
    body(pushed.send().await.unwrap(), 201).await["request_uri"].as_str().unwrap().to_owned()
}

/// One pushed request's URI sent by a signed-in browser to two instances at once: it is used
/// once, so one code is issued and every other request is refused without a redirect.
async fn a_pushed_request_used_at_once_on_two_instances_issues_one_code(backend: Backend) {
    let w = op_world(backend).await;
    let other = w.another().await;
    let (client, secret) = web_app(&w.app).await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let uri = push_code_request(&w.app, (&client, &secret), &challenge, &[]).await;
    let path = format!("/oauth/authorize?client_id={client}&request_uri={}", urlencode(&uri));
    let cookies: Vec<String> = browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let open =
        |app: &TestApp| http.get(app.url(&path)).header("cookie", cookies.join("; ")).header("accept", "text/html");
    let requests: Vec<_> = (0..16).map(|i| open(if i % 2 == 0 { &w.app } else { &other })).collect();
    let (mut codes, mut refused) = (0, 0);
    for answer in send_at_once(&requests).await {
        match answer.status() {
            StatusCode::SEE_OTHER => {
                let to = location(&answer);
                assert!(to.starts_with(REDIRECT) && param(&to, "code").is_some(), "{to}");
                codes += 1;
            }
            StatusCode::BAD_REQUEST => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((codes, refused), (1, 15));
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("oauth_codes").await, 1);
    assert_eq!(sql.count("oauth_requests").await, 0, "the pushed request is used up");
    other.stop().await;
}

async fn forward_auth_answers_for_sessions_and_tokens(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    w.issuer.set_next_user(StubUser::new("fa-sub", "fa@example.com"));
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let tokens = body(exchange(&w.app, (&client, &secret), &code, &verifier).await, 200).await;
    let user_id = w.app.db.sql().await.uuids("SELECT id FROM users").await[0].to_string();

    let by_session = browser.get(&w.app.url("/auth/verify")).await;
    assert_eq!(by_session.status(), 200);
    assert_eq!(by_session.headers()["x-tessera-user-id"], user_id.as_str());
    assert_eq!(by_session.headers()["x-tessera-email"], "fa@example.com");
    // The local provider is not trusted to verify emails (the default): an app is told so.
    assert_eq!(by_session.headers()["x-tessera-email-verified"], "false");
    // A request carrying an identity header of its own — under its name or spelt with
    // underscores, which a proxy does not replace and some app servers read as the same — is
    // refused, signed in or not: the app behind might take the copy for the user.
    for (name, value) in [("X_Tessera_Teams", "admins"), ("x_tessera_user_id", "x"), ("X-Tessera-Email", "a@b.c")] {
        let forged = browser.prepared(Method::GET, &w.app.url("/auth/verify")).header(name, value);
        let forged = forged.send().await.unwrap();
        assert_eq!(forged.status(), 401, "{name}");
        assert!(forged.headers()["www-authenticate"].to_str().unwrap().contains("invalid_request"), "{name}");
        assert!(
            forged.headers().get("x-tessera-user-id").is_none() && forged.headers().get("x-tessera-sign-in").is_none()
        );
    }
    assert_eq!(browser.get(&w.app.url("/auth/verify")).await.status(), 200, "the session itself is untouched");
    // An empty copy forges nothing (a proxy that blanks them rather than removing them).
    let blanked = browser.prepared(Method::GET, &w.app.url("/auth/verify")).header("X-Tessera-Teams", "");
    assert_eq!(blanked.send().await.unwrap().status(), 200);
    // A token counts for the app the proxy names (its aud), and for no other.
    let access = tokens["access_token"].as_str().unwrap();
    let for_app = w.app.url(&format!("/auth/verify?audience={client}"));
    let by_token = w.app.client.get(&for_app).bearer_auth(access).send().await.unwrap();
    assert_eq!(by_token.status(), 200);
    assert_eq!(by_token.headers()["x-tessera-user-id"], user_id.as_str());
    assert_eq!(by_token.headers()["x-tessera-teams"], by_session.headers()["x-tessera-teams"]);
    assert_eq!(by_token.headers()["x-tessera-email"], "fa@example.com");
    assert_eq!(by_token.headers()["x-tessera-email-verified"], "false");
    let verify = |path: &str| w.app.client.get(w.app.url(path));
    for response in [
        verify("/auth/verify").send().await.unwrap(),
        verify("/auth/verify").bearer_auth(access).send().await.unwrap(),
        verify("/auth/verify?audience=another-app").bearer_auth(access).send().await.unwrap(),
        verify(&format!("/auth/verify?audience={client}&audience=x")).bearer_auth(access).send().await.unwrap(),
        verify(&format!("/auth/verify?audience={client}")).bearer_auth("garbage").send().await.unwrap(),
        verify("/auth/verify").header("cookie", "tessera_session=nope").send().await.unwrap(),
    ] {
        assert_eq!(response.status(), 401);
        assert!(response.headers().get("x-tessera-user-id").is_none());
    }
    // The three headers are always set, empty when unknown, so a client's own copies cannot
    // pass a proxy that copies the answer's headers.
    let mut anonymous = Browser::new();
    w.issuer.set_next_user(StubUser { email: None, ..StubUser::new("no-email", "unused@example.com") });
    follow(&mut anonymous, authorize_url(&w.app, &client, &challenge, "")).await;
    let answer = anonymous.get(&w.app.url("/auth/verify")).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-tessera-email"], "");
    assert_eq!(answer.headers()["x-tessera-email-verified"], "");
}

/// A form posted to the authorization endpoint from another site carries no session cookie
/// (`SameSite=Lax`): rather than a sign-in (which would end the browser's session on its way
/// back), it goes on as a GET of the held request, which carries the cookie and finds the session.
async fn an_authorization_request_posted_from_another_site_does_not_replace_the_session(backend: Backend) {
    let w = op_world(backend).await;
    let (client, _) = web_app(&w.app).await;
    let mut browser = Browser::new();
    let (_, challenge) = pkce();
    code_for(&w, &mut browser, &client, &challenge).await;
    let session = browser.cookies["tessera_session"].clone();
    // Back to this server, not to the provider.
    let held = cross_site_post(&authorize_url(&w.app, &client, &challenge, "")).await;
    // Followed with the cookie: a code from the session as it is.
    let back = follow(&mut browser, w.app.url(&held)).await;
    assert!(param(&back, "code").is_some(), "{back}");
    assert_eq!(browser.cookies["tessera_session"], session, "the session stands");
    assert_eq!(w.app.db.sql().await.count("sessions").await, 1);
    // `prompt=none` too: decided on the GET, which finds the session, not `login_required`.
    let held = cross_site_post(&authorize_url(&w.app, &client, &challenge, "&prompt=none")).await;
    let to = location(&browser.navigate(&w.app.url(&held)).await);
    assert!(param(&to, "code").is_some(), "{to}");
    // A request that cannot be held (the store failing) once it was checked: the app is told
    // at its redirect URI, with its state, rather than waiting on an error page in a frame.
    let sql = w.app.db.sql().await;
    sql.inject("INSERT", "oauth_requests", None, "SELECT RAISE(ABORT, 'injected');", "RAISE EXCEPTION 'injected';")
        .await;
    let url = authorize_url(&w.app, &client, &challenge, "&prompt=none");
    let (path, query) = url.split_once('?').unwrap();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let posted = plain.post(path).header("sec-fetch-site", "cross-site").header("accept", "text/html").form(&form);
    let to = location(&posted.send().await.unwrap());
    assert!(to.starts_with(REDIRECT), "{to}");
    assert_eq!((param(&to, "error").as_deref(), param(&to, "state").as_deref()), (Some("server_error"), Some("st-1")));
    sql.remove_injected("oauth_requests").await;
}

/// Posts the authorization request `url` as a form from another site (no cookie, marked
/// cross-site); returns where it sends the browser (a path of this server's).
async fn cross_site_post(url: &str) -> String {
    let (path, query) = url.split_once('?').unwrap();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let posted = plain.post(path).header("sec-fetch-site", "cross-site").form(&form).send().await.unwrap();
    assert_eq!(posted.status(), StatusCode::SEE_OTHER);
    let held = location(&posted);
    assert!(held.starts_with("/oauth/authorize?"), "back to this server: {held}");
    held
}

async fn logout_ends_the_session_and_its_grants(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let tokens = body(exchange(&w.app, creds, &code, &verifier).await, 200).await;
    let id_token = tokens["id_token"].as_str().unwrap();
    // An unregistered post-logout URI is refused to a client; a browser is not sent there, and
    // its user is asked (even with their own id token: a request wrong in part is no proof that
    // the app sent it), and nothing is ended.
    let bad = format!(
        "/oauth/logout?id_token_hint={id_token}&post_logout_redirect_uri={}",
        urlencode("https://evil.example/")
    );
    let refused = w.app.client.get(w.app.url(&bad)).send().await.unwrap();
    assert_eq!(oauth_error(refused, 400).await, "invalid_request");
    let asked = browser.navigate(&w.app.url(&bad)).await;
    assert_eq!(asked.status(), StatusCode::OK);
    assert!(asked.text().await.unwrap().contains("method=\"post\""));
    // So are a hint Tessera did not issue, a client_id other than the hint's audience, and a
    // request that cannot be read (a parameter twice): asked to sign out, not told of a sign-in.
    let foreign = w.issuer.sign("rsa-1", &w.issuer.claims("s", &client));
    for query in [
        format!("id_token_hint={foreign}"),
        format!("id_token_hint={id_token}&client_id=someone-else"),
        format!("id_token_hint={id_token}&state=a&state=b"),
    ] {
        let url = w.app.url(&format!("/oauth/logout?{query}"));
        assert_eq!(oauth_error(w.app.client.get(&url).send().await.unwrap(), 400).await, "invalid_request");
        let asked = browser.navigate(&url).await;
        assert_eq!(asked.status(), StatusCode::OK, "{query}");
        assert!(asked.text().await.unwrap().contains("method=\"post\""), "{query}");
    }
    assert_eq!(introspect(&w.app, creds, tokens["access_token"].as_str().unwrap()).await["active"], true);
    // Without a hint of this user, a GET only asks; another site's link ends nothing.
    let asked = browser.navigate(&w.app.url("/oauth/logout")).await;
    assert_eq!(asked.status(), StatusCode::OK);
    assert!(asked.text().await.unwrap().contains("method=\"post\""));
    assert_eq!(introspect(&w.app, creds, tokens["access_token"].as_str().unwrap()).await["active"], true);
    // An app's form on another site posts without the (SameSite) cookie: a page posts the same
    // parameters from this origin, which carries it; no cookie is cleared on the way, and the
    // id token stays out of every URL.
    let plain = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // A state too long to go back in a URL is refused, as an authorization request's is.
    let long = format!("/oauth/logout?post_logout_redirect_uri={POST_LOGOUT}&state={}", "s".repeat(2049));
    let refused = plain.get(w.app.url(&long)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused.text().await.unwrap().contains("state is longer than 2048 characters"));
    let fields = [("id_token_hint", id_token), ("post_logout_redirect_uri", POST_LOGOUT), ("state", "s p")];
    let cross = plain.post(w.app.url("/oauth/logout")).header("sec-fetch-site", "cross-site");
    let cross = cross.header("accept", "text/html").form(&fields);
    let cross = cross.send().await.unwrap();
    assert_eq!(cross.status(), StatusCode::OK);
    assert!(cross.headers().get("location").is_none());
    assert!(cross.headers().get_all("set-cookie").iter().all(|c| !c.to_str().unwrap().starts_with("tessera_session=")));
    // Its form carries no CSRF token, so it must name this origin for a browser judged by its
    // Origin header, which `no-referrer` would make `null`: this page alone is `same-origin`.
    assert_eq!(cross.headers()["referrer-policy"], "same-origin");
    let page = cross.text().await.unwrap();
    assert!(page.contains(r#"<meta name="referrer" content="same-origin">"#), "{page}");
    assert!(page.contains(r#"<form method="post" action="/oauth/logout">"#), "{page}");
    for (name, value) in [("id_token_hint", id_token), ("state", "s p"), ("resumed", "1")] {
        assert!(page.contains(&format!(r#"name="{name}" value="{value}""#)), "{name}: {page}");
    }
    assert_eq!(introspect(&w.app, creds, tokens["access_token"].as_str().unwrap()).await["active"], true);
    // The mark is the page's own: another site's form that carries it gets the page too.
    let marked = [fields.as_slice(), &[("resumed", "1")]].concat();
    let forged = plain.post(w.app.url("/oauth/logout")).header("sec-fetch-site", "cross-site");
    let forged = forged.header("accept", "text/html").form(&marked);
    let forged = forged.send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::OK, "not answered as a signed-out browser");
    assert!(forged.headers().get("location").is_none());
    // Its post from a browser without a session goes on (not the same page again): without a
    // hint there is nothing to end, and it returns to the app (with one, see
    // `an_apps_server_ends_the_session_its_id_token_names`).
    let mut elsewhere = Browser::new();
    let resumed =
        [("client_id", client.as_str()), ("post_logout_redirect_uri", POST_LOGOUT), ("state", "s p"), ("resumed", "1")];
    let gone_on = elsewhere.form(&w.app.url("/oauth/logout"), &resumed).await;
    assert_eq!(location(&gone_on), format!("{POST_LOGOUT}?state=s+p"));
    assert_eq!(introspect(&w.app, creds, tokens["access_token"].as_str().unwrap()).await["active"], true);
    // An id token of the same user from an earlier session (its auth_time, a second or more
    // before this one began) only asks too: it is no proof that this browser's app asked.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut later = Browser::new();
    let (later_verifier, later_challenge) = pkce();
    let later_code = code_for(&w, &mut later, &client, &later_challenge).await;
    let later_tokens = body(exchange(&w.app, creds, &later_code, &later_verifier).await, 200).await;
    assert_eq!(jwt_parts(later_tokens["id_token"].as_str().unwrap()).1["sub"], jwt_parts(id_token).1["sub"]);
    let earlier = format!("/oauth/logout?id_token_hint={id_token}");
    let asked = later.navigate(&w.app.url(&earlier)).await;
    assert_eq!(asked.status(), StatusCode::OK);
    assert!(asked.text().await.unwrap().contains("method=\"post\""));
    assert!(later.cookies.contains_key("tessera_session"), "nothing ended");
    // An id token signed by a key no longer published (kept since before a rotation, while the
    // session lives on) cannot be verified: it only asks too, rather than refuse the logout.
    let unverifiable = with_unpublished_kid(id_token);
    let asked = later.navigate(&w.app.url(&format!("/oauth/logout?id_token_hint={unverifiable}"))).await;
    assert_eq!(asked.status(), StatusCode::OK);
    assert!(asked.text().await.unwrap().contains("method=\"post\""));
    assert!(later.cookies.contains_key("tessera_session"), "nothing ended");
    // With the app's post_logout_redirect_uri and no client_id (what most apps send), its
    // unverified audience says whose registered URIs to match, as a client_id would: asked, not
    // an error page that leaves the user signed in.
    let back = |uri: &str| {
        format!("/oauth/logout?id_token_hint={unverifiable}&post_logout_redirect_uri={}&state=s", urlencode(uri))
    };
    let asked = later.navigate(&w.app.url(&back(POST_LOGOUT))).await;
    assert_eq!(asked.status(), StatusCode::OK);
    assert!(asked.text().await.unwrap().contains("method=\"post\""));
    assert!(later.cookies.contains_key("tessera_session"), "nothing ended");
    // A URI the app did not register: the user confirms all the same and is signed out, on a
    // page that says why the app was not returned to — not sent there, not left signed in.
    let elsewhere = "https://elsewhere.example/bye";
    let asked = later.navigate(&w.app.url(&back(elsewhere))).await;
    assert_eq!(asked.status(), StatusCode::OK);
    let csrf = crate::pages::csrf_of(&asked.text().await.unwrap());
    let confirmed = [
        ("id_token_hint", unverifiable.as_str()),
        ("post_logout_redirect_uri", elsewhere),
        ("state", "s"),
        ("csrf", csrf.as_str()),
    ];
    let out = later.form(&w.app.url("/oauth/logout"), &confirmed).await;
    assert_eq!(out.status(), StatusCode::OK);
    assert!(out.headers().get("location").is_none());
    let page = out.text().await.unwrap();
    assert!(page.contains("You are signed out") && page.contains("is not registered"), "{page}");
    assert!(!later.cookies.contains_key("tessera_session"), "signed out");
    // With a client_id beside it that is not its (unverified) audience, the two must agree
    // (RP-Initiated Logout 1.0 section 2), as for a verified hint: not sent to that other app,
    // although the URI is registered for it.
    let (other, _) = web_app(&w.app).await;
    let mismatched = format!("{}&client_id={other}", back(POST_LOGOUT));
    let refused = later.navigate(&w.app.url(&mismatched)).await;
    assert!(refused.headers().get("location").is_none(), "not sent back: {:?}", refused.headers());
    assert!(refused.text().await.unwrap().contains("differs from the id token"));
    // The page's post, from the signed-in browser: its own id token ends the session at once.
    let fields = [("id_token_hint", id_token), ("post_logout_redirect_uri", POST_LOGOUT), ("state", "bye")];
    let resumed = [fields.as_slice(), &[("resumed", "1")]].concat();
    // Sent several times at once (a double click): one sign-out, each back at the app.
    let sql = w.app.db.sql().await;
    let revoked = "outbox_events WHERE topic = 'session.revoked'";
    let before = sql.count(revoked).await;
    let logouts: Vec<_> = (0..8)
        .map(|_| {
            browser.prepared(Method::POST, &w.app.url("/oauth/logout")).header("accept", "text/html").form(&resumed)
        })
        .collect();
    for response in send_at_once(&logouts).await {
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&response), format!("{POST_LOGOUT}?state=bye"));
    }
    assert_eq!(sql.count(revoked).await - before, 1, "one session ended once");
    let response = browser.form(&w.app.url("/oauth/logout"), &resumed).await;
    assert_eq!(location(&response), format!("{POST_LOGOUT}?state=bye"));
    assert!(!browser.cookies.contains_key("tessera_session"));
    assert_eq!(introspect(&w.app, creds, tokens["access_token"].as_str().unwrap()).await, json!({"active": false}));
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let refused = token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    assert_eq!(oauth_error(refused, 400).await, "invalid_grant");
}

/// An app's server that calls the logout endpoint with the id token (oauth2-proxy's
/// `--backend-logout-url`, written for Keycloak) sends no session cookie: the session the id
/// token was issued in ends — that one only, once however many calls come at once.
async fn an_apps_server_ends_the_session_its_id_token_names(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    let tokens_of = async |browser: &mut Browser| {
        let (verifier, challenge) = pkce();
        let code = code_for(&w, browser, &client, &challenge).await;
        body(exchange(&w.app, creds, &code, &verifier).await, 200).await
    };
    let mut first = Browser::new();
    let first_tokens = tokens_of(&mut first).await;
    // The same user's session in another browser, begun a second or more later.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut second = Browser::new();
    let second_tokens = tokens_of(&mut second).await;
    let id_token = |tokens: &Value| tokens["id_token"].as_str().unwrap().to_owned();
    let access = |tokens: &Value| tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jwt_parts(&id_token(&first_tokens)).1["sub"], jwt_parts(&id_token(&second_tokens)).1["sub"]);
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("sessions").await, 2);
    let revoked = "outbox_events WHERE topic = 'session.revoked'";
    // A hint Tessera cannot verify (its key no longer published) names nobody: nothing ends.
    let url = |hint: &str| w.app.url(&format!("/oauth/logout?id_token_hint={hint}"));
    let unverifiable = w.app.client.get(url(&with_unpublished_kid(&id_token(&first_tokens)))).send().await.unwrap();
    assert_eq!(unverifiable.status(), StatusCode::OK);
    assert_eq!(sql.count("sessions").await, 2);
    // The first browser's id token, sent by a server eight times at once: one session ends.
    let calls: Vec<_> = (0..8).map(|_| w.app.client.get(url(&id_token(&first_tokens)))).collect();
    for response in send_at_once(&calls).await {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get_all("set-cookie").iter().next().is_none(), "no cookie came, none cleared");
    }
    assert_eq!(sql.count(revoked).await, 1, "one session ended once");
    assert_eq!(sql.count("sessions").await, 1);
    assert_eq!(introspect(&w.app, creds, &access(&first_tokens)).await, json!({"active": false}));
    assert_eq!(first.me(&w.app).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(introspect(&w.app, creds, &access(&second_tokens)).await["active"], true);
    assert_eq!(second.me(&w.app).await.status(), StatusCode::OK);
    // A server's post (no page wanted) goes on too, back to the app: the second session ends.
    let fields = [
        ("id_token_hint", id_token(&second_tokens)),
        ("post_logout_redirect_uri", POST_LOGOUT.to_owned()),
        ("state", "bye".to_owned()),
    ];
    let plain = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let posted = plain.post(w.app.url("/oauth/logout")).form(&fields).send().await.unwrap();
    assert_eq!(posted.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&posted), format!("{POST_LOGOUT}?state=bye"));
    assert_eq!(sql.count("sessions").await, 0);
    assert_eq!(second.me(&w.app).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sql.count(revoked).await, 2);
    // The id token of a client deleted since (after a compromise, say) ends nothing.
    let (gone, gone_secret) = web_app(&w.app).await;
    let mut third = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut third, &gone, &challenge).await;
    let gone_tokens = body(exchange(&w.app, (&gone, &gone_secret), &code, &verifier).await, 200).await;
    let deleted = w.app.admin(Method::DELETE, &format!("/admin/clients/{gone}")).send().await.unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let call = w.app.client.get(url(&id_token(&gone_tokens))).send().await.unwrap();
    assert_eq!(call.status(), StatusCode::OK);
    assert_eq!(sql.count("sessions").await, 1);
    assert_eq!(third.me(&w.app).await.status(), StatusCode::OK);
}

/// A grant bound to a browser session ends when the session goes idle, as the session itself
/// does — not later, when the sweep removes the row: introspection, userinfo and refresh stop at
/// once. A session in use is never idle (its use is written well within the timeout).
async fn a_grant_ends_when_its_session_goes_idle_not_at_the_sweep(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret, tokens) = first_tokens(&w).await;
    let creds = (client.as_str(), secret.as_str());
    let (access, refresh) = (tokens["access_token"].as_str().unwrap(), tokens["refresh_token"].as_str().unwrap());
    assert_eq!(introspect(&w.app, creds, access).await["active"], true);
    let sql = w.app.db.sql().await;
    // Unused for a little over the default idle timeout (a day); its row is still there.
    let idle = match backend {
        Backend::Sqlite => "(CAST(strftime('%s', 'now') AS INTEGER) - 86500) * 1000000",
        Backend::Postgres => "now() - interval '86500 seconds'",
    };
    sql.exec(&format!("UPDATE sessions SET last_seen_at = {idle}")).await.unwrap();
    assert_eq!(sql.count("sessions").await, 1);
    assert_eq!(introspect(&w.app, creds, access).await, json!({"active": false}));
    let userinfo = w.app.client.get(w.app.url("/oauth/userinfo")).bearer_auth(access).send().await.unwrap();
    assert_eq!(oauth_error(userinfo, 401).await, "invalid_token");
    let refused = token_request(&w.app, creds, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    assert_eq!(oauth_error(refused, 400).await, "invalid_grant");
}

/// An app in use refreshes its tokens; its grant is bound to the browser session it came from,
/// which the person, working in the app, may not visit for days: a refresh is a use of that
/// session, as a page of Tessera's is, so that the session (and with it the grant) does not go
/// idle under an app in use.
async fn refreshing_an_apps_tokens_keeps_its_browser_session_in_use(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret, tokens) = first_tokens(&w).await;
    let creds = (client.as_str(), secret.as_str());
    let sql = w.app.db.sql().await;
    // Last used a little under the default idle timeout (a day) ago.
    let (nearly_idle, recent) = match backend {
        Backend::Sqlite => (
            "(CAST(strftime('%s', 'now') AS INTEGER) - 86000) * 1000000",
            "last_seen_at > (CAST(strftime('%s', 'now') AS INTEGER) - 60) * 1000000",
        ),
        Backend::Postgres => ("now() - interval '86000 seconds'", "last_seen_at > now() - interval '60 seconds'"),
    };
    sql.exec(&format!("UPDATE sessions SET last_seen_at = {nearly_idle}")).await.unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
    body(token_request(&w.app, creds, &form).await, 200).await;
    let recent = format!("sessions WHERE {recent}");
    eventually("the refresh noted as a use of the session", || async { sql.count(&recent).await == 1 }).await;
}

async fn an_offline_grant_outlives_the_browser_session(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    let mut browser = Browser::new();
    let (offline, online) = offline_and_online(&w, &mut browser, creds).await;
    assert_eq!(offline["scope"], "openid offline_access");

    let id_token = online["id_token"].as_str().unwrap();
    let logout = format!("/oauth/logout?id_token_hint={id_token}&post_logout_redirect_uri={}", urlencode(POST_LOGOUT));
    assert_eq!(browser.navigate(&w.app.url(&logout)).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(introspect(&w.app, creds, online["access_token"].as_str().unwrap()).await, json!({"active": false}));
    // The offline grant goes on: its access token, and a refresh.
    let access = offline["access_token"].as_str().unwrap();
    assert_eq!(introspect(&w.app, creds, access).await["active"], true);
    let refresh = offline["refresh_token"].as_str().unwrap();
    let elsewhere =
        [("grant_type", "refresh_token"), ("refresh_token", refresh), ("resource", "https://api.example.com")];
    assert_eq!(oauth_error(token_request(&w.app, creds, &elsewhere).await, 400).await, "invalid_target");
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
    let refreshed = body(token_request(&w.app, creds, &form).await, 200).await;
    // It still ends when revoked.
    let rotated = refreshed["refresh_token"].as_str().unwrap();
    let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&client, Some(&secret));
    assert_eq!(revoke.form(&[("token", rotated)]).send().await.unwrap().status(), StatusCode::OK);
    let access = refreshed["access_token"].as_str().unwrap();
    assert_eq!(introspect(&w.app, creds, access).await, json!({"active": false}));
}

/// A client that may not refresh never gets a refresh token, so its `offline_access` is ignored
/// (OpenID Connect Core, section 11): the grant ends with the browser session like any other. So
/// is that of a client not registered for it.
async fn offline_access_is_ignored_from_a_client_that_may_not_refresh(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = register(
        &w.app,
        json!({
            "name": "Web app without refresh",
            "kind": "confidential",
            "redirect_uris": [REDIRECT],
            "post_logout_redirect_uris": [POST_LOGOUT],
            "grant_types": ["authorization_code"],
            "first_party": true,
        }),
    )
    .await;
    let secret = secret.expect("a confidential client gets a secret");
    let creds = (client.as_str(), secret.as_str());
    let mut browser = Browser::new();
    let (asked_offline, online) = offline_and_online(&w, &mut browser, creds).await;
    assert_eq!(asked_offline["scope"], "openid");
    assert!(asked_offline.get("refresh_token").is_none(), "{asked_offline}");
    let scopes = w.app.db.sql().await.texts("SELECT scope FROM oauth_grants ORDER BY scope").await;
    assert!(scopes.iter().all(|s| !s.contains("offline_access")), "{scopes:?}");
    // Asked alone, nothing is left to grant: `invalid_scope`, not a code that redeems nothing.
    let (_, challenge) = pkce();
    let alone =
        authorize_url(&w.app, &client, &challenge, "").replace("scope=openid%20email%20teams", "scope=offline_access");
    let to = location(&browser.navigate(&alone).await);
    assert!(to.starts_with(REDIRECT), "{to}");
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_scope"), "{to}");

    let id_token = online["id_token"].as_str().unwrap();
    let logout = format!("/oauth/logout?id_token_hint={id_token}&post_logout_redirect_uri={}", urlencode(POST_LOGOUT));
    assert_eq!(browser.navigate(&w.app.url(&logout)).await.status(), StatusCode::SEE_OTHER);
    let access = asked_offline["access_token"].as_str().unwrap();
    assert_eq!(introspect(&w.app, creds, access).await, json!({"active": false}), "ended with the session");

    // Nor from a client not registered for it (an agent asks for the scopes `/mcp` names,
    // whatever the operator registered): ignored, not the request refused.
    let narrow = json!({"name": "Agent", "kind": "confidential", "redirect_uris": [REDIRECT], "scopes": ["openid"],
                        "first_party": true});
    let (agent, agent_secret) = register(&w.app, narrow).await;
    let agent_secret = agent_secret.unwrap();
    let (verifier, challenge) = pkce();
    // Nor any other scope it is not registered for (OpenID Connect Core 3.1.2.1): an app with a
    // stock scope list (`groups`, `address`) signs in with what it may have.
    let url = authorize_url(&w.app, &agent, &challenge, "")
        .replace("scope=openid%20email%20teams", "scope=openid%20offline_access%20groups%20address%20email");
    let back = follow(&mut Browser::new(), url).await;
    let code = param(&back, "code").unwrap_or_else(|| panic!("a code, not an error: {back}"));
    let tokens = body(exchange(&w.app, (&agent, &agent_secret), &code, &verifier).await, 200).await;
    assert_eq!(tokens["scope"], "openid", "{tokens}");
    // Asked again at a refresh (libraries resend the scope they were configured with), likewise;
    // alone, nothing is left to grant there either.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let agent = (agent.as_str(), agent_secret.as_str());
    let alone = [("grant_type", "refresh_token"), ("refresh_token", refresh), ("scope", "offline_access")];
    assert_eq!(oauth_error(token_request(&w.app, agent, &alone).await, 400).await, "invalid_scope");
    let again =
        [("grant_type", "refresh_token"), ("refresh_token", refresh), ("scope", "openid offline_access groups")];
    let refreshed = body(token_request(&w.app, agent, &again).await, 200).await;
    assert_eq!(refreshed["scope"], "openid", "{refreshed}");
    let refresh = refreshed["refresh_token"].as_str().unwrap();
    let unknown = [("grant_type", "refresh_token"), ("refresh_token", refresh), ("scope", "groups")];
    assert_eq!(oauth_error(token_request(&w.app, agent, &unknown).await, 400).await, "invalid_scope");
    // The client registered for it afterwards: its grants made before still refresh with the
    // scope the library resends (a refresh cannot make a grant offline), not refused.
    let patched = w.app.admin(Method::PATCH, &format!("/admin/clients/{}", agent.0));
    let patched = patched.json(&json!({"scopes": ["openid", "offline_access"]})).send().await.unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let refresh = refreshed["refresh_token"].as_str().unwrap();
    let alone = [("grant_type", "refresh_token"), ("refresh_token", refresh), ("scope", "offline_access")];
    assert_eq!(oauth_error(token_request(&w.app, agent, &alone).await, 400).await, "invalid_scope");
    let again = [("grant_type", "refresh_token"), ("refresh_token", refresh), ("scope", "openid offline_access")];
    let refreshed = body(token_request(&w.app, agent, &again).await, 200).await;
    assert_eq!(refreshed["scope"], "openid", "{refreshed}");
}

/// Signs `browser` in and gets the tokens of two grants of `client` from its session: one with
/// `offline_access` (lasting while signed out), then one without.
async fn offline_and_online(w: &World, browser: &mut Browser, client: (&str, &str)) -> (Value, Value) {
    let (verifier, challenge) = pkce();
    let offline_url = authorize_url(&w.app, client.0, &challenge, "")
        .replace("scope=openid%20email%20teams", "scope=openid%20offline_access");
    let code = code_from(w, browser, offline_url).await;
    let offline = body(exchange(&w.app, client, &code, &verifier).await, 200).await;
    let (verifier, challenge) = pkce();
    let code = code_for(w, browser, client.0, &challenge).await;
    (offline, body(exchange(&w.app, client, &code, &verifier).await, 200).await)
}

fn token_builder(app: &TestApp, client: (&str, &str), form: &[(&str, &str)]) -> reqwest::RequestBuilder {
    app.client.post(app.url("/oauth/token")).basic_auth(client.0, Some(client.1)).form(form)
}

async fn tessera_access_tokens_work_at_validate_check_and_me(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret, tokens) = first_tokens(&w).await;
    let creds = (client.as_str(), secret.as_str());
    let access = tokens["access_token"].as_str().unwrap();
    let user_id = w.app.db.sql().await.uuids("SELECT id FROM users").await[0].to_string();

    let validated = body(w.app.validate(access).await, 200).await;
    assert_eq!(validated["user_id"], user_id);
    assert_eq!(validated["issuer"], w.app.url("").trim_end_matches('/'));
    assert_eq!(validated["subject"], user_id);
    // What the token was issued for: no resource was asked, so the client itself.
    assert_eq!(validated["issued_for"], json!({"audience": client, "client_id": client, "scope": tokens["scope"]}));
    // A backend that names itself refuses a token issued for anyone else.
    let validate_for = |audience: &str| {
        let audience: String = url::form_urlencoded::byte_serialize(audience.as_bytes()).collect();
        w.app.client.post(w.app.url(&format!("/v1/validate?audience={audience}"))).bearer_auth(access).send()
    };
    assert_eq!(body(validate_for(&client).await.unwrap(), 200).await["user_id"], user_id);
    let other = validate_for("https://api.example.com").await.unwrap();
    assert_eq!(other.headers()["www-authenticate"], r#"Bearer realm="tessera", error="invalid_token""#);
    assert_eq!(body(other, 401).await["code"], "audience_mismatch");
    assert_eq!(body(validate_for("").await.unwrap(), 400).await["code"], "missing_field");
    let twice = w.app.client.post(w.app.url(&format!("/v1/validate?audience={client}&audience={client}")));
    assert_eq!(body(twice.bearer_auth(access).send().await.unwrap(), 400).await["code"], "invalid_request");
    // A misspelt parameter is refused, not ignored: ignored, it would skip the check asked for.
    let misspelt = w.app.client.post(w.app.url("/v1/validate?audiance=https://api.example.com"));
    let misspelt = body(misspelt.bearer_auth(access).send().await.unwrap(), 400).await;
    assert_eq!(misspelt["code"], "invalid_request", "{misspelt}");
    let check_misspelt = w.app.client.get(w.app.url("/v1/check?taem=x")).bearer_auth(access).send().await.unwrap();
    assert_eq!(body(check_misspelt, 400).await["code"], "invalid_request");
    let team = validated["teams"][0]["slug"].as_str().unwrap().to_owned();
    let check =
        w.app.client.get(w.app.url(&format!("/v1/check?team={team}"))).bearer_auth(access).send().await.unwrap();
    assert_eq!(check.status(), 204);
    // Not `/v1/me`, whose identities and teams are more than the app was given: that takes a
    // token for Tessera's API.
    let me = w.app.client.get(w.app.url("/v1/me")).bearer_auth(access).send().await.unwrap();
    assert_eq!(body(me, 401).await["code"], "audience_mismatch");
    // A token narrowed to `openid` says who the user is and no more: no email, no teams (as
    // userinfo would give it), and `/v1/check` answers as for a non-member.
    assert!(validated["email"].is_string() && !validated["teams"].as_array().unwrap().is_empty());
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh), ("scope", "openid")];
    let narrow = body(token_request(&w.app, creds, &form).await, 200).await;
    let narrow = narrow["access_token"].as_str().unwrap();
    let said = body(w.app.validate(narrow).await, 200).await;
    assert_eq!((said["user_id"].clone(), said["email"].clone()), (json!(user_id), Value::Null));
    assert_eq!((said["email_verified"].clone(), said["teams"].clone()), (json!(false), json!([])));
    let check =
        w.app.client.get(w.app.url(&format!("/v1/check?team={team}"))).bearer_auth(narrow).send().await.unwrap();
    assert_eq!(body(check, 403).await["code"], "not_a_member");
    // An id token is not an access token.
    let id_token = tokens["id_token"].as_str().unwrap();
    assert_eq!(body(w.app.validate(id_token).await, 401).await["code"], "token_type_mismatch");
    // Revoked: refused at once.
    let revoke = w.app.client.post(w.app.url("/oauth/revoke")).basic_auth(&client, Some(&secret));
    assert_eq!(revoke.form(&[("token", access)]).send().await.unwrap().status(), 200);
    assert_eq!(body(w.app.validate(access).await, 401).await["code"], "token_revoked");
}

async fn private_key_jwt_authenticates_at_the_token_endpoint_once_per_assertion(backend: Backend) {
    let w = op_world(backend).await;
    // The client's own key pair: a second local issuer's keys stand for it.
    let keys = tessera_testkit::local_issuer::LocalIssuer::start().await.unwrap();
    let jwks: Value = w.app.client.get(keys.jwks_uri()).send().await.unwrap().json().await.unwrap();
    let (client, secret) = register(
        &w.app,
        json!({"name": "Signed job", "kind": "confidential", "jwks": jwks, "redirect_uris": [],
               "grant_types": ["client_credentials"], "scopes": ["openid", "jobs"]}),
    )
    .await;
    assert_eq!(secret, None, "a client with keys gets no secret");
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": client, "sub": client, "aud": w.app.url("/oauth/token"), "iat": now,
                        "exp": now + 60, "jti": "assertion-1"});
    let assertion = keys.sign("ec-1", &claims);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.as_str()),
    ];
    let send = || w.app.client.post(w.app.url("/oauth/token")).form(&form).send();
    let tokens = body(send().await.unwrap(), 200).await;
    assert_eq!(jwt_parts(tokens["access_token"].as_str().unwrap()).1["sub"], client);
    assert_eq!(oauth_error(send().await.unwrap(), 401).await, "invalid_client", "an assertion is used once");
    // At another endpoint an assertion may name that endpoint (RFC 9126 section 2, for PAR);
    // the token endpoint does not take it.
    let for_introspection = |jti: &str| {
        let claims = json!({"iss": client, "sub": client, "aud": w.app.url("/oauth/introspect"), "iat": now,
                            "exp": now + 60, "jti": jti});
        keys.sign("ec-1", &claims)
    };
    let assertion = for_introspection("assertion-2");
    let form = [
        ("token", tokens["access_token"].as_str().unwrap()),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.as_str()),
    ];
    let introspected = w.app.client.post(w.app.url("/oauth/introspect")).form(&form).send().await.unwrap();
    assert_eq!(body(introspected, 200).await["active"], true);
    let assertion = for_introspection("assertion-3");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.as_str()),
    ];
    let elsewhere = w.app.client.post(w.app.url("/oauth/token")).form(&form).send().await.unwrap();
    assert_eq!(oauth_error(elsewhere, 401).await, "invalid_client");
}

async fn browser_apps_on_other_origins_reach_the_public_client_endpoints_only(backend: Backend) {
    let w = op_world(backend).await;
    let origin = "https://spa.example.net";
    // The endpoints an app calls, and the documents it reads (with a header that makes its
    // browser ask first).
    let posted = ["/oauth/token", "/oauth/revoke", "/oauth/userinfo", "/oauth/par"].map(|path| (path, "POST"));
    let read = ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server", "/oauth/jwks"]
        .map(|p| (p, "GET"));
    for (path, method) in posted.into_iter().chain(read) {
        let preflight = w.app.client.request(Method::OPTIONS, w.app.url(path)).header("origin", origin);
        let preflight = preflight
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "authorization, content-type")
            .send()
            .await
            .unwrap();
        assert!(preflight.status().is_success(), "{path}: {}", preflight.status());
        assert_eq!(preflight.headers()["access-control-allow-origin"], "*", "{path}");
        assert!(preflight.headers().get("access-control-allow-credentials").is_none(), "never with cookies");
    }
    // Another method is still refused, as everywhere, with the methods it takes.
    let deleted = w.app.client.delete(w.app.url("/oauth/jwks")).header("origin", origin).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(deleted.headers()["allow"].to_str().unwrap().contains("GET"));
    assert_eq!(oauth_error(deleted, 405).await, "invalid_request", "in the OAuth format, under /oauth/");
    let discovery = w.app.client.get(w.app.url("/.well-known/openid-configuration")).header("origin", origin);
    assert_eq!(discovery.send().await.unwrap().headers()["access-control-allow-origin"], "*");
    // A refused userinfo call says why in WWW-Authenticate, which the app's script may read.
    let refused = w.app.client.get(w.app.url("/oauth/userinfo")).header("origin", origin).bearer_auth("nope");
    let refused = refused.send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_eq!(
        refused.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase(),
        "www-authenticate"
    );
    // Backend-only endpoints and the browser's own pages are not for other origins.
    for path in ["/oauth/introspect", "/oauth/consent", "/admin/clients"] {
        let asked = w.app.client.post(w.app.url(path)).header("origin", origin).send().await.unwrap();
        assert!(asked.headers().get("access-control-allow-origin").is_none(), "{path}");
    }
}

async fn a_user_removes_an_apps_access_from_the_account_page(backend: Backend) {
    let w = op_world(backend).await;
    let (client, secret) = web_app(&w.app).await;
    let creds = (client.as_str(), secret.as_str());
    let (partner, _) = register(
        &w.app,
        json!({"name": "Partner app", "kind": "public", "redirect_uris": [REDIRECT], "first_party": false}),
    )
    .await;
    let mut browser = Browser::new();
    // The web app (first-party): one grant that lasts while signed out, one that does not.
    let (offline, online) = offline_and_online(&w, &mut browser, creds).await;
    // The partner: consented to, its tokens then revoked by the partner itself: a consent only.
    let (verifier, challenge) = pkce();
    let request_id = consent_request(&mut browser, &w.app, &partner, &challenge).await;
    let approve = [("request_id", request_id.as_str()), ("decision", "approve")];
    let code = param(&location(&browser_post(&mut browser, &w.app.url("/oauth/consent"), &approve).await), "code");
    let redeem = [
        ("grant_type", "authorization_code"),
        ("code", &code.unwrap()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", &verifier),
        ("client_id", &partner),
    ];
    let partner_tokens =
        body(w.app.client.post(w.app.url("/oauth/token")).form(&redeem).send().await.unwrap(), 200).await;
    let revoke = [("token", partner_tokens["access_token"].as_str().unwrap()), ("client_id", &partner)];
    let revoked = w.app.client.post(w.app.url("/oauth/revoke")).form(&revoke).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);

    let page = html_of(browser.navigate(&w.app.url("/account")).await).await;
    let apps = page.split("<h2 id=\"apps\">").nth(1).expect("an apps section");
    let (first, web) = apps.split_once("Web app").expect("both apps, by name");
    assert!(first.contains("Partner app") && first.contains("no access now; your consent is remembered"), "{apps}");
    assert!(web.contains("keeps access while you are signed out"), "{apps}");
    // In the consent page's words, not as scope names.
    // (Offline access is said once, beside: a remembered consent may name it still.)
    assert!(web.contains("<li>see your teams and your role in each</li>"), "{apps}");
    assert!(!web.contains("<li>offline_access</li>") && !web.contains("keep this access while"), "{apps}");
    let token = csrf_of(&page);

    // Without the page's token, nothing happens.
    let forged = browser.form(&w.app.url("/account/apps/remove"), &[("csrf", "forged"), ("client", &client)]).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let access = offline["access_token"].as_str().unwrap();
    assert_eq!(introspect(&w.app, creds, access).await["active"], true);
    // Not an app's id: a page that says so.
    let bad = browser.form(&w.app.url("/account/apps/remove"), &[("csrf", &token), ("client", "../x")]).await;
    assert_eq!(bad.status(), StatusCode::NOT_FOUND);
    // The button asks first, saying what ends: nothing does until its page is answered.
    let asked = browser.form(&w.app.url("/account/apps/remove"), &[("csrf", &token), ("client", &client)]).await;
    let asked = html_of(asked).await;
    assert!(asked.contains("Remove Web app&#39;s access?") && asked.contains("while you are signed out"), "{asked}");
    assert!(!asked.contains("consent"), "a first-party app never asks for it: {asked}");
    assert_eq!(introspect(&w.app, creds, access).await["active"], true);

    // Removed many times at once: one removal, one audit row, every grant of the app ended.
    let cookie: Vec<String> = browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let removals: Vec<_> = (0..8)
        .map(|_| {
            no_redirects
                .post(w.app.url("/account/apps/remove"))
                .header("cookie", cookie.join("; "))
                .header("accept", "text/html")
                .form(&[("csrf", token.as_str()), ("client", client.as_str()), ("confirmed", "yes")])
        })
        .collect();
    for response in send_at_once(&removals).await {
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&response), "/account?done=app-removed");
    }
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("audit_events WHERE action = 'app.removed'").await, 1);
    assert_eq!(sql.count(&format!("oauth_grants WHERE client_id = '{client}' AND revoked_at IS NULL")).await, 0);
    for tokens in [&offline, &online] {
        assert_eq!(introspect(&w.app, creds, tokens["access_token"].as_str().unwrap()).await, json!({"active": false}));
    }
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", offline["refresh_token"].as_str().unwrap())];
    assert_eq!(oauth_error(token_request(&w.app, creds, &refresh).await, 400).await, "invalid_grant");
    // The browser stays signed in; the partner's consent is untouched.
    let page = html_of(browser.navigate(&w.app.url("/account?done=app-removed")).await).await;
    assert!(page.contains("access to your account was removed"), "{page}");
    let apps = page.split("<h2 id=\"apps\">").nth(1).unwrap();
    assert!(!apps.contains("Web app") && apps.contains("Partner app"), "{apps}");
    // A first-party app never asks: it signs the user in again at once, with a new grant — an
    // app with access once it redeemed the code, not before (an abandoned sign-in gives nothing).
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let page = html_of(browser.navigate(&w.app.url("/account")).await).await;
    assert!(!page.split("<h2 id=\"apps\">").nth(1).unwrap().contains("Web app"), "{page}");
    assert_eq!(exchange(&w.app, creds, &code, &verifier).await.status(), StatusCode::OK);
    let page = html_of(browser.navigate(&w.app.url("/account")).await).await;
    assert!(page.contains("Web app") && page.contains("has access until you sign out"), "{page}");

    // Removing the partner forgets its consent: it asks again.
    let token = csrf_of(&page);
    let fields = [("csrf", token.as_str()), ("client", partner.as_str())];
    let remove = w.app.url("/account/apps/remove");
    let done = confirmed(&mut browser, &remove, &fields, "ask for your consent again").await;
    assert_eq!(location(&done), "/account?done=app-removed");
    assert_eq!(sql.count("oauth_consents").await, 0);
    consent_request(&mut browser, &w.app, &partner, &challenge).await;
    assert_eq!(sql.count("audit_events WHERE action = 'app.removed'").await, 2);
}

async fn a_consent_covers_the_resources_it_was_given_for(backend: Backend) {
    let w = op_world(backend).await;
    let mcp = w.app.url("/mcp");
    let api = "https://api.example.com";
    let (partner, _) = register(
        &w.app,
        json!({"name": "Agent", "kind": "public", "redirect_uris": [REDIRECT], "first_party": false,
               "resources": [api, mcp]}),
    )
    .await;
    let (_, challenge) = pkce();
    let mut browser = Browser::new();
    // Signed in and consented for the partner's own API.
    let for_api = format!("&resource={}", urlencode(api));
    let url = authorize_url(&w.app, &partner, &challenge, &for_api);
    let page = first_page(&w.app, &mut browser, url).await.text().await.unwrap();
    assert!(page.contains(&format!("It also asks to <strong>use {api}</strong>")), "{page}");
    let request_id = request_id_of(&page);
    let approve = [("request_id", request_id.as_str()), ("decision", "approve")];
    assert!(
        param(&location(&browser_post(&mut browser, &w.app.url("/oauth/consent"), &approve).await), "code").is_some()
    );
    // The same scopes for Tessera's MCP server are not covered: asked again, in words.
    let for_mcp = format!("&resource={}", urlencode(&mcp));
    let silent =
        browser.navigate(&authorize_url(&w.app, &partner, &challenge, &format!("{for_mcp}&prompt=none"))).await;
    assert_eq!(param(&location(&silent), "error").as_deref(), Some("consent_required"));
    let page = html_of(browser.navigate(&authorize_url(&w.app, &partner, &challenge, &for_mcp)).await).await;
    assert!(page.contains("MCP server") && page.contains("credentials of your connected accounts"), "{page}");
    let request_id = request_id_of(&page);
    let approve = [("request_id", request_id.as_str()), ("decision", "approve")];
    assert!(
        param(&location(&browser_post(&mut browser, &w.app.url("/oauth/consent"), &approve).await), "code").is_some()
    );
    // Now both are covered: codes at once.
    for extra in [&for_api, &for_mcp] {
        let to = location(&browser.navigate(&authorize_url(&w.app, &partner, &challenge, extra)).await);
        assert!(param(&to, "code").is_some(), "{to}");
    }
    // Offline access approved for the API does not extend to the MCP server: a consent pairs the
    // scopes with the resource the page showed them with.
    let offline = |extra: &str| {
        authorize_url(&w.app, &partner, &challenge, extra)
            .replace("scope=openid%20email%20teams", "scope=openid%20offline_access")
    };
    let page = html_of(browser.navigate(&offline(&for_api)).await).await;
    let request_id = request_id_of(&page);
    let approve = [("request_id", request_id.as_str()), ("decision", "approve")];
    assert!(
        param(&location(&browser_post(&mut browser, &w.app.url("/oauth/consent"), &approve).await), "code").is_some()
    );
    let to = location(&browser.navigate(&offline(&for_api)).await);
    assert!(param(&to, "code").is_some(), "remembered for the API: {to}");
    let silent = browser.navigate(&offline(&format!("{for_mcp}&prompt=none"))).await;
    assert_eq!(param(&location(&silent), "error").as_deref(), Some("consent_required"));
}

/// The official MCP SDKs send a URL's `href` as `resource` — `https://api.example.com/` for a
/// server whose metadata says `https://api.example.com` — and others spell a host or port their
/// own way: the same resource (RFC 3986 6.2.2–6.2.3) matches, at authorization, code exchange
/// and refresh, and its tokens' `aud` is spelled as registered, for the resource server to check.
async fn a_resource_matches_however_the_client_spells_its_url(backend: Backend) {
    let w = op_world(backend).await;
    let api = "https://api.example.com";
    let fields = |resources: Value| {
        json!({"name": "Agent", "kind": "confidential", "redirect_uris": [REDIRECT], "first_party": true,
               "grant_types": ["authorization_code", "refresh_token"], "resources": resources,
               "scopes": ["openid", "offline_access"]})
    };
    // A client that lists two spellings (as it had to before) gets the one it asks for.
    let (both, both_secret) = register(&w.app, fields(json!([api, "https://api.example.com/"]))).await;
    let (verifier, challenge) = pkce();
    let extra = format!("&resource={}", urlencode("https://api.example.com/"));
    let url = authorize_url(&w.app, &both, &challenge, &extra)
        .replace("scope=openid%20email%20teams", "scope=openid%20offline_access");
    let code = code_from(&w, &mut Browser::new(), url).await;
    let mut form = vec![("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)];
    form.extend([("code_verifier", verifier.as_str()), ("resource", "https://api.example.com/")]);
    let tokens = body(token_request(&w.app, (&both, both_secret.as_deref().unwrap()), &form).await, 200).await;
    assert_eq!(jwt_parts(tokens["access_token"].as_str().unwrap()).1["aud"], "https://api.example.com/");
    let (client, secret) = register(&w.app, fields(json!([api]))).await;
    let creds = (client.as_str(), secret.as_deref().unwrap());
    let (verifier, challenge) = pkce();
    let extra = format!("&resource={}", urlencode("https://api.example.com/"));
    let url = authorize_url(&w.app, &client, &challenge, &extra)
        .replace("scope=openid%20email%20teams", "scope=openid%20offline_access");
    let code = code_from(&w, &mut Browser::new(), url).await;
    let mut form = vec![("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)];
    form.extend([("code_verifier", verifier.as_str()), ("resource", "HTTPS://API.Example.com:443")]);
    let tokens = body(token_request(&w.app, creds, &form).await, 200).await;
    assert_eq!(jwt_parts(tokens["access_token"].as_str().unwrap()).1["aud"], api);
    // A refresh naming the grant's resource (what the SDKs send each time), in their spelling.
    let refresh = async |token: &str, resource: &str| {
        let form = [("grant_type", "refresh_token"), ("refresh_token", token), ("resource", resource)];
        token_request(&w.app, creds, &form).await
    };
    let token = tokens["refresh_token"].as_str().unwrap();
    let refreshed = body(refresh(token, "https://api.example.com/").await, 200).await;
    assert_eq!(jwt_parts(refreshed["access_token"].as_str().unwrap()).1["aud"], api);
    // Another path is another resource.
    let other = refresh(refreshed["refresh_token"].as_str().unwrap(), "https://api.example.com/v2").await;
    assert_eq!(oauth_error(other, 400).await, "invalid_target");
}

/// RFC 7662 section 4: an access token is shown to the resource server it is for. Tessera's own
/// MCP server (and API) reads its tokens itself: another client that registered `/mcp` to ask
/// for its own tokens is no resource server of this one, and learns nothing of it.
async fn a_client_that_registered_tesseras_mcp_server_does_not_introspect_anothers_token_for_it(backend: Backend) {
    let w = op_world(backend).await;
    let mcp = w.app.url("/mcp");
    let agent = |name: &str| {
        json!({"name": name, "kind": "confidential", "redirect_uris": [REDIRECT], "first_party": true,
               "grant_types": ["authorization_code"], "resources": [mcp, "https://api.example.com"],
               "scopes": ["openid"]})
    };
    let (one, one_secret) = register(&w.app, agent("One")).await;
    let (other, other_secret) = register(&w.app, agent("Other")).await;
    let (one, other) =
        ((one.as_str(), one_secret.as_deref().unwrap()), (other.as_str(), other_secret.as_deref().unwrap()));
    let token_for = async |resource: &str| {
        let (verifier, challenge) = pkce();
        let extra = format!("&resource={}", urlencode(resource));
        let code = code_from(&w, &mut Browser::new(), authorize_url(&w.app, one.0, &challenge, &extra)).await;
        let mut form = vec![("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)];
        form.extend([("code_verifier", verifier.as_str()), ("resource", resource)]);
        let tokens = body(token_request(&w.app, one, &form).await, 200).await;
        tokens["access_token"].as_str().unwrap().to_owned()
    };
    let for_mcp = token_for(&mcp).await;
    assert_eq!(introspect(&w.app, one, &for_mcp).await["active"], true, "its own client");
    assert_eq!(introspect(&w.app, other, &for_mcp).await, json!({"active": false}));
    // A resource of the client's own (a server it runs) is its to read.
    let for_api = token_for("https://api.example.com").await;
    assert_eq!(introspect(&w.app, other, &for_api).await["active"], true, "the resource server");
}

async fn narrowing_a_client_narrows_what_its_standing_grants_issue(backend: Backend) {
    let w = op_world(backend).await;
    let api = "https://api.example.com";
    let (client, secret) = register(
        &w.app,
        json!({"name": "Agent", "kind": "confidential", "redirect_uris": [REDIRECT], "first_party": true,
               "grant_types": ["authorization_code", "refresh_token"], "resources": [api],
               "scopes": ["openid", "email", "offline_access"]}),
    )
    .await;
    let creds = (client.as_str(), secret.as_deref().unwrap());
    // Two offline grants for the resource, from two browsers.
    let mut grants = Vec::new();
    for _ in 0..2 {
        let (verifier, challenge) = pkce();
        let extra = format!("&resource={}", urlencode(api));
        let url = authorize_url(&w.app, &client, &challenge, &extra)
            .replace("scope=openid%20email%20teams", "scope=openid%20email%20offline_access");
        let code = code_from(&w, &mut Browser::new(), url).await;
        let mut form = vec![("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)];
        form.extend([("code_verifier", verifier.as_str()), ("resource", api)]);
        let tokens = body(token_request(&w.app, creds, &form).await, 200).await;
        assert_eq!(tokens["scope"], "openid email offline_access");
        grants.push(tokens["refresh_token"].as_str().unwrap().to_owned());
    }
    let patch = |fields: Value| {
        let request = w.app.admin(Method::PATCH, &format!("/admin/clients/{client}")).json(&fields);
        async move { body(request.send().await.unwrap(), 200).await }
    };
    let refresh = |token: String, scope: Option<&'static str>| {
        let mut form = vec![("grant_type", "refresh_token".to_owned()), ("refresh_token", token)];
        form.extend(scope.map(|s| ("scope", s.to_owned())));
        let request = w.app.client.post(w.app.url("/oauth/token")).basic_auth(creds.0, Some(creds.1)).form(&form);
        async move { request.send().await.unwrap() }
    };
    // The admin takes `email` away: the grants' next tokens are without it, and asking for it
    // is refused.
    patch(json!({"scopes": ["openid", "offline_access"]})).await;
    let narrowed = body(refresh(grants[0].clone(), None).await, 200).await;
    assert_eq!(narrowed["scope"], "openid offline_access");
    let (_, claims) = jwt_parts(narrowed["access_token"].as_str().unwrap());
    assert_eq!((claims["aud"].as_str(), claims.get("email")), (Some(api), None), "{claims}");
    let rotated = narrowed["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&w.app, creds, &rotated).await["scope"], "openid offline_access");
    assert_eq!(oauth_error(refresh(grants[1].clone(), Some("email")).await, 400).await, "invalid_scope");
    // Offline access taken away: an offline grant issues nothing more.
    patch(json!({"scopes": ["openid"]})).await;
    assert_eq!(oauth_error(refresh(rotated.clone(), None).await, 400).await, "invalid_grant");
    assert_eq!(introspect(&w.app, creds, &rotated).await, json!({"active": false}));
    // And the resource: the same.
    patch(json!({"scopes": ["openid", "offline_access"], "resources": ["https://other.example.com"]})).await;
    assert_eq!(oauth_error(refresh(grants[1].clone(), None).await, 400).await, "invalid_grant");
    // A grant left with none of its scopes: the same, introspection included.
    patch(json!({"scopes": ["openid", "email", "offline_access"], "resources": [api]})).await;
    let (verifier, challenge) = pkce();
    let url = authorize_url(&w.app, &client, &challenge, "").replace("scope=openid%20email%20teams", "scope=email");
    let code = code_from(&w, &mut Browser::new(), url).await;
    let mut form = vec![("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)];
    form.push(("code_verifier", verifier.as_str()));
    let tokens = body(token_request(&w.app, creds, &form).await, 200).await;
    assert_eq!(tokens["scope"], "email");
    // Its access token is active, but not for userinfo: RFC 6750's insufficient_scope (403), not
    // invalid_token, which would send a client round a refresh that cannot help.
    let access = tokens["access_token"].as_str().unwrap();
    let userinfo = w.app.client.get(w.app.url("/oauth/userinfo"));
    let refused = userinfo.try_clone().unwrap().bearer_auth(access).send().await.unwrap();
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer error=\"insufficient_scope\"") && challenge.ends_with("scope=\"openid\""));
    assert_eq!(oauth_error(refused, 403).await, "insufficient_scope");
    let twice = userinfo.try_clone().unwrap().bearer_auth(access).header("authorization", format!("Bearer {access}"));
    assert_eq!(oauth_error(twice.send().await.unwrap(), 400).await, "invalid_request");
    let unknown = userinfo.bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(oauth_error(unknown, 401).await, "invalid_token");
    let emailed = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&w.app, creds, &emailed).await["active"], true);
    patch(json!({"scopes": ["openid", "offline_access"]})).await;
    assert_eq!(oauth_error(refresh(emailed.clone(), None).await, 400).await, "invalid_grant");
    assert_eq!(introspect(&w.app, creds, &emailed).await, json!({"active": false}));
    // A redirect URI taken away (a compromised one, say): a code sent there before is refused.
    let (verifier, challenge) = pkce();
    let url = authorize_url(&w.app, &client, &challenge, "").replace("scope=openid%20email%20teams", "scope=openid");
    let code = code_from(&w, &mut Browser::new(), url).await;
    patch(json!({"redirect_uris": ["https://app.example.com/elsewhere"]})).await;
    let form = [("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)];
    let form = [&form[..], &[("code_verifier", verifier.as_str())]].concat();
    assert_eq!(oauth_error(token_request(&w.app, creds, &form).await, 400).await, "invalid_grant");
}

async fn forward_auth_says_an_email_is_verified_on_a_trusted_providers_word(backend: Backend) {
    let w = op_world_with(backend, |config| config.providers[0].trusted_email_verification = true).await;
    let (client, secret) = web_app(&w.app).await;
    w.issuer.set_next_user(StubUser::new("trusted", "trusted@example.com"));
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let code = code_for(&w, &mut browser, &client, &challenge).await;
    let tokens = body(exchange(&w.app, (&client, &secret), &code, &verifier).await, 200).await;
    let by_session = browser.get(&w.app.url("/auth/verify")).await;
    assert_eq!(by_session.headers()["x-tessera-email-verified"], "true");
    let for_app = w.app.url(&format!("/auth/verify?audience={client}"));
    let by_token = w.app.client.get(&for_app).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await;
    assert_eq!(by_token.unwrap().headers()["x-tessera-email-verified"], "true");

    // An internationalised address goes as its UTF-8 bytes, beside its flag: never an empty
    // email beside a "true" that would vouch for nothing.
    w.issuer.set_next_user(StubUser::new("jörg", "jörg@example.com"));
    let mut browser = Browser::new();
    code_for(&w, &mut browser, &client, &challenge).await;
    let by_session = browser.get(&w.app.url("/auth/verify")).await;
    assert_eq!(by_session.status(), StatusCode::OK);
    assert_eq!(by_session.headers()["x-tessera-email"].as_bytes(), "jörg@example.com".as_bytes());
    assert_eq!(by_session.headers()["x-tessera-email-verified"], "true");
}

/// Opens an authorization request of the third-party `client` in a signed-in browser that has
/// not consented; returns the consent page's request id.
async fn consent_request(browser: &mut Browser, app: &TestApp, client: &str, challenge: &str) -> String {
    request_id_of(&html_of(browser.navigate(&authorize_url(app, client, challenge, "")).await).await)
}

/// The links of a page, unescaped.
fn hrefs(page: &str) -> Vec<String> {
    page.split("href=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().replace("&amp;", "&").replace("&#38;", "&"))
        .collect()
}

/// The request id of a consent page's form.
pub(crate) fn request_id_of(page: &str) -> String {
    let field = "name=\"request_id\" value=\"";
    page.split(field).nth(1).expect("the consent page").split('"').next().unwrap().to_owned()
}

async fn html_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}
