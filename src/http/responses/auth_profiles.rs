//! Auth profiles (connected accounts): `/v1/teams/{team}/auth-profiles`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{AuthProfile, CredentialMeta, ProfileKind, ProfileStatus};
use crate::service::auth_profiles::{AccessToken, ConnectLink, Created, LinkType};
use crate::service::profile_actions::{ConnectorCredential, CredentialSource, TestOutcome, Updated};
use crate::service::profile_credentials::Credential;

/// What kind of credentials an auth profile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthProfileKind {
    /// One member's own account at the provider, connected through OAuth.
    OauthAccount,
    /// A team-wide account connected through OAuth.
    OauthApp,
    /// Values a connector reads from its environment (API keys…), as its fields declare.
    Env,
    /// No longer created; only profiles made before have it.
    Interactive,
    /// A browser's signed-in state.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    /// Bumped when the profile is connected or reconnected, its credential written, its scopes
    /// widened, or it is revoked (not by token refreshes).
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// For `env` and `browser_session` profiles with a credential: which fields are set and when,
    /// or the browser kind — never a value; null otherwise.
    pub credential: Option<CredentialMetaResponse>,
}

/// What may be shown about the credential of an `env` or `browser_session` profile.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CredentialMetaResponse {
    /// The fields of an `env` profile that hold a value.
    Env {
        /// Each field set, with when.
        fields: Vec<FieldSetResponse>,
    },
    /// A browser session.
    BrowserSession {
        /// The browser it is for.
        browser_kind: String,
        /// Its DevTools endpoint without the query; null when none was given.
        cdp_url: Option<String>,
        /// When the storage state was set.
        set_at: DateTime<Utc>,
    },
}

/// A field of an `env` profile that holds a value.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldSetResponse {
    /// The field's name.
    pub name: String,
    /// When its value was set.
    pub set_at: DateTime<Utc>,
}

impl From<CredentialMeta> for CredentialMetaResponse {
    fn from(meta: CredentialMeta) -> Self {
        match meta {
            CredentialMeta::Env { fields } => CredentialMetaResponse::Env {
                fields: fields.into_iter().map(|f| FieldSetResponse { name: f.name, set_at: f.set_at }).collect(),
            },
            CredentialMeta::BrowserSession { browser_kind, cdp_url, set_at } => {
                // Stored before only the origin was kept, a shown URL may still have its path.
                let cdp_url = cdp_url
                    .as_deref()
                    .and_then(|u| url::Url::parse(u).ok())
                    .map(|u| crate::service::profile_credentials::shown_endpoint(&u));
                CredentialMetaResponse::BrowserSession { browser_kind, cdp_url, set_at }
            }
        }
    }
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
            credential: profile.credential.map(Into::into),
        }
    }
}

/// The body of `GET /v1/teams/{team}/auth-profiles`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuthProfileWithLinkResponse {
    /// The profile.
    pub auth_profile: AuthProfileResponse,
    /// The URL to open in a browser, signed in as the caller, to connect the account (OAuth
    /// kinds) or to fill in its values (`env`); null when there is no link (a browser session,
    /// or a credential given with the request).
    pub connect_url: Option<String>,
    /// When the link stops working; null when there is no link.
    pub connect_expires_at: Option<DateTime<Utc>>,
    /// What the link opens: `oauth` (the provider's consent) or `env_keys` (a form for the
    /// connector's fields); null when there is no link.
    pub auth_type: Option<ConnectAuthType>,
}

/// What a connect link opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectAuthType {
    /// The provider's OAuth flow.
    Oauth,
    /// A form for the values of an `env` profile.
    EnvKeys,
}

impl From<LinkType> for ConnectAuthType {
    fn from(kind: LinkType) -> Self {
        match kind {
            LinkType::OAuth => ConnectAuthType::Oauth,
            LinkType::EnvKeys => ConnectAuthType::EnvKeys,
        }
    }
}

impl fmt::Debug for AuthProfileWithLinkResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthProfileWithLinkResponse")
            .field("auth_profile", &self.auth_profile)
            .field("connect_url", &self.connect_url.as_ref().map(|_| "[REDACTED]"))
            .field("connect_expires_at", &self.connect_expires_at)
            .field("auth_type", &self.auth_type)
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
        let (connect_url, connect_expires_at, auth_type) = match link {
            Some(link) => {
                (Some(link.url.expose_secret().to_owned()), Some(link.expires_at), Some(link.auth_type.into()))
            }
            None => (None, None, None),
        };
        Self { auth_profile: profile.into(), connect_url, connect_expires_at, auth_type }
    }
}

