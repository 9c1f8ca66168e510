//! Auth profiles (connected accounts): `/v1/teams/{team}/auth-profiles`.

use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{AuthProfile, ProfileKind, ProfileStatus};
use crate::service::auth_profiles::{AccessToken, ConnectLink, Created};
use crate::service::profile_actions::{ConnectorCredential, CredentialSource, TestOutcome, Updated};

/// What kind of credentials an auth profile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthProfileKind {
    /// One member's own account at the provider, connected through OAuth.
    OauthAccount,
    /// A team-wide account connected through OAuth.
    OauthApp,
    /// Credentials supplied through the environment.
    Env,
    /// Credentials entered interactively.
    Interactive,
    /// A browser session.
    BrowserSession,
}

impl From<ProfileKind> for AuthProfileKind {
    fn from(kind: ProfileKind) -> Self {
        match kind {
            ProfileKind::OauthAccount => AuthProfileKind::OauthAccount,
            ProfileKind::OauthApp => AuthProfileKind::OauthApp,
            ProfileKind::Env => AuthProfileKind::Env,
            ProfileKind::Interactive => AuthProfileKind::Interactive,
            ProfileKind::BrowserSession => AuthProfileKind::BrowserSession,
        }
    }
}

/// Where an auth profile is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthProfileStatus {
    /// Waiting for its OAuth flow to complete.
    PendingAuth,
    /// Usable.
    Active,
    /// The provider refused the refresh token: the profile must be connected again.
    NeedsReauth,
    /// Revoked; its slug is free again.
    Revoked,
}

impl From<ProfileStatus> for AuthProfileStatus {
    fn from(status: ProfileStatus) -> Self {
        match status {
            ProfileStatus::PendingAuth => AuthProfileStatus::PendingAuth,
            ProfileStatus::Active => AuthProfileStatus::Active,
            ProfileStatus::NeedsReauth => AuthProfileStatus::NeedsReauth,
            ProfileStatus::Revoked => AuthProfileStatus::Revoked,
        }
    }
}

/// An auth profile (a connected account), without its secrets: the body of
/// `GET /v1/teams/{team}/auth-profiles/{slug}`.
#[derive(Debug, Serialize)]
pub struct AuthProfileResponse {
    /// The profile's id.
    pub id: Uuid,
    /// The team it belongs to.
    pub team_id: Uuid,
    /// Its handle, unique among the team's live profiles.
    pub slug: String,
    /// The connector that uses it, e.g. `github-issues`.
    pub connector_key: String,
    /// What kind of credentials it holds.
    pub profile_kind: AuthProfileKind,
    /// The provider, lower case.
    pub provider: String,
    /// Where it is in its lifecycle.
    pub status: AuthProfileStatus,
    /// The member who created it (the owner of a personal profile).
    pub created_by: Uuid,
    /// Its display name.
    pub display_name: String,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// The scopes the provider granted (the requested ones when it did not say); null until
    /// connected.
    pub granted_scopes: Option<Vec<String>>,
    /// Whether it is the team's default profile of its connector.
    pub is_default: bool,
    /// The upstream account connected; null until connected.
    pub upstream_account_id: Option<String>,
    /// When the current access token expires; null when unknown.
    pub access_token_expires_at: Option<DateTime<Utc>>,
    /// When a pending profile stops being reusable; null once connected.
    pub pending_expires_at: Option<DateTime<Utc>>,
    /// Bumped when the profile is connected, reconnected or revoked (not by token refreshes).
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<AuthProfile> for AuthProfileResponse {
    fn from(profile: AuthProfile) -> Self {
        Self {
            id: profile.id.as_uuid(),
            team_id: profile.team_id.as_uuid(),
            slug: profile.slug.as_str().to_owned(),
            connector_key: profile.connector_key,
            profile_kind: profile.profile_kind.into(),
            provider: profile.provider,
            status: profile.status.into(),
            created_by: profile.created_by.as_uuid(),
            display_name: profile.display_name,
            scopes: profile.scopes,
            granted_scopes: profile.granted_scopes,
            is_default: profile.is_default,
            upstream_account_id: profile.upstream_account_id,
            access_token_expires_at: profile.access_token_expires_at,
            pending_expires_at: profile.pending_expires_at,
            version: profile.version,
            created_at: profile.created_at,
            updated_at: profile.updated_at,
        }
    }
}

/// The body of `GET /v1/teams/{team}/auth-profiles`.
#[derive(Debug, Serialize)]
pub struct AuthProfileListResponse {
    /// The team's live profiles that the caller may see.
    pub auth_profiles: Vec<AuthProfileResponse>,
}

impl From<Vec<AuthProfile>> for AuthProfileListResponse {
    fn from(profiles: Vec<AuthProfile>) -> Self {
        Self { auth_profiles: profiles.into_iter().map(Into::into).collect() }
    }
}

/// A profile and a link that connects it: the body of `POST /v1/teams/{team}/auth-profiles` and
/// `POST /v1/teams/{team}/auth-profiles/{slug}/connect`. Its `Debug` hides the link.
#[derive(Serialize)]
pub struct AuthProfileWithLinkResponse {
    /// The profile.
    pub auth_profile: AuthProfileResponse,
    /// The URL to open in a browser, signed in as the caller, to connect the account; null for
    /// kinds not connected through OAuth.
    pub connect_url: Option<String>,
    /// When the link stops working; null when there is no link.
    pub connect_expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for AuthProfileWithLinkResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthProfileWithLinkResponse")
            .field("auth_profile", &self.auth_profile)
            .field("connect_url", &self.connect_url.as_ref().map(|_| "[REDACTED]"))
            .field("connect_expires_at", &self.connect_expires_at)
            .finish()
    }
}

