//! The form of an `env_keys` connect link: `GET /connect/{token}/env` shows one input per field
//! of the profile's connector (a password input for secret ones) to the member the link was made
//! for; `POST` stores the values and uses the link up, in one transaction — a form posted twice
//! gets the invalid-link page the second time. Refused values show the form again with what to
//! fix (secret inputs empty, the link still usable). The form carries the session's CSRF token;
//! the pages carry the usual security headers, `Cache-Control: no-store` and
//! `Referrer-Policy: no-referrer`, so the token in the URL does not leak.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use secrecy::SecretString;

use crate::error::ErrorCode;
use crate::http::AppState;
use crate::http::csrf;
use crate::http::extract::{PageBytes, PagePath};
use crate::http::pages::icons::Icon;
use crate::http::pages::{Chrome, errors, live_session};
use crate::http::problem::ApiError;
use crate::service::auth_profiles::AuthProfileError;
use crate::service::profile_credentials::EnvForm;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/connect/{token}/env", get(show_env_form).post(submit_env_form))
}

struct FieldRow {
    name: String,
    label: String,
    secret: bool,
    optional: bool,
    invalid: bool,
    value: String,
}

#[derive(Template)]
#[template(path = "env_form.html")]
struct EnvFormPage {
    chrome: Chrome,
    connector_label: String,
    icon: Icon,
    display_name: String,
    action: String,
    csrf: String,
    error: Option<String>,
    fields: Vec<FieldRow>,
}

fn render(
    state: &AppState,
    status: StatusCode,
    form: EnvForm,
    action: String,
    cookie_value: &str,
    posted: Option<(&BTreeMap<String, String>, String, Option<String>)>,
) -> Response {
    let (values, error, invalid) = match posted {
        Some((values, error, invalid)) => (Some(values), Some(error), invalid),
        None => (None, None, None),
    };
    let fields = form
        .connector
        .fields
        .iter()
        .map(|field| FieldRow {
            name: field.name.clone(),
            label: field.label.clone(),
            secret: field.secret,
            optional: field.optional,
            invalid: invalid.as_deref() == Some(field.name.as_str()),
            // A secret is never sent back to the browser, not even the one it just sent.
            value: match field.secret {
                true => String::new(),
                false => values.and_then(|v| v.get(&field.name)).cloned().unwrap_or_default(),
            },
        })
        .collect();
    let page = EnvFormPage {
        chrome: state.pages.chrome(true),
        connector_label: form.connector.label,
        icon: state.pages.icon(&form.profile.provider),
        display_name: form.profile.display_name,
        action,
        csrf: csrf::token(cookie_value),
        error,
        fields,
    };
    state.pages.render(status, &page)
}

#[utoipa::path(
    get,
    path = "/connect/{token}/env",
    tag = "pages",
    operation_id = "show_env_form",
    summary = "The form for an `env` profile's values.",
    params(("token" = String, Path, description = "A connect token (from a connect link)")),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn show_env_form(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PagePath(token): PagePath<String>,
) -> Response {
    let Some(here) = super::connect_page(&token, "env") else { return super::not_a_link(&state, &headers) };
    let signed_in = match live_session(&state, &headers, &here).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let context = errors::Context { return_to: Some(here.clone()), signed_in: signed_in.is_some(), retry: None };
    let user = signed_in.as_ref().map(|(live, _)| live.record.user_id);
    match (state.auth_profiles.env_form(&token, user).await, signed_in) {
        (Ok(form), Some((_, cookie_value))) => render(&state, StatusCode::OK, form, here, &cookie_value, None),
        (Ok(_), None) => state.pages.error_in(&headers, AuthProfileError::NotSignedIn.into(), &context),
        (Err(error), _) => state.pages.error_in(&headers, error.into(), &context),
    }
}

#[utoipa::path(
    post,
    path = "/connect/{token}/env",
    tag = "pages",
    operation_id = "submit_env_form",
    summary = "Submits an `env` profile's values.",
    params(("token" = String, Path, description = "A connect token (from a connect link)")),
    request_body(content = crate::http::openapi::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn submit_env_form(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PagePath(token): PagePath<String>,
    PageBytes(body): PageBytes,
) -> Response {
    let Some(here) = super::connect_page(&token, "env") else { return super::not_a_link(&state, &headers) };
    let signed_in = match live_session(&state, &headers, &here).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let context = errors::Context { return_to: Some(here.clone()), signed_in: signed_in.is_some(), retry: None };
    let Some((live, cookie_value)) = signed_in else {
        return state.pages.error_in(&headers, AuthProfileError::NotSignedIn.into(), &context);
    };
    let (user, session) = (live.record.user_id, live.hash);
    let fields = csrf::form_fields(&body);
    if let Err(error) = csrf::check(&headers, &cookie_value, csrf::field(&fields, csrf::FIELD)) {
        return state.pages.error_in(&headers, error, &context);
    }
    let mut values = BTreeMap::new();
    for (name, value) in fields.into_iter().filter(|(name, _)| name != csrf::FIELD) {
        if values.insert(name, value).is_some() {
            let error = ApiError::new(ErrorCode::InvalidRequest, "each field is sent once");
            return state.pages.error_in(&headers, error, &context);
        }
    }
    let secrets: BTreeMap<String, SecretString> =
        values.iter().map(|(name, value)| (name.clone(), SecretString::from(value.clone()))).collect();
    let request_id = crate::http::audit::request_id(&headers);
    match state.auth_profiles.submit_env_form(&token, user, &session, secrets, request_id).await {
        Ok(_) => crate::http::auth::redirect(super::connect::CONNECTED, &[]),
        Err(AuthProfileError::InvalidEnv { problem, field }) => {
            // The values are refused: the same form again, saying what to fix; the link stays usable.
            match state.auth_profiles.env_form(&token, Some(user)).await {
                Ok(form) => {
                    let label = field
                        .as_deref()
                        .and_then(|name| form.connector.fields.iter().find(|f| f.name == name))
                        .map_or("A value", |f| f.label.as_str());
                    let posted = Some((&values, problem.for_people(label), field));
                    render(&state, StatusCode::BAD_REQUEST, form, here, &cookie_value, posted)
                }
                Err(error) => state.pages.error_in(&headers, error.into(), &context),
            }
        }
        Err(error) => state.pages.error_in(&headers, error.into(), &context),
    }
}
