//! The token endpoint's grants (`authorization_code`, `refresh_token`, `client_credentials`;
//! token exchange is in [`super::exchange`]), the tokens they mint, and what reads them back: introspection (RFC 7662), revocation
//! (RFC 7009) and userinfo.
//!
//! Access tokens are JWTs (RFC 9068, `typ: at+jwt`) whose `sub` is Tessera's user id and whose
//! `gid` names the grant; refresh tokens are opaque and stored as hashes. A grant ends — and with
//! it every token it issued — when it is revoked, when a used code or refresh token is presented
//! again, when the browser session it came from ends (unless it was granted `offline_access`:
//! such a grant is bound to no session), when the identity used is unlinked, or when the user is
//! disabled.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::clients::ClientCredentials;
use super::keys::{SigningError, VerifyError};
use super::provider::{MAX_PARAM_LEN, OAuthError, OFFLINE_ACCESS, OpenIdProvider, delta, split_scope};
use crate::crypto::{constant_time_eq, random_secret, sha256};
use crate::domain::client_rules::DEFAULT_SCOPES as USER_SCOPES;
use crate::domain::{Client, GrantType, UserId, UserProfile, same_resource};
use crate::store::{GrantRecord, ReadFrom, RedeemOutcome, RotateOutcome, StoreError};

/// The longest access token Tessera mints or reads (an upstream token's bound too): its claims
/// grow with the scopes and, with `teams`, with the user's teams.
pub const MAX_ACCESS_TOKEN_BYTES: usize = crate::upstream::tokens::MAX_TOKEN_BYTES;

/// The `typ` of Tessera's access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// The `typ` of its id tokens.
pub const ID_TOKEN_TYP: &str = "JWT";

/// A token request's form, less the client's credentials.
#[derive(Clone, Default, Deserialize)]
pub struct TokenForm {
    /// The grant type.
    pub grant_type: Option<String>,
    /// `authorization_code`: the code.
    pub code: Option<String>,
    /// `authorization_code`: the redirect URI the code was sent to.
    pub redirect_uri: Option<String>,
    /// `authorization_code`: the PKCE verifier.
    pub code_verifier: Option<String>,
    /// `refresh_token`: the token.
    pub refresh_token: Option<String>,
    /// `refresh_token`, `client_credentials`, token exchange: scopes (a subset).
    pub scope: Option<String>,
    /// The RFC 8707 resource: chosen by `client_credentials` and token exchange; for a code or
    /// a refresh, it may only name the grant's own.
    pub resource: Option<String>,
    /// Token exchange (RFC 8693): the token exchanged.
    pub subject_token: Option<String>,
    /// Token exchange: its type.
    pub subject_token_type: Option<String>,
    /// Token exchange: the type of token asked for.
    pub requested_token_type: Option<String>,
    /// Token exchange: the audience asked for (as `resource`).
    pub audience: Option<String>,
    /// Token exchange: an actor token (not supported: the authenticated client is the actor).
    pub actor_token: Option<String>,
    /// Token exchange: the actor token's type (sent only with one, so refused too).
    pub actor_token_type: Option<String>,
}

crate::debug_redacted!(TokenForm {
    shown: [
        grant_type,
        redirect_uri,
        scope,
        resource,
        subject_token_type,
        requested_token_type,
        audience,
        actor_token_type
    ],
    secret: [code, code_verifier, refresh_token, subject_token, actor_token],
});

/// A successful token response (RFC 6749 5.1).
#[derive(Clone, Serialize)]
pub struct TokenResponse {
    /// The access token (a JWT).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// A new refresh token, when the client may refresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The id token, for `openid` requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The granted scopes.
    pub scope: String,
    /// Token exchange (RFC 8693): the type of the token issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

crate::debug_redacted!(TokenResponse {
    shown: [token_type, expires_in, scope, issued_token_type],
    secret: [access_token, refresh_token, id_token],
});

/// The claims of Tessera's access tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Tessera.
    pub iss: String,
    /// The internal user id; for `client_credentials`, the client id.
    pub sub: String,
    /// The resource, or the client.
    pub aud: String,
    /// Expiry (seconds).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Unique id.
    pub jti: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Granted scopes.
    pub scope: String,
    /// When the user authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The grant (absent for `client_credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<uuid::Uuid>,
    /// The user's email (scope `email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether that email is verified (with `email`; tokens issued before this claim have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// The slugs of the user's teams, default first (scope `teams`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<String>>,
    /// When its client was registered, in microseconds (`client_credentials` tokens, and tokens
    /// got by exchange, for the exchanging client): the token counts for that registration only, not for a client registered again under the
    /// same id — even within the same second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_registered_us: Option<i64>,
    /// A token got by token exchange (RFC 8693 section 4.1): the client that exchanged it (the
    /// token's `client_id`), and within it the prior actors down to the client the user
    /// authorized, whose grant (`gid`) the token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// An actor of a token got by exchange (`act`): a client, by its id, and the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The client's id.
    pub sub: String,
    /// The prior actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// The innermost actor of the chain: the client the user authorized.
    pub fn innermost(&self) -> &Actor {
        self.act.as_deref().map_or(self, Actor::innermost)
    }

    /// How many actors the chain names.
    pub fn count(&self) -> usize {
        1 + self.act.as_deref().map_or(0, Actor::count)
    }
}

impl AccessClaims {
    /// The client whose grant the token belongs to: its own, or for a token got by exchange,
    /// the client the user authorized (the innermost actor).
    pub fn granted_client(&self) -> &str {
        self.act.as_ref().map_or(self.client_id.as_str(), |act| act.innermost().sub.as_str())
    }
}

/// What the UserInfo endpoint answers.
#[derive(Debug)]
pub enum UserInfoAnswer {
    /// The user's claims, by the token's scopes.
    Claims(UserClaims),
    /// The token does not count: not one of Tessera's, expired, of an ended grant, of a client
    /// (no user), or of a user disabled or gone (RFC 6750 `invalid_token`).
    Inactive,
    /// An active token not issued for `openid` (RFC 6750 `insufficient_scope`): refreshing it
    /// would not help; the application must authorize again with `openid`.
    WithoutOpenid,
}

