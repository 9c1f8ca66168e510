//! The credentials of every kind of auth profile, and the one way backends read them.
//!
//! - `env` profiles hold the values of their connector's declared fields (`[[connectors]]`),
//!   set through the API (`PUT …/env`, replacing them all) or by the member in the form a connect
//!   link of type `env_keys` opens. Every value is checked before anything is written: declared,
//!   present when required, at most 4096 bytes, no control characters, matching the field's
//!   pattern. A refused value is named by its field, never echoed.
//! - `browser_session` profiles hold a browser's storage state (cookies and origins), with the
//!   browser kind and an optional DevTools endpoint, replaced as a whole.
//! - Both are stored as one key-ring ciphertext of a JSON payload, bound to the table, the
//!   profile's row and the column; what may be shown (which fields are set and when, the browser
//!   kind) is kept beside it in clear. A write activates the profile and bumps its version in the
//!   same transaction; a form's write consumes its link there too, so of concurrent posts of one
//!   form exactly one writes.
//! - [`AuthProfiles::credentials`] hands out the credential of any kind: a fresh access token for
//!   OAuth kinds (refreshed as for `/token`), the values, or the storage state.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use url::Url;

use super::auth_profiles::{AccessToken, AuthProfileError, AuthProfiles, NewProfile, check_status, may_connect};
use crate::config::ConnectorConfig;
use crate::crypto::keyring::KeyRing;
use crate::crypto::sha256;
use crate::domain::{AuthProfile, CredentialMeta, FieldSet, ProfileId, ProfileKind, ProfileRef, TeamRef, UserId};
use crate::error::ErrorChain as _;
use crate::error::ErrorCode;
use crate::store::{CredentialOutcome, CredentialWrite, SecretKind, StoredSecret};

/// The longest value of an `env` field, in bytes.
pub const MAX_ENV_VALUE_LEN: usize = 4096;
/// The most cookies, and the most origins, of a storage state.
pub const MAX_STORAGE_ENTRIES: usize = 1000;
/// The longest DevTools URL.
const MAX_CDP_URL_LEN: usize = 2048;
/// The browser kind when none is given.
pub const DEFAULT_BROWSER_KIND: &str = "chromium";

/// The credential given for an `env` or `browser_session` profile.
#[derive(Clone)]
pub enum CredentialInput {
    /// The values of an `env` profile, by field name.
    Env(BTreeMap<String, SecretString>),
    /// A browser session.
    BrowserSession(BrowserSessionInput),
}

impl fmt::Debug for CredentialInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialInput::Env(values) => f.debug_tuple("Env").field(&values.keys().collect::<Vec<_>>()).finish(),
            CredentialInput::BrowserSession(session) => f.debug_tuple("BrowserSession").field(session).finish(),
        }
    }
}

/// A browser session as given: its storage state (secret: it signs the browser in), its kind and
/// its DevTools endpoint.
#[derive(Clone)]
pub struct BrowserSessionInput {
    /// Playwright's storage state: `{"cookies": […], "origins": […]}`.
    pub storage_state: Value,
    /// `chromium` unless given.
    pub browser_kind: Option<String>,
    /// A DevTools endpoint (`ws://…`), if the agent connects to a running browser.
    pub cdp_url: Option<String>,
}

impl fmt::Debug for BrowserSessionInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrowserSessionInput")
            .field("storage_state", &"[REDACTED]")
            .field("browser_kind", &self.browser_kind)
            .field("cdp_url", &self.cdp_url.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// A credential handed to a backend.
pub enum Credential {
    /// An access token of an OAuth profile.
    OAuth {
        /// `oauth_account` or `oauth_app`.
        kind: ProfileKind,
        /// The token.
        token: AccessToken,
    },
    /// The values of an `env` profile, by field name.
    Env {
        /// The values.
        values: BTreeMap<String, SecretString>,
    },
    /// A browser session.
    BrowserSession {
        /// The storage state (secret).
        storage_state: Value,
        /// The browser kind.
        browser_kind: String,
        /// The DevTools endpoint, if any (may carry a token).
        cdp_url: Option<SecretString>,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::OAuth { kind, .. } => f.debug_struct("OAuth").field("kind", kind).finish_non_exhaustive(),
            Credential::Env { values } => {
                f.debug_struct("Env").field("fields", &values.keys().collect::<Vec<_>>()).finish_non_exhaustive()
            }
            Credential::BrowserSession { browser_kind, .. } => {
                f.debug_struct("BrowserSession").field("browser_kind", browser_kind).finish_non_exhaustive()
            }
        }
    }
}

