//! Browser sign-in against a local stub OpenID provider (the local issuer's authorization-code
//! flow), driven by a minimal browser that keeps cookies and follows redirects by hand.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tessera::config::{Config, ProviderConfig, ProviderEndpoints, ProviderKind};
use tessera::domain::Issuer;
use tessera_testkit::local_issuer::{LocalIssuer, StubUser, Tamper, TokenFault};

use crate::helpers::{
    Backend, TestApp, TestDb, eventually_within, identity, json as body, on_both_backends, send_at_once,
};
use std::time::Duration;

on_both_backends!(
    a_denial_reaching_an_instance_without_the_providers_discovery_is_a_denial,
    changing_sign_in_methods_needs_a_recent_sign_in,
    a_sign_in_creates_a_user_and_a_session,
    a_sign_out_page_that_cannot_read_the_session_offers_itself_again,
    a_user_who_left_their_default_team_gets_one_at_the_next_sign_in,
    the_session_cookie_is_secure_by_default,
    a_replayed_state_is_refused,
    a_callback_without_the_browser_cookie_is_refused,
    sign_ins_in_several_tabs_each_complete,
    the_provider_comes_from_the_state_not_the_path,
    the_issuer_parameter_is_checked,
    bad_id_tokens_are_refused,
    an_email_from_userinfo_is_verified_only_by_userinfo,
    a_failed_discovery_is_not_retried_by_every_sign_in,
    configured_endpoints_stand_in_for_a_failed_discovery_until_it_is_read,
    an_email_only_userinfo_gives_waits_for_the_discovery_document,
    the_discovery_document_is_read_again_after_its_max_age,
    an_extra_audience_is_accepted_when_trusted,
    open_redirects_are_refused,
    an_expired_state_is_refused,
    a_flow_in_progress_stores_neither_its_pkce_verifier_nor_its_nonce,
    the_state_in_a_url_does_not_complete_the_flow_without_the_browsers_cookie,
    provider_failures_have_clear_codes,
    concurrent_callbacks_complete_exactly_once,
    concurrent_first_sign_ins_of_one_person_make_one_user,
    first_sign_ins_of_one_email_through_several_identities_at_once_make_one_account,
    concurrent_sign_outs_end_the_session_once,
    linking_attaches_an_identity_and_never_steals_one,
    a_known_email_is_not_linked_silently,
    automatic_linking_needs_trust_and_verified_emails,
    an_unverified_sign_in_keeps_nobody_out_when_its_issuer_is_also_allowed,
    identities_can_be_chosen_and_unlinked_but_not_the_last,
    the_last_identity_a_configured_provider_signs_in_with_stays,
    unlinking_an_identity_signs_out_the_sessions_that_used_it,
    an_unlinked_identity_stops_resolving_to_its_old_user_at_once,
    a_sign_in_whose_identity_goes_meanwhile_says_so,
    sessions_end_when_idle_expired_or_logged_out,
    a_session_in_use_never_reaches_a_short_idle_timeout,
    a_shared_session_cookie_reaches_forward_auth_on_sibling_hosts,
    forward_auth_sends_a_browser_to_sign_in_and_back,
);

pub const CLIENT_ID: &str = "tessera-test";
pub const CLIENT_SECRET: &str = "stub-secret-0123456789";

/// A provider configuration for a local issuer.
pub fn provider(name: &str, kind: ProviderKind, issuer: &LocalIssuer) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        kind,
        client_id: CLIENT_ID.into(),
        client_secret: Some(SecretString::from(CLIENT_SECRET)),
        scopes: vec!["openid".into(), "profile".into(), "email".into()],
        issuer: Issuer::parse(issuer.issuer()).unwrap(),
        endpoints: ProviderEndpoints::default(),
        algorithms: tessera::config::DEFAULT_ALGORITHMS.to_vec(),
        trusted_email_verification: false,
        auto_link_by_email: false,
        store_tokens: false,
        protocol: tessera::config::ProviderProtocol::default(),
        icon_url: None,
    }
}

/// A browser: keeps cookies, follows redirects by hand.
pub struct Browser {
    client: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

impl Browser {
    pub fn new() -> Self {
        Self::with_user_agent(None)
    }

    /// A browser that sends `user_agent` (none by default, as reqwest).
    pub fn with_user_agent(user_agent: Option<&str>) -> Self {
        let mut builder = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none());
        if let Some(agent) = user_agent {
            builder = builder.user_agent(agent);
        }
        Self { client: builder.build().unwrap(), cookies: HashMap::new() }
    }

    pub async fn request(&mut self, method: Method, url: &str) -> reqwest::Response {
        self.send(self.client.request(method, url)).await
    }

    /// A request carrying the cookies, not sent (to send with others at once); the cookies it
    /// gets back are not kept.
    pub fn prepared(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.client.request(method, url).header("cookie", self.cookie_header())
    }

    /// The `Cookie` header of the cookies held.
    fn cookie_header(&self) -> String {
        let pairs: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join("; ")
    }

    /// A request that the browser marks as sent from a page of `site` (`Sec-Fetch-Site`:
    /// `same-origin`, `same-site`, `cross-site` or `none`), carrying the cookies.
    pub async fn request_from(&mut self, site: &str, method: Method, url: &str) -> reqwest::Response {
        self.send(self.client.request(method, url).header("sec-fetch-site", site)).await
    }

    /// A request with a JSON body, carrying the cookies.
    pub async fn json(&mut self, method: Method, url: &str, body: &serde_json::Value) -> reqwest::Response {
        self.send(self.client.request(method, url).json(body)).await
    }

    /// A form post, as a browser's, carrying the cookies.
    pub async fn form(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.send(self.client.post(url).header("accept", "text/html").form(form)).await
    }

    /// A navigation that asks for HTML, as a browser's does.
    pub async fn navigate(&mut self, url: &str) -> reqwest::Response {
        self.send(self.client.get(url).header("accept", "text/html,application/xhtml+xml")).await
    }

    async fn send(&mut self, mut request: reqwest::RequestBuilder) -> reqwest::Response {
        if !self.cookies.is_empty() {
            request = request.header("cookie", self.cookie_header());
        }
        let response = request.send().await.unwrap();
        for set in response.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        response
    }

    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        self.request(Method::GET, url).await
    }

    /// Opens an OAuth connect link as a person does: its start page, then the page's "Continue"
    /// form (with the CSRF token); returns the form's answer (303 to the provider when all is
    /// well).
    pub async fn open_connect_link(&mut self, link: &str) -> reqwest::Response {
        let page = self.navigate(link).await;
        let status = page.status();
        let text = page.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "the start page: {text}");
        let field = "name=\"csrf\" value=\"";
        let token = text.split(field).nth(1).expect("a CSRF field").split('"').next().unwrap().to_owned();
        self.form(link, &[("csrf", &token)]).await
    }

    /// Starts a sign-in and follows it to the provider; returns the callback URL the provider
    /// sends the browser to (not yet visited).
    pub async fn start(&mut self, app: &TestApp, query: &str) -> String {
        let login = self.get(&app.url(&format!("/auth/login?{query}"))).await;
        assert_eq!(login.status(), StatusCode::SEE_OTHER, "{:?}", login.text().await);
        let authorize = location(&login);
        let provider = self.get(&authorize).await;
        assert!(provider.status().is_redirection(), "the stub provider redirects back");
        location(&provider)
    }

    /// Starts linking another provider's account (`query`: `provider=…`) from this browser's
    /// session, as the account page's own link does, and follows it to the provider; returns the
    /// callback URL the provider sends the browser to (not yet visited).
    pub async fn start_link(&mut self, app: &TestApp, query: &str) -> String {
        let start = self.request_from("same-origin", Method::GET, &app.url(&format!("/auth/link?{query}"))).await;
        assert_eq!(start.status(), StatusCode::SEE_OTHER, "{:?}", start.text().await);
        let provider = self.get(&location(&start)).await;
        assert!(provider.status().is_redirection(), "the stub provider redirects back");
        location(&provider)
    }

    /// Visits a connect flow's callback and, when it connected, the account page it sends the
    /// browser to (a 303, so that reloading replays nothing); returns that page, or the
    /// callback's refusal.
    pub async fn finish_connect(&mut self, callback: &str) -> reqwest::Response {
        let answer = self.navigate(callback).await;
        if answer.status() != StatusCode::SEE_OTHER {
            return answer;
        }
        assert_eq!(location(&answer), "/account?done=connected");
        let account = url::Url::parse(callback).unwrap().join("/account?done=connected").unwrap();
        self.navigate(account.as_str()).await
    }

    /// A whole sign-in; returns the callback's response.
    pub async fn sign_in(&mut self, app: &TestApp, query: &str) -> reqwest::Response {
        let callback = self.start(app, query).await;
        self.get(&callback).await
    }

    pub async fn me(&mut self, app: &TestApp) -> reqwest::Response {
        self.get(&app.url("/v1/me")).await
    }
}

pub fn location(response: &reqwest::Response) -> String {
    response.headers().get("location").expect("a Location header").to_str().unwrap().to_owned()
}

/// Replaces one query parameter of a URL.
pub(crate) fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> =
        parsed.query_pairs().filter(|(k, _)| k != name).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (k, v) in &pairs {
            query.append_pair(k, v);
        }
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    parsed.to_string()
}

pub(crate) struct World {
    pub(crate) app: TestApp,
    pub(crate) issuer: LocalIssuer,
    config: Config,
}

impl World {
    /// Another instance on the same database, with the same configuration.
    pub(crate) async fn another(&self) -> TestApp {
        TestApp::start(self.app.db.share(), &self.config).await
    }
}

pub(crate) async fn world(backend: Backend) -> World {
    world_with(backend, |_, _| {}).await
}

pub(crate) async fn world_with(backend: Backend, adjust: impl FnOnce(&mut Config, &LocalIssuer)) -> World {
    let issuer = LocalIssuer::start().await.unwrap();
    issuer.set_client(CLIENT_ID, CLIENT_SECRET);
    let mut kept = None;
    let app = TestApp::spawn_with(backend, |config| {
        config.auth.cookie_secure = false;
        config.providers.push(provider("local", ProviderKind::Oidc, &issuer));
        config.auth.default_provider = Some("local".into());
        config.auth.return_to_origins = vec!["https://app.example.com".into()];
        adjust(config, &issuer);
        kept = Some(config.clone());
    })
    .await;
    World { app, issuer, config: kept.expect("configured") }
}

