//! Auth profiles (connected accounts) for third-party connectors, the links that connect them,
//! and fresh access tokens for backends. (The credentials of `env` and `browser_session`
//! profiles, and the one credential read for every kind, are in `profile_credentials.rs`.)
//!
//! - Every kind that can be created holds a credential and starts `pending_auth` until it has
//!   one: OAuth kinds with a link to the provider, `env` profiles (of a declared connector with
//!   fields) with a link to a form, browser sessions without a link. `interactive` is refused.
//!
//! - Creating an OAuth profile without a slug reuses the caller's pending profile for the same
//!   connector and provider (with a fresh connect link); the database allows one pending personal
//!   profile per member, so concurrent identical creates all end on the same row. An explicit,
//!   different slug while one is pending is a 409 naming the pending profile's slug.
//! - A connect link is a 256-bit token, stored hashed, valid 30 minutes, single-use, bound to the
//!   member who made it; minting a new one invalidates the older ones. That member must still be
//!   allowed to connect the profile when they open it and when the flow returns (a member; the
//!   owner of a personal profile; the creator or a team owner or admin of a team-wide one).
//!   Looking at it ([`AuthProfiles::connect_preview`], the start page) uses nothing up; starting
//!   it ([`AuthProfiles::start`]) begins an authorization-code flow with a fresh
//!   state, PKCE verifier and nonce; the link is used up only once the flow has started. The
//!   callback activates the profile with a compare-and-swap on its version, which only
//!   connections change (not refreshes): of two concurrent completions one wins.
//! - Tokens are refreshed when they expire within five minutes, single-flight: one task per
//!   profile per process, and across processes a lease on the row (with a token-version check),
//!   so that many concurrent requests cause exactly one call to the provider. The refresh runs in
//!   its own task, so a client hanging up cannot drop a rotated refresh token on the floor, and
//!   the provider call is cut off well within the lease.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::answers::Answers;
use super::profile_credentials::{CredentialInput, EnvProblem};
use super::sessions::random_secret;
use super::teams::{TeamError, Teams};
use crate::config::ConnectorConfig;
use crate::crypto::keyring::KeyRing;
use crate::crypto::sha256;
use crate::domain::{
    AuthProfile, ConnectRefusal, ProfileId, ProfileKind, ProfileRef, ProfileRight, ProfileStatus, ReturnTo, Role, Slug,
    Team, TeamId, TeamRef, UserId,
};
use crate::error::ErrorChain as _;
use crate::error::{ErrorCode, PublicError};
use crate::observability::{TOKEN_REFRESH_CALLS_TOTAL, TOKEN_REFRESH_WAITS_TOTAL};
use crate::store::{
    Activation, ConnectToken, FirstWrite, PendingKey, ProfileInsert, ProfileSecrets, RefreshLease, Refreshed,
    Revocation, SecretKind, Store, StoreError, StoredSecret,
};
use crate::upstream::oauth_flow::{FLOW_TTL, Finished, FlowError, OAuthFlows, Purpose, Started};
use crate::upstream::providers::{Provider, ProviderError, TokenKind, TokenSet};

/// How long a connect link lives.
pub const CONNECT_LINK_TTL: TimeDelta = TimeDelta::minutes(30);
/// How long past a connect flow's state a pending profile is kept: the callback exchanges the
/// code with the provider after the state is used (an outbound request, bounded by its timeout).
const CALLBACK_GRACE: TimeDelta = TimeDelta::minutes(2);
/// Tokens expiring sooner than this are refreshed before being handed out (or sooner than half
/// their lifetime, when that is shorter: see [`needs_refresh`]).
pub const REFRESH_WINDOW: TimeDelta = TimeDelta::minutes(5);
/// How long a refresh lease lasts (a crashed holder blocks others at most this long): the
/// provider call and the store's retries fit in it with room for a wait for a connection before
/// the call and for instances' clocks that differ a little.
const LEASE: TimeDelta = TimeDelta::seconds(60);
/// How much of the lease must be left to try storing a refresh's answer again: with the default
/// settings a write may wait this long (5 s for a connection, then SQLite's busy timeout of 5 s).
const STORE_RETRY_MARGIN: Duration = Duration::from_secs(10);
/// How long a refresh under `lease` may wait for the provider from `now`: what is left of the
/// lease (counted from now, not from when it was asked for, which may have waited for a
/// connection) past [`STORE_RETRY_MARGIN`], at most [`PROVIDER_CALL_LIMIT`].
fn provider_call_limit(lease: &RefreshLease, now: DateTime<Utc>) -> Duration {
    let left = (lease.until - now).to_std().unwrap_or_default();
    left.saturating_sub(STORE_RETRY_MARGIN).min(PROVIDER_CALL_LIMIT)
}

/// How long after a refresh failed at the provider (unreachable, timed out, a 5xx, an answer that
/// cannot be used: anything but a refused refresh token) this process hands out a profile's
/// stored token, while it has time left, rather than asking again.
const REFRESH_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// How long a request waits for a refresh before it gets the stored token instead, while that
/// has time left (the refresh goes on): about what the outbound timeout gave before refreshes
/// had a limit of their own.
const IN_PLACE_WAIT: Duration = Duration::from_secs(5);
/// How long a request waits for another instance's refresh.
const REFRESH_WAIT: Duration = Duration::from_secs(10);
/// How long the provider's refresh call may take at most; less when less of the lease is left
/// past [`STORE_RETRY_MARGIN`] once it is taken, so that no other holder replays the old refresh
/// token while this one is still in flight or being stored.
const PROVIDER_CALL_LIMIT: Duration = crate::upstream::providers::REFRESH_CALL_LIMIT;