/// What is wrong with the values of an `env` profile. The messages name the field, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvProblem {
    /// A value for a field the connector does not declare.
    #[error("`{0}` is not a field of this connector; its fields are: {1}")]
    Unknown(String, String),
    /// A required field without a value.
    #[error("`{0}` is required")]
    Missing(String),
    /// A value longer than [`MAX_ENV_VALUE_LEN`].
    #[error("`{0}` is longer than {MAX_ENV_VALUE_LEN} bytes")]
    TooLong(String),
    /// A value with a control character (a line break, a tab…).
    #[error("`{0}` contains a control character (a line break or a tab, for instance); paste the value alone")]
    ControlCharacter(String),
    /// A value that does not match the field's pattern.
    #[error("`{0}` does not have the expected form ({1})")]
    PatternMismatch(String, String),
    /// A value with spaces around it or a character that cannot be seen (a zero-width space, a
    /// byte order mark…): a paste that took more than the value.
    #[error("`{0}` starts or ends with a space, or holds a character that cannot be seen; paste the value alone")]
    Invisible(String),
}

impl EnvProblem {
    /// The problem in words for the person filling in the connect form, naming the field by
    /// `label` (what the form calls it) and never its pattern.
    pub fn for_people(&self, label: &str) -> String {
        match self {
            EnvProblem::Unknown(..) => "The form sent a field this connection does not have; reload the page.".into(),
            EnvProblem::Missing(_) => format!("{label} is required."),
            EnvProblem::TooLong(_) => format!("{label} is too long: at most {MAX_ENV_VALUE_LEN} bytes."),
            EnvProblem::ControlCharacter(_) => {
                format!("{label} contains a line break or another control character: paste the value alone.")
            }
            EnvProblem::Invisible(_) => {
                format!(
                    "{label} starts or ends with a space, or holds a character you cannot see: paste the value alone."
                )
            }
            EnvProblem::PatternMismatch(..) => {
                format!("{label} does not look right: check that you copied the whole value, and only it.")
            }
        }
    }

    /// The public code.
    pub fn code(&self) -> ErrorCode {
        match self {
            EnvProblem::Unknown(..) => ErrorCode::UnknownEnvField,
            EnvProblem::Missing(_) => ErrorCode::MissingEnvField,
            EnvProblem::TooLong(_) => ErrorCode::FieldTooLong,
            EnvProblem::ControlCharacter(_) | EnvProblem::Invisible(_) | EnvProblem::PatternMismatch(..) => {
                ErrorCode::InvalidEnvValue
            }
        }
    }
}

/// What the connect form of an `env` profile shows.
#[derive(Debug, Clone)]
pub struct EnvForm {
    /// The profile.
    pub profile: AuthProfile,
    /// Its connector, with the fields to fill in.
    pub connector: ConnectorConfig,
}

/// A name a client sent where one of `known` was expected, fit to be shown back in an error: only
/// one of them in other letter case (a typo). Anything else may be a secret pasted in the wrong
/// place (a 40-character token looks like a field name as much as anything), so it is not
/// repeated.
fn shown_name(name: &str, known: &[&str]) -> Option<String> {
    known.iter().any(|k| k.eq_ignore_ascii_case(name)).then(|| name.to_owned())
}

/// What an error says in place of a name [`shown_name`] does not repeat.
const UNSHOWN_NAME: &str = "(a name that is not a field name)";