async fn a_sign_in_creates_a_user_and_a_session(backend: Backend) {
    let w = world(backend).await;
    let mut user = StubUser::new("alice-sub", "alice@example.com");
    user.name = Some("Alice Liddell".into());
    w.issuer.set_next_user(user);
    let mut browser = Browser::new();
    let done = browser.sign_in(&w.app, "provider=local&return_to=/welcome").await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/welcome");
    assert_eq!(done.headers()["referrer-policy"], "no-referrer");
    assert!(browser.cookies.contains_key("tessera_session"));
    assert!(!browser.cookies.contains_key("tessera_login"), "the binding cookie is cleared");

    let me = body(browser.me(&w.app).await, 200).await;
    assert_eq!(me["email"], "alice@example.com");
    // The provider said verified, but its word is not trusted (`trusted_email_verification`).
    assert_eq!(me["email_verified"], false);
    assert_eq!(me["identities"][0]["provider"], "local");
    assert_eq!(me["identities"][0]["issuer"], w.issuer.issuer());
    assert_eq!(me["identities"][0]["subject"], "alice-sub");
    assert_eq!(me["teams"][0]["name"], "Alice's Team");
    assert_eq!(me["primary_identity_id"], me["identities"][0]["id"]);

    // Signing in again (default provider, no return_to) is the same user.
    let mut again = Browser::new();
    let second = again.sign_in(&w.app, "").await;
    assert_eq!(location(&second), "/");
    assert_eq!(body(again.me(&w.app).await, 200).await["id"], me["id"]);
    assert_eq!(w.app.db.sql().await.count("users").await, 1);
    assert_eq!(w.app.db.sql().await.count("sessions").await, 2);
    assert_eq!(w.app.db.sql().await.count("login_states").await, 0, "states are consumed");
    let providers = body(w.app.client.get(w.app.url("/auth/providers")).send().await.unwrap(), 200).await;
    assert_eq!(providers["providers"][0]["name"], "local");
}

/// As a bootstrap or a just-in-time token does: the returning sign-in (one statement) and the
/// longer way (a browser signed in already) alike.
async fn a_user_who_left_their_default_team_gets_one_at_the_next_sign_in(backend: Backend) {
    let w = world(backend).await;
    w.issuer.set_next_user(StubUser::new("lee", "lee@example.com"));
    let mut signed_in = Browser::new();
    signed_in.sign_in(&w.app, "").await;
    let me = body(signed_in.me(&w.app).await, 200).await;
    let user = me["id"].as_str().unwrap().to_owned();
    let stayer = body(w.app.bootstrap(&identity("stayer", "stayer@example.com", None)).await, 201).await;
    let leave = |team: String| {
        let (app, stayer, user) = (&w.app, stayer["user_id"].clone(), user.clone());
        async move {
            let members = format!("/admin/teams/{team}/members");
            let add = json!({"user_id": stayer, "role": "owner"});
            assert!(app.admin(Method::POST, &members).json(&add).send().await.unwrap().status().is_success());
            let left = app.admin(Method::DELETE, &format!("{members}/{user}")).send().await.unwrap();
            assert_eq!(left.status(), StatusCode::NO_CONTENT);
        }
    };
    let default_team = |me: &Value| {
        let teams = me["teams"].as_array().unwrap();
        teams.iter().find(|t| t["is_default"] == true).map(|t| t["id"].as_str().unwrap().to_owned())
    };
    let mut teams = vec![default_team(&me).unwrap()];
    for mut browser in [signed_in, Browser::new()] {
        leave(teams.last().unwrap().clone()).await;
        let read = w.app.admin(Method::GET, &format!("/admin/users/{user}")).send().await.unwrap();
        assert_eq!(default_team(&body(read, 200).await), None, "left");
        browser.sign_in(&w.app, "").await;
        let me = body(browser.me(&w.app).await, 200).await;
        assert_eq!(me["id"], user.as_str());
        let team = default_team(&me).expect("a default team again");
        assert!(!teams.contains(&team));
        teams.push(team);
    }
}

async fn the_session_cookie_is_secure_by_default(backend: Backend) {
    let w = world_with(backend, |config, _| config.auth.cookie_secure = true).await;
    let mut browser = Browser::new();
    let login = browser.get(&w.app.url("/auth/login")).await;
    let login_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(login_cookie.starts_with("__Host-tessera_login="), "{login_cookie}");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure", "Max-Age=600"] {
        assert!(login_cookie.contains(attribute), "{attribute} in {login_cookie}");
    }
    let provider = browser.get(&location(&login)).await;
    let done = browser.get(&location(&provider)).await;
    let session = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-tessera_session="))
        .expect("a session cookie");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(session.contains(attribute), "{attribute} in {session}");
    }
    // Only a hash of the cookie is stored.
    let value = session.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    assert_eq!(value.len(), 43, "256 random bits");
    let sql = w.app.db.sql().await;
    let hash = tessera::crypto::sha256(value.as_bytes());
    let literal = match &sql {
        crate::helpers::Sql::Sqlite(_) => format!("X'{}'", hex(&hash)),
        crate::helpers::Sql::Postgres(_) => format!("'\\x{}'::bytea", hex(&hash)),
    };
    assert_eq!(sql.count(&format!("sessions WHERE token_hash = {literal}")).await, 1);
    assert_eq!(body(browser.me(&w.app).await, 200).await["identities"][0]["subject"], "stub-user");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn a_replayed_state_is_refused(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let callback = browser.start(&w.app, "").await;
    let login_cookie = browser.cookies["tessera_login"].clone();
    assert_eq!(browser.get(&callback).await.status(), StatusCode::SEE_OTHER);
    browser.cookies.insert("tessera_login".into(), login_cookie.clone());
    let replay = browser.get(&callback).await;
    assert_eq!(body(replay, 400).await["code"], "invalid_state");
    // A person replays it (the provider's redirect, from the browser's history): the page keeps
    // them signed in and offers their account, not a sign-in that would end their session.
    browser.cookies.insert("tessera_login".into(), login_cookie);
    let page = browser.prepared(Method::GET, &callback).header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    let page = page.text().await.unwrap();
    assert!(page.contains("Go to your account") && !page.contains("Try again"), "{page}");
    assert_eq!(body(browser.me(&w.app).await, 200).await["identities"][0]["subject"], "stub-user");
}

async fn a_callback_without_the_browser_cookie_is_refused(backend: Backend) {
    let w = world(backend).await;
    let mut victim = Browser::new();
    let callback = victim.start(&w.app, "").await;
    // Another browser (an attacker's forged link, or a cross-site request) has no binding cookie.
    let mut other = Browser::new();
    assert_eq!(body(other.get(&callback).await, 400).await["code"], "invalid_state");
    other.cookies.insert("tessera_login".into(), "guessed".into());
    assert_eq!(body(other.get(&callback).await, 400).await["code"], "invalid_state");
    assert_eq!(w.app.db.sql().await.count("sessions").await, 0);
    // Nor does a callback in the victim's own browser that matches no flow (anyone can send a
    // browser to a callback URL; another tab's sign-in may be under way): its cookie stays.
    let junk = w.app.url("/auth/callback/local?state=not-a-state&code=x");
    assert_eq!(body(victim.get(&junk).await, 400).await["code"], "invalid_state");
    assert!(victim.cookies.contains_key("tessera_login"), "the sign-in cookie is left alone");
    // The refused attempts did not burn the victim's sign-in.
    assert_eq!(victim.get(&callback).await.status(), StatusCode::SEE_OTHER);
    let missing_state = with_param(&callback, "state", None);
    assert_eq!(body(victim.get(&missing_state).await, 400).await["code"], "invalid_state");
}

async fn sign_ins_in_several_tabs_each_complete(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    // Five tabs start a sign-in each; the cookie keeps the newest four.
    let mut callbacks = Vec::new();
    for _ in 0..5 {
        callbacks.push(browser.start(&w.app, "").await);
    }
    assert_eq!(browser.cookies["tessera_login"].split('.').count(), 4);
    let oldest = callbacks.remove(0);
    assert_eq!(body(browser.get(&oldest).await, 400).await["code"], "invalid_state");
    let held = browser.cookies["tessera_login"].clone();
    // The others complete in any order, each leaving the rest under way.
    for (done, callback) in [3, 0, 2, 1].into_iter().map(|i| callbacks[i].clone()).enumerate() {
        let answer = browser.get(&callback).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "tab {done}");
        let left = browser.cookies.get("tessera_login").map_or(0, |v| v.split('.').count());
        assert_eq!(left, 3 - done, "after {} sign-ins", done + 1);
    }
    assert!(!browser.cookies.contains_key("tessera_login"), "the last one clears the cookie");
    assert_eq!(body(browser.me(&w.app).await, 200).await["identities"][0]["subject"], "stub-user");
    // Each completed once: a replayed one is refused.
    browser.cookies.insert("tessera_login".into(), held);
    assert_eq!(body(browser.get(&callbacks[0]).await, 400).await["code"], "invalid_state");
    // Its secret, whose flow is gone, is dropped from the cookie; the others are left as they are.
    assert_eq!(browser.cookies["tessera_login"].split('.').count(), 3);
}

/// The `state` parameter of a callback URL.
pub(crate) fn state_of(callback: &str) -> String {
    let url = url::Url::parse(callback).unwrap();
    url.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned()
}

async fn the_provider_comes_from_the_state_not_the_path(backend: Backend) {
    let w = world_with(backend, |config, issuer| {
        config.providers.push(provider("other", ProviderKind::Oidc, issuer));
    })
    .await;
    let mut browser = Browser::new();
    let callback = browser.start(&w.app, "provider=local").await;
    let swapped = callback.replace("/auth/callback/local", "/auth/callback/other");
    assert_eq!(body(browser.get(&swapped).await, 400).await["code"], "provider_mismatch");
    assert!(!browser.cookies.contains_key("tessera_login"), "its flow is gone, and so is its secret");
    let unknown = body(browser.get(&w.app.url("/auth/login?provider=nope")).await, 404).await;
    assert_eq!(unknown["code"], "unknown_provider");
    assert!(unknown["detail"].as_str().unwrap().contains("\"nope\""), "{unknown}");
    // A name that could be no provider's (a secret pasted there, a page of text) is not repeated.
    let pasted = format!("ghp_{}", "Ab1".repeat(2000));
    let unknown = body(browser.get(&w.app.url(&format!("/auth/login?provider={pasted}"))).await, 404).await;
    assert_eq!(unknown["code"], "unknown_provider");
    assert!(!unknown["detail"].as_str().unwrap().contains("Ab1"), "{unknown}");
}

async fn the_issuer_parameter_is_checked(backend: Backend) {
    let w = world(backend).await;
    w.issuer.send_iss(true);
    let mut browser = Browser::new();
    let callback = browser.start(&w.app, "").await;
    assert!(callback.contains("iss="), "the provider sends iss");
    let forged = with_param(&callback, "iss", Some("https://evil.example.com"));
    assert_eq!(body(browser.get(&forged).await, 400).await["code"], "issuer_mismatch");

    let callback = browser.start(&w.app, "").await;
    let stripped = with_param(&callback, "iss", None);
    assert_eq!(body(browser.get(&stripped).await, 400).await["code"], "issuer_mismatch", "advertised, so required");

    // An error response is checked as well (RFC 9207 2.4): one in another issuer's name is a
    // mix-up, not this provider denying the sign-in.
    let callback = browser.start(&w.app, "").await;
    let denied = with_param(&with_param(&callback, "code", None), "error", Some("access_denied"));
    let forged = with_param(&denied, "iss", Some("https://evil.example.com"));
    assert_eq!(body(browser.get(&forged).await, 400).await["code"], "issuer_mismatch");
    let callback = browser.start(&w.app, "").await;
    let denied = with_param(&with_param(&callback, "code", None), "error", Some("access_denied"));
    assert_eq!(body(browser.get(&denied).await, 400).await["code"], "provider_denied", "{denied}");

    let callback = browser.start(&w.app, "").await;
    assert_eq!(browser.get(&callback).await.status(), StatusCode::SEE_OTHER);
}

