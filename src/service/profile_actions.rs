//! Auth-profile actions beyond create, connect and token: updating a profile, the team's default
//! profile per connector and credentials by connector, and testing that a credential works.
//!
//! - An update changes the display name, slug and requested scopes with a compare-and-swap on the
//!   profile's `version`, so a connection completing meanwhile is never overwritten: the update
//!   reads the profile again and applies itself to what is there. Scopes that widen what the
//!   provider granted make an active profile `needs_reauth` and bump its version (a connect flow
//!   started before, asking for the old scopes, then cannot complete); the caller gets a fresh
//!   connect link. Narrowing keeps the status.
//! - A team-wide profile can be its connector's default in the team; the database keeps at most
//!   one per team and connector, and switching is one upsert. A personal profile cannot be the
//!   default; a revoked one stops being it.
//! - By connector, a backend gets the caller's own active personal profile, else the team's
//!   default when it is active.
//! - A test gets an access token the normal way (refreshing it if needed) and calls the
//!   provider's user endpoint with it. A token refused with 401 is refreshed once and tried again;
//!   the refresh refused (or impossible), the profile becomes `needs_reauth`. A fresh token the
//!   endpoint refuses too is reported, and the status kept: the provider just honoured the grant.
//! - An `env` profile of a connector with a `probe` is tested by sending the probe, filled with
//!   the profile's values, with the process's outbound client (no redirects, 10 s). Its status
//!   stays as it is whatever the answer: the values may be fine and the service down, and only
//!   the member can change them. Neither the values nor the filled request are logged or
//!   returned. Other `env` profiles and browser sessions cannot be tested.

use std::time::Duration;

use crate::config::ProbeFillError;
use crate::domain::{AuthProfile, ProfileKind, ProfileRef, ProfileRight, ProfileStatus, Slug, TeamRef, UserId};
use crate::error::{ErrorChain as _, ErrorCode, PublicError};
use crate::store::{DefaultOutcome, ProfileChange, ProfileUpdate, StoreError};
use crate::upstream::providers::ProviderError;

use super::auth_profiles::{AccessToken, AuthProfileError, AuthProfiles, ConnectLink, may_connect};
use super::profile_credentials::{Credential, EnvProblem};

/// How often an update is applied again after losing a compare-and-swap.
const UPDATE_ATTEMPTS: usize = 5;
/// How long the provider's user endpoint, or a connector's probe, may take to answer a test.
const TEST_CALL_LIMIT: Duration = Duration::from_secs(10);