/// Checks `values` against the connector's fields; empty or blank values count as absent.
pub fn check_env_values(
    connector: &ConnectorConfig,
    values: &BTreeMap<String, SecretString>,
) -> Result<Vec<(String, SecretString)>, AuthProfileError> {
    let refuse = |problem: EnvProblem, field: Option<String>| AuthProfileError::InvalidEnv { problem, field };
    for name in values.keys() {
        if !connector.fields.iter().any(|f| f.name == *name) {
            let names: Vec<&str> = connector.fields.iter().map(|f| f.name.as_str()).collect();
            let shown = shown_name(name, &names);
            let said = shown.clone().unwrap_or_else(|| UNSHOWN_NAME.to_owned());
            return Err(refuse(EnvProblem::Unknown(said, names.join(", ")), shown));
        }
    }
    let mut checked = Vec::with_capacity(connector.fields.len());
    for field in &connector.fields {
        let value = values.get(&field.name).filter(|v| !v.expose_secret().trim().is_empty());
        let Some(value) = value else {
            if field.optional {
                continue;
            }
            return Err(refuse(EnvProblem::Missing(field.name.clone()), Some(field.name.clone())));
        };
        let text = value.expose_secret();
        if text.len() > MAX_ENV_VALUE_LEN {
            return Err(refuse(EnvProblem::TooLong(field.name.clone()), Some(field.name.clone())));
        }
        if text.chars().any(char::is_control) {
            return Err(refuse(EnvProblem::ControlCharacter(field.name.clone()), Some(field.name.clone())));
        }
        if text.trim() != text || text.chars().any(crate::domain::is_invisible) {
            return Err(refuse(EnvProblem::Invisible(field.name.clone()), Some(field.name.clone())));
        }
        if let Some(pattern) = &field.pattern
            && !pattern.matches(text)
        {
            let problem = EnvProblem::PatternMismatch(field.name.clone(), pattern.as_str().to_owned());
            return Err(refuse(problem, Some(field.name.clone())));
        }
        checked.push((field.name.clone(), value.clone()));
    }
    Ok(checked)
}

/// A browser session checked: its payload and what may be shown (without the time).
struct CheckedSession {
    payload: Value,
    browser_kind: String,
    shown_cdp_url: Option<String>,
}

fn check_browser_session(input: &BrowserSessionInput) -> Result<CheckedSession, AuthProfileError> {
    let refuse =
        |field: &'static str, detail: &str| AuthProfileError::InvalidBrowserSession { field, detail: detail.into() };
    let Value::Object(state) = &input.storage_state else {
        return Err(refuse("storage_state", "expected an object {\"cookies\": […], \"origins\": […]}"));
    };
    if let Some(other) = state.keys().find(|k| !matches!(k.as_str(), "cookies" | "origins")) {
        let shown = shown_name(other, &["cookies", "origins"]).unwrap_or_else(|| UNSHOWN_NAME.to_owned());
        let detail = format!("unexpected member {shown:?}: a storage state has `cookies` and `origins`");
        return Err(refuse("storage_state", &detail));
    }
    let list = |name: &str| match state.get(name) {
        None => Ok(&[][..]),
        Some(Value::Array(items)) if items.len() <= MAX_STORAGE_ENTRIES => Ok(items.as_slice()),
        Some(Value::Array(_)) => Err(refuse("storage_state", &format!("at most {MAX_STORAGE_ENTRIES} {name}"))),
        Some(_) => Err(refuse("storage_state", &format!("`{name}` must be an array"))),
    };
    let has_text = |item: &Value, key: &str| item.get(key).is_some_and(Value::is_string);
    // A cookie's name and value go into a `Cookie` header as they are: no control character (a
    // line break would add a header of its own), and a name.
    let header_safe = |item: &Value, key: &str| {
        item.get(key).and_then(Value::as_str).is_some_and(|text| !text.chars().any(char::is_control))
    };
    for cookie in list("cookies")? {
        if !cookie.is_object() || !has_text(cookie, "name") || !has_text(cookie, "value") {
            return Err(refuse("storage_state", "every cookie is an object with a string `name` and `value`"));
        }
        let named = cookie.get("name").and_then(Value::as_str).is_some_and(|name| !name.trim().is_empty());
        if !named || !header_safe(cookie, "name") || !header_safe(cookie, "value") {
            return Err(refuse(
                "storage_state",
                "a cookie's `name` is not empty, and neither it nor its `value` holds a control character",
            ));
        }
    }
    for origin in list("origins")? {
        if !origin.is_object() || !has_text(origin, "origin") {
            return Err(refuse("storage_state", "every origin is an object with a string `origin`"));
        }
        match origin.get("localStorage") {
            None => {}
            Some(Value::Array(entries)) if entries.iter().all(|e| has_text(e, "name") && has_text(e, "value")) => {}
            Some(_) => {
                return Err(refuse(
                    "storage_state",
                    "an origin's `localStorage` is an array of objects with a string `name` and `value`",
                ));
            }
        }
    }
    // Blank is absent, as for `cdp_url`.
    let browser_kind = input.browser_kind.as_deref().map(str::trim).filter(|kind| !kind.is_empty());
    let browser_kind = browser_kind.unwrap_or(DEFAULT_BROWSER_KIND).to_ascii_lowercase();
    let kind_ok = browser_kind.len() <= 32
        && browser_kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if !kind_ok {
        return Err(refuse("browser_kind", "expected 1 to 32 characters of a-z, 0-9, `-` and `_`, e.g. chromium"));
    }
    let (cdp_url, shown_cdp_url) = match input.cdp_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        None => (None, None),
        Some(text) => {
            let url = Url::parse(text)
                .ok()
                .filter(|_| text.len() <= MAX_CDP_URL_LEN)
                .filter(|url| matches!(url.scheme(), "ws" | "wss" | "http" | "https") && url.host().is_some())
                .ok_or_else(|| refuse("cdp_url", "expected a ws://, wss://, http:// or https:// URL"))?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(refuse("cdp_url", "no user name or password in the URL; a token goes in its query"));
            }
            (Some(url.to_string()), Some(shown_endpoint(&url)))
        }
    };
    let payload = json!({
        "storage_state": Value::Object(state.clone()),
        "browser_kind": browser_kind,
        "cdp_url": cdp_url,
    });
    Ok(CheckedSession { payload, browser_kind, shown_cdp_url })
}

