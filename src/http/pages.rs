//! Pages for people: server-rendered HTML (askama templates in `templates/`, which escape every
//! value by default) in one layout — `lang`, a viewport, a skip link, a header with the product's
//! name and logo, `<main>`, a footer with the support link — styled by one stylesheet that Tessera
//! serves itself (`/assets/tessera.css`, the brand colour prepended). No page needs JavaScript
//! and none carries inline script or style, so the pages' `Content-Security-Policy` forbids both.
//!
//! Every page carries the same headers (see [`secure_headers`]): that policy with
//! `frame-ancestors 'none'` (and `X-Frame-Options: DENY` for older browsers),
//! `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` (but the page continuing an
//! app's cross-site sign-out: `same-origin`, see [`Pages::continue_logout`]) and
//! `Cache-Control: no-store` (pages show personal data, or are one step of a sign-in).
//!
//! A browser (`Accept: text/html`) that meets an error gets a page that says, in plain words, what
//! happened and what to do next ([`errors`]); an API client gets the problem+json body.

pub mod errors;
pub mod icons;

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::problem::ApiError;
use crate::config::{BrandingConfig, ProviderConfig};
use crate::error::ErrorChain as _;
use icons::Icon;

/// The stylesheet, before the brand colour is prepended.
const STYLESHEET: &str = include_str!("../../assets/tessera.css");

/// The path the stylesheet is served at (with `?v=` and a digest of its content, so that it can
/// be cached for long and still change with the configuration).
pub const STYLESHEET_PATH: &str = "/assets/tessera.css";

/// The page of a page that failed to render: fixed, with the error's code and a next step.
const UNRENDERED_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Something went wrong</title></head><body><main><h1>Something went wrong</h1>\
<p>This page could not be shown (<code>internal_error</code>); it has been logged. Try again in a \
moment, or <a href=\"/account\">go to your account</a>.</p></main></body></html>\n";

/// The fixed page of a failure that left nothing to render with (a handler's panic), with the
/// pages' headers but for the branding's images.
pub fn unrendered_page() -> Response {
    let mut response = (StatusCode::INTERNAL_SERVER_ERROR, UNRENDERED_PAGE).into_response();
    let csp = HeaderValue::from_static("default-src 'none'; base-uri 'none'; frame-ancestors 'none'");
    page_headers(response.headers_mut(), csp);
    response
}

/// The headers of every page, with its `Content-Security-Policy`.
fn page_headers(headers: &mut HeaderMap, csp: HeaderValue) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    protect(headers);
}

/// What every page shares: the branding, the stylesheet and the security policy.
#[derive(Debug, Clone)]
pub struct Pages {
    branding: BrandingConfig,
    css: String,
    stylesheet_url: String,
    csp: HeaderValue,
    icons: HashMap<String, Icon>,
}

