//! The browser-facing OpenID Provider endpoints: `/oauth/authorize` (GET or POST), the consent
//! decision (`POST /oauth/consent`) and RP-initiated logout (`/oauth/logout`).
//!
//! A user without a Tessera session signs in through an upstream provider first: the one a
//! `login_hint`'s verified domain claim names, else the default provider, else the only one;
//! with several and no hint, a chooser page lists them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;

use super::token::{authorization_params, form_pairs};
use crate::domain::{Email, UserId};
use crate::error::{ErrorCode, PublicError};
use crate::http::AppState;
use crate::http::auth::{login_cookie, redirect};
use crate::http::credentials::cookie;
use crate::http::csrf;
use crate::http::extract::PageBytes;
use crate::http::pages::{self, Message};
use crate::http::problem::ApiError;
use crate::service::op::authorize::{AuthorizationParams, AuthorizeError, Decision, Next, Rejection, SessionView};
use crate::service::op::provider::{OAuthError, TesseraResource};
use crate::service::op::tokens::{self, HintCheck, repeated_parameter, single_valued};
use crate::service::sessions::LiveSession;
use crate::service::teams::Discovery;
use crate::store::SessionEnd;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/oauth/authorize", get(authorize_get).post(authorize_post))
        .route("/oauth/consent", post(consent))
        .route("/oauth/logout", get(logout_get).post(logout_post))
}

/// A page (or, for a non-browser, an OAuth JSON error) for a request that cannot go back to
/// the client.
fn refuse(state: &AppState, headers: &HeaderMap, status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = refusal(state, headers, status, error, description);
    if let Some(challenge) = crate::http::problem::challenge_of(status, None) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

fn refusal(state: &AppState, headers: &HeaderMap, status: StatusCode, error: &str, description: &str) -> Response {
    if pages::wants_html(headers) {
        let message = Message {
            title: "This sign-in request cannot be completed".into(),
            paragraphs: vec![
                format!("The app that sent you here made a request that cannot be completed: {description}."),
                "Go back to the app you came from and try again.".into(),
            ],
            code: Some(error.to_owned()),
            ..Message::default()
        }
        .action("Go to your account", "/account");
        return state.pages.message(status, message);
    }
    let mut response =
        (status, Json(serde_json::json!({ "error": error, "error_description": description }))).into_response();
    pages::protect(response.headers_mut());
    response
}

/// `path` with `pairs` as its query: a `GET` request's own URL, for a failure's "Try again" (a
/// posted request's parameters stay out of URLs).
fn again_url(path: &str, pairs: &[(String, String)]) -> String {
    format!("{path}?{}", url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish())
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

#[utoipa::path(
    get,
    path = "/oauth/authorize",
    tag = "oauth",
    operation_id = "authorize_get",
    summary = "The authorization endpoint (query parameters of RFC 6749 and OpenID Connect).",
    responses(crate::http::openapi::OAuthPageResponses),
    security((), ("session" = [])),
)]
async fn authorize_get(State(state): State<Arc<AppState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    authorize(&state, &headers, query_pairs(query.as_deref()), false).await
}

#[utoipa::path(
    post,
    path = "/oauth/authorize",
    tag = "oauth",
    operation_id = "authorize_post",
    summary = "The authorization endpoint (form parameters).",
    request_body(content = crate::http::openapi::OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::OAuthPageResponses),
    security((), ("session" = [])),
)]
async fn authorize_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PageBytes(body): PageBytes,
) -> Response {
    match form_pairs(&headers, &body) {
        Ok(pairs) => authorize(&state, &headers, pairs, true).await,
        Err(e) => refuse(&state, &headers, StatusCode::BAD_REQUEST, e.error, &e.description),
    }
}

/// The browser's live session, if any, and its cookie's value. A session cookie sent twice is
/// refused (one credential per request), not taken for no session: a sign-in from here would
/// end in the same refusal.
async fn session<'h>(
    state: &AppState,
    headers: &'h HeaderMap,
    again: Option<&str>,
) -> Result<Option<(LiveSession, &'h str)>, Response> {
    read_session(state, headers).await.map_err(|error| match error {
        SessionError::Refused(response) => response,
        SessionError::Store(e) => failed(state, headers, e, "reading a session", again),
    })
}

