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
use serde_json::{Value, json};

use super::AppState;
use super::caller::caller;
use super::cookies;
use super::extract::{ApiPath, ApiQuery};
use super::problem::ApiError;
use crate::service::signin::{Callback, LOGIN_STATE_TTL};

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

async fn list_providers(State(state): State<Arc<AppState>>) -> Json<Value> {
    let providers: Vec<Value> = state
        .sign_in
        .providers()
        .all()
        .map(|p| json!({ "name": p.name(), "login_url": format!("/auth/login?provider={}", p.name()) }))
        .collect();
    Json(json!({ "providers": providers }))
}

async fn start_login(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<StartQuery>,
) -> Result<Response, ApiError> {
    let started = state.sign_in.begin(query.provider.as_deref(), query.return_to.as_deref(), None).await?;
    Ok(redirect(&state, started.location.as_str(), &[login_cookie(&state, started.state.expose_secret())]))
}

async fn start_link(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StartQuery>,
) -> Result<Response, ApiError> {
    let user = caller(&state, &headers).await?;
    let started = state.sign_in.begin(query.provider.as_deref(), query.return_to.as_deref(), Some(user)).await?;
    Ok(redirect(&state, started.location.as_str(), &[login_cookie(&state, started.state.expose_secret())]))
}

async fn complete_callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(provider): ApiPath<String>,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> Response {
    let clear_login = state.cookies.clear(state.cookies.login());
    let browser_state = cookies::read(&headers, state.cookies.login());
    let current_user = match cookies::read(&headers, state.cookies.session()) {
        Some(cookie) => state.sessions.resolve(cookie).await.ok().flatten(),
        None => None,
    };
    let callback = Callback { code: query.code, state: query.state, iss: query.iss, error: query.error };
    match state.sign_in.complete(&provider, callback, browser_state, current_user).await {
        Ok(done) => {
            let mut cookies = vec![clear_login];
            if let Some(session) = &done.session {
                cookies.push(state.cookies.set(state.cookies.session(), session.expose_secret(), state.sessions.ttl()));
            }
            redirect(&state, &done.return_to, &cookies)
        }
        Err(error) => {
            let mut response = ApiError::from(error).into_response();
            response.headers_mut().append(header::SET_COOKIE, clear_login);
            no_store(&mut response);
            response
        }
    }
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(cookie) = cookies::read(&headers, state.cookies.session()) {
        state.sessions.revoke(cookie).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().append(header::SET_COOKIE, state.cookies.clear(state.cookies.session()));
    no_store(&mut response);
    Ok(response)
}

fn login_cookie(state: &AppState, value: &str) -> HeaderValue {
    state.cookies.set(state.cookies.login(), value, LOGIN_STATE_TTL.to_std().unwrap_or_default())
}

/// A `303 See Other` to `location`, setting `cookies`.
fn redirect(_state: &AppState, location: &str, cookies: &[HeaderValue]) -> Response {
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
    no_store(&mut response);
    response
}

fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}