impl Pages {
    /// The pages of one deployment, branded by `branding`.
    pub fn new(branding: &BrandingConfig) -> Self {
        let css = format!(":root {{ --primary: {}; }}\n{STYLESHEET}", branding.primary_color);
        let digest = crate::crypto::sha256(css.as_bytes());
        let version: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            branding: branding.clone(),
            css,
            stylesheet_url: format!("{STYLESHEET_PATH}?v={version}"),
            csp: policy(branding.logo_origin().into_iter()),
            icons: HashMap::new(),
        }
    }

    /// The pages showing the icons of these providers (see [`icons`]); the origins of
    /// configured `icon_url`s join the policy's `img-src`.
    pub fn with_providers(mut self, providers: &[ProviderConfig]) -> Self {
        let (icons, origins) = icons::of_providers(providers, super::login::provider_label);
        self.icons = icons;
        self.csp = policy(self.branding.logo_origin().into_iter().chain(origins));
        self
    }

    /// How a provider is shown beside its name: its icon, or a monogram.
    pub fn icon(&self, provider: &str) -> Icon {
        self.icons.get(provider).cloned().unwrap_or_else(|| Icon::monogram(&super::login::provider_label(provider)))
    }

    /// The shared parts of a page; `signed_in` shows the account links in the header.
    pub fn chrome(&self, signed_in: bool) -> Chrome {
        Chrome {
            product_name: self.branding.product_name.clone(),
            logo_url: self.branding.logo_url.clone(),
            support_url: self.branding.support_url.clone(),
            stylesheet: self.stylesheet_url.clone(),
            signed_in,
            referrer_policy: NO_REFERRER,
        }
    }

    /// Renders a template into a page with the pages' headers.
    pub fn render<T: Template>(&self, status: StatusCode, template: &T) -> Response {
        match template.render() {
            Ok(body) => {
                let mut response = (status, body).into_response();
                self.secure_headers(response.headers_mut());
                response
            }
            Err(error) => {
                tracing::error!(error = %error.chain(), "a page failed to render");
                unrendered_page()
            }
        }
    }

    /// A page with a title, paragraphs and next steps (the first one is the main action).
    pub fn message(&self, status: StatusCode, message: Message) -> Response {
        let page = MessagePage {
            chrome: self.chrome(message.signed_in),
            title: message.title,
            paragraphs: message.paragraphs,
            actions: message.actions,
            code: message.code,
        };
        self.render(status, &page)
    }

    /// An error: a page that says what to do next for a browser, problem+json otherwise.
    pub fn error(&self, headers: &HeaderMap, error: ApiError) -> Response {
        self.error_in(headers, error, &errors::Context::default())
    }

    /// The answer to a browser whose session ended before it answered an app's request held for
    /// that session (the consent page, "Stay signed in"): a sign-in here cannot take the request
    /// on, so the page tells the person to go back to the app
    /// ([`errors::ended_before_the_answer`]); 401 `missing_credentials` as problem+json to other
    /// callers.
    pub fn ended_before_the_answer(&self, headers: &HeaderMap) -> Response {
        let error = ApiError::new(
            crate::error::ErrorCode::MissingCredentials,
            "the session ended before the answer; start again from the app",
        );
        self.page_or_problem(headers, error, errors::ended_before_the_answer)
    }

    /// [`Pages::error`] knowing where the browser was going (for "sign in", "try again").
    pub fn error_in(&self, headers: &HeaderMap, error: ApiError, context: &errors::Context) -> Response {
        self.page_or_problem(headers, error, |described| errors::message_for(described, context))
    }

    /// [`Pages::error_in`] for a link or connect flow that the provider did not finish
    /// ([`errors::unfinished_link_or_connect`]).
    pub fn unfinished_flow(&self, headers: &HeaderMap, error: ApiError, signed_in: bool) -> Response {
        self.page_or_problem(headers, error, |described| errors::unfinished_link_or_connect(described, signed_in))
    }

    /// `error` as the page `page` makes of it for a browser (with its `WWW-Authenticate`
    /// challenge, if any), problem+json otherwise.
    fn page_or_problem(
        &self,
        headers: &HeaderMap,
        error: ApiError,
        page: impl FnOnce(&crate::http::problem::Described) -> Message,
    ) -> Response {
        if wants_html(headers) {
            let described = error.describe();
            return with_challenge(self.message(described.status, page(&described)), described.challenge);
        }
        let mut response = error.into_response();
        protect(response.headers_mut());
        response
    }

    /// Adds the headers every page carries.
    pub fn secure_headers(&self, headers: &mut HeaderMap) {
        page_headers(headers, self.csp.clone());
    }
}

/// The pages' `Content-Security-Policy`, images allowed from this site and `image_origins`.
fn policy(image_origins: impl Iterator<Item = String>) -> HeaderValue {
    let mut images = vec!["'self'".to_owned()];
    for origin in image_origins {
        if !images.contains(&origin) {
            images.push(origin);
        }
    }
    // No `form-action`: a sign-in form's redirects lead to the providers (and a consent's to
    // the app), which Chromium checks against it.
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src {}; base-uri 'none'; frame-ancestors 'none'",
        images.join(" ")
    );
    HeaderValue::from_str(&csp).expect("the policy is ASCII: origins are serialised")
}

