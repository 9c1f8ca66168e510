//! The auth-profiles (connected accounts) API for team members (session or bearer token), or
//! for a service with the admin token acting on behalf of a member:
//!
//! - `POST /v1/teams/{team}/auth-profiles` `{connector_key, profile_kind, provider, display_name,
//!   slug?, scopes?}` (plus `values` for `env`, or `storage_state`, `browser_kind`, `cdp_url` for
//!   `browser_session`) → `{auth_profile, connect_url, connect_expires_at, auth_type}`: 201 when
//!   created, 200 when the caller's pending profile was reused (with a fresh link)
//! - `GET /v1/teams/{team}/auth-profiles`, `GET …/{slug}`, `DELETE …/{slug}` (revokes)
//! - `POST …/{slug}/connect` `{allow_account_change?}` → a new connect link
//! - `POST …/{slug}/token` → a valid access token, refreshed first when it expires within 5 min
//! - the credentials of every kind: see [`super::credentials`]
//!
//! A non-member gets 404: the team's existence is not revealed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::{DisplayName, ProfileKind, ProfileRef, Slug, TextError};
use crate::error::ErrorCode;
use crate::http::AppState;
use crate::http::caller::{OnBehalf, actor};
use crate::http::extract::{ApiBytes, ApiJson, ApiPath, ApiQuery, json_bytes, json_content_type, required};
use crate::http::problem::ApiError;
use crate::http::responses::{
    AuthProfileListResponse, AuthProfileResponse, AuthProfileTokenResponse, AuthProfileWithLinkResponse, no_store,
};
use crate::service::auth_profiles::NewProfile;
use crate::service::profile_credentials::{BrowserSessionInput, CredentialInput};

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/teams/{team}/auth-profiles", get(list_auth_profiles).post(create_auth_profile))
        .route("/v1/teams/{team}/auth-profiles/{slug}", get(get_auth_profile).delete(revoke_auth_profile))
        .route("/v1/teams/{team}/auth-profiles/{slug}/connect", post(connect_auth_profile))
        .route("/v1/teams/{team}/auth-profiles/{slug}/token", post(auth_profile_token))
}

/// A profile's slug from a request, or 400 `invalid_slug` (shared with the MCP tool).
pub(crate) fn parse_slug(value: &str) -> Result<Slug, ApiError> {
    Slug::parse(value).map_err(|e| ApiError::new(ErrorCode::InvalidSlug, e.to_string()).field("slug"))
}

/// The profile a path names, by slug or by id, or 400 `invalid_slug` (the MCP tool takes slugs only).
pub(crate) fn parse_profile(value: &str) -> Result<ProfileRef, ApiError> {
    ProfileRef::parse(value).map_err(|e| ApiError::new(ErrorCode::InvalidSlug, e.to_string()).field("slug"))
}

/// The body of a create (also the MCP tool's `create` arguments). No `Debug`: it may carry
/// secrets (`values`, `storage_state`).
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AuthProfileCreateRequest)]
pub(crate) struct CreateRequest {
    #[schema(required = true, value_type = String)]
    pub(crate) connector_key: Option<String>,
    /// `oauth_account`, `oauth_app`, `env` or `browser_session`.
    #[schema(required = true, value_type = String)]
    pub(crate) profile_kind: Option<String>,
    /// Required for the OAuth kinds: the provider that connects them.
    pub(crate) provider: Option<String>,
    #[schema(required = true, value_type = String)]
    pub(crate) display_name: Option<String>,
    pub(crate) slug: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
    /// The values of an `env` profile, by field name (each name once).
    #[serde(default, deserialize_with = "optional_distinct_values")]
    pub(crate) values: Option<BTreeMap<String, String>>,
    /// The storage state of a `browser_session` profile (no key twice in any object).
    #[serde(default, deserialize_with = "crate::http::extract::optional_distinct_json")]
    pub(crate) storage_state: Option<serde_json::Value>,
    pub(crate) browser_kind: Option<String>,
    pub(crate) cdp_url: Option<String>,
}

