//! Browser sign-in: `GET /auth/login`, `GET /auth/callback/{provider}`, `GET /auth/link` (with
//! a confirmation page and `POST /auth/link` when opened from another site),
//! `GET /auth/logout` (a page that confirms) and `POST /auth/logout`, and `GET /auth/providers`
//! for login pages. A browser (`Accept: text/html`) meets errors as pages; API clients get
//! problem+json.
//!
//! Signing in again in a browser that has a session replaces it: the new session and the end of
//! the old one are written in one transaction.
//!
//! The state value goes to the provider in the authorization URL and to the browser in a
//! `__Host-` cookie; the callback must bring both back. Redirects are `303 See Other` with
//! `Cache-Control: no-store` and `Referrer-Policy: no-referrer` (the callback URL holds a code).

use crate::error::{ErrorChain as _, ErrorCode};
use crate::store::SessionEnd;
use std::sync::Arc;

use askama::Template;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::AppState;
use super::audit::FlowAction;
use super::caller::{acting_caller_signed_in_lately, require_recent};
use super::credentials::{Credentials, cookie};
use super::csrf;
use super::extract::{ApiQuery, PageBytes, PagePath};
use super::pages::{self, Chrome, Message, errors};
use super::problem::ApiError;
use super::responses::{ProviderResponse, ProvidersResponse};
use crate::service::signin::Browser;
use crate::upstream::oauth_flow::{Callback, FLOW_TTL, Purpose};

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/auth/providers", get(list_providers))
        .route("/auth/login", get(start_login))
        .route("/auth/link", get(start_link).post(start_link_form))
        .route("/auth/callback/{provider}", get(complete_callback))
        .route("/auth/logout", get(confirm_logout).post(logout))
        .route("/auth/continue", post(keep_session))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StartQuery {
    provider: Option<String>,
    return_to: Option<String>,
    /// `login`: the provider is asked for a fresh login (to sign in as someone else than its own
    /// session would pick).
    prompt: Option<String>,
}

/// The query of `GET /auth/link` (which takes no `prompt`: the account is linked to the
/// session's user, whoever the provider's session is).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LinkQuery {
    provider: Option<String>,
    return_to: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

crate::debug_redacted!(CallbackQuery { shown: [iss, error], secret: [code, state] });

#[utoipa::path(
    get,
    path = "/auth/providers",
    tag = "sign-in",
    operation_id = "list_providers",
    summary = "The sign-in providers.",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The providers.", body = ProvidersResponse)),
    security(()),
)]
async fn list_providers(State(state): State<Arc<AppState>>) -> Json<ProvidersResponse> {
    let providers = state.flows.providers().all().map(|p| ProviderResponse::new(p.name())).collect();
    Json(ProvidersResponse { providers })
}

#[utoipa::path(
    get,
    path = "/auth/login",
    tag = "pages",
    operation_id = "start_login",
    summary = "Starts a sign-in: redirects to the provider.",
    params(StartQuery),
    responses(crate::http::openapi::PageResponses),
    security(()),
)]
async fn start_login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<ApiQuery<StartQuery>, ApiError>,
) -> Response {
    let query = match query {
        Ok(ApiQuery(query)) => query,
        Err(error) => return state.pages.error(&headers, error),
    };
    let asked_fresh = match pages::fresh_login(query.prompt.as_deref()) {
        Ok(asked) => asked,
        Err(error) => return state.pages.error(&headers, error),
    };
    // A browser signed in here, sent by another site — or a sibling host of this one
    // (`same-site`), or a link opened from a mail or chat app (`none`, as typed in): a sign-in
    // forced that way would end its session (and the apps' grants bound to it) and might sign it
    // in as someone else. The browser is asked first; signing in again from this origin's pages
    // (the question's own link, the chooser) goes ahead.
    if !csrf::from_our_pages(&headers) {
        // (A failure to read the session tries this sign-in's chooser again, keeping where it
        // was going.)
        let here = pages::login_url(query.return_to.as_deref());
        match pages::live_session(&state, &headers, &here).await {
            Ok(Some((live, _))) => {
                return already_signed_in(
                    &state,
                    &headers,
                    (query.provider.as_deref(), asked_fresh),
                    query.return_to.as_deref(),
                    &live,
                );
            }
            Ok(None) => {}
            Err(response) => return response,
        }
    }
    // Coming back to an authorization request that asked for a fresh login: the provider is
    // asked for one as well, even when the browser came by the chooser.
    // (Not looked up when the sign-in asks for one itself.)
    let fresh = match (&state.op, query.return_to.as_deref()) {
        _ if asked_fresh => true,
        (Some(op), Some(return_to)) => match op.resumes_a_fresh_login(return_to).await {
            Ok(fresh) => fresh,
            Err(error) => {
                return state.pages.error_in(&headers, ApiError::from(error), &going_on_to(&state, Some(return_to)));
            }
        },
        _ => false,
    };
    // No provider named and none to take without asking (several, none the default): the
    // chooser asks, and comes back to the same `return_to` (forward-auth's sign-in link, say).
    let provider = match query.provider {
        Some(named) => named,
        None => match state.flows.providers().default_or_only() {
            Some(provider) => provider.name().to_owned(),
            None => {
                return match state.sign_in.given_return_to(query.return_to.as_deref()) {
                    Ok(return_to) => {
                        let return_to = return_to.as_ref().map(|to| to.as_str());
                        redirect(
                            &if fresh { pages::fresh_login_url(return_to) } else { pages::login_url(return_to) },
                            &[],
                        )
                    }
                    Err(error) => state.pages.error(&headers, error.into()),
                };
            }
        },
    };
    let started = state.sign_in.begin(Some(&provider), query.return_to.as_deref(), None, fresh).await;
    match started {
        Ok(started) => {
            redirect(started.location.as_str(), &[login_cookie(&state, &headers, started.binding.expose_secret())])
        }
        // "Try again" goes back to the sign-in with the same `return_to`: an app's request held
        // meanwhile is answered once the provider is back.
        Err(error) => state.pages.error_in(&headers, error.into(), &going_on_to(&state, query.return_to.as_deref())),
    }
}

