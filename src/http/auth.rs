//! Browser sign-in: `GET /auth/login`, `GET /auth/callback/{provider}`, `GET /auth/link`,
//! `POST /auth/logout`, and `GET /auth/providers` for login pages.
//!
//! The state value goes to the provider in the authorization URL and to the browser in a
//! `__Host-` cookie; the callback must bring both back. Redirects are `303 See Other` with
//! `Cache-Control: no-store` and `Referrer-Policy: no-referrer` (the callback URL holds a code).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::AppState;
use super::caller::caller;
use super::credentials::cookie;
use super::extract::{ApiPath, ApiQuery};
use super::pages;
use super::problem::ApiError;
use super::responses::{ProviderResponse, ProvidersResponse};
use crate::upstream::oauth_flow::{Callback, FLOW_TTL, Purpose};

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/auth/providers", get(list_providers))
        .route("/auth/login", get(start_login))
        .route("/auth/link", get(start_link))
        .route("/auth/callback/{provider}", get(complete_callback))
        .route("/auth/logout", post(logout))
}

#[derive(Debug, Deserialize)]
struct StartQuery {
    provider: Option<String>,
    return_to: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

async fn list_providers(State(state): State<Arc<AppState>>) -> Json<ProvidersResponse> {
    let providers = state.flows.providers().all().map(|p| ProviderResponse::new(p.name())).collect();
    Json(ProvidersResponse { providers })
}

async fn start_login(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<StartQuery>,
) -> Result<Response, ApiError> {
    let started = state.sign_in.begin(query.provider.as_deref(), query.return_to.as_deref(), None).await?;
    Ok(redirect(started.location.as_str(), &[login_cookie(&state, started.state.expose_secret())]))
}

async fn start_link(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StartQuery>,
) -> Result<Response, ApiError> {
    let user = caller(&state, &headers).await?;
    let started = state.sign_in.begin(query.provider.as_deref(), query.return_to.as_deref(), Some(user)).await?;
    Ok(redirect(started.location.as_str(), &[login_cookie(&state, started.state.expose_secret())]))
}

async fn complete_callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(provider): ApiPath<String>,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> Response {
    let clear_login = state.cookies.clear(state.cookies.login());
    let cookies = cookie(&headers, state.cookies.login()).and_then(|login| {
        let session = cookie(&headers, state.cookies.session())?;
        Ok((login, session))
    });
    let (browser_state, session) = match cookies {
        Ok(found) => found,
        Err(error) => return with_cookie(pages::error(&headers, error), clear_login),
    };
    let current_user = match session {
        Some(session) => state.sessions.resolve(session).await.ok().flatten(),
        None => None,
    };
    let callback = Callback { code: query.code, state: query.state, iss: query.iss, error: query.error };
    let finished = match state.flows.finish(&provider, callback, browser_state).await {
        Ok(finished) => finished,
        Err(error) => return with_cookie(pages::error(&headers, error.into()), clear_login),
    };
    if let Purpose::Connect { .. } = finished.purpose {
        return match state.auth_profiles.complete(finished, current_user).await {
            Ok(profile) => {
                let message = format!("{} is connected. You can close this window.", profile.display_name);
                with_cookie(pages::page(StatusCode::OK, "Account connected", &message), clear_login)
            }
            Err(error) => with_cookie(pages::error(&headers, error.into()), clear_login),
        };
    }
    match state.sign_in.complete(finished, current_user).await {
        Ok(done) => {
            let mut cookies = vec![clear_login];
            if let Some(session) = &done.session {
                cookies.push(state.cookies.set(state.cookies.session(), session.expose_secret(), state.sessions.ttl()));
            }
            redirect(&done.return_to, &cookies)
        }
        Err(error) => with_cookie(pages::error(&headers, error.into()), clear_login),
    }
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let clear_session = state.cookies.clear(state.cookies.session());
    match cookie(&headers, state.cookies.session()) {
        Ok(Some(session)) => {
            state.sessions.revoke(session).await?;
        }
        Ok(None) => {}
        // Which session to end is ambiguous: none is, but the browser is told to drop the cookie.
        Err(error) => return Ok(with_cookie(error.into_response(), clear_session)),
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().append(header::SET_COOKIE, clear_session);
    pages::protect(response.headers_mut());
    Ok(response)
}

/// The `Set-Cookie` value binding a flow's state to the browser.
pub(super) fn login_cookie(state: &AppState, value: &str) -> HeaderValue {
    state.cookies.set(state.cookies.login(), value, FLOW_TTL.to_std().unwrap_or_default())
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