/// Why a profile action failed.
#[derive(Debug, thiserror::Error)]
pub enum ProfileActionError {
    /// One of the auth-profile rules refused it.
    #[error(transparent)]
    Profile(#[from] AuthProfileError),
    /// The update names nothing to change.
    #[error("send at least one of `display_name`, `slug` and `scopes`")]
    NothingToUpdate,
    /// The profile kept changing under the update.
    #[error("the profile kept changing while it was being updated; send the update again")]
    Changed,
    /// A personal profile cannot be the team's default.
    #[error("a member's personal account cannot be the team's default; use a team-wide (oauth_app) profile")]
    PersonalNotDefault,
    /// A member (not owner or admin) tried to replace a default that is not theirs.
    #[error("the connector's default is another member's profile; a team owner or admin may replace it")]
    OthersDefault,
    /// Nothing serves the connector.
    #[error("{}", no_credential_detail(.connector_key, .default.as_ref()))]
    NoCredential {
        /// The connector asked for.
        connector_key: String,
        /// The team's default profile of the connector, when it exists but is not active.
        default: Option<(Slug, ProfileStatus)>,
    },
    /// Profiles of this kind cannot be tested yet, or the provider has no user endpoint.
    #[error("{0}")]
    TestNotSupported(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn no_credential_detail(connector_key: &str, default: Option<&(Slug, ProfileStatus)>) -> String {
    match default {
        Some((slug, status)) => format!(
            "you have no connected account for {connector_key:?}, and the team's default ({}) is {}: connect one",
            slug.as_str(),
            status.as_str()
        ),
        None => format!(
            "you have no connected account for {connector_key:?} and the team has no default for it: connect one"
        ),
    }
}

impl PublicError for ProfileActionError {
    fn code(&self) -> ErrorCode {
        match self {
            ProfileActionError::Profile(e) => e.code(),
            ProfileActionError::NothingToUpdate => ErrorCode::InvalidRequest,
            ProfileActionError::Changed => ErrorCode::ProfileChanged,
            ProfileActionError::PersonalNotDefault => ErrorCode::PersonalProfileNotDefault,
            ProfileActionError::OthersDefault => ErrorCode::NotTeamAdmin,
            ProfileActionError::NoCredential { .. } => ErrorCode::NoCredentialForConnector,
            ProfileActionError::TestNotSupported(_) => ErrorCode::TestNotSupported,
            ProfileActionError::Store(e) => e.code(),
        }
    }

    fn detail(&self) -> String {
        match self {
            ProfileActionError::Profile(e) => e.detail(),
            other => other.code().fixed_detail().map_or_else(|| other.to_string(), str::to_owned),
        }
    }

    fn extensions(&self) -> Vec<(&'static str, serde_json::Value)> {
        match self {
            ProfileActionError::Profile(e) => e.extensions(),
            ProfileActionError::NoCredential { default: Some((slug, status)), .. } => {
                vec![("default_slug", slug.as_str().into()), ("default_status", status.as_str().into())]
            }
            _ => Vec::new(),
        }
    }
}

impl From<ProviderError> for ProfileActionError {
    fn from(error: ProviderError) -> Self {
        ProfileActionError::Profile(error.into())
    }
}

/// What a caller asks to change (validated by the HTTP layer); `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct ProfilePatch {
    /// A new display name.
    pub display_name: Option<String>,
    /// A new slug.
    pub slug: Option<Slug>,
    /// New requested scopes (empty: the provider's own).
    pub scopes: Option<Vec<String>>,
}

impl ProfilePatch {
    /// Whether the patch names nothing to change.
    pub fn is_empty(&self) -> bool {
        self.display_name.is_none() && self.slug.is_none() && self.scopes.is_none()
    }
}

/// An updated profile.
#[derive(Debug, Clone)]
pub struct Updated {
    /// The profile as it is now.
    pub profile: AuthProfile,
    /// Whether the new scopes need a (re)connection before the profile serves them.
    pub reconnect_required: bool,
    /// A fresh connect link, when a reconnection is required.
    pub link: Option<ConnectLink>,
}

/// Where a credential by connector came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// The caller's own connected account.
    Personal,
    /// The team's default profile of the connector.
    TeamDefault,
}

/// A credential by connector.
#[derive(Debug)]
pub struct ConnectorCredential {
    /// The profile that serves it.
    pub profile: AuthProfile,
    /// Where it came from.
    pub source: CredentialSource,
    /// Its credential, whatever the kind (OAuth kinds: an access token, refreshed as for `/token`).
    pub credential: Credential,
}

/// Why a test failed, as a stable word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestFailure {
    /// The provider refused the token (401), also after a refresh.
    InvalidToken,
    /// The provider refused the refresh token.
    InvalidGrant,
    /// The token lacks a scope the endpoint needs (403).
    InsufficientScope,
    /// The provider answered another client error.
    Rejected,
    /// The provider answered a server error.
    ProviderError,
}

impl TestFailure {
    /// The serialised form.
    pub fn as_str(self) -> &'static str {
        match self {
            TestFailure::InvalidToken => "invalid_token",
            TestFailure::InvalidGrant => "invalid_grant",
            TestFailure::InsufficientScope => "insufficient_scope",
            TestFailure::Rejected => "rejected",
            TestFailure::ProviderError => "provider_error",
        }
    }

    fn of_status(status: u16) -> Self {
        match status {
            401 => TestFailure::InvalidToken,
            403 => TestFailure::InsufficientScope,
            500.. => TestFailure::ProviderError,
            _ => TestFailure::Rejected,
        }
    }
}

/// The outcome of a credential test. Never holds the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// Whether the credential works.
    pub ok: bool,
    /// The HTTP status of the provider's last answer, if it answered.
    pub status: Option<u16>,
    /// Why it does not work.
    pub error: Option<TestFailure>,
    /// Whether the token was refreshed during the test.
    pub refreshed: bool,
    /// The profile's status after the test.
    pub profile_status: ProfileStatus,
}