/// Why a browser's session could not be read.
enum SessionError {
    /// The request is refused (its cookie sent twice): the answer.
    Refused(Response),
    /// The store failed.
    Store(crate::store::StoreError),
}

/// The browser's live session and its cookie's value, if it sent one.
async fn read_session<'h>(
    state: &AppState,
    headers: &'h HeaderMap,
) -> Result<Option<(LiveSession, &'h str)>, SessionError> {
    let value = match cookie(headers, state.cookies.session()) {
        Ok(Some(value)) => value,
        Ok(None) => return Ok(None),
        Err(_) => {
            return Err(SessionError::Refused(refuse(
                state,
                headers,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "this browser sent its session cookie twice; clear this site's cookies, then start again from the app",
            )));
        }
    };
    match state.sessions.resolve_session(value).await {
        Ok(live) => Ok(live.map(|live| (live, value))),
        Err(e) => Err(SessionError::Store(e)),
    }
}

/// The session as the authorization rules see it; `cookie` is its cookie's value.
pub(crate) fn view(live: &LiveSession, cookie: &str) -> SessionView {
    let identity = live.record.identity_id;
    SessionView {
        user: live.record.user_id,
        hash: live.hash,
        auth_time: live.record.created_at,
        authenticated_at: live.record.authenticated_at,
        identity,
        provider: live.profile.identities.iter().find(|i| Some(i.id) == identity).map(|i| i.provider.clone()),
        browser_key: crate::crypto::derive_key(cookie.as_bytes(), "tessera-browser-key-v1", &[]),
    }
}

/// The parameters whose repetition leaves no trusted place to send the error to.
const UNREDIRECTABLE: [&str; 4] = ["client_id", "redirect_uri", "state", "request_uri"];

async fn authorize(state: &AppState, headers: &HeaderMap, pairs: Vec<(String, String)>, posted: bool) -> Response {
    let Some(op) = state.op.as_ref() else {
        return provider_off(state, headers);
    };
    // A repeated parameter that decides where an error may go is shown here; any other is
    // refused through the redirect once the client and its URI check out (RFC 6749 4.1.2.1).
    let repeated = repeated_parameter(&pairs);
    let sent_twice = |name: &str| pairs.iter().filter(|(key, _)| key == name).nth(1).is_some();
    if repeated.is_some()
        && let Some(name) = UNREDIRECTABLE.into_iter().find(|name| sent_twice(name))
    {
        let e = tokens::repeated(name);
        return refuse(state, headers, StatusCode::BAD_REQUEST, e.error, &e.description);
    }
    let first: BTreeMap<&str, &str> = pairs.iter().rev().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    let params = AuthorizationParams { repeated: repeated.map(str::to_owned), ..authorization_params(&first) };
    // A failure's "Try again" sends a `GET` again; a posted request's parameters stay out of URLs.
    let again = (!posted).then(|| again_url("/oauth/authorize", &pairs));
    let again = again.as_deref();
    // A session that cannot be read is told to the app at its redirect URI once the request
    // checks out, as a failure after that is: a silent `prompt=none` check in a hidden frame
    // hears back.
    let (live, view) = match read_session(state, headers).await {
        Ok(Some((live, cookie))) => {
            let view = view(&live, cookie);
            (Some(live), Ok(Some(view)))
        }
        Ok(None) => (None, Ok(None)),
        Err(SessionError::Refused(response)) => return response,
        Err(SessionError::Store(e)) => (None, Err(e)),
    };
    // A form posted from another site arrives without the session cookie (`SameSite=Lax`): it
    // would look signed out (`login_required` for `prompt=none`, and a sign-in that ends the
    // browser's session on its way back). It is held as sent and goes on as a GET, which
    // carries the cookie.
    if posted && matches!(view, Ok(None)) && csrf::fetch_site(headers) != Some(b"same-origin") {
        return match op.bounce(params).await {
            Ok(continue_to) => redirect(&continue_to, &[]),
            Err(error) => rejected(state, headers, error, again),
        };
    }
    let session = match view {
        Ok(ref view) => Ok(view.as_ref()),
        Err(e) => Err(e),
    };
    match op.authorize(params, session).await {
        Ok(Next::Redirect(to)) => redirect(&to, &[]),
        Ok(Next::SignIn { continue_to, login_hint, reauthenticate }) => {
            sign_in(state, headers, live.as_ref(), &continue_to, login_hint.as_deref(), reauthenticate).await
        }
        Ok(Next::Consent { request_id, client_name, scopes, resource }) => {
            // Consent is asked of a signed-in browser only.
            let user = live.as_ref().map(|live| &live.profile.user);
            consent_page(state, user, &request_id, &client_name, &scopes, resource.as_deref())
        }
        Ok(Next::SelectAccount { continue_to }) => match live.as_ref() {
            Some(live) => {
                let provider = default_provider(state);
                let title = "Choose an account";
                crate::http::auth::account_choice(
                    state,
                    live,
                    title,
                    // The held request asks the provider for a fresh login when it is taken up.
                    (provider.as_deref(), false),
                    crate::http::auth::GoOn::Link(&continue_to),
                    Some(&continue_to),
                )
            }
            // Decided on a session, which this request carried.
            None => redirect(&continue_to, &[]),
        },
        Err(error) => rejected(state, headers, error, again),
    }
}