/// A user's claims by scope, for id tokens and userinfo.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserClaims {
    /// The internal user id.
    pub sub: String,
    /// Scope `email`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Scope `email`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// Scope `profile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Scope `teams`: the user's teams, default first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<TeamClaim>>,
}

/// One team in the `teams` claim.
#[derive(Debug, Clone, Serialize)]
pub struct TeamClaim {
    /// The team id.
    pub id: String,
    /// Its slug.
    pub slug: String,
    /// The user's role.
    pub role: &'static str,
}

#[derive(Debug, Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    azp: &'a str,
    exp: i64,
    iat: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    amr: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    idp: Option<&'a str>,
    #[serde(flatten)]
    user: &'a UserClaims,
}

/// Which token a revocation or introspection names.
enum Named {
    Access(AccessClaims),
    /// A refresh token's grant, and when the token was first used (see [`spent`]).
    Refresh(GrantRecord, Option<DateTime<Utc>>),
    Unknown,
}

/// A JWT's payload, read without verifying anything: only for what a caller could as well have
/// been told in the clear (which verifier to use, which client a request names).
fn unverified<T: serde::de::DeserializeOwned>(token: &str) -> Option<T> {
    crate::upstream::tokens::decode_part(token.split('.').nth(1)?)
}

/// A verification's result as most callers take it: the claims, `None` for a token that does not
/// verify, or the error when the keys could not be read (for the caller to answer, and log, as
/// an outage).
fn counted(verified: Result<AccessClaims, VerifyError>) -> Result<Option<AccessClaims>, VerifyError> {
    match verified {
        Ok(claims) => Ok(Some(claims)),
        Err(error @ VerifyError::Keys(_)) => Err(error),
        Err(_) => Ok(None),
    }
}

/// Whether a refresh token first used at `used_at` can no longer be used: it was, and not after
/// `reusable_after` (the start of the reuse interval; `None`: no reuse).
fn spent(used_at: Option<DateTime<Utc>>, reusable_after: Option<DateTime<Utc>>) -> bool {
    used_at.is_some_and(|at| reusable_after.is_none_or(|after| at <= after))
}