/// The profile actions, over the auth-profiles service.
#[derive(Debug, Clone, Copy)]
pub struct ProfileActions<'a> {
    profiles: &'a AuthProfiles,
}

impl<'a> ProfileActions<'a> {
    /// The actions of `profiles`.
    pub fn new(profiles: &'a AuthProfiles) -> Self {
        Self { profiles }
    }

    /// Updates a profile: its owner (personal), or its creator or a team owner or admin
    /// (team-wide). See the module documentation for scopes and concurrency.
    pub async fn update(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
        patch: ProfilePatch,
    ) -> Result<Updated, ProfileActionError> {
        if patch.is_empty() {
            return Err(ProfileActionError::NothingToUpdate);
        }
        let store = self.profiles.store();
        let (mut profile, role) = self.profiles.usable(team, user, named).await?;
        may_connect(&profile, user, role)?;
        let mut widened = None;
        for _ in 0..UPDATE_ATTEMPTS {
            let scopes = patch.scopes.clone().unwrap_or_else(|| profile.scopes.clone());
            let widens = patch.scopes.is_some() && profile.profile_kind.is_oauth() && widens(&profile, &scopes);
            // A widening needs a reconnection: refused before anything is written when the
            // provider was taken out of the configuration, since no link could complete it.
            if widens {
                self.profiles.provider_of(&profile)?;
            }
            // Only the fields the patch names: another update of other fields stays applied
            // (the version guards the scopes' comparison with what was granted).
            let change = ProfileChange {
                display_name: patch.display_name.as_deref(),
                slug: patch.slug.as_ref(),
                scopes: patch.scopes.is_some().then_some(scopes.as_slice()),
                by: user,
                widened: widens,
                now: super::now(),
            };
            match store.update_profile(profile.id, profile.version, &change).await? {
                ProfileUpdate::Updated => {
                    widened = Some(widens);
                    break;
                }
                ProfileUpdate::SlugTaken => return Err(AuthProfileError::SlugTaken.into()),
                // Removed from the team or demoted since the check above.
                ProfileUpdate::Refused => return Err(AuthProfileError::refused(profile.profile_kind).into()),
                // A connection completed, or another update won: apply this one to what is there.
                ProfileUpdate::Changed => {
                    profile = store
                        .profile(profile.id)
                        .await?
                        .filter(|p| p.status != ProfileStatus::Revoked)
                        .ok_or(AuthProfileError::ProfileNotFound)?;
                }
            }
        }
        let widened = widened.ok_or(ProfileActionError::Changed)?;
        tracing::info!(profile_id = %profile.id, widened, "updated an auth profile");
        // Read back by id: another update may have renamed it meanwhile (only the fields a
        // patch names are written), so the slug read before is not to be trusted.
        let profile = store.profile(profile.id).await?.ok_or(AuthProfileError::ProfileNotFound)?;
        if widened {
            // For this profile, by id: its slug may be another profile's by now.
            let (profile, link) = self.profiles.mint_link(profile, user, false).await?;
            return Ok(Updated { profile, reconnect_required: true, link: Some(link) });
        }
        Ok(Updated { profile, reconnect_required: false, link: None })
    }

    /// Makes a team-wide profile its connector's default in the team: a team owner or admin, or
    /// the profile's creator.
    pub async fn set_default(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
    ) -> Result<AuthProfile, ProfileActionError> {
        let profile = self.default_candidate(team, user, named).await?;
        match self.profiles.store().set_default_profile(profile.team_id, profile.id, user, super::now()).await? {
            DefaultOutcome::Set => {}
            DefaultOutcome::Refused => return Err(AuthProfileError::NotAdmin.into()),
            DefaultOutcome::NotFound => return Err(AuthProfileError::ProfileNotFound.into()),
            DefaultOutcome::Personal => return Err(ProfileActionError::PersonalNotDefault),
            DefaultOutcome::OthersDefault => return Err(ProfileActionError::OthersDefault),
        }
        tracing::info!(profile_id = %profile.id, team_id = %profile.team_id, "made an auth profile its connector's default");
        self.reread(&profile).await
    }

