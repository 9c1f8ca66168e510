//! [`OpenIdProvider`]: the rules of Tessera's downstream side, shared by the authorization
//! endpoint ([`super::authorize`]) and the token, introspection, revocation and userinfo
//! endpoints ([`super::tokens`]), and [`OAuthError`], the RFC 6749 error every one of them
//! answers with.

use std::sync::Arc;
use std::time::Duration;

use super::clients::Clients;
use super::keys::SigningKeys;
use crate::domain::UserId;
use crate::service::answers::Answers;
use crate::store::{ActorKind, GrantAt, NewAuditEvent, Store, StoreError, UserApp};
use crate::worker::last_seen::LastSeen;

/// How long an authorization code lives.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a pushed or held authorization request lives.
pub const REQUEST_TTL: Duration = Duration::from_secs(600);
/// The prefix of request URIs (RFC 9126).
pub const REQUEST_URI_PREFIX: &str = "urn:ietf:params:oauth:request_uri:";
/// The longest parameter value accepted (a URI, a scope list, a state).
pub const MAX_PARAM_LEN: usize = 2048;

/// The most characters an authorization request's parameters have together (each at most
/// [`MAX_PARAM_LEN`]): a request is held, and a pushed one stored, as it came.
pub const MAX_PARAMS_LEN: usize = 8192;
/// The resource (RFC 8707, a path under the public URL) for which Tessera's own access tokens
/// act for their user on Tessera's REST API.
pub const API_RESOURCE_PATH: &str = "/v1";
/// The resource (a path under the public URL) of Tessera's MCP endpoint.
pub const MCP_RESOURCE_PATH: &str = "/mcp";

/// One of Tessera's own resources, whose tokens act for the user on their connected accounts
/// and identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TesseraResource {
    /// The REST API ([`API_RESOURCE_PATH`]).
    Api,
    /// The MCP endpoint ([`MCP_RESOURCE_PATH`]).
    Mcp,
}

pub use crate::domain::OFFLINE_ACCESS;

/// Why a request asking for [`OFFLINE_ACCESS`] alone, from a client that may not use it, is
/// `invalid_scope` (at authorization and at a refresh): nothing is left to grant.
pub const OFFLINE_ACCESS_ALONE: &str = "offline_access alone, which this client may not use (no refresh_token grant, or not among its scopes): it is ignored";

/// The OpenID Provider service.
#[derive(Debug, Clone)]
pub struct OpenIdProvider {
    pub(super) store: Arc<dyn Store>,
    pub(super) clients: Clients,
    pub(super) keys: SigningKeys,
    pub(super) issuer: String,
    pub(super) id_token_ttl: Duration,
    /// How long after its first use a rotated refresh token may be used again
    /// (`oidc.refresh_token_reuse_seconds`).
    pub(super) refresh_token_reuse: Duration,
    /// How long a browser session lasts unused (`auth.session_idle_minutes`): a grant bound to
    /// one ends with it.
    pub(super) session_idle: Duration,
    /// Where a refresh of a grant bound to a browser session notes that session's use.
    pub(super) last_seen: Option<Arc<LastSeen>>,
    /// The consent forms' answers, by request id hash, kept for the same form sent again.
    pub(super) answers: Arc<Answers<Result<String, super::authorize::Rejection>>>,
    /// Where "Continue as …" sent a browser, by held request hash, kept for the same form sent
    /// again (see [`OpenIdProvider::give_up_for`]).
    pub(super) given_up: Arc<Answers<Option<String>>>,
}

impl OpenIdProvider {
    /// A provider whose issuer is `issuer` (the public URL, without a trailing slash).
    pub fn new(
        store: Arc<dyn Store>,
        clients: Clients,
        keys: SigningKeys,
        issuer: String,
        id_token_ttl: Duration,
    ) -> Self {
        let answers = Arc::default();
        Self {
            store,
            clients,
            keys,
            issuer,
            id_token_ttl,
            refresh_token_reuse: Duration::ZERO,
            session_idle: crate::config::DEFAULT_SESSION_IDLE,
            last_seen: None,
            answers,
            given_up: Arc::default(),
        }
    }

    /// Ends the grants bound to a browser session once it has gone unused for `idle`, as the
    /// session itself does (`auth.session_idle_minutes`); a refresh of such a grant is a use of
    /// its session, noted in `last_seen` (an app in use keeps the sign-in it came from alive, up
    /// to the session's lifetime).
    pub fn with_sessions(mut self, idle: Duration, last_seen: Arc<LastSeen>) -> Self {
        self.session_idle = idle;
        self.last_seen = Some(last_seen);
        self
    }

    /// When grants are judged at `now` (see [`GrantAt`]).
    pub(super) fn grant_at(&self, now: chrono::DateTime<chrono::Utc>) -> GrantAt {
        GrantAt {
            now,
            idle_before: now - chrono::TimeDelta::from_std(self.session_idle).unwrap_or(chrono::TimeDelta::MAX),
        }
    }