/// The type of an access token handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum TokenType {
    /// Sent as `Authorization: Bearer <token>`.
    Bearer,
}

/// The body of `POST /v1/teams/{team}/auth-profiles/{slug}/token`: a valid access token for the
/// connected account. Its `Debug` hides the token.
#[derive(Serialize, utoipa::ToSchema)]
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

/// The body of `POST /v1/teams/{team}/auth-profiles/{slug}/credentials`: the credential of the
/// profile, by kind. Its `Debug` hides every secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CredentialResponse {
    /// The profile's kind.
    pub kind: AuthProfileKind,
    /// The kind's payload.
    #[serde(flatten)]
    pub payload: CredentialPayload,
}

/// The payload of a [`CredentialResponse`].
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CredentialPayload {
    /// OAuth kinds: a valid access token, refreshed as for `/token`.
    OAuth {
        /// The access token.
        access_token: String,
        /// Always `Bearer`.
        token_type: TokenType,
        /// When it expires; null when the provider did not say.
        expires_at: Option<DateTime<Utc>>,
    },
    /// `env`: the values, by field name.
    Env {
        /// The values.
        values: BTreeMap<String, String>,
    },
    /// `browser_session`: the storage state and how to reach the browser.
    BrowserSession {
        /// Playwright's storage state (`cookies`, `origins`).
        storage_state: serde_json::Value,
        /// The browser kind.
        browser_kind: String,
        /// The DevTools endpoint, null when none was given.
        cdp_url: Option<String>,
    },
}

impl fmt::Debug for CredentialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialResponse").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl From<Credential> for CredentialResponse {
    fn from(credential: Credential) -> Self {
        match credential {
            Credential::OAuth { kind, token } => CredentialResponse {
                kind: kind.into(),
                payload: CredentialPayload::OAuth {
                    access_token: token.token.expose_secret().to_owned(),
                    token_type: TokenType::Bearer,
                    expires_at: token.expires_at,
                },
            },
            Credential::Env { values } => CredentialResponse {
                kind: AuthProfileKind::Env,
                payload: CredentialPayload::Env {
                    values: values.into_iter().map(|(name, value)| (name, value.expose_secret().to_owned())).collect(),
                },
            },
            Credential::BrowserSession { storage_state, browser_kind, cdp_url } => CredentialResponse {
                kind: AuthProfileKind::BrowserSession,
                payload: CredentialPayload::BrowserSession {
                    storage_state,
                    browser_kind,
                    cdp_url: cdp_url.map(|url| url.expose_secret().to_owned()),
                },
            },
        }
    }
}

/// The body of `PATCH /v1/teams/{team}/auth-profiles/{slug}`: the profile as it is now and, when
/// the new scopes need a (re)connection, a fresh link. Its `Debug` hides the link.
#[derive(Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSourceResponse {
    /// The caller's own connected account.
    Personal,
    /// The team's default profile of the connector.
    TeamDefault,
}

/// The body of `POST /v1/teams/{team}/connectors/{connector_key}/credentials`: the profile that
/// serves the connector for the caller, and its credential as `POST …/{slug}/credentials` gives
/// it. Its `Debug` hides the credential.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConnectorCredentialResponse {
    /// The profile.
    pub auth_profile: AuthProfileResponse,
    /// `personal` (the caller's own account) or `team_default`.
    pub source: CredentialSourceResponse,
    /// The credential, by kind (`kind` and the kind's fields).
    #[serde(flatten)]
    pub credential: CredentialResponse,
    /// OAuth kinds: whether this call refreshed the token first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<bool>,
}

impl fmt::Debug for ConnectorCredentialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorCredentialResponse")
            .field("auth_profile", &self.auth_profile)
            .field("source", &self.source)
            .field("credential", &self.credential)
            .field("refreshed", &self.refreshed)
            .finish()
    }
}

impl From<ConnectorCredential> for ConnectorCredentialResponse {
    fn from(found: ConnectorCredential) -> Self {
        let refreshed = match &found.credential {
            Credential::OAuth { token, .. } => Some(token.refreshed),
            _ => None,
        };
        Self {
            auth_profile: found.profile.into(),
            source: match found.source {
                CredentialSource::Personal => CredentialSourceResponse::Personal,
                CredentialSource::TeamDefault => CredentialSourceResponse::TeamDefault,
            },
            credential: found.credential.into(),
            refreshed,
        }
    }
}

/// The body of `POST /v1/teams/{team}/auth-profiles/{slug}/test`. Never holds the credential.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