    /// Makes a profile no longer its connector's default (the same people as
    /// [`set_default`](Self::set_default)); idempotent.
    pub async fn clear_default(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
    ) -> Result<AuthProfile, ProfileActionError> {
        let profile = self.default_candidate(team, user, named).await?;
        match self.profiles.store().clear_default_profile(profile.team_id, profile.id, user).await? {
            Some(true) => {
                tracing::info!(profile_id = %profile.id, "an auth profile is no longer its connector's default")
            }
            Some(false) => {}
            None => return Err(AuthProfileError::NotAdmin.into()),
        }
        self.reread(&profile).await
    }

    /// The team-wide profile a default change names, when the caller may change its default
    /// ([`ProfileRight::Manage`]; the store checks again in the write, and a member who is not a
    /// team owner or admin may change only a default of their own profile).
    async fn default_candidate(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
    ) -> Result<AuthProfile, ProfileActionError> {
        let (profile, role) = self.profiles.usable(team, user, named).await?;
        if profile.profile_kind.is_personal() {
            return Err(ProfileActionError::PersonalNotDefault);
        }
        if !profile.profile_kind.allows(ProfileRight::Manage, profile.created_by == user, role) {
            return Err(AuthProfileError::NotAdmin.into());
        }
        Ok(profile)
    }

    async fn reread(&self, profile: &AuthProfile) -> Result<AuthProfile, ProfileActionError> {
        let profile = self.profiles.store().profile(profile.id).await?;
        Ok(profile.filter(|p| p.status != ProfileStatus::Revoked).ok_or(AuthProfileError::ProfileNotFound)?)
    }

    /// The profile that serves `connector_key` for `user`: their own active personal profile of
    /// the connector (the oldest, if several), else the team's default when it is active.
    pub async fn resolve_for_connector(
        &self,
        team: &TeamRef,
        user: UserId,
        connector_key: &str,
    ) -> Result<AuthProfile, ProfileActionError> {
        Ok(self.resolve(team, user, connector_key).await?.0)
    }

    async fn resolve(
        &self,
        team: &TeamRef,
        user: UserId,
        connector_key: &str,
    ) -> Result<(AuthProfile, CredentialSource), ProfileActionError> {
        let (team, _) = self.profiles.membership(team, user).await?;
        let store = self.profiles.store();
        if let Some(own) = store.active_personal_profile(team.id, user, connector_key).await? {
            return Ok((own, CredentialSource::Personal));
        }
        match store.default_profile(team.id, connector_key).await? {
            Some(default) if default.status == ProfileStatus::Active => Ok((default, CredentialSource::TeamDefault)),
            default => Err(ProfileActionError::NoCredential {
                connector_key: connector_key.to_owned(),
                default: default.map(|p| (p.slug, p.status)),
            }),
        }
    }

    /// A credential for `connector_key` (see [`resolve_for_connector`](Self::resolve_for_connector)),
    /// whatever the profile's kind, as [`AuthProfiles::credentials`] gives it (OAuth kinds: a
    /// valid access token, refreshed first when it expires within five minutes).
    pub async fn connector_credential(
        &self,
        team: &TeamRef,
        user: UserId,
        connector_key: &str,
    ) -> Result<ConnectorCredential, ProfileActionError> {
        // The resolution checked membership, and the profile is the caller's own or the team's:
        // its credential is read by id, never by its slug again (which may move meanwhile).
        let (mut profile, source) = self.resolve(team, user, connector_key).await?;
        let credential = self.profiles.credential_of(profile.clone()).await?;
        // A refresh changed the row (this request's, or another's it waited for): the profile is
        // answered as it is now, not as it was before, so that its expiry is the token's.
        if let Credential::OAuth { token, .. } = &credential
            && token.expires_at != profile.access_token_expires_at
            && let Some(now) = self.profiles.store().profile(profile.id).await?
        {
            profile = now;
        }
        Ok(ConnectorCredential { profile, source, credential })
    }

