//! The admin API for other backends: bootstrap users from OIDC identities, inspect users.
//!
//! - `POST /admin/users/bootstrap` provisions a user from `{issuer, subject, email, name?}` (the
//!   seed's `oidc_*` field names are accepted too): 201 when it created the user, 200 when the
//!   identity was known.
//! - `POST /admin/users/{user_id}/bootstrap` (legacy) makes sure an existing user has a default team.
//! - `GET /admin/users/{user_id}` returns the user with identities and teams.
//! - `PATCH /admin/users/{user_id}` `{name?, email?, email_verified?, disabled?}` changes them
//!   (`user.updated`, `user.disabled`/`user.enabled` events).
//! - `DELETE /admin/users/{user_id}` deletes them with everything of theirs: 204; 404
//!   `user_not_found`; 409 `last_owner` while they are the last owner of a team with other members.
//!
//! Listings (`GET /admin/users`, teams, members) are in `admin_listing`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::AppState;
use super::audit::{AuditAction, AuditDetails, NothingChanged};
use super::extract::{ApiJson, ApiPath, parse_user_id, required};
use super::problem::ApiError;
use super::responses::{BootstrapResponse, UserProfileResponse, UserResponse};
use crate::domain::{DisplayName, Email, EmailError, Issuer, IssuerError, Subject, TextError};
use crate::error::ErrorCode;
use crate::service::provisioning::{IdentityClaim, Provisioned};
use crate::store::UserChange;

/// The admin routes (authentication is layered on by the caller).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/users/bootstrap", post(bootstrap_user))
        .route("/admin/users/{user_id}/bootstrap", post(bootstrap_existing_user))
        .route("/admin/users/{user_id}", get(get_user).patch(update_user).delete(delete_user))
}

/// The body of `POST /admin/users/bootstrap`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BootstrapRequest {
    #[schema(required = true, value_type = String)]
    #[serde(alias = "oidc_issuer")]
    issuer: Option<String>,
    #[schema(required = true, value_type = String)]
    #[serde(alias = "oidc_user_id")]
    subject: Option<String>,
    #[schema(required = true, value_type = String)]
    #[serde(alias = "oidc_user_email")]
    email: Option<String>,
    #[serde(alias = "oidc_user_name")]
    name: Option<String>,
    email_verified: Option<bool>,
    provider: Option<String>,
}

#[utoipa::path(
    post,
    path = "/admin/users/bootstrap",
    tag = "admin",
    operation_id = "bootstrap_user",
    summary = "Finds or creates the user of an identity, with a default team.",
    request_body = BootstrapRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The user existed.", body = BootstrapResponse), (status = 201, description = "The user was created.", body = BootstrapResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn bootstrap_user(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<BootstrapRequest>,
) -> Result<(StatusCode, Json<BootstrapResponse>), ApiError> {
    let claim = parse_claim(request)?;
    let Provisioned { user, team, created, .. } = state.provisioner.bootstrap(claim).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(BootstrapResponse::new(user.id, created, team))))
}

#[utoipa::path(
    post,
    path = "/admin/users/{user_id}/bootstrap",
    tag = "admin",
    operation_id = "bootstrap_existing_user",
    summary = "Ensures an existing user has a default team.",
    params(("user_id" = String, Path, description = "A user id (UUID)")),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The team existed.", body = BootstrapResponse), (status = 201, description = "The team was created.", body = BootstrapResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn bootstrap_existing_user(
    State(state): State<Arc<AppState>>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<(StatusCode, Json<BootstrapResponse>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let (user, team, created) = state.provisioner.ensure_default_team(user_id).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(BootstrapResponse::new(user.id, created, team))))
}

#[utoipa::path(
    get,
    path = "/admin/users/{user_id}",
    tag = "admin",
    operation_id = "get_user",
    summary = "A user with identities and teams.",
    params(("user_id" = String, Path, description = "A user id (UUID)")),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The user.", body = UserProfileResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn get_user(
    State(state): State<Arc<AppState>>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<UserProfileResponse>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(state.provisioner.user_profile(user_id).await?.into()))
}