async fn bad_id_tokens_are_refused(backend: Backend) {
    let w = world(backend).await;
    for tamper in [
        Tamper::WrongNonce,
        Tamper::WrongAudience,
        Tamper::OtherAuthorizedParty,
        Tamper::ExtraAudience,
        Tamper::WrongIssuer,
        Tamper::Expired,
        Tamper::IssuedInTheFuture,
        Tamper::NoIssuedAt,
        Tamper::ForgedSignature,
        Tamper::AncientAuthTime,
    ] {
        w.issuer.tamper_next_id_token(tamper);
        let mut browser = Browser::new();
        let response = browser.sign_in(&w.app, "").await;
        assert_eq!(body(response, 400).await["code"], "invalid_id_token", "{tamper:?}");
        assert!(!browser.cookies.contains_key("tessera_session"));
    }
    assert_eq!(w.app.db.sql().await.count("users").await, 0);
}

/// An id_token that names another audience besides the client is accepted once the provider
/// entry trusts that audience.
async fn an_extra_audience_is_accepted_when_trusted(backend: Backend) {
    let w = world_with(backend, |config, _| {
        let local = config.providers.iter_mut().find(|p| p.name == "local").unwrap();
        local.protocol.trusted_audiences = vec!["other-api".into()];
    })
    .await;
    w.issuer.tamper_next_id_token(Tamper::ExtraAudience);
    assert_eq!(Browser::new().sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(w.app.db.sql().await.count("users").await, 1);
}

/// An id_token without an email, whose userinfo has one: the email is verified only if
/// userinfo says so (the id_token's `email_verified` is about no email of its own).
async fn an_email_from_userinfo_is_verified_only_by_userinfo(backend: Backend) {
    let w = world_with(backend, |config, _| {
        config.providers.iter_mut().find(|p| p.name == "local").unwrap().trusted_email_verification = true;
    })
    .await;
    let mut user = StubUser::new("userinfo-email", "ui@example.com");
    user.email_verified = false;
    w.issuer.set_next_user(user);
    w.issuer.tamper_next_id_token(Tamper::EmailOnlyInUserinfo);
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    let me = body(browser.me(&w.app).await, 200).await;
    assert_eq!((&me["email"], &me["email_verified"]), (&json!("ui@example.com"), &json!(false)), "{me}");
}

/// A provider whose discovery fails is not asked again by every sign-in in turn: until the
/// failure back-off has passed, sign-ins are answered at once.
async fn a_failed_discovery_is_not_retried_by_every_sign_in(backend: Backend) {
    let w = world_with(backend, |config, _| config.jwks.failure_backoff = std::time::Duration::from_secs(60)).await;
    w.issuer.set_available(false);
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let logins: Vec<_> = (0..6)
        .map(|_| {
            let request = client.get(w.app.url("/auth/login")).header("accept", "application/json");
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();
    for login in logins {
        assert_eq!(body(login.await.unwrap(), 502).await["code"], "provider_unavailable");
    }
    w.issuer.set_available(true);
    assert_eq!(body(Browser::new().get(&w.app.url("/auth/login")).await, 502).await["code"], "provider_unavailable");
    assert_eq!(w.issuer.discovery_fetches(), 1, "one discovery for all of them");
}

/// With the authorization, token and keys endpoints configured, a sign-in goes ahead while
/// discovery fails; the discovery document (for userinfo, revocation and the `iss` flag) is read
/// again once the back-off has passed, not left out until the process restarts. Without the
/// keys' endpoint, whose address the document gives, no id token could be checked: the sign-in
/// is refused before the browser goes to the provider, not after its code is spent.
async fn configured_endpoints_stand_in_for_a_failed_discovery_until_it_is_read(backend: Backend) {
    let configured = |jwks: bool| move |config: &mut Config, _: &LocalIssuer| endpoints_configured(config, jwks);
    let without_keys = world_with(backend, configured(false)).await;
    without_keys.issuer.set_available(false);
    let refused = Browser::new().get(&without_keys.app.url("/auth/login")).await;
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY, "not sent to the provider");

    let w = world_with(backend, configured(true)).await;
    let start = || async {
        let started = Browser::new().get(&w.app.url("/auth/login")).await;
        assert_eq!(started.status(), StatusCode::SEE_OTHER);
        assert!(location(&started).starts_with(w.issuer.issuer()), "to the provider: {}", location(&started));
    };
    w.issuer.set_available(false);
    start().await;
    assert_eq!(w.issuer.discovery_fetches(), 1);
    w.issuer.set_available(true);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    start().await;
    assert_eq!(w.issuer.discovery_fetches(), 2, "read again once the back-off passed");
    start().await;
    assert_eq!(w.issuer.discovery_fetches(), 2, "and kept once read");
}

/// The `local` provider with its authorization and token endpoints (and its keys' with `jwks`)
/// configured, discovery retried after 100 ms.
fn endpoints_configured(config: &mut Config, jwks: bool) {
    config.jwks.failure_backoff = std::time::Duration::from_millis(100);
    let local = config.providers.iter_mut().find(|p| p.name == "local").unwrap();
    let issuer = local.issuer.as_str().trim_end_matches('/').to_owned();
    local.endpoints.authorization = Some(format!("{issuer}/authorize").parse().unwrap());
    local.endpoints.token = Some(format!("{issuer}/token").parse().unwrap());
    if jwks {
        local.endpoints.jwks = Some(format!("{issuer}/jwks").parse().unwrap());
    }
}

/// With the endpoints configured but not `userinfo_endpoint`, while discovery cannot be read: an
/// id token without an email is not taken for a person without one at a first sign-in (their
/// email may be the one an account holds, and a sign-in without it would make them a second
/// account): it waits for the document, 502 `provider_unavailable`, and asks for a link once it
/// is read. Someone who signed in before needs no email and goes on.
async fn an_email_only_userinfo_gives_waits_for_the_discovery_document(backend: Backend) {
    let w = world_with(backend, |config, local_issuer| {
        // For the admin API's bootstrap of the account that holds the email.
        config.issuers.push(crate::helpers::local_issuer_config(local_issuer));
        endpoints_configured(config, true);
    })
    .await;
    let holder = json!({"issuer": w.issuer.issuer(), "subject": "the-holder", "email": "ui@example.com"});
    body(w.app.bootstrap(&holder).await, 201).await;
    w.issuer.set_discovery_available(false);
    w.issuer.set_next_user(StubUser::new("the-holder", "ui@example.com"));
    w.issuer.tamper_next_id_token(Tamper::EmailOnlyInUserinfo);
    assert_eq!(Browser::new().sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER, "a returning user");
    w.issuer.set_next_user(StubUser::new("newcomer", "ui@example.com"));
    w.issuer.tamper_next_id_token(Tamper::EmailOnlyInUserinfo);
    let refused = Browser::new().sign_in(&w.app, "").await;
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY, "not signed in without the email");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("users").await, 1, "no second account");

    w.issuer.set_discovery_available(true);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    w.issuer.set_next_user(StubUser::new("newcomer", "ui@example.com"));
    w.issuer.tamper_next_id_token(Tamper::EmailOnlyInUserinfo);
    let asked = Browser::new().sign_in(&w.app, "").await;
    assert_eq!(asked.status(), StatusCode::CONFLICT, "the email is the holder's: a link is asked for");
    assert_eq!(sql.count("users").await, 1);
}

/// Discovered endpoints are kept for the document's `max-age`, then read again by the next
/// sign-in; while the document cannot be read again, the endpoints read before stay in use.
async fn the_discovery_document_is_read_again_after_its_max_age(backend: Backend) {
    let w = world_with(backend, |config, issuer| {
        config.jwks.min_max_age = std::time::Duration::from_secs(1);
        config.jwks.failure_backoff = std::time::Duration::from_millis(100);
        issuer.set_discovery_max_age(1);
    })
    .await;
    let start = || async {
        let started = Browser::new().get(&w.app.url("/auth/login")).await;
        assert_eq!(started.status(), StatusCode::SEE_OTHER);
        let to = location(&started);
        assert!(to.starts_with(&format!("{}/authorize", w.issuer.issuer())), "to the provider: {to}");
    };
    start().await;
    let read = w.issuer.discovery_fetches();
    let past_max_age = || tokio::time::sleep(std::time::Duration::from_millis(1100));
    past_max_age().await;
    start().await;
    assert_eq!(w.issuer.discovery_fetches(), read + 1, "read again once its max-age passed");

    w.issuer.set_available(false);
    past_max_age().await;
    start().await; // with the endpoints read before
    assert_eq!(w.issuer.discovery_fetches(), read + 2, "tried");
}

async fn open_redirects_are_refused(backend: Backend) {
    let w = world(backend).await;
    let payloads = [
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/%2F%2Fevil.example",
        "/%252F%252Fevil.example",
        "/%5Cevil.example",
        "/\t/evil.example",
        "https://evil.example/",
        "https://app.example.com.evil.example/",
        "https://app.example.com@evil.example/",
        "http://app.example.com/",
        "javascript:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        "https:evil.example",
        "evil.example",
    ];
    for payload in payloads {
        let encoded: String = url::form_urlencoded::byte_serialize(payload.as_bytes()).collect();
        let response = w.app.client.get(w.app.url(&format!("/auth/login?return_to={encoded}"))).send().await.unwrap();
        assert_eq!(body(response, 400).await["code"], "invalid_return_to", "{payload:?}");
    }
    assert_eq!(w.app.db.sql().await.count("login_states").await, 0, "nothing was started");
    let mut browser = Browser::new();
    let allowed = browser.sign_in(&w.app, "return_to=https%3A%2F%2Fapp.example.com%2Fhome").await;
    assert_eq!(location(&allowed), "https://app.example.com/home");
    // An empty one (an app's template left it unfilled) is none, as at `/login`.
    let unfilled = Browser::new().sign_in(&w.app, "return_to=").await;
    assert_eq!(location(&unfilled), "/");
}

async fn an_expired_state_is_refused(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let callback = browser.start(&w.app, "").await;
    let sql = w.app.db.sql().await;
    let past = if backend == Backend::Sqlite { "1" } else { "now() - interval '1 minute'" };
    sql.exec(&format!("UPDATE login_states SET expires_at = {past}")).await.unwrap();
    assert_eq!(body(browser.get(&callback).await, 400).await["code"], "invalid_state");
}

/// The authorization request a sign-in sends the browser to, and its parameters.
async fn authorization_request(browser: &mut Browser, app: &TestApp) -> (url::Url, HashMap<String, String>) {
    authorization_request_to(browser, app, "/auth/login").await
}