impl OpenIdProvider {
    /// The start of the interval in which a rotated refresh token may be used again
    /// (`oidc.refresh_token_reuse_seconds` before `now`); `None` when it may not.
    fn refresh_reusable_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (!self.refresh_token_reuse.is_zero()).then(|| now - delta(self.refresh_token_reuse))
    }

    /// Answers a token request from a client with `creds`.
    /// `x_request_id` (the HTTP request's id) goes in the audit row of a grant a replay revokes.
    pub async fn token(
        &self,
        creds: &ClientCredentials,
        form: TokenForm,
        x_request_id: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let Some(grant_type) = form.grant_type.as_deref() else {
            return Err(OAuthError::invalid_request("grant_type is missing"));
        };
        let Ok(grant) = grant_type.parse::<GrantType>() else {
            return Err(OAuthError::unsupported_grant_type(
                "grant_type must be authorization_code, refresh_token, client_credentials or \
                 urn:ietf:params:oauth:grant-type:token-exchange",
            ));
        };
        let client = self.authenticate(creds, "/oauth/token").await?;
        if !client.allows(grant) {
            return Err(OAuthError::unauthorized_client(format!("this client may not use {}", grant.as_str())));
        }
        // Some libraries send `audience` where RFC 8707 says `resource`: dropped, it would get a
        // token for another audience than the one asked for.
        if form.audience.is_some() && grant != GrantType::TokenExchange {
            return Err(OAuthError::invalid_target("audience is for token exchange; name the API with resource"));
        }
        match grant {
            GrantType::AuthorizationCode => self.exchange_code(&client, form, x_request_id).await,
            GrantType::RefreshToken => self.refresh(&client, form, x_request_id).await,
            GrantType::ClientCredentials => self.client_credentials(&client, form).await,
            GrantType::TokenExchange => self.exchange_token(&client, form).await,
        }
    }

    /// Authenticates a client at the token, introspection, revocation or PAR endpoint (`path`,
    /// e.g. `/oauth/par`). A client assertion may name the issuer, the token endpoint or the
    /// endpoint called as its audience (RFC 7523 section 3, RFC 9126 section 2).
    pub async fn authenticate(&self, creds: &ClientCredentials, path: &str) -> Result<Client, OAuthError> {
        let mut audiences = vec![self.endpoint("/oauth/token")];
        if path != "/oauth/token" {
            audiences.push(self.endpoint(path));
        }
        self.clients.authenticate(creds, &audiences).await.map_err(|e| OAuthError::from_client_auth(&e))
    }

    async fn exchange_code(
        &self,
        client: &Client,
        form: TokenForm,
        x_request_id: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let now = crate::domain::now();
        let code = required(&form.code, "code")?;
        let hash = sha256(code.as_bytes());
        let invalid =
            || OAuthError::invalid_grant("the code is invalid, expired, used, or was issued to another client");
        let Some((grant, stored)) = self.store.code_grant(&hash, self.grant_at(now)).await? else {
            return Err(invalid());
        };
        if grant.client_id != client.id.as_str() {
            return Err(invalid());
        }
        match form.redirect_uri.as_deref() {
            None => return Err(OAuthError::invalid_request("redirect_uri is missing")),
            Some(uri) if uri != stored.redirect_uri => {
                return Err(OAuthError::invalid_grant("redirect_uri differs from the authorization request's"));
            }
            Some(_) => {}
        }
        asks_granted_resource(&form, &grant)?;
        match (&stored.code_challenge, form.code_verifier.as_deref()) {
            (Some(challenge), Some(verifier)) => {
                if !is_pkce_verifier(verifier) || !constant_time_eq(s256(verifier).as_bytes(), challenge.as_bytes()) {
                    return Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge"));
                }
            }
            (Some(_), None) => return Err(OAuthError::invalid_grant("code_verifier is missing")),
            (None, Some(_)) => {
                return Err(OAuthError::invalid_grant(
                    "code_verifier was sent but the authorization request had no code_challenge",
                ));
            }
            (None, None) => {}
        }
        if stored.used {
            // A replay by whoever holds what redeemed it (the client, and the PKCE verifier where
            // there was one; a code alone, leaked after its use, revokes nothing): redeeming again
            // revokes the grant and every token it issued. A grant revoked already (by an earlier
            // replay, say) is not revoked again: a thief's loop writes nothing and logs nothing.
            if self.store.redeem_code(&hash, None, self.grant_at(now), x_request_id).await? == RedeemOutcome::Replayed {
                tracing::warn!(client_id = %client.id, "authorization code replayed; its grant is revoked");
            }
            return Err(invalid());
        }
        if !grant.active {
            return Err(invalid());
        }
        still_registered(client, &grant)?;
        // A redirect URI taken away (a compromised one, say) ends the codes sent there too.
        if client.redirect_uri(&stored.redirect_uri).is_none() {
            return Err(OAuthError::invalid_grant(
                "the redirect_uri is no longer registered for the client; authorize again",
            ));
        }
        let refresh = client.allows(GrantType::RefreshToken).then(random_secret);
        let refresh_hash = refresh.as_ref().map(|r| sha256(r.expose_secret().as_bytes()));
        // Everything that can fail comes first: once the code is used, a retry is a replay.
        let refresh_token = refresh.map(|r| r.expose_secret().to_owned());
        let response = self.mint(client, &grant, stored.nonce.as_deref(), refresh_token, now).await?;
        match self.store.redeem_code(&hash, refresh_hash.as_ref(), self.grant_at(now), x_request_id).await? {
            RedeemOutcome::Redeemed => Ok(response),
            RedeemOutcome::Replayed | RedeemOutcome::Invalid => Err(invalid()),
        }
    }

    async fn refresh(
        &self,
        client: &Client,
        form: TokenForm,
        x_request_id: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let now = crate::domain::now();
        let token = required(&form.refresh_token, "refresh_token")?;
        let hash = sha256(token.as_bytes());
        let invalid =
            || OAuthError::invalid_grant("the refresh token is invalid, expired, revoked or was already used");
        let Some((mut grant, used_at)) = self.store.refresh_grant(&hash, self.grant_at(now)).await? else {
            return Err(invalid());
        };
        if grant.client_id != client.id.as_str() {
            return Err(invalid());
        }
        let reusable_after = self.refresh_reusable_after(now);
        // A rotated token presented again: its grant is revoked, whatever else this request asks
        // or gets wrong (the rotation below, to a token nobody holds, finds the reuse). One
        // revoked already (by an earlier reuse, say) is not revoked again: a thief's loop writes
        // nothing and logs nothing.
        if spent(used_at, reusable_after) {
            let nobody = sha256(random_secret().expose_secret().as_bytes());
            if self.store.rotate_refresh_token(&hash, &nobody, self.grant_at(now), reusable_after, x_request_id).await?
                == RotateOutcome::Reused
            {
                tracing::warn!(client_id = %client.id, "rotated refresh token reused; its grant is revoked");
            }
            return Err(invalid());
        }
        // A grant that ended (revoked, its browser session over): refused before anything is
        // read, signed or locked for it — apps retry such refreshes at every page load.
        if !grant.active {
            return Err(invalid());
        }
        asks_granted_resource(&form, &grant)?;
        still_registered(client, &grant)?;
        // `offline_access` from a client not registered for it is ignored, as at authorization:
        // libraries send the scope they were configured with again (Authlib does), and the
        // grant it was left out of stays bound to its session. So is it for a grant made
        // without it (before the client was registered for it, say): a refresh cannot make a
        // grant offline. Likewise any other scope the grant was not given (RFC 6749 6: a refresh
        // never widens): authorization left it out (a stock list's `groups`, say), and an app
        // that resends its list must go on refreshing, also once the scope is registered for the
        // client. One granted but taken from the client since is refused below. Nothing left:
        // refused.
        let granted = split_scope(&grant.scope);
        let keeps_offline = client.may_go_offline() && granted.iter().any(|s| s == OFFLINE_ACCESS);
        if let Some(sent) = asked_scope(&form)? {
            let asked: Vec<String> = sent
                .iter()
                .filter(|s| (keeps_offline || *s != OFFLINE_ACCESS) && granted.contains(s))
                .cloned()
                .collect();
            if asked.is_empty() {
                return Err(OAuthError::invalid_scope(if sent.iter().any(|s| s != OFFLINE_ACCESS) {
                    "none of the requested scopes was granted"
                } else if client.may_go_offline() {
                    "offline_access alone, which this grant was not given"
                } else {
                    super::provider::OFFLINE_ACCESS_ALONE
                }));
            }
            if asked.iter().any(|s| !client.scopes.contains(s)) {
                return Err(OAuthError::invalid_scope("a requested scope is no longer allowed for this client"));
            }
            grant.scope = asked.join(" ");
        }
        // Everything that can fail comes first: once the token is rotated, a retry is a reuse.
        let new = random_secret();
        let response = self.mint(client, &grant, None, Some(new.expose_secret().to_owned()), now).await?;
        match self
            .store
            .rotate_refresh_token(
                &hash,
                &sha256(new.expose_secret().as_bytes()),
                self.grant_at(now),
                reusable_after,
                x_request_id,
            )
            .await?
        {
            RotateOutcome::Rotated => {
                // The app is in use: so is the browser session its grant is bound to, which
                // would otherwise go idle (and end the grant) while the person works in the app
                // without visiting Tessera. Written off the request's path, as any session use,
                // but at once: the refresh may come at the idle limit (the grant's next refresh,
                // on another instance, must not find the session idle), and refreshes are rare.
                if let (Some(session), Some(last_seen)) = (grant.session_hash, &self.last_seen) {
                    last_seen.session_now(session, now);
                }
                Ok(response)
            }
            RotateOutcome::Reused => {
                tracing::warn!(client_id = %client.id, "rotated refresh token reused; its grant is revoked");
                Err(invalid())
            }
            RotateOutcome::Invalid => Err(invalid()),
        }
    }

    async fn client_credentials(&self, client: &Client, form: TokenForm) -> Result<TokenResponse, OAuthError> {
        if client.is_public() {
            return Err(OAuthError::unauthorized_client("a public client cannot use client_credentials"));
        }
        let allowed: Vec<&String> = client.scopes.iter().filter(|s| !USER_SCOPES.contains(&s.as_str())).collect();
        let scopes = match asked_scope(&form)? {
            Some(asked) => {
                if asked.iter().any(|s| !allowed.contains(&s)) {
                    return Err(OAuthError::invalid_scope(
                        "a requested scope is not allowed for this client with client_credentials",
                    ));
                }
                asked
            }
            None => allowed.into_iter().cloned().collect(),
        };
        let aud = match form.resource.as_deref() {
            Some(resource) => registered_target(client, resource)?,
            None => client.id.to_string(),
        };
        let now = crate::domain::now();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: client.id.to_string(),
            aud,
            exp: (now + delta(client.access_token_ttl)).timestamp(),
            iat: now.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: client.id.to_string(),
            scope: scopes.join(" "),
            auth_time: None,
            gid: None,
            email: None,
            email_verified: None,
            teams: None,
            client_registered_us: Some(client.created_at.timestamp_micros()),
            act: None,
        };
        let access_token = self.sign_access(client, &claims).await?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: client.access_token_ttl.as_secs(),
            refresh_token: None,
            id_token: None,
            scope: claims.scope,
            issued_token_type: None,
        })
    }

    /// Mints the access token (and id token, for `openid`) of a grant (see [`still_registered`]),
    /// with the scopes of the grant the client is still registered for.
    async fn mint(
        &self,
        client: &Client,
        grant: &GrantRecord,
        nonce: Option<&str>,
        refresh_token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, OAuthError> {
        let scopes = registered_scopes(client, &grant.scope);
        if scopes.is_empty() {
            return Err(no_scope_left());
        }
        let scope = scopes.join(" ");
        let profile = self.store.user_profile(grant.user_id, ReadFrom::Primary).await?;
        let Some(profile) = profile.filter(|p| !p.user.disabled) else {
            return Err(OAuthError::invalid_grant("the user is disabled or gone"));
        };
        let user = user_claims(&profile, &scopes);
        let claims = self.user_access_claims(client, grant, &user, scope, now);
        let access_token = self.sign_access(client, &claims).await?;
        let id_token = if scopes.iter().any(|s| s == "openid") {
            let id = IdClaims {
                iss: &self.issuer,
                aud: client.id.as_str(),
                azp: client.id.as_str(),
                exp: (now + delta(self.id_token_ttl)).timestamp(),
                iat: now.timestamp(),
                auth_time: grant.auth_time.timestamp(),
                nonce,
                amr: ["fed"],
                idp: grant.provider.as_deref(),
                user: &user,
            };
            Some(
                self.keys
                    .sign(client.signing_alg, super::tokens::ID_TOKEN_TYP, &id)
                    .await
                    .map_err(|e| OAuthError::from_failure(&e, "signing an id token"))?,
            )
        } else {
            None
        };
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: u64::try_from(claims.exp - now.timestamp()).unwrap_or(0),
            refresh_token,
            id_token,
            scope: claims.scope,
            issued_token_type: None,
        })
    }

    /// The claims of the access token `client` gets from `grant`, its user's `user` claims by
    /// `scope`: for the grant's resource (or the client), lasting the client's access-token
    /// lifetime but never past the grant's own end — a resource server that verifies it locally,
    /// without asking about the grant, must not take it for longer than the grant lasts.
    pub(super) fn user_access_claims(
        &self,
        client: &Client,
        grant: &GrantRecord,
        user: &UserClaims,
        scope: String,
        now: DateTime<Utc>,
    ) -> AccessClaims {
        AccessClaims {
            iss: self.issuer.clone(),
            sub: grant.user_id.to_string(),
            aud: grant.resource.clone().unwrap_or_else(|| client.id.to_string()),
            exp: (now + delta(client.access_token_ttl)).min(grant.expires_at).timestamp(),
            iat: now.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: client.id.to_string(),
            scope,
            auth_time: Some(grant.auth_time.timestamp()),
            gid: Some(grant.id),
            email: user.email.clone(),
            email_verified: user.email_verified,
            teams: user.teams.as_ref().map(|teams| teams.iter().map(|t| t.slug.clone()).collect()),
            client_registered_us: None,
            act: None,
        }
    }

    pub(super) async fn sign_access(&self, client: &Client, claims: &AccessClaims) -> Result<String, OAuthError> {
        let token = self
            .keys
            .sign(client.signing_alg, ACCESS_TOKEN_TYP, claims)
            .await
            .map_err(|e| OAuthError::from_failure(&e, "signing an access token"))?;
        // Never one that Tessera itself (userinfo, introspection, revocation, `/v1/validate`)
        // would refuse as too long.
        if token.len() > MAX_ACCESS_TOKEN_BYTES {
            return Err(OAuthError::invalid_request(
                "the access token would be too long (the user's teams, or the scopes): ask for fewer scopes",
            ));
        }
        Ok(token)
    }

    /// Verifies one of Tessera's access tokens locally: signature, `typ`, issuer, expiry. Says
    /// nothing of its grant (see [`OpenIdProvider::access_grant_active`]). `None` for a token
    /// that does not verify; an error (only [`VerifyError::Keys`]) when the signing keys could
    /// not be read to tell: the token may well be one of ours, which must not be answered as
    /// refused (an outage, 503).
    pub async fn verify_access(&self, token: &str) -> Result<Option<AccessClaims>, VerifyError> {
        counted(self.verify_access_token(token).await)
    }

    /// Whether `token` claims to be one of this provider's (its unverified `iss` is this
    /// issuer): which verifier to use, never a verification.
    pub fn issued(&self, token: &str) -> bool {
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        unverified::<Iss>(token).is_some_and(|c| c.iss.as_deref() == Some(self.issuer.as_str()))
    }

    /// Verifies one of Tessera's access tokens locally, saying why it was refused. Tessera's own
    /// token, on Tessera's own clock: no leeway past its `exp` (the verification's leeway is for
    /// `nbf`), wherever it is presented — `/v1`, `/mcp`, forward-auth, userinfo, introspection.
    pub async fn verify_access_token(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        if token.len() > MAX_ACCESS_TOKEN_BYTES {
            return Err(VerifyError::Malformed("the token is too long"));
        }
        let claims = self.keys.verify::<AccessClaims>(token, ACCESS_TOKEN_TYP, &self.issuer).await?;
        if claims.exp <= crate::domain::now().timestamp() {
            return Err(VerifyError::Expired);
        }
        Ok(claims)
    }

    /// The grant of a verified access token with a user (`None` for `client_credentials`
    /// tokens, or when the grant is gone). The grant must be the token's own (its user, and its
    /// client — for a token got by exchange, the first actor's): a token minted with a leaked
    /// key cannot borrow a real grant's id to pass for another user or client.
    ///
    /// A token got by exchange counts besides only while the client that exchanged it is still
    /// registered for that (the same registration, the grant type, the token's audience among its
    /// resources), and every client before it in the chain still exists and may exchange.
    pub async fn access_grant(&self, claims: &AccessClaims) -> Result<Option<GrantRecord>, StoreError> {
        let Some(gid) = claims.gid else { return Ok(None) };
        if let Some(act) = &claims.act {
            let exchanger = self.clients.get(&claims.client_id).await?;
            if act.sub != claims.client_id || !exchanger.is_some_and(|client| exchanged_token_counts(claims, &client)) {
                return Ok(None);
            }
            // The clients between it and the app the user authorized (the innermost actor).
            let mut prior = act.act.as_deref();
            while let Some(actor) = prior.filter(|actor| actor.act.is_some()) {
                let client = self.clients.get(&actor.sub).await?;
                if !client.is_some_and(|client| client.allows(GrantType::TokenExchange)) {
                    return Ok(None);
                }
                prior = actor.act.as_deref();
            }
        }
        let grant = self.store.grant(gid, self.grant_at(crate::domain::now())).await?;
        Ok(grant.filter(|g| g.client_id == claims.granted_client() && g.user_id.to_string() == claims.sub))
    }

    /// Whether a verified access token's grant (or, without one, its client) still counts.
    pub async fn access_grant_active(&self, claims: &AccessClaims) -> Result<bool, OAuthError> {
        match claims.gid {
            Some(_) => Ok(self.access_grant(claims).await?.is_some_and(|g| g.active)),
            // A client_credentials token counts while its client is registered (the same one).
            None => {
                Ok(self.clients.get(&claims.client_id).await?.is_some_and(|client| own_token_counts(claims, &client)))
            }
        }
    }

    /// What `token` is: an active access token of this issuer's, a refresh token (whatever its
    /// state), or nothing known. With `expired_too`, an access token past its `exp` is named too
    /// (for revocation: its grant may well outlive it).
    async fn named(&self, token: &str, expired_too: bool) -> Result<Named, OAuthError> {
        if token.is_empty() || token.len() > MAX_ACCESS_TOKEN_BYTES {
            return Ok(Named::Unknown);
        }
        if token.contains('.') {
            let verified = if expired_too {
                self.keys.verify_ignoring_expiry::<AccessClaims>(token, ACCESS_TOKEN_TYP, &self.issuer).await
            } else {
                self.verify_access_token(token).await
            };
            // Keys that could not be read: a revocation must not answer as done (RFC 7009
            // 2.2.1), nor introspection call inactive, what may well be one of ours.
            return counted(verified)
                .map(|claims| claims.map_or(Named::Unknown, Named::Access))
                .map_err(|error| OAuthError::from_failure(&error, "reading the signing keys to verify a token"));
        }
        let now = crate::domain::now();
        Ok(match self.store.refresh_grant(&sha256(token.as_bytes()), self.grant_at(now)).await? {
            Some((grant, used_at)) => Named::Refresh(grant, used_at),
            None => Named::Unknown,
        })
    }

    /// RFC 7662: what `token` is, for an authenticated confidential client. Every token that
    /// does not count — garbage, expired (past its `exp`, without the verification leeway),
    /// revoked, another issuer's — is `{"active": false}`. So is a token the client may not
    /// learn about (section 4): an access token is shown to the client it was issued to and to
    /// the resource server it was issued for (a client whose id is its `aud`, or that registered
    /// its `aud` among its `resources`, unless that is Tessera's own API or MCP server, which
    /// read their tokens themselves); a refresh token only to the client that holds it.
    pub async fn introspect(&self, client: &Client, token: &str) -> Result<serde_json::Value, OAuthError> {
        let inactive = serde_json::json!({ "active": false });
        match self.named(token, false).await? {
            Named::Access(claims) => {
                // Tessera's own API and MCP server are their own resource servers: a client that
                // registered them to ask for tokens is no resource server of another's token.
                let resource_server = client.is_audience(&claims.aud) && self.tessera_resource(&claims.aud).is_none();
                if claims.client_id != client.id.as_str() && !resource_server {
                    return Ok(inactive);
                }
                if !self.access_grant_active(&claims).await? {
                    return Ok(inactive);
                }
                let mut out = serde_json::to_value(&claims).map_err(|_| OAuthError::server_error())?;
                if let Some(map) = out.as_object_mut() {
                    map.insert("active".into(), true.into());
                    map.insert("token_type".into(), "Bearer".into());
                    map.remove("gid");
                    map.remove("client_registered_us");
                }
                Ok(out)
            }
            Named::Refresh(grant, used_at)
                if !spent(used_at, self.refresh_reusable_after(crate::domain::now()))
                    && grant.active
                    && grant.client_id == client.id.as_str()
                    // A client no longer allowed to refresh cannot use it: not active.
                    && client.allows(GrantType::RefreshToken)
                    && still_registered(client, &grant).is_ok() =>
            {
                // No `token_type`: RFC 7662 means a type of RFC 6749 section 7.1 (`Bearer`),
                // which a refresh token does not have.
                Ok(serde_json::json!({
                    "active": true,
                    "client_id": grant.client_id,
                    "sub": grant.user_id.to_string(),
                    "scope": registered_scopes(client, &grant.scope).join(" "),
                    // A rotated token still usable is so until the end of its reuse interval.
                    "exp": used_at.map_or(grant.expires_at, |at| grant.expires_at.min(at + delta(self.refresh_token_reuse))).timestamp(),
                    "iss": self.issuer,
                }))
            }
            Named::Refresh(..) | Named::Unknown => Ok(inactive),
        }
    }

    /// RFC 7009: revokes the grant behind `token` when it was issued to `client`; answers the
    /// same whether or not there was anything to revoke. A `client_credentials` access token of
    /// the client's own has no grant: it is refused with `unsupported_token_type` (section
    /// 2.2.1) rather than reported revoked, since it keeps counting until it expires.
    pub async fn revoke(&self, client: &Client, token: &str) -> Result<(), OAuthError> {
        let now = crate::domain::now();
        // An expired access token still names its grant: a client signing out with the last one
        // it holds ends the grant (and its refresh token) rather than nothing.
        let grant = match self.named(token, true).await? {
            // (An expired one counts no more: nothing to refuse.)
            // One of a previous registration of the client's id counts nowhere: nothing to
            // refuse (RFC 7009 2.2 answers an invalid token with 200).
            // (The client just authenticated is the one registered under its id now.)
            Named::Access(claims)
                if claims.client_id == client.id.as_str()
                    && claims.gid.is_none()
                    && claims.exp > now.timestamp()
                    && own_token_counts(&claims, client) =>
            {
                return Err(OAuthError::unsupported_token_type(
                    "a client_credentials access token cannot be revoked: it counts until its `exp`",
                ));
            }
            // A token got by exchange belongs to the grant of the client the user authorized:
            // the client that exchanged it does not end that grant (the user's sign-out, the
            // app's revocation, the user's removal of the app do), expired or not — an expired one
            // counts no more, nothing to refuse.
            Named::Access(claims) if claims.act.is_some() => {
                // (One that counts nowhere any more — its grant ended, its client registered
                // again — has nothing to refuse either.)
                if claims.client_id == client.id.as_str()
                    && claims.exp > now.timestamp()
                    && self.access_grant_active(&claims).await?
                {
                    return Err(OAuthError::unsupported_token_type(
                        "a token got by token exchange cannot be revoked: it counts until its `exp`, or until \
                         the grant it was exchanged from ends",
                    ));
                }
                None
            }
            // A public client's id is no secret and is in every access token of its, which every
            // resource server sees: such a token does not end an offline grant (section 2.2 lets
            // the server decline), so that a resource server cannot cut off an agent's standing
            // access; the client ends that with its refresh token. (A grant bound to the browser
            // session, which a sign-in gives again, it does end: an app's sign-out.) It is the
            // grant's scope that says offline, not the token's: a refresh may have narrowed that.
            // The grant read as every use of the token reads it, the token's own (its client and
            // user): a `gid` alone, in a token signed by a key that leaked, ends nobody else's.
            Named::Access(claims) if claims.client_id == client.id.as_str() => {
                let grant = self.access_grant(&claims).await?;
                match grant {
                    Some(grant) if client.is_public() => {
                        (!split_scope(&grant.scope).iter().any(|s| s == OFFLINE_ACCESS)).then_some(grant.id)
                    }
                    grant => grant.map(|grant| grant.id),
                }
            }
            Named::Refresh(grant, _) if grant.client_id == client.id.as_str() => Some(grant.id),
            _ => None,
        };
        if let Some(grant) = grant
            && self.store.revoke_grant(grant, now).await?
        {
            tracing::info!(client_id = %client.id, "grant revoked");
        }
        Ok(())
    }

    /// Userinfo: the claims of an active access token's user, by its scopes.
    pub async fn userinfo(&self, token: &str) -> Result<UserInfoAnswer, OAuthError> {
        let verified = self.verify_access(token).await;
        let verified =
            verified.map_err(|error| OAuthError::from_failure(&error, "reading the signing keys for userinfo"))?;
        let Some(claims) = verified else {
            return Ok(UserInfoAnswer::Inactive);
        };
        if claims.gid.is_none() || !self.access_grant_active(&claims).await? {
            return Ok(UserInfoAnswer::Inactive);
        }
        let scopes = split_scope(&claims.scope);
        if !scopes.iter().any(|s| s == "openid") {
            return Ok(UserInfoAnswer::WithoutOpenid);
        }
        let Ok(user) = claims.sub.parse::<uuid::Uuid>() else { return Ok(UserInfoAnswer::Inactive) };
        let profile = self.store.user_profile(UserId::from_uuid(user), ReadFrom::Primary).await?;
        Ok(match profile.filter(|p| !p.user.disabled) {
            Some(profile) => UserInfoAnswer::Claims(user_claims(&profile, &scopes)),
            None => UserInfoAnswer::Inactive,
        })
    }

    /// What an `id_token_hint` is: one of Tessera's id tokens, verified (its client `aud`, its
    /// user `sub`, and `auth_time`, the session's start), or one whose key is no longer published
    /// (an id token kept since before a rotation and the day its key stayed published, while the
    /// session it was issued in lives on), which cannot be verified either way, or none of
    /// Tessera's; an error when the keys could not be read (the token may well be one).
    pub async fn check_id_token_hint(&self, id_token: &str) -> Result<HintCheck, SigningError> {
        match self.keys.verify_ignoring_expiry::<IdTokenHint>(id_token, ID_TOKEN_TYP, &self.issuer).await {
            Ok(hint) => Ok(HintCheck::Verified(hint)),
            Err(VerifyError::Keys(error)) => Err(error),
            Err(VerifyError::UnknownKey) => {
                #[derive(Deserialize)]
                struct Claims {
                    iss: Option<String>,
                    aud: Option<String>,
                }
                // Another issuer's token (an upstream provider's id token) names a key Tessera
                // never published too: only one that says it is Tessera's counts as a gone key.
                Ok(match unverified::<Claims>(id_token) {
                    Some(Claims { iss: Some(iss), aud }) if iss == self.issuer => HintCheck::KeyGone { aud },
                    _ => HintCheck::NotOurs,
                })
            }
            Err(_) => Ok(HintCheck::NotOurs),
        }
    }
}