/// The body of `PATCH /admin/users/{user_id}`: any of the fields; `null` (or blank) clears
/// `name` or `email`. An unknown field is refused: a misspelt `disable` must not answer 200.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateUserRequest {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    email: Option<Option<String>>,
    email_verified: Option<bool>,
    disabled: Option<bool>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[utoipa::path(
    patch,
    path = "/admin/users/{user_id}",
    tag = "admin",
    operation_id = "update_user",
    summary = "Changes a user's name, email, email_verified or disabled flag.",
    params(("user_id" = String, Path, description = "A user id (UUID)")),
    request_body = UpdateUserRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The user.", body = UserResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn update_user(
    State(state): State<Arc<AppState>>,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(request): ApiJson<UpdateUserRequest>,
) -> Result<
    (Option<Extension<NothingChanged>>, Extension<AuditAction>, Extension<AuditDetails>, Json<UserResponse>),
    ApiError,
> {
    let user_id = parse_user_id(&user_id)?;
    if request.name.is_none()
        && request.email.is_none()
        && request.email_verified.is_none()
        && request.disabled.is_none()
    {
        return Err(ApiError::new(
            ErrorCode::MissingField,
            "name one of `name`, `email`, `email_verified`, `disabled` (true or false) to change",
        )
        .field("disabled"));
    }
    let name = match request.name {
        None => None,
        Some(name) => Some(
            DisplayName::parse_optional(name.as_deref())
                .map_err(|e| text_error(e, "name", ErrorCode::InvalidName))?
                .map(|n| n.as_str().to_owned()),
        ),
    };
    let email = match request.email.map(|e| e.filter(|e| !e.trim().is_empty())) {
        None => None,
        Some(None) => Some(None),
        Some(Some(email)) => Some(Some(Email::parse(&email).map_err(|e| {
            let code = if e == EmailError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidEmail };
            ApiError::new(code, format!("`email`: {e}")).field("email")
        })?)),
    };
    if email.as_ref().is_some_and(Option::is_none) && request.email_verified == Some(true) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "an email that is removed cannot be verified")
            .field("email_verified"));
    }
    let change = UserChange { name, email, email_verified: request.email_verified, disabled: request.disabled };
    let update = state.provisioner.update_user(user_id, &change).await?;
    let unchanged = (!update.changed).then_some(Extension(NothingChanged));
    // Named by what changed, not by what was sent: `disabled: false` beside a new email is an
    // update of the email, not an enabling. Disabling a user already disabled that still ended
    // a session left is a disabling.
    let toggled = update.fields.contains(&"disabled");
    let action = match (toggled || update.fields.is_empty(), update.user.disabled) {
        (true, true) => "user.disabled",
        (true, false) => "user.enabled",
        (false, _) => "user.updated",
    };
    let fields: Vec<serde_json::Value> = update.fields.iter().map(|f| (*f).into()).collect();
    let details = AuditDetails(serde_json::Map::from_iter([("fields".to_owned(), fields.into())]));
    Ok((unchanged, Extension(AuditAction(action)), Extension(details), Json(update.user.into())))
}

#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}",
    tag = "admin",
    operation_id = "delete_user",
    summary = "Deletes a user.",
    params(("user_id" = String, Path, description = "A user id (UUID)")),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "Deleted.")),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn delete_user(
    State(state): State<Arc<AppState>>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.users.delete(parse_user_id(&user_id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn text_error(error: TextError, field: &str, invalid: ErrorCode) -> ApiError {
    let code = match error {
        TextError::TooLong(_) => ErrorCode::FieldTooLong,
        TextError::Empty => ErrorCode::MissingField,
        TextError::ControlCharacters => invalid,
    };
    ApiError::new(code, format!("`{field}`: {error}")).field(field)
}

fn parse_claim(request: BootstrapRequest) -> Result<IdentityClaim, ApiError> {
    let issuer = Issuer::parse(required(&request.issuer, "issuer")?).map_err(|e| {
        let code = if e == IssuerError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidIssuer };
        ApiError::new(code, format!("`issuer`: {e}")).field("issuer")
    })?;
    let subject = Subject::parse(required(&request.subject, "subject")?)
        .map_err(|e| text_error(e, "subject", ErrorCode::InvalidSubject))?;
    let email = Email::parse(required(&request.email, "email")?).map_err(|e| {
        let code = if e == EmailError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidEmail };
        ApiError::new(code, format!("`email`: {e}")).field("email")
    })?;
    let name = DisplayName::parse_optional(request.name.as_deref())
        .map_err(|e| text_error(e, "name", ErrorCode::InvalidName))?;
    // As an issuer's `name`, which is what an identity records by default (its host, say): a
    // value read back from `GET /admin/users/{id}` is accepted as it is.
    let provider = crate::domain::provider_label(request.provider.as_deref())
        .map_err(|e| text_error(e, "provider", ErrorCode::InvalidRequest))?;
    Ok(IdentityClaim {
        issuer,
        subject,
        email: Some(email),
        email_verified: request.email_verified.unwrap_or(false),
        name,
        provider,
    })
}