fn rejected(state: &AppState, headers: &HeaderMap, error: AuthorizeError, again: Option<&str>) -> Response {
    match error {
        AuthorizeError::Rejected(rejection) => match state.op.as_ref().and_then(|op| op.error_redirect(&rejection)) {
            Some(to) => redirect(&to, &[]),
            None => {
                let Rejection { error, description, .. } = rejection;
                refuse(state, headers, StatusCode::BAD_REQUEST, error, &description)
            }
        },
        AuthorizeError::Store(e) => failed(state, headers, e, "an authorization request", again),
        AuthorizeError::ConsentGone if pages::wants_html(headers) => {
            let message = Message {
                title: "This approval page has expired".into(),
                paragraphs: vec![
                    "An approval page works once, for 10 minutes, and only in the sign-in it was shown to \
                     (signing in again in another tab replaces it)."
                        .into(),
                    "Go back to the app you came from and sign in again from there.".into(),
                ],
                code: Some("invalid_request".into()),
                ..Message::default()
            }
            .action("Go to your account", "/account");
            state.pages.message(StatusCode::BAD_REQUEST, message)
        }
        gone @ AuthorizeError::ConsentGone => {
            refuse(state, headers, StatusCode::BAD_REQUEST, "invalid_request", &gone.to_string())
        }
    }
}

/// The answer to a request this service failed (its store, its signing keys): for a browser,
/// the error page of the failure's code, which says what to do (`store_unavailable`: retry
/// shortly) and does not blame the app; for a client, the RFC's JSON (503
/// `temporarily_unavailable`, or 500 `server_error`). The cause is logged once, with its chain.
///
/// A browser's "Try again" opens `again` (the request's own URL: the authorization endpoint
/// sends a signed-out browser to sign in itself) when given, else the account page of a browser
/// that sent a session cookie: never a new sign-in, which would end that session, unless the
/// browser has none.
fn failed<E: PublicError>(
    state: &AppState,
    headers: &HeaderMap,
    error: E,
    doing: &'static str,
    again: Option<&str>,
) -> Response {
    if pages::wants_html(headers) {
        let context = pages::errors::Context {
            return_to: None,
            signed_in: pages::may_be_signed_in(state, headers),
            retry: again.map(str::to_owned),
        };
        return state.pages.error_in(headers, ApiError::from(error), &context);
    }
    let OAuthError { error, description, status } = OAuthError::from_failure(&error, doing);
    refuse(
        state,
        headers,
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        error,
        &description,
    )
}

/// The answer when the OpenID Provider is off: for a browser, the page of
/// `openid_provider_disabled`; for a client, 404 `invalid_request`.
fn provider_off(state: &AppState, headers: &HeaderMap) -> Response {
    if pages::wants_html(headers) {
        return state.pages.error(
            headers,
            ApiError::new(ErrorCode::OpenidProviderDisabled, "the OpenID Provider is not enabled here"),
        );
    }
    refuse(state, headers, StatusCode::NOT_FOUND, "invalid_request", "the OpenID Provider is not enabled here")
}

