//! Pages for people: the sign-in chooser, the account page and its forms (CSRF), logout, errors
//! as pages for browsers (problem+json for APIs), session hygiene — over HTTP — and the whole
//! walk in a real headless Chromium (`tests/support/browser_pages.py`, Playwright and axe-core,
//! installed by `scripts/test`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use tessera::crypto::keyring::KeyRing;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tessera::config::{ConnectorConfig, EnvField, ProviderConfig, ProviderKind};
use tessera_testkit::local_issuer::{LocalIssuer, StubUser};
use tokio::process::Command;

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, json as body, local_issuer_config, on_both_backends};
use crate::signin::{Browser, CLIENT_ID, CLIENT_SECRET, location, provider};

on_both_backends!(
    errors_on_browser_routes_are_pages_and_apis_keep_problem_json,
    link_required_offers_the_real_link_flow,
    a_link_opened_from_another_site_is_confirmed_first,
    the_account_page_shows_the_user_and_its_forms_need_the_csrf_token,
    signing_in_again_replaces_the_browsers_session,
    a_sign_in_sent_from_another_site_asks_a_signed_in_browser_first,
    logout_confirms_on_a_page_and_its_form_needs_the_token,
    the_chooser_lists_providers_and_sends_a_teams_email_to_its_provider,
    sign_out_everywhere_else_keeps_only_this_browser,
    two_browsers_signing_each_other_out_at_once_leave_one_signed_in,
    a_sign_in_without_a_provider_and_no_default_goes_by_the_chooser,
    connected_accounts_are_listed_and_can_be_disconnected,
    env_profiles_are_connected_and_reconnected_through_a_fresh_form_link,
    providers_show_built_in_configured_or_monogram_icons,
    a_store_failure_offers_the_same_page_again_not_a_new_sign_in,
    signing_in_as_someone_else_asks_the_provider_for_a_fresh_login,
    the_chooser_tells_a_signed_in_browser_who_it_is,
);

struct World {
    app: TestApp,
    local: LocalIssuer,
    second: LocalIssuer,
}

/// Two providers, `local` and `second`, no default: the chooser is the way in.
async fn world(backend: Backend) -> World {
    let local = LocalIssuer::start().await.unwrap();
    let second = LocalIssuer::start().await.unwrap();
    for issuer in [&local, &second] {
        issuer.set_client(CLIENT_ID, CLIENT_SECRET);
    }
    local.set_next_user(StubUser::new("ada-local", "ada@example.com"));
    second.set_next_user(StubUser::new("ada-second", "ada@example.com"));
    let app = TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        config.auth.return_to_origins = vec!["https://app.example.com".into()];
        config.providers.push(provider("local", ProviderKind::Oidc, &local));
        // A configured icon (a path on Tessera: the built-in GitLab one) for the second.
        let icon = Some("/assets/icons/gitlab.svg".to_owned());
        config.providers.push(ProviderConfig { icon_url: icon, ..provider("second", ProviderKind::Oidc, &second) });
        let mut issuer = local_issuer_config(&second);
        issuer.name = "second".into();
        config.issuers.push(issuer);
        let ring = format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([3u8; 32]));
        config.encryption = Some(Arc::new(KeyRing::parse(&ring).unwrap()));
        let field = |name: &str, label: &str, secret, optional| EnvField {
            name: name.into(),
            label: label.into(),
            secret,
            optional,
            pattern: None,
        };
        config.connectors = vec![
            ConnectorConfig { key: "issues".into(), label: "Issue tracker".into(), fields: vec![], probe: None },
            ConnectorConfig {
                key: "openai".into(),
                label: "OpenAI".into(),
                fields: vec![
                    field("OPENAI_API_KEY", "API key", true, false),
                    field("OPENAI_ORG", "Organisation", false, true),
                ],
                probe: None,
            },
        ];
    })
    .await;
    World { app, local, second }
}

async fn html(response: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    let text = response.text().await.unwrap();
    assert!(text.contains("<main id=\"main\">") && text.contains("name=\"viewport\""), "{text}");
    text
}

/// The one form action of a page that ends with `suffix`.
fn form_action(page: &str, suffix: &str) -> String {
    let actions: Vec<&str> = page
        .split("action=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|action| action.ends_with(suffix))
        .collect();
    assert_eq!(actions.len(), 1, "one form action ending with {suffix}: {page}");
    actions[0].to_owned()
}

/// Signs in with a provider through the stub (which sends the browser straight back).
async fn sign_in(browser: &mut Browser, app: &TestApp, provider: &str) -> reqwest::Response {
    browser.sign_in(app, &format!("provider={provider}")).await
}

/// Posts a form that takes something away (`fields` to `url`, as the account page's button
/// does), checks that it answers with a confirmation page that says `what` and offers Cancel,
/// and posts that page's own form: its answer.
pub async fn confirmed(browser: &mut Browser, url: &str, fields: &[(&str, &str)], what: &str) -> reqwest::Response {
    let page = html(browser.form(url, fields).await, StatusCode::OK).await;
    assert!(
        page.contains(what) && page.contains("<a class=\"button secondary\" href=\"/account\">Cancel</a>"),
        "{page}"
    );
    let action = page.split("<form class=\"inline\" method=\"post\" action=\"").nth(1).expect("a form");
    let action = action.split('"').next().unwrap();
    assert!(url.ends_with(action), "{action} posts back to {url}");
    let hidden: Vec<(&str, &str)> = page
        .split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|rest| {
            let (name, rest) = rest.split_once("\" value=\"").unwrap();
            (name, rest.split('"').next().unwrap())
        })
        .collect();
    assert!(hidden.contains(&("confirmed", "yes")) && hidden.iter().all(|(_, v)| !v.contains('&')), "{hidden:?}");
    assert!(page.contains("<button type=\"submit\" class=\"danger\">"), "{page}");
    browser.form(url, &hidden).await
}

/// The `return_to` of a local URL.
fn return_to_of(url: &str) -> String {
    let query = url.split_once('?').expect("a query").1;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "return_to").expect("a return_to").1.into_owned()
}

/// The CSRF token of a page's forms.
pub fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"").nth(1).expect("a CSRF field").split('"').next().unwrap().to_owned()
}

