//! Auth profiles (connected accounts): a team's, or one member's, credentials for a third-party
//! connector, with their lifecycle (`pending_auth` → `active` → `needs_reauth` / `revoked`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ProfileId, Role, Slug, TeamId, UserId};

/// What kind of credentials a profile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileKind {
    /// One member's own account at the provider, connected through OAuth.
    OauthAccount,
    /// A team-wide account connected through OAuth.
    OauthApp,
    /// Values a connector reads from its environment (API keys, a username and password), as
    /// declared by the connector's fields in the configuration.
    Env,
    /// Credentials typed in each time they are used. No longer created: such a credential never
    /// reaches Tessera. Kept to read rows written before.
    Interactive,
    /// A browser's signed-in state (cookies and origins), for agents that drive a browser.
    BrowserSession,
}

impl ProfileKind {
    /// Every kind.
    pub const ALL: [ProfileKind; 5] = [
        ProfileKind::OauthAccount,
        ProfileKind::OauthApp,
        ProfileKind::Env,
        ProfileKind::Interactive,
        ProfileKind::BrowserSession,
    ];

    /// The stored and serialised form.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::OauthAccount => "oauth_account",
            ProfileKind::OauthApp => "oauth_app",
            ProfileKind::Env => "env",
            ProfileKind::Interactive => "interactive",
            ProfileKind::BrowserSession => "browser_session",
        }
    }

    /// Parses the stored form.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }

    /// Whether profiles of this kind are connected through an OAuth flow (and so start pending).
    pub fn is_oauth(self) -> bool {
        matches!(self, ProfileKind::OauthAccount | ProfileKind::OauthApp)
    }

    /// Whether new profiles of this kind may be created (every kind but `interactive`).
    pub fn is_creatable(self) -> bool {
        self != ProfileKind::Interactive
    }

    /// Whether profiles of this kind belong to the member who created them (not the whole team).
    pub fn is_personal(self) -> bool {
        self == ProfileKind::OauthAccount
    }

    /// Who may connect (or reconnect, or set the credentials of) a profile of this kind, as a
    /// member with `role` who is (`creator`) or is not its creator: a personal profile its
    /// creator alone, a team's its creator or a team owner or admin.
    pub fn may_connect(self, creator: bool, role: Role) -> Result<(), ConnectRefusal> {
        match self.is_personal() {
            true if !creator => Err(ConnectRefusal::NotCreator),
            false if !creator && !role.manages_team() => Err(ConnectRefusal::NotAdmin),
            _ => Ok(()),
        }
    }
}

/// What a member asks to do with a profile, for [`ProfileKind::allows`]. The store checks it
/// again inside the write, after the team's row lock, so that a member removed or demoted at the
/// same moment cannot still act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileRight {
    /// Connect or reconnect it, set its credentials, change its name, slug or scopes
    /// ([`ProfileKind::may_connect`]).
    Connect,
    /// Revoke it, or make it (or stop it being) its connector's default: its creator or a team
    /// owner or admin, whichever its kind.
    Manage,
}

impl ProfileKind {
    /// Whether a member with `role` who is (`creator`) or is not the profile's creator has `right`.
    pub fn allows(self, right: ProfileRight, creator: bool, role: Role) -> bool {
        match right {
            ProfileRight::Connect => self.may_connect(creator, role).is_ok(),
            ProfileRight::Manage => creator || role.manages_team(),
        }
    }
}

/// Why a member may not connect a profile ([`ProfileKind::may_connect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// A personal profile, and not theirs.
    NotCreator,
    /// A team's profile, and neither theirs nor are they a team owner or admin.
    NotAdmin,
}

/// Where a profile is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileStatus {
    /// Waiting for the OAuth flow to complete.
    PendingAuth,
    /// Usable.
    Active,
    /// The provider refused the refresh token: the profile must be connected again.
    NeedsReauth,
    /// Revoked; its slug is free again.
    Revoked,
}

impl ProfileStatus {
    /// The stored and serialised form.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileStatus::PendingAuth => "pending_auth",
            ProfileStatus::Active => "active",
            ProfileStatus::NeedsReauth => "needs_reauth",
            ProfileStatus::Revoked => "revoked",
        }
    }

    /// Parses the stored form.
    pub fn parse(value: &str) -> Option<Self> {
        [ProfileStatus::PendingAuth, ProfileStatus::Active, ProfileStatus::NeedsReauth, ProfileStatus::Revoked]
            .into_iter()
            .find(|s| s.as_str() == value)
    }
}

/// A connected account, without its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthProfile {
    /// Id.
    pub id: ProfileId,
    /// The team it belongs to.
    pub team_id: TeamId,
    /// Unique handle within the team (among live profiles).
    pub slug: Slug,
    /// Which connector uses it, e.g. `github-issues`.
    pub connector_key: String,
    /// Its kind.
    pub profile_kind: ProfileKind,
    /// The provider, lower case.
    pub provider: String,
    /// Its lifecycle status.
    pub status: ProfileStatus,
    /// The member who created it (the owner of a personal profile).
    pub created_by: UserId,
    /// Display name.
    pub display_name: String,
    /// Scopes asked for.
    pub scopes: Vec<String>,
    /// Scopes the provider granted, from its token response (the requested ones when it did not
    /// say); `None` until connected.
    pub granted_scopes: Option<Vec<String>>,
    /// Whether it is the team's default profile of its connector.
    pub is_default: bool,
    /// The upstream account connected, once connected.
    pub upstream_account_id: Option<String>,
    /// When the current access token expires, if known.
    pub access_token_expires_at: Option<DateTime<Utc>>,
    /// When a pending profile stops being reusable.
    pub pending_expires_at: Option<DateTime<Utc>>,
    /// Bumped when the profile is connected, reconnected or revoked (not by token refreshes):
    /// what connect flows compare-and-swap on.
    pub version: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// What may be shown about the credential of an `env` or `browser_session` profile (which
    /// fields are set and when, the browser kind), never its values; `None` until one is set.
    pub credential: Option<CredentialMeta>,
}

impl AuthProfile {
    /// The profile as kept once a connect link living until `until` is minted for it: a pending
    /// profile lives at least as long as its link (never shortened; the store's rule too).
    pub fn outliving(self, until: DateTime<Utc>) -> Self {
        match self.status {
            ProfileStatus::PendingAuth => {
                let kept = self.pending_expires_at.map_or(until, |at| at.max(until));
                AuthProfile { pending_expires_at: Some(kept), ..self }
            }
            _ => self,
        }
    }
}

/// What may be shown about a stored `env` or `browser_session` credential: never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CredentialMeta {
    /// The fields of an `env` profile that hold a value.
    Env {
        /// The fields set, in the connector's order.
        fields: Vec<FieldSet>,
    },
    /// A browser session.
    BrowserSession {
        /// The browser it is for (`chromium`, `firefox`, `webkit`…).
        browser_kind: String,
        /// The browser's DevTools endpoint, without its query (which may carry a token), if one
        /// was given.
        cdp_url: Option<String>,
        /// When the storage state was set.
        set_at: DateTime<Utc>,
    },
}

/// One field of an `env` profile that holds a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSet {
    /// The field's name.
    pub name: String,
    /// When its value was set.
    pub set_at: DateTime<Utc>,
}