/// The parts of the layout every page fills in.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// The product's name.
    pub product_name: String,
    /// The logo, if configured.
    pub logo_url: Option<String>,
    /// Where to get help, if configured.
    pub support_url: Option<String>,
    /// The stylesheet's URL.
    pub stylesheet: String,
    /// Whether to show the account links.
    pub signed_in: bool,
    /// The page's `Referrer-Policy` in its `<meta>` ([`NO_REFERRER`] but where a page's own form
    /// must name its origin); a page that changes it sets the header to match.
    pub referrer_policy: &'static str,
}

/// The pages' referrer policy: their URLs may hold a code, a token or a hint, which no request
/// from them carries on. (A form posted from such a page names its origin `null`.)
pub const NO_REFERRER: &str = "no-referrer";

/// A next step: a link styled as a button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// What the button says.
    pub label: String,
    /// Where it goes (a local path, or a configured URL).
    pub href: String,
    /// A form's fields, posted to `href`; none for a link.
    pub fields: Vec<(String, String)>,
    /// It takes something away (shown as such).
    pub danger: bool,
}

impl Action {
    /// A next step.
    pub fn new(label: impl Into<String>, href: impl Into<String>) -> Self {
        Self { label: label.into(), href: href.into(), fields: Vec::new(), danger: false }
    }
}

/// What a message page says.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The title (also the heading).
    pub title: String,
    /// What happened, in plain words; the first is shown larger.
    pub paragraphs: Vec<String>,
    /// Next steps, the main one first.
    pub actions: Vec<Action>,
    /// The error's code, shown small for support.
    pub code: Option<String>,
    /// Whether to show the account links.
    pub signed_in: bool,
}

impl Message {
    /// A message with a title and one paragraph.
    pub fn new(title: impl Into<String>, text: impl Into<String>) -> Self {
        Self { title: title.into(), paragraphs: vec![text.into()], ..Self::default() }
    }

    /// Adds a next step.
    pub fn action(mut self, label: impl Into<String>, href: impl Into<String>) -> Self {
        self.actions.push(Action::new(label, href));
        self
    }

    /// Adds a next step that posts `fields` to `href` (a change, which a link must not make).
    pub fn post_action(
        mut self,
        label: impl Into<String>,
        href: impl Into<String>,
        fields: Vec<(String, String)>,
    ) -> Self {
        self.actions.push(Action { fields, ..Action::new(label, href) });
        self
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    chrome: Chrome,
    title: String,
    paragraphs: Vec<String>,
    actions: Vec<Action>,
    code: Option<String>,
}

/// The consent page's content.
#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    chrome: Chrome,
    who: &'a str,
    email: Option<&'a str>,
    client_name: &'a str,
    scopes: &'a [String],
    resource: Option<&'a str>,
    request_id: &'a str,
    /// How long the page's request waits for the answer, in minutes.
    minutes: u64,
}

impl Pages {
    /// The consent page: who is signed in (the account the app would get: `who`, with its email
    /// when given), which app asks for which scopes and, in words, for which resource, and a
    /// form that posts the decision (`request_id`, `decision`: `approve`, `deny`, or
    /// `another_account`) to `/oauth/consent`. The request id is single-use and bound to the
    /// session, which makes it the form's CSRF token.
    pub fn consent(
        &self,
        (who, email): (&str, Option<&str>),
        client_name: &str,
        scopes: &[String],
        resource: Option<&str>,
        request_id: &str,
    ) -> Response {
        let minutes = crate::service::op::provider::REQUEST_TTL.as_secs() / 60;
        let chrome = self.chrome(true);
        let page = ConsentPage { chrome, who, email, client_name, scopes, resource, request_id, minutes };
        self.render(StatusCode::OK, &page)
    }
}

/// What a scope lets an app do, in words, for the consent page and the account's apps; a scope Tessera gives no meaning to (an
/// app's own) is shown as it is.
pub fn scope_in_words(scope: &str) -> String {
    match scope {
        "openid" => "know who you are (your account's id here)".into(),
        "profile" => "see your name".into(),
        "email" => "see your email address".into(),
        "teams" => "see your teams and your role in each".into(),
        crate::service::op::provider::OFFLINE_ACCESS => {
            "keep this access while you are signed out, until you remove it".into()
        }
        other => other.to_owned(),
    }
}