impl From<Created> for AuthProfileWithLinkResponse {
    fn from(created: Created) -> Self {
        Self::new(created.profile, created.link)
    }
}

impl From<(AuthProfile, ConnectLink)> for AuthProfileWithLinkResponse {
    fn from((profile, link): (AuthProfile, ConnectLink)) -> Self {
        Self::new(profile, Some(link))
    }
}

impl AuthProfileWithLinkResponse {
    fn new(profile: AuthProfile, link: Option<ConnectLink>) -> Self {
        let (connect_url, connect_expires_at) = match link {
            Some(link) => (Some(link.url.expose_secret().to_owned()), Some(link.expires_at)),
            None => (None, None),
        };
        Self { auth_profile: profile.into(), connect_url, connect_expires_at }
    }
}

/// The type of an access token handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TokenType {
    /// Sent as `Authorization: Bearer <token>`.
    Bearer,
}

/// The body of `POST /v1/teams/{team}/auth-profiles/{slug}/token`: a valid access token for the
/// connected account. Its `Debug` hides the token.
#[derive(Serialize)]
pub struct AuthProfileTokenResponse {
    /// The access token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: TokenType,
    /// When the token expires; null when the provider did not say.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether this call refreshed the token first (it was expiring within five minutes).
    pub refreshed: bool,
}

impl fmt::Debug for AuthProfileTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthProfileTokenResponse")
            .field("access_token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("refreshed", &self.refreshed)
            .finish()
    }
}

impl From<AccessToken> for AuthProfileTokenResponse {
    fn from(token: AccessToken) -> Self {
        Self {
            access_token: token.token.expose_secret().to_owned(),
            token_type: TokenType::Bearer,
            expires_at: token.expires_at,
            refreshed: token.refreshed,
        }
    }
}