/// [`authorization_request`] of the sign-in `login` (a path and query) starts.
async fn authorization_request_to(
    browser: &mut Browser,
    app: &TestApp,
    login: &str,
) -> (url::Url, HashMap<String, String>) {
    let login = browser.get(&app.url(login)).await;
    let authorize = url::Url::parse(&location(&login)).unwrap();
    let params = authorize.query_pairs().into_owned().collect();
    (authorize, params)
}

async fn a_flow_in_progress_stores_neither_its_pkce_verifier_nor_its_nonce(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    // Where the browser goes afterwards may hold a secret too (a connect link's token, while
    // its user signs in first): it is stored sealed.
    let return_to = "/connect/a-connect-token-in-the-path/oauth/start";
    let login = format!(
        "/auth/login?return_to={}",
        url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
    );
    let (authorize, params) = authorization_request_to(&mut browser, &w.app, &login).await;
    let (_, second) = authorization_request(&mut Browser::new(), &w.app).await;
    assert_ne!(params["nonce"], second["nonce"]);
    assert_ne!(params["code_challenge"], second["code_challenge"]);
    let sql = w.app.db.sql().await;
    let stored = sql.texts("SELECT pkce_verifier || '|' || nonce FROM login_states").await;
    assert_eq!(stored, ["|", "|"], "neither value is stored");
    let salts = sql.blobs("SELECT secret_salt FROM login_states").await;
    assert!(salts.iter().all(|salt| salt.len() == 32), "{salts:?}");
    assert_ne!(salts[0], salts[1]);
    let stored = sql.texts("SELECT return_to FROM login_states").await;
    assert!(stored.iter().all(|r| r.starts_with("sealed:") && !r.contains("connect")), "{stored:?}");
    // The provider checks the verifier against the challenge, and Tessera the id_token's nonce:
    // both are derived again from the state the callback brings.
    let provider = browser.get(authorize.as_str()).await;
    let done = browser.get(&location(&provider)).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER, "{:?}", done.text().await);
    assert_eq!(location(&done), return_to, "opened again at the callback");
    assert!(browser.cookies.contains_key("tessera_session"));
    assert_eq!(sql.count("login_states").await, 1, "the other flow is still under way");
    // A nonce other than the flow's is still refused.
    w.issuer.tamper_next_id_token(Tamper::WrongNonce);
    assert_eq!(body(Browser::new().sign_in(&w.app, "").await, 400).await["code"], "invalid_id_token");
}

/// The browser's cookie holds a secret whose SHA-256 is the state: whoever catches the state on
/// its way (in the callback URL, with the code) cannot pass for the browser.
async fn the_state_in_a_url_does_not_complete_the_flow_without_the_browsers_cookie(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let callback = browser.start(&w.app, "").await;
    let state = state_of(&callback);
    let cookie = browser.cookies["tessera_login"].clone();
    assert_ne!(cookie, state);
    let digest = tessera::crypto::sha256(cookie.as_bytes());
    assert_eq!(base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, digest), state);
    let mut thief = Browser::new();
    thief.cookies.insert("tessera_login".into(), state.clone());
    assert_eq!(body(thief.get(&callback).await, 400).await["code"], "invalid_state");
    assert!(!thief.cookies.contains_key("tessera_session"));
    // The flow is still the browser's to complete.
    let done = browser.get(&callback).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER, "{:?}", done.text().await);
    assert!(browser.cookies.contains_key("tessera_session"));
}

async fn provider_failures_have_clear_codes(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();

    w.issuer.fail_next_token_request(TokenFault::InvalidGrant);
    assert_eq!(body(browser.sign_in(&w.app, "").await, 400).await["code"], "invalid_code");

    w.issuer.fail_next_token_request(TokenFault::ServerError(503));
    let unavailable = body(browser.sign_in(&w.app, "").await, 502).await;
    assert_eq!(unavailable["code"], "provider_unavailable");

    let callback = browser.start(&w.app, "").await;
    let denied = with_param(&with_param(&callback, "code", None), "error", Some("access_denied"));
    let problem = body(browser.get(&denied).await, 400).await;
    assert_eq!(problem["code"], "provider_denied");
    assert!(problem["detail"].as_str().unwrap().contains("access_denied"));
    // Another error of the provider's is not the user cancelling: its setup (or the entry's) may
    // need a change, or, for its own outage, a retry (RFC 6749 4.1.2.1).
    for (error, status, code) in [
        ("unauthorized_client", 400, "provider_refused"),
        ("invalid_scope", 400, "provider_refused"),
        ("server_error", 502, "provider_unavailable"),
        ("temporarily_unavailable", 502, "provider_unavailable"),
    ] {
        let callback = browser.start(&w.app, "").await;
        let failed = with_param(&with_param(&callback, "code", None), "error", Some(error));
        let problem = body(browser.get(&failed).await, status).await;
        assert_eq!(problem["code"], code, "{error}");
        assert_eq!(problem["detail"].as_str().unwrap().contains(error), status == 400, "{problem}");
    }

    let callback = browser.start(&w.app, "").await;
    assert_eq!(body(browser.get(&with_param(&callback, "code", None)).await, 400).await["code"], "invalid_code");
    let callback = browser.start(&w.app, "").await;
    let wrong_code = with_param(&callback, "code", Some("not-a-code"));
    assert_eq!(body(browser.get(&wrong_code).await, 400).await["code"], "invalid_code");

    // A provider that cannot be reached at all.
    w.issuer.shut_down();
    let down = Browser::new().get(&w.app.url("/auth/login")).await;
    // Discovery was cached by the earlier sign-ins, so the redirect still works; the code exchange
    // is what fails.
    assert_eq!(down.status(), StatusCode::SEE_OTHER);
    let dead = LocalIssuer::start().await.unwrap();
    let issuer_url = dead.issuer().to_owned();
    dead.shut_down();
    drop(dead);
    let app = TestApp::spawn_with(w.app.db.backend, |config| {
        let mut unreachable = provider("gone", ProviderKind::Oidc, &w.issuer);
        unreachable.issuer = Issuer::parse(&issuer_url).unwrap();
        config.providers.push(unreachable);
    })
    .await;
    let gone = Browser::new().get(&app.url("/auth/login?provider=gone")).await;
    assert_eq!(body(gone, 502).await["code"], "provider_unavailable");
    // A browser's page tries again with the same return_to: a request held for an app goes on
    // once the provider is back.
    let page = app.client.get(app.url("/auth/login?provider=gone&return_to=%2Faccount%3Fx"));
    let page = page.header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::BAD_GATEWAY);
    let page = page.text().await.unwrap();
    assert!(page.contains("href=\"/login?return_to=%2Faccount%3Fx\""), "{page}");
}

async fn concurrent_callbacks_complete_exactly_once(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    let callback = browser.start(&w.app, "").await;
    let cookie = format!("tessera_login={}", browser.cookies["tessera_login"]);
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let request = client.get(&callback).header("cookie", cookie.clone());
        tasks.push(tokio::spawn(async move { request.send().await.unwrap().status() }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::SEE_OTHER).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::SEE_OTHER || *s == StatusCode::BAD_REQUEST));
    assert_eq!(w.app.db.sql().await.count("sessions").await, 1);
    assert_eq!(w.issuer.code_exchanges(), 1, "the code was exchanged once");
}

/// One new person signing in from several tabs or devices at once (each its own flow, the same
/// account at the provider): one user, one identity, one default team, one `user.created`
/// event, and every browser signed in as that user.
async fn concurrent_first_sign_ins_of_one_person_make_one_user(backend: Backend) {
    let w = world(backend).await;
    w.issuer.set_next_user(StubUser::new("newcomer", "newcomer@example.com"));
    let sql = w.app.db.sql().await;
    let before = sql.provisioning_counts().await;
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut callbacks = Vec::new();
    for _ in 0..12 {
        let mut browser = Browser::new();
        let callback = browser.start(&w.app, "").await;
        let cookie = format!("tessera_login={}", browser.cookies["tessera_login"]);
        callbacks.push(client.get(&callback).header("cookie", cookie));
    }
    for answer in send_at_once(&callbacks).await {
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "every browser is signed in: {:?}", answer.text().await);
    }
    let after = sql.provisioning_counts().await;
    let made: Vec<i64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    // A user, an identity, a default team, its membership; one user.created event among the
    // new events (the sign-ins' own session events besides).
    assert_eq!(made[..4], [1, 1, 1, 1], "{made:?}");
    assert_eq!(sql.count("outbox_events WHERE topic = 'user.created'").await, 1);
    assert_eq!(sql.count("sessions").await, 12);
    assert_eq!(sql.count("(SELECT DISTINCT user_id FROM sessions) AS signed_in").await, 1, "all as one user");
    assert_eq!(w.issuer.code_exchanges(), 12);
}

/// One person's first sign-ins through several accounts at the provider at once (different
/// identities, one verified email — a person trying the buttons of several providers): one
/// account, as one after the other would give. With automatic linking every identity joins it;
/// without, the first makes it and the others are told to link.
async fn first_sign_ins_of_one_email_through_several_identities_at_once_make_one_account(backend: Backend) {
    for auto_link in [true, false] {
        let w = world_with(backend, |config, _| {
            let local = config.providers.iter_mut().find(|p| p.name == "local").unwrap();
            local.trusted_email_verification = true;
            local.auto_link_by_email = auto_link;
        })
        .await;
        let mut callbacks = Vec::new();
        for i in 0..8 {
            w.issuer.set_next_user(StubUser::new(&format!("one-person-{i}"), "one.person@example.com"));
            let mut browser = Browser::new();
            let callback = browser.start(&w.app, "").await;
            callbacks.push(browser.prepared(Method::GET, &callback));
        }
        let statuses: Vec<StatusCode> = send_at_once(&callbacks).await.iter().map(|a| a.status()).collect();
        let signed_in = statuses.iter().filter(|s| **s == StatusCode::SEE_OTHER).count();
        let told_to_link = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
        let sql = w.app.db.sql().await;
        assert_eq!(sql.count("users").await, 1, "auto_link {auto_link}: {statuses:?}");
        assert_eq!(sql.count("(SELECT DISTINCT user_id FROM sessions) AS signed_in").await, 1);
        if auto_link {
            assert_eq!((signed_in, sql.count("identities").await), (8, 8), "{statuses:?}");
        } else {
            assert_eq!((signed_in, told_to_link, sql.count("identities").await), (1, 7, 1), "{statuses:?}");
        }
    }
}

/// A double-clicked sign-out (or several tabs signing out at once) ends the session once: one
/// `session.revoked` event, however many requests raced.
async fn concurrent_sign_outs_end_the_session_once(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let cookie = format!("tessera_session={}", browser.cookies["tessera_session"]);
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("sessions").await, 1);
    let before = sql.count("outbox_events WHERE topic = 'session.revoked'").await;
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let sign_out = || {
        client.post(w.app.url("/auth/logout")).header("cookie", cookie.clone()).header("sec-fetch-site", "same-origin")
    };
    for answer in send_at_once(&(0..12).map(|_| sign_out()).collect::<Vec<_>>()).await {
        assert_eq!(answer.status(), StatusCode::NO_CONTENT, "signing out of an ended session is not an error");
    }
    assert_eq!(sql.count("sessions").await, 0);
    assert_eq!(
        sql.count("outbox_events WHERE topic = 'session.revoked'").await - before,
        1,
        "one event, not one per request"
    );
}