/// What [`OpenIdProvider::check_id_token_hint`] found.
#[derive(Debug, Clone)]
pub enum HintCheck {
    /// One of Tessera's id tokens, its signature verified (its expiry is not checked).
    Verified(IdTokenHint),
    /// It names a key Tessera does not publish (any more): it cannot be verified. `aud` is the
    /// client it says it was issued to, unverified: good for no more than a bare `client_id`
    /// (whose registered logout URIs to match), never for who the user is.
    KeyGone {
        /// The unverified `aud`.
        aud: Option<String>,
    },
    /// Not one of Tessera's id tokens.
    NotOurs,
}

/// What RP-initiated logout reads from an `id_token_hint`.
#[derive(Debug, Clone, Deserialize)]
pub struct IdTokenHint {
    /// The client it was issued to.
    pub aud: String,
    /// The user.
    pub sub: String,
    /// When the user signed in: the start of the session it was issued in.
    pub auth_time: Option<i64>,
}

/// The claims `scopes` release about a user.
pub fn user_claims(profile: &UserProfile, scopes: &[String]) -> UserClaims {
    let has = |s: &str| scopes.iter().any(|x| x == s);
    let user = &profile.user;
    UserClaims {
        sub: user.id.to_string(),
        email: has("email").then(|| user.email.clone()).flatten(),
        email_verified: (has("email") && user.email.is_some()).then_some(user.email_verified),
        name: has("profile").then(|| user.name.clone()).flatten(),
        teams: has("teams").then(|| {
            profile
                .teams
                .iter()
                .map(|m| TeamClaim { id: m.team.id.to_string(), slug: m.team.slug.to_string(), role: m.role.as_str() })
                .collect()
        }),
    }
}