/// [`going_to`] with `return_to` only if it passes the check (a failure met before it was
/// checked must not carry it on to the next page).
fn going_on_to(state: &AppState, return_to: Option<&str>) -> errors::Context {
    let checked = state.sign_in.given_return_to(return_to).ok().flatten();
    going_to(checked.as_ref().map(|to| to.as_str()))
}

/// The page context of a sign-in going to `return_to`: its "try again" and "sign in" keep it.
pub(crate) fn going_to(return_to: Option<&str>) -> errors::Context {
    errors::Context { return_to: return_to.filter(|to| !to.is_empty()).map(str::to_owned), ..Default::default() }
}

/// How a page names the signed-in person: their name, else their email, else their id.
pub(crate) fn who(user: &crate::domain::User) -> String {
    user.name.clone().or_else(|| user.email.clone()).unwrap_or_else(|| user.id.to_string())
}

/// Where "Continue as …" goes: `return_to`, unless that is one of Tessera's own flows. A click on
/// this page is a navigation from this origin, which `/auth/link` takes as the person's own doing;
/// a `return_to` chosen by another site must not borrow that (`/auth/link?provider=…` would link
/// whoever the browser is signed in as at the provider without asking), so such a destination
/// goes to the account page instead.
pub(super) fn continue_to(state: &AppState, return_to: Option<&str>) -> String {
    const ACCOUNT: &str = "/account";
    let Some(to) = return_to else { return ACCOUNT.to_owned() };
    // Resolved as the browser will (dot segments and all), against this origin.
    let here = url::Url::parse(&state.flows.public_url()).ok();
    let resolved = here.as_ref().and_then(|here| here.join(to).ok().map(|url| (here, url)));
    // By the first non-empty segment: a proxy that merges slashes reads `//auth/link` as
    // `/auth/link`.
    // A path with percent-encoding is ours too: a proxy that decodes it (`/%61uth/link`) would
    // forward one of Tessera's own flows.
    let ours = resolved.is_none_or(|(here, url)| {
        let path = url.path().to_ascii_lowercase();
        let first = path.split('/').find(|segment| !segment.is_empty()).unwrap_or_default();
        url.origin() == here.origin()
            && (path.contains('%')
                || ["auth", "oauth", "login", "logout"].contains(&first)
                || (first == "account" && path.len() > 8))
    });
    if ours { ACCOUNT.to_owned() } else { to.to_owned() }
}

/// The page for a browser sent from another site to sign in while it is signed in here: go on
/// as who it is, or sign in anew (a link of this origin's, which then goes ahead).
/// The question asked of a browser signed in here that another site sends to sign in again
/// (through `provider`, coming back to `return_to`): go on as who it is, or sign in anew — which
/// ends its session here, and the apps' grants bound to it.
pub(super) fn already_signed_in(
    state: &AppState,
    headers: &HeaderMap,
    (provider, fresh): (Option<&str>, bool),
    return_to: Option<&str>,
    live: &crate::service::sessions::LiveSession,
) -> Response {
    let signed_in = errors::Context { return_to: None, signed_in: true, retry: None };
    let provider = match state.flows.sign_in_provider(provider) {
        Ok(found) => Some(found.name().to_owned()),
        // None named, and no default among several: signing in anew goes through the chooser.
        Err(_) if provider.is_none() => None,
        Err(error) => return state.pages.error_in(headers, error.into(), &signed_in),
    };
    let return_to = match state.sign_in.given_return_to(return_to) {
        Ok(checked) => checked.map(|to| to.as_str().to_owned()),
        Err(error) => return state.pages.error_in(headers, error.into(), &signed_in),
    };
    let go_on = continue_to(state, return_to.as_deref());
    let title = "You are already signed in";
    // Going on as who it is, for an app's authorization request that asked for a new sign-in:
    // that request is answered (declined) rather than left waiting — a change, so a form.
    let keeps = return_to.as_deref().filter(|to| state.op.as_ref().is_some_and(|op| op.resumes_a_request(to)));
    if let (Some(return_to), Ok(Some(session))) = (keeps, cookie(headers, state.cookies.session())) {
        let go_on = GoOn::Post { href: KEEP_SESSION_PATH, fields: decline_fields(session, return_to) };
        return account_choice(state, live, title, (provider.as_deref(), fresh), go_on, Some(return_to));
    }
    account_choice(state, live, title, (provider.as_deref(), fresh), GoOn::Link(&go_on), return_to.as_deref())
}

