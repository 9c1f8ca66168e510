//! The JSON body of every successful response, in one place.
//!
//! Handlers return these types, never a domain record or an ad-hoc JSON value, so that what a
//! client sees is written down once and an OpenAPI document can be generated from it: the doc
//! comments here are the API's descriptions. Fields are plain types (strings, UUIDs, times, and
//! small enums of their own), never domain newtypes; domain records are converted with `From`.
//! The submodules only group the types; everything is re-exported here.
//!
//! Errors are problem+json bodies ([`super::problem`]); HTML pages are [`super::pages`].

mod audit;
mod auth_profiles;
mod clients;
mod sign_in;
mod teams;
mod users;
mod webhooks;

#[cfg(test)]
mod tests;

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use serde::Serialize;

pub use self::audit::{AuditEventResponse, AuditListResponse};
pub use self::auth_profiles::{
    AuthProfileKind, AuthProfileListResponse, AuthProfileResponse, AuthProfileStatus, AuthProfileTestResponse,
    AuthProfileTokenResponse, AuthProfileUpdateResponse, AuthProfileWithLinkResponse, ConnectAuthType,
    ConnectorCredentialResponse, CredentialMetaResponse, CredentialPayload, CredentialResponse,
    CredentialSourceResponse, FieldSetResponse, TokenType,
};
pub use self::clients::{
    ClientKindResponse, ClientListResponse, ClientResponse, ClientSource, ClientWithSecretResponse,
};
pub use self::sign_in::{DiscoverResponse, ProviderResponse, ProvidersResponse, ValidateResponse};
pub use self::teams::{
    DomainClaimListResponse, DomainClaimResponse, MemberResponse, MemberRole, TeamListResponse, TeamMemberListResponse,
    TeamMemberResponse, TeamMembershipResponse, TeamResponse, TeamRoleResponse, TeamSummaryResponse,
};
pub use self::users::{BootstrapResponse, IdentityResponse, UserListResponse, UserProfileResponse, UserResponse};
pub use self::webhooks::{
    DeliveryListResponse, DeliveryResponse, DeliveryStateResponse, ReplayResponse, WebhookListResponse,
    WebhookResponse, WebhookWithSecretResponse,
};

/// The body of `GET /healthz` (`{"status": "ok"}`) and `GET /readyz` (`{"status": "ready"}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthResponse {
    /// `ok` when the process answers (liveness), `ready` when its database answers too.
    pub status: HealthStatus,
}

/// What a health check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The process answers.
    Ok,
    /// The process and its database answer.
    Ready,
}

/// A response that holds a secret (a client secret, a webhook signing key, a credential): no
/// cache may keep it (`Cache-Control: no-store`).
pub fn no_store(body: impl IntoResponse) -> axum::response::Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
