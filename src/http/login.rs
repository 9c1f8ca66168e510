//! The sign-in chooser, `GET /login?return_to=…`: every configured provider as a button, and an
//! email field that uses home-realm discovery (`POST /login`, or a link's `GET /login?email=…`)
//! to go straight to the team's provider of a verified domain claim. `return_to` is checked
//! before anything is shown, and carried through every button. Also `GET /`, which sends a browser to its account page
//! (after a sign-in without `return_to`, for instance).

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use super::auth::redirect;
use super::csrf;
use super::extract::{ApiQuery, PageBytes};
use super::pages::icons::Icon;
use super::pages::{self, Chrome};
use super::problem::ApiError;
use crate::domain::{Email, ReturnTo};
use crate::error::ErrorCode;
use crate::service::sessions::LiveSession;
use crate::service::teams::Discovery;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/", get(home)).route("/login", get(show_login).post(submit_login))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LoginQuery {
    return_to: Option<String>,
    email: Option<String>,
    /// `login`: the provider chosen is asked for a fresh login (to sign in as someone else than
    /// its own session would pick).
    prompt: Option<String>,
    /// Why the browser was sent here, for a notice: `unlinked` (the sign-in method its session
    /// signed in with was removed, which ended the session) or `expired` (a form of the account
    /// page was sent after the session had ended, and did nothing). Other values are ignored.
    done: Option<String>,
}

/// The account page's link to the chooser after unlinking the sign-in method of its own session.
pub const SIGNED_OUT_BY_UNLINK: &str = "/login?return_to=%2Faccount&done=unlinked";

/// Where a form of the account page sent without a live session goes: nothing was done.
pub const ENDED_BEFORE_A_FORM: &str = "/login?return_to=%2Faccount&done=expired";

/// A provider button.
#[derive(Debug, Clone)]
pub struct ProviderButton {
    /// Its name as people read it.
    pub label: String,
    /// Its icon, or monogram.
    pub icon: Icon,
    /// Where it goes.
    pub href: String,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
    providers: Vec<ProviderButton>,
    return_to: Option<String>,
    /// The provider chosen is asked for a fresh login.
    fresh: bool,
    email: String,
    notice: Option<String>,
    notice_is_error: bool,
    /// Who the browser is signed in as, and where going on as them leads.
    signed_in: Option<SignedIn>,
}

/// The chooser's word to a signed-in browser: who it is, and going on as them — a link, or,
/// for an app's authorization request waiting on this sign-in, a form (`fields` posted to
/// `href`) that declines it, so that the app is told rather than left waiting.
struct SignedIn {
    who: String,
    href: String,
    fields: Vec<(String, String)>,
}

/// A notice at the top of the chooser.
enum Notice {
    /// None.
    None,
    /// Said to anyone: its text, and whether it is an error (of the email field).
    Always(String, bool),
    /// Said only to a browser signed out indeed (any page may link to the chooser with it).
    SignedOut(&'static str),
}

/// A provider's name as people read it: the well-known ones spelt their way, others capitalised.
pub fn provider_label(name: &str) -> String {
    match name {
        "github" => "GitHub".into(),
        "gitlab" => "GitLab".into(),
        "hubspot" => "HubSpot".into(),
        "google" => "Google".into(),
        "microsoft" => "Microsoft".into(),
        other => {
            let mut chars = other.chars();
            chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
        }
    }
}

/// `/auth/{path}?provider=…&return_to=…`, with `prompt=login` when `fresh`.
pub fn provider_href(path: &str, provider: &str, return_to: Option<&str>, fresh: bool) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("provider", provider);
    if let Some(to) = return_to {
        query.append_pair("return_to", to);
    }
    if fresh {
        query.append_pair(pages::FRESH_LOGIN.0, pages::FRESH_LOGIN.1);
    }
    format!("/auth/{path}?{}", query.finish())
}

/// `/auth/link` for `provider`, coming back to `return_to` — left out when the link, which the
/// sign-in before it may carry as its own `return_to`, would then be too long to be taken (and
/// the account page instead of a link still too long, for a provider name no entry has).
pub fn link_href(provider: &str, return_to: Option<&str>) -> String {
    [return_to.filter(|to| !to.is_empty()), None]
        .into_iter()
        .map(|to| provider_href("link", provider, to, false))
        .find(|href| href.len() <= ReturnTo::MAX_LEN)
        .unwrap_or_else(|| "/account".to_owned())
}

/// The buttons of every provider, for `/auth/login` or `/auth/link` (asking for a fresh login
/// when `fresh`).
pub fn provider_buttons(state: &AppState, path: &str, return_to: Option<&str>, fresh: bool) -> Vec<ProviderButton> {
    state
        .flows
        .providers()
        .all()
        .map(|p| ProviderButton {
            label: provider_label(p.name()),
            icon: state.pages.icon(p.name()),
            href: provider_href(path, p.name(), return_to, fresh),
        })
        .collect()
}