/// Where "Continue as …" goes: a link, or a form posted (with its fields).
pub(super) enum GoOn<'a> {
    /// A link.
    Link(&'a str),
    /// A form posted to `href`.
    Post {
        /// Where.
        href: &'static str,
        /// Its fields.
        fields: Vec<(String, String)>,
    },
}

/// The fields of the form that declines, for the browser with the session cookie `session`, the
/// app's request `return_to` resumes: what [`keep_session`] reads.
pub(super) fn decline_fields(session: &str, return_to: &str) -> Vec<(String, String)> {
    vec![(csrf::FIELD.to_owned(), csrf::token(session)), ("return_to".to_owned(), return_to.to_owned())]
}

/// The path of [`keep_session`] (its route names it too).
pub(super) const KEEP_SESSION_PATH: &str = "/auth/continue";

/// `POST /auth/continue`: "Stay signed in as … and decline" on the question asked of a browser signed in here
/// that another site sent to sign in again for an app's authorization request (`prompt=login`,
/// `max_age`, another user's hint): the person keeps their session, so the new sign-in the request asked for will not
/// happen — the request is used up and its app told `access_denied` (RFC 6749 4.1.2.1) rather
/// than left waiting. A request already gone, or none: the account page.
#[utoipa::path(
    post,
    path = "/auth/continue",
    tag = "pages",
    operation_id = "keep_session",
    summary = "\"Stay signed in as … and decline\" where another site sent a signed-in browser to sign in again for an app: the app is told access_denied.",
    request_body(content = crate::http::openapi::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn keep_session(State(state): State<Arc<AppState>>, headers: HeaderMap, PageBytes(body): PageBytes) -> Response {
    let fields = csrf::form_fields(&body);
    let session = match cookie(&headers, state.cookies.session()) {
        Ok(Some(session)) => session,
        Ok(None) => return state.pages.ended_before_the_answer(&headers),
        Err(error) => return state.pages.error(&headers, error),
    };
    if let Err(error) = csrf::check(&headers, session, csrf::field(&fields, csrf::FIELD)) {
        return state.pages.error(&headers, error);
    }
    // The token is the cookie's: a made-up cookie with its token is no session to keep.
    match state.sessions.resolve(session).await {
        Ok(Some(_)) => {}
        Ok(None) => return state.pages.ended_before_the_answer(&headers),
        Err(error) => return state.pages.error(&headers, error.into()),
    }
    let return_to = csrf::field(&fields, "return_to");
    let description = "the user kept their current session rather than sign in again";
    let sender = crate::crypto::sha256(session.as_bytes());
    match app_told(&state, return_to, description, Some(&sender)).await {
        Ok(Some(to)) => redirect(&to, &[]),
        Ok(None) => redirect(&continue_to(&state, None), &[]),
        // Not a redirect to the account page as if all were well: the failure is shown, still
        // signed in, with the account as the way on — a "try again" opening the request again
        // would come from this origin, and go on to the new sign-in the person just declined.
        Err(error) => {
            let context = errors::Context { signed_in: true, ..Default::default() };
            state.pages.error_in(&headers, error.into(), &context)
        }
    }
}

/// A page that lets a signed-in browser go on as who it is (to `go_on`) or sign in anew through
/// `provider` (the chooser when `None`, which asks the provider for a fresh login), coming back
/// to `return_to`: signing in anew ends its session here. `fresh`: the provider is asked for a
/// fresh login in either case (the sign-in asked for one).
pub(super) fn account_choice(
    state: &AppState,
    live: &crate::service::sessions::LiveSession,
    title: &str,
    (provider, fresh): (Option<&str>, bool),
    go_on: GoOn<'_>,
    return_to: Option<&str>,
) -> Response {
    let who = who(&live.profile.user);
    let (through, href) = match provider {
        Some(provider) => {
            (super::login::provider_label(provider), super::login::provider_href("login", provider, return_to, fresh))
        }
        // Another account than the provider's own session would pick: asked for afresh.
        None => ("another account".to_owned(), pages::fresh_login_url(return_to)),
    };
    let message = |text: String| pages::Message { signed_in: true, ..pages::Message::new(title, text) };
    let message = match go_on {
        GoOn::Link(to) => message(format!(
            "You are signed in as {who}. Go on as {who}, or sign in with {through} instead: that ends this \
             browser's session here."
        ))
        .action(format!("Continue as {who}"), to.to_owned()),
        // Going on answers an app's request that asked for a new sign-in as declined: said so.
        GoOn::Post { href, fields } => message(format!(
            "You are signed in as {who}, and an app asks you to sign in again. Sign in with {through} to go on \
             to the app (that ends this browser's session here), or stay signed in as {who}: the app is then \
             told that you declined."
        ))
        .post_action(format!("Stay signed in as {who} and decline"), href, fields),
    }
    .action(format!("Sign in with {through}"), href);
    state.pages.message(StatusCode::OK, message)
}

#[utoipa::path(
    get,
    path = "/auth/link",
    tag = "pages",
    operation_id = "start_link",
    summary = "Starts linking another identity: redirects to the provider.",
    params(LinkQuery),
    responses(crate::http::openapi::PageResponses),
    security(("session" = []), ("bearer" = [])),
)]
async fn start_link(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    query: Result<ApiQuery<LinkQuery>, ApiError>,
) -> Response {
    // Without a session, "sign in" comes back here, which then starts the link.
    let here = uri.path_and_query().map_or("/auth/link", |p| p.as_str()).to_owned();
    let context = errors::Context { return_to: Some(here), signed_in: false, retry: None };
    let query = match query {
        Ok(ApiQuery(query)) => query,
        Err(error) => return state.pages.error_in(&headers, error, &context),
    };
    // Opened from anywhere but one of this origin's pages — another site, a redirect through
    // one, a link in a mail or chat app, the address bar (`none`), or a browser that does not
    // say (no `Sec-Fetch-Site`: an older or embedded one) —: a forced link would attach whoever
    // the browser is signed in as at the provider — maybe not this person — to this account. The
    // browser is asked first, with a form of this session's. A caller that sent the user's token
    // rather than the session cookie is not a browser led here by someone else.
    let same_origin = csrf::fetch_site(&headers) == Some(b"same-origin");
    let by_token = Credentials::read(&headers).is_ok_and(|c| c.user_token().is_some());
    let ask_first = !same_origin && !by_token;
    let user = match acting_caller_signed_in_lately(&state, &headers).await {
        Ok(user) => user,
        Err(error) => {
            // A failure on our side, with a session cookie: the browser may well be signed in,
            // and "try again" opens this page again rather than a new sign-in — unless the link
            // was to be confirmed first: clicked on this page, it would come from this origin
            // and start without the question; the account page has the link buttons.
            let cookie_sent = matches!(cookie(&headers, state.cookies.session()), Ok(Some(_)));
            let signed_in = cookie_sent && error.code().status().is_server_error();
            let retry = (signed_in && ask_first).then(|| "/account".to_owned());
            return state.pages.error_in(&headers, error, &errors::Context { signed_in, retry, ..context });
        }
    };
    if ask_first {
        return confirm_link(&state, &headers, &query, &context).await;
    }
    begin_link(&state, &headers, user, query.provider.as_deref(), query.return_to.as_deref()).await
}