/// Whether `client`, as registered now, still covers `grant`: an admin who narrows a client
/// narrows what its standing grants issue from then on. A grant for a resource the client no
/// longer lists, or an offline grant (one that outlives the session) of a client that no longer
/// has `offline_access`, or one left with none of its scopes, issues nothing more; scopes taken
/// away are left out of its tokens (see [`registered_scopes`]).
fn still_registered(client: &Client, grant: &GrantRecord) -> Result<(), OAuthError> {
    if registered_scopes(client, &grant.scope).is_empty() {
        return Err(no_scope_left());
    }
    let offline = split_scope(&grant.scope).iter().any(|s| s == OFFLINE_ACCESS);
    if grant.resource.as_ref().is_some_and(|r| !client.has_resource(r))
        || (offline && !client.scopes.iter().any(|s| s == OFFLINE_ACCESS))
    {
        return Err(OAuthError::invalid_grant(
            "the client is no longer registered for this grant's resource or offline access; authorize again",
        ));
    }
    Ok(())
}

fn no_scope_left() -> OAuthError {
    OAuthError::invalid_grant("the client is no longer registered for any of this grant's scopes; authorize again")
}

/// The scopes of `scope` that `client` is still registered for.
pub(super) fn registered_scopes(client: &Client, scope: &str) -> Vec<String> {
    split_scope(scope).into_iter().filter(|s| client.scopes.contains(s)).collect()
}