    /// Tests a profile's credential (see the module documentation). Whoever may use the profile
    /// may test it.
    pub async fn test(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
    ) -> Result<TestOutcome, ProfileActionError> {
        let (profile, _) = self.profiles.usable(team, user, named).await?;
        if profile.profile_kind == ProfileKind::Env {
            return self.test_env(&profile).await;
        }
        if !profile.profile_kind.is_oauth() {
            return Err(ProfileActionError::TestNotSupported(format!(
                "{} profiles cannot be tested yet",
                profile.profile_kind.as_str()
            )));
        }
        let provider = self.profiles.provider_of(&profile)?;
        // Before the token is read: a test that cannot be made refreshes nothing.
        if !provider.checks_access_tokens().await? {
            return Err(no_user_endpoint(provider.as_ref()));
        }
        let store = self.profiles.store();
        let before = store.profile_secrets(profile.id).await?.ok_or(AuthProfileError::ProfileNotFound)?;
        // The profile read once, by id from here on: a slug moved meanwhile does not make this
        // test probe (and judge) another profile's token.
        let token = match self.profiles.access_token_of(profile.clone()).await {
            Ok(token) => token,
            // Active until the provider refused the refresh token just now.
            Err(AuthProfileError::NeedsReauth) if before.status == ProfileStatus::Active => {
                return self.needs_reauth(&profile, Some(before.version), None, TestFailure::InvalidGrant, false).await;
            }
            Err(error) => return Err(error.into()),
        };
        let status = self.probe(provider.as_ref(), &token).await?;
        if status != 401 {
            return self.outcome(&profile, status, token.refreshed).await;
        }
        let mut refused = token;
        let mut fresh = refused.refreshed;
        // Nothing to refresh with (the row as read holds the refused token): the test's verdict,
        // not an expiry it did not see ("expired_without_refresh").
        if !refused.refreshed && before.refresh_token.is_none() && refused.version == Some(before.version) {
            return self.needs_reauth(&profile, refused.version, Some(401), TestFailure::InvalidToken, false).await;
        }
        if !refused.refreshed {
            // Refused before it expired: refresh it once (unless someone just did) and try again.
            // The refused token's own version: one refreshed by someone else since `before` was
            // read is the one to expire.
            let tested = refused.version.unwrap_or(before.version);
            // From the expiry written to the one put back, in a task of its own: a client that
            // hangs up meanwhile must not leave the token marked expired for its other uses.
            let (profiles, target, expiry) = (self.profiles.clone(), profile.clone(), refused.expires_at);
            let refreshed = crate::run_to_end(async move {
                let store = profiles.store();
                store.set_access_token_expiry(target.id, tested, Some(super::now())).await?;
                let refreshed = profiles.access_token_of(target.clone()).await;
                // The refresh failed (the provider down, say), not refused: the refused token is
                // not known to be dead (one for another audience is refused too), so it gets
                // back the expiry it had rather than failing every other use until the provider
                // is back. Unless it was refreshed or reconnected meanwhile; best effort.
                if refreshed.as_ref().is_err_and(|error| !matches!(error, AuthProfileError::NeedsReauth))
                    && let Err(e) = store.set_access_token_expiry(target.id, tested, expiry).await
                {
                    tracing::warn!(profile_id = %target.id, error = %e.chain(), "could not put a tested token's expiry back");
                }
                Ok::<_, StoreError>(refreshed)
            })
            .await
            .unwrap_or_else(|| Err(StoreError::shut_down()))?;
            let token = match refreshed {
                Ok(token) => token,
                // The refresh was refused, or there was nothing to refresh with.
                Err(AuthProfileError::NeedsReauth) => {
                    let version = refused.version;
                    return self.needs_reauth(&profile, version, Some(401), TestFailure::InvalidToken, false).await;
                }
                Err(error) => return Err(error.into()),
            };
            // Refreshed by this test, or meanwhile by another request (stored at a newer version).
            fresh = token.refreshed || token.version > refused.version;
            let status = self.probe(provider.as_ref(), &token).await?;
            if status != 401 {
                return self.outcome(&profile, status, token.refreshed).await;
            }
            refused = token;
        }
        // The provider honoured the refresh token just now, so the grant is alive: its user
        // endpoint refusing the fresh token says that the token is for another audience (an API
        // the profile's scopes name), not that the profile needs a reconnection.
        if fresh {
            return self.outcome(&profile, 401, refused.refreshed).await;
        }
        self.needs_reauth(&profile, refused.version, Some(401), TestFailure::InvalidToken, false).await
    }

