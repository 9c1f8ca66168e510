//! Token exchange (RFC 8693): a confidential client that received a user's access token — a
//! resource server, say, registered with the grant type — trades it for one for one of its
//! registered resources (RFC 8707), usually another, to call that resource on the user's behalf.
//!
//! The new token is the user's (`sub`), is the exchanging client's (`client_id`), names the
//! chain of clients that acted for the user in `act` (section 4.1), and belongs to the same grant
//! (`gid`) as the token exchanged: it ends with that grant (a sign-out when the grant is bound to
//! the session, a revocation, the app's removal, the user disabled), and when the exchanging
//! client or one before it in `act` may no longer exchange (see
//! [`OpenIdProvider::access_grant`]); it never outlives the token exchanged. Tessera's own API and
//! MCP server are neither a target nor an audience whose tokens a client may exchange.

use super::provider::{OAuthError, OpenIdProvider, split_scope};
use super::tokens::{
    AccessClaims, Actor, MAX_ACCESS_TOKEN_BYTES, TokenForm, TokenResponse, asked_scope, registered_scopes,
    registered_target, user_claims,
};
use crate::domain::Client;
use crate::store::ReadFrom;

/// The token type of an access token (RFC 8693 section 3): the only one exchanged and issued.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The most clients a chain of exchanges may name (`act` nested this deep, the client the user
/// authorized included): each exchange adds one, and the token grows with it.
pub const MAX_ACTORS: usize = 4;