/// The chooser going on to `return_to` (asking the provider for a fresh login when `fresh`), with
/// a notice. To a browser signed in it says as whom, and offers to go on as them; its buttons,
/// which sign in as someone else, ask the provider for a fresh login (its own session would pick
/// the same person again). A store that cannot tell whose session it is: the plain chooser.
async fn chooser(
    state: &AppState,
    headers: &HeaderMap,
    (return_to, fresh): (Option<&str>, bool),
    email: &str,
    notice: Notice,
) -> Response {
    let live = pages::live_session(state, headers, "/login").await;
    let (notice, notice_is_error) = match notice {
        Notice::Always(text, error) => (Some(text), error),
        Notice::SignedOut(text) if matches!(live, Ok(None)) => (Some(text.to_owned()), false),
        Notice::SignedOut(_) | Notice::None => (None, false),
    };
    let signed_in = match live.ok().flatten() {
        Some((live, session)) => Some(going_on(state, &live, &session, return_to).await),
        None => None,
    };
    let fresh = fresh || signed_in.is_some();
    let providers = provider_buttons(state, "login", return_to, fresh);
    let status = if providers.is_empty() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    state.pages.render(
        status,
        &LoginPage {
            chrome: state.pages.chrome(signed_in.is_some()),
            providers,
            return_to: return_to.map(str::to_owned),
            fresh,
            email: email.to_owned(),
            notice,
            notice_is_error,
            signed_in,
        },
    )
}

/// How the chooser lets the browser signed in as `live` (with the cookie `session`) go on as
/// who it is: to `return_to` (see [`super::auth::continue_to`]); for an app's authorization
/// request waiting on this sign-in, on to it when it goes on for this session — else (it asks
/// for a fresher login, or names another user: a click would start a new sign-in, not go on) by
/// a form that declines it (see [`KEEP_SESSION_PATH`](super::auth::KEEP_SESSION_PATH)), so that
/// the app is told rather than left waiting. One that cannot be read now is offered the form
/// too: it sends a request gone meanwhile to the account page.
async fn going_on(state: &AppState, live: &LiveSession, session: &str, return_to: Option<&str>) -> SignedIn {
    let who = super::auth::who(&live.profile.user);
    let op = state.op.as_ref();
    let Some((op, request)) = op.zip(return_to).filter(|(op, to)| op.resumes_a_request(to)) else {
        return SignedIn { who, href: super::auth::continue_to(state, return_to), fields: Vec::new() };
    };
    if let Ok(true) = op.goes_on_as(request, &super::op::authorize::view(live, session)).await {
        return SignedIn { who, href: request.to_owned(), fields: Vec::new() };
    }
    let fields = super::auth::decline_fields(session, request);
    SignedIn { who, href: super::auth::KEEP_SESSION_PATH.to_owned(), fields }
}

#[utoipa::path(
    get,
    path = "/login",
    tag = "pages",
    operation_id = "show_login",
    summary = "The sign-in page.",
    params(LoginQuery),
    responses(crate::http::openapi::PageResponses),
    security(()),
)]
async fn show_login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<ApiQuery<LoginQuery>, ApiError>,
) -> Response {
    let query = match query {
        Ok(ApiQuery(query)) => query,
        Err(error) => return state.pages.error(&headers, error),
    };
    let fresh = match pages::fresh_login(query.prompt.as_deref()) {
        Ok(fresh) => fresh,
        Err(error) => return state.pages.error(&headers, error),
    };
    let notice = match query.done.as_deref() {
        Some("unlinked") => Notice::SignedOut(
            "The sign-in method you had signed in with was removed, so you are signed out here. Sign in with \
             one of the methods still linked to your account.",
        ),
        Some("expired") => {
            Notice::SignedOut("Your session here had ended, so nothing was changed. Sign in, then try again.")
        }
        _ => Notice::None,
    };
    discover(&state, &headers, (query.return_to.as_deref(), fresh), query.email.as_deref(), notice).await
}

/// `return_to` as the sign-in flow would take it (absent when empty).
fn checked_return_to(state: &AppState, return_to: Option<&str>) -> Result<Option<String>, ApiError> {
    Ok(state.sign_in.given_return_to(return_to)?.map(|to| to.as_str().to_owned()))
}