async fn errors_on_browser_routes_are_pages_and_apis_keep_problem_json(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let page = html(browser.navigate(&w.app.url("/auth/login?provider=nope")).await, StatusCode::NOT_FOUND).await;
    assert!(page.contains("That sign-in method is not available"), "{page}");
    assert!(page.contains("href=\"/login\""), "a next step: {page}");
    assert!(page.contains("unknown_provider"), "the code, small, for support");
    let api = body(browser.get(&w.app.url("/auth/login?provider=nope")).await, 404).await;
    assert_eq!(api["code"], "unknown_provider");

    let page = html(
        browser.navigate(&w.app.url("/auth/login?provider=local&return_to=https://evil.example/")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(page.contains("This sign-in link cannot be used"), "{page}");
    let page = html(browser.navigate(&w.app.url("/no/such/page")).await, StatusCode::NOT_FOUND).await;
    assert!(page.contains("Page not found"));
    assert_eq!(body(browser.get(&w.app.url("/no/such/page")).await, 404).await["code"], "not_found");

    // A cancelled sign-in offers to try again, towards where the browser was going.
    let callback = browser.start(&w.app, "provider=local&return_to=/after").await;
    let state = url::Url::parse(&callback).unwrap().query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let denied = w.app.url(&format!("/auth/callback/local?error=access_denied&state={state}"));
    let page = html(browser.navigate(&denied).await, StatusCode::BAD_REQUEST).await;
    assert!(page.contains("Sign-in was cancelled") && page.contains(">Try again<"), "{page}");
    assert!(page.contains("href=\"/login?return_to=%2Fafter\""), "{page}");
    assert!(page.contains("so you are not signed in"), "{page}");
    // Another error of the provider's is not called a cancel: it says whom to tell.
    let callback = browser.start(&w.app, "provider=local&return_to=/after").await;
    let refused = crate::signin::with_param(
        &crate::signin::with_param(&callback, "code", None),
        "error",
        Some("unauthorized_client"),
    );
    let page = html(browser.navigate(&refused).await, StatusCode::BAD_REQUEST).await;
    assert!(page.contains("The sign-in provider refused this sign-in") && !page.contains("cancelled"), "{page}");
    assert!(page.contains("tell whoever runs this site") && page.contains("provider_refused"), "{page}");
    assert!(page.contains("href=\"/login?return_to=%2Fafter\""), "{page}");
    // A signed-in browser switching accounts that cancels is told its session stands (only a
    // sign-in that succeeds replaces it), and its page offers its account.
    let mut switching = Browser::new();
    sign_in(&mut switching, &w.app, "local").await;
    let callback = switching.start(&w.app, "provider=local").await;
    let state = url::Url::parse(&callback).unwrap().query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let denied = w.app.url(&format!("/auth/callback/local?error=access_denied&state={state}"));
    let page = html(switching.navigate(&denied).await, StatusCode::BAD_REQUEST).await;
    assert!(page.contains("You are still signed in as before") && page.contains("href=\"/account\""), "{page}");
    assert_eq!(switching.me(&w.app).await.status(), StatusCode::OK, "still signed in");
    // The provider's answer in a browser that holds no sign-in cookie (cookies blocked, a
    // sign-in begun at another address than the public one): the page says what to change, as
    // trying again the same way would fail again.
    let callback = browser.start(&w.app, "provider=local").await;
    let page = html(Browser::new().navigate(&callback).await, StatusCode::BAD_REQUEST).await;
    assert!(page.contains("allow cookies for this site") && page.contains("invalid_state"), "{page}");
    // A malformed callback (a parameter twice) is a page too. It matches no flow, so it leaves
    // the sign-in cookie alone (another tab's sign-in may be under way).
    browser.start(&w.app, "provider=local").await;
    let twice = browser.navigate(&w.app.url(&format!("/auth/callback/local?code=a&code=b&state={state}"))).await;
    let cleared = twice.headers().get_all("set-cookie").iter().any(|c| c.to_str().unwrap().contains("Max-Age=0"));
    assert!(!cleared, "the sign-in cookie is left as it is");
    let page = html(twice, StatusCode::BAD_REQUEST).await;
    assert!(page.contains("<html") && page.contains("invalid_request"), "{page}");

    let page = html(browser.navigate(&w.app.url("/connect/abc/oauth/start")).await, StatusCode::NOT_FOUND).await;
    assert!(page.contains("This link was already used or has expired"), "{page}");
    // A path segment that is not text once decoded is a page as well, on every page route.
    for path in ["/connect/%FF/oauth/start", "/connect/%FF/env", "/auth/callback/%FF?state=a&code=b"] {
        let page = html(browser.navigate(&w.app.url(path)).await, StatusCode::BAD_REQUEST).await;
        assert!(page.contains("invalid_request"), "{path}: {page}");
    }

    // After a sign-in without return_to, a browser lands on its account page.
    let done = sign_in(&mut browser, &w.app, "local").await;
    assert_eq!(location(&done), "/");
    let home = browser.navigate(&w.app.url("/")).await;
    assert_eq!(location(&home), "/account");
    assert_eq!(home.headers()["vary"], "accept");
    // An API client's 404 there differs by Accept too, and is never stored for the next browser.
    let api = w.app.client.get(w.app.url("/")).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
    assert_eq!(api.headers()["cache-control"], "no-store");
    assert_eq!(api.headers()["vary"], "accept");
    let css = browser.get(&w.app.url("/assets/tessera.css")).await;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert!(css.text().await.unwrap().starts_with(":root { --primary: #1d4ed8; }"));
}

/// A page that could not read the browser's session (the database is gone) offers to open the
/// same page again: its "Try again" is not a new sign-in, which would end a session the browser
/// may well still have.
async fn a_store_failure_offers_the_same_page_again_not_a_new_sign_in(backend: Backend) {
    let w = world(backend).await;
    // Ready first: the configured clients are synced before the listener serves.
    assert_eq!(w.app.client.get(w.app.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    let mut browser = Browser::new();
    sign_in(&mut browser, &w.app, "local").await;
    let token = csrf_of(&html(browser.navigate(&w.app.url("/auth/logout")).await, StatusCode::OK).await);
    w.app.close_store().await;
    // Signing out that fails: still signed in, "try again" signs out again.
    let out = browser.prepared(Method::POST, &w.app.url("/auth/logout")).header("accept", "text/html");
    let page = html(out.form(&[("csrf", token)]).send().await.unwrap(), StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(page.contains("href=\"/auth/logout\"") && !page.contains("href=\"/login"), "{page}");
    // A page that is not there, to a browser with a session: its account, not a new sign-in.
    let missing = w.app.client.get(w.app.url("/nope")).header("accept", "text/html");
    let missing = missing.header("cookie", "tessera_session=unknown").send().await.unwrap();
    let page = html(missing, StatusCode::NOT_FOUND).await;
    assert!(page.contains("href=\"/account\"") && !page.contains("href=\"/login"), "{page}");
    for path in ["/account", "/auth/link?provider=second"] {
        let page = w.app.client.get(w.app.url(path)).header("accept", "text/html");
        let page = page.header("sec-fetch-site", "same-origin");
        let page = html(
            page.header("cookie", "tessera_session=unknown").send().await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE,
        );
        let page = page.await;
        let again = format!("href=\"{}\"", path.replace('&', "&amp;"));
        assert!(page.contains("store_unavailable") && page.contains(&again), "{path}: {page}");
        assert!(!page.contains("href=\"/login"), "{path}: {page}");
    }
    // A link opened from elsewhere, which is confirmed first, tries the account page again: a
    // click on this page would come from this origin and start the link without the question.
    let page = w.app.client.get(w.app.url("/auth/link?provider=second")).header("accept", "text/html");
    let page = page.header("sec-fetch-site", "cross-site").header("cookie", "tessera_session=unknown");
    let page = html(page.send().await.unwrap(), StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(page.contains("href=\"/account\"") && !page.contains("href=\"/auth/link"), "{page}");
}

async fn link_required_offers_the_real_link_flow(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &w.app, "local").await;
    let mut other = Browser::new();
    // An API client gets the link in problem+json; a browser's navigation gets a page.
    let api = body(other.sign_in(&w.app, "provider=second").await, 409).await;
    assert_eq!(api["link_url"], "/auth/link?provider=second");
    let callback = other.start(&w.app, "provider=second").await;
    let page = html(other.navigate(&callback).await, StatusCode::CONFLICT).await;
    assert!(page.contains("You already have an account"), "{page}");
    let link = "/login?return_to=%2Fauth%2Flink%3Fprovider%3Dsecond";
    assert!(page.contains(&format!("href=\"{link}\"")), "{page}");
    // Following it: the chooser keeps return_to, a sign-in comes back to the link flow.
    let chooser = html(other.navigate(&w.app.url(link)).await, StatusCode::OK).await;
    assert!(
        chooser.contains("href=\"/auth/login?provider=local&#38;return_to=%2Fauth%2Flink%3Fprovider%3Dsecond\""),
        "{chooser}"
    );
    let done = sign_in(&mut other, &w.app, "local&return_to=%2Fauth%2Flink%3Fprovider%3Dsecond").await;
    assert_eq!(location(&done), "/auth/link?provider=second");
    // Back from a sign-in at the provider (a redirect chain through another site), the browser
    // is asked before the link starts.
    let page = html(other.navigate(&w.app.url("/auth/link?provider=second")).await, StatusCode::OK).await;
    let csrf = csrf_of(&page);
    let to_provider = other.form(&w.app.url("/auth/link"), &[("csrf", &csrf), ("provider", "second")]).await;
    assert_eq!(to_provider.status(), StatusCode::SEE_OTHER);
    let back = other.get(&location(&to_provider)).await;
    other.get(&location(&back)).await;
    let me = body(other.me(&w.app).await, 200).await;
    assert_eq!(me["identities"].as_array().unwrap().len(), 2, "linked: {me}");

    // A first sign-in that was going somewhere (an app's request, say): the whole way round —
    // the page, the chooser, the sign-in, the link's question and the link — ends there.
    w.second.set_next_user(StubUser::new("ada-second-2", "ada@example.com"));
    let mut third = Browser::new();
    let callback = third.start(&w.app, "provider=second&return_to=%2Faccount%3Fdone%3Dlinked").await;
    let page = html(third.navigate(&callback).await, StatusCode::CONFLICT).await;
    let link = "/auth/link?provider=second&return_to=%2Faccount%3Fdone%3Dlinked";
    let encoded: String = url::form_urlencoded::byte_serialize(link.as_bytes()).collect();
    assert!(page.contains(&format!("href=\"/login?return_to={encoded}\"")), "{page}");
    let done = sign_in(&mut third, &w.app, &format!("local&return_to={encoded}")).await;
    assert_eq!(location(&done), link);
    let page = html(third.navigate(&w.app.url(link)).await, StatusCode::OK).await;
    let fields =
        [("csrf", csrf_of(&page)), ("provider", "second".into()), ("return_to", "/account?done=linked".into())];
    assert!(page.contains("name=\"return_to\" value=\"/account?done=linked\""), "{page}");
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let to_provider = third.form(&w.app.url("/auth/link"), &fields).await;
    let back = third.get(&location(&to_provider)).await;
    assert_eq!(location(&third.get(&location(&back)).await), "/account?done=linked");
    assert_eq!(body(third.me(&w.app).await, 200).await["identities"].as_array().unwrap().len(), 3);
}

/// A link flow started by a page of another site (or a redirect through one) would attach
/// whoever the browser is signed in as at the provider to this account: the browser is asked
/// first, with a form of this session's, and nothing starts until it is sent.
async fn a_link_opened_from_another_site_is_confirmed_first(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &w.app, "local").await;
    let sql = w.app.db.sql().await;
    let flows = sql.count("login_states").await;
    let link = w.app.url("/auth/link?provider=second&return_to=%2Faccount%3Fdone%3Dlinked");
    let mut token = String::new();
    for site in ["cross-site", "same-site", "none"] {
        let page = html(browser.request_from(site, Method::GET, &link).await, StatusCode::OK).await;
        assert!(
            page.contains("<form method=\"post\" action=\"/auth/link\">") && page.contains("Link Second"),
            "{page}"
        );
        assert!(page.contains("name=\"return_to\" value=\"/account?done=linked\""), "{page}");
        token = csrf_of(&page);
    }
    // A browser that does not say where the request came from (an older or embedded one) too.
    let page = html(browser.navigate(&link).await, StatusCode::OK).await;
    assert!(page.contains("<form method=\"post\" action=\"/auth/link\">"), "{page}");
    assert_eq!(csrf_of(&page), token, "the session's form");
    assert_eq!(sql.count("login_states").await, flows, "asking starts no flow");
    let post = |csrf: &str| {
        [("csrf", csrf.to_owned()), ("provider", "second".to_owned()), ("return_to", "/account?done=linked".to_owned())]
    };
    let forged = post("forged");
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    html(browser.form(&w.app.url("/auth/link"), &forged).await, StatusCode::FORBIDDEN).await;
    assert_eq!(sql.count("login_states").await, flows, "a forged form starts nothing");
    let sent = post(&token);
    let sent: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = browser.form(&w.app.url("/auth/link"), &sent).await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    assert!(location(&start).starts_with(w.second.issuer()), "to the provider: {}", location(&start));
    let back = browser.get(&location(&start)).await;
    assert_eq!(location(&browser.get(&location(&back)).await), "/account?done=linked");
    assert_eq!(body(browser.me(&w.app).await, 200).await["identities"].as_array().unwrap().len(), 2);
    // Opened from this origin (the account page's link), it starts at once.
    let direct = browser.request_from("same-origin", Method::GET, &w.app.url("/auth/link?provider=local")).await;
    assert_eq!(direct.status(), StatusCode::SEE_OTHER);
    assert!(location(&direct).starts_with(w.local.issuer()), "{}", location(&direct));
}

async fn the_account_page_shows_the_user_and_its_forms_need_the_csrf_token(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    // Without a session: to the chooser, coming back.
    assert_eq!(location(&browser.navigate(&w.app.url("/account")).await), "/login?return_to=%2Faccount");
    sign_in(&mut browser, &w.app, "local").await;
    let page = html(browser.navigate(&w.app.url("/account")).await, StatusCode::OK).await;
    let me = body(browser.me(&w.app).await, 200).await;
    assert!(page.contains("ada@example.com") && page.contains(me["id"].as_str().unwrap()), "{page}");
    assert!(page.contains("cannot be removed"), "the last sign-in method has no remove button");
    assert!(page.contains("href=\"/auth/link?provider=second&#38;return_to=%2Faccount%3Fdone%3Dlinked\""));

    // Link the second provider through the page's link.
    let link = w.app.url("/auth/link?provider=second&return_to=%2Faccount%3Fdone%3Dlinked");
    let start = browser.request_from("same-origin", Method::GET, &link).await;
    let back = browser.get(&location(&start)).await;
    let done = browser.get(&location(&back)).await;
    assert_eq!(location(&done), "/account?done=linked");
    let page = html(browser.navigate(&w.app.url("/account?done=linked")).await, StatusCode::OK).await;
    assert!(page.contains("The sign-in method is linked"), "{page}");
    let token = csrf_of(&page);
    let me = body(browser.me(&w.app).await, 200).await;
    let second = me["identities"][1]["id"].as_str().unwrap().to_owned();
    let unlink = w.app.url(&format!("/account/identities/{second}/unlink"));

    // Without the token, with another session's, or from another site: refused with a page.
    let page = html(browser.form(&unlink, &[]).await, StatusCode::FORBIDDEN).await;
    assert!(page.contains("That form has expired"), "{page}");
    html(browser.form(&unlink, &[("csrf", "forged")]).await, StatusCode::FORBIDDEN).await;
    let mut other = Browser::new();
    sign_in(&mut other, &w.app, "local").await;
    let others = csrf_of(&html(other.navigate(&w.app.url("/account")).await, StatusCode::OK).await);
    assert_ne!(others, token, "one token per session");
    browser.form(&unlink, &[("csrf", &others)]).await;
    assert_eq!(body(browser.me(&w.app).await, 200).await["identities"].as_array().unwrap().len(), 2);

    // With it: done, and back to the page with a notice.
    let made = browser.form(&w.app.url(&format!("/account/identities/{second}/primary")), &[("csrf", &token)]).await;
    assert_eq!(location(&made), "/account?done=primary");
    assert_eq!(body(browser.me(&w.app).await, 200).await["primary_identity_id"], second.as_str());
    // The button asks first: nothing is removed until its page is answered.
    let asked = html(browser.form(&unlink, &[("csrf", &token)]).await, StatusCode::OK).await;
    assert!(asked.contains("Remove your Second sign-in?") && asked.contains("sign in with Second"), "{asked}");
    assert!(!asked.contains("This browser signed in with it"), "{asked}");
    assert_eq!(body(browser.me(&w.app).await, 200).await["identities"].as_array().unwrap().len(), 2);
    let done = confirmed(&mut browser, &unlink, &[("csrf", &token)], "Remove Second sign-in").await;
    assert_eq!(location(&done), "/account?done=unlinked");
    // The confirmation again (a double click whose first answer the browser dropped): done
    // already, not "page not found"; the button of a page shown before: it is gone.
    let again = browser.form(&unlink, &[("csrf", &token), ("confirmed", "yes")]).await;
    assert_eq!(location(&again), "/account?done=unlinked");
    assert_eq!(location(&browser.form(&unlink, &[("csrf", &token)]).await), "/account?done=gone");
    // Made primary from a tab opened before the removal: the page says it is gone.
    let primary = w.app.url(&format!("/account/identities/{second}/primary"));
    assert_eq!(location(&browser.form(&primary, &[("csrf", &token)]).await), "/account?done=gone");
    let page = html(browser.navigate(&w.app.url("/account?done=gone")).await, StatusCode::OK).await;
    assert!(page.contains("That sign-in method is no longer linked"), "{page}");
    let page = html(browser.navigate(&w.app.url("/account?done=unlinked")).await, StatusCode::OK).await;
    assert!(page.contains("The sign-in method was removed."));
    // The last one is refused, as the API does.
    let me = body(browser.me(&w.app).await, 200).await;
    let last = me["identities"][0]["id"].as_str().unwrap().to_owned();
    let refused = browser.form(&w.app.url(&format!("/account/identities/{last}/unlink")), &[("csrf", &token)]).await;
    let page = html(refused, StatusCode::CONFLICT).await;
    assert!(page.contains("You cannot remove your only sign-in method"), "{page}");

    // With another linked again, removing the one this browser signed in with ends its session:
    // the chooser says why.
    let start = browser.request_from("same-origin", Method::GET, &link).await;
    let back = browser.get(&location(&start)).await;
    assert_eq!(location(&browser.get(&location(&back)).await), "/account?done=linked");
    let own_url = w.app.url(&format!("/account/identities/{last}/unlink"));
    let own = confirmed(&mut browser, &own_url, &[("csrf", &token)], "This browser signed in with it").await;
    assert_eq!(location(&own), "/login?return_to=%2Faccount&done=unlinked");
    let page = html(browser.navigate(&w.app.url(&location(&own))).await, StatusCode::OK).await;
    assert!(page.contains("you had signed in with was removed, so you are signed out"), "{page}");
    assert!(page.contains("name=\"return_to\" value=\"/account\""), "{page}");
    // Not said to a browser still signed in, whatever page linked it there.
    let mut signed_in = Browser::new();
    sign_in(&mut signed_in, &w.app, "second").await;
    assert_eq!(signed_in.me(&w.app).await.status(), StatusCode::OK);
    let page = html(signed_in.navigate(&w.app.url(&location(&own))).await, StatusCode::OK).await;
    assert!(page.contains("name=\"return_to\" value=\"/account\"") && !page.contains("id=\"notice\""), "{page}");
    assert_eq!(location(&browser.navigate(&w.app.url("/account")).await), "/login?return_to=%2Faccount");
}

/// Another site (or a link opened from an app) cannot make a signed-in browser sign in again
/// (which would end its session, and might sign it in as someone else): the browser is asked,
/// and the question's own link — a navigation of this origin's — goes ahead.
async fn a_sign_in_sent_from_another_site_asks_a_signed_in_browser_first(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let url = w.app.url("/auth/login?provider=local&return_to=/account");
    // Signed out, a sign-in from anywhere goes to the provider.
    let signed_out = browser.request_from("cross-site", Method::GET, &url).await;
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    sign_in(&mut browser, &w.app, "local").await;
    let session = browser.cookies["tessera_session"].clone();
    // A sibling host of this site's (`same-site`) is asked about just as well.
    let from_sibling = html(browser.request_from("same-site", Method::GET, &url).await, StatusCode::OK).await;
    assert!(from_sibling.contains("You are already signed in"), "{from_sibling}");
    // So is a link opened from a mail or chat app (`none`, as the address bar says).
    let from_an_app = html(browser.request_from("none", Method::GET, &url).await, StatusCode::OK).await;
    assert!(from_an_app.contains("You are already signed in"), "{from_an_app}");
    let forced = browser.request_from("cross-site", Method::GET, &url).await;
    let page = html(forced, StatusCode::OK).await;
    assert!(page.contains("You are already signed in"), "{page}");
    assert!(page.contains("href=\"/account\""), "go on as who it is: {page}");
    assert!(page.contains("href=\"/auth/login?provider=local&#38;return_to=%2Faccount\""), "{page}");
    assert_eq!(browser.cookies["tessera_session"], session, "the session stands");
    assert_eq!(w.app.db.sql().await.count("sessions").await, 1);
    // "Continue" goes to the app's page, but never into one of Tessera's own flows: a click there
    // is a navigation of this origin's, which `/auth/link` would take as the person's own.
    let to = |return_to: &str| {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("provider", "local")
            .append_pair("return_to", return_to)
            .finish();
        w.app.url(&format!("/auth/login?{query}"))
    };
    let app_page =
        html(browser.request_from("cross-site", Method::GET, &to("/settings?tab=1")).await, StatusCode::OK).await;
    assert!(app_page.contains("href=\"/settings?tab=1\""), "{app_page}");
    for flow in [
        "/auth/link?provider=second",
        "/x/../auth/link?provider=second",
        "/.//auth/link?provider=second",
        "/%61uth/link?provider=second",
        "/oauth/authorize?client_id=a",
    ] {
        let page = html(browser.request_from("cross-site", Method::GET, &to(flow)).await, StatusCode::OK).await;
        assert!(page.contains("href=\"/account\""), "{flow}: {page}");
        assert!(
            !page.contains("href=\"/auth/link")
                && !page.contains("href=\"/x/")
                && !page.contains("href=\"/.")
                && !page.contains("href=\"/%61"),
            "{flow}: {page}"
        );
    }
    // The page's link, followed: a same-origin navigation, which goes to the provider.
    let again = browser.request_from("same-origin", Method::GET, &url).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert!(location(&again).starts_with(w.local.issuer()), "{}", location(&again));
}

async fn signing_in_again_replaces_the_browsers_session(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &w.app, "local").await;
    let first = browser.cookies["tessera_session"].clone();
    sign_in(&mut browser, &w.app, "local").await;
    assert_ne!(browser.cookies["tessera_session"], first);
    assert_eq!(w.app.db.sql().await.count("sessions").await, 1, "the old session is revoked");
    let mut old = Browser::new();
    old.cookies.insert("tessera_session".into(), first);
    assert_eq!(old.me(&w.app).await.status(), StatusCode::UNAUTHORIZED);
    // Another user signing in on the same browser replaces it too.
    w.local.set_next_user(StubUser::new("bob-local", "bob@example.com"));
    sign_in(&mut browser, &w.app, "local").await;
    assert_eq!(body(browser.me(&w.app).await, 200).await["email"], "bob@example.com");
    assert_eq!(w.app.db.sql().await.count("sessions").await, 1);
}

/// A signed-in browser on the chooser is told who it is and can go on as them; its buttons, which
/// sign in as someone else (ending the session here), ask the provider for a fresh login, since
/// its own session would pick the same person again.
async fn the_chooser_tells_a_signed_in_browser_who_it_is(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let page = html(browser.navigate(&w.app.url("/login?return_to=/after")).await, StatusCode::OK).await;
    assert!(!page.contains("You are signed in") && !page.contains("prompt=login"), "{page}");
    assert!(!page.contains("href=\"/auth/logout\""), "{page}");
    sign_in(&mut browser, &w.app, "local").await;
    let page = html(browser.navigate(&w.app.url("/login?return_to=/after")).await, StatusCode::OK).await;
    assert!(page.contains("You are signed in as ada@example.com."), "{page}");
    assert!(page.contains("<a class=\"button\" href=\"/after\">Continue as ada@example.com</a>"), "{page}");
    assert!(page.contains("href=\"/auth/logout\""), "the header offers to sign out: {page}");
    for provider in ["local", "second"] {
        let button = format!("href=\"/auth/login?provider={provider}&#38;return_to=%2Fafter&#38;prompt=login\"");
        assert!(page.contains(&button), "{button}: {page}");
    }
    assert!(page.contains("<input type=\"hidden\" name=\"prompt\" value=\"login\">"), "{page}");
    // Going on leads to where the browser was going: an allowed app, or the account page — also
    // for a `return_to` that is one of Tessera's own flows, which a click here must not start.
    for (return_to, to) in [
        ("", "/account"),
        ("?return_to=https%3A%2F%2Fapp.example.com%2Fx", "https://app.example.com/x"),
        ("?return_to=%2Fauth%2Flink%3Fprovider%3Dsecond", "/account"),
    ] {
        let page = html(browser.navigate(&w.app.url(&format!("/login{return_to}"))).await, StatusCode::OK).await;
        assert!(page.contains(&format!("href=\"{to}\">Continue as ada@example.com<")), "{return_to}: {page}");
    }
    // So does the chooser an email with no team sign-in of its own comes to.
    let page = html(browser.navigate(&w.app.url("/login?email=x%40unclaimed.example")).await, StatusCode::OK).await;
    assert!(page.contains("unclaimed.example has no team sign-in") && page.contains("You are signed in as"), "{page}");
    assert!(page.contains("href=\"/auth/login?provider=local&#38;prompt=login\""), "{page}");
    assert_eq!(w.app.db.sql().await.count("sessions").await, 1, "looking at the chooser signs no one out");
    assert_eq!(browser.me(&w.app).await.status(), StatusCode::OK);

    // An app's authorization request that waits on the chooser goes on as the person signed in;
    // one that asked for a new sign-in ("Use another account" on its consent page), which going
    // on cannot give, is declined by a form instead: the app is told, not left waiting.
    let partner = json!({"name": "Partner", "kind": "confidential", "redirect_uris": ["https://app.example.com/cb"],
                         "first_party": false});
    let (client, _) = crate::op_flow::register(&w.app, partner).await;
    let authorize = w.app.url(&format!(
        "/oauth/authorize?response_type=code&client_id={client}&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb\
         &scope=openid&state=s1&nonce=n1&code_challenge={}&code_challenge_method=S256",
        "c".repeat(43)
    ));
    let consent = html(browser.navigate(&authorize).await, StatusCode::OK).await;
    let request_id = crate::op_flow::request_id_of(&consent);
    let fields = [("request_id", request_id.as_str()), ("decision", "another_account")];
    let resume = location(&browser.form(&w.app.url("/oauth/consent"), &fields).await);
    let chooser = location(&browser.request_from("same-origin", Method::GET, &w.app.url(&resume)).await);
    assert!(chooser.starts_with("/login?return_to=%2Foauth%2Fauthorize"), "several providers: {chooser}");
    let page = html(browser.navigate(&w.app.url(&chooser)).await, StatusCode::OK).await;
    assert!(page.contains("Stay signed in as ada@example.com and decline"), "{page}");
    assert!(!page.contains(">Continue as"), "{page}");
    assert_eq!(form_action(&page, "/auth/continue"), "/auth/continue");
    let held = return_to_of(&chooser);
    assert!(page.contains(&format!("name=\"return_to\" value=\"{}\"", held.replace('&', "&#38;"))), "{page}");
    let stay = [("csrf", csrf_of(&page)), ("return_to", held)];
    let stay: Vec<(&str, &str)> = stay.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let told = location(&browser.form(&w.app.url("/auth/continue"), &stay).await);
    assert!(told.starts_with("https://app.example.com/cb?error=access_denied"), "{told}");
    // So is one that another site's server posted (held as sent) asking for a fresh login: a
    // link to it, clicked on this page, would start a new sign-in, not go on as who is signed in.
    let server = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let (_, query) = authorize.split_once('?').unwrap();
    let posted = server
        .post(w.app.url("/oauth/authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("{query}&prompt=login"))
        .send()
        .await
        .unwrap();
    let held = location(&posted);
    assert!(held.starts_with("/oauth/authorize?client_id="), "{held}");
    let chooser =
        format!("/login?return_to={}", url::form_urlencoded::byte_serialize(held.as_bytes()).collect::<String>());
    let page = html(browser.navigate(&w.app.url(&chooser)).await, StatusCode::OK).await;
    assert!(page.contains("Stay signed in as ada@example.com and decline") && !page.contains(">Continue as"), "{page}");
    // A request that waits on the chooser for a sign-in only (a browser that signed in meanwhile,
    // in another tab) is resumed by "Continue as": its consent page.
    let mut fresh = Browser::new();
    let waiting = location(&fresh.navigate(&authorize).await);
    assert!(waiting.starts_with("/login?return_to="), "{waiting}");
    sign_in(&mut fresh, &w.app, "local").await;
    let page = html(fresh.navigate(&w.app.url(&waiting)).await, StatusCode::OK).await;
    let request = return_to_of(&waiting).replace('&', "&#38;");
    assert!(page.contains(&format!("<a class=\"button\" href=\"{request}\">Continue as")), "{page}");
}

async fn logout_confirms_on_a_page_and_its_form_needs_the_token(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let page = html(browser.navigate(&w.app.url("/auth/logout")).await, StatusCode::OK).await;
    assert!(page.contains("You are signed out"), "no session: {page}");
    sign_in(&mut browser, &w.app, "local").await;
    let page = html(browser.navigate(&w.app.url("/auth/logout")).await, StatusCode::OK).await;
    assert!(page.contains("<form method=\"post\" action=\"/auth/logout\">") && page.contains("Sign out?"), "{page}");
    let token = csrf_of(&page);
    html(browser.form(&w.app.url("/auth/logout"), &[("csrf", "forged")]).await, StatusCode::FORBIDDEN).await;
    assert_eq!(browser.me(&w.app).await.status(), StatusCode::OK, "still signed in");
    let page = html(browser.form(&w.app.url("/auth/logout"), &[("csrf", &token)]).await, StatusCode::OK).await;
    assert!(page.contains("You are signed out"));
    assert!(!browser.cookies.contains_key("tessera_session"));
    assert_eq!(w.app.db.sql().await.count("sessions").await, 0);
    // The API's logout is unchanged: 204.
    sign_in(&mut browser, &w.app, "local").await;
    assert_eq!(browser.request(Method::POST, &w.app.url("/auth/logout")).await.status(), StatusCode::NO_CONTENT);
}

async fn the_chooser_lists_providers_and_sends_a_teams_email_to_its_provider(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let page = html(browser.navigate(&w.app.url("/login?return_to=/after")).await, StatusCode::OK).await;
    for name in ["local", "second"] {
        assert!(page.contains(&format!("href=\"/auth/login?provider={name}&#38;return_to=%2Fafter\"")), "{page}");
    }
    // Providers without a built-in or configured icon get a monogram.
    assert!(page.contains("<span class=\"mark\" aria-hidden=\"true\">L</span>Continue with Local"), "{page}");
    assert!(page.contains("<label for=\"email\">") && page.contains("name=\"return_to\" value=\"/after\""));
    let team = body(w.app.bootstrap(&crate::helpers::identity("owner", "owner@acme.example", Some("Acme"))).await, 201)
        .await["team"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let claim = w
        .app
        .client
        .post(w.app.url(&format!("/admin/teams/{team}/domains")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"domain": "acme.example", "issuer": w.second.issuer(), "verified": true}))
        .send()
        .await
        .unwrap();
    assert!(claim.status().is_success(), "{:?}", claim.text().await);
    // The page's form posts the address, so that it stays out of the URL.
    assert!(page.contains("<form class=\"stack\" method=\"post\" action=\"/login\">"), "{page}");
    let login = w.app.url("/login");
    let to = browser.form(&login, &[("email", "someone@ACME.example"), ("return_to", "/after")]).await;
    assert_eq!(location(&to), "/auth/login?provider=second&return_to=%2Fafter");
    // A link that carries the address still works.
    let to = browser.navigate(&w.app.url("/login?email=someone%40ACME.example&return_to=/after")).await;
    assert_eq!(location(&to), "/auth/login?provider=second&return_to=%2Fafter");
    let page = html(browser.form(&login, &[("email", "someone@other.example")]).await, StatusCode::OK).await;
    assert!(page.contains("other.example has no team sign-in of its own"), "{page}");
    let page = html(browser.form(&login, &[("email", "not-an-email")]).await, StatusCode::OK).await;
    assert!(page.contains("role=\"alert\"") && page.contains("value=\"not-an-email\""), "{page}");
    assert!(page.contains("aria-describedby=\"email-hint notice\" aria-invalid=\"true\""), "{page}");
    // A field sent twice is refused rather than one of its values picked.
    let twice = [("email", "someone@ACME.example"), ("return_to", "/after"), ("return_to", "https://evil.example/")];
    let page = html(browser.form(&login, &twice).await, StatusCode::BAD_REQUEST).await;
    assert!(page.contains("at most once"), "{page}");
    let page = html(
        browser.form(&login, &[("email", "a@acme.example"), ("return_to", "https://evil.example/")]).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(page.contains("This sign-in link cannot be used"), "{page}");
    let page =
        html(browser.navigate(&w.app.url("/login?return_to=https://evil.example/")).await, StatusCode::BAD_REQUEST)
            .await;
    assert!(page.contains("This sign-in link cannot be used"));
}

async fn sign_out_everywhere_else_keeps_only_this_browser(backend: Backend) {
    let w = world(backend).await;
    let mut browsers = Vec::new();
    for _ in 0..3 {
        let mut browser = Browser::new();
        sign_in(&mut browser, &w.app, "local").await;
        browsers.push(browser);
    }
    // A session names its device when the browser said which it is (never the raw header).
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let mut labelled = Browser::with_user_agent(Some(firefox));
    sign_in(&mut labelled, &w.app, "local").await;
    let page = html(labelled.navigate(&w.app.url("/account")).await, StatusCode::OK).await;
    assert!(page.contains("Firefox on Linux") && !page.contains("Gecko/20100101"), "{page}");
    browsers.insert(0, labelled);
    let mut here = browsers.pop().unwrap();
    let page = html(here.navigate(&w.app.url("/account")).await, StatusCode::OK).await;
    assert_eq!(page.matches("Another browser").count(), 2, "{page}");
    assert_eq!(page.matches("Firefox on Linux").count(), 1, "{page}");
    let token = csrf_of(&page);
    // A form too large to be read: its page offers the account this browser is signed in to, not
    // a sign-in that would replace the session.
    let huge = "x".repeat(70 * 1024);
    let refused = here.prepared(Method::POST, &w.app.url("/account/sessions/sign-out-others"));
    let refused = refused.header("accept", "text/html").form(&[("csrf", token.as_str()), ("pad", huge.as_str())]);
    let refused = html(refused.send().await.unwrap(), StatusCode::PAYLOAD_TOO_LARGE).await;
    assert!(refused.contains("href=\"/account\"") && !refused.contains("href=\"/login\""), "{refused}");
    let done = here.form(&w.app.url("/account/sessions/sign-out-others"), &[("csrf", &token)]).await;
    assert_eq!(location(&done), "/account?done=signed-out-others");
    assert_eq!(here.me(&w.app).await.status(), StatusCode::OK);
    for mut other in browsers {
        assert_eq!(other.me(&w.app).await.status(), StatusCode::UNAUTHORIZED);
    }
    let page = html(here.navigate(&w.app.url("/account?done=signed-out-others")).await, StatusCode::OK).await;
    assert!(
        !page.contains("Another browser")
            && !page.contains("Firefox on Linux")
            && !page.contains("Sign out everywhere else")
    );
}

/// `/auth/login` without a provider, several configured and none the default (forward-auth's
/// sign-in link, say): the chooser asks, and the sign-in goes back to the same `return_to`.
async fn a_sign_in_without_a_provider_and_no_default_goes_by_the_chooser(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let started = browser.navigate(&w.app.url("/auth/login?return_to=%2Faccount%3Fdone%3Dx")).await;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&started), "/login?return_to=%2Faccount%3Fdone%3Dx");
    let chooser = html(browser.navigate(&w.app.url(&location(&started))).await, StatusCode::OK).await;
    assert!(chooser.contains("href=\"/auth/login?provider=local&#38;return_to=%2Faccount%3Fdone%3Dx\""), "{chooser}");
    let back = sign_in(&mut browser, &w.app, "local&return_to=%2Faccount%3Fdone%3Dx").await;
    assert_eq!(location(&back), "/account?done=x");
    // Without `return_to`, the chooser alone; a `return_to` that may not be used is refused here.
    assert_eq!(location(&Browser::new().navigate(&w.app.url("/auth/login")).await), "/login");
    let page = html(
        Browser::new().navigate(&w.app.url("/auth/login?return_to=https://evil.example/")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(page.contains("This sign-in link cannot be used"), "{page}");
}

/// Two browsers of one person clicking "sign out everywhere else" at once: one of them stays
/// signed in, as after the two clicks one after the other. Each click counts only while its own
/// session lives; were it checked only when the request came in, each could end the other's
/// session and leave the person signed out everywhere.
async fn two_browsers_signing_each_other_out_at_once_leave_one_signed_in(backend: Backend) {
    let w = world(backend).await;
    let sql = w.app.db.sql().await;
    let url = w.app.url("/account/sessions/sign-out-others");
    for round in 0..8 {
        let mut pair = [Browser::new(), Browser::new()];
        for browser in &mut pair {
            sign_in(browser, &w.app, "local").await;
        }
        let mut clicks = Vec::new();
        for browser in &mut pair {
            let token = csrf_of(&html(browser.navigate(&w.app.url("/account")).await, StatusCode::OK).await);
            clicks.push(browser.prepared(Method::POST, &url).header("accept", "text/html").form(&[("csrf", token)]));
        }
        let answers = crate::helpers::send_at_once(&clicks).await;
        let places: Vec<String> = answers.iter().map(location).collect();
        assert_eq!(
            places.iter().filter(|to| *to == "/account?done=signed-out-others").count(),
            1,
            "round {round}: one click signs out the other browser: {places:?}"
        );
        let ended = "/login?return_to=%2Faccount&done=expired";
        assert!(places.contains(&ended.to_owned()), "round {round}: the other signs in again: {places:?}");
        assert_eq!(sql.count("sessions").await, 1, "round {round}: one browser stays signed in");
        // Told that its click did nothing, rather than sent to sign in with no word.
        let loser = places.iter().position(|to| to == ended).unwrap();
        let page = html(pair[loser].navigate(&w.app.url(ended)).await, StatusCode::OK).await;
        assert!(page.contains("Your session here had ended, so nothing was changed"), "{page}");
    }
    // A form of the account page sent once the session has ended (here: deleted) says so too.
    let mut browser = Browser::new();
    sign_in(&mut browser, &w.app, "local").await;
    let token = csrf_of(&html(browser.navigate(&w.app.url("/account")).await, StatusCode::OK).await);
    sql.exec("DELETE FROM sessions").await.unwrap();
    let sent = browser.prepared(Method::POST, &url).header("accept", "text/html").form(&[("csrf", token)]);
    assert_eq!(location(&sent.send().await.unwrap()), "/login?return_to=%2Faccount&done=expired");
}

fn support() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

/// The walk in a real browser. One backend is enough: the pages do not depend on it, and the
/// HTTP stories above run on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_work_in_a_real_browser() {
    let python = std::env::var("TESSERA_TEST_PYTHON")
        .expect("TESSERA_TEST_PYTHON is not set: run the suite with `scripts/test`, which installs Playwright");
    let chromium = std::env::var("TESSERA_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: `scripts/test` installs Debian's chromium");
    assert!(support().join("node_modules/axe-core/axe.min.js").exists(), "axe-core is missing: run `scripts/test`");
    let w = world(Backend::Sqlite).await;
    // An app signing people in through Tessera, for the account choice and the app's sign-out.
    let app = json!({"id": "pages-app", "name": "Pages app", "kind": "confidential", "first_party": true,
                     "redirect_uris": ["https://app.example.com/callback"],
                     "post_logout_redirect_uris": ["https://app.example.com/bye"]});
    body(w.app.admin(reqwest::Method::POST, "/admin/clients").json(&app).send().await.unwrap(), 201).await;
    // A third-party app, for the consent page.
    let partner = json!({"id": "pages-partner", "name": "Pages partner", "kind": "confidential", "first_party": false,
                         "redirect_uris": ["https://app.example.com/callback"]});
    body(w.app.admin(reqwest::Method::POST, "/admin/clients").json(&partner).send().await.unwrap(), 201).await;
    // Kept for people to look at after a run; emptied first, so that only this run's are there.
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut command = Command::new(python);
    command
        .arg("browser_pages.py")
        .current_dir(support())
        .env("TESSERA_URL", w.app.url(""))
        .env("TESSERA_CLIENT_ID", "pages-app")
        .env("TESSERA_PARTNER_ID", "pages-partner")
        .env("SCREENSHOTS", &shots)
        .env("CHROMIUM", &chromium);
    let output = crate::helpers::run_tool(&mut command, "the browser test", std::time::Duration::from_secs(600)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser test failed:\n{stdout}\n{stderr}");
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| panic!("its result: {stdout}"));
    assert!(result["pages"].as_array().unwrap().len() >= 10, "{result}");
    assert!(shots.join("account-phone.png").exists());
}

async fn connected_accounts_are_listed_and_can_be_disconnected(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &w.app, "local").await;
    let me = body(browser.me(&w.app).await, 200).await;
    let team = me["teams"][0]["id"].as_str().unwrap().to_owned();
    let request = json!({
        "connector_key": "issues",
        "profile_kind": "oauth_account",
        "provider": "local",
        "display_name": "My <Issues>",
        "slug": "issues",
        "scopes": ["openid", "issues:read"],
    });
    let created = browser.json(Method::POST, &w.app.url(&format!("/v1/teams/{team}/auth-profiles")), &request).await;
    let link = body(created, 201).await["connect_url"].as_str().unwrap().to_owned();
    let path = url::Url::parse(&link).unwrap().path().to_owned();
    // Opened in a browser without a session: sign in, and come back to the link.
    let page = html(Browser::new().navigate(&link).await, StatusCode::UNAUTHORIZED).await;
    let back = url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>();
    assert!(page.contains(&format!("href=\"/login?return_to={back}\"")), "{page}");
    // Opened by its user: a page naming what is connected, where, by whom, with which
    // permissions — looking does not use the link up.
    let page = html(browser.navigate(&link).await, StatusCode::OK).await;
    let team_name = me["teams"][0]["name"].as_str().unwrap().replace('&', "&#38;").replace('\'', "&#39;");
    for expected in [
        "<title>Connect Issue tracker – Tessera</title>",
        "<span class=\"mark\" aria-hidden=\"true\">L</span><span>Connect Issue tracker</span>",
        "My &#60;Issues&#62;",
        "<span class=\"muted code\">issues</span>",
        &format!("<dt>Team</dt><dd>{team_name}</dd>"),
        "<dt>Account at</dt><dd>Local</dd>",
        "ada@example.com",
        "<li>openid</li><li>issues:read</li>",
        &format!("<form method=\"post\" action=\"{path}\">"),
        "<button type=\"submit\">Continue to Local</button>",
        "<a class=\"button secondary\" href=\"/account\">Cancel</a>",
    ] {
        assert!(page.contains(expected), "{expected}: {page}");
    }
    let sql = w.app.db.sql().await;
    // Its form needs the session's token; a refused post leaves the link usable.
    html(browser.form(&link, &[]).await, StatusCode::FORBIDDEN).await;
    html(browser.form(&link, &[("csrf", "forged")]).await, StatusCode::FORBIDDEN).await;
    assert_eq!(sql.count("connect_tokens").await, 1);
    // Continue: the provider, then the account page (a redirect: reloading it replays nothing),
    // which says it is done and lists the connection.
    let start = browser.form(&link, &[("csrf", &csrf_of(&page))]).await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    assert_eq!(sql.count("connect_tokens").await, 0, "used up");
    let callback = location(&browser.get(&location(&start)).await);
    let done = browser.navigate(&callback).await;
    assert_eq!((done.status(), location(&done)), (StatusCode::SEE_OTHER, "/account?done=connected".to_owned()));
    for _ in 0..2 {
        let page = html(browser.navigate(&w.app.url("/account?done=connected")).await, StatusCode::OK).await;
        assert!(page.contains("The account is connected.") && page.contains("My &#60;Issues&#62;"), "{page}");
    }
    let page = html(browser.navigate(&link).await, StatusCode::NOT_FOUND).await;
    assert!(page.contains("This link was already used or has expired"), "a used link: {page}");
    let page = html(browser.navigate(&w.app.url("/account")).await, StatusCode::OK).await;
    assert!(page.contains("My &#60;Issues&#62;") && page.contains(">connected<"), "{page}");
    assert!(page.contains("<li>issues:read</li>"), "{page}");
    // The connector by its label, and the token's end only while it is to come (a token is
    // refreshed when next used: an idle connection's may be long past).
    assert!(page.contains(" · Issue tracker · team ") && page.contains("token valid until"), "{page}");
    w.app.db.expire_token_in("issues", -60).await;
    let page = html(browser.navigate(&w.app.url("/account")).await, StatusCode::OK).await;
    assert!(page.contains(">connected<") && !page.contains("token valid until"), "a time past: {page}");
    let token = csrf_of(&page);
    // The page's buttons name the connection by its id.
    let id = body(browser.get(&w.app.url(&format!("/v1/teams/{team}/auth-profiles/issues"))).await, 200).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reconnect = w.app.url(&form_action(&page, "/reconnect"));
    let revoke = w.app.url(&form_action(&page, "/revoke"));
    assert_eq!(reconnect, w.app.url(&format!("/account/connections/{team}/{id}/reconnect")));
    // Reconnect: a fresh link, whose start page says so.
    let fresh = location(&browser.form(&reconnect, &[("csrf", &token)]).await);
    assert!(fresh.ends_with("/oauth/start") && fresh != link, "{fresh}");
    let page = html(browser.navigate(&fresh).await, StatusCode::OK).await;
    assert!(page.contains("connected again") && page.contains("Choose the same Local account as before"), "{page}");
    // Renamed since the page was shown, its slug now another profile's (another tab): the
    // page's Disconnect still disconnects the one it showed.
    let profiles = w.app.url(&format!("/v1/teams/{team}/auth-profiles"));
    let renamed = browser.json(Method::PATCH, &format!("{profiles}/{id}"), &json!({"slug": "old-issues"})).await;
    assert_eq!(body(renamed, 200).await["auth_profile"]["slug"], "old-issues", "a profile is named by its id too");
    let other = json!({"connector_key": "openai", "profile_kind": "env", "display_name": "Other", "slug": "issues"});
    body(browser.json(Method::POST, &profiles, &other).await, 201).await;
    html(browser.form(&revoke, &[]).await, StatusCode::FORBIDDEN).await;
    // The button asks first, naming what it ends.
    let asked = html(browser.form(&revoke, &[("csrf", &token)]).await, StatusCode::OK).await;
    assert!(asked.contains("Disconnect My &#60;Issues&#62;?") && asked.contains("for Issue tracker in "), "{asked}");
    assert_eq!(body(browser.get(&format!("{profiles}/old-issues")).await, 200).await["status"], "active");
    let done = confirmed(&mut browser, &revoke, &[("csrf", &token)], "Disconnect My &#60;Issues&#62;?").await;
    assert_eq!(location(&done), "/account?done=revoked");
    let again = browser.form(&revoke, &[("csrf", &token), ("confirmed", "yes")]).await;
    assert_eq!(location(&again), "/account?done=revoked", "again");
    let shown_before = browser.form(&revoke, &[("csrf", &token)]).await;
    assert_eq!(location(&shown_before), "/account?done=connection-gone");
    body(browser.get(&format!("{profiles}/old-issues")).await, 404).await;
    let kept = body(browser.get(&format!("{profiles}/issues")).await, 200).await;
    assert_eq!((&kept["display_name"], &kept["status"]), (&json!("Other"), &json!("pending_auth")));
    let page = html(browser.navigate(&w.app.url("/account?done=revoked")).await, StatusCode::OK).await;
    assert!(page.contains("The account was disconnected.") && !page.contains("My &#60;Issues&#62;"), "{page}");
    // "Reconnect" on a page shown before the disconnection (another tab): said on the account
    // page, not as a mistyped link.
    let gone = location(&browser.form(&reconnect, &[("csrf", &token)]).await);
    assert_eq!(gone, "/account?done=connection-gone");
    let page = html(browser.navigate(&w.app.url(&gone)).await, StatusCode::OK).await;
    assert!(page.contains("That connection no longer exists"), "{page}");
}

/// A connect link opened by the wrong person offers to sign in as the right one — asking the
/// provider for a fresh login, which its own session would otherwise skip, signing the same
/// person in again and again.
async fn signing_in_as_someone_else_asks_the_provider_for_a_fresh_login(backend: Backend) {
    let w = world(backend).await;
    let mut ada = Browser::new();
    sign_in(&mut ada, &w.app, "local").await;
    let team = body(ada.me(&w.app).await, 200).await["teams"][0]["id"].as_str().unwrap().to_owned();
    let request = json!({"connector_key": "issues", "profile_kind": "oauth_account", "provider": "local",
                         "display_name": "Issues"});
    let created = ada.json(Method::POST, &w.app.url(&format!("/v1/teams/{team}/auth-profiles")), &request).await;
    let link = body(created, 201).await["connect_url"].as_str().unwrap().to_owned();
    let path = url::Url::parse(&link).unwrap().path().to_owned();
    let back = url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>();
    w.second.set_next_user(StubUser::new("bob-second", "bob@example.com"));
    let mut bob = Browser::new();
    sign_in(&mut bob, &w.app, "second").await;
    let page = html(bob.navigate(&link).await, StatusCode::FORBIDDEN).await;
    let fresh = format!("/login?return_to={back}&#38;prompt=login");
    assert!(page.contains(&format!("href=\"{fresh}\">Sign in as the right person<")), "{page}");
    // The chooser carries it to every provider, and its email form too.
    let chooser =
        html(bob.navigate(&w.app.url(&format!("/login?return_to={back}&prompt=login"))).await, StatusCode::OK);
    let chooser = chooser.await;
    for provider in ["local", "second"] {
        let button = format!("href=\"/auth/login?provider={provider}&#38;return_to={back}&#38;prompt=login\"");
        assert!(chooser.contains(&button), "{button}: {chooser}");
    }
    assert!(chooser.contains("<input type=\"hidden\" name=\"prompt\" value=\"login\">"), "{chooser}");
    let fields = [("email", "x@nowhere.example"), ("return_to", path.as_str()), ("prompt", "login")];
    let posted = html(bob.form(&w.app.url("/login"), &fields).await, StatusCode::OK).await;
    assert!(posted.contains(&format!("return_to={back}&#38;prompt=login\"")), "{posted}");
    // Its buttons ask the provider for a fresh login; an ordinary sign-in does not.
    let start = |fresh: &str| w.app.url(&format!("/auth/login?provider=local&return_to={back}{fresh}"));
    let asked = bob.request_from("same-origin", Method::GET, &start("&prompt=login")).await;
    let asked = url::Url::parse(&location(&asked)).unwrap();
    assert!(asked.query_pairs().any(|(k, v)| k == "prompt" && v == "login"), "{asked}");
    let ordinary = bob.request_from("same-origin", Method::GET, &start("")).await;
    let ordinary = url::Url::parse(&location(&ordinary)).unwrap();
    assert!(!ordinary.query_pairs().any(|(k, _)| k == "prompt"), "{ordinary}");
    // Another prompt is not one these take: said, not ignored.
    for url in ["/login?prompt=consent", "/auth/login?provider=local&prompt=none"] {
        let page = html(bob.navigate(&w.app.url(url)).await, StatusCode::BAD_REQUEST).await;
        assert!(page.contains("invalid_request"), "{url}: {page}");
    }
    // Sent by another site to such a sign-in while signed in, the browser is asked first, and
    // signing in anew from that page still asks for a fresh login.
    let asked = bob.request_from("cross-site", Method::GET, &start("&prompt=login")).await;
    let asked = html(asked, StatusCode::OK).await;
    assert!(asked.contains("You are already signed in") && asked.contains("&#38;prompt=login\""), "{asked}");
    // A provider that lets the person through on its earlier sign-in is refused, and "Try again"
    // asks afresh again (not a loop back to the same person), without blaming an app.
    w.local.ignore_reauthentication(true);
    let mut again = Browser::new();
    let callback = again.start(&w.app, &format!("provider=local&return_to={back}&prompt=login")).await;
    let refused = again.navigate(&callback).await.text().await.unwrap();
    assert!(refused.contains("A fresh sign-in was asked for") && !refused.contains("The app"), "{refused}");
    assert!(refused.contains(&format!("href=\"{fresh}\">Try again<")), "{refused}");
}

async fn env_profiles_are_connected_and_reconnected_through_a_fresh_form_link(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &w.app, "local").await;
    let me = body(browser.me(&w.app).await, 200).await;
    let team = me["teams"][0]["id"].as_str().unwrap().to_owned();
    let request = json!({"connector_key": "openai", "profile_kind": "env", "display_name": "OpenAI key", "slug": "ai"});
    let created = browser.json(Method::POST, &w.app.url(&format!("/v1/teams/{team}/auth-profiles")), &request).await;
    let first = body(created, 201).await["connect_url"].as_str().unwrap().to_owned();
    // Pending: the account page offers to connect it, with a fresh link to the form.
    let page = html(browser.navigate(&w.app.url("/account")).await, StatusCode::OK).await;
    assert!(page.contains(">not connected yet<") && page.contains(">Connect<span class=\"vh\"> OpenAI key"), "{page}");
    let reconnect = w.app.url(&form_action(&page, "/reconnect"));
    let link = location(&browser.form(&reconnect, &[("csrf", &csrf_of(&page))]).await);
    assert!(link.ends_with("/env") && link != first, "{link}");
    assert_eq!(browser.navigate(&first).await.status(), StatusCode::NOT_FOUND, "the older link is replaced");
    let form = html(browser.navigate(&link).await, StatusCode::OK).await;
    assert!(form.contains("Connect OpenAI") && form.contains("type=\"password\""), "{form}");
    let values = [("csrf", csrf_of(&form)), ("OPENAI_API_KEY", "sk-first-value".into()), ("OPENAI_ORG", String::new())];
    let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let saved = browser.form(&link, &values).await;
    assert_eq!((saved.status(), location(&saved)), (StatusCode::SEE_OTHER, "/account?done=connected".to_owned()));
    let page = html(browser.navigate(&w.app.url("/account?done=connected")).await, StatusCode::OK).await;
    assert!(page.contains("The account is connected.") && page.contains("OpenAI key"), "{page}");
    // Connected: "Reconnect" makes another fresh form link.
    let page = html(browser.navigate(&w.app.url("/account")).await, StatusCode::OK).await;
    assert!(page.contains(">connected<") && page.contains(">Reconnect<span class=\"vh\"> OpenAI key"), "{page}");
    let again = location(&browser.form(&reconnect, &[("csrf", &csrf_of(&page))]).await);
    assert!(again.ends_with("/env") && again != link, "{again}");
    html(browser.navigate(&again).await, StatusCode::OK).await;
    assert_eq!(w.app.db.sql().await.count("connect_tokens").await, 1);
}

async fn providers_show_built_in_configured_or_monogram_icons(backend: Backend) {
    let issuer = LocalIssuer::start().await.unwrap();
    let app = TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        let configured = ProviderConfig {
            icon_url: Some("https://icons.example.com/acme.svg".into()),
            ..provider("acme", ProviderKind::Oidc, &issuer)
        };
        config.providers.push(configured);
        config.providers.push(provider("gitlab", ProviderKind::Oidc, &issuer));
        config.providers.push(provider("corp", ProviderKind::Oidc, &issuer));
    })
    .await;
    let mut browser = Browser::new();
    let chooser = browser.navigate(&app.url("/login")).await;
    let csp = chooser.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("img-src 'self' https://icons.example.com;"), "a configured icon's origin: {csp}");
    let page = html(chooser, StatusCode::OK).await;
    for expected in [
        "<img class=\"icon\" src=\"https://icons.example.com/acme.svg\" alt=\"\" width=\"28\" height=\"28\">Continue with Acme",
        "<img class=\"icon\" src=\"/assets/icons/gitlab.svg\" alt=\"\" width=\"28\" height=\"28\">Continue with GitLab",
        "<span class=\"mark\" aria-hidden=\"true\">C</span>Continue with Corp",
    ] {
        assert!(page.contains(expected), "{expected}: {page}");
    }
    // The built-in icons are served by Tessera itself, as plain SVG that can run nothing.
    for name in ["github", "gitlab", "google", "microsoft", "slack"] {
        let icon = browser.get(&app.url(&format!("/assets/icons/{name}.svg"))).await;
        assert_eq!(icon.status(), StatusCode::OK, "{name}");
        assert_eq!(icon.headers()["content-type"], "image/svg+xml");
        assert_eq!(icon.headers()["x-content-type-options"], "nosniff");
        assert_eq!(icon.headers()["content-security-policy"], "default-src 'none'");
        assert!(icon.text().await.unwrap().starts_with("<svg "), "{name}");
    }
    assert_eq!(body(browser.get(&app.url("/assets/icons/nope.svg")).await, 404).await["code"], "not_found");
    assert_eq!(browser.get(&app.url("/assets/icons/github")).await.status(), StatusCode::NOT_FOUND);
    // A name that does not decode is no icon either: the same problem+json 404, not a plain-text 400.
    assert_eq!(body(browser.get(&app.url("/assets/icons/%FF.svg")).await, 404).await["code"], "not_found");
    // Opened in a browser, the page of any path that does not exist.
    let opened = browser.navigate(&app.url("/assets/icons/nope.svg")).await;
    assert_eq!(opened.status(), StatusCode::NOT_FOUND);
    assert!(opened.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}

/// Served over HTTPS (`auth.cookie_secure`, the default), every answer — pages, redirects, the
/// API, errors — tells browsers to keep to HTTPS; plain-HTTP development does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_deployments_send_strict_transport_security() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for path in ["/login", "/healthz", "/v1/me", "/nowhere", "/"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.headers()["strict-transport-security"], "max-age=31536000", "{path}");
    }
    let plain = TestApp::spawn_with(Backend::Sqlite, |config| config.auth.cookie_secure = false).await;
    let response = plain.client.get(plain.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("strict-transport-security").is_none());
}