impl OpenIdProvider {
    /// Exchanges `form.subject_token`, one of Tessera's access tokens issued for `client` (its
    /// `aud` is the client's id or one of its registered resources), for one for `resource` (or
    /// `audience`), one of the client's registered resources (the same one too), with the scopes asked of the
    /// token's (all of them by default) that the client is registered for.
    pub(super) async fn exchange_token(&self, client: &Client, form: TokenForm) -> Result<TokenResponse, OAuthError> {
        let now = crate::domain::now();
        if form.actor_token.is_some() {
            return Err(OAuthError::invalid_request(
                "actor_token is not supported: the client that authenticates is the actor",
            ));
        }
        // RFC 8693 2.1: only beside an actor_token; alone, the client believes it named an actor.
        if form.actor_token_type.is_some() {
            return Err(OAuthError::invalid_request(
                "actor_token_type is sent only with an actor_token, which is not supported: the client that \
                 authenticates is the actor",
            ));
        }
        // As long as Tessera's access tokens may be (a user in many teams), not a parameter's bound.
        let subject = match form.subject_token.as_deref() {
            None | Some("") => return Err(OAuthError::invalid_request("subject_token is missing")),
            Some(token) if token.len() > MAX_ACCESS_TOKEN_BYTES => {
                return Err(OAuthError::invalid_request(
                    "subject_token is too long to be one of Tessera's access tokens",
                ));
            }
            Some(token) => token,
        };
        match form.subject_token_type.as_deref() {
            Some(ACCESS_TOKEN_TYPE) => {}
            None => return Err(OAuthError::invalid_request("subject_token_type is missing")),
            Some(_) => {
                return Err(OAuthError::invalid_request(format!(
                    "subject_token_type must be {ACCESS_TOKEN_TYPE}: only Tessera's access tokens are exchanged"
                )));
            }
        }
        if form.requested_token_type.as_deref().is_some_and(|t| t != ACCESS_TOKEN_TYPE) {
            return Err(OAuthError::invalid_request(format!(
                "requested_token_type must be {ACCESS_TOKEN_TYPE}: only access tokens are issued"
            )));
        }
        let target = target(client, &form)?;
        // Tessera's own API and MCP server act on the user's connected accounts and identities:
        // they take only tokens the user authorized for them (the consent page names them), never
        // one a client got by exchange.
        if self.tessera_resource(&target).is_some() {
            return Err(OAuthError::invalid_target(
                "Tessera's own API and MCP server take no exchanged token: the user authorizes the app for them",
            ));
        }
        let invalid = || OAuthError::invalid_request("subject_token is invalid, expired or revoked");
        let verified = self.verify_access(subject).await;
        let verified =
            verified.map_err(|e| OAuthError::from_failure(&e, "reading the signing keys to verify a token"))?;
        let claims = verified.ok_or_else(invalid)?;
        if claims.gid.is_none() {
            return Err(OAuthError::invalid_request("subject_token is a client's own token: it has no user"));
        }
        // A token for Tessera's own API or MCP server is Tessera's: no client it reaches was its
        // audience, whatever it registered among its resources (to get such tokens of its own).
        if self.tessera_resource(&claims.aud).is_some() {
            return Err(OAuthError::invalid_request(
                "subject_token is for Tessera's own API or MCP server: it is no client's to exchange",
            ));
        }
        if !client.is_audience(&claims.aud) {
            return Err(OAuthError::invalid_request(
                "subject_token was not issued for this client: its aud is neither the client's id nor one of its \
                 registered resources",
            ));
        }
        if claims.act.as_ref().map_or(1, Actor::count) >= MAX_ACTORS {
            return Err(OAuthError::invalid_request(format!(
                "subject_token was exchanged too often: a token names at most {MAX_ACTORS} clients"
            )));
        }
        let grant = self.access_grant(&claims).await?.filter(|g| g.active).ok_or_else(invalid)?;
        let held = split_scope(&claims.scope);
        let scopes = match asked_scope(&form)? {
            Some(asked) => {
                if asked.iter().any(|s| !held.contains(s)) {
                    return Err(OAuthError::invalid_scope("an exchange may only narrow the subject_token's scopes"));
                }
                if asked.iter().any(|s| !client.scopes.contains(s)) {
                    return Err(OAuthError::invalid_scope("a requested scope is not allowed for this client"));
                }
                asked
            }
            None => registered_scopes(client, &claims.scope),
        };
        if scopes.is_empty() {
            return Err(OAuthError::invalid_scope("the client is registered for none of the subject_token's scopes"));
        }
        let profile = self.store.user_profile(grant.user_id, ReadFrom::Primary).await?;
        let profile = profile.filter(|p| !p.user.disabled).ok_or_else(invalid)?;
        let user = user_claims(&profile, &scopes);
        let prior = claims.act.clone().unwrap_or_else(|| Actor { sub: claims.client_id.clone(), act: None });
        let issued = self.user_access_claims(client, &grant, &user, scopes.join(" "), now);
        let exchanged = AccessClaims {
            aud: target,
            // Never past the token exchanged (nor, as any, its grant).
            exp: issued.exp.min(claims.exp),
            client_registered_us: Some(client.created_at.timestamp_micros()),
            act: Some(Actor { sub: client.id.to_string(), act: Some(Box::new(prior)) }),
            ..issued
        };
        let access_token = self.sign_access(client, &exchanged).await?;
        tracing::info!(client_id = %client.id, from_client = %claims.client_id, "token exchanged");
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: u64::try_from(exchanged.exp - now.timestamp()).unwrap_or(0),
            refresh_token: None,
            id_token: None,
            scope: exchanged.scope,
            issued_token_type: Some(ACCESS_TOKEN_TYPE),
        })
    }
}

/// The resource the new token is for: `resource` or `audience` (the same one when both are
/// sent), one of the client's registered resources.
fn target(client: &Client, form: &TokenForm) -> Result<String, OAuthError> {
    let target = match (form.resource.as_deref(), form.audience.as_deref()) {
        (Some(resource), Some(audience)) if !crate::domain::same_resource(resource, audience) => {
            return Err(OAuthError::invalid_target("resource and audience differ: a token is for one resource"));
        }
        (Some(target), _) | (None, Some(target)) => target,
        (None, None) => {
            return Err(OAuthError::invalid_target(
                "resource is missing: name the registered resource the new token is for",
            ));
        }
    };
    registered_target(client, target)
}