/// Starts an upstream sign-in that comes back to `continue_to`; with `reauthenticate`, the
/// upstream provider is asked for a fresh login too (`prompt=login`, and `max_age=0` of an
/// OpenID Connect provider, whose `auth_time` is then checked), so that its own session cannot
/// answer a `prompt=login` or `max_age` request silently.
async fn sign_in(
    state: &AppState,
    headers: &HeaderMap,
    live: Option<&LiveSession>,
    continue_to: &str,
    login_hint: Option<&str>,
    reauthenticate: bool,
) -> Response {
    let providers = state.flows.providers();
    let mut chosen = None;
    if let Some(email) = login_hint.and_then(|h| Email::parse(h).ok()) {
        match state.teams.discover(&email).await {
            Ok(Discovery::Sso { provider, issuer }) => {
                chosen = providers.for_issuer(&provider, &issuer).map(|p| p.name().to_owned());
            }
            Ok(Discovery::Default) => {}
            // Not known whether the address's team signs in elsewhere: said so, as `/login` does,
            // rather than sending the browser to the default provider, which may be the wrong one.
            Err(error) => {
                return state.pages.error_in(headers, error.into(), &crate::http::auth::going_to(Some(continue_to)));
            }
        }
    }
    let chosen = chosen.or_else(|| default_provider(state));
    // A browser signed in here, sent by another site (or a link opened from a mail or chat app)
    // to sign in again (`prompt=login`, `max_age=0`, a hint of someone else): that would end its
    // session here and the apps' grants bound to it, without a click. It is asked first, as at
    // `/auth/login` — also when the chooser would decide the provider, since a click there is
    // this origin's.
    if let Some(live) = live
        && !csrf::from_our_pages(headers)
    {
        // The held request asks the provider for a fresh login when it is taken up.
        let chosen = (chosen.as_deref(), false);
        return crate::http::auth::already_signed_in(state, headers, chosen, Some(continue_to), live);
    }
    let Some(provider) = chosen else {
        return chooser_page(continue_to);
    };
    match state.sign_in.begin(Some(&provider), Some(continue_to), None, reauthenticate).await {
        Ok(started) => {
            redirect(started.location.as_str(), &[login_cookie(state, headers, started.binding.expose_secret())])
        }
        Err(error) => state.pages.error_in(headers, error.into(), &crate::http::auth::going_to(Some(continue_to))),
    }
}

/// The provider a sign-in without a choice goes through (see
/// [`ProviderRegistry::default_or_only`](crate::upstream::providers::ProviderRegistry::default_or_only)).
fn default_provider(state: &AppState) -> Option<String> {
    state.flows.providers().default_or_only().map(|p| p.name().to_owned())
}

/// Several providers and no way to choose: the sign-in chooser, coming back to `continue_to`.
fn chooser_page(continue_to: &str) -> Response {
    redirect(&pages::login_url(Some(continue_to)), &[])
}

fn consent_page(
    state: &AppState,
    user: Option<&crate::domain::User>,
    request_id: &str,
    client_name: &str,
    scopes: &[String],
    resource: Option<&str>,
) -> Response {
    let resource = resource.map(|resource| resource_in_words(state, resource));
    let scopes: Vec<String> = scopes.iter().map(|scope| pages::scope_in_words(scope)).collect();
    let who = user.map(crate::http::auth::who).unwrap_or_default();
    // The email too when the name leads: the account the app would get, told apart from
    // another of the same name.
    let email = user.filter(|user| user.name.is_some()).and_then(|user| user.email.as_deref());
    state.pages.consent((&who, email), client_name, &scopes, resource.as_deref(), request_id)
}

/// What a token for `resource` lets the app do, for the consent page: Tessera's own API and MCP
/// server act for the user (their connected accounts' credentials included); any other resource
/// is named as registered.
fn resource_in_words(state: &AppState, resource: &str) -> String {
    match state.op.as_ref().and_then(|op| op.tessera_resource(resource)) {
        Some(TesseraResource::Api) => {
            "act for you on this service's API, including reading the credentials of your connected accounts".into()
        }
        Some(TesseraResource::Mcp) => {
            "act for you through this service's MCP server (for AI agents), including reading the credentials of your \
             connected accounts"
                .into()
        }
        _ => format!("use {resource}"),
    }
}