/// `resource`, when `client` registered it (RFC 8707); else `invalid_target`.
pub(super) fn registered_target(client: &Client, resource: &str) -> Result<String, OAuthError> {
    match client.registered_resource(resource) {
        Some(registered) => Ok(registered.to_owned()),
        None => Err(OAuthError::invalid_target("resource is not one of the client's registered resources")),
    }
}

/// RFC 8707 section 2.2: a code or refresh token yields tokens for the resource it was granted
/// for; asking for another is `invalid_target`, not a token whose audience the caller did not ask.
fn asks_granted_resource(form: &TokenForm, grant: &GrantRecord) -> Result<(), OAuthError> {
    match form.resource.as_deref() {
        Some(asked) if !grant.resource.as_deref().is_some_and(|granted| same_resource(granted, asked)) => {
            Err(OAuthError::invalid_target(
                "resource differs from the one authorized; another resource needs a new authorization",
            ))
        }
        _ => Ok(()),
    }
}

/// The scopes a refresh, `client_credentials` or token-exchange request asks for, when it names `scope`: one
/// longer than the authorization endpoint takes is `invalid_request` (before it is split), one
/// that names no scope `invalid_scope`, as there.
pub(super) fn asked_scope(form: &TokenForm) -> Result<Option<Vec<String>>, OAuthError> {
    let Some(scope) = form.scope.as_deref() else { return Ok(None) };
    if scope.len() > MAX_PARAM_LEN {
        return Err(OAuthError::invalid_request(format!("scope is longer than {MAX_PARAM_LEN} characters")));
    }
    let asked = split_scope(scope);
    if asked.is_empty() {
        return Err(OAuthError::invalid_scope("scope is empty"));
    }
    Ok(Some(asked))
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, OAuthError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() && v.len() <= MAX_PARAM_LEN => Ok(v),
        Some(v) if !v.is_empty() => Err(OAuthError::invalid_request(format!("{name} is too long"))),
        _ => Err(OAuthError::invalid_request(format!("{name} is missing"))),
    }
}