pub(crate) async fn linking_attaches_an_identity_and_never_steals_one(backend: Backend) {
    let second = LocalIssuer::start().await.unwrap();
    second.set_client(CLIENT_ID, CLIENT_SECRET);
    let w = world_with(backend, |config, _| {
        config.providers.push(provider("second", ProviderKind::Oidc, &second));
    })
    .await;
    w.issuer.set_next_user(StubUser::new("alice", "alice@example.com"));
    let mut alice = Browser::new();
    alice.sign_in(&w.app, "").await;
    let before = body(alice.me(&w.app).await, 200).await;

    second.set_next_user(StubUser::new("alice-elsewhere", "alice@elsewhere.example"));
    // Linking goes through /auth/link, with the session.
    let linked_page = {
        let callback = {
            let start = alice
                .request_from("same-origin", Method::GET, &w.app.url("/auth/link?provider=second&return_to=/settings"))
                .await;
            assert_eq!(start.status(), StatusCode::SEE_OTHER);
            let provider = alice.get(&location(&start)).await;
            location(&provider)
        };
        alice.get(&callback).await
    };
    assert_eq!(location(&linked_page), "/settings");
    let after = body(alice.me(&w.app).await, 200).await;
    assert_eq!(after["id"], before["id"]);
    let subjects: Vec<&str> =
        after["identities"].as_array().unwrap().iter().map(|i| i["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["alice", "alice-elsewhere"]);
    // The second provider says the email is verified, but is not trusted to (the default).
    assert_eq!(after["identities"][1]["email_verified"], false, "{after}");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("identity_events WHERE action = 'link'").await, 2, "the first link and this one");

    // Bob cannot link Alice's identity.
    w.issuer.set_next_user(StubUser::new("bob", "bob@example.com"));
    let mut bob = Browser::new();
    bob.sign_in(&w.app, "").await;
    second.set_next_user(StubUser::new("alice-elsewhere", "alice@elsewhere.example"));
    let callback = bob.start_link(&w.app, "provider=second").await;
    let stolen = bob.get(&callback).await;
    assert_eq!(body(stolen, 409).await["code"], "identity_already_linked");
    // In a browser, the page keeps Bob's session in view: his account, not a sign-in again.
    second.set_next_user(StubUser::new("alice-elsewhere", "alice@elsewhere.example"));
    let callback = bob.start_link(&w.app, "provider=second").await;
    let page = bob.navigate(&callback).await;
    assert_eq!(page.status(), StatusCode::CONFLICT);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("belongs to someone else") && page.contains("<a href=\"/auth/logout\">Sign out</a>"),
        "{page}"
    );
    let alice_again = body(alice.me(&w.app).await, 200).await;
    assert_eq!(alice_again["identities"].as_array().unwrap().len(), 2, "nothing changed");
    assert_eq!(sql.count("identities").await, 3);

    // Linking needs a session.
    let anonymous = w.app.client.get(w.app.url("/auth/link?provider=second")).send().await.unwrap();
    assert_eq!(body(anonymous, 401).await["code"], "missing_credentials");
}

pub(crate) async fn a_known_email_is_not_linked_silently(backend: Backend) {
    let w = world(backend).await;
    let mut claim = identity("admin-made", "carol@example.com", None);
    claim["email_verified"] = true.into();
    body(w.app.bootstrap(&claim).await, 201).await;
    w.issuer.set_next_user(StubUser::new("carol-upstream", "Carol@Example.com"));
    let mut browser = Browser::new();
    let problem = body(browser.sign_in(&w.app, "").await, 409).await;
    assert_eq!(problem["code"], "link_required");
    assert_eq!(problem["link_url"], "/auth/link?provider=local");
    assert!(problem["detail"].as_str().unwrap().contains("link"));
    let sql = w.app.db.sql().await;
    assert_eq!((sql.count("users").await, sql.count("identities").await), (1, 1), "no user, no link");
    assert!(!browser.cookies.contains_key("tessera_session"));
}