#[derive(Template)]
#[template(path = "link.html")]
struct LinkPage {
    chrome: Chrome,
    who: String,
    provider: String,
    provider_label: String,
    return_to: Option<String>,
    csrf: String,
}

/// The page asking a signed-in browser to confirm a link it did not start from this origin.
async fn confirm_link(state: &AppState, headers: &HeaderMap, query: &LinkQuery, context: &errors::Context) -> Response {
    // (A failure to read the session tries the account page again, not this one: see
    // `start_link`.)
    let (live, session) = match pages::live_session(state, headers, "/account").await {
        Ok(Some(found)) => found,
        Ok(None) => return state.pages.error_in(headers, sign_in_to_link(), context),
        Err(response) => return response,
    };
    let signed_in = errors::Context { return_to: None, signed_in: true, retry: None };
    let provider = match state.flows.sign_in_provider(query.provider.as_deref()) {
        Ok(provider) => provider.name().to_owned(),
        Err(error) => return state.pages.error_in(headers, error.into(), &signed_in),
    };
    if let Err(error) = state.sign_in.given_return_to(query.return_to.as_deref()) {
        return state.pages.error_in(headers, error.into(), &signed_in);
    }
    let user = &live.profile.user;
    let page = LinkPage {
        chrome: state.pages.chrome(true),
        who: who(user),
        provider_label: super::login::provider_label(&provider),
        provider,
        return_to: query.return_to.clone(),
        csrf: csrf::token(&session),
    };
    state.pages.render(StatusCode::OK, &page)
}