/// An `env` profile's `values` as sent: an object of names and string values, each name once
/// (a [`DistinctJson`](crate::http::extract::DistinctJson): a map would silently keep the last of
/// a repeated name, where a proxy in front might read the first). A value is refused without
/// its name, which may be a secret pasted in the wrong place.
pub(super) fn distinct_values<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let json = crate::http::extract::distinct_json(d)?;
    let serde_json::Value::Object(object) = json else {
        return Err(serde::de::Error::custom("`values` must be an object of names and string values"));
    };
    object
        .into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(value) => Ok((name, value)),
            _ => Err(serde::de::Error::custom("each value in `values` must be a string")),
        })
        .collect()
}

fn optional_distinct_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    #[derive(Deserialize)]
    struct Values(#[serde(deserialize_with = "distinct_values")] BTreeMap<String, String>);
    Option::<Values>::deserialize(d).map(|v| v.map(|v| v.0))
}

/// The values of an `env` profile as secrets.
pub(super) fn secret_values(values: BTreeMap<String, String>) -> BTreeMap<String, SecretString> {
    values.into_iter().map(|(name, value)| (name, SecretString::from(value))).collect()
}

pub(super) fn key_like(value: &str, field: &str, code: ErrorCode) -> Result<String, ApiError> {
    let value = value.trim().to_ascii_lowercase();
    let valid = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(value)
    } else {
        Err(ApiError::new(code, format!("`{field}` must be 1 to 64 characters of a-z, 0-9, `-`, `_` and `.`"))
            .field(field))
    }
}

/// A create request checked field by field, each fault a 400 naming its field.
pub(crate) fn parse_create(request: CreateRequest) -> Result<NewProfile, ApiError> {
    let connector_key =
        key_like(required(&request.connector_key, "connector_key")?, "connector_key", ErrorCode::InvalidConnectorKey)?;
    let kind_text = required(&request.profile_kind, "profile_kind")?;
    let kind = ProfileKind::parse(kind_text.trim()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidProfileKind,
            "`profile_kind` must be one of oauth_account, oauth_app, env, browser_session",
        )
        .field("profile_kind")
    })?;
    // OAuth kinds name the provider that connects them; for the others it is only a label, the
    // connector's key unless given.
    // Blank is absent where it is optional.
    let provider = match required(&request.provider, "provider") {
        Ok(provider) => key_like(provider, "provider", ErrorCode::InvalidProvider)?,
        Err(_) if !kind.is_oauth() => connector_key.clone(),
        Err(error) => return Err(error),
    };
    if request.storage_state.is_none() && (request.browser_kind.is_some() || request.cdp_url.is_some()) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`browser_kind` and `cdp_url` go with a `storage_state` (browser_session)",
        ));
    }
    let credential = match (request.values, request.storage_state) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "send `values` (env) or `storage_state` (browser_session), not both",
            ));
        }
        (Some(values), None) => Some(CredentialInput::Env(secret_values(values))),
        (None, Some(storage_state)) => Some(CredentialInput::BrowserSession(BrowserSessionInput {
            storage_state,
            browser_kind: request.browser_kind,
            cdp_url: request.cdp_url,
        })),
        (None, None) => None,
    };
    let display_name = parse_display_name(required(&request.display_name, "display_name")?)?;
    let slug = request.slug.as_deref().map(parse_slug).transpose()?;
    let scopes = parse_scopes(request.scopes.unwrap_or_default())?;
    Ok(NewProfile { connector_key, kind, provider, display_name, slug, scopes, credential })
}

/// A profile's display name.
pub(crate) fn parse_display_name(value: &str) -> Result<String, ApiError> {
    let display_name = DisplayName::parse_optional(Some(value))
        .map_err(|e| {
            let code =
                if matches!(e, TextError::TooLong(_)) { ErrorCode::FieldTooLong } else { ErrorCode::InvalidName };
            ApiError::new(code, format!("`display_name`: {e}")).field("display_name")
        })?
        .ok_or_else(|| ApiError::new(ErrorCode::MissingField, "`display_name` is required").field("display_name"))?;
    Ok(display_name.as_str().to_owned())
}

/// A profile's requested scopes.
pub(crate) fn parse_scopes(scopes: Vec<String>) -> Result<Vec<String>, ApiError> {
    if scopes.len() > 50
        || scopes
            .iter()
            // RFC 6749 section 3.3: a scope token is printable ASCII but for `"` and `\`.
            .any(|s| s.is_empty() || s.len() > 200 || !s.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidScope,
            "`scopes` is at most 50 scopes of 1 to 200 printable ASCII characters, without spaces, `\"` or `\\` (RFC 6749 3.3)",
        )
        .field("scopes"));
    }
    Ok(scopes)
}