/// What may be shown of a browser's DevTools endpoint: where it is (its origin), not its path
/// (`/devtools/browser/<id>` is all it takes to drive the browser) nor a token in its query.
pub fn shown_endpoint(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// A credential checked and ready to store: its JSON payload and what may be shown.
pub(super) struct CheckedCredential {
    payload: Value,
    pub(super) meta: CredentialMeta,
}

impl AuthProfiles {
    /// A declared connector with fields, for `env` profiles.
    fn env_connector(&self, key: &str) -> Result<&ConnectorConfig, AuthProfileError> {
        self.connectors
            .iter()
            .find(|c| c.key == key && !c.fields.is_empty())
            .ok_or_else(|| AuthProfileError::UnknownConnector(key.to_owned()))
    }

    /// Checks the kind-specific parts of a new profile, and the credential given with it.
    pub(super) fn check_new_credential(
        &self,
        request: &NewProfile,
    ) -> Result<Option<CheckedCredential>, AuthProfileError> {
        // A credential of another kind is a fault of the request (no profile exists yet to have
        // a kind of its own): 400, naming the field.
        let another_kind = |field, kind| Err(AuthProfileError::CredentialOfAnotherKind { field, kind });
        match (request.kind, &request.credential) {
            (ProfileKind::Env, input) => {
                let connector = self.env_connector(&request.connector_key)?;
                match input {
                    None => Ok(None),
                    Some(CredentialInput::Env(values)) => Ok(Some(self.check_env(connector, values)?)),
                    Some(CredentialInput::BrowserSession(_)) => another_kind("storage_state", "browser_session"),
                }
            }
            (ProfileKind::BrowserSession, None) => Ok(None),
            (ProfileKind::BrowserSession, Some(CredentialInput::BrowserSession(input))) => {
                Ok(Some(self.check_browser(input)?))
            }
            (_, Some(CredentialInput::Env(_))) => another_kind("values", "env"),
            (_, Some(CredentialInput::BrowserSession(_))) => another_kind("storage_state", "browser_session"),
            (_, None) => Ok(None),
        }
    }

    fn check_env(
        &self,
        connector: &ConnectorConfig,
        values: &BTreeMap<String, SecretString>,
    ) -> Result<CheckedCredential, AuthProfileError> {
        let checked = check_env_values(connector, values)?;
        let now = super::now();
        let fields = checked.iter().map(|(name, _)| FieldSet { name: name.clone(), set_at: now }).collect();
        let values: Map<String, Value> =
            checked.into_iter().map(|(name, value)| (name, Value::String(value.expose_secret().to_owned()))).collect();
        Ok(CheckedCredential { payload: json!({ "values": values }), meta: CredentialMeta::Env { fields } })
    }

    fn check_browser(&self, input: &BrowserSessionInput) -> Result<CheckedCredential, AuthProfileError> {
        let checked = check_browser_session(input)?;
        let meta = CredentialMeta::BrowserSession {
            browser_kind: checked.browser_kind,
            cdp_url: checked.shown_cdp_url,
            set_at: super::now(),
        };
        Ok(CheckedCredential { payload: checked.payload, meta })
    }

    /// The key-ring ciphertext of a credential, bound to its profile.
    pub(super) fn seal(&self, profile: ProfileId, credential: &CheckedCredential) -> Result<Vec<u8>, AuthProfileError> {
        let keyring = self.keyring.as_ref().ok_or(AuthProfileError::EncryptionNotConfigured)?;
        let plaintext = serde_json::to_vec(&credential.payload).map_err(|_| AuthProfileError::Undecryptable)?;
        Ok(keyring.encrypt(&plaintext, &credential_aad(profile)))
    }

    /// Encrypts and stores a checked credential, activating the profile; with a connect token,
    /// consuming it in the same transaction. `x_request_id` (the HTTP request's id) goes in the
    /// audit row.
    pub(super) async fn store_credential(
        &self,
        profile: &AuthProfile,
        by: UserId,
        credential: &CheckedCredential,
        connect_token: Option<&[u8; 32]>,
        x_request_id: Option<&str>,
    ) -> Result<AuthProfile, AuthProfileError> {
        let ciphertext = self.seal(profile.id, credential)?;
        let write = CredentialWrite {
            profile: profile.id,
            by,
            ciphertext: &ciphertext,
            meta: &credential.meta,
            connect_token,
            now: super::now(),
            request_id: x_request_id,
        };
        match self.store.put_profile_credential(&write).await? {
            CredentialOutcome::Stored(stored) => {
                tracing::info!(profile_id = %stored.id, kind = stored.profile_kind.as_str(), "stored the credential of an auth profile");
                Ok(*stored)
            }
            CredentialOutcome::ProfileGone if connect_token.is_some() => Err(AuthProfileError::InvalidConnectLink),
            CredentialOutcome::ProfileGone => Err(AuthProfileError::ProfileNotFound),
            CredentialOutcome::LinkUsed => Err(AuthProfileError::InvalidConnectLink),
            // The right checked before was lost meanwhile (a removal, demotion or disable): say
            // which.
            CredentialOutcome::NotAllowed => {
                self.not_disabled(by).await?;
                Err(match self.teams.role_of(&TeamRef::Id(profile.team_id), by).await? {
                    (_, Some(role)) => {
                        may_connect(profile, by, role).err().unwrap_or(AuthProfileError::ConnectConflict)
                    }
                    (_, None) if connect_token.is_some() => AuthProfileError::InvalidConnectLink,
                    (_, None) => AuthProfileError::TeamNotFound,
                })
            }
        }
    }

    /// A profile the caller may set the credential of, of kind `expected`: its owner, or for a
    /// team-wide profile its creator or a team owner or admin (as for connecting).
    async fn settable(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
        expected: ProfileKind,
    ) -> Result<AuthProfile, AuthProfileError> {
        let (profile, role) = self.usable(team, user, named).await?;
        // The kind first: it is no secret (any member reads it), and a request to the wrong
        // endpoint is told so, whoever sends it.
        if profile.profile_kind != expected {
            return Err(AuthProfileError::KindMismatch {
                actual: profile.profile_kind.as_str(),
                expected: expected.as_str(),
            });
        }
        may_connect(&profile, user, role)?;
        Ok(profile)
    }

    /// Sets the values of an `env` profile, replacing all of them (`PUT …/env`).
    pub async fn set_env(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
        values: &BTreeMap<String, SecretString>,
        x_request_id: Option<&str>,
    ) -> Result<AuthProfile, AuthProfileError> {
        let profile = self.settable(team, user, named, ProfileKind::Env).await?;
        let checked = self.check_env(self.env_connector(&profile.connector_key)?, values)?;
        self.store_credential(&profile, user, &checked, None, x_request_id).await
    }

    /// Sets the storage state of a `browser_session` profile, replacing it (`PUT …/browser-session`).
    pub async fn set_browser_session(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
        input: &BrowserSessionInput,
        x_request_id: Option<&str>,
    ) -> Result<AuthProfile, AuthProfileError> {
        let profile = self.settable(team, user, named, ProfileKind::BrowserSession).await?;
        let checked = self.check_browser(input)?;
        self.store_credential(&profile, user, &checked, None, x_request_id).await
    }

    /// The credential of a profile, whatever its kind: for OAuth kinds a valid access token
    /// (refreshed first as for [`AuthProfiles::access_token`]), for `env` the values, for
    /// `browser_session` the storage state. A profile without one is `profile_not_connected`.
    pub async fn credentials(
        &self,
        team: &TeamRef,
        user: UserId,
        named: &ProfileRef,
    ) -> Result<Credential, AuthProfileError> {
        let (profile, _) = self.usable(team, user, named).await?;
        self.credential_of(profile).await
    }

    /// [`credentials`](Self::credentials) of a profile the caller was already allowed to use
    /// (read once: the credential is this profile's even if its slug moves meanwhile).
    pub(crate) async fn credential_of(&self, profile: AuthProfile) -> Result<Credential, AuthProfileError> {
        if profile.profile_kind.is_oauth() {
            let kind = profile.profile_kind;
            let token = self.access_token_of(profile).await?;
            return Ok(Credential::OAuth { kind, token });
        }
        let keyring = self.keyring.as_ref().ok_or(AuthProfileError::EncryptionNotConfigured)?;
        let stored = self.store.profile_credential(profile.id).await?.ok_or(AuthProfileError::ProfileNotFound)?;
        check_status(stored.status)?;
        let Some((ciphertext, _)) = stored.credential else {
            return Err(AuthProfileError::NotConnected);
        };
        // Each refusal is logged with the ring key the value names, so that an operator knows
        // which key to roll out (or whether the row itself is at fault).
        let key_id = KeyRing::key_id_of(&ciphertext).unwrap_or("none");
        let plaintext = keyring.decrypt(&ciphertext, &credential_aad(profile.id)).map_err(|error| {
            tracing::error!(profile_id = %profile.id, key_id, error = %error.chain(), "a stored credential does not decrypt");
            AuthProfileError::Undecryptable
        })?;
        let not_its_kind = || {
            tracing::error!(profile_id = %profile.id, key_id, "a stored credential decrypts to no credential of its kind");
            AuthProfileError::Undecryptable
        };
        let mut payload: Value = serde_json::from_slice(&plaintext).map_err(|_| not_its_kind())?;
        match profile.profile_kind {
            ProfileKind::Env => {
                let Some(Value::Object(values)) = payload.get_mut("values").map(Value::take) else {
                    return Err(not_its_kind());
                };
                let values = values
                    .into_iter()
                    .filter_map(|(name, value)| match value {
                        Value::String(text) => Some((name, SecretString::from(text))),
                        _ => None,
                    })
                    .collect();
                Ok(Credential::Env { values })
            }
            ProfileKind::BrowserSession => Ok(Credential::BrowserSession {
                storage_state: payload.get_mut("storage_state").map(Value::take).unwrap_or(Value::Null),
                browser_kind: payload
                    .get("browser_kind")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_BROWSER_KIND)
                    .to_owned(),
                cdp_url: payload.get("cdp_url").and_then(Value::as_str).map(|url| SecretString::from(url.to_owned())),
            }),
            _ => Err(AuthProfileError::NotConnected),
        }
    }

    /// The connect link of an `env` profile, checked as an OAuth link is when opened: it is the
    /// signed-in member's, who may still connect the profile. Not consumed.
    async fn env_link(
        &self,
        token: &str,
        current_user: Option<UserId>,
    ) -> Result<([u8; 32], UserId, EnvForm), AuthProfileError> {
        let hash = sha256(token.as_bytes());
        let link = self.store.connect_token(&hash, super::now()).await?.ok_or(AuthProfileError::InvalidConnectLink)?;
        match current_user {
            None => return Err(AuthProfileError::NotSignedIn),
            Some(user) if user != link.user => return Err(AuthProfileError::WrongUser),
            Some(_) => {}
        }
        let profile = self.connectable(link.profile, link.user).await?;
        if profile.profile_kind != ProfileKind::Env {
            return Err(AuthProfileError::InvalidConnectLink);
        }
        let connector = self.env_connector(&profile.connector_key)?.clone();
        Ok((hash, link.user, EnvForm { profile, connector }))
    }

    /// What the form of an `env_keys` connect link shows, after the link's checks.
    pub async fn env_form(&self, token: &str, current_user: Option<UserId>) -> Result<EnvForm, AuthProfileError> {
        Ok(self.env_link(token, current_user).await?.2)
    }

    /// Stores the values posted by the form of an `env_keys` connect link, consuming the link in
    /// the same transaction. Refused values leave the link usable. The same values posted again
    /// by the browser of `session` within [`KEPT`](super::answers::KEPT) (a double click, whose
    /// first response the browser drops) get the first answer on this instance, not the used-up
    /// link.
    pub async fn submit_env_form(
        &self,
        token: &str,
        user: UserId,
        session: &[u8; 32],
        values: BTreeMap<String, SecretString>,
        x_request_id: Option<String>,
    ) -> Result<AuthProfile, AuthProfileError> {
        // Other values are another form (the back button, say): they are not taken as stored.
        let mut sent = Vec::new();
        for (name, value) in &values {
            for part in [name.as_bytes(), value.expose_secret().as_bytes()] {
                sent.extend_from_slice(&(part.len() as u64).to_le_bytes());
                sent.extend_from_slice(part);
            }
        }
        let sender = crate::crypto::derive_key(session, "tessera-env-form-v1", &sent);
        let form = sha256(token.as_bytes());
        let (this, token) = (self.clone(), token.to_owned());
        let work = move || async move {
            let (hash, user, form) = this.env_link(&token, Some(user)).await?;
            let checked = this.check_env(&form.connector, &values)?;
            this.store_credential(&form.profile, user, &checked, Some(&hash), x_request_id.as_deref()).await
        };
        self.stored.answer(&form, &sender, work).await
    }
}