/// Why an auth-profile operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthProfileError {
    /// The team does not exist or the caller is not a member (the two are not told apart).
    #[error("team not found")]
    TeamNotFound,
    /// No live profile has that slug.
    #[error("no auth profile has this slug in this team")]
    ProfileNotFound,
    /// The profile is another member's personal account.
    #[error("this auth profile is another member's personal account")]
    NotProfileOwner,
    /// Only team owners and admins may do this.
    #[error("only team owners and admins may do this")]
    NotAdmin,
    /// A profile for this connector and provider is pending connection (the caller's, under
    /// another slug or with other scopes or another name than the request's; or a team-wide one
    /// that is not the caller's to connect).
    #[error(
        "a profile for this connector and provider is pending connection: {slug}; connect it as it is, \
         change it (PATCH), or revoke it first"
    )]
    PendingAuthConflict {
        /// The pending profile's slug.
        slug: String,
    },
    /// The slug is taken in this team.
    #[error("the slug is taken in this team")]
    SlugTaken,
    /// The team holds as many live profiles as it may (`auth.max_profiles_per_team`).
    #[error(
        "the team holds as many auth profiles as it may, {0}, pending ones included (auth.max_profiles_per_team): \
         revoke one it no longer uses first"
    )]
    TeamFull(u32),
    /// OAuth profiles need a configured provider of that name.
    #[error("no sign-in provider is named {0:?}")]
    UnknownProvider(String),
    /// A stored profile's provider is no longer in the configuration.
    #[error(
        "the profile's provider {0:?} is no longer configured: put it back in the configuration, or connect a \
         profile with another provider"
    )]
    ProviderNotConfigured(String),
    /// The profile kind is not connected through OAuth.
    #[error("{0} profiles are not connected through OAuth")]
    NotOAuth(&'static str),
    /// Browser sessions have no connect link.
    #[error("browser_session profiles have no connect link: set the storage state with PUT …/browser-session")]
    NoConnectLink,
    /// An `interactive` profile, kept from an earlier release, has no connect link.
    #[error(
        "this interactive profile (from an earlier release) has no connect link: revoke it, and create an env or \
         OAuth profile in its place"
    )]
    InteractiveHasNoLink,
    /// `env` profiles need a declared connector with fields.
    #[error(
        "no connector {0:?} with fields is declared: an env profile needs a `[[connectors]]` entry with this key and its `fields`"
    )]
    UnknownConnector(String),
    /// Profiles of this kind are not created.
    #[error(
        "interactive profiles are not supported: Tessera holds credentials, and one typed in each time it is used never \
         reaches it; to ask a member again, use POST …/connect"
    )]
    UnsupportedKind,
    /// The endpoint sets another kind's credential.
    #[error("this profile is {actual}; this sets the credential of {expected} profiles")]
    KindMismatch {
        /// The profile's kind.
        actual: &'static str,
        /// The kind the endpoint is for.
        expected: &'static str,
    },
    /// A create request carries a credential of another kind than the profile's: `values`
    /// with another kind than `env`, or `storage_state` with another than `browser_session`.
    #[error("`{field}` goes with {kind} profiles only")]
    CredentialOfAnotherKind {
        /// The field sent.
        field: &'static str,
        /// The kind it goes with.
        kind: &'static str,
    },
    /// An `env` value is not acceptable.
    #[error("{problem}")]
    InvalidEnv {
        /// What is wrong.
        problem: EnvProblem,
        /// The field at fault (a declared name, or the name sent when it looks like one).
        field: Option<String>,
    },
    /// A browser session is not acceptable.
    #[error("`{field}`: {detail}")]
    InvalidBrowserSession {
        /// The field at fault.
        field: &'static str,
        /// What to fix.
        detail: String,
    },
    /// No key ring is configured, so credentials cannot be stored.
    #[error("no encryption key is configured (TESSERA_ENCRYPTION_KEYS), so credentials cannot be stored")]
    EncryptionNotConfigured,
    /// The connect link is unknown, expired or used.
    #[error("this connect link is unknown, expired or already used; ask for a new one")]
    InvalidConnectLink,
    /// The connect link is another user's.
    #[error("this connect link was made for another user; sign in as that user and open it again")]
    WrongUser,
    /// Nobody is signed in.
    #[error("sign in as the user who created this connect link, then open it again")]
    NotSignedIn,
    /// The browser's session ended while the provider was asked: the link is used up.
    #[error(
        "you were signed out while connecting, and this connect link is now used up; sign in and ask for a new one"
    )]
    SignedOutMeanwhile,
    /// The provider account is not the one connected before.
    #[error("this is not the account connected before; ask for a link that allows changing the account")]
    AccountMismatch,
    /// Another completion won the race.
    #[error("this profile was connected by another flow at the same time")]
    ConnectConflict,
    /// The user was disabled while connecting (the write found it under its lock).
    #[error("this user is disabled")]
    UserDisabled,
    /// The profile has not been connected yet.
    #[error("this auth profile is not connected yet")]
    NotConnected,
    /// The provider refused the refresh token: the profile must be connected again.
    #[error("the provider refused the refresh token: connect the profile again")]
    NeedsReauth,
    /// Another instance's refresh did not finish in time.
    #[error("a refresh of this token is in progress elsewhere; try again")]
    RefreshInProgress,
    /// A stored credential does not decrypt.
    #[error("a stored credential does not decrypt")]
    Undecryptable,
    /// The flow failed.
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublicError for AuthProfileError {
    fn code(&self) -> ErrorCode {
        match self {
            AuthProfileError::TeamNotFound => ErrorCode::TeamNotFound,
            AuthProfileError::ProfileNotFound => ErrorCode::ProfileNotFound,
            AuthProfileError::NotProfileOwner => ErrorCode::NotProfileOwner,
            AuthProfileError::NotAdmin => ErrorCode::NotTeamAdmin,
            AuthProfileError::PendingAuthConflict { .. } => ErrorCode::PendingAuthConflict,
            AuthProfileError::SlugTaken => ErrorCode::SlugTaken,
            AuthProfileError::TeamFull(_) => ErrorCode::AuthProfileLimitReached,
            AuthProfileError::UnknownProvider(_) => ErrorCode::UnknownProvider,
            AuthProfileError::ProviderNotConfigured(_) => ErrorCode::ProviderNotConfigured,
            AuthProfileError::NotOAuth(_)
            | AuthProfileError::NoConnectLink
            | AuthProfileError::InteractiveHasNoLink => ErrorCode::NotOauthProfile,
            AuthProfileError::UnknownConnector(_) => ErrorCode::UnknownConnector,
            AuthProfileError::UnsupportedKind => ErrorCode::UnsupportedProfileKind,
            AuthProfileError::KindMismatch { .. } => ErrorCode::ProfileKindMismatch,
            AuthProfileError::CredentialOfAnotherKind { .. } => ErrorCode::InvalidRequest,
            AuthProfileError::InvalidEnv { problem, .. } => problem.code(),
            AuthProfileError::InvalidBrowserSession { .. } => ErrorCode::InvalidBrowserSession,
            AuthProfileError::EncryptionNotConfigured => ErrorCode::EncryptionNotConfigured,
            AuthProfileError::InvalidConnectLink => ErrorCode::InvalidConnectLink,
            AuthProfileError::WrongUser => ErrorCode::ConnectLinkNotYours,
            AuthProfileError::NotSignedIn => ErrorCode::MissingCredentials,
            // Its link is used up: the page says to ask for a new one.
            AuthProfileError::SignedOutMeanwhile => ErrorCode::InvalidConnectLink,
            AuthProfileError::AccountMismatch => ErrorCode::AccountMismatch,
            AuthProfileError::ConnectConflict => ErrorCode::ConnectConflict,
            AuthProfileError::UserDisabled => ErrorCode::UserDisabled,
            AuthProfileError::NotConnected => ErrorCode::ProfileNotConnected,
            AuthProfileError::NeedsReauth => ErrorCode::NeedsReauth,
            AuthProfileError::RefreshInProgress => ErrorCode::RefreshInProgress,
            AuthProfileError::Undecryptable => ErrorCode::CredentialUndecryptable,
            AuthProfileError::Flow(e) => e.code(),
            AuthProfileError::Store(e) => e.code(),
        }
    }

    fn extensions(&self) -> Vec<(&'static str, serde_json::Value)> {
        match self {
            AuthProfileError::PendingAuthConflict { slug } => vec![("existing_slug", slug.as_str().into())],
            AuthProfileError::InvalidEnv { field: Some(field), .. } => vec![("field", field.as_str().into())],
            AuthProfileError::InvalidBrowserSession { field, .. }
            | AuthProfileError::CredentialOfAnotherKind { field, .. } => vec![("field", (*field).into())],
            _ => Vec::new(),
        }
    }
}

impl From<TeamError> for AuthProfileError {
    fn from(error: TeamError) -> Self {
        match error {
            TeamError::Store(e) => AuthProfileError::Store(e),
            _ => AuthProfileError::TeamNotFound,
        }
    }
}

impl From<ProviderError> for AuthProfileError {
    fn from(error: ProviderError) -> Self {
        AuthProfileError::Flow(FlowError::Provider(error))
    }
}

/// What a caller asks for when creating a profile (validated by the HTTP layer).
#[derive(Debug, Clone)]
pub struct NewProfile {
    /// The connector.
    pub connector_key: String,
    /// The kind.
    pub kind: ProfileKind,
    /// The provider, lower case.
    pub provider: String,
    /// Display name.
    pub display_name: String,
    /// An explicit slug.
    pub slug: Option<Slug>,
    /// Scopes to ask for (the provider's own when empty).
    pub scopes: Vec<String>,
    /// The credential of an `env` or `browser_session` profile, when given at creation (the
    /// profile is then `active` at once).
    pub credential: Option<CredentialInput>,
}

/// A connect link.
#[derive(Debug, Clone)]
pub struct ConnectLink {
    /// The URL to open in a browser.
    pub url: SecretString,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// What the link opens.
    pub auth_type: LinkType,
}

/// What a connect link opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// The provider's OAuth flow (`/connect/{token}/oauth/start`).
    OAuth,
    /// A form for the values of an `env` profile (`/connect/{token}/env`).
    EnvKeys,
}

/// A created (or reused) profile.
#[derive(Debug, Clone)]
pub struct Created {
    /// The profile.
    pub profile: AuthProfile,
    /// Its connect link, for OAuth kinds.
    pub link: Option<ConnectLink>,
    /// Whether this call created it (false: the caller's pending profile was reused).
    pub created: bool,
}

/// What the start page of an OAuth connect link shows.
#[derive(Debug, Clone)]
pub struct ConnectPreview {
    /// The profile the link connects.
    pub profile: AuthProfile,
    /// Its connector's label (the declared one, else its key).
    pub connector_label: String,
    /// The scopes the flow asks for.
    pub scopes: Vec<String>,
    /// The profile's team.
    pub team: Team,
    /// Whether another upstream account may replace the one connected now.
    pub replaces_account: bool,
}

/// An access token for a backend.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The token.
    pub token: SecretString,
    /// When it expires, if known.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether this call refreshed it.
    pub refreshed: bool,
    /// The profile's token version this token is stored under; `None` when it was handed out
    /// without being stored. A judgement of the token (a credential test) applies to that
    /// version only: a token refreshed or reconnected since is not judged by this one.
    pub version: Option<i64>,
}

/// A profile's refresh turn in this process.
type RefreshGate = tokio::sync::Mutex<()>;

/// The auth-profiles (connected accounts) service.
#[derive(Debug, Clone)]
pub struct AuthProfiles {
    pub(super) store: Arc<dyn Store>,
    flows: OAuthFlows,
    pub(super) teams: Teams,
    pub(super) keyring: Option<Arc<KeyRing>>,
    pending_ttl: TimeDelta,
    /// How many live profiles a team may hold (`auth.max_profiles_per_team`).
    max_per_team: u32,
    /// The declared connectors (`[[connectors]]`).
    pub(super) connectors: Arc<[ConnectorConfig]>,
    /// The process's outbound HTTP client (no redirects), for connector probes.
    pub(super) http: reqwest::Client,
    /// One refresh at a time per profile in this process.
    refreshing: Arc<Mutex<HashMap<ProfileId, Arc<RefreshGate>>>>,
    /// When this process's last refresh of a profile failed at the provider, for those within
    /// [`REFRESH_FAILURE_BACKOFF`]: see [`AuthProfiles::fresh_token`] and the requests waiting in
    /// [`AuthProfiles::single_flight_refresh`].
    failed_refreshes: Arc<Mutex<HashMap<ProfileId, tokio::time::Instant>>>,
    /// The connect forms' answers (the flow each started), kept for the same form sent again.
    pub(super) started: Arc<Answers<Started>>,
    /// The `env` forms' answers (the profile each stored), kept for the same form sent again.
    pub(super) stored: Arc<Answers<AuthProfile>>,
}

