//! The sign-in chooser, `GET /login?return_to=…`: every configured provider as a button, and an
//! email field that uses home-realm discovery (`GET /login?email=…`) to go straight to the
//! team's provider of a verified domain claim. `return_to` is checked before anything is shown,
//! and carried through every button. Also `GET /`, which sends a browser to its account page
//! (after a sign-in without `return_to`, for instance).

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use super::auth::redirect;
use super::extract::ApiQuery;
use super::pages::icons::Icon;
use super::pages::{self, Chrome};
use super::problem::ApiError;
use crate::domain::Email;
use crate::service::teams::Discovery;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/", get(home)).route("/login", get(show_login))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LoginQuery {
    return_to: Option<String>,
    email: Option<String>,
}

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
    email: String,
    notice: Option<String>,
    notice_is_error: bool,
}

/// A provider's name as people read it: the well-known ones spelt their way, others capitalised.
pub fn provider_label(name: &str) -> String {
    match name {
        "github" => "GitHub".into(),
        "gitlab" => "GitLab".into(),
        "google" => "Google".into(),
        "microsoft" => "Microsoft".into(),
        other => {
            let mut chars = other.chars();
            chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
        }
    }
}

/// `/auth/{path}?provider=…&return_to=…`.
pub fn provider_href(path: &str, provider: &str, return_to: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("provider", provider);
    if let Some(to) = return_to {
        query.append_pair("return_to", to);
    }
    format!("/auth/{path}?{}", query.finish())
}

/// The buttons of every provider, for `/auth/login` or `/auth/link`.
pub fn provider_buttons(state: &AppState, path: &str, return_to: Option<&str>) -> Vec<ProviderButton> {
    state
        .flows
        .providers()
        .all()
        .map(|p| ProviderButton {
            label: provider_label(p.name()),
            icon: state.pages.icon(p.name()),
            href: provider_href(path, p.name(), return_to),
        })
        .collect()
}

/// The chooser, with an optional notice.
pub fn chooser(state: &AppState, return_to: Option<&str>, email: &str, notice: Option<(String, bool)>) -> Response {
    let providers = provider_buttons(state, "login", return_to);
    let status = if providers.is_empty() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let (notice, notice_is_error) = match notice {
        Some((text, error)) => (Some(text), error),
        None => (None, false),
    };
    state.pages.render(
        status,
        &LoginPage {
            chrome: state.pages.chrome(false),
            providers,
            return_to: return_to.map(str::to_owned),
            email: email.to_owned(),
            notice,
            notice_is_error,
        },
    )
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
    let return_to = match query.return_to.as_deref().filter(|r| !r.is_empty()) {
        Some(value) => match state.sign_in.check_return_to(value) {
            Ok(checked) => Some(checked.as_str().to_owned()),
            Err(error) => return state.pages.error(&headers, error.into()),
        },
        None => None,
    };
    let Some(email_text) = query.email.as_deref().map(str::trim).filter(|e| !e.is_empty()) else {
        return chooser(&state, return_to.as_deref(), "", None);
    };
    let Ok(email) = Email::parse(email_text) else {
        let notice = "Enter an email address like name@example.com.".to_owned();
        return chooser(&state, return_to.as_deref(), email_text, Some((notice, true)));
    };
    let providers = state.flows.providers();
    let team_provider = match state.teams.discover(&email).await {
        Ok(Discovery::Sso { provider, issuer }) => {
            providers.for_issuer(&provider, &issuer).map(|p| p.name().to_owned())
        }
        Ok(Discovery::Default) => None,
        Err(error) => return state.pages.error(&headers, error.into()),
    };
    match team_provider {
        Some(provider) => redirect(&provider_href("login", &provider, return_to.as_deref()), &[]),
        None => match providers.get(None) {
            // No team signs in its own way for this domain: the default provider, if any.
            Some(default) => redirect(&provider_href("login", default.name(), return_to.as_deref()), &[]),
            None => {
                let notice =
                    format!("{} has no team sign-in of its own here. Choose how you want to sign in.", email.domain());
                chooser(&state, return_to.as_deref(), email_text, Some((notice, false)))
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
    if pages::wants_html(&headers) {
        return redirect("/account", &[]);
    }
    super::not_found().await.into_response()
}