/// The associated data of a profile's credential: its table, row and column.
fn credential_aad(profile: ProfileId) -> Vec<u8> {
    StoredSecret::aad(SecretKind::ProfileCredentials, profile.as_uuid(), "credential")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EnvField, FieldPattern};

    fn connector() -> ConnectorConfig {
        let field = |name: &str, optional, pattern: Option<&str>| EnvField {
            name: name.into(),
            label: name.into(),
            secret: true,
            optional,
            pattern: pattern.map(|p| FieldPattern::new(p).unwrap()),
        };
        ConnectorConfig {
            key: "openai".into(),
            label: "OpenAI".into(),
            fields: vec![field("OPENAI_API_KEY", false, Some("sk-[a-z0-9]{8,}")), field("OPENAI_ORG", true, None)],
            probe: None,
        }
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), SecretString::from(*v))).collect()
    }

    fn problem(pairs: &[(&str, &str)]) -> (ErrorCode, Option<String>, String) {
        match check_env_values(&connector(), &values(pairs)).unwrap_err() {
            AuthProfileError::InvalidEnv { problem, field } => (problem.code(), field, problem.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_values_are_checked_field_by_field_without_echoing_them() {
        let ok = check_env_values(&connector(), &values(&[("OPENAI_API_KEY", "sk-abcdefgh1")])).unwrap();
        assert_eq!(ok.len(), 1, "an optional field may be left out");
        let ok = check_env_values(&connector(), &values(&[("OPENAI_API_KEY", "sk-abcdefgh1"), ("OPENAI_ORG", "")]));
        assert_eq!(ok.unwrap().len(), 1, "an empty value counts as absent");

        let long = format!("sk-{}", "a".repeat(MAX_ENV_VALUE_LEN));
        for (pairs, code, field) in [
            (vec![("OPENAI_API_KEY", "sk-abcdefgh1"), ("openai_org", "x")], ErrorCode::UnknownEnvField, "openai_org"),
            (vec![("OPENAI_ORG", "acme")], ErrorCode::MissingEnvField, "OPENAI_API_KEY"),
            (vec![("OPENAI_API_KEY", "")], ErrorCode::MissingEnvField, "OPENAI_API_KEY"),
            (vec![("OPENAI_API_KEY", "sk-abcdefgh1\n")], ErrorCode::InvalidEnvValue, "OPENAI_API_KEY"),
            (vec![("OPENAI_API_KEY", "not-a-key-secret")], ErrorCode::InvalidEnvValue, "OPENAI_API_KEY"),
            (vec![("OPENAI_API_KEY", long.as_str())], ErrorCode::FieldTooLong, "OPENAI_API_KEY"),
        ] {
            let (got, named, message) = problem(&pairs);
            assert_eq!((got, named.as_deref()), (code, Some(field)), "{pairs:?}");
            assert!(!message.contains("secret") && !message.contains("acme"), "{message}");
        }
        // A name that is not one of the fields in other letter case is not repeated: a token
        // pasted as a name looks like a field name as much as anything.
        for pasted in ["sk-pasted secret", "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "OTHER"] {
            let (code, named, message) = problem(&[("OPENAI_API_KEY", "sk-abcdefgh1"), (pasted, "x")]);
            assert_eq!((code, named), (ErrorCode::UnknownEnvField, None), "{pasted}");
            assert!(!message.contains(pasted) && message.contains("(a name that is not a field name)"), "{message}");
        }
    }

    #[test]
    fn browser_sessions_are_checked_and_their_endpoint_shown_by_its_origin_only() {
        let input = |state: Value, kind: Option<&str>, cdp: Option<&str>| BrowserSessionInput {
            storage_state: state,
            browser_kind: kind.map(str::to_owned),
            cdp_url: cdp.map(str::to_owned),
        };
        let state = json!({"cookies": [{"name": "sid", "value": "s3cret", "domain": ".example.com"}],
                           "origins": [{"origin": "https://example.com", "localStorage": [{"name": "a", "value": "b"}]}]});
        let checked =
            check_browser_session(&input(state.clone(), None, Some("wss://browser.example:9222/devtools?token=t0k")))
                .unwrap();
        assert_eq!(checked.browser_kind, "chromium");
        assert_eq!(checked.shown_cdp_url.as_deref(), Some("wss://browser.example:9222"), "its origin only");
        assert_eq!(checked.payload["cdp_url"], "wss://browser.example:9222/devtools?token=t0k");
        assert_eq!(checked.payload["storage_state"], state);
        assert!(!format!("{:?}", input(state.clone(), None, Some("ws://x/?token=t0k"))).contains("t0k"));

        for (bad, field) in [
            (input(json!([]), None, None), "storage_state"),
            (input(json!({"cookies": {}}), None, None), "storage_state"),
            (input(json!({"cookies": [{"name": "a"}]}), None, None), "storage_state"),
            (input(json!({"extra": 1}), None, None), "storage_state"),
            (input(json!({"origins": [{"origin": "https://a", "localStorage": [1]}]}), None, None), "storage_state"),
            (input(json!({}), Some("Chrome Beta"), None), "browser_kind"),
            (input(json!({}), None, Some("file:///tmp/x")), "cdp_url"),
            (input(json!({}), None, Some("ws://user:pw@host/")), "cdp_url"),
        ] {
            match check_browser_session(&bad) {
                Err(AuthProfileError::InvalidBrowserSession { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{:?}", other.map(|c| c.browser_kind)),
            }
        }
    }
}