    /// Tests an `env` profile with its connector's probe; the profile's status is left as it is.
    async fn test_env(&self, profile: &AuthProfile) -> Result<TestOutcome, ProfileActionError> {
        let probe = self
            .profiles
            .connectors
            .iter()
            .find(|c| c.key == profile.connector_key)
            .and_then(|c| c.probe.as_ref())
            .ok_or_else(|| {
                ProfileActionError::TestNotSupported(format!(
                    "the connector {:?} declares no `probe` to test its values with (see `[[connectors]]`)",
                    profile.connector_key
                ))
            })?;
        // The caller was allowed to use this profile: its values are read by id, not by slug again.
        let Credential::Env { values } = self.profiles.credential_of(profile.clone()).await? else {
            return Err(AuthProfileError::NotConnected.into());
        };
        let filled = match probe.fill(&values) {
            Ok(filled) => filled,
            Err(ProbeFillError::HeaderValue(field)) => {
                let problem = EnvProblem::ControlCharacter(field.clone());
                return Err(AuthProfileError::InvalidEnv { problem, field: Some(field) }.into());
            }
            Err(ProbeFillError::Url) => {
                tracing::error!(profile_id = %profile.id, connector = %profile.connector_key, "a connector's probe URL does not parse once filled");
                return Ok(self.env_outcome(profile, None));
            }
        };
        drop(values);
        let request =
            self.profiles.http.request(filled.method, filled.url).headers(filled.headers).timeout(TEST_CALL_LIMIT);
        let status = match tokio::time::timeout(TEST_CALL_LIMIT, request.send()).await {
            Ok(Ok(response)) => Some(response.status().as_u16()),
            // Only the kind of failure is logged: reqwest's errors carry the URL, values and all.
            Ok(Err(error)) => {
                let kind = if error.is_timeout() {
                    "timeout"
                } else if error.is_connect() {
                    "connect"
                } else {
                    "other"
                };
                tracing::info!(profile_id = %profile.id, connector = %profile.connector_key, kind, "a connector's probe got no answer");
                None
            }
            Err(_) => {
                tracing::info!(profile_id = %profile.id, connector = %profile.connector_key, kind = "timeout", "a connector's probe got no answer");
                None
            }
        };
        let outcome = self.env_outcome(profile, status);
        tracing::info!(profile_id = %profile.id, connector = %profile.connector_key, ok = outcome.ok, status, "tested the values of an env profile");
        Ok(outcome)
    }

    /// The outcome of an `env` test: ok for 2xx, else the failure of the status (no answer:
    /// `provider_error`). Never refreshed; the profile's status unchanged.
    fn env_outcome(&self, profile: &AuthProfile, status: Option<u16>) -> TestOutcome {
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let error = match status {
            _ if ok => None,
            Some(status) => Some(TestFailure::of_status(status)),
            None => Some(TestFailure::ProviderError),
        };
        TestOutcome { ok, status, error, refreshed: false, profile_status: profile.status }
    }

    /// The provider's answer to the token, as an HTTP status.
    async fn probe(
        &self,
        provider: &dyn crate::upstream::providers::Provider,
        token: &AccessToken,
    ) -> Result<u16, ProfileActionError> {
        use secrecy::ExposeSecret;
        let status =
            match tokio::time::timeout(TEST_CALL_LIMIT, provider.check_access_token(token.token.expose_secret())).await
            {
                Ok(answer) => answer?,
                Err(_) => {
                    return Err(ProviderError::Unavailable("the user endpoint did not answer in time".into()).into());
                }
            };
        status.ok_or_else(|| no_user_endpoint(provider))
    }

    async fn outcome(
        &self,
        profile: &AuthProfile,
        status: u16,
        refreshed: bool,
    ) -> Result<TestOutcome, ProfileActionError> {
        let ok = (200..300).contains(&status);
        let profile_status = self.reread(profile).await?.status;
        Ok(TestOutcome {
            ok,
            status: Some(status),
            error: (!ok).then(|| TestFailure::of_status(status)),
            refreshed,
            profile_status,
        })
    }

    /// Marks the profile `needs_reauth` if its token is still the one refused (`version`, the
    /// token version it was stored under; `None`: a token never stored, which judges nothing),
    /// and reports it. A token refreshed or reconnected since the probe is not judged by it.
    async fn needs_reauth(
        &self,
        profile: &AuthProfile,
        version: Option<i64>,
        status: Option<u16>,
        error: TestFailure,
        refreshed: bool,
    ) -> Result<TestOutcome, ProfileActionError> {
        let store = self.profiles.store();
        if let Some(version) = version
            && store
                .mark_needs_reauth(profile.id, version, crate::domain::events::ReauthReason::TestFailed, super::now())
                .await?
        {
            tracing::info!(profile_id = %profile.id, "a credential test was refused; the profile needs a reconnection");
        }
        let profile_status = self.reread(profile).await?.status;
        Ok(TestOutcome { ok: false, status, error: Some(error), refreshed, profile_status })
    }
}

