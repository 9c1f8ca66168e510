//! Auth-profile connect links: `GET /connect/{token}/oauth/start` shows the start page to the
//! signed-in user the link was made for — the connector and its provider (with their icon), the
//! connection, its team, the permissions asked for and who is signed in — with a form whose
//! button continues to the provider, and a way back to the account page. The link is not used up
//! by looking.
//! `POST` (the form, with the session's CSRF token) checks everything again, consumes the link
//! and sends the browser to the provider with a fresh state, PKCE verifier and nonce: of
//! concurrent posts exactly one starts a flow, the others get the invalid-link page — unless they
//! come from the same session (a double click): those get the same flow.
//!
//! Otherwise the flow stops with a page that says why and what to do next (sign in, or sign in
//! as the right user, coming back to the link). Pages carry `Referrer-Policy: no-referrer`, so the
//! token never leaks to the provider in `Referer`. [`connected`] is the page a connection ends on.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use secrecy::ExposeSecret;

use crate::domain::ProfileStatus;
use crate::http::AppState;
use crate::http::auth::{login_cookie, redirect};
use crate::http::csrf;
use crate::http::extract::{PageBytes, PagePath};
use crate::http::login::provider_label;
use crate::http::pages::icons::Icon;
use crate::http::pages::{Chrome, errors, live_session};
use crate::service::auth_profiles::AuthProfileError;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/connect/{token}/oauth/start", get(show_connect).post(start_connect))
}

#[derive(Template)]
#[template(path = "connect.html")]
struct ConnectPage {
    chrome: Chrome,
    connector_label: String,
    provider: String,
    icon: Icon,
    display_name: String,
    slug: String,
    team_name: String,
    who: String,
    scopes: Vec<String>,
    reconnect: bool,
    replaces_account: bool,
    action: String,
    csrf: String,
}

#[utoipa::path(
    get,
    path = "/connect/{token}/oauth/start",
    tag = "pages",
    operation_id = "show_connect",
    summary = "The connect start page: names the connector, the scopes and the signed-in person.",
    params(("token" = String, Path, description = "A connect token (from a connect link)")),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn show_connect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PagePath(token): PagePath<String>,
) -> Response {
    // "Sign in" (as the right user) comes back to this link, still unused.
    let Some(here) = super::connect_page(&token, "oauth/start") else { return super::not_a_link(&state, &headers) };
    let signed_in = match live_session(&state, &headers, &here).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let context = errors::Context { return_to: Some(here.clone()), signed_in: signed_in.is_some(), retry: None };
    let user = signed_in.as_ref().map(|(live, _)| live.profile.user.id);
    let preview = match state.auth_profiles.connect_preview(&token, user).await {
        Ok(preview) => preview,
        Err(error) => return state.pages.error_in(&headers, error.into(), &context),
    };
    let Some((live, cookie_value)) = signed_in else {
        return state.pages.error_in(&headers, AuthProfileError::NotSignedIn.into(), &context);
    };
    let person = &live.profile.user;
    let who = match (&person.name, &person.email) {
        (Some(name), Some(email)) => format!("{name} ({email})"),
        (Some(name), None) => name.clone(),
        (None, Some(email)) => email.clone(),
        (None, None) => person.id.to_string(),
    };
    let profile = preview.profile;
    let page = ConnectPage {
        chrome: state.pages.chrome(true),
        connector_label: preview.connector_label,
        provider: provider_label(&profile.provider),
        icon: state.pages.icon(&profile.provider),
        display_name: profile.display_name,
        slug: profile.slug.to_string(),
        team_name: preview.team.name,
        who,
        scopes: preview.scopes,
        reconnect: profile.status != ProfileStatus::PendingAuth,
        replaces_account: preview.replaces_account,
        action: here,
        csrf: csrf::token(&cookie_value),
    };
    state.pages.render(StatusCode::OK, &page)
}

#[utoipa::path(
    post,
    path = "/connect/{token}/oauth/start",
    tag = "pages",
    operation_id = "start_connect",
    summary = "Continues a connect link (form): uses the link up and redirects to the provider.",
    params(("token" = String, Path, description = "A connect token (from a connect link)")),
    request_body(content = crate::http::openapi::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn start_connect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PagePath(token): PagePath<String>,
    PageBytes(body): PageBytes,
) -> Response {
    let Some(here) = super::connect_page(&token, "oauth/start") else { return super::not_a_link(&state, &headers) };
    let signed_in = match live_session(&state, &headers, &here).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let context = errors::Context { return_to: Some(here), signed_in: signed_in.is_some(), retry: None };
    let Some((live, cookie_value)) = signed_in else {
        return state.pages.error_in(&headers, AuthProfileError::NotSignedIn.into(), &context);
    };
    let fields = csrf::form_fields(&body);
    if let Err(error) = csrf::check(&headers, &cookie_value, csrf::field(&fields, csrf::FIELD)) {
        return state.pages.error_in(&headers, error, &context);
    }
    match state.auth_profiles.start(&token, live.profile.user.id, &live.hash).await {
        Ok(started) => {
            redirect(started.location.as_str(), &[login_cookie(&state, &headers, started.binding.expose_secret())])
        }
        Err(error) => state.pages.error_in(&headers, error.into(), &context),
    }
}

/// Where a completed connection sends the browser: the account page, which lists the
/// connection and says it is done. A redirect (303), so that reloading the page does not replay
/// the provider's callback or the form's post (whose state or link is used up by then).
pub const CONNECTED: &str = "/account?done=connected";