impl AuthProfiles {
    /// Creates the service; pending profiles expire after `pending_ttl`; `http` is the process's
    /// outbound client ([`outbound_client`](crate::upstream::issuers::outbound_client)), which
    /// sends connector probes.
    pub fn new(
        store: Arc<dyn Store>,
        flows: OAuthFlows,
        teams: Teams,
        keyring: Option<Arc<KeyRing>>,
        pending_ttl: Duration,
        http: reqwest::Client,
    ) -> Self {
        Self {
            http,
            store,
            flows,
            teams,
            keyring,
            pending_ttl: TimeDelta::from_std(pending_ttl).unwrap_or(TimeDelta::hours(24)),
            max_per_team: crate::config::DEFAULT_MAX_PROFILES_PER_TEAM,
            connectors: Arc::from(Vec::new()),
            refreshing: Arc::new(Mutex::new(HashMap::new())),
            failed_refreshes: Arc::default(),
            started: Arc::default(),
            stored: Arc::default(),
        }
    }

    /// The service with the declared connectors (`[[connectors]]`): `env` profiles are made for
    /// those that declare fields.
    pub fn with_connectors(mut self, connectors: Vec<ConnectorConfig>) -> Self {
        self.connectors = Arc::from(connectors);
        self
    }

    /// The service with teams holding at most `max` live profiles each
    /// (`auth.max_profiles_per_team`).
    pub fn with_max_per_team(mut self, max: u32) -> Self {
        self.max_per_team = max;
        self
    }

    /// The team and the caller's role in it; a non-member is told the team does not exist.
    pub(crate) async fn membership(&self, team: &TeamRef, user: UserId) -> Result<(Team, Role), AuthProfileError> {
        let (team, role) = self.teams.role_of(team, user).await?;
        Ok((team, role.ok_or(AuthProfileError::TeamNotFound)?))
    }

    /// The store (for the profile actions of [`super::profile_actions`]).
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A live profile the caller may use: personal ones only by their owner.
    pub(crate) async fn usable(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
    ) -> Result<(AuthProfile, Role), AuthProfileError> {
        let (team, role) = self.membership(team, user).await?;
        let profile = self.live_profile(team.id, named).await?;
        if profile.profile_kind.is_personal() && profile.created_by != user {
            return Err(AuthProfileError::NotProfileOwner);
        }
        Ok((profile, role))
    }

    /// The live (not revoked) profile of `team` that `named` names.
    async fn live_profile(&self, team: TeamId, named: &ProfileRef) -> Result<AuthProfile, AuthProfileError> {
        self.store.live_profile(team, named).await?.ok_or(AuthProfileError::ProfileNotFound)
    }

    /// Creates a profile, or reuses the caller's pending one (see the module documentation).
    /// `x_request_id` (the HTTP request's id) goes in the audit row of a profile created with
    /// its credential.
    pub async fn create(
        &self,
        team: &TeamRef,
        user: UserId,
        request: NewProfile,
        x_request_id: Option<&str>,
    ) -> Result<Created, AuthProfileError> {
        let (team, role) = self.membership(team, user).await?;
        if !request.kind.is_creatable() {
            return Err(AuthProfileError::UnsupportedKind);
        }
        if request.kind.is_oauth() && self.flows.providers().get(Some(&request.provider)).is_none() {
            return Err(AuthProfileError::UnknownProvider(crate::upstream::oauth_flow::shown_provider(
                &request.provider,
            )));
        }
        // Every kind that is created holds a credential, and every credential is encrypted.
        if self.keyring.is_none() {
            return Err(AuthProfileError::EncryptionNotConfigured);
        }
        // Checked before anything is written: a refused value leaves no profile behind.
        let credential = self.check_new_credential(&request)?;
        let now = super::now();
        let key = PendingKey {
            team: team.id,
            connector_key: &request.connector_key,
            provider: &request.provider,
            kind: request.kind,
            created_by: user,
        };
        if request.kind.is_oauth()
            && let Some(pending) = self.store.pending_profile(&key).await?
        {
            if pending.pending_expires_at.is_some_and(|at| at > now) {
                return self.reuse(pending, &request, user, role).await;
            }
            // Expired: not reused, and deleted so that a new one can take its place.
            self.store.delete_expired_pending(Some(&key), now).await?;
        }
        let candidates = match &request.slug {
            Some(slug) => vec![slug.clone()],
            None => {
                // Numbered while that reads well, then random: a team of many members naming
                // their connections alike (each their own "GitHub") never runs out of slugs.
                let base = Slug::derive(&request.display_name, "profile");
                let numbered = (2..=9).map(|n| base.with_suffix(&n.to_string()));
                let random = (0..3).map(|_| base.with_suffix(&crate::crypto::random_base36(6)));
                std::iter::once(base.clone()).chain(numbered).chain(random).collect()
            }
        };
        // Every kind starts pending; a credential given with the request activates it below.
        let status = ProfileStatus::PendingAuth;
        for slug in candidates {
            let profile = AuthProfile {
                id: ProfileId::generate(),
                team_id: team.id,
                slug,
                connector_key: request.connector_key.clone(),
                profile_kind: request.kind,
                provider: request.provider.clone(),
                status,
                created_by: user,
                display_name: request.display_name.clone(),
                scopes: request.scopes.clone(),
                granted_scopes: None,
                is_default: false,
                upstream_account_id: None,
                access_token_expires_at: None,
                pending_expires_at: Some(now + self.pending_ttl),
                version: 0,
                created_at: now,
                updated_at: now,
                credential: None,
            };
            // The profile and its credential or first link are written in one transaction:
            // a failure leaves neither, and the slug free for a retry.
            let sealed = credential.as_ref().map(|credential| self.seal(profile.id, credential)).transpose()?;
            let link = match (&sealed, profile.profile_kind) {
                (Some(_), _) | (None, ProfileKind::BrowserSession) => None,
                (None, _) => Some(self.new_link(&profile, user, false)),
            };
            let first = match (&sealed, &credential, &link) {
                (Some(ciphertext), Some(credential), _) => {
                    FirstWrite::Credential(ciphertext, &credential.meta, x_request_id)
                }
                (_, _, Some((token, _))) => FirstWrite::Link(token),
                _ => FirstWrite::Nothing,
            };
            let full = match self.store.insert_profile(&profile, first, self.max_per_team).await {
                Ok(ProfileInsert::Inserted(created)) => {
                    tracing::info!(profile_id = %created.id, team_id = %team.id, kind = created.profile_kind.as_str(), with_credential = sealed.is_some(), "created an auth profile");
                    return Ok(Created { profile: *created, link: link.map(|(_, link)| link), created: true });
                }
                Ok(ProfileInsert::Full) => true,
                Ok(ProfileInsert::Taken) => false,
                // Removed from the team (or the team deleted) since the check above.
                Err(StoreError::Gone { .. }) => return Err(AuthProfileError::TeamNotFound),
                Err(error) => return Err(error.into()),
            };
            // A uniqueness rule refused the row, or the team's limit: the caller's own pending
            // profile (created by a concurrent request — perhaps the one that reached the limit)
            // is reused all the same; else the slug is taken, or the team full.
            if request.kind.is_oauth()
                && let Some(pending) = self.store.pending_profile(&key).await?
                && pending.pending_expires_at.is_some_and(|at| at > now)
            {
                return self.reuse(pending, &request, user, role).await;
            }
            if full {
                return Err(AuthProfileError::TeamFull(self.max_per_team));
            }
            if request.slug.is_some() {
                return Err(AuthProfileError::SlugTaken);
            }
        }
        Err(AuthProfileError::SlugTaken)
    }

    /// Reuses a pending profile with a fresh link, unless the request is for another one (another
    /// slug, name or set of scopes: the pending profile's link would ask for what was not asked
    /// for), or the caller may not connect it: a team-wide one pending for someone else (only its
    /// creator, an owner or an admin may), whose link a fresh one would replace.
    async fn reuse(
        &self,
        pending: AuthProfile,
        request: &NewProfile,
        user: UserId,
        role: Role,
    ) -> Result<Created, AuthProfileError> {
        let (asked, held): (BTreeSet<&String>, BTreeSet<&String>) =
            (request.scopes.iter().collect(), pending.scopes.iter().collect());
        let another = request.slug.as_ref().is_some_and(|s| *s != pending.slug)
            || request.display_name != pending.display_name
            || asked != held;
        if another || may_connect(&pending, user, role).is_err() {
            return Err(AuthProfileError::PendingAuthConflict { slug: pending.slug.as_str().to_owned() });
        }
        let (profile, link) = self.mint_link(pending, user, false).await?;
        Ok(Created { profile, link: Some(link), created: false })
    }