/// `POST /auth/link`: the confirmation page's form, carrying the session's CSRF token.
#[utoipa::path(
    post,
    path = "/auth/link",
    tag = "pages",
    operation_id = "start_link_form",
    summary = "Starts linking another identity from the confirmation page: redirects to the provider.",
    request_body(content = crate::http::openapi::LinkForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn start_link_form(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PageBytes(body): PageBytes,
) -> Response {
    let (live, session) = match pages::live_session(&state, &headers, "/account").await {
        Ok(Some(found)) => found,
        Ok(None) => {
            let context = errors::Context { return_to: Some("/account".into()), signed_in: false, retry: None };
            return state.pages.error_in(&headers, sign_in_to_link(), &context);
        }
        Err(response) => return response,
    };
    let fields = csrf::form_fields(&body);
    if let Err(error) = csrf::check(&headers, &session, csrf::field(&fields, csrf::FIELD)) {
        return state.pages.error(&headers, error);
    }
    let (provider, return_to) = (csrf::field(&fields, "provider"), csrf::field(&fields, "return_to"));
    if let Err(error) = require_recent(&live) {
        // Signed in again, the browser comes back to this link (asked to confirm it again).
        let again = match provider {
            Some(provider) => super::login::link_href(provider, return_to),
            None => "/account".to_owned(),
        };
        let context = errors::Context { return_to: Some(again), signed_in: true, retry: None };
        return state.pages.error_in(&headers, error, &context);
    }
    begin_link(&state, &headers, live.record.user_id, provider, return_to).await
}

/// Starts the link flow of `user`: to the provider, with the flow's cookie.
async fn begin_link(
    state: &AppState,
    headers: &HeaderMap,
    user: crate::domain::UserId,
    provider: Option<&str>,
    return_to: Option<&str>,
) -> Response {
    match state.sign_in.begin(provider, return_to, Some(user), false).await {
        Ok(started) => {
            redirect(started.location.as_str(), &[login_cookie(state, headers, started.binding.expose_secret())])
        }
        Err(error) => state.pages.error_in(
            headers,
            error.into(),
            &errors::Context { return_to: None, signed_in: true, retry: None },
        ),
    }
}

fn sign_in_to_link() -> ApiError {
    ApiError::new(crate::error::ErrorCode::MissingCredentials, "sign in to link another sign-in method")
}

#[utoipa::path(
    get,
    path = "/auth/callback/{provider}",
    tag = "pages",
    operation_id = "complete_callback",
    summary = "The provider's redirect back after a sign-in.",
    params(("provider" = String, Path, description = "A sign-in provider id"), CallbackQuery),
    responses(crate::http::openapi::PageResponses),
    security(()),
)]
async fn complete_callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PagePath(provider): PagePath<String>,
    query: Result<ApiQuery<CallbackQuery>, ApiError>,
) -> Response {
    // In its own task, to its end even if the browser goes away (the tab closed): once the flow
    // is taken the provider's code is spent, and the tokens it brings are stored (a connection,
    // a link, a session) or refused, not dropped half-way — live at the provider, nowhere here.
    let (pages, page_headers) = (state.clone(), headers.clone());
    crate::run_to_end(callback_to_end(state, headers, provider, query))
        .await
        .unwrap_or_else(|| pages.pages.error(&page_headers, super::audit::shutting_down()))
}