/// The chooser's email form, posted so that the address stays out of the URL (and so out of
/// proxies' access logs and the browser's history): the same discovery as a `GET` link's.
#[utoipa::path(
    post,
    path = "/login",
    tag = "pages",
    operation_id = "submit_login",
    summary = "The sign-in page's email form: home-realm discovery.",
    request_body(content_type = "application/x-www-form-urlencoded", description = "`email`; `return_to` and `prompt` (`login`) when the page had them."),
    responses(crate::http::openapi::PageResponses),
    security(()),
)]
async fn submit_login(State(state): State<Arc<AppState>>, headers: HeaderMap, PageBytes(body): PageBytes) -> Response {
    let fields = csrf::form_fields(&body);
    let (Ok(return_to), Ok(email), Ok(prompt)) =
        (one(&fields, "return_to"), one(&fields, "email"), one(&fields, pages::FRESH_LOGIN.0))
    else {
        let error = ApiError::new(ErrorCode::InvalidRequest, "send each of the form's fields at most once");
        return state.pages.error(&headers, error);
    };
    let fresh = match pages::fresh_login(prompt) {
        Ok(fresh) => fresh,
        Err(error) => return state.pages.error(&headers, error),
    };
    discover(&state, &headers, (return_to, fresh), email, Notice::None).await
}

/// A form field's value: none, or the one sent; `Err` when it was sent more than once.
fn one<'a>(fields: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ()> {
    match fields.iter().filter(|(k, _)| k == name).count() {
        0 => Ok(None),
        1 => Ok(csrf::field(fields, name)),
        _ => Err(()),
    }
}

/// Home-realm discovery: the chooser (with `notice`, when no email was given), or straight to the
/// provider the email's team signs in with.
async fn discover(
    state: &AppState,
    headers: &HeaderMap,
    (return_to, fresh): (Option<&str>, bool),
    email: Option<&str>,
    notice: Notice,
) -> Response {
    let return_to = match checked_return_to(state, return_to) {
        Ok(checked) => checked,
        Err(error) => return state.pages.error(headers, error),
    };
    let Some(email_text) = email.map(str::trim).filter(|e| !e.is_empty()) else {
        return chooser(state, headers, (return_to.as_deref(), fresh), "", notice).await;
    };
    let Ok(email) = Email::parse(email_text) else {
        let notice = "Enter an email address like name@example.com.".to_owned();
        return chooser(state, headers, (return_to.as_deref(), fresh), email_text, Notice::Always(notice, true)).await;
    };
    let providers = state.flows.providers();
    let team_provider = match state.teams.discover(&email).await {
        Ok(Discovery::Sso { provider, issuer }) => {
            providers.for_issuer(&provider, &issuer).map(|p| p.name().to_owned())
        }
        Ok(Discovery::Default) => None,
        Err(error) => {
            return state.pages.error_in(headers, error.into(), &crate::http::auth::going_to(return_to.as_deref()));
        }
    };
    match team_provider {
        Some(provider) => redirect(&provider_href("login", &provider, return_to.as_deref(), fresh), &[]),
        None => match providers.get(None) {
            // No team signs in its own way for this domain: the default provider, if any.
            Some(default) => redirect(&provider_href("login", default.name(), return_to.as_deref(), fresh), &[]),
            None => {
                let notice =
                    format!("{} has no team sign-in of its own here. Choose how you want to sign in.", email.domain());
                let notice = Notice::Always(notice, false);
                chooser(state, headers, (return_to.as_deref(), fresh), email_text, notice).await
            }
        },
    }
}

/// `GET /`: a browser goes to its account page (which asks to sign in first when needed); an
/// API client gets the usual 404.
#[utoipa::path(
    get,
    path = "/",
    tag = "pages",
    operation_id = "home",
    summary = "A browser goes to its account page; an API client gets a 404.",
    responses(crate::http::openapi::PageResponses),
    security(()),
)]
async fn home(headers: HeaderMap) -> Response {
    let mut response = if pages::wants_html(&headers) {
        redirect("/account", &[])
    } else {
        let mut not_found = super::not_found().await.into_response();
        // A shared cache in front must not hand this 404 to the next browser.
        pages::protect(not_found.headers_mut());
        not_found
    };
    response.headers_mut().append(header::VARY, HeaderValue::from_static("accept"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_keeps_where_it_was_going_while_that_fits() {
        assert_eq!(link_href("gitlab", Some("")), "/auth/link?provider=gitlab");
        assert_eq!(link_href("gitlab", Some("/a?b=1")), "/auth/link?provider=gitlab&return_to=%2Fa%3Fb%3D1");
        let fits = format!("/{}", "a".repeat(ReturnTo::MAX_LEN - "/auth/link?provider=gitlab&return_to=%2F".len()));
        assert_eq!(link_href("gitlab", Some(&fits)).len(), ReturnTo::MAX_LEN);
        let over = format!("{fits}a");
        assert_eq!(link_href("gitlab", Some(&over)), "/auth/link?provider=gitlab");
        assert_eq!(link_href(&"p".repeat(ReturnTo::MAX_LEN), None), "/account");
    }
}