    /// Mints a connect link for `profile`; returns the link and the profile as the store now
    /// keeps it (a pending one lives at least as long as the link: [`AuthProfile::outliving`]).
    pub(super) async fn mint_link(
        &self,
        profile: AuthProfile,
        user: UserId,
        allow_account_change: bool,
    ) -> Result<(AuthProfile, ConnectLink), AuthProfileError> {
        let (token, link) = self.new_link(&profile, user, allow_account_change);
        if !self.store.mint_connect_token(&token).await? {
            return Err(AuthProfileError::ProfileNotFound);
        }
        Ok((profile.outliving(link.expires_at), link))
    }

    /// A new connect link for `profile`, opened by `user` only, and what is stored of it.
    fn new_link(&self, profile: &AuthProfile, user: UserId, allow_account_change: bool) -> (ConnectToken, ConnectLink) {
        let token = random_secret();
        let now = super::now();
        let expires_at = now + CONNECT_LINK_TTL;
        let stored = ConnectToken {
            token_hash: sha256(token.expose_secret().as_bytes()),
            profile: profile.id,
            user,
            allow_account_change,
            created_at: now,
            expires_at,
        };
        let (auth_type, path) = match profile.profile_kind {
            ProfileKind::Env => (LinkType::EnvKeys, "env"),
            _ => (LinkType::OAuth, "oauth/start"),
        };
        let url = format!("{}/connect/{}/{path}", self.flows.public_url(), token.expose_secret());
        (stored, ConnectLink { url: SecretString::from(url), expires_at, auth_type })
    }

    /// The configured provider of a stored profile: `ProviderNotConfigured` when it was taken out
    /// of the configuration since.
    pub(super) fn provider_of(&self, profile: &AuthProfile) -> Result<Arc<dyn Provider>, AuthProfileError> {
        self.flows
            .providers()
            .get(Some(&profile.provider))
            .cloned()
            .ok_or_else(|| AuthProfileError::ProviderNotConfigured(profile.provider.clone()))
    }

    /// A fresh connect link for a profile (to reconnect an active one, or after `needs_reauth`).
    /// A team-wide profile is reconnected only by its creator or a team owner or admin: its account
    /// is what every backend of the team uses.
    pub async fn connect_link(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
        allow_account_change: bool,
    ) -> Result<(AuthProfile, ConnectLink), AuthProfileError> {
        let (profile, role) = self.usable(team, user, named).await?;
        match profile.profile_kind {
            ProfileKind::OauthAccount | ProfileKind::OauthApp | ProfileKind::Env => {}
            ProfileKind::BrowserSession => return Err(AuthProfileError::NoConnectLink),
            ProfileKind::Interactive => return Err(AuthProfileError::InteractiveHasNoLink),
        }
        may_connect(&profile, user, role)?;
        // A link to a provider taken out of the configuration could never be completed.
        if profile.profile_kind.is_oauth() {
            self.provider_of(&profile)?;
        }
        self.mint_link(profile, user, allow_account_change).await
    }

    /// The profiles of a team the caller may see: the team's, and the caller's own personal ones.
    pub async fn list(&self, team: &TeamRef, user: UserId) -> Result<Vec<AuthProfile>, AuthProfileError> {
        let (team, _) = self.membership(team, user).await?;
        Ok(self.store.team_profiles(team.id, user).await?)
    }

    /// The live profiles `user` made, in every team they are a member of (their account page's
    /// "connected accounts"), oldest first.
    pub async fn made_by(&self, user: UserId) -> Result<Vec<AuthProfile>, AuthProfileError> {
        Ok(self.store.profiles_made_by(user).await?)
    }

    /// One profile.
    pub async fn get(&self, team: &TeamRef, user: UserId, named: &ProfileRef) -> Result<AuthProfile, AuthProfileError> {
        Ok(self.usable(team, user, named).await?.0)
    }

    /// Revokes a profile — the owner of a personal one, or a team owner or admin — and revokes
    /// its tokens at the provider where it offers a way to, on a best-effort basis.
    /// `x_request_id` (the HTTP request's id) goes in the audit row.
    pub async fn revoke(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
        x_request_id: Option<&str>,
    ) -> Result<(), AuthProfileError> {
        let (team_record, role) = self.membership(team, user).await?;
        let profile = self.live_profile(team_record.id, named).await?;
        if !profile.profile_kind.allows(ProfileRight::Manage, profile.created_by == user, role) {
            return Err(AuthProfileError::refused(profile.profile_kind));
        }
        // Checked again in the write, against a removal or demotion that lands meanwhile.
        let secrets = match self.store.revoke_profile(profile.id, Some(user), super::now(), x_request_id).await? {
            Revocation::Revoked(secrets) => secrets,
            Revocation::NotFound => return Err(AuthProfileError::ProfileNotFound),
            Revocation::Refused => return Err(AuthProfileError::refused(profile.profile_kind)),
        };
        tracing::info!(profile_id = %profile.id, "revoked an auth profile");
        // At the provider in a task of its own: a client that hangs up once the revocation is
        // committed (a double click drops the first request) must not leave the grant live there.
        let this = self.clone();
        crate::run_to_end(async move { this.revoke_upstream(&profile, &secrets).await }).await;
        Ok(())
    }

    /// Revokes at the provider, best effort, tokens no one is to have (a refresh's for a profile
    /// revoked while it ran, a refused connection's): the refresh token when there is one (which
    /// ends the grant), else the access token — unless a connected profile other than `except`
    /// holds a grant of the same provider `account`, which a provider that revokes per grant
    /// would end too.
    ///
    /// `provider_name` names the provider; `profile` is the profile the tokens were for (logged only:
    /// its row may be gone).
    async fn revoke_new_tokens(
        &self,
        provider_name: &str,
        profile: ProfileId,
        tokens: &TokenSet,
        account: Option<&str>,
        except: Option<ProfileId>,
    ) {
        let Some(provider) = self.flows.providers().get(Some(provider_name)) else {
            return;
        };
        // A provider that revokes one token at a time (GitHub's application API) ends no other.
        if let Some(account) = account
            && !provider.revokes_by_access_token()
            && self.account_in_use(provider_name, account, except).await
        {
            tracing::info!(profile_id = %profile, "not revoked at the provider: a profile holds the same account's grant");
            return;
        }
        let (token, kind) = match &tokens.refresh_token {
            Some(refresh) if !provider.revokes_by_access_token() => (refresh, TokenKind::Refresh),
            _ => (&tokens.access_token, TokenKind::Access),
        };
        if let Err(error) = provider.revoke(token.expose_secret(), kind).await {
            tracing::warn!(profile_id = %profile, error = %error.chain(), "cannot revoke the token at the provider");
        }
    }

    /// [`AuthProfiles::revoke_new_tokens`] for a refresh's tokens that `profile` (as read before
    /// the refresh) is not to have: revoked, or reconnected to another account, meanwhile.
    /// Revokes what a refresh of `profile` brought, the tokens of `account` (the one the refresh
    /// was made for: the profile's when its lease was taken).
    async fn revoke_refreshed(&self, profile: &AuthProfile, account: Option<&str>, tokens: &TokenSet) {
        self.revoke_new_tokens(&profile.provider, profile.id, tokens, account, Some(profile.id)).await;
    }

    /// Whether another connected profile holds a grant of `account` at `provider` (see
    /// [`Store::account_in_use`]); a store that cannot answer counts as yes: a token left live
    /// at the provider is the lesser harm.
    async fn account_in_use(&self, provider: &str, account: &str, except: Option<ProfileId>) -> bool {
        self.store.account_in_use(provider, account, except).await.unwrap_or(true)
    }

    async fn revoke_upstream(&self, profile: &AuthProfile, secrets: &ProfileSecrets) {
        let Some(keyring) = &self.keyring else { return };
        let Some(provider) = self.flows.providers().get(Some(&profile.provider)) else {
            // Its grant stays live there: said, for the operator to end it by hand.
            if secrets.refresh_token.is_some() || secrets.access_token.is_some() {
                tracing::warn!(profile_id = %profile.id, "not revoked at the provider: it is no longer configured");
            }
            return;
        };
        // Another profile of the same account (a mailbox and a calendar through one client): a
        // provider that revokes per grant would end it too. The account the tokens are for, read
        // with them in the revoking transaction: a reconnection to another account that landed
        // after the profile was read is the one judged.
        if let Some(account) = &secrets.upstream_account_id
            && !provider.revokes_by_access_token()
            && self.account_in_use(&profile.provider, account, Some(profile.id)).await
        {
            tracing::info!(profile_id = %profile.id, "not revoked at the provider: another profile holds the same account's grant");
            return;
        }
        let refresh = secrets.refresh_token.as_ref().filter(|_| !provider.revokes_by_access_token());
        let token = refresh
            .map(|ct| (ct, TokenKind::Refresh))
            .or(secrets.access_token.as_ref().map(|ct| (ct, TokenKind::Access)));
        let Some((ciphertext, kind)) = token else {
            return;
        };
        // The columns are named as the hints are.
        let column = kind.hint();
        let aad = StoredSecret::aad(SecretKind::AuthProfiles, profile.id.as_uuid(), column);
        let Ok(plaintext) = keyring.decrypt(ciphertext, &aad) else {
            tracing::warn!(profile_id = %profile.id, "cannot decrypt the token to revoke at the provider");
            return;
        };
        let token = String::from_utf8_lossy(&plaintext).into_owned();
        match provider.revoke(&token, kind).await {
            Ok(true) => tracing::debug!(profile_id = %profile.id, "revoked the token at the provider"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(profile_id = %profile.id, error = %error.chain(), "cannot revoke the token at the provider")
            }
        }
    }