/// [`complete_callback`]'s work.
async fn callback_to_end(
    state: Arc<AppState>,
    headers: HeaderMap,
    provider: String,
    query: Result<ApiQuery<CallbackQuery>, ApiError>,
) -> Response {
    // A malformed callback (a parameter twice, say), or one that matches no flow of this
    // browser's, gets a page and leaves the browser's sign-in cookie alone: it may be another
    // tab's flow under way (and anyone can send a browser to a callback URL).
    let query = match query {
        Ok(ApiQuery(query)) => query,
        Err(error) => {
            super::audit::sign_in_unmatched(&state, &provider, error.code());
            return state.pages.error(&headers, error);
        }
    };
    let cookies = cookie(&headers, state.cookies.login()).and_then(|login| {
        let session = cookie(&headers, state.cookies.session())?;
        Ok((login, session))
    });
    let (held, session) = match cookies {
        Ok((login, session)) => (held_states(login.unwrap_or_default()).collect::<Vec<_>>(), session),
        Err(error) => {
            let clear_login = state.cookies.clear(state.cookies.login());
            return with_cookie(state.pages.error(&headers, error), clear_login);
        }
    };
    let old_session = session.map(SecretString::from);
    let taken = match state.flows.take(&provider, query.state.as_deref(), &held).await {
        Ok(taken) => taken,
        Err((error, binding)) => {
            let error = ApiError::from(error);
            super::audit::sign_in_failed(&state, &headers, &provider, FlowAction::SignIn, None, error.code()).await;
            // A browser still signed in (the provider's redirect replayed from its history, a
            // link started before another tab signed in) is not sent to sign in, which would
            // end its session.
            // Asked only where it changes the page: not of a store that just failed to answer.
            let signed_in = error.code() == ErrorCode::InvalidState
                && still_signed_in(&state, &headers, session, error.code()).await;
            // A state, and no sign-in cookie at all: most likely one the browser will never send.
            // (A session cookie sent shows cookies are not blocked.)
            let without_cookie = held.is_empty() && query.state.is_some() && session.is_none();
            let page = if without_cookie && error.code() == ErrorCode::InvalidState && pages::wants_html(&headers) {
                let described = error.describe();
                let message = errors::sign_in_without_its_cookie(&described, &state.flows.public_url());
                state.pages.message(described.status, message)
            } else {
                state.pages.error_in(&headers, error, &errors::Context { return_to: None, signed_in, retry: None })
            };
            // A state of none of this browser's sign-ins leaves the cookie as it is (it may be
            // another tab's sign-in under way); one of them is dropped, its flow being gone.
            return match binding {
                Some(binding) => with_cookie(page, login_cookie_without(&state, &held, binding)),
                None => page,
            };
        }
    };
    // This flow is used up, whatever comes of it; the other tabs' stay under way.
    let clear_login = login_cookie_without(&state, &held, taken.binding);
    // Its refusals name the provider it was started with (the path's may be another).
    let provider = taken.flow.provider.clone();
    // What the flow is for, known before it is finished: a refusal is recorded as such.
    let flow = &taken.flow;
    // Who started a link or connection: the actor of its refusal.
    let flow_user = flow.link_user;
    let action = match (&flow.profile, &flow.link_user) {
        (Some(_), _) => FlowAction::Connect,
        (None, Some(_)) => FlowAction::Link,
        (None, None) => FlowAction::SignIn,
    };
    // A sign-in that fails from here on offers to try again towards where the browser was going
    // (an app's authorization request waiting for it, say), not to the account page.
    let context = errors::Context {
        return_to: flow.link_user.is_none().then(|| flow.return_to.clone()),
        signed_in: false,
        retry: None,
    };
    let callback = Callback { code: query.code, state: query.state, iss: query.iss, error: query.error };
    let finished = match state.flows.finish(taken, callback).await {
        Ok(finished) => finished,
        Err(error) => {
            let error = ApiError::from(error);
            // The user cancelled at the provider (its `access_denied`, not another of its errors,
            // which a retry or the operator may cure).
            let cancelled = error.code() == ErrorCode::ProviderDenied;
            super::audit::sign_in_failed(&state, &headers, &provider, action, flow_user, error.code()).await;
            if action == FlowAction::SignIn
                && cancelled
                && let Ok(Some(to)) = app_told(
                    &state,
                    context.return_to.as_deref(),
                    "the sign-in was cancelled at the upstream provider",
                    None,
                )
                .await
            {
                return redirect(&to, &[clear_login]);
            }
            // A link or a connection acts for the signed-in user, whose session stays as it was;
            // so does a browser's that was signed in before this sign-in (switching accounts).
            let page = match action {
                FlowAction::SignIn => {
                    let signed_in = still_signed_in(&state, &headers, session, error.code()).await;
                    state.pages.error_in(&headers, error, &errors::Context { signed_in, ..context })
                }
                _ => state.pages.unfinished_flow(&headers, error, session.is_some()),
            };
            return with_cookie(page, clear_login);
        }
    };
    // Linking and connecting act for the browser's signed-in user; a sign-in replaces whoever
    // it was, so it does not read the session it ends.
    let current_user = match (&finished.purpose, session) {
        (Purpose::SignIn, _) | (_, None) => None,
        // A store that cannot answer is said as such, not as a flow of another browser.
        (_, Some(session)) => match state.sessions.resolve(session).await {
            Ok(user) => user,
            Err(error) => {
                let error = ApiError::from(error);
                super::audit::sign_in_failed(&state, &headers, &provider, action, flow_user, error.code()).await;
                return with_cookie(state.pages.unfinished_flow(&headers, error, true), clear_login);
            }
        },
    };
    if let Purpose::Connect { .. } = finished.purpose {
        let request_id = super::audit::request_id_of(&headers);
        return match state.auth_profiles.complete(finished, current_user, request_id).await {
            // On to a page of its own (a GET): reloading it must not replay this callback.
            Ok(_) => redirect(super::auth_profiles::connect::CONNECTED, &[clear_login]),
            Err(error) => {
                let error = ApiError::from(error);
                super::audit::sign_in_failed(&state, &headers, &provider, action, flow_user, error.code()).await;
                // A signed-in browser is not sent to sign in (which would end its session).
                let context = errors::Context { return_to: None, signed_in: current_user.is_some(), retry: None };
                with_cookie(state.pages.error_in(&headers, error, &context), clear_login)
            }
        };
    }
    // A link acts for the signed-in user, whose session stays whatever comes of it: a page of
    // its failure offers their account, not a sign-in that would replace the session. A failed
    // sign-in leaves the session it would have replaced as it was (see below).
    let signed_in = current_user.is_some();
    let context = errors::Context { signed_in, ..context };
    let browser = Browser {
        current_user,
        // The browser's earlier session, whoever it was for, ends with a sign-in.
        session: old_session,
        device: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).and_then(device_label),
        request_id: super::audit::request_id(&headers),
    };
    match state.sign_in.complete(finished, browser).await {
        Ok(done) => {
            let mut cookies = vec![clear_login];
            if let Some(session) = &done.session {
                cookies.push(state.cookies.set(state.cookies.session(), session.expose_secret(), state.sessions.ttl()));
            }
            redirect(&done.return_to, &cookies)
        }
        Err(error) => {
            let error = ApiError::from(error);
            super::audit::sign_in_failed(&state, &headers, &provider, action, flow_user, error.code()).await;
            // The sign-in's transaction ended no session: one the browser had stands.
            let signed_in = signed_in
                || (action == FlowAction::SignIn && still_signed_in(&state, &headers, session, error.code()).await);
            with_cookie(state.pages.error_in(&headers, error, &errors::Context { signed_in, ..context }), clear_login)
        }
    }
}