/// The RP-initiated logout confirmation's content.
#[derive(Template)]
#[template(path = "confirm_logout.html")]
struct ConfirmLogoutPage<'a> {
    chrome: Chrome,
    fields: &'a [(&'a str, &'a str)],
    csrf: Option<&'a str>,
    resumed_field: &'static str,
}

/// The field of the form that [`Pages::continue_logout`] shows, so that its post is not taken
/// for another site's again.
pub const LOGOUT_RESUMED_FIELD: &str = "resumed";

impl Pages {
    /// Asks to confirm an app's sign-out request: a form posting the request's parameters
    /// (`fields`) back to `/oauth/logout` with the session's CSRF token.
    pub fn confirm_logout(&self, fields: &[(&str, &str)], csrf: &str) -> Response {
        let page = ConfirmLogoutPage {
            chrome: self.chrome(true),
            fields,
            csrf: Some(csrf),
            resumed_field: LOGOUT_RESUMED_FIELD,
        };
        self.render(StatusCode::OK, &page)
    }

    /// Continues an app's sign-out request posted from another site, which came without the
    /// session cookie (`SameSite=Lax`): a form posting the same `fields` from this origin, which
    /// carries it — so that an `id_token_hint` never goes into a URL, as a redirect would put it.
    pub fn continue_logout(&self, fields: &[(&str, &str)]) -> Response {
        // Whether this browser is signed in is not known here (no cookie came): no account links.
        // Its form has no CSRF token to carry, so it must name this origin (which a browser
        // without `Sec-Fetch-Site` is judged by; under `no-referrer` it would send `null`). The
        // page's URL holds nothing (the request was posted).
        const SAME_ORIGIN: &str = "same-origin";
        let chrome = Chrome { referrer_policy: SAME_ORIGIN, ..self.chrome(false) };
        let page = ConfirmLogoutPage { chrome, fields, csrf: None, resumed_field: LOGOUT_RESUMED_FIELD };
        let mut response = self.render(StatusCode::OK, &page);
        response.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static(SAME_ORIGIN));
        response
    }
}

/// The built-in icons' route (under [`icons::ICONS_PATH`]).
const ICON_ROUTE: &str = "/assets/icons/{file}";

/// The stylesheet and icon routes.
pub fn routes() -> Router<Arc<AppState>> {
    debug_assert!(ICON_ROUTE.starts_with(icons::ICONS_PATH));
    Router::new().route(STYLESHEET_PATH, get(stylesheet)).route(ICON_ROUTE, get(icons::serve_icon))
}

#[utoipa::path(
    get,
    path = "/assets/tessera.css",
    tag = "pages",
    operation_id = "stylesheet",
    summary = "The pages' stylesheet.",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The stylesheet.", body = String, content_type = "text/css; charset=utf-8")),
    security(()),
)]
async fn stylesheet(State(state): State<Arc<AppState>>) -> Response {
    let mut response = state.pages.css.clone().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Its URL changes with its content (`?v=`): it may be kept for a day.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    response
}

/// Whether the client asked for HTML (a browser navigation): `text/html` accepted, and weighed
/// no lower than JSON (`application/json`, `application/problem+json`).
pub fn wants_html(headers: &HeaderMap) -> bool {
    let ranges = super::extract::media_ranges(headers);
    let weight = |types: &[&str]| {
        // A malformed weight counts as none.
        ranges
            .iter()
            .filter(|(essence, _)| types.contains(&essence.as_str()))
            .filter_map(|(_, q)| *q)
            .fold(0.0, f32::max)
    };
    let html = weight(&["text/html"]);
    html > 0.0 && html >= weight(&["application/json", "application/problem+json"])
}

/// Adds `Cache-Control: no-store` and `Referrer-Policy: no-referrer`.
pub fn protect(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static(NO_REFERRER));
}