#[utoipa::path(
    post,
    path = "/v1/teams/{team}/auth-profiles",
    tag = "auth-profiles",
    operation_id = "create_auth_profile",
    summary = "Creates an auth profile (and its connect link when it needs one).",
    params(("team" = String, Path, description = "A team id or slug"), crate::http::openapi::OnBehalfParams),
    request_body = CreateRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The caller's pending profile for this connector, reused with a new link.", body = AuthProfileWithLinkResponse), (status = 201, description = "The profile.", body = AuthProfileWithLinkResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn create_auth_profile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(team): ApiPath<String>,
    ApiQuery(query): ApiQuery<OnBehalf>,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<axum::response::Response, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let request = parse_create(request)?;
    let request_id = crate::http::audit::request_id_of(&headers);
    let created = state.auth_profiles.create(&team, user, request, request_id).await?;
    let status = if created.created { StatusCode::CREATED } else { StatusCode::OK };
    // The connect link in it is a bearer secret.
    Ok(no_store((status, Json(AuthProfileWithLinkResponse::from(created)))))
}

#[utoipa::path(
    get,
    path = "/v1/teams/{team}/auth-profiles",
    tag = "auth-profiles",
    operation_id = "list_auth_profiles",
    summary = "The caller's auth profiles in a team.",
    params(("team" = String, Path, description = "A team id or slug"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The profiles.", body = AuthProfileListResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn list_auth_profiles(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(team): ApiPath<String>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<Json<AuthProfileListResponse>, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    Ok(Json(state.auth_profiles.list(&team, user).await?.into()))
}

#[utoipa::path(
    get,
    path = "/v1/teams/{team}/auth-profiles/{slug}",
    tag = "auth-profiles",
    operation_id = "get_auth_profile",
    summary = "An auth profile.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The profile.", body = AuthProfileResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn get_auth_profile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<Json<AuthProfileResponse>, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    Ok(Json(state.auth_profiles.get(&team, user, &parse_profile(&slug)?).await?.into()))
}

#[utoipa::path(
    delete,
    path = "/v1/teams/{team}/auth-profiles/{slug}",
    tag = "auth-profiles",
    operation_id = "revoke_auth_profile",
    summary = "Revokes an auth profile.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "Revoked.")),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn revoke_auth_profile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<StatusCode, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let request_id = crate::http::audit::request_id_of(&headers);
    state.auth_profiles.revoke(&team, user, &parse_profile(&slug)?, request_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(as = AuthProfileConnectRequest)]
#[serde(deny_unknown_fields)]
struct ConnectRequest {
    allow_account_change: Option<bool>,
}

#[utoipa::path(
    post,
    path = "/v1/teams/{team}/auth-profiles/{slug}/connect",
    tag = "auth-profiles",
    operation_id = "connect_auth_profile",
    summary = "A new connect link for a profile; the body is optional.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    request_body(content = Option<ConnectRequest>, description = "Optional: `{\"allow_account_change\": true}`."),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The profile and link.", body = AuthProfileWithLinkResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn connect_auth_profile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
    ApiBytes(body): ApiBytes,
) -> Result<axum::response::Response, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    // The body is optional: none, or `{"allow_account_change": true}`.
    let request: ConnectRequest = match body.is_empty() {
        true => ConnectRequest::default(),
        false if !json_content_type(&headers) => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with `Content-Type: application/json`, or send none",
            ));
        }
        false => json_bytes(&body)?,
    };
    let allow = request.allow_account_change.unwrap_or(false);
    let linked = state.auth_profiles.connect_link(&team, user, &parse_profile(&slug)?, allow).await?;
    Ok(no_store(Json(AuthProfileWithLinkResponse::from(linked))))
}

#[utoipa::path(
    post,
    path = "/v1/teams/{team}/auth-profiles/{slug}/token",
    tag = "auth-profiles",
    operation_id = "auth_profile_token",
    summary = "A fresh access token of a connected profile.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The token (`Cache-Control: no-store`).", body = AuthProfileTokenResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn auth_profile_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<axum::response::Response, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let token: AuthProfileTokenResponse =
        state.auth_profiles.access_token(&team, user, &parse_profile(&slug)?).await?.into();
    Ok(no_store(Json(token)))
}
