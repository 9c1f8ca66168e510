//! Token validation and sign-in: `/v1/validate`, `/v1/auth/discover` and `/auth/providers`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::TeamRoleResponse;
use crate::domain::DomainName;
use crate::service::teams::Discovery;
use crate::service::validation::Validated;

/// The body of `POST /v1/validate`: who the token's user is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ValidateResponse {
    /// The user's id.
    pub user_id: Uuid,
    /// Whether this validation created the user (first sight of the identity).
    pub created: bool,
    /// The token's normalised issuer.
    pub issuer: String,
    /// The token's subject.
    pub subject: String,
    /// The user's email, if known.
    pub email: Option<String>,
    /// Whether an upstream provider vouched for the email.
    pub email_verified: bool,
    /// The user's teams, default team first.
    pub teams: Vec<TeamRoleResponse>,
    /// When the token expires (its `exp`).
    pub expires_at: DateTime<Utc>,
    /// For one of Tessera's own access tokens, what it was issued for; absent for an upstream
    /// token (whose `aud` was checked against its issuer's configured `audiences`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_for: Option<IssuedForResponse>,
}

/// What one of Tessera's own access tokens was issued for: a backend that is not its audience
/// should refuse it (or ask `POST /v1/validate?audience=…` to).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedForResponse {
    /// The token's `aud`: the resource it was issued for (RFC 8707) or, without one, the client id.
    pub audience: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// For a token got by token exchange (RFC 8693): the client that exchanged it (`client_id`
    /// too), and within it the prior actors down to the client the user authorized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<ActorResponse>,
}

/// An actor of a token got by exchange: a client, and the one before it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActorResponse {
    /// The client's id.
    pub sub: String,
    /// The prior actor.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub act: Option<Box<ActorResponse>>,
}

impl From<crate::service::op::tokens::Actor> for ActorResponse {
    fn from(actor: crate::service::op::tokens::Actor) -> Self {
        Self { sub: actor.sub, act: actor.act.map(|prior| Box::new((*prior).into())) }
    }
}

impl From<Validated> for ValidateResponse {
    fn from(validated: Validated) -> Self {
        let (token, principal) = (&validated.token, &validated.principal);
        Self {
            user_id: principal.user.id.as_uuid(),
            created: validated.created,
            issuer: token.issuer.as_str().to_owned(),
            subject: token.subject.as_str().to_owned(),
            email: principal.user.email.clone(),
            email_verified: principal.user.email_verified,
            teams: principal.teams.iter().cloned().map(Into::into).collect(),
            expires_at: token.expires_at,
            issued_for: validated.issued_for.map(|issued| IssuedForResponse {
                audience: issued.audience,
                client_id: issued.client_id,
                scope: issued.scope,
                act: issued.act.map(Into::into),
            }),
        }
    }
}

/// The body of `POST /v1/auth/discover`: how a user with this email signs in, told apart by
/// `method`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum DiscoverResponse {
    /// Sign in through the identity provider of the team that claims the email's domain.
    Sso {
        /// The issuer to sign in with.
        issuer: String,
        /// The name of the sign-in provider for that issuer.
        provider: String,
        /// The email's domain.
        domain: String,
    },
    /// Use the default sign-in.
    Default {
        /// The email's domain.
        domain: String,
    },
}

impl DiscoverResponse {
    /// The answer for an email of `domain`.
    pub fn new(discovery: Discovery, domain: DomainName) -> Self {
        let domain = domain.as_str().to_owned();
        match discovery {
            Discovery::Sso { issuer, provider } => {
                DiscoverResponse::Sso { issuer: issuer.as_str().to_owned(), provider, domain }
            }
            Discovery::Default => DiscoverResponse::Default { domain },
        }
    }
}

/// A sign-in provider, for login pages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderResponse {
    /// The provider's name.
    pub name: String,
    /// The path that starts a sign-in with it.
    pub login_url: String,
}

impl ProviderResponse {
    /// The provider named `name`.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), login_url: format!("/auth/login?provider={name}") }
    }
}

/// The body of `GET /auth/providers`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProvidersResponse {
    /// The configured sign-in providers, by name.
    pub providers: Vec<ProviderResponse>,
}