/// The browser's live session and its cookie value (`None` without one), or the error page to
/// answer instead: an ambiguous cookie (with "sign in" coming back to `here`), or a store
/// failure (with "try again" opening `here` again: the browser may well be signed in, and a new
/// sign-in would replace its session).
pub async fn live_session(
    state: &AppState,
    headers: &HeaderMap,
    here: &str,
) -> Result<Option<(crate::service::sessions::LiveSession, String)>, Response> {
    let signed_out = errors::Context { return_to: Some(here.to_owned()), signed_in: false, retry: None };
    match super::credentials::cookie(headers, state.cookies.session()) {
        Ok(Some(value)) => match state.sessions.resolve_session(value).await {
            Ok(live) => Ok(live.map(|live| (live, value.to_owned()))),
            Err(error) => {
                let unknown = errors::Context { return_to: Some(here.to_owned()), signed_in: true, retry: None };
                Err(state.pages.error_in(headers, error.into(), &unknown))
            }
        },
        Ok(None) => Ok(None),
        Err(error) => Err(state.pages.error_in(headers, error, &signed_out)),
    }
}

/// Whether the browser may be signed in, by its session cookie alone (no store read: for pages
/// answering a failure, which offer its account rather than a sign-in that would replace it).
pub fn may_be_signed_in(state: &AppState, headers: &HeaderMap) -> bool {
    !matches!(super::credentials::cookie(headers, state.cookies.session()), Ok(None))
}

/// The error page of a request refused before any handler read its session (no route, a body or
/// path that does not parse): a browser with a session cookie is offered its account, not a
/// sign-in that would replace its session (and end the apps' grants bound to it); no store read
/// to tell a live one.
pub fn refused(state: &AppState, headers: &HeaderMap, error: ApiError) -> Response {
    let signed_in = may_be_signed_in(state, headers);
    state.pages.error_in(headers, error, &errors::Context { signed_in, ..Default::default() })
}

/// `/login`, coming back to `return_to` after the sign-in.
pub fn login_url(return_to: Option<&str>) -> String {
    chooser_url(return_to, false)
}

/// [`login_url`] that asks the provider chosen for a fresh login (`prompt=login`): the way to
/// sign in as another person, where the provider's own session would pick the same one again.
pub fn fresh_login_url(return_to: Option<&str>) -> String {
    chooser_url(return_to, true)
}

fn chooser_url(return_to: Option<&str>, fresh: bool) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(to) = return_to {
        query.append_pair("return_to", to);
    }
    if fresh {
        query.append_pair(FRESH_LOGIN.0, FRESH_LOGIN.1);
    }
    match query.finish() {
        query if query.is_empty() => "/login".to_owned(),
        query => format!("/login?{query}"),
    }
}

/// The parameter of the chooser and of `/auth/login` that asks the provider for a fresh login.
pub const FRESH_LOGIN: (&str, &str) = ("prompt", "login");

/// Whether a sign-in asks the provider for a fresh login: `prompt` absent, or `login`; any other
/// value is refused.
pub fn fresh_login(prompt: Option<&str>) -> Result<bool, ApiError> {
    match prompt {
        None => Ok(false),
        Some(value) if value == FRESH_LOGIN.1 => Ok(true),
        Some(_) => Err(ApiError::new(
            crate::error::ErrorCode::InvalidRequest,
            "prompt may only be login (a fresh login at the provider)",
        )
        .field("prompt")),
    }
}