    /// The checks of an OAuth connect link, without using it up: it is live, the signed-in
    /// user's, for an OAuth profile they may still connect, with a configured provider.
    async fn oauth_link(
        &self,
        hash: &[u8; 32],
        current_user: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<(ConnectToken, AuthProfile, Arc<dyn Provider>), AuthProfileError> {
        let link = self.store.connect_token(hash, now).await?.ok_or(AuthProfileError::InvalidConnectLink)?;
        // Checked before consuming: a link opened by the wrong browser stays usable by its owner.
        match current_user {
            None => return Err(AuthProfileError::NotSignedIn),
            Some(user) if user != link.user => return Err(AuthProfileError::WrongUser),
            Some(_) => {}
        }
        let profile = self.connectable(link.profile, link.user).await?;
        // An env profile's link opens its form, not a provider.
        if !profile.profile_kind.is_oauth() {
            return Err(AuthProfileError::InvalidConnectLink);
        }
        let provider = self.provider_of(&profile)?;
        Ok((link, profile, provider))
    }

    /// What people call a connector: its declared label, else its key.
    pub fn connector_label(&self, key: &str) -> String {
        self.connectors.iter().find(|c| c.key == key).map_or_else(|| key.to_owned(), |c| c.label.clone())
    }

    /// What the start page of an OAuth connect link shows, after the checks of [`Self::start`];
    /// the link is not used up.
    pub async fn connect_preview(
        &self,
        token: &str,
        current_user: Option<UserId>,
    ) -> Result<ConnectPreview, AuthProfileError> {
        let hash = sha256(token.as_bytes());
        let (link, profile, provider) = self.oauth_link(&hash, current_user, super::now()).await?;
        let (team, _) = self.teams.role_of(&TeamRef::Id(profile.team_id), link.user).await?;
        let connector_label = self.connector_label(&profile.connector_key);
        // What the flow asks for (see `start`): the profile's scopes with those the provider
        // needs beside them, else the provider's own.
        let scopes = provider.config().asked_scopes(Some(&profile.scopes));
        Ok(ConnectPreview {
            connector_label,
            scopes,
            team,
            replaces_account: profile.upstream_account_id.is_some() && link.allow_account_change,
            profile,
        })
    }

    /// Opens a connect link: checks it is the signed-in user's and that they may still connect
    /// the profile, starts the flow, and then consumes the link (a failure to start leaves it
    /// usable; of two concurrent openings one gets it).
    /// The same form posted again by the browser of `session` within [`KEPT`](super::answers::KEPT) (a double click,
    /// whose first response the browser drops) gets the first answer on this instance: the same
    /// flow, not the used-up link.
    pub async fn start(&self, token: &str, user: UserId, session: &[u8; 32]) -> Result<Started, AuthProfileError> {
        let hash = sha256(token.as_bytes());
        let this = self.clone();
        let work = move || async move { this.start_once(&hash, user).await };
        self.started.answer(&hash, session, work).await
    }

    async fn start_once(&self, hash: &[u8; 32], user: UserId) -> Result<Started, AuthProfileError> {
        let now = super::now();
        let (link, profile, provider) = self.oauth_link(hash, Some(user), now).await?;
        let provider = &provider;
        let purpose = Purpose::Connect {
            user: link.user,
            profile: profile.id,
            version: profile.version,
            allow_account_change: link.allow_account_change,
        };
        let scopes = (!profile.scopes.is_empty()).then_some(profile.scopes.as_slice());
        let started = self.flows.begin(provider, &ReturnTo::root(), purpose, scopes, false).await?;
        // The flow's state is unusable without the redirect this returns, so losing the race here
        // leaves nothing behind that works (the state row expires).
        // The profile stays while the flow may still come back: the state lives FLOW_TTL from its
        // start (just now), and the callback's token exchange runs after it is used.
        // Taken as of now, not of the request's start: starting the flow may have waited on the
        // provider's discovery document past the link's expiry.
        let taken_at = super::now();
        let keep_until = taken_at + FLOW_TTL + CALLBACK_GRACE;
        self.store.take_connect_token(hash, taken_at, keep_until).await?.ok_or(AuthProfileError::InvalidConnectLink)?;
        Ok(started)
    }

    /// Refused with [`AuthProfileError::UserDisabled`] when `user` is disabled: why a write that
    /// checks the member's standing under its lock refused them, if that was it.
    pub(super) async fn not_disabled(&self, user: UserId) -> Result<(), AuthProfileError> {
        match self.store.get_user(user).await? {
            Some(found) if found.disabled => Err(AuthProfileError::UserDisabled),
            _ => Ok(()),
        }
    }

    /// A live profile that `user` may (still) connect: they are a member of its team and pass
    /// [`may_connect`]. Anything else makes the link or flow invalid.
    pub(super) async fn connectable(&self, profile: ProfileId, user: UserId) -> Result<AuthProfile, AuthProfileError> {
        let profile = self.store.profile(profile).await?.ok_or(AuthProfileError::InvalidConnectLink)?;
        if profile.status == ProfileStatus::Revoked {
            return Err(AuthProfileError::InvalidConnectLink);
        }
        let (_, role) = self.teams.role_of(&TeamRef::Id(profile.team_id), user).await?;
        let role = role.ok_or(AuthProfileError::InvalidConnectLink)?;
        may_connect(&profile, user, role)?;
        Ok(profile)
    }

    /// Completes a finished connect flow: stores the credentials and activates the profile.
    /// `x_request_id` (the HTTP request's id) goes in the audit row.
    pub async fn complete(
        &self,
        finished: Finished,
        current_user: Option<UserId>,
        x_request_id: Option<&str>,
    ) -> Result<AuthProfile, AuthProfileError> {
        let (target, tokens) = match &finished.purpose {
            Purpose::Connect { profile, .. } => (Some(*profile), Some(finished.tokens.clone())),
            _ => (None, None),
        };
        let account = finished.subject.as_str().to_owned();
        // The provider the tokens are from, known without the profile's row: a team deleted
        // meanwhile takes that row with it, and its tokens must not stay live at the provider.
        let provider = finished.provider.name().to_owned();
        let completed = self.activate_finished(finished, current_user, x_request_id).await;
        // The code was exchanged already: tokens a refused connection leaves are no one's to
        // have, so they are revoked at the provider (best effort), not left live there. Only on
        // a definite refusal: a store failure may hide an activation that committed.
        if let (Err(error), Some(id), Some(tokens)) = (&completed, target, tokens)
            && matches!(
                error,
                AuthProfileError::WrongUser
                    | AuthProfileError::SignedOutMeanwhile
                    | AuthProfileError::AccountMismatch
                    | AuthProfileError::ConnectConflict
                    | AuthProfileError::InvalidConnectLink
                    | AuthProfileError::ProfileNotFound
                    | AuthProfileError::NotProfileOwner
                    | AuthProfileError::NotAdmin
                    | AuthProfileError::UserDisabled
                    | AuthProfileError::TeamNotFound
            )
        {
            // The same account may have been connected meanwhile (the flow of another tab,
            // which won): that profile counts too.
            self.revoke_new_tokens(&provider, id, &tokens, Some(&account), None).await;
        }
        completed
    }

    async fn activate_finished(
        &self,
        finished: Finished,
        current_user: Option<UserId>,
        x_request_id: Option<&str>,
    ) -> Result<AuthProfile, AuthProfileError> {
        let Purpose::Connect { user, profile, version, allow_account_change } = finished.purpose else {
            return Err(FlowError::InvalidState("this flow does not connect an account").into());
        };
        match current_user {
            None => return Err(AuthProfileError::SignedOutMeanwhile),
            Some(current) if current != user => return Err(AuthProfileError::WrongUser),
            Some(_) => {}
        }
        let keyring = self.keyring.as_ref().ok_or(AuthProfileError::EncryptionNotConfigured)?;
        let current = self.connectable(profile, user).await?;
        let account = finished.info.account_id;
        if current.upstream_account_id.as_ref().is_some_and(|connected| *connected != account) && !allow_account_change
        {
            return Err(AuthProfileError::AccountMismatch);
        }
        let (access_token, refresh_token) = encrypt_tokens(keyring, profile, &finished.tokens);
        // A token answer that names no scopes granted what was asked.
        let granted = granted_scopes(&finished.tokens);
        let scopes = match granted.is_empty() {
            true => finished.provider.config().asked_scopes(Some(&current.scopes)),
            false => granted,
        };
        let activation = Activation {
            by: user,
            access_token,
            refresh_token,
            expires_at: finished.tokens.expires_at,
            upstream_account_id: account,
            scopes,
            now: super::now(),
            request_id: x_request_id.map(str::to_owned),
        };
        let Some(activated) = self.store.activate_profile(profile, version, &activation).await? else {
            // Refused because the member lost the right meanwhile (removed, demoted, disabled),
            // or because the profile changed: say which.
            self.not_disabled(user).await?;
            self.connectable(profile, user).await?;
            return Err(AuthProfileError::ConnectConflict);
        };
        tracing::info!(profile_id = %profile, "connected an auth profile");
        // The grant of the account it held, when it moved to another, is revoked at the
        // provider, as a revocation revokes it: no profile holds it now. (The same account's is
        // not: a provider that revokes per grant would end the new tokens too.)
        if let Some(old) = activated.replaced {
            self.revoke_upstream(&current, &old).await;
        }
        self.store.profile(profile).await?.ok_or(AuthProfileError::InvalidConnectLink)
    }

    /// A valid access token of a profile, refreshed first when it expires within five minutes.
    pub async fn access_token(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
    ) -> Result<AccessToken, AuthProfileError> {
        let (profile, _) = self.usable(team, user, named).await?;
        self.access_token_of(profile).await
    }

    /// [`access_token`](Self::access_token) of a profile the caller was already allowed to use.
    pub(crate) async fn access_token_of(&self, profile: AuthProfile) -> Result<AccessToken, AuthProfileError> {
        if !profile.profile_kind.is_oauth() {
            return Err(AuthProfileError::NotOAuth(profile.profile_kind.as_str()));
        }
        let keyring = self.keyring.clone().ok_or(AuthProfileError::EncryptionNotConfigured)?;
        if let Some(token) = self.fresh_token(&keyring, profile.id).await? {
            return Ok(token);
        }
        // Counted from the request's arrival: a request queued behind others of this process
        // that each waited for another instance's lease does not wait its own 10 s in turn.
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        // In its own task: if this request is dropped mid-refresh (the client hangs up, a
        // timeout fires), the refresh still stores what the provider answered, rotated refresh
        // token included.
        let this = self.clone();
        let (ring, id) = (keyring.clone(), profile.id);
        let refresh = crate::run_to_end(async move { this.single_flight_refresh(&ring, &profile, deadline).await });
        tokio::pin!(refresh);
        // Only when the runtime shuts down.
        let shut_down = || Err(AuthProfileError::RefreshInProgress);
        match tokio::time::timeout(IN_PLACE_WAIT, &mut refresh).await {
            Ok(done) => done.unwrap_or_else(shut_down),
            // A slow provider (or one that does not answer): the stored token, while it has time
            // left, rather than a wait of up to the call's limit; the refresh goes on in its task
            // and stores what the provider answers, rotated refresh token included. Anything else
            // (a row revoked or changed meanwhile, a database that fails, when the refresh would
            // hand out its answer unstored) is the refresh's own answer to judge.
            Err(_) => match self.stored(&keyring, id).await {
                Ok(Some(token)) => Ok(token),
                _ => refresh.await.unwrap_or_else(shut_down),
            },
        }
    }

    /// Refreshes a profile's token, one task at a time per profile in this process; waits for
    /// another instance's refresh until `deadline`.
    async fn single_flight_refresh(
        &self,
        keyring: &KeyRing,
        profile: &AuthProfile,
        deadline: tokio::time::Instant,
    ) -> Result<AccessToken, AuthProfileError> {
        // One refresh at a time per profile in this process; the others wait and re-read.
        let gate = {
            let mut gates = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
            gates.entry(profile.id).or_default().clone()
        };
        // Owned guards: this request's clone of the gate can be given back (`let_go`) whatever
        // it holds.
        let (turn, waited_since) = match gate.clone().try_lock_owned() {
            Ok(turn) => (turn, None),
            Err(_) => {
                metrics::counter!(TOKEN_REFRESH_WAITS_TOTAL, "scope" => "process").increment(1);
                let since = tokio::time::Instant::now();
                match tokio::time::timeout_at(deadline, gate.clone().lock_owned()).await {
                    Ok(turn) => (turn, Some(since)),
                    // The refresh under way here outlasts the wait (a slow provider, a busy
                    // database storing it): answered as when another instance's does.
                    Err(_) => {
                        self.let_go(profile.id, gate);
                        return self.stored_or(keyring, profile, AuthProfileError::RefreshInProgress).await;
                    }
                }
            }
        };
        // A refresh the provider failed while this one waited for it answers for it too: the
        // provider is asked once, not once per waiting request in turn (each up to the call's
        // time limit).
        // Only the provider's failure is shared (see `note_refresh`): another (the store's,
        // another instance's lease held too long) is each waiter's to meet for itself.
        let outcome = match (self.failed_at(profile.id), waited_since) {
            (Some(failed), Some(since)) if failed >= since => {
                let failed = ProviderError::Unavailable(
                    "a refresh of this connection failed just now; try again shortly".into(),
                );
                self.stored_or(keyring, profile, failed.into()).await
            }
            _ => self.refresh(keyring, profile, deadline).await,
        };
        drop(turn);
        self.let_go(profile.id, gate);
        outcome
    }

    /// When this process's last refresh of a profile failed at the provider, within
    /// [`REFRESH_FAILURE_BACKOFF`].
    fn failed_at(&self, id: ProfileId) -> Option<tokio::time::Instant> {
        let failed = self.failed_refreshes.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied();
        failed.filter(|at| at.elapsed() < REFRESH_FAILURE_BACKOFF)
    }

    /// Notes how a provider's refresh call went: a failure is kept for
    /// [`failed_at`](Self::failed_at) (those older than the back-off are dropped then, so that
    /// the map holds only profiles failing now), anything else forgets it.
    fn note_refresh(&self, id: ProfileId, provider_failed: bool) {
        let mut failed = self.failed_refreshes.lock().unwrap_or_else(|p| p.into_inner());
        if provider_failed {
            failed.retain(|_, at| at.elapsed() < REFRESH_FAILURE_BACKOFF);
            failed.insert(id, tokio::time::Instant::now());
        } else {
            failed.remove(&id);
        }
    }

    /// Drops this request's hold on a profile's refresh gate, forgetting the gate once nobody
    /// else holds it (under the map's lock, which every new holder takes), so that the map does
    /// not grow with every profile.
    fn let_go(&self, id: ProfileId, gate: Arc<RefreshGate>) {
        let mut gates = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        drop(gate);
        if gates.get(&id).is_some_and(|held| Arc::strong_count(held) == 1) {
            gates.remove(&id);
        }
    }

    /// What a request gets whose refresh it waited for failed or outlasted its wait: the row as
    /// it is now, if its token has time left to hand out (or was refreshed by another instance),
    /// else `otherwise`.
    async fn stored_or(
        &self,
        keyring: &KeyRing,
        profile: &AuthProfile,
        otherwise: AuthProfileError,
    ) -> Result<AccessToken, AuthProfileError> {
        self.stored(keyring, profile.id).await?.ok_or(otherwise)
    }

    /// The stored token of an active profile, if it has time left to hand out ([`in_place`]).
    async fn stored(&self, keyring: &KeyRing, id: ProfileId) -> Result<Option<AccessToken>, AuthProfileError> {
        let secrets = self.store.profile_secrets(id).await?.ok_or(AuthProfileError::ProfileNotFound)?;
        check_status(secrets.status)?;
        Ok(in_place(keyring, id, &secrets))
    }

    /// The stored token when it does not need a refresh; or, while a refresh of it failed at the
    /// provider within [`REFRESH_FAILURE_BACKOFF`], when it has time left to hand out: the
    /// provider (down, or answering errors) is not asked again by every request meanwhile, each
    /// waiting for its timeout before getting this same token.
    async fn fresh_token(&self, keyring: &KeyRing, id: ProfileId) -> Result<Option<AccessToken>, AuthProfileError> {
        let secrets = self.store.profile_secrets(id).await?.ok_or(AuthProfileError::ProfileNotFound)?;
        check_status(secrets.status)?;
        if !needs_refresh(&secrets, super::now()) {
            return Ok(Some(stored_token(keyring, id, &secrets)?));
        }
        Ok(self.failed_at(id).and_then(|_| in_place(keyring, id, &secrets)))
    }

    /// Refreshes under the row's lease, or waits for whoever holds it until `deadline` (once
    /// past it, the lease is still tried once).
    async fn refresh(
        &self,
        keyring: &KeyRing,
        profile: &AuthProfile,
        deadline: tokio::time::Instant,
    ) -> Result<AccessToken, AuthProfileError> {
        let mut waited = false;
        loop {
            let secrets = self.store.profile_secrets(profile.id).await?.ok_or(AuthProfileError::ProfileNotFound)?;
            check_status(secrets.status)?;
            let now = super::now();
            if !needs_refresh(&secrets, now) {
                return stored_token(keyring, profile.id, &secrets);
            }
            let still_valid = secrets.expires_at.is_some_and(|at| at > now);
            let Some(refresh_ciphertext) = secrets.refresh_token.as_deref() else {
                // Nothing to refresh with: hand out what is left, or ask for a reconnection — and
                // say so in its status, as a refused refresh does, so that listings, the account
                // page and the choice of a connector's credentials see it too.
                if still_valid {
                    return stored_token(keyring, profile.id, &secrets);
                }
                let reason = crate::domain::events::ReauthReason::ExpiredWithoutRefresh;
                if !self.store.mark_needs_reauth(profile.id, secrets.version, reason, now).await? {
                    // The row changed meanwhile (a reconnection, say): read it again.
                    continue;
                }
                tracing::info!(profile_id = %profile.id, "a token expired without a refresh token; the profile needs a reconnection");
                return Err(AuthProfileError::NeedsReauth);
            };
            let owner = uuid::Uuid::new_v4();
            let lease = RefreshLease { owner, until: now + LEASE, now };
            if self.store.acquire_refresh_lease(profile.id, secrets.version, &lease).await? {
                return self.refresh_with_lease(keyring, profile, &lease, refresh_ciphertext, &secrets).await;
            }
            // Another process holds the lease (or just refreshed): wait for the row to change.
            if !std::mem::replace(&mut waited, true) {
                metrics::counter!(TOKEN_REFRESH_WAITS_TOTAL, "scope" => "lease").increment(1);
            }
            if tokio::time::Instant::now() >= deadline {
                if serves_in_place(&secrets, super::now()) {
                    return stored_token(keyring, profile.id, &secrets);
                }
                return Err(AuthProfileError::RefreshInProgress);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Refreshes while holding the lease, and lets go of it whatever happens.
    async fn refresh_with_lease(
        &self,
        keyring: &KeyRing,
        profile: &AuthProfile,
        lease: &RefreshLease,
        refresh_ciphertext: &[u8],
        before: &ProfileSecrets,
    ) -> Result<AccessToken, AuthProfileError> {
        let owner = lease.owner;
        let limit = provider_call_limit(lease, super::now());
        let error = match self.call_refresh(keyring, profile, refresh_ciphertext, limit).await {
            Ok(tokens) => {
                let (access_token, rotated) = encrypt_tokens(keyring, profile.id, &tokens);
                let refreshed = Refreshed {
                    access_token,
                    refresh_token: rotated,
                    expires_at: tokens.expires_at,
                    // A refresh answer without `scope` grants what was granted before (RFC 6749 §5.1).
                    granted_scopes: Some(granted_scopes(&tokens)).filter(|granted| !granted.is_empty()),
                    now: super::now(),
                };
                // The refresh bumps the version the lease was taken at, by one.
                let mut version = Some(before.version + 1);
                match self.store_refresh(profile.id, lease, &refreshed).await {
                    Ok(true) => {}
                    // The lease is gone: it ran out and someone else refreshed (theirs is as
                    // good), an attempt that reported a failure had committed, or the profile was
                    // revoked (or deleted) meanwhile — then its new tokens are no one's to have.
                    Ok(false) => {
                        version = None;
                        // A reconnection of the same account that brought no refresh token kept
                        // the one this refresh spent, which a provider that rotates has revoked:
                        // the rotated one takes its place.
                        if let Some(rotated) = &refreshed.refresh_token {
                            match self
                                .store
                                .replace_spent_refresh_token(profile.id, refresh_ciphertext, rotated, super::now())
                                .await
                            {
                                Ok(true) => {
                                    tracing::info!(profile_id = %profile.id, "a refresh outlived its lease; kept its rotated refresh token")
                                }
                                Ok(false) => {}
                                Err(error) => {
                                    tracing::warn!(profile_id = %profile.id, error = %error.chain(), "cannot keep a rotated refresh token")
                                }
                            }
                        }
                        let now = self.store.profile_secrets(profile.id).await;
                        // The account the refreshed tokens are for is the one the lease was taken
                        // on (`before`), not the profile as this request first read it.
                        let refreshed_for = before.upstream_account_id.as_deref();
                        let reconnected =
                            |current: &ProfileSecrets| current.upstream_account_id.as_deref() != refreshed_for;
                        // Reconnected to another account meanwhile: the old account's new tokens
                        // are no one's, whatever the row hands out (a reconnection has just stored
                        // a fresh token, which the arm below returns first).
                        if let Ok(Some(current)) = &now
                            && reconnected(current)
                            && current.status != ProfileStatus::Revoked
                        {
                            self.revoke_refreshed(profile, refreshed_for, &tokens).await;
                        }
                        match now {
                            Ok(now) if now.as_ref().is_none_or(|s| s.status == ProfileStatus::Revoked) => {
                                self.revoke_refreshed(profile, refreshed_for, &tokens).await;
                                return Err(AuthProfileError::ProfileNotFound);
                            }
                            // What the row holds now wins: another refresh's token (as good as
                            // this one), or a reconnection's — perhaps of another account, which
                            // this caller must get rather than the old grant's.
                            Ok(Some(current)) if let Some(token) = in_place(keyring, profile.id, &current) => {
                                tracing::warn!(profile_id = %profile.id, "a refresh outlived its lease; handing out the stored token");
                                return Ok(token);
                            }
                            // A row that needs a reconnection now (a widened scope, say) hands
                            // out nothing; one reconnected to another account hands out that
                            // account's token, however near its end — never the old grant's.
                            Ok(Some(current)) if current.status != ProfileStatus::Active => {
                                tracing::warn!(profile_id = %profile.id, "a refresh outlived its lease; the profile changed meanwhile");
                                check_status(current.status)?;
                            }
                            Ok(Some(current)) if reconnected(&current) => {
                                tracing::warn!(profile_id = %profile.id, "a refresh outlived its lease; the profile was reconnected to another account");
                                return stored_token(keyring, profile.id, &current);
                            }
                            Ok(_) => tracing::warn!(profile_id = %profile.id, "a refresh outlived its lease"),
                            // Not known to be revoked: the token is good, and this caller gets it
                            // rather than an error that would throw it away.
                            Err(error) => tracing::warn!(profile_id = %profile.id, error = %error.chain(),
                                "a refresh outlived its lease; cannot tell whether its profile was revoked"),
                        }
                    }
                    Err(error) => {
                        // The new access token is good whether or not it is stored: this caller
                        // gets it. The next use refreshes again with the stored refresh token,
                        // which a provider that rotates has revoked (the profile then needs a
                        // reconnection, as it would without this token).
                        tracing::error!(profile_id = %profile.id, error = %error.chain(), "cannot store a refreshed token; handing it out unstored");
                        self.release_lease(profile.id, owner).await;
                        version = None;
                    }
                }
                tracing::debug!(profile_id = %profile.id, rotated = tokens.refresh_token.is_some(), "refreshed a token");
                return Ok(AccessToken {
                    token: tokens.access_token,
                    expires_at: tokens.expires_at,
                    refreshed: true,
                    version,
                });
            }
            Err(error) => error,
        };
        let refused = matches!(error, AuthProfileError::NeedsReauth);
        if !refused {
            self.release_lease(profile.id, owner).await;
        } else if self.store.release_refresh_lease(profile.id, owner, Some(before.version), super::now()).await? {
            tracing::info!(profile_id = %profile.id, "the provider refused the refresh token; the profile needs a reconnection");
            return Err(error);
        } else {
            // The lease was lost, or the row moved on: a refresh that outlived its lease stored a
            // rotated refresh token, say, which is not the one refused. Not this call's to judge;
            // the row as it is now answers, or the next request refreshes with what it holds.
            tracing::warn!(profile_id = %profile.id, "the provider refused a refresh token the profile no longer holds");
        }
        // The row as it is now, not as it was before the call: a revocation or a reconnection
        // made while the provider was asked wins (a revoked profile's token is not handed out).
        let current = self.store.profile_secrets(profile.id).await;
        if let Ok(Some(current)) = &current
            && let Some(token) = in_place(keyring, profile.id, current)
        {
            tracing::warn!(profile_id = %profile.id, error = %error.chain(), "refresh failed; handing out the current token");
            return Ok(token);
        }
        // Revoked (or its team deleted) while the provider was asked (which may be why it
        // refused): the profile is gone, as the answer of a refresh that succeeded would say. Not
        // "try again".
        if let Ok(now) = &current
            && now.as_ref().is_none_or(|s| s.status == ProfileStatus::Revoked)
        {
            return Err(AuthProfileError::ProfileNotFound);
        }
        if refused {
            // One that needs a reconnection now says so.
            if let Ok(Some(now)) = current {
                check_status(now.status)?;
            }
            let moved = "the connection's refresh token changed while it was refreshed; try again";
            return Err(ProviderError::Unavailable(moved.into()).into());
        }
        Err(error)
    }

    /// Asks the provider for new tokens, within `limit`.
    async fn call_refresh(
        &self,
        keyring: &KeyRing,
        profile: &AuthProfile,
        refresh_ciphertext: &[u8],
        limit: Duration,
    ) -> Result<TokenSet, AuthProfileError> {
        let provider = self.provider_of(profile)?;
        let refresh_token = decrypt(keyring, profile.id, "refresh_token", Some(refresh_ciphertext))?;
        let called = tokio::time::timeout(limit, provider.refresh(refresh_token.expose_secret())).await;
        let outcome = match &called {
            Ok(Ok(_)) => "ok",
            Ok(Err(ProviderError::InvalidGrant)) => "invalid_grant",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        metrics::counter!(TOKEN_REFRESH_CALLS_TOTAL, "provider" => profile.provider.clone(), "outcome" => outcome)
            .increment(1);
        // A refused refresh token is the profile's, not the provider's failing.
        let provider_failed = !matches!(called, Ok(Ok(_) | Err(ProviderError::InvalidGrant)));
        self.note_refresh(profile.id, provider_failed);
        match called {
            Ok(Ok(tokens)) => Ok(tokens),
            Ok(Err(ProviderError::InvalidGrant)) => Err(AuthProfileError::NeedsReauth),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(ProviderError::Unavailable("the refresh did not finish in time".into()).into()),
        }
    }

    /// Stores a refresh's tokens, trying again with growing pauses while the database fails
    /// transiently and the lease has [`STORE_RETRY_MARGIN`] left beyond the pause: the provider
    /// may have rotated the refresh token (and revoked the old one), so losing the answer can
    /// cost the profile a reconnection. An attempt that ends after another process took the
    /// expired lease stores nothing (the owner no longer matches).
    async fn store_refresh(
        &self,
        profile: ProfileId,
        lease: &RefreshLease,
        refreshed: &Refreshed,
    ) -> Result<bool, StoreError> {
        super::retry_transient(
            || self.store.complete_refresh(profile, lease.owner, refreshed),
            |error, pause| {
                let again = super::now() + pause + STORE_RETRY_MARGIN < lease.until;
                if again {
                    tracing::warn!(profile_id = %profile, error = %error.chain(), "cannot store a refreshed token yet; trying again");
                }
                again
            },
        )
        .await
    }

    /// Releases a refresh lease on a path that already has an error to report; a failure here
    /// only delays the next refresh until the lease runs out.
    async fn release_lease(&self, profile: ProfileId, owner: uuid::Uuid) {
        if let Err(error) = self.store.release_refresh_lease(profile, owner, None, super::now()).await {
            tracing::warn!(profile_id = %profile, error = %error.chain(), "cannot release a refresh lease");
        }
    }

    /// Deletes expired pending profiles.
    pub async fn delete_expired_pending(&self) -> Result<u64, StoreError> {
        self.store.delete_expired_pending(None, super::now()).await
    }
}

impl AuthProfileError {
    /// The refusal of a right its caller lacks (or no longer has) on a profile of `kind`: a
    /// personal profile is its creator's alone, a team's needs a team owner or admin.
    pub(crate) fn refused(kind: ProfileKind) -> Self {
        if kind.is_personal() { AuthProfileError::NotProfileOwner } else { AuthProfileError::NotAdmin }
    }
}

/// What an access token must have left to be handed out in place of a refresh that could not
/// be made (another instance's still under way, or the provider failing): its `expires_at` is
/// counted from when the answer arrived, later than the provider's own clock started it, and the
/// caller needs time to use it.
const FALLBACK_MARGIN: TimeDelta = TimeDelta::seconds(30);

/// Whether the stored access token may be handed out in place of a refresh ([`FALLBACK_MARGIN`]).
fn serves_in_place(secrets: &ProfileSecrets, now: DateTime<Utc>) -> bool {
    secrets.expires_at.is_some_and(|at| at > now + FALLBACK_MARGIN)
}

/// The stored access token of an active profile, to hand out in place of a refresh that could
/// not be made or stored, when it has [`FALLBACK_MARGIN`] left.
fn in_place(keyring: &KeyRing, id: ProfileId, secrets: &ProfileSecrets) -> Option<AccessToken> {
    let usable = secrets.status == ProfileStatus::Active && serves_in_place(secrets, super::now());
    usable.then(|| stored_token(keyring, id, secrets).ok()).flatten()
}

/// Whether `user`, a member with `role`, may connect `profile` ([`ProfileKind::may_connect`]).
pub(crate) fn may_connect(profile: &AuthProfile, user: UserId, role: Role) -> Result<(), AuthProfileError> {
    profile.profile_kind.may_connect(profile.created_by == user, role).map_err(|refusal| match refusal {
        ConnectRefusal::NotCreator => AuthProfileError::NotProfileOwner,
        ConnectRefusal::NotAdmin => AuthProfileError::NotAdmin,
    })
}

/// The scopes a token response says were granted; GitHub separates them with commas.
fn granted_scopes(tokens: &TokenSet) -> Vec<String> {
    tokens
        .scopes
        .iter()
        .flat_map(|scope| scope.split(','))
        .filter(|scope| !scope.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether a stored access token is refreshed before it is handed out: when it expires within
/// [`REFRESH_WINDOW`], or within half its lifetime when that is shorter. A provider whose tokens
/// live five minutes or less (Keycloak's default) would otherwise have its fresh token look due at
/// once, and every use would refresh it again. A token stored before Tessera kept the time it
/// was stored (migration 20) has the plain window.
fn needs_refresh(secrets: &ProfileSecrets, now: DateTime<Utc>) -> bool {
    let Some(expires_at) = secrets.expires_at else { return false };
    let window = match secrets.stored_at {
        Some(stored_at) => REFRESH_WINDOW.min((expires_at - stored_at) / 2).max(TimeDelta::zero()),
        None => REFRESH_WINDOW,
    };
    expires_at - now <= window
}

pub(super) fn check_status(status: ProfileStatus) -> Result<(), AuthProfileError> {
    match status {
        ProfileStatus::Active => Ok(()),
        ProfileStatus::PendingAuth => Err(AuthProfileError::NotConnected),
        ProfileStatus::NeedsReauth => Err(AuthProfileError::NeedsReauth),
        ProfileStatus::Revoked => Err(AuthProfileError::ProfileNotFound),
    }
}

fn encrypt_tokens(keyring: &KeyRing, profile: ProfileId, tokens: &TokenSet) -> (Vec<u8>, Option<Vec<u8>>) {
    let aad = |column: &str| StoredSecret::aad(SecretKind::AuthProfiles, profile.as_uuid(), column);
    let access = keyring.encrypt(tokens.access_token.expose_secret().as_bytes(), &aad("access_token"));
    let refresh =
        tokens.refresh_token.as_ref().map(|t| keyring.encrypt(t.expose_secret().as_bytes(), &aad("refresh_token")));
    (access, refresh)
}

/// The access token `secrets` hold, as stored (this call refreshed nothing).
fn stored_token(keyring: &KeyRing, id: ProfileId, secrets: &ProfileSecrets) -> Result<AccessToken, AuthProfileError> {
    let token = decrypt(keyring, id, "access_token", secrets.access_token.as_deref())?;
    Ok(AccessToken { token, expires_at: secrets.expires_at, refreshed: false, version: Some(secrets.version) })
}

fn decrypt(
    keyring: &KeyRing,
    profile: ProfileId,
    column: &str,
    ciphertext: Option<&[u8]>,
) -> Result<SecretString, AuthProfileError> {
    let ciphertext = ciphertext.ok_or(AuthProfileError::NotConnected)?;
    let aad = StoredSecret::aad(SecretKind::AuthProfiles, profile.as_uuid(), column);
    let key_id = KeyRing::key_id_of(ciphertext).unwrap_or("none");
    let plaintext = keyring.decrypt(ciphertext, &aad).map_err(|error| {
        tracing::error!(profile_id = %profile, column, key_id, error = %error.chain(), "a stored credential does not decrypt");
        AuthProfileError::Undecryptable
    })?;
    String::from_utf8(plaintext).map(SecretString::from).map_err(|_| {
        tracing::error!(profile_id = %profile, column, key_id, "a stored token decrypts to no text");
        AuthProfileError::Undecryptable
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_does_not_decrypt_is_logged_with_the_ring_key_it_names() {
        use base64::Engine;
        let ring = |id: &str, byte: u8| {
            KeyRing::parse(&format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode([byte; 32]))).unwrap()
        };
        let profile = ProfileId::generate();
        let aad = StoredSecret::aad(SecretKind::AuthProfiles, profile.as_uuid(), "access_token");
        let sealed = ring("gone-key", 1).encrypt(b"a-token", &aad);
        // Another ring, and the same key id with other material: each refusal names the key.
        for reader in [ring("current", 2), ring("gone-key", 3)] {
            let logs = crate::telemetry::capture::capture();
            let refused = decrypt(&reader, profile, "access_token", Some(&sealed));
            assert!(matches!(refused, Err(AuthProfileError::Undecryptable)));
            let text = logs.text();
            assert!(text.contains("gone-key") && !text.contains("a-token"), "{text}");
        }
    }

    #[test]
    fn a_refresh_call_ends_in_time_to_store_its_answer_within_the_lease() {
        let now = crate::domain::now();
        let lease = |left: i64| RefreshLease { owner: uuid::Uuid::nil(), until: now + TimeDelta::seconds(left), now };
        assert_eq!(provider_call_limit(&lease(60), now), PROVIDER_CALL_LIMIT, "a lease just taken");
        // Taken after 45 s of waiting for a connection: 5 s for the call, 10 s to store.
        assert_eq!(provider_call_limit(&lease(15), now), Duration::from_secs(5));
        assert_eq!(provider_call_limit(&lease(8), now), Duration::ZERO);
        assert_eq!(provider_call_limit(&lease(-1), now), Duration::ZERO, "run out already");
        assert!(LEASE.to_std().unwrap() >= PROVIDER_CALL_LIMIT + STORE_RETRY_MARGIN);
    }
}