/// Whether the browser's session cookie (`session`) is of a live session, for the page of a
/// sign-in that did not finish: such a browser is told it is still signed in, and offered its
/// account rather than a sign-in. Asked of the store only for a browser's page, and not when it
/// just failed to answer (`failed`, the error the page is about); a store that cannot answer
/// counts as no.
async fn still_signed_in(state: &AppState, headers: &HeaderMap, session: Option<&str>, failed: ErrorCode) -> bool {
    match session {
        Some(session)
            if pages::wants_html(headers)
                && !matches!(failed, ErrorCode::StoreUnavailable | ErrorCode::InternalError) =>
        {
            matches!(state.sessions.resolve(session).await, Ok(Some(_)))
        }
        _ => false,
    }
}

#[derive(Template)]
#[template(path = "logout.html")]
struct LogoutPage {
    chrome: Chrome,
    who: String,
    csrf: String,
}

/// `GET /auth/logout`: a page that asks to confirm and posts to `POST /auth/logout` (or, without
/// a session, says that the browser is signed out).
#[utoipa::path(
    get,
    path = "/auth/logout",
    tag = "pages",
    operation_id = "confirm_logout",
    summary = "The sign-out confirmation page.",
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn confirm_logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let value = match cookie(&headers, state.cookies.session()) {
        Ok(Some(value)) => value,
        Ok(None) => return signed_out(&state, None),
        // Which session is ambiguous: none is ended, and the browser is told so (and to delete
        // the site's cookies), as by the form's post — not that it is signed out, while the
        // other copy's session stands. Tessera's own copy is cleared.
        Err(error) => {
            return with_cookie(state.pages.error(&headers, error), state.cookies.clear(state.cookies.session()));
        }
    };
    match state.sessions.resolve_session(value).await {
        Ok(Some(live)) => {
            let user = &live.profile.user;
            let who = who(user);
            state
                .pages
                .render(StatusCode::OK, &LogoutPage { chrome: state.pages.chrome(true), who, csrf: csrf::token(value) })
        }
        Ok(None) => signed_out(&state, Some(state.cookies.clear(state.cookies.session()))),
        // Still signed in as far as anyone knows: "try again" comes back here, not to a sign-in.
        Err(error) => {
            let context = errors::Context { return_to: Some("/auth/logout".into()), signed_in: true, retry: None };
            state.pages.error_in(&headers, error.into(), &context)
        }
    }
}

/// The signed-out page, clearing the cookie when given.
fn signed_out(state: &AppState, clear: Option<HeaderValue>) -> Response {
    let message = Message::new("You are signed out", "You are no longer signed in in this browser.")
        .action("Sign in again", "/login");
    let response = state.pages.message(StatusCode::OK, message);
    match clear {
        Some(clear) => with_cookie(response, clear),
        None => response,
    }
}