#[utoipa::path(
    post,
    path = "/oauth/consent",
    tag = "oauth",
    operation_id = "consent",
    summary = "The consent page's answer (form).",
    request_body(content = crate::http::openapi::ConsentForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::OAuthPageResponses),
    security(("session" = [])),
)]
async fn consent(State(state): State<Arc<AppState>>, headers: HeaderMap, PageBytes(body): PageBytes) -> Response {
    let Some(op) = state.op.as_ref() else {
        return provider_off(&state, &headers);
    };
    let pairs = match form_pairs(&headers, &body) {
        Ok(pairs) => pairs,
        Err(e) => return refuse(&state, &headers, StatusCode::BAD_REQUEST, e.error, &e.description),
    };
    let map = match single_valued(&pairs) {
        Ok(map) => map,
        Err(e) => return refuse(&state, &headers, StatusCode::BAD_REQUEST, e.error, &e.description),
    };
    let (live, cookie) = match session(&state, &headers, None).await {
        Ok(Some(signed_in)) => signed_in,
        // A browser whose session ended (signed out in another tab, expired) is sent back to the
        // app, not blamed for a request that cannot be completed (nor to a sign-in here, which
        // could not take on a request held for the session that ended).
        Ok(None) if pages::wants_html(&headers) => return state.pages.ended_before_the_answer(&headers),
        Ok(None) => {
            return refuse(
                &state,
                &headers,
                StatusCode::UNAUTHORIZED,
                "login_required",
                "your session has ended; sign in again",
            );
        }
        Err(response) => return response,
    };
    let (Some(request_id), Some(decision)) = (map.get("request_id"), map.get("decision")) else {
        return refuse(
            &state,
            &headers,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "request_id and decision are required",
        );
    };
    let decision = match *decision {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        "another_account" => Decision::AnotherAccount,
        _ => {
            return refuse(
                &state,
                &headers,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "decision must be approve, deny or another_account",
            );
        }
    };
    match op.consent(request_id, &view(&live, cookie), decision, crate::http::audit::request_id(&headers)).await {
        Ok(to) => redirect(&to, &[]),
        Err(error) => rejected(&state, &headers, error, None),
    }
}

/// The parameters of an RP-initiated logout.
#[derive(Default)]
struct LogoutRequest {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
}

fn logout_params(pairs: &[(String, String)]) -> Result<LogoutRequest, String> {
    let map = single_valued(pairs).map_err(|e| e.description)?;
    let get = |k: &str| map.get(k).filter(|v| !v.is_empty()).map(|v| (*v).to_owned());
    // It goes back in the redirect's URL, as an authorization request's does.
    let max = crate::service::op::provider::MAX_PARAM_LEN;
    if get("state").is_some_and(|state| state.len() > max) {
        return Err(format!("state is longer than {max} characters"));
    }
    Ok(LogoutRequest {
        id_token_hint: get("id_token_hint"),
        post_logout_redirect_uri: get("post_logout_redirect_uri"),
        state: get("state"),
        client_id: get("client_id"),
    })
}

#[utoipa::path(
    get,
    path = "/oauth/logout",
    tag = "oauth",
    operation_id = "logout_get",
    summary = "RP-initiated logout (query parameters).",
    responses(crate::http::openapi::OAuthPageResponses),
    security((), ("session" = [])),
)]
async fn logout_get(State(state): State<Arc<AppState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    logout(&state, &headers, query_pairs(query.as_deref()), false).await
}

#[utoipa::path(
    post,
    path = "/oauth/logout",
    tag = "oauth",
    operation_id = "logout_post",
    summary = "RP-initiated logout (form parameters).",
    request_body(content = crate::http::openapi::OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::OAuthPageResponses),
    security((), ("session" = [])),
)]
async fn logout_post(State(state): State<Arc<AppState>>, headers: HeaderMap, PageBytes(body): PageBytes) -> Response {
    match form_pairs(&headers, &body) {
        // An app's form on another site posts without the (`SameSite=Lax`) session cookie, so
        // nothing here could end the session: a page posts the same fields from this origin,
        // which carries the cookie, and the same rules apply there. Not a redirect to a `GET`:
        // that would put the `id_token_hint` (the user's claims) in the URL, the browser's
        // history and the proxies' logs. Its own post, cookie or not, goes on.
        // An app's server posting (no page wanted) goes on: a hint of its ends the session
        // it names.
        Ok(pairs)
            if matches!(cookie(&headers, state.cookies.session()), Ok(None))
                && pages::wants_html(&headers)
                && !resumed_here(&state, &headers, &pairs) =>
        {
            let fields: Vec<(&str, &str)> =
                pairs.iter().filter(|(k, _)| k != csrf::FIELD).map(|(k, v)| (k.as_str(), v.as_str())).collect();
            state.pages.continue_logout(&fields)
        }
        Ok(pairs) => logout(&state, &headers, pairs, true).await,
        Err(e) => refuse(&state, &headers, StatusCode::BAD_REQUEST, e.error, &e.description),
    }
}