    /// Lets a rotated refresh token be used again for `reuse` after its first use, each use
    /// giving another new refresh token (a client that lost the answer to its refresh, or two
    /// tabs refreshing at once); past it, a use revokes the grant. Zero, the default, allows none.
    pub fn with_refresh_token_reuse(mut self, reuse: Duration) -> Self {
        self.refresh_token_reuse = reuse;
        self
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The registered clients.
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The signing keys.
    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// Deletes expired grants (with their codes and refresh tokens), unused expired codes and
    /// expired held requests.
    pub async fn delete_expired(&self) -> Result<u64, StoreError> {
        self.store.delete_expired_grants(crate::domain::now()).await
    }

    /// The apps `user` has let in: active grants and remembered consents, one row per client.
    pub async fn apps_of(&self, user: UserId) -> Result<Vec<UserApp>, StoreError> {
        self.store.user_apps(user, self.grant_at(crate::domain::now())).await
    }

    /// Ends `user`'s access for `client`, at their own request: every grant of theirs to it is
    /// revoked (its refresh tokens stop working, its access tokens stop counting at
    /// introspection and userinfo) and the consent is forgotten, with an `app.removed` audit row
    /// in the same transaction. False when there was nothing to end.
    pub async fn remove_app(&self, user: UserId, client: &str, request_id: Option<String>) -> Result<bool, StoreError> {
        let audit = NewAuditEvent::new(ActorKind::User, "app.removed")
            .actor(Some(user.to_string()), None)
            .target("client", client.to_owned())
            .request(request_id);
        let removed = self.store.remove_app(user, client, crate::domain::now(), &audit).await?;
        if removed {
            tracing::info!(user_id = %user, client_id = client, "app access removed by its user");
        }
        Ok(removed)
    }

    /// An endpoint's URL under the issuer.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Which of Tessera's own resources `resource` is, if any, however it is spelled (as a
    /// client's registered resources are matched: [`crate::domain::same_resource`]).
    pub fn tessera_resource(&self, resource: &str) -> Option<TesseraResource> {
        let exact = match resource.strip_prefix(self.issuer.as_str()) {
            Some(API_RESOURCE_PATH) => Some(TesseraResource::Api),
            Some(MCP_RESOURCE_PATH) => Some(TesseraResource::Mcp),
            _ => None,
        };
        exact.or_else(|| {
            [(API_RESOURCE_PATH, TesseraResource::Api), (MCP_RESOURCE_PATH, TesseraResource::Mcp)]
                .into_iter()
                .find(|(path, _)| crate::domain::same_resource(&self.endpoint(path), resource))
                .map(|(_, which)| which)
        })
    }
}

/// An OAuth error as RFC 6749 section 5.2 (and its extensions) spell it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    /// The error code (`invalid_request`, `invalid_grant`, …).
    pub error: &'static str,
    /// What went wrong, for the developer of the client.
    pub description: String,
    /// 401 for client authentication failures, 503 when the store is down, else 400.
    pub status: u16,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>, status: u16) -> Self {
        Self { error, description: description.into(), status }
    }

    /// `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description, 400)
    }

    /// `invalid_client` (401).
    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new("invalid_client", description, 401)
    }

    /// `invalid_grant`.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description, 400)
    }

    /// `unauthorized_client`.
    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new("unauthorized_client", description, 400)
    }

    /// `unsupported_grant_type`.
    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        Self::new("unsupported_grant_type", description, 400)
    }

    /// `unsupported_token_type` (RFC 7009): a token of a kind that cannot be revoked.
    pub fn unsupported_token_type(description: impl Into<String>) -> Self {
        Self::new("unsupported_token_type", description, 400)
    }

    /// `invalid_scope`.
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new("invalid_scope", description, 400)
    }

    /// `invalid_target` (RFC 8707).
    pub fn invalid_target(description: impl Into<String>) -> Self {
        Self::new("invalid_target", description, 400)
    }

    /// A client authentication failure: `invalid_client` is a 401, a store failure a 503 or 500,
    /// anything else a 400.
    pub fn from_client_auth(error: &super::clients::ClientAuthError) -> Self {
        if let super::clients::ClientAuthError::Store(store) = error {
            return Self::from_failure(store, "authenticating a client");
        }
        // What is left is the client's: a failed authentication (401) or a malformed one.
        let status = if error.oauth_error() == "invalid_client" { 401 } else { 400 };
        Self::new(error.oauth_error(), error.description(), status)
    }

    /// `temporarily_unavailable` (503): the store is down.
    pub fn unavailable() -> Self {
        Self::new("temporarily_unavailable", "the service is temporarily unavailable; retry shortly", 503)
    }

    /// `server_error` (500): something that should not happen; logged.
    pub fn server_error() -> Self {
        Self::new("server_error", "an internal error occurred; it has been logged", 500)
    }

    /// A failure of Tessera's own (the store, the signing keys) as the RFC's error, by its
    /// public code: `temporarily_unavailable` (503) for what a retry may cure, `invalid_request`
    /// for a row the request named that a concurrent change removed, `server_error` (500) for
    /// anything else. The cause, with its chain, is logged here — the only place it is written.
    pub fn from_failure(error: &(impl crate::error::PublicError + 'static), doing: &'static str) -> Self {
        let chain = crate::error::Chain(error);
        match error.code() {
            code @ crate::error::ErrorCode::StoreUnavailable => {
                // At most once every few seconds: every request meets an outage.
                if code.log_level_now() == tracing::Level::ERROR {
                    tracing::warn!(error = %chain, "{doing} failed: the store is unavailable");
                } else {
                    tracing::debug!(error = %chain, "{doing} failed: the store is unavailable");
                }
                Self::unavailable()
            }
            crate::error::ErrorCode::ChangedMeanwhile => {
                tracing::info!(error = %chain, "{doing} was refused: changed meanwhile");
                Self::invalid_request("what the request refers to changed while it was being made; send it again")
            }
            _ => {
                tracing::error!(error = %chain, "{doing} failed");
                Self::server_error()
            }
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(error: StoreError) -> Self {
        Self::from_failure(&error, "an OAuth request")
    }
}

/// Splits a space-separated scope list into its distinct values, in order.
pub fn split_scope(scope: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for value in scope.split(' ').filter(|s| !s.is_empty()) {
        if !out.iter().any(|v| v == value) {
            out.push(value.to_owned());
        }
    }
    out
}

/// A lifetime as a [`chrono::TimeDelta`], saturating (lifetimes come from validated configuration).
pub(super) fn delta(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}