/// `POST /auth/logout`: ends the browser's session. A page's form
/// (`application/x-www-form-urlencoded`) must carry the session's CSRF token and gets the
/// signed-out page; an API client gets 204.
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "pages",
    operation_id = "logout",
    summary = "Signs out.",
    request_body(content = crate::http::openapi::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses, (status = 204, description = "Signed out (API clients).")),
    security(("session" = [])),
)]
async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap, PageBytes(body): PageBytes) -> Response {
    let clear_session = state.cookies.clear(state.cookies.session());
    let is_form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| {
        t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    let clear = match cookie(&headers, state.cookies.session()) {
        Ok(Some(session)) => {
            // A form carries the session's CSRF token; any other body must at least not come
            // from another origin's page (a same-site page could otherwise sign the user out).
            let checked = if is_form {
                let fields = csrf::form_fields(&body);
                csrf::check(&headers, session, csrf::field(&fields, csrf::FIELD))
            } else {
                csrf::sent_from_this_origin(&headers, state.flows.public_origin().as_deref())
            };
            if let Err(error) = checked {
                return state.pages.error(&headers, error);
            }
            if let Err(error) = state.sessions.revoke(session, SessionEnd::SignedOut).await {
                // Still signed in: "try again" signs out, and the page does not look signed out.
                let context = errors::Context { return_to: Some("/auth/logout".into()), signed_in: true, retry: None };
                return state.pages.error_in(&headers, error.into(), &context);
            }
            Some(clear_session)
        }
        // No cookie came, and none is cleared: a cross-site form's post carries no `SameSite`
        // cookie, and its answer may still delete one (RFC 6265bis 5.7) — another site's page
        // could otherwise drop the browser's session cookie, if not the session.
        Ok(None) => None,
        // Which session to end is ambiguous: none is, but the browser is told to drop the cookie.
        Err(error) => return with_cookie(state.pages.error(&headers, error), clear_session),
    };
    if is_form || pages::wants_html(&headers) {
        return signed_out(&state, clear);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(clear) = clear {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    pages::protect(response.headers_mut());
    response
}

/// How many sign-ins one browser may have under way at once (one per tab): its login cookie
/// holds the binding secrets of the newest this many (each flow's `state` is the SHA-256 of
/// one), newest first, separated by `.`.
const FLOWS_PER_BROWSER: usize = 4;

/// The `Set-Cookie` value binding a new flow (its binding secret, `value`) to the browser, beside
/// the flows the browser (its `headers`) already has under way, up to [`FLOWS_PER_BROWSER`] in all.
pub(super) fn login_cookie(state: &AppState, headers: &HeaderMap, value: &str) -> HeaderValue {
    let under_way = cookie(headers, state.cookies.login()).ok().flatten().unwrap_or_default();
    let states: Vec<&str> =
        std::iter::once(value).chain(held_states(under_way).filter(|s| *s != value)).take(FLOWS_PER_BROWSER).collect();
    state.cookies.set(state.cookies.login(), &states.join("."), FLOW_TTL.to_std().unwrap_or_default())
}

/// The binding secrets in a login cookie's value (anything else in it is ignored: a binding
/// secret is base64url text of a few dozen characters).
fn held_states(value: &str) -> impl Iterator<Item = &str> {
    value.split('.').filter(|s| {
        (16..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The `Set-Cookie` value that drops `taken` from the browser's login cookie (`held`): the
/// other tabs' sign-ins stay under way; with none left, the cookie is cleared.
fn login_cookie_without(state: &AppState, held: &[&str], taken: &str) -> HeaderValue {
    let rest: Vec<&str> = held.iter().copied().filter(|s| *s != taken).collect();
    if rest.is_empty() {
        return state.cookies.clear(state.cookies.login());
    }
    state.cookies.set(state.cookies.login(), &rest.join("."), FLOW_TTL.to_std().unwrap_or_default())
}

fn with_cookie(mut response: Response, cookie: HeaderValue) -> Response {
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// A `303 See Other` to `location`, setting `cookies`.
pub(super) fn redirect(location: &str, cookies: &[HeaderValue]) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    match HeaderValue::from_str(location) {
        Ok(value) => {
            headers.insert(header::LOCATION, value);
        }
        Err(_) => {
            headers.insert(header::LOCATION, HeaderValue::from_static("/"));
        }
    }
    for cookie in cookies {
        headers.append(header::SET_COOKIE, cookie.clone());
    }
    pages::protect(response.headers_mut());
    response
}

/// A short label of the device behind a `User-Agent` ("Firefox on Linux"), for telling one's
/// sessions apart on the account page; the raw header is never stored. `None` when neither the
/// browser nor the system is recognised.
pub(super) fn device_label(user_agent: &str) -> Option<String> {
    let has = |needle: &str| user_agent.contains(needle);
    // Order matters: Edge and Opera say Chrome, Chrome says Safari.
    let browser = if has("Edg/") {
        Some("Edge")
    } else if has("OPR/") {
        Some("Opera")
    } else if has("Firefox/") {
        Some("Firefox")
    } else if has("Chrome/") || has("Chromium/") {
        Some("Chrome")
    } else if has("Safari/") {
        Some("Safari")
    } else {
        None
    };
    let system = if has("Android") {
        Some("Android")
    } else if has("iPhone") || has("iPad") {
        Some("iOS")
    } else if has("Windows") {
        Some("Windows")
    } else if has("Mac OS X") || has("Macintosh") {
        Some("macOS")
    } else if has("CrOS") {
        Some("ChromeOS")
    } else if has("Linux") {
        Some("Linux")
    } else {
        None
    };
    match (browser, system) {
        (Some(b), Some(s)) => Some(format!("{b} on {s}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_owned()),
        (None, None) => None,
    }
}

/// Where to send the browser when the user cancelled at the upstream provider a sign-in that an
/// app's authorization request was waiting for (`return_to`): the app is told `access_denied`
/// (RFC 6749 4.1.2.1) and the request is used up. `None` when no request was waiting; the
/// store's error when it could not tell. Any other
/// failure shows the page, whose "try again" resumes the request: a provider's other errors may
/// be cured by a retry or by the operator, and a `login_not_fresh` sent on to the app as
/// `login_required` would have it ask again, the provider answer silently again, round and round.
///
/// A form of a signed-in browser names its `sender` (the hash of its session): sent again, it
/// is answered as the first was.
async fn app_told(
    state: &AppState,
    return_to: Option<&str>,
    description: &str,
    sender: Option<&[u8; 32]>,
) -> Result<Option<String>, crate::store::StoreError> {
    let (Some(op), Some(return_to)) = (state.op.as_ref(), return_to) else { return Ok(None) };
    let told = match sender {
        Some(sender) => op.give_up_for(return_to, sender, "access_denied", description).await,
        None => op.give_up(return_to, "access_denied", description).await,
    };
    told.inspect_err(|failure| {
        tracing::warn!(error = %failure.chain(), "cannot end the authorization request a sign-in was resuming");
    })
}

#[cfg(test)]
mod device_tests {
    use super::device_label;

    #[test]
    fn common_user_agents_get_a_short_label() {
        let cases = [
            ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", Some("Firefox on Linux")),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36 Edg/130.0",
                Some("Edge on Windows"),
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
                Some("Safari on iOS"),
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0 Safari/537.36",
                Some("Chrome on Linux"),
            ),
            ("curl/8.5.0", None),
        ];
        for (agent, label) in cases {
            assert_eq!(device_label(agent).as_deref(), label, "{agent}");
        }
    }
}