pub(crate) async fn automatic_linking_needs_trust_and_verified_emails(backend: Backend) {
    // A second provider whose `email_verified` is not trusted (the default).
    let untrusted = LocalIssuer::start().await.unwrap();
    untrusted.set_client(CLIENT_ID, CLIENT_SECRET);
    let w = world_with(backend, |config, _| {
        let local = config.providers.iter_mut().find(|p| p.name == "local").unwrap();
        local.trusted_email_verification = true;
        local.auto_link_by_email = true;
        config.providers.push(provider("untrusted", ProviderKind::Oidc, &untrusted));
    })
    .await;
    let mut claim = identity("dave-admin", "dave@example.com", None);
    claim["email_verified"] = true.into();
    let dave = body(w.app.bootstrap(&claim).await, 201).await;
    let mut unverified_claim = identity("erin-admin", "erin@example.com", None);
    unverified_claim["email_verified"] = false.into();
    body(w.app.bootstrap(&unverified_claim).await, 201).await;

    w.issuer.set_next_user(StubUser::new("dave-upstream", "dave@example.com"));
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(body(browser.me(&w.app).await, 200).await["id"], dave["user_id"], "linked to the verified owner");

    // Not verified upstream: no link.
    let mut unverified = StubUser::new("dave-2", "dave@example.com");
    unverified.email_verified = false;
    w.issuer.set_next_user(unverified);
    assert_eq!(body(Browser::new().sign_in(&w.app, "").await, 409).await["code"], "link_required");
    // The existing user's email is not verified: no link. An admin made that account, so it is
    // not a mere claim: link first.
    w.issuer.set_next_user(StubUser::new("erin-upstream", "erin@example.com"));
    assert_eq!(body(Browser::new().sign_in(&w.app, "").await, 409).await["code"], "link_required");
    assert_eq!(w.app.db.sql().await.count("users").await, 2);

    // An untrusted provider's "verified" does not make an account's email verified, so a first
    // sign-in through the trusted one cannot be joined to an account someone made in that name;
    // nor can that account keep the address's owner out.
    untrusted.set_next_user(StubUser::new("mallory", "carol@example.com"));
    let mut mallory = Browser::new();
    assert_eq!(mallory.sign_in(&w.app, "provider=untrusted").await.status(), StatusCode::SEE_OTHER);
    let planted = body(mallory.me(&w.app).await, 200).await;
    assert_eq!((&planted["email"], &planted["email_verified"]), (&json!("carol@example.com"), &json!(false)));
    w.issuer.set_next_user(StubUser::new("carol-upstream", "carol@example.com"));
    let mut carol = Browser::new();
    assert_eq!(carol.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    let carol_me = body(carol.me(&w.app).await, 200).await;
    assert_ne!(carol_me["id"], planted["id"], "no link to the planted account");
    assert_eq!(carol_me["email_verified"], true);
    let planted_after = body(mallory.me(&w.app).await, 200).await;
    assert_eq!(planted_after["identities"].as_array().unwrap().len(), 1, "{planted_after}");
    // Carol's next first sign-in through the trusted provider joins her account, the one that
    // proved the address; the planted one is not a second candidate.
    w.issuer.set_next_user(StubUser::new("carol-work", "carol@example.com"));
    let mut carol_again = Browser::new();
    assert_eq!(carol_again.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(body(carol_again.me(&w.app).await, 200).await["id"], carol_me["id"]);
    // A sign-in that only claims the address still finds accounts with it: link first.
    untrusted.set_next_user(StubUser::new("mallory-2", "carol@example.com"));
    let refused = Browser::new().sign_in(&w.app, "provider=untrusted").await;
    assert_eq!(body(refused, 409).await["code"], "link_required");
    let sql = w.app.db.sql().await;
    assert_eq!((sql.count("users").await, sql.count("identities").await), (4, 6));
    // Nor does a trusted provider's sign-in that said the address was not verified (an account
    // signed up there in someone's name, never confirmed) keep the owner out.
    let (claimed, grace_me) = claim_then_owner(&w, "grace", "grace@example.com").await;
    assert_ne!(grace_me["id"], claimed["id"], "an account of her own, not the claimer's");
    assert_eq!(grace_me["email_verified"], true);
    assert_eq!((sql.count("users").await, sql.count("identities").await), (6, 8));
    // Nor does a claim account that holds a trusted identity of its own, whose verified address
    // is another: that identity vouches for its own address, not for the one claimed.
    untrusted.set_next_user(StubUser::new("mallory-3", "heidi@example.com"));
    let mut squatter = Browser::new();
    assert_eq!(squatter.sign_in(&w.app, "provider=untrusted").await.status(), StatusCode::SEE_OTHER);
    w.issuer.set_next_user(StubUser::new("mallory-trusted", "mallory@example.com"));
    let callback = squatter.start_link(&w.app, "provider=local").await;
    assert_eq!(squatter.navigate(&callback).await.status(), StatusCode::SEE_OTHER, "linked");
    let squatted = body(squatter.me(&w.app).await, 200).await;
    assert_eq!(squatted["identities"].as_array().unwrap().len(), 2, "{squatted}");
    w.issuer.set_next_user(StubUser::new("heidi-upstream", "heidi@example.com"));
    let mut heidi = Browser::new();
    assert_eq!(heidi.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER, "not kept out");
    let heidi_me = body(heidi.me(&w.app).await, 200).await;
    assert_ne!(heidi_me["id"], squatted["id"], "an account of her own");
    assert_eq!(heidi_me["email_verified"], true);
    // A new user through the trusted provider has its verified email recorded as such.
    w.issuer.set_next_user(StubUser::new("frank", "frank@example.com"));
    let mut frank = Browser::new();
    assert_eq!(frank.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(body(frank.me(&w.app).await, 200).await["email_verified"], true);
    // The verified owner disabled: a first sign-in that would have been joined to them is
    // told so, not sent to "sign in the way you did before, then link" (refused too).
    let disable = w.app.admin(Method::PATCH, &format!("/admin/users/{}", dave["user_id"].as_str().unwrap()));
    body(disable.json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    let before = (sql.count("users").await, sql.count("identities").await);
    w.issuer.set_next_user(StubUser::new("dave-3", "dave@example.com"));
    assert_eq!(body(Browser::new().sign_in(&w.app, "").await, 403).await["code"], "user_disabled");
    assert_eq!((sql.count("users").await, sql.count("identities").await), before, "nothing made");
}

/// Someone signs up through the provider in `name`'s place with `email`, unconfirmed there
/// (`{name}-unconfirmed`); then `name` signs in with the address verified (`{name}-upstream`).
/// Returns what `/v1/me` says to each.
async fn claim_then_owner(w: &World, name: &str, email: &str) -> (Value, Value) {
    let mut unconfirmed = StubUser::new(&format!("{name}-unconfirmed"), email);
    unconfirmed.email_verified = false;
    let mut answers = Vec::new();
    for user in [unconfirmed, StubUser::new(&format!("{name}-upstream"), email)] {
        w.issuer.set_next_user(user);
        let mut browser = Browser::new();
        assert_eq!(browser.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
        answers.push(body(browser.me(&w.app).await, 200).await);
    }
    let owner = answers.pop().unwrap();
    (answers.pop().unwrap(), owner)
}

/// A browser provider whose issuer is also on the allow-list (`[[issuers]]`, for its API
/// tokens, under another name): an account a sign-in there made without verifying the address is
/// a claim all the same and keeps the address's proven owner out of nothing; one an operator made
/// for the address (a bootstrap through the entry) still asks for a link.
async fn an_unverified_sign_in_keeps_nobody_out_when_its_issuer_is_also_allowed(backend: Backend) {
    let w = world_with(backend, |config, issuer| {
        let local = config.providers.iter_mut().find(|p| p.name == "local").unwrap();
        local.trusted_email_verification = true;
        local.auto_link_by_email = true;
        let mut entry = crate::helpers::local_issuer_config(issuer);
        entry.name = "local-api".into();
        config.issuers.push(entry);
    })
    .await;
    let (claimed, hana_me) = claim_then_owner(&w, "hana", "hana@example.com").await;
    assert_ne!(hana_me["id"], claimed["id"], "an account of her own, not the claimer's");
    assert_eq!(hana_me["email_verified"], true);

    let made = json!({"issuer": w.issuer.issuer(), "subject": "ivy-admin", "email": "ivy@example.com",
                      "email_verified": false});
    body(w.app.bootstrap(&made).await, 201).await;
    w.issuer.set_next_user(StubUser::new("ivy-upstream", "ivy@example.com"));
    assert_eq!(body(Browser::new().sign_in(&w.app, "").await, 409).await["code"], "link_required");
    let sql = w.app.db.sql().await;
    assert_eq!((sql.count("users").await, sql.count("identities").await), (3, 3));
}

/// A provider removed from the configuration leaves identities nobody can sign in with: the
/// last one that still can is kept, the others may go.
async fn the_last_identity_a_configured_provider_signs_in_with_stays(backend: Backend) {
    let second = LocalIssuer::start().await.unwrap();
    second.set_client(CLIENT_ID, CLIENT_SECRET);
    let w =
        world_with(backend, |config, _| config.providers.push(provider("second", ProviderKind::Oidc, &second))).await;
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let callback = browser.start_link(&w.app, "provider=second").await;
    browser.get(&callback).await;
    let me = body(browser.me(&w.app).await, 200).await;
    let id = |i: usize| me["identities"][i]["id"].as_str().unwrap().to_owned();
    let (first_id, second_id) = (id(0), id(1));
    // The operator removes the second provider and restarts on the same database.
    let db = w.app.stop_keeping_db().await;
    let mut config = db.config();
    config.auth.cookie_secure = false;
    config.providers.push(provider("local", ProviderKind::Oidc, &w.issuer));
    let app = TestApp::start(db, &config).await;
    let page = browser.navigate(&app.url("/account")).await.text().await.unwrap();
    assert!(page.contains(&format!("/account/identities/{second_id}/unlink")), "{page}");
    assert!(!page.contains(&format!("/account/identities/{first_id}/unlink")), "{page}");
    assert!(page.contains("Your only sign-in method that works here cannot be removed"));
    let refused = browser.request(Method::DELETE, &app.url(&format!("/v1/me/identities/{first_id}"))).await;
    assert_eq!(body(refused, 409).await["code"], "last_identity");
    let removed = browser.request(Method::DELETE, &app.url(&format!("/v1/me/identities/{second_id}"))).await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
}

/// Adding or removing a sign-in method through a session needs a sign-in from the last 10
/// minutes: a session cookie alone (carried off, say) cannot swap the thief's own sign-in
/// method in and keep the account. Signing in again lets the change through.
async fn changing_sign_in_methods_needs_a_recent_sign_in(backend: Backend) {
    let second = LocalIssuer::start().await.unwrap();
    second.set_client(CLIENT_ID, CLIENT_SECRET);
    let w = world_with(backend, |config, _| {
        config.providers.push(provider("second", ProviderKind::Oidc, &second));
        // For connected accounts only: nobody signs in or links with it.
        config.providers.push(crate::profile_actions::plain_provider(&second));
        // No cached copy of the session: each request reads its stored sign-in time.
        config.cache.principal_ttl = Duration::ZERO;
    })
    .await;
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let callback = browser.start_link(&w.app, "provider=second").await;
    browser.get(&callback).await;
    let me = body(browser.me(&w.app).await, 200).await;
    let (first_id, second_id) = (me["identities"][0]["id"].clone(), me["identities"][1]["id"].clone());
    let (first_id, second_id) = (first_id.as_str().unwrap(), second_id.as_str().unwrap());
    let sql = w.app.db.sql().await;
    let eleven_minutes_ago = match backend {
        Backend::Sqlite => "(CAST(strftime('%s', 'now') AS INTEGER) - 660) * 1000000",
        Backend::Postgres => "now() - interval '660 seconds'",
    };
    sql.exec(&format!("UPDATE sessions SET created_at = {eleven_minutes_ago}")).await.unwrap();
    assert_eq!(browser.me(&w.app).await.status(), StatusCode::OK, "still signed in");
    // The API with the cookie, the account page's forms, and a link's start: each refused.
    let primary = w.app.url(&format!("/v1/me/identities/{second_id}/primary"));
    let refused = browser.request(Method::POST, &primary).await;
    assert_eq!(body(refused, 403).await["code"], "sign_in_again");
    let refused = browser.request(Method::DELETE, &w.app.url(&format!("/v1/me/identities/{first_id}"))).await;
    assert_eq!(body(refused, 403).await["code"], "sign_in_again");
    let page = browser.navigate(&w.app.url("/account")).await.text().await.unwrap();
    let token = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let unlink = w.app.url(&format!("/account/identities/{first_id}/unlink"));
    let refused = browser.form(&unlink, &[("csrf", &token)]).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let page = refused.text().await.unwrap();
    assert!(page.contains("Please sign in again") && page.contains("sign_in_again"), "{page}");
    let link = browser.request_from("same-origin", Method::GET, &w.app.url("/auth/link?provider=second")).await;
    assert_eq!(link.status(), StatusCode::FORBIDDEN);
    // Nor the form a cross-site link's start asks with (its CSRF token is the session's).
    let link = browser.form(&w.app.url("/auth/link"), &[("csrf", &token), ("provider", "second")]).await;
    assert_eq!(link.status(), StatusCode::FORBIDDEN);
    // Its page's way on signs in again and comes back to this link (to be confirmed again).
    let page = link.text().await.unwrap();
    assert!(page.contains("href=\"/login?return_to=%2Fauth%2Flink%3Fprovider%3Dsecond\""), "{page}");
    let me = body(browser.me(&w.app).await, 200).await;
    assert_eq!((me["identities"].as_array().unwrap().len(), &me["primary_identity_id"]), (2, &json!(first_id)));
    // Signed in again: the change goes through.
    browser.sign_in(&w.app, "").await;
    let made = browser.request(Method::POST, &primary).await;
    assert_eq!(body(made, 200).await["primary_identity_id"], second_id);
    // A provider for connected accounts only is not one to link or sign in with, asked from
    // another site: not found at once, rather than a page whose button then fails.
    for path in ["/auth/link?provider=plain", "/auth/login?provider=plain"] {
        let page = browser.request_from("cross-site", Method::GET, &w.app.url(path)).await;
        assert_eq!(page.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(page.text().await.unwrap().contains("unknown_provider"), "{path}");
    }
}

async fn identities_can_be_chosen_and_unlinked_but_not_the_last(backend: Backend) {
    let second = LocalIssuer::start().await.unwrap();
    second.set_client(CLIENT_ID, CLIENT_SECRET);
    let w =
        world_with(backend, |config, _| config.providers.push(provider("second", ProviderKind::Oidc, &second))).await;
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let me = body(browser.me(&w.app).await, 200).await;
    let first_id = me["identities"][0]["id"].as_str().unwrap().to_owned();
    let only = browser.request(Method::DELETE, &w.app.url(&format!("/v1/me/identities/{first_id}"))).await;
    assert_eq!(body(only, 409).await["code"], "last_identity");

    let callback = browser.start_link(&w.app, "provider=second").await;
    browser.get(&callback).await;
    let me = body(browser.me(&w.app).await, 200).await;
    let second_id = me["identities"][1]["id"].as_str().unwrap().to_owned();
    // A page of another origin — a sibling subdomain's, which the session cookie's `SameSite=Lax`
    // does not keep out — cannot change the account with the cookie; reading is not a change.
    let make_primary = w.app.url(&format!("/v1/me/identities/{second_id}/primary"));
    for site in ["same-site", "cross-site"] {
        let forged = browser.request_from(site, Method::POST, &make_primary).await;
        assert_eq!(body(forged, 403).await["code"], "csrf_failed", "{site}");
        let unlink = w.app.url(&format!("/v1/me/identities/{second_id}"));
        let forged = browser.request_from(site, Method::DELETE, &unlink).await;
        assert_eq!(body(forged, 403).await["code"], "csrf_failed", "{site}");
    }
    // A browser without Fetch Metadata (Safari before 16.4) is judged by the `Origin` it names.
    let cookie = format!("tessera_session={}", browser.cookies["tessera_session"]);
    let with_origin = |method: Method, url: &str, origin: &str| {
        w.app.client.request(method, url).header("cookie", &cookie).header("origin", origin).send()
    };
    for origin in ["https://sibling.example.com", "null"] {
        let forged = with_origin(Method::POST, &make_primary, origin).await.unwrap();
        assert_eq!(body(forged, 403).await["code"], "csrf_failed", "{origin}");
        let forged = with_origin(Method::DELETE, &w.app.url(&format!("/v1/me/identities/{second_id}")), origin);
        assert_eq!(body(forged.await.unwrap(), 403).await["code"], "csrf_failed", "{origin}");
    }
    let ours = w.app.url("/").trim_end_matches('/').to_owned();
    let read = with_origin(Method::GET, &w.app.url("/v1/me"), "https://sibling.example.com").await.unwrap();
    assert_eq!(read.status(), StatusCode::OK, "reading is not a change");
    let read = body(browser.request_from("cross-site", Method::GET, &w.app.url("/v1/me")).await, 200).await;
    assert_eq!(read["primary_identity_id"], first_id, "nothing changed");
    assert_eq!(read["identities"].as_array().unwrap().len(), 2, "nothing changed");
    let primary = with_origin(Method::POST, &make_primary, &ours).await.unwrap();
    assert_eq!(primary.headers()["cache-control"], "no-store", "a person's profile is kept out of caches");
    assert_eq!(body(primary, 200).await["primary_identity_id"], second_id, "from this origin");
    let unlinked = browser.request(Method::DELETE, &w.app.url(&format!("/v1/me/identities/{second_id}"))).await;
    assert_eq!(unlinked.status(), StatusCode::NO_CONTENT);
    let me = body(browser.me(&w.app).await, 200).await;
    assert_eq!(me["identities"].as_array().unwrap().len(), 1);
    assert_eq!(me["primary_identity_id"], first_id, "the primary falls back to the remaining identity");
    let missing = browser.request(Method::DELETE, &w.app.url(&format!("/v1/me/identities/{second_id}"))).await;
    assert_eq!(body(missing, 404).await["code"], "identity_not_found");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("identity_events WHERE action = 'unlink'").await, 1);
    assert_eq!(sql.count("identity_events WHERE action = 'primary'").await, 1);
}

/// A sign-in method someone else controlled stops working when the user removes it: the sessions
/// it started end with it (else they would live on for days, and could authorise applications
/// through grants tied to no identity), and those of the user's other methods go on.
async fn unlinking_an_identity_signs_out_the_sessions_that_used_it(backend: Backend) {
    let second = LocalIssuer::start().await.unwrap();
    second.set_client(CLIENT_ID, CLIENT_SECRET);
    let w =
        world_with(backend, |config, _| config.providers.push(provider("second", ProviderKind::Oidc, &second))).await;
    w.issuer.set_next_user(StubUser::new("taken-over", "owner@example.com"));
    let mut intruder = Browser::new();
    assert_eq!(intruder.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    // The owner links the second provider from that account, and signs in with it elsewhere.
    let callback = intruder.start_link(&w.app, "provider=second").await;
    intruder.get(&callback).await;
    let me = body(intruder.me(&w.app).await, 200).await;
    let [first_id, second_id] = [0, 1].map(|i| me["identities"][i]["id"].as_str().unwrap().to_owned());
    let mut owner = Browser::new();
    assert_eq!(owner.sign_in(&w.app, "provider=second").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(body(owner.me(&w.app).await, 200).await["id"], me["id"]);
    w.issuer.set_next_user(StubUser::new("taken-over", "owner@example.com"));
    let mut another = Browser::new();
    assert_eq!(another.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    let page = owner.get(&w.app.url("/account")).await.text().await.unwrap();
    assert_eq!(page.matches("removing it signs you out").count(), 1, "the method this browser used is marked");

    // Sent several times at once (a double click, a retry): unlinked once.
    let unlink = w.app.url(&format!("/v1/me/identities/{first_id}"));
    let unlinks: Vec<_> = (0..8).map(|_| owner.prepared(Method::DELETE, &unlink)).collect();
    let statuses: Vec<StatusCode> = send_at_once(&unlinks).await.iter().map(|a| a.status()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::NO_CONTENT).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::NO_CONTENT || *s == StatusCode::NOT_FOUND), "{statuses:?}");
    for browser in [&mut intruder, &mut another] {
        assert_eq!(body(browser.me(&w.app).await, 401).await["code"], "missing_credentials");
    }
    let me = body(owner.me(&w.app).await, 200).await;
    assert_eq!(me["identities"].as_array().unwrap().len(), 1);
    assert_eq!(me["identities"][0]["id"], second_id.as_str());
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count("sessions").await, 1, "the owner's session alone");
    let revoked = sql.texts("SELECT CAST(payload AS TEXT) FROM outbox_events WHERE topic = 'session.revoked'").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    let payload: serde_json::Value = serde_json::from_str(&revoked[0]).unwrap();
    assert_eq!((&payload["reason"], &payload["sessions"]), (&json!("identity_unlinked"), &json!(2)));
    assert_eq!(sql.count("identity_events WHERE action = 'unlink'").await, 1);
    assert_eq!(sql.count("outbox_events WHERE topic = 'identity.unlinked'").await, 1);
    assert_eq!(sql.count("audit_events WHERE action = 'identity.unlinked'").await, 1);
}

/// An identity unlinked (or a user deleted) between the callback finding it and writing the
/// session: the foreign key refuses the session, and the browser is told to sign in again rather
/// than shown an internal error. The removal is injected by a trigger on the session insert.
async fn a_sign_in_whose_identity_goes_meanwhile_says_so(backend: Backend) {
    let w = world(backend).await;
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    let sql = w.app.db.sql().await;
    let remove = "DELETE FROM identities WHERE id = NEW.identity_id;";
    sql.inject("INSERT", "sessions", None, remove, &format!("{remove} RETURN NEW;")).await;
    let mut returning = Browser::new();
    let refused = returning.sign_in(&w.app, "").await;
    let problem = body(refused, 404).await;
    assert_eq!(problem["code"], "identity_not_found", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("sign in again"), "{problem}");
    assert!(!problem.to_string().to_lowercase().contains("foreign"), "no database error shown: {problem}");
    assert!(!returning.cookies.contains_key("tessera_session"));
    assert_eq!(sql.count("sessions").await, 1, "the first sign-in's session alone");
    let succeeded = "SELECT action FROM audit_events WHERE action = 'sign_in.succeeded'";
    assert_eq!(sql.texts(succeeded).await.len(), 1, "nor its audit row");
    sql.remove_injected("sessions").await;
    assert_eq!(returning.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(sql.count("sessions").await, 2);
}

async fn an_unlinked_identity_stops_resolving_to_its_old_user_at_once(backend: Backend) {
    let second = LocalIssuer::start().await.unwrap();
    second.set_client(CLIENT_ID, CLIENT_SECRET);
    // The sign-in provider's issuer also issues API tokens that backends validate.
    let w = world_with(backend, |config, issuer| {
        config.providers.push(provider("second", ProviderKind::Oidc, &second));
        config.issuers.push(crate::helpers::local_issuer_config(issuer));
    })
    .await;
    w.issuer.set_next_user(StubUser::new("shared-sub", "shared@example.com"));
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let callback = browser.start_link(&w.app, "provider=second").await;
    browser.get(&callback).await;
    let me = body(browser.me(&w.app).await, 200).await;
    let token = w.issuer.sign("rsa-1", &w.issuer.claims("shared-sub", crate::helpers::AUDIENCE));
    let validated = body(w.app.validate(&token).await, 200).await;
    assert_eq!(validated["user_id"], me["id"], "the token resolves to the user (and is now cached)");

    let identity = me["identities"][0]["id"].as_str().unwrap();
    assert_eq!(
        browser.request(Method::DELETE, &w.app.url(&format!("/v1/me/identities/{identity}"))).await.status(),
        204
    );
    let after = body(w.app.validate(&token).await, 200).await;
    assert_ne!(after["user_id"], me["id"], "no cache keeps the old link alive");
    assert_eq!(after["created"], true, "the free identity is provisioned anew (its issuer has jit)");
}

/// With an idle timeout of a minute, a use is noted once the stored last use is 15 s old (a
/// quarter of it), not a minute old: at a minute, every session would end a minute after it
/// began however busy it was, its last use never noted in time.
async fn a_session_in_use_never_reaches_a_short_idle_timeout(backend: Backend) {
    let w = world_with(backend, |config, _| {
        config.auth.session_idle = Duration::from_secs(60);
        // No cached copy: each request reads the stored last use.
        config.cache.principal_ttl = Duration::ZERO;
        config.server.last_seen_flush = Duration::from_millis(100);
    })
    .await;
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let sql = w.app.db.sql().await;
    let ago = |seconds: u32| match backend {
        Backend::Sqlite => format!("(CAST(strftime('%s', 'now') AS INTEGER) - {seconds}) * 1000000"),
        Backend::Postgres => format!("now() - interval '{seconds} seconds'"),
    };
    sql.exec(&format!("UPDATE sessions SET last_seen_at = {}", ago(20))).await.unwrap();
    assert_eq!(browser.me(&w.app).await.status(), StatusCode::OK);
    let recent = format!("sessions WHERE last_seen_at > {}", ago(10));
    eventually_within("the use is written", Duration::from_secs(5), || async { sql.count(&recent).await == 1 }).await;
}

async fn sessions_end_when_idle_expired_or_logged_out(backend: Backend) {
    let w = world(backend).await;
    let sql = w.app.db.sql().await;
    let past = if backend == Backend::Sqlite { "1" } else { "now() - interval '400 days'" };

    let mut idle = Browser::new();
    idle.sign_in(&w.app, "").await;
    sql.exec(&format!("UPDATE sessions SET last_seen_at = {past}")).await.unwrap();
    assert_eq!(body(idle.me(&w.app).await, 401).await["code"], "missing_credentials");

    let mut expired = Browser::new();
    expired.sign_in(&w.app, "").await;
    sql.exec(&format!("UPDATE sessions SET expires_at = {past}")).await.unwrap();
    assert_eq!(expired.me(&w.app).await.status(), StatusCode::UNAUTHORIZED);

    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let cookie = browser.cookies["tessera_session"].clone();
    let me = browser.me(&w.app).await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(me.headers()["cache-control"], "no-store", "a person's email stays out of caches");
    // A page of another origin cannot sign the user out, even in a browser that sends no
    // Fetch Metadata (Safari before 16.4): its `Origin` says where it came from.
    let forged = w.app.client.post(w.app.url("/auth/logout")).header("cookie", format!("tessera_session={cookie}"));
    let forged = forged.header("origin", "https://sibling.example.com").body("x").send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(browser.me(&w.app).await.status(), StatusCode::OK, "still signed in");
    // A cross-site form's post comes without the (SameSite) cookie, and its answer must not
    // delete it: the browser would honour that deletion.
    for (path, html) in [("/auth/logout", false), ("/auth/logout", true)] {
        let cross = w.app.client.post(w.app.url(path)).header("sec-fetch-site", "cross-site");
        let cross = if html { cross.header("accept", "text/html").form(&[("x", "y")]) } else { cross.body("x") };
        let cross = cross.send().await.unwrap();
        assert!(cross.status().is_success(), "{path}: {}", cross.status());
        assert!(
            cross.headers().get_all("set-cookie").iter().all(|c| !c.to_str().unwrap().starts_with("tessera_session="))
        );
    }
    let logout = browser.request(Method::POST, &w.app.url("/auth/logout")).await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert!(!browser.cookies.contains_key("tessera_session"), "the cookie is cleared");
    browser.cookies.insert("tessera_session".into(), cookie);
    assert_eq!(browser.me(&w.app).await.status(), StatusCode::UNAUTHORIZED, "the session row is gone");
}

/// `GET /auth/logout` while the store cannot say whose session it is: the browser is still
/// signed in as far as anyone knows, so the page offers to try the sign-out again, not a sign-in.
async fn a_sign_out_page_that_cannot_read_the_session_offers_itself_again(backend: Backend) {
    let w = world_with(backend, |config, _| config.cache.principal_ttl = std::time::Duration::ZERO).await;
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let sql = w.app.db.sql().await;
    sql.exec("ALTER TABLE sessions RENAME TO sessions_away").await.unwrap();
    let page = browser.navigate(&w.app.url("/auth/logout")).await;
    let status = page.status();
    let text = page.text().await.unwrap();
    sql.exec("ALTER TABLE sessions_away RENAME TO sessions").await.unwrap();
    assert!(status.is_server_error(), "{status}: {text}");
    assert!(text.contains("href=\"/auth/logout\""), "{text}");
    assert!(!text.contains("href=\"/login"), "{text}");
}

/// Forward-auth of an app on another host of the same site: the proxy's subrequest carries what
/// the browser sent to the app's host. A host-only session cookie (the default) never goes there;
/// with `auth.session_cookie_domain` it does, until sign-out clears it (with the same domain).
/// Browsers' cookie rules are those of reqwest's cookie jar, the host names resolved to the server.
async fn a_shared_session_cookie_reaches_forward_auth_on_sibling_hosts(backend: Backend) {
    for shared in [false, true] {
        let issuer = LocalIssuer::start().await.unwrap();
        issuer.set_client(CLIENT_ID, CLIENT_SECRET);
        let db = TestDb::new(backend).await;
        let mut config = db.config();
        config.auth.cookie_secure = false;
        config.providers.push(provider("local", ProviderKind::Oidc, &issuer));
        config.auth.default_provider = Some("local".into());
        config.auth.session_cookie_domain = shared.then(|| "tessera.test".to_owned());
        let app = TestApp::start_as(db, &config, "id.tessera.test").await;
        let browser = reqwest::Client::builder()
            .no_proxy()
            .cookie_store(true)
            .resolve("id.tessera.test", app.addr)
            .resolve("app.tessera.test", app.addr)
            .build()
            .unwrap();
        let (id, sibling) = (
            format!("http://id.tessera.test:{}", app.addr.port()),
            format!("http://app.tessera.test:{}", app.addr.port()),
        );
        issuer.set_next_user(StubUser::new("fa-host", "fa@example.com"));
        browser.get(format!("{id}/auth/login?return_to=/healthz")).send().await.unwrap();
        let verify = |base: &str| browser.get(format!("{base}/auth/verify")).send();
        assert_eq!(verify(&id).await.unwrap().status(), StatusCode::OK, "signed in (shared: {shared})");
        let on_sibling = verify(&sibling).await.unwrap();
        match shared {
            false => assert_eq!(on_sibling.status(), StatusCode::UNAUTHORIZED, "a host-only cookie stays home"),
            true => {
                assert_eq!(on_sibling.status(), StatusCode::OK);
                assert_eq!(on_sibling.headers()["x-tessera-email"], "fa@example.com");
                let out = browser.post(format!("{id}/auth/logout")).send().await.unwrap();
                let cleared = out.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned());
                let cleared: Vec<String> = cleared.filter(|c| c.starts_with("tessera_session=")).collect();
                assert!(
                    cleared.iter().any(|c| c.contains("Max-Age=0") && c.contains("Domain=tessera.test")),
                    "{cleared:?}"
                );
                assert_eq!(verify(&sibling).await.unwrap().status(), StatusCode::UNAUTHORIZED);
            }
        }
    }
}

/// A browser the proxy turns away is sent to sign in and back to the URL it asked for, query and
/// all: nginx reads the sign-in URL from the 401's `X-Tessera-Sign-In`; with `redirect=true`
/// (Traefik, Caddy) a navigation gets the 302 itself. Only URLs on allowed origins the session
/// cookie reaches come back.
async fn forward_auth_sends_a_browser_to_sign_in_and_back(backend: Backend) {
    let w = world(backend).await;
    let wanted = "https://app.example.com/notes?a=1&b=two%20words";
    let proxy = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // An allowed origin on a host the (host-only) session cookie never goes to: signed in, the
    // browser would come back without it and be sent to sign in again, round and round.
    for query in ["", "?redirect=true"] {
        let unreachable = proxy.get(w.app.url(&format!("/auth/verify{query}")));
        let response = unreachable.header("x-original-url", wanted).header("accept", "text/html").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{query}");
        assert!(response.headers().get("x-tessera-sign-in").is_none(), "{query}");
    }
    // Tessera's own host is one the host-only cookie reaches (as the proxy names it: with a port).
    let own_url = |request: reqwest::RequestBuilder| request.header("x-original-url", w.app.url("/account?tab=1"));
    let own_forwarded = |request: reqwest::RequestBuilder| {
        request
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", w.app.addr.to_string())
            .header("x-forwarded-uri", "/account?tab=1")
    };
    for own in [own_url(proxy.get(w.app.url("/auth/verify"))), own_forwarded(proxy.get(w.app.url("/auth/verify")))] {
        let response = own.header("accept", "text/html").send().await.unwrap();
        assert_eq!(
            response.headers()["x-tessera-sign-in"].to_str().unwrap(),
            w.app.url("/auth/login?return_to=%2Faccount%3Ftab%3D1")
        );
    }
    // With the cookie shared with example.com's hosts, app.example.com is told where to sign in.
    let mut config = w.config.clone();
    config.auth.session_cookie_domain = Some("example.com".into());
    let shared = TestApp::start_as(w.app.db.share(), &config, "id.example.com").await;
    let public = |path: &str| format!("http://id.example.com:{}{path}", shared.addr.port());
    let verify = |query: &str| proxy.get(shared.url(&format!("/auth/verify{query}")));
    let nginx = verify("").header("x-original-url", wanted).header("accept", "text/html").send().await.unwrap();
    assert_eq!(nginx.status(), StatusCode::UNAUTHORIZED);
    let sign_in = nginx.headers()["x-tessera-sign-in"].to_str().unwrap().to_owned();
    let expected_query = url::form_urlencoded::Serializer::new(String::new()).append_pair("return_to", wanted).finish();
    assert_eq!(sign_in, public(&format!("/auth/login?{expected_query}")));

    let forwarded = |request: reqwest::RequestBuilder| {
        request
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "app.example.com")
            .header("x-forwarded-uri", "/notes?a=1&b=two%20words")
    };
    let navigation = forwarded(verify("?redirect=true")).header("accept", "text/html,*/*").send().await.unwrap();
    assert_eq!(navigation.status(), StatusCode::FOUND);
    assert_eq!(location(&navigation), sign_in);
    // A navigation through a proxy that does not ask for redirects is told 401 with the URL.
    let told = forwarded(verify("")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(told.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(told.headers()["x-tessera-sign-in"].to_str().unwrap(), sign_in);
    // An API call, or a POST, is told a plain 401: nginx, which redirects whatever names a
    // sign-in URL, must not send a script to a sign-in page.
    for refused in [
        forwarded(verify("?redirect=true")).header("accept", "application/json"),
        forwarded(verify("?redirect=true")).header("accept", "text/html").header("x-forwarded-method", "POST"),
        verify("").header("x-original-url", wanted).header("accept", "application/json"),
        verify("").header("x-original-url", wanted),
    ] {
        let response = refused.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().get("x-tessera-sign-in").is_none());
        assert_eq!(response.headers()["www-authenticate"], r#"Bearer realm="tessera""#);
    }
    // Another origin, or one URL told twice, names no sign-in at all.
    let elsewhere =
        verify("?redirect=true").header("x-original-url", "https://evil.example/").header("accept", "text/html");
    let twice = verify("")
        .header("x-original-url", wanted)
        .header("x-original-url", "https://app.example.com/other")
        .header("accept", "text/html");
    for response in [elsewhere.send().await.unwrap(), twice.send().await.unwrap()] {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().get("x-tessera-sign-in").is_none());
    }
    // A deep link too long to come back to, or holding a backslash in its query, comes back to
    // its path; one whose path is too long, to its origin: the browser still gets to sign in, and
    // the sign-in URL fits nginx's default header buffer.
    let long_query = format!("https://app.example.com/explore?left={}", "%5B%22a%22%5D".repeat(200));
    let backslash = "https://app.example.com/explore?path=C:\\temp";
    let long_path = format!("https://app.example.com/{}", "p/".repeat(1100));
    // Under 2048 characters, but over 3000 bytes once encoded into the sign-in URL.
    let wide_query = format!("https://app.example.com/explore?q={}", "%22".repeat(650));
    for (asked, kept) in [
        (long_query.as_str(), "https://app.example.com/explore"),
        (wide_query.as_str(), "https://app.example.com/explore"),
        (backslash, "https://app.example.com/explore"),
        (long_path.as_str(), "https://app.example.com/"),
    ] {
        let response = verify("").header("x-original-url", asked).header("accept", "text/html").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let told = response.headers()["x-tessera-sign-in"].to_str().unwrap().to_owned();
        let query = url::form_urlencoded::Serializer::new(String::new()).append_pair("return_to", kept).finish();
        assert_eq!(told, public(&format!("/auth/login?{query}")), "{asked}");
    }
    // A URL on Tessera's own host comes back as a path.
    let own = verify("").header("x-original-url", public("/account?tab=1")).header("accept", "text/html");
    let own = own.send().await.unwrap();
    assert_eq!(
        own.headers()["x-tessera-sign-in"].to_str().unwrap(),
        public("/auth/login?return_to=%2Faccount%3Ftab%3D1")
    );

    // With Secure cookies, a browser gets none over plain HTTP: an http:// origin, allowed or
    // not, is no place to send it to sign in (it would loop); https:// still is.
    let mut config = config.clone();
    config.auth.cookie_secure = true;
    config.auth.return_to_origins.push("http://plain.example.com".to_owned());
    let secure = TestApp::start_as(w.app.db.share(), &config, "id.example.com").await;
    let ask = |url: &str| {
        let request = proxy.get(secure.url("/auth/verify")).header("x-original-url", url).header("accept", "text/html");
        async move { request.send().await.unwrap() }
    };
    let plain = ask("http://plain.example.com/notes").await;
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    assert!(plain.headers().get("x-tessera-sign-in").is_none(), "{:?}", plain.headers());
    assert!(ask(wanted).await.headers().get("x-tessera-sign-in").is_some());

    // Followed, the sign-in ends where the browser was going.
    w.issuer.set_next_user(StubUser::new("fa-back", "back@example.com"));
    let mut browser = Browser::new();
    let done = browser.sign_in(&w.app, &expected_query).await;
    assert_eq!(location(&done), wanted);
    assert_eq!(browser.get(&w.app.url("/auth/verify")).await.status(), StatusCode::OK);
}

/// A provider's denial (the user cancelled there) that reaches an instance which cannot read the
/// provider's discovery document — another instance started the sign-in, and the provider's
/// discovery has been down since — is still the provider's denial, not `provider_unavailable`.
async fn a_denial_reaching_an_instance_without_the_providers_discovery_is_a_denial(backend: Backend) {
    let w = world(backend).await;
    let other = TestApp::start(w.app.db.share(), &w.config).await;
    let mut browser = Browser::new();
    let callback = browser.start(&w.app, "").await;
    w.issuer.set_available(false);
    let denied = with_param(&with_param(&callback, "code", None), "error", Some("access_denied"));
    let denied = denied.replace(&w.app.url(""), &other.url(""));
    let problem = body(browser.get(&denied).await, 400).await;
    assert_eq!(problem["code"], "provider_denied", "{problem}");
    // Its answer is still checked against the provider's issuer when it names one.
    w.issuer.set_available(true);
    let callback = browser.start(&w.app, "").await;
    w.issuer.set_available(false);
    let denied = with_param(&with_param(&callback, "code", None), "error", Some("access_denied"));
    let forged = with_param(&denied, "iss", Some("https://evil.example.com")).replace(&w.app.url(""), &other.url(""));
    assert_eq!(body(browser.get(&forged).await, 400).await["code"], "issuer_mismatch");
}