/// A provider without a user endpoint: its tokens cannot be tested.
fn no_user_endpoint(provider: &dyn crate::upstream::providers::Provider) -> ProfileActionError {
    ProfileActionError::TestNotSupported(format!(
        "the provider {:?} has no user endpoint to test with",
        provider.name()
    ))
}

/// Whether `scopes` asks for more than `profile` was granted (or, not yet connected, asked for).
/// An active profile's own scopes count as had too: its connection asked for them (any scope
/// added since would have made it `needs_reauth`), and providers word what they grant their own
/// way (Google answers `email` with `…/auth/userinfo.email`; Microsoft drops its Graph prefix),
/// so sending them again, or fewer, must not cut the account off. Going back to the provider's
/// own scopes (none) from explicit ones counts as widening: what the provider grants then is not
/// known.
fn widens(profile: &AuthProfile, scopes: &[String]) -> bool {
    if scopes.is_empty() {
        return !profile.scopes.is_empty();
    }
    let granted = profile.granted_scopes.as_ref().unwrap_or(&profile.scopes);
    let asked = (profile.status == ProfileStatus::Active).then_some(&profile.scopes);
    scopes.iter().any(|scope| !granted.contains(scope) && !asked.is_some_and(|asked| asked.contains(scope)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ProfileId, ProfileKind, TeamId};

    fn profile(scopes: &[&str], granted: Option<&[&str]>) -> AuthProfile {
        let now = chrono::Utc::now();
        AuthProfile {
            id: ProfileId::generate(),
            team_id: TeamId::generate(),
            slug: Slug::parse("p").unwrap(),
            connector_key: "c".into(),
            profile_kind: ProfileKind::OauthApp,
            provider: "local".into(),
            status: ProfileStatus::Active,
            created_by: UserId::generate(),
            display_name: "P".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            granted_scopes: granted.map(|g| g.iter().map(|s| (*s).to_owned()).collect()),
            is_default: false,
            upstream_account_id: None,
            access_token_expires_at: None,
            pending_expires_at: None,
            version: 1,
            created_at: now,
            updated_at: now,
            credential: None,
        }
    }

    fn strings(scopes: &[&str]) -> Vec<String> {
        scopes.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn widening_is_judged_against_what_was_granted() {
        let p = profile(&["a", "b"], Some(&["a", "b", "c"]));
        assert!(!widens(&p, &strings(&["a"])), "narrowing");
        assert!(!widens(&p, &strings(&["a", "c"])), "granted already");
        assert!(widens(&p, &strings(&["a", "d"])));
        assert!(widens(&p, &[]), "the provider's own scopes are not known");
        let pending = profile(&["a"], None);
        assert!(widens(&pending, &strings(&["a", "b"])), "not connected: against what was asked");
        assert!(!widens(&profile(&[], Some(&["x"])), &[]), "no change");
        // A provider that words the granted scopes its own way: those asked stay had.
        let google = profile(&["email", "drive"], Some(&["openid", "https://www.googleapis.com/auth/userinfo.email"]));
        assert!(!widens(&google, &strings(&["email", "drive"])), "the same again");
        assert!(!widens(&google, &strings(&["email"])), "narrowing");
        assert!(widens(&google, &strings(&["email", "calendar"])));
        // Awaiting a reconnection for them, they are not had.
        let waiting = AuthProfile { status: ProfileStatus::NeedsReauth, ..google };
        assert!(widens(&waiting, &strings(&["email", "drive"])));
    }

    #[test]
    fn failures_have_stable_words() {
        assert_eq!(TestFailure::of_status(401).as_str(), "invalid_token");
        assert_eq!(TestFailure::of_status(403).as_str(), "insufficient_scope");
        assert_eq!(TestFailure::of_status(404).as_str(), "rejected");
        assert_eq!(TestFailure::of_status(503).as_str(), "provider_error");
    }
}