/// An error page with the `WWW-Authenticate` challenge of its error, if any (every 401 has one).
fn with_challenge(mut page: Response, challenge: Option<HeaderValue>) -> Response {
    if let Some(challenge) = challenge {
        page.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_wanted_when_accepted_and_weighed_no_lower_than_json() {
        let wants = |accept: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in accept {
                headers.append(header::ACCEPT, HeaderValue::from_str(value).unwrap());
            }
            wants_html(&headers)
        };
        assert!(wants(&["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"]), "a browser");
        assert!(wants(&["application/json", "text/html"]), "a tie, in two headers");
        assert!(!wants(&[]));
        assert!(!wants(&["application/problem+json, text/html;q=0"]), "q=0 is refused");
        assert!(!wants(&["application/json, text/html;q=0.5"]), "JSON preferred");
        assert!(!wants(&["text/html;q=oops"]), "a malformed weight counts as 0");
        assert!(wants(&["TEXT/HTML ; q=0.9, application/json;q=0.2"]));
    }

    #[test]
    fn pages_escape_their_text_and_carry_the_policy() {
        let pages = Pages::new(&BrandingConfig { product_name: "Acme <ID>".into(), ..BrandingConfig::default() });
        let response = pages.message(
            StatusCode::OK,
            Message::new("<script>alert(1)</script>", "a \"quoted\" & 'odd' text").action("Go", "/a?b=\"c\""),
        );
        let headers = response.headers();
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
        let page = MessagePage {
            chrome: pages.chrome(false),
            title: "<script>alert(1)</script>".into(),
            paragraphs: vec!["a \"quoted\" & 'odd' text".into()],
            actions: vec![Action::new("Go", "/a?b=\"c\"")],
            code: Some("not_found".into()),
        }
        .render()
        .unwrap();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"), "{page}");
        assert!(page.contains("Acme &#60;ID&#62;") || page.contains("Acme &lt;ID&gt;"), "{page}");
        assert!(!page.contains("b=\"c\""), "attributes are escaped: {page}");
        assert!(page.contains("<html lang=\"en\">") && page.contains("name=\"viewport\"") && page.contains("<main"));
        assert!(!page.contains("style=") && !page.contains("<style") && !page.contains("<script"));
    }

    #[test]
    fn the_stylesheet_carries_the_brand_colour_and_a_versioned_url() {
        let blue = Pages::new(&BrandingConfig::default());
        let green = Pages::new(&BrandingConfig { primary_color: "#116329".into(), ..BrandingConfig::default() });
        assert!(green.css.starts_with(":root { --primary: #116329; }"));
        assert_ne!(blue.stylesheet_url, green.stylesheet_url);
        assert!(blue.stylesheet_url.starts_with("/assets/tessera.css?v="));
    }

    #[test]
    fn a_remote_logo_is_allowed_by_the_policy() {
        let pages = Pages::new(&BrandingConfig {
            logo_url: Some("https://cdn.example.com/logo.svg".into()),
            ..BrandingConfig::default()
        });
        assert!(pages.csp.to_str().unwrap().contains("img-src 'self' https://cdn.example.com;"));
    }

    #[test]
    fn provider_icons_are_built_in_configured_or_a_monogram() {
        let provider = |name: &str, kind, issuer: &str, icon: Option<&str>| ProviderConfig {
            icon_url: icon.map(str::to_owned),
            ..ProviderConfig::for_tests(name, kind, issuer)
        };
        use crate::config::ProviderKind::{GitHub, Oidc};
        let pages = Pages::new(&BrandingConfig::default()).with_providers(&[
            provider("work-github", GitHub, "https://github.com", None),
            provider("corp", Oidc, "https://login.microsoftonline.com/tenant/v2.0", None),
            provider("okta", Oidc, "https://acme.okta.com", Some("https://cdn.acme.example/okta.svg")),
            provider("keycloak", Oidc, "https://sso.acme.example/realms/a", None),
        ]);
        assert_eq!(pages.icon("work-github").src.as_deref(), Some("/assets/icons/github.svg"));
        assert_eq!(pages.icon("corp").src.as_deref(), Some("/assets/icons/microsoft.svg"));
        assert_eq!(pages.icon("okta").src.as_deref(), Some("https://cdn.acme.example/okta.svg"));
        assert_eq!(pages.icon("keycloak"), Icon { src: None, initial: "K".into() });
        assert_eq!(pages.icon("gone"), Icon { src: None, initial: "G".into() });
        let csp = pages.csp.to_str().unwrap();
        assert!(csp.contains("img-src 'self' https://cdn.acme.example;"), "{csp}");
    }
}