/// Whether a logout post is the "Continue signing out" page's own: marked so, and sent from this
/// origin (another site's form could carry the mark, to be answered as a signed-out browser).
fn resumed_here(state: &AppState, headers: &HeaderMap, pairs: &[(String, String)]) -> bool {
    pairs.iter().any(|(k, _)| k == pages::LOGOUT_RESUMED_FIELD)
        && csrf::sent_from_this_origin(headers, state.flows.public_origin().as_deref()).is_ok()
}

/// Ends the Tessera session (and so every grant made from it, but those with `offline_access`,
/// which are not bound to it), then returns to the client's
/// registered post-logout URI when the request names the client (`id_token_hint` or
/// `client_id`) and the URI is registered exactly; otherwise shows a signed-out page.
///
/// It ends the session at once only with an `id_token_hint` of the signed-in user: any other
/// page could send a browser to this URL. Otherwise the user confirms on a page whose form posts
/// the request back with the session's CSRF token. A request that comes with no session (an
/// app's server) ends the session its verified hint was issued in.
async fn logout(state: &AppState, headers: &HeaderMap, pairs: Vec<(String, String)>, posted: bool) -> Response {
    let Some(op) = state.op.as_ref() else {
        return provider_off(state, headers);
    };
    let again = (!posted).then(|| again_url("/oauth/logout", &pairs));
    let again = again.as_deref();
    // A request that cannot be read (a parameter sent twice): a browser's user is still asked
    // whether to sign out, as for the other requests refused below, rather than left signed in
    // on a page about a sign-in.
    let browser = pages::wants_html(headers);
    let (request, malformed) = match logout_params(&pairs) {
        Ok(found) => (found, None),
        Err(description) if browser => (LogoutRequest::default(), Some(description)),
        Err(description) => return refuse(state, headers, StatusCode::BAD_REQUEST, "invalid_request", &description),
    };
    // What makes the request one to refuse. A client is refused; a browser is not: it is not
    // sent back to the app (RP-Initiated Logout 1.0 section 3), but its user can still sign out
    // here — asked, as without a hint (section 4) — rather than be left signed in on an error
    // page, and the signed-out page says why the app was not returned to.
    let mut unanswerable: Option<&str> = malformed.as_deref();
    // The client an unverifiable hint says it was issued to: no more than a bare `client_id`.
    let mut hint_client = None;
    let mut hinted = match request.id_token_hint.as_deref() {
        Some(hint) => match op.check_id_token_hint(hint).await {
            Ok(HintCheck::Verified(found)) => Some(found),
            Err(error) => return failed(state, headers, error, "verifying an id_token_hint", again),
            // Signed by a key no longer published (an id token kept since before a rotation,
            // while its session lives on): it names nobody, so the user is asked, as without one
            // (RP-Initiated Logout 1.0 section 4: old hints of live sessions are accepted). Its
            // `aud` still says whose logout URIs to match, as a `client_id` would: most apps send
            // none beside the hint, and their user would be left signed in on an error page.
            Ok(HintCheck::KeyGone { aud }) => {
                hint_client = aud;
                None
            }
            Ok(HintCheck::NotOurs) => {
                unanswerable = Some("id_token_hint is not an id token this server issued");
                None
            }
        },
        None => None,
    };
    // RP-Initiated Logout 1.0 section 2: both sent, they must agree — also for a hint whose
    // audience is read unverified (as the authorization endpoint refuses such a hint of another
    // client).
    let hint_aud = hinted.as_ref().map(|hint| &hint.aud).or(hint_client.as_ref());
    if let (Some(aud), Some(named)) = (hint_aud, &request.client_id)
        && aud != named
    {
        unanswerable = Some("client_id differs from the id token's audience");
    }
    let mut target = None;
    if let Some(uri) = request.post_logout_redirect_uri.as_deref().filter(|_| unanswerable.is_none()) {
        let named = hinted.as_ref().map(|hint| hint.aud.clone()).or(request.client_id.clone()).or(hint_client);
        let client = match named {
            Some(id) => match op.clients().get(&id).await {
                Ok(client) => client,
                Err(error) => return failed(state, headers, error, "reading the client of a logout request", again),
            },
            None => None,
        };
        match client.filter(|c| c.post_logout_redirect_uris.iter().any(|r| r.matches(uri))) {
            Some(_) => target = Some(uri.to_owned()),
            None => {
                unanswerable = Some(
                    "post_logout_redirect_uri is not registered for the client named by id_token_hint or client_id",
                );
            }
        }
    }
    if let Some(description) = unanswerable {
        if !browser {
            return refuse(state, headers, StatusCode::BAD_REQUEST, "invalid_request", description);
        }
        // A request that is wrong in part is no proof that the app asked: the user is asked.
        hinted = None;
    }
    let live = match session(state, headers, again).await {
        Ok(live) => live,
        Err(response) => return response,
    };
    // Without a session in the request (an app's server calling, as oauth2-proxy's
    // `--backend-logout-url` does, or a browser signed out here already), a verified hint
    // names the session to end: the one it was issued in (its user, begun at its `auth_time`).
    // Only the app, which holds the id token, can send it.
    let hinted_elsewhere = if live.is_none() { hinted.take() } else { None };
    if let Some((live, session_cookie)) = live {
        // Only an id token of this very session (its user, signed in when it began) signs out
        // unasked: any older one of the user's — from logs, storage or an app long gone —
        // would otherwise end whatever session the browser has now.
        let hint_is_this_session = hinted.as_ref().is_some_and(|hint| {
            hint.sub == live.record.user_id.to_string() && hint.auth_time == Some(live.record.created_at.timestamp())
        });
        let confirmed = posted && csrf::check(headers, session_cookie, csrf::field(&pairs, csrf::FIELD)).is_ok();
        if !hint_is_this_session && !confirmed {
            let fields = pairs.iter().filter(|(k, _)| k != csrf::FIELD && k != pages::LOGOUT_RESUMED_FIELD);
            let fields: Vec<(&str, &str)> = fields.map(|(k, v)| (k.as_str(), v.as_str())).collect();
            return state.pages.confirm_logout(&fields, &csrf::token(session_cookie));
        }
    }
    // Cleared only when one came: a cross-site form's post carries no `SameSite` cookie, and its
    // answer could still delete it (RFC 6265bis 5.7).
    let sent = cookie(headers, state.cookies.session());
    let clear: Vec<_> = match sent {
        Ok(None) => Vec::new(),
        _ => vec![state.cookies.clear(state.cookies.session())],
    };
    if let Ok(Some(session)) = sent
        && let Err(e) = state.sessions.revoke(session, SessionEnd::SignedOut).await
    {
        return failed(state, headers, e, "ending a session", again);
    }
    if let Some(hint) = hinted_elsewhere
        && let (Ok(user), Some(auth_time)) = (hint.sub.parse::<UserId>(), hint.auth_time)
    {
        // The id token of a client deleted since (after a compromise, say) ends nothing.
        match op.clients().get(&hint.aud).await {
            Ok(Some(_)) => {
                if let Err(e) = state.sessions.revoke_begun(user, auth_time, SessionEnd::SignedOut).await {
                    return failed(state, headers, e, "ending the session an id_token_hint names", again);
                }
            }
            Ok(None) => {}
            Err(error) => return failed(state, headers, error, "reading the client of a logout request", again),
        }
    }
    match target {
        Some(uri) => {
            let to = match (url::Url::parse(&uri), request.state) {
                (Ok(mut url), Some(s)) => {
                    url.query_pairs_mut().append_pair("state", &s);
                    url.to_string()
                }
                _ => uri,
            };
            redirect(&to, &clear)
        }
        None => {
            let mut message = Message::new("You are signed out", "You are signed out. You can close this window.")
                .action("Sign in again", "/login");
            if let Some(description) = unanswerable {
                message.paragraphs.push(format!(
                    "The app that sent you here could not be returned to: {description}. Tell its developers."
                ));
                message.code = Some("invalid_request".to_owned());
            }
            let mut response = state.pages.message(StatusCode::OK, message);
            for clear in clear {
                response.headers_mut().append(header::SET_COOKIE, clear);
            }
            response
        }
    }
}