/// RFC 7636 4.1: 43 to 128 unreserved characters.
fn is_pkce_verifier(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The S256 challenge of a verifier.
fn s256(verifier: &str) -> String {
    crate::crypto::sha256_base64url(verifier.as_bytes())
}

/// Parameters of a form that may not repeat (RFC 6749 3.1: "Request and response parameters
/// MUST NOT be included more than once").
pub fn single_valued(pairs: &[(String, String)]) -> Result<BTreeMap<&str, &str>, OAuthError> {
    if let Some(name) = repeated_parameter(pairs) {
        return Err(repeated(name));
    }
    Ok(pairs.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect())
}

/// The first of the protocol's parameters that `pairs` sends more than once. A parameter of
/// no protocol Tessera speaks is ignored, repeated or not (RFC 6749 3.1: "MUST ignore
/// unrecognized request parameters"; a tracker's `utm_x=1&utm_x=2` is no error).
pub fn repeated_parameter(pairs: &[(String, String)]) -> Option<&str> {
    let mut seen = std::collections::BTreeSet::new();
    pairs
        .iter()
        .map(|(key, _)| key.as_str())
        .filter(|key| PROTOCOL_PARAMETERS.contains(key))
        .find(|key| !seen.insert(*key))
}

/// The parameters of the protocols Tessera's OAuth endpoints speak (RFC 6749, 7009, 7523, 7636,
/// 7662, 8693, 8707, 9126, 9207, OpenID Connect Core and RP-Initiated Logout), and of its consent
/// form: each may be sent once.
const PROTOCOL_PARAMETERS: [&str; 40] = [
    "response_type",
    "response_mode",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "prompt",
    "max_age",
    "login_hint",
    "id_token_hint",
    "ui_locales",
    "display",
    "acr_values",
    "claims",
    "request",
    "request_uri",
    "registration",
    "code_challenge",
    "code_challenge_method",
    "grant_type",
    "code",
    "code_verifier",
    "refresh_token",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "token",
    "token_type_hint",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "audience",
    "requested_token_type",
    "post_logout_redirect_uri",
    "iss",
    "resource",
    // Tessera's consent form.
    "request_id",
    "decision",
];

/// The error for parameter `name` sent more than once: RFC 8707 lets a client ask for several
/// resources, which Tessera does not grant in one token (`invalid_target`); any other of the
/// protocol's parameters may appear once only (`invalid_request`). Only a parameter of the
/// protocol's is named: the description goes to the client's redirect URI, where another's text
/// (a phisher's "sign in at …") must not appear.
pub fn repeated(name: &str) -> OAuthError {
    if name == "resource" || name == "audience" {
        OAuthError::invalid_target("ask for one resource per request; a token here is for a single resource")
    } else if PROTOCOL_PARAMETERS.contains(&name) {
        OAuthError::invalid_request(format!("parameter {name} is repeated"))
    } else {
        OAuthError::invalid_request("a parameter is repeated")
    }
}

/// Whether a `client_credentials` access token (one without a grant) of `client`'s id still
/// counts for `client`, the one registered under that id now: it counts while the same
/// registration stands — a client deleted and registered again under its id (after a
/// compromise, say) does not bring the old one's tokens back — and may still use that grant type.
fn own_token_counts(claims: &AccessClaims, client: &Client) -> bool {
    same_registration(claims, client) && client.allows(GrantType::ClientCredentials)
}

/// Whether a token `client` got by exchange still counts for it, as registered now: the same
/// registration, still allowed token exchange and the token's audience.
fn exchanged_token_counts(claims: &AccessClaims, client: &Client) -> bool {
    claims.client_registered_us.is_some()
        && same_registration(claims, client)
        && client.allows(GrantType::TokenExchange)
        && client.has_resource(&claims.aud)
}

/// Whether `claims` were issued to the registration of `client`'s id that stands now.
fn same_registration(claims: &AccessClaims, client: &Client) -> bool {
    match claims.client_registered_us {
        Some(registered) => registered == client.created_at.timestamp_micros(),
        // Minted before tokens carried it: registered no later than it was issued.
        None => claims.iat >= client.created_at.timestamp(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms_and_responses_hide_their_secrets_in_debug() {
        let form = TokenForm {
            grant_type: Some("authorization_code".into()),
            code: Some("code-secret".into()),
            code_verifier: Some("verifier-secret".into()),
            refresh_token: Some("refresh-secret".into()),
            ..TokenForm::default()
        };
        let response = TokenResponse {
            access_token: "access-secret".into(),
            token_type: "Bearer",
            expires_in: 60,
            refresh_token: Some("refresh-secret".into()),
            id_token: Some("id-secret".into()),
            scope: "openid".into(),
            issued_token_type: None,
        };
        for debug in [format!("{form:?}"), format!("{response:?}")] {
            assert!(!debug.contains("-secret") && debug.contains("[REDACTED]"), "{debug}");
        }
        assert!(format!("{form:?}").contains("authorization_code"), "the rest is shown");
    }

    #[test]
    fn s256_is_the_base64url_sha256_of_the_verifier() {
        // Computed independently: base64.urlsafe_b64encode(hashlib.sha256(v).digest()) in Python.
        assert_eq!(s256("dBjftJeZ4CVP-mB92K27uhbUJU2p1r-wW1gFWFOEjXk"), "ds6m7b3BphPhC5KVSTwj-8sjyMhumHpOHDawE-oZNgQ");
        assert!(is_pkce_verifier("dBjftJeZ4CVP-mB92K27uhbUJU2p1r-wW1gFWFOEjXk"));
        assert!(!is_pkce_verifier("too-short"));
        assert!(!is_pkce_verifier(&"a+".repeat(30)));
    }

    #[test]
    fn only_the_protocols_parameters_are_named_when_repeated() {
        assert_eq!(repeated("state").description, "parameter state is repeated");
        assert_eq!(repeated("Session expired, sign in at evil.example").description, "a parameter is repeated");
        assert_eq!(repeated("resource").error, "invalid_target");
    }

    #[test]
    fn repeated_parameters_are_refused() {
        let pairs = vec![("code".to_owned(), "a".to_owned()), ("code".to_owned(), "b".to_owned())];
        assert_eq!(single_valued(&pairs).unwrap_err().error, "invalid_request");
        let resources = vec![("resource".to_owned(), "a".to_owned()), ("resource".to_owned(), "b".to_owned())];
        assert_eq!(single_valued(&resources).unwrap_err().error, "invalid_target");
    }

    #[test]
    fn repeated_unknown_parameters_are_ignored() {
        let pairs: Vec<(String, String)> = [("utm_x", "1"), ("code", "c"), ("utm_x", "2")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(repeated_parameter(&pairs), None);
        assert_eq!(single_valued(&pairs).unwrap()["code"], "c");
    }

    #[test]
    fn a_used_refresh_token_is_spent_unless_first_used_within_the_reuse_interval() {
        let now = crate::domain::now();
        let after = Some(now - chrono::Duration::seconds(10));
        assert!(!spent(None, None), "never used");
        assert!(!spent(None, after));
        assert!(spent(Some(now), None), "no interval: any use spends it");
        assert!(!spent(Some(now - chrono::Duration::seconds(9)), after));
        assert!(spent(Some(now - chrono::Duration::seconds(10)), after), "the interval's start is outside it");
        assert!(spent(Some(now - chrono::Duration::seconds(11)), after));
    }
}
