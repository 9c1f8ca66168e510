//! Registered clients of the OpenID Provider (the admin API). A secret hash is never shown; a
//! secret is shown once, when it is made.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{Client, ClientKind};
use crate::service::op::clients::AuthMethod;

/// Whether a client can keep a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientKindResponse {
    /// A backend: authenticates with a secret or a signed assertion.
    Confidential,
    /// A browser or native app: no secret, PKCE.
    Public,
}

/// Where a client is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientSource {
    /// Registered through the admin API.
    Admin,
    /// Defined in the configuration file (`[[oidc.clients]]`): read-only through the API.
    Config,
}

/// A registered client: the body of `GET /admin/clients/{id}` and `PATCH /admin/clients/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClientResponse {
    /// The client id.
    pub client_id: String,
    /// The name shown on the consent page.
    pub name: String,
    /// `confidential` or `public`.
    pub kind: ClientKindResponse,
    /// Whether it has a secret (the secret itself is shown only when it is made).
    pub has_secret: bool,
    /// Its public keys for `private_key_jwt`, if any.
    pub jwks: Option<serde_json::Value>,
    /// How it may authenticate at the token endpoint.
    pub token_endpoint_auth_methods: Vec<&'static str>,
    /// Where codes may be sent, matched exactly.
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the browser.
    pub post_logout_redirect_uris: Vec<String>,
    /// Scopes it may ask for.
    pub scopes: Vec<String>,
    /// Grant types it may use.
    pub grant_types: Vec<&'static str>,
    /// Resources it may ask tokens for.
    pub resources: Vec<String>,
    /// Whether the consent page is skipped.
    pub first_party: bool,
    /// The algorithm of its tokens.
    pub signing_alg: &'static str,
    /// Lifetime of its access tokens, in seconds.
    pub access_token_ttl_seconds: u64,
    /// Lifetime of its refresh tokens, in seconds.
    pub refresh_token_ttl_seconds: u64,
    /// `admin` or `config`.
    pub source: ClientSource,
    /// Until when the secret that the last rotation replaced is still accepted beside the new
    /// one (`overlap_seconds`); absent when none is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Client> for ClientResponse {
    fn from(client: Client) -> Self {
        let previous_secret_expires_at = client.previous_secret_at(crate::domain::now()).map(|p| p.until);
        Self {
            previous_secret_expires_at,
            token_endpoint_auth_methods: AuthMethod::of(&client).into_iter().map(AuthMethod::as_str).collect(),
            client_id: client.id.as_str().to_owned(),
            name: client.name,
            kind: match client.kind {
                ClientKind::Confidential => ClientKindResponse::Confidential,
                ClientKind::Public => ClientKindResponse::Public,
            },
            has_secret: client.secret_hash.is_some(),
            jwks: client.jwks,
            redirect_uris: client.redirect_uris.iter().map(|u| u.as_str().to_owned()).collect(),
            post_logout_redirect_uris: client.post_logout_redirect_uris.iter().map(|u| u.as_str().to_owned()).collect(),
            scopes: client.scopes,
            grant_types: client.grant_types.iter().map(|g| g.as_str()).collect(),
            resources: client.resources,
            first_party: client.first_party,
            signing_alg: client.signing_alg.as_str(),
            access_token_ttl_seconds: client.access_token_ttl.as_secs(),
            refresh_token_ttl_seconds: client.refresh_token_ttl.as_secs(),
            source: if client.from_config { ClientSource::Config } else { ClientSource::Admin },
            created_at: client.created_at,
            updated_at: client.updated_at,
        }
    }
}

/// A client with its new secret: the body of `POST /admin/clients` (201) and
/// `POST /admin/clients/{id}/secret`. The secret is shown this once; only its hash is kept.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClientWithSecretResponse {
    /// The client.
    #[serde(flatten)]
    pub client: ClientResponse,
    /// The new secret, if one was made (confidential clients without keys); store it now.
    pub client_secret: Option<String>,
}

crate::debug_redacted!(ClientWithSecretResponse { shown: [client], secret: [client_secret] });

/// A page of clients: the body of `GET /admin/clients`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClientListResponse {
    /// The clients, ordered by id.
    pub clients: Vec<ClientResponse>,
    /// The `after` of the next page, when there may be one.
    pub next_after: Option<String>,
}