/// The body of `PATCH /v1/teams/{team}/auth-profiles/{slug}`: the profile as it is now and, when
/// the new scopes need a (re)connection, a fresh link. Its `Debug` hides the link.
#[derive(Serialize)]
pub struct AuthProfileUpdateResponse {
    /// The profile.
    pub auth_profile: AuthProfileResponse,
    /// Whether the profile must be connected (again) before it serves the new scopes.
    pub reconnect_required: bool,
    /// The URL to open in a browser, signed in as the caller, to connect it; null when no
    /// reconnection is required.
    pub connect_url: Option<String>,
    /// When the link stops working; null when there is no link.
    pub connect_expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for AuthProfileUpdateResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthProfileUpdateResponse")
            .field("auth_profile", &self.auth_profile)
            .field("reconnect_required", &self.reconnect_required)
            .field("connect_url", &self.connect_url.as_ref().map(|_| "[REDACTED]"))
            .field("connect_expires_at", &self.connect_expires_at)
            .finish()
    }
}

impl From<Updated> for AuthProfileUpdateResponse {
    fn from(updated: Updated) -> Self {
        let (connect_url, connect_expires_at) = match updated.link {
            Some(link) => (Some(link.url.expose_secret().to_owned()), Some(link.expires_at)),
            None => (None, None),
        };
        Self {
            auth_profile: updated.profile.into(),
            reconnect_required: updated.reconnect_required,
            connect_url,
            connect_expires_at,
        }
    }
}

/// Where a credential by connector came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSourceResponse {
    /// The caller's own connected account.
    Personal,
    /// The team's default profile of the connector.
    TeamDefault,
}

/// The body of `POST /v1/teams/{team}/connectors/{connector_key}/credentials`: the profile that
/// serves the connector for the caller, and its access token. Its `Debug` hides the token.
#[derive(Serialize)]
pub struct ConnectorCredentialResponse {
    /// The profile.
    pub auth_profile: AuthProfileResponse,
    /// `personal` (the caller's own account) or `team_default`.
    pub source: CredentialSourceResponse,
    /// The access token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: TokenType,
    /// When the token expires; null when the provider did not say.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether this call refreshed the token first.
    pub refreshed: bool,
}

impl fmt::Debug for ConnectorCredentialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorCredentialResponse")
            .field("auth_profile", &self.auth_profile)
            .field("source", &self.source)
            .field("access_token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("refreshed", &self.refreshed)
            .finish()
    }
}

impl From<ConnectorCredential> for ConnectorCredentialResponse {
    fn from(credential: ConnectorCredential) -> Self {
        Self {
            auth_profile: credential.profile.into(),
            source: match credential.source {
                CredentialSource::Personal => CredentialSourceResponse::Personal,
                CredentialSource::TeamDefault => CredentialSourceResponse::TeamDefault,
            },
            access_token: credential.token.token.expose_secret().to_owned(),
            token_type: TokenType::Bearer,
            expires_at: credential.token.expires_at,
            refreshed: credential.token.refreshed,
        }
    }
}

/// The body of `POST /v1/teams/{team}/auth-profiles/{slug}/test`. Never holds the credential.
#[derive(Debug, Serialize)]
pub struct AuthProfileTestResponse {
    /// Whether the credential works.
    pub ok: bool,
    /// The HTTP status of the provider's last answer; null when it was not asked (the refresh
    /// token was refused).
    pub status: Option<u16>,
    /// Why it does not work: `invalid_token`, `invalid_grant`, `insufficient_scope`, `rejected` or
    /// `provider_error`; null when it works.
    pub error: Option<&'static str>,
    /// Whether the token was refreshed during the test.
    pub refreshed: bool,
    /// The profile's status after the test (`needs_reauth` when the provider refused it).
    pub profile_status: AuthProfileStatus,
}

impl From<TestOutcome> for AuthProfileTestResponse {
    fn from(outcome: TestOutcome) -> Self {
        Self {
            ok: outcome.ok,
            status: outcome.status,
            error: outcome.error.map(|e| e.as_str()),
            refreshed: outcome.refreshed,
            profile_status: outcome.profile_status.into(),
        }
    }
}
