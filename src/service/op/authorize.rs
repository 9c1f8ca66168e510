//! The authorization endpoint's rules: validating a request (directly, pushed per RFC 9126, or
//! held while the user signs in or consents), deciding the next step, and issuing the code.
//!
//! A request whose client or redirect URI is wrong is never sent back to that URI: the user sees
//! a page. Every other error goes back to the client's redirect URI with `state` and `iss`
//! (RFC 9207). Only the authorization code flow exists (no implicit, no hybrid).

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::provider::{
    CODE_TTL, MAX_PARAM_LEN, MAX_PARAMS_LEN, OAuthError, OFFLINE_ACCESS, OpenIdProvider, REQUEST_TTL,
    REQUEST_URI_PREFIX, delta, split_scope,
};
use super::tokens::{HintCheck, registered_target};
use crate::crypto::{random_secret, sha256};
use crate::domain::{Client, GrantType, IdentityId, UserId};
use crate::store::{HeldFor, HeldRequest, NewCode, NewGrant, StoreError};

/// The parameters of an authorization request, as sent (query, form or pushed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationParams {
    /// Must be `code`.
    pub response_type: Option<String>,
    /// The client.
    pub client_id: Option<String>,
    /// Where to send the code; must match a registered URI.
    pub redirect_uri: Option<String>,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// Opaque client state, echoed back.
    pub state: Option<String>,
    /// Echoed in the id token.
    pub nonce: Option<String>,
    /// PKCE challenge.
    pub code_challenge: Option<String>,
    /// PKCE method: `S256` only.
    pub code_challenge_method: Option<String>,
    /// `none`, `login`, `consent` (space-separated).
    pub prompt: Option<String>,
    /// Most seconds since the user authenticated.
    pub max_age: Option<String>,
    /// An email, for home-realm discovery.
    pub login_hint: Option<String>,
    /// RFC 8707 resource the access token is for.
    pub resource: Option<String>,
    /// A pushed or held request (RFC 9126).
    pub request_uri: Option<String>,
    /// Only `query`.
    pub response_mode: Option<String>,
    /// A parameter of OpenID Connect Core that Tessera does not support, refused rather than
    /// ignored (what it carries would be lost).
    #[serde(skip)]
    pub unsupported: Option<Unsupported>,
    /// An id token of the user the client expects (OpenID Connect Core 3.1.2.1): with
    /// `prompt=none`, a browser signed in as someone else gets `login_required`, not a code for
    /// another user. Not held as such (it carries the user's claims): a held request keeps the
    /// user it names ([`Held::hinted_user`]).
    #[serde(skip)]
    pub id_token_hint: Option<String>,
    /// A parameter sent more than once (other than the client, its redirect URI, `state` and
    /// `request_uri`, which decide where an error may go): refused once the error can go back to
    /// the client.
    #[serde(skip)]
    pub repeated: Option<String>,
}

/// A parameter of OpenID Connect Core that Tessera does not support, refused with the error its
/// section 3.1.2.6 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// A request object (`request`, section 6.1).
    RequestObject,
    /// A request object by reference: a `request_uri` not handed out for a pushed request here
    /// (section 6.2).
    RequestUri,
    /// `registration` (section 7.2.1).
    Registration,
}

impl Unsupported {
    /// The OAuth error and its description.
    fn error(self) -> (&'static str, &'static str) {
        match self {
            Self::RequestObject => {
                ("request_not_supported", "request objects are not supported; send the parameters as such")
            }
            Self::RequestUri => (
                "request_uri_not_supported",
                "request_uri is accepted only as this server's answer to a pushed request (request objects by \
                 reference are not supported)",
            ),
            Self::Registration => (
                "registration_not_supported",
                "the registration parameter is not supported; the operator registers clients",
            ),
        }
    }
}

/// A request held by Tessera between steps, with what it decided so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    params: AuthorizationParams,
    /// The user must have authenticated at the provider at or after this (unix microseconds), as
    /// the session's sign-in proved it.
    auth_after_us: Option<i64>,
    /// The user a verified `id_token_hint` named (absent from requests held before it was kept).
    #[serde(default)]
    hinted_user: Option<String>,
    /// `prompt=select_account` was answered by letting the user choose: a sign-in that resumes
    /// this request asks the upstream provider for a fresh login, so that another account can be
    /// given there.
    #[serde(default)]
    account_choice: bool,
}

impl Held {
    /// A request as it was sent, nothing decided yet.
    fn as_sent(params: AuthorizationParams) -> Self {
        Self { params, auth_after_us: None, hinted_user: None, account_choice: false }
    }

    /// The request a stored row holds.
    fn decode(row: &HeldRequest) -> Result<Self, StoreError> {
        serde_json::from_str(&row.params).map_err(|_| StoreError::Corrupt("held request".into()))
    }
}

/// The store key of a `request_uri` of Tessera's own; `None` for anything else.
fn request_uri_hash(uri: &str) -> Option<[u8; 32]> {
    (uri.starts_with(REQUEST_URI_PREFIX) && uri.len() <= MAX_PARAM_LEN).then(|| sha256(uri.as_bytes()))
}

/// The browser's Tessera session, as the authorization endpoint needs it. Its `Debug` redacts the
/// session's hash and the browser's key.
#[derive(Clone)]
pub struct SessionView {
    /// The user.
    pub user: UserId,
    /// SHA-256 of the session cookie.
    pub hash: [u8; 32],
    /// When the user signed in (the session's start): the `auth_time` of its id tokens.
    pub auth_time: DateTime<Utc>,
    /// When the user last authenticated at the upstream provider, as far as the sign-in proves
    /// it (`None`: unknown); what `prompt=login` and `max_age` are measured against.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// The identity they signed in with.
    pub identity: Option<IdentityId>,
    /// That identity's provider.
    pub provider: Option<String>,
    /// A digest of the browser's session cookie that the store does not hold: the id a request
    /// this browser used is continued under is derived from it ([`continuation_id`]), so that
    /// only this browser finds the continuation again (a reload of a consent page).
    pub browser_key: [u8; 32],
}

impl SessionView {
    /// Whether the session's sign-in proved an authentication at or after `after` (always, when
    /// none is asked for): measured against the authentication the sign-in proved, not the
    /// session's start, so a provider that did not say when the user authenticated proves none.
    fn authenticated_since(&self, after: Option<DateTime<Utc>>) -> bool {
        after.is_none_or(|after| self.authenticated_at.is_some_and(|at| at >= after))
    }
}

crate::debug_redacted!(SessionView {
    shown: [user, auth_time, authenticated_at, identity, provider],
    secret: [hash, browser_key],
});

/// A validated authorization request.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    /// The client.
    pub client: Client,
    /// The redirect URI, as the client sent it (it matched a registered one).
    pub redirect_uri: String,
    /// The requested scopes, all allowed for the client.
    pub scopes: Vec<String>,
    /// The client's state.
    pub state: Option<String>,
    /// The nonce.
    pub nonce: Option<String>,
    /// The PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// `prompt=none`: no page may be shown.
    pub prompt_none: bool,
    /// `prompt=consent`: ask even if consent was given before.
    pub prompt_consent: bool,
    /// `prompt=select_account`: let a signed-in user go on or sign in with another account.
    pub prompt_select_account: bool,
    /// The session must have authenticated at or after this.
    pub auth_after: Option<DateTime<Utc>>,
    /// The login hint.
    pub login_hint: Option<String>,
    /// The resource.
    pub resource: Option<String>,
    /// The user an `id_token_hint` named.
    pub hinted_user: Option<String>,
    params: AuthorizationParams,
}

/// Where a rejected request's error goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The OAuth error code.
    pub error: &'static str,
    /// What is wrong.
    pub description: String,
    /// The client's redirect URI and state, once both client and URI are known to be right;
    /// `None`: the error must be shown to the user, never redirected.
    pub redirect: Option<(String, Option<String>)>,
    /// Sent in the redirect's fragment, not its query: the answer to a `response_type` that
    /// includes `token` or `id_token`, which a client reads from the fragment (OAuth 2.0 Multiple
    /// Response Type Encoding Practices, section 5; RFC 6749 4.2.2.1).
    pub in_fragment: bool,
}

/// Why an authorization request failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// The request is wrong.
    #[error("{}: {}", .0.error, .0.description)]
    Rejected(Rejection),
    /// A consent form answered for a request that is unknown, expired, used, or another
    /// session's (a form left open past its time, or a session replaced in another tab): not
    /// the app's fault, and nothing to send back to it.
    #[error("this consent request has expired or belongs to another sign-in; start again from the app")]
    ConsentGone,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<super::keys::SigningError> for AuthorizeError {
    /// The signing keys could not be read (to verify an `id_token_hint`): a failure of the
    /// service, never the client's.
    fn from(error: super::keys::SigningError) -> Self {
        match error {
            super::keys::SigningError::Store(error) => Self::Store(error),
            // The store failed a moment ago: the same answer as its failure now.
            super::keys::SigningError::Unreadable => Self::Store(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
            other => Self::Store(StoreError::Corrupt(other.to_string())),
        }
    }
}

/// What the user answered on the consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let the app in.
    Approve,
    /// Refuse: the app is told `access_denied`.
    Deny,
    /// Not the person signed in: the request goes on for whoever signs in now, afresh.
    AnotherAccount,
}

/// The next step of an authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The user must sign in, then come back to `continue_to` (a local path).
    SignIn {
        /// Where to return after signing in.
        continue_to: String,
        /// The request's login hint, for home-realm discovery.
        login_hint: Option<String>,
        /// `prompt=login` or `max_age` asked for a fresh authentication: the upstream provider
        /// must not answer from its own session either.
        reauthenticate: bool,
    },
    /// The user must consent: show the client's name, the scopes and the resource, and post the
    /// [`Decision`] with `request_id`.
    Consent {
        /// Identifies the held request in the consent form.
        request_id: String,
        /// The client's name.
        client_name: String,
        /// The scopes asked for.
        scopes: Vec<String>,
        /// The resource (RFC 8707) asked for, if any.
        resource: Option<String>,
    },
    /// A signed-in user asked to select an account (`prompt=select_account`): go on as who
    /// they are, or sign in with another account, both coming back to `continue_to`.
    SelectAccount {
        /// The held request, without the prompt.
        continue_to: String,
    },
    /// Send the browser to the client: a code, or an error.
    Redirect(String),
}

impl OpenIdProvider {
    /// Validates a request (taking a pushed or held one when `request_uri` is given) and decides
    /// the next step for a browser with `session` — or, when its session could not be read, tells
    /// the request's client (see [`Self::undecided`]).
    pub async fn authorize(
        &self,
        params: AuthorizationParams,
        session: Result<Option<&SessionView>, StoreError>,
    ) -> Result<Next, AuthorizeError> {
        let now = crate::domain::now();
        let session = match session {
            Ok(session) => session,
            Err(error) => return Err(self.undecided(params, error, now).await),
        };
        // A request held under its own URI goes on, for a signed-in browser, under an id only
        // that browser can derive: a reload of the page it answered with (the URL still names
        // the used request) finds that page's request again rather than a dead end (RFC 9126
        // section 4 allows for reloads).
        let used = params.request_uri.clone().filter(|uri| request_uri_hash(uri).is_some());
        let continued_as = used.as_deref().zip(session).map(|(uri, session)| continuation_id(uri, session));
        let client_id = params.client_id.clone();
        let Some(checked) = self.unhold(params, now).await? else {
            if let (Some(id), Some(session)) = (continued_as, session)
                && let Some(next) = self.reload(&id, client_id.as_deref(), session, now).await?
            {
                return Ok(next);
            }
            return Err(reject("invalid_request", "request_uri is unknown, used or expired; start again", None));
        };
        let request = checked?;
        let back = (request.redirect_uri.clone(), request.state.clone());
        self.decide(request, session, continued_as, now).await.map_err(|error| failure_to_client(error, back))
    }

    /// The answer to a request this service could not decide, `error` having stopped it before
    /// (the browser's session unreadable): validated without a session, the request's client
    /// is told at its redirect URI, as of a failure after validation ([`failure_to_client`]);
    /// a request that does not check out is refused as it would be anyway; one that cannot be
    /// read (its `request_uri` unknown, or the store failing again) gets the failure itself.
    async fn undecided(&self, params: AuthorizationParams, error: StoreError, now: DateTime<Utc>) -> AuthorizeError {
        match self.unhold(params, now).await {
            Ok(Some(Ok(request))) => {
                failure_to_client(AuthorizeError::Store(error), (request.redirect_uri, request.state))
            }
            Ok(Some(Err(rejected))) => rejected,
            Ok(None) | Err(_) => AuthorizeError::Store(error),
        }
    }

    /// The page a browser's request `id` (a [`continuation_id`]) was continued as, shown again:
    /// its consent page (a request held for this session), its account chooser (one held for
    /// the choice), or its sign-in (one held for a fresh one: the page asking a browser signed in
    /// here whether to sign in again). `None` when there is none (answered, expired, another
    /// client's).
    async fn reload(
        &self,
        id: &str,
        client_id: Option<&str>,
        session: &SessionView,
        now: DateTime<Utc>,
    ) -> Result<Option<Next>, AuthorizeError> {
        let Some(row) = self.store.held_request(&sha256(id.as_bytes()), now).await? else { return Ok(None) };
        if client_id != Some(row.client_id.as_str()) {
            return Ok(None);
        }
        let held = Held::decode(&row)?;
        match row.session_hash {
            Some(hash) if crate::crypto::constant_time_eq(&hash, &session.hash) => {
                let request = self.validate(&held, now).await?;
                Ok(Some(Next::Consent {
                    request_id: id.to_owned(),
                    client_name: request.client.name,
                    scopes: request.scopes,
                    resource: request.resource,
                }))
            }
            None if held.account_choice => {
                Ok(Some(Next::SelectAccount { continue_to: continue_url(&row.client_id, id) }))
            }
            None => Ok(Some(Next::SignIn {
                continue_to: continue_url(&row.client_id, id),
                login_hint: held.params.login_hint.clone(),
                reauthenticate: held.auth_after_us.is_some(),
            })),
            Some(_) => Ok(None),
        }
    }

    /// Holds a request as sent, to go on as a GET of its continuation URL (returned): a form
    /// posted from the client's site arrives without the browser's `SameSite=Lax` session
    /// cookie, so deciding on it would take a signed-in user for signed out (`login_required` for
    /// `prompt=none`, or a sign-in that ends the browser's session on its way back). A request
    /// already held (`request_uri`) goes on as it is, taken by that GET.
    pub async fn bounce(&self, params: AuthorizationParams) -> Result<String, AuthorizeError> {
        if let (Some(client_id), Some(uri)) = (params.client_id.as_deref(), params.request_uri.as_deref())
            && request_uri_hash(uri).is_some()
        {
            return Ok(continue_url(client_id, uri));
        }
        let now = crate::domain::now();
        let request = self.validate(&Held::as_sent(without_foreign_request_uri(params)), now).await?;
        let back = (request.redirect_uri.clone(), request.state.clone());
        let uri = self
            .hold(&request, None, true, None, now)
            .await
            .map_err(|error| failure_to_client(AuthorizeError::Store(error), back))?;
        Ok(continue_url(request.client.id.as_str(), &uri))
    }

    /// Validates a pushed request (RFC 9126) from an authenticated `client` and holds it;
    /// returns its `request_uri` and lifetime in seconds.
    pub async fn push(&self, client: &Client, params: AuthorizationParams) -> Result<(String, u64), AuthorizeError> {
        if params.request_uri.is_some() {
            return Err(reject("invalid_request", "request_uri is not allowed in a pushed request", None));
        }
        if params.client_id.as_deref().is_some_and(|id| id != client.id.as_str()) {
            return Err(reject("invalid_request", "client_id differs from the authenticated client", None));
        }
        let params = AuthorizationParams { client_id: Some(client.id.to_string()), ..params };
        let now = crate::domain::now();
        let request = self.validate(&Held::as_sent(params), now).await.map_err(|error| match error {
            AuthorizeError::Rejected(r) => AuthorizeError::Rejected(Rejection { redirect: None, ..r }),
            other => other,
        })?;
        // Held as sent: `max_age` and `prompt=login` are measured when the request is used.
        let uri = self.hold(&request, None, true, None, now).await?;
        Ok((uri, REQUEST_TTL.as_secs()))
    }

    /// Completes a consent step with the `decision` of the browser with `session`: where to send
    /// it (the client, with a code or `access_denied`; or, for another account, the request held
    /// again for a fresh sign-in). The held request is used up by the first answer; the same form sent again by the same session
    /// within [`KEPT`](crate::service::answers::KEPT) (a double click, whose first response the
    /// browser drops) gets the first answer again on this instance. `x_request_id` (the HTTP
    /// request's id) goes in the approval's audit row.
    pub async fn consent(
        &self,
        request_id: &str,
        session: &SessionView,
        decision: Decision,
        x_request_id: Option<String>,
    ) -> Result<String, AuthorizeError> {
        let id_hash = sha256(request_id.as_bytes());
        let (this, view) = (self.clone(), session.clone());
        let work = move || async move {
            match this.answer_consent(&id_hash, &view, decision, x_request_id.as_deref()).await {
                Ok(to) => Ok(Ok(to)),
                Err(AuthorizeError::Rejected(rejection)) => Ok(Err(rejection)),
                Err(error) => Err(error),
            }
        };
        self.answers.answer(&id_hash, &session.hash, work).await?.map_err(AuthorizeError::Rejected)
    }

    async fn answer_consent(
        &self,
        id_hash: &[u8; 32],
        session: &SessionView,
        decision: Decision,
        x_request_id: Option<&str>,
    ) -> Result<String, AuthorizeError> {
        let now = crate::domain::now();
        // Checked again before it is used up. Another session's post (of a leaked request id)
        // leaves the request to its own, unchecked.
        let by = HeldFor::Session(&session.hash);
        let Some(checked) = self.take_checked(id_hash, by, now).await? else { return Err(AuthorizeError::ConsentGone) };
        let request = checked?;
        match decision {
            Decision::Approve => {}
            Decision::Deny => return Err(request.reject("access_denied", "the user declined")),
            // The request goes on for whoever signs in now, by a fresh login (the provider's own
            // session would pick the same person again): held without the session, and without
            // the hint of who was expected (the client compares `sub`), as when a sign-in answers
            // a hint of someone else.
            Decision::AnotherAccount => {
                let mut request = request;
                request.params.login_hint = None;
                // The request is used up: a failure to hold it again is told to the app, as any
                // failure after validation, not left for it to wait on.
                let back = (request.redirect_uri.clone(), request.state.clone());
                let (continue_to, _) = self
                    .hold_for_another_sign_in(request, None, now)
                    .await
                    .map_err(|error| failure_to_client(AuthorizeError::Store(error), back))?;
                return Ok(continue_to);
            }
        }
        let back = (request.redirect_uri.clone(), request.state.clone());
        self.grant_consented(request, session, now, x_request_id).await.map_err(|error| failure_to_client(error, back))
    }

    /// Records the consent a user gave to a validated `request`, and issues its code.
    async fn grant_consented(
        &self,
        request: AuthorizationRequest,
        session: &SessionView,
        now: DateTime<Utc>,
        x_request_id: Option<&str>,
    ) -> Result<String, AuthorizeError> {
        // Consent widens: what was granted before stays granted.
        let client = request.client.id.as_str();
        let resource = request.resource.as_deref();
        let widened =
            self.store.widen_consent(session.user, client, &request.scopes, resource, now, x_request_id).await?;
        if widened.is_none() {
            return Err(reject(
                "invalid_request",
                "the app or your account was removed while you were approving",
                None,
            ));
        }
        self.issue_code(&request, session, now).await
    }

    /// The request `params` make, checked: as sent, or the one held under its `request_uri`
    /// (see [`Self::take_checked`]); `None` when that one is unknown, used, expired, a consent
    /// request or another client's. An error only when the store failed.
    async fn unhold(&self, params: AuthorizationParams, now: DateTime<Utc>) -> Result<Option<Checked>, StoreError> {
        let Some(uri) = params.request_uri.as_deref() else {
            return self.check(&Held::as_sent(params), now).await.map(Some);
        };
        let Some(hash) = request_uri_hash(uri) else {
            return self.check(&Held::as_sent(without_foreign_request_uri(params)), now).await.map(Some);
        };
        // A consent request is not a request_uri; and a request is used (up) by its own client
        // only.
        let Some(client_id) = params.client_id.as_deref() else { return Ok(None) };
        self.take_checked(&hash, HeldFor::Client(client_id), now).await
    }

    /// The request held under `hash` for `by`, checked, then used up — also when the check
    /// refused it, an answer the client gets (a request held still could later be answered a
    /// second time) —; `None` when it is unknown, used (by another use at the same time too),
    /// expired or not `by`'s. A store that fails to answer the check (the client's row, say)
    /// leaves it held, for the browser to try again, rather than gone with the app never told.
    async fn take_checked(
        &self,
        hash: &[u8; 32],
        by: HeldFor<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<Checked>, StoreError> {
        let held = self.store.held_request(hash, now).await?;
        let Some(held) = held.filter(|held| by.may_take(held)) else { return Ok(None) };
        let checked = self.check(&Held::decode(&held)?, now).await?;
        // Of two uses at once, one goes on (its row is the one just checked).
        Ok(self.store.take_request(hash, by, now).await?.map(|_| checked))
    }

    /// [`Self::validate`], its store failure apart from its answer.
    async fn check(&self, held: &Held, now: DateTime<Utc>) -> Result<Checked, StoreError> {
        match self.validate(held, now).await {
            Err(AuthorizeError::Store(error)) => Err(error),
            checked => Ok(checked),
        }
    }

    async fn validate(&self, held: &Held, now: DateTime<Utc>) -> Result<AuthorizationRequest, AuthorizeError> {
        let Held { params, hinted_user, .. } = held;
        let too_long =
            |values: &[&Option<String>]| values.iter().any(|v| v.as_ref().is_some_and(|v| v.len() > MAX_PARAM_LEN));
        const TOO_LONG: &str = "a parameter is longer than 2048 characters";
        // `state` too: it would go back in the redirect's URL (a post may carry 64 KiB of it).
        let first = [&params.client_id, &params.redirect_uri, &params.state];
        if too_long(&first) {
            return Err(reject("invalid_request", TOO_LONG, None));
        }
        let Some(client_id) = params.client_id.as_deref() else {
            return Err(reject("invalid_request", "client_id is missing", None));
        };
        let Some(client) = self.clients.get(client_id).await? else {
            return Err(reject("invalid_client", "no client is registered with this client_id", None));
        };
        let Some(redirect_uri) = params.redirect_uri.clone() else {
            return Err(reject("invalid_request", "redirect_uri is missing", None));
        };
        if client.redirect_uri(&redirect_uri).is_none() {
            return Err(reject(
                "invalid_request",
                "redirect_uri is not one of the client's registered redirect URIs (they must match exactly)",
                None,
            ));
        }
        let state = params.state.clone();
        let back = Some((redirect_uri.clone(), state.clone()));
        let fail = |error: &'static str, description: &str| reject(error, description, back.clone());
        // Told to the client from here on: a client waiting in a hidden frame (`prompt=none`)
        // or a popup hears of its mistake rather than waiting for an answer that never comes.
        let others = [
            &params.response_type,
            &params.scope,
            &params.nonce,
            &params.code_challenge,
            &params.prompt,
            &params.max_age,
            &params.login_hint,
            &params.resource,
            &params.response_mode,
        ];
        if too_long(&others) {
            return Err(fail("invalid_request", TOO_LONG));
        }
        // And together: a request is held (and a pushed one stored) as it came.
        let total: usize = first.iter().chain(&others).filter_map(|v| v.as_ref().map(String::len)).sum();
        if total > MAX_PARAMS_LEN {
            return Err(fail("invalid_request", "the parameters are longer than 8192 characters together"));
        }
        // Text that ends up in a column, a header or a token: no control characters (PostgreSQL
        // refuses NUL in text, and a newline has no business in a state or nonce).
        let has_control = [&params.state, &params.nonce, &params.login_hint]
            .iter()
            .any(|v| v.as_ref().is_some_and(|v| v.chars().any(char::is_control)));
        if has_control {
            return Err(fail("invalid_request", "state, nonce and login_hint must not contain control characters"));
        }

        if let Some(name) = params.repeated.as_deref() {
            let OAuthError { error, description, .. } = super::tokens::repeated(name);
            return Err(fail(error, &description));
        }

        match params.response_type.as_deref() {
            Some("code") => {}
            None => return Err(fail("invalid_request", "response_type is missing (it must be code)")),
            Some(other) => {
                let in_fragment = other.split(' ').any(|t| t == "token" || t == "id_token");
                let description = "response_type must be code".to_owned();
                let error = "unsupported_response_type";
                return Err(AuthorizeError::Rejected(Rejection { error, description, redirect: back, in_fragment }));
            }
        }
        if params.response_mode.as_deref().is_some_and(|m| m != "query") {
            return Err(fail("invalid_request", "response_mode must be query"));
        }
        if let Some((error, description)) = params.unsupported.map(Unsupported::error) {
            return Err(fail(error, description));
        }
        if !client.allows(GrantType::AuthorizationCode) {
            return Err(fail("unauthorized_client", "this client may not use the authorization code flow"));
        }
        let mut scopes = split_scope(params.scope.as_deref().unwrap_or("openid"));
        if scopes.is_empty() {
            return Err(fail("invalid_scope", "scope is empty"));
        }
        // `offline_access` is ignored from a client that may not refresh (OpenID Connect Core,
        // section 11: it asks for a refresh token, which that client never gets): its grant
        // would otherwise outlive the user's sign-out, with nothing to keep it for, and the
        // consent page would promise what cannot happen. Likewise from a client not registered
        // for it (RFC 6749 3.3 lets a server ignore part of a scope): MCP clients ask for the
        // scopes `/mcp` names, `offline_access` among them, whatever the operator registered.
        if !client.may_go_offline() {
            scopes.retain(|s| s != OFFLINE_ACCESS);
            if scopes.is_empty() {
                return Err(fail("invalid_scope", super::provider::OFFLINE_ACCESS_ALONE));
            }
        }
        // Any other scope the client is not registered for is ignored too (OpenID Connect Core
        // 3.1.2.1: scope values not understood SHOULD be ignored; RFC 6749 3.3: the token answer's
        // `scope` says what was granted), so that an app configured with a stock list (`openid
        // email groups`) signs in with what it may have; one left with nothing is refused. The
        // client's scopes were validated at registration: membership is the whole check.
        scopes.retain(|s| client.scopes.contains(s));
        if scopes.is_empty() {
            return Err(fail("invalid_scope", "none of the requested scopes is allowed for this client"));
        }
        // PKCE is required (OAuth 2.1 section 4.1.1, and so MCP's authorization), but from a
        // confidential client that signs in with OpenID Connect and sends a `nonce`: the id
        // token's nonce then binds the code to the client's session, as RFC 9700 2.1.1 allows.
        let nonce_instead = !client.is_public() && scopes.iter().any(|s| s == "openid") && params.nonce.is_some();
        let code_challenge = match (params.code_challenge.as_deref(), params.code_challenge_method.as_deref()) {
            (None, None) if !nonce_instead => {
                let how = if client.is_public() { "" } else { " (or, for an OpenID Connect sign-in, a nonce)" };
                return Err(fail(
                    "invalid_request",
                    &format!("PKCE is required: send code_challenge with method S256{how}"),
                ));
            }
            (None, None) => None,
            (Some(c), Some("S256")) if is_pkce_challenge(c) => Some(c.to_owned()),
            (Some(_), Some("S256")) => {
                return Err(fail("invalid_request", "code_challenge must be 43 base64url characters (S256)"));
            }
            (Some(_), None) | (Some(_), Some(_)) => {
                return Err(fail("invalid_request", "code_challenge_method must be S256"));
            }
            (None, Some(_)) => return Err(fail("invalid_request", "code_challenge is missing")),
        };
        let prompts = split_scope(params.prompt.as_deref().unwrap_or(""));
        if prompts.iter().any(|p| !matches!(p.as_str(), "none" | "login" | "consent" | "select_account")) {
            return Err(fail("invalid_request", "prompt must be none, login, consent or select_account"));
        }
        let prompt_none = prompts.iter().any(|p| p == "none");
        if prompt_none && prompts.len() > 1 {
            return Err(fail("invalid_request", "prompt=none cannot be combined with other values"));
        }
        let hinted_user = match params.id_token_hint.as_deref() {
            None => hinted_user.clone(),
            Some(hint) => match self.check_id_token_hint(hint).await? {
                HintCheck::Verified(hint) if hint.aud == client.id.as_str() => Some(hint.sub),
                HintCheck::Verified(_) => {
                    return Err(fail("invalid_request", "id_token_hint was issued to another client"));
                }
                // Signed by a key no longer published (an id token an app kept since before a
                // rotation): it cannot be checked, so it names nobody, and the request goes on as
                // without it (the app compares `sub`), as at logout; unless it says, unverified,
                // that it is another client's.
                HintCheck::KeyGone { aud } if aud.as_deref().is_none_or(|aud| aud == client.id.as_str()) => None,
                HintCheck::KeyGone { .. } => {
                    return Err(fail("invalid_request", "id_token_hint was issued to another client"));
                }
                HintCheck::NotOurs => {
                    return Err(fail("invalid_request", "id_token_hint is not an id token this server issued"));
                }
            },
        };
        if params.max_age.as_deref().is_some_and(|v| v.parse::<u32>().is_err()) {
            return Err(fail("invalid_request", "max_age must be a number of seconds"));
        }
        // Spelled as registered from here on (its tokens' `aud`), however the client spelled it.
        let resource = params
            .resource
            .as_deref()
            .map(|asked| registered_target(&client, asked))
            .transpose()
            .map_err(|refused| fail(refused.error, &refused.description))?;
        let after = auth_after(held, now);
        Ok(AuthorizationRequest {
            client,
            redirect_uri,
            scopes,
            state,
            nonce: params.nonce.clone(),
            code_challenge,
            prompt_none,
            prompt_consent: prompts.iter().any(|p| p == "consent"),
            prompt_select_account: prompts.iter().any(|p| p == "select_account"),
            auth_after: after.and_then(DateTime::from_timestamp_micros),
            login_hint: params.login_hint.clone(),
            resource,
            hinted_user,
            params: params.clone(),
        })
    }

    /// The next step of a validated `request` for a browser with `session`. The request a next
    /// step holds (for consent, the account chooser or a sign-in) is held under `continued_as`
    /// when given (the request came by its URI: see [`authorize`](Self::authorize)), so that a
    /// page shown at that URL comes back on a reload.
    async fn decide(
        &self,
        request: AuthorizationRequest,
        session: Option<&SessionView>,
        continued_as: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Next, AuthorizeError> {
        // Measured against the authentication the sign-in proved, not the session's start: a
        // session begun by a sign-in the provider answered from its own session (opened at
        // `/auth/login` directly, say, rather than by this request's fresh login) is no fresh
        // authentication, nor one whose provider did not say when the user authenticated.
        let Some(session) = session.filter(|s| s.authenticated_since(request.auth_after)) else {
            if request.prompt_none {
                return Err(request.reject("login_required", "the user is not signed in"));
            }
            let login_hint = request.login_hint.clone();
            // Whoever signs in now was signed in by this request, which answers the hint (OpenID
            // Connect Core 3.1.2.1; the client compares `sub`): it is not held for after.
            // Signing in is the choice of an account, for `prompt=select_account` too.
            let request = AuthorizationRequest { hinted_user: None, prompt_select_account: false, ..request };
            let uri = self.hold(&request, None, false, continued_as, now).await?;
            let continue_to = continue_url(request.client.id.as_str(), &uri);
            let reauthenticate = request.auth_after.is_some();
            return Ok(Next::SignIn { continue_to, login_hint, reauthenticate });
        };
        if request.hinted_user.as_ref().is_some_and(|user| *user != session.user.to_string()) {
            if request.prompt_none {
                return Err(
                    request.reject("login_required", "the browser is signed in as another user than id_token_hint")
                );
            }
            // OpenID Connect Core 3.1.2.1: the user the hint names must be signed in, or be signed
            // in by this request. A fresh sign-in, after which the request goes on for whoever
            // signed in: the hint is dropped from the held request (the client compares `sub`),
            // so that a user who picks another account is not sent round again.
            let (continue_to, login_hint) = self.hold_for_another_sign_in(request, continued_as, now).await?;
            return Ok(Next::SignIn { continue_to, login_hint, reauthenticate: true });
        }
        // OpenID Connect Core 3.1.2.1: the user chooses — go on as who is signed in, or sign in
        // with another account — and the request, held without the prompt, goes on either way.
        if request.prompt_select_account {
            // The choice answers an `id_token_hint` as a sign-in does (the client compares `sub`).
            let request = AuthorizationRequest { hinted_user: None, ..request };
            let uri = self.hold(&request, None, false, continued_as, now).await?;
            return Ok(Next::SelectAccount { continue_to: continue_url(request.client.id.as_str(), &uri) });
        }
        // RFC 8252 section 8.6: a public client's id is no secret, and its loopback or
        // private-use redirect can be answered by any program on the device, so nothing shows
        // that the app asking now is the one the user approved (or the operator made first-party):
        // it asks every time. (An `https` redirect goes to the origin that registered it.)
        let remembered = !request.client.is_public() || request.redirect_uri.starts_with("https://");
        // A first-party app is not asked for, unless it asks itself (`prompt=consent`: OpenID
        // Connect Core 3.1.2.1 has the user prompted then, whoever the client is).
        if !request.client.first_party || !remembered || request.prompt_consent {
            // A consent covers the scopes it was given for together with the resource (RFC 8707)
            // it was given for: a token for another resource (Tessera's own API or MCP server,
            // say), or with a scope approved only for another, is asked for anew.
            let granted = self.store.consent(session.user, request.client.id.as_str()).await?.unwrap_or_default();
            let covered = granted.covers(&request.scopes, request.resource.as_deref()) && remembered;
            if request.prompt_consent || !covered {
                if request.prompt_none {
                    return Err(request.reject("consent_required", "the user has not consented to these scopes"));
                }
                let request_id = self.hold(&request, Some(session.hash), false, continued_as, now).await?;
                return Ok(Next::Consent {
                    request_id,
                    client_name: request.client.name.clone(),
                    scopes: request.scopes.clone(),
                    resource: request.resource.clone(),
                });
            }
        }
        Ok(Next::Redirect(self.issue_code(&request, session, now).await?))
    }

    /// Holds `request` for a fresh sign-in, after which it goes on for whoever signed in: its hint
    /// of a user is dropped (the client compares `sub`, and one who picks another account is not
    /// sent round again), and it asks for an authentication from now on. Returns where the sign-in
    /// comes back to, and the request's `login_hint`.
    async fn hold_for_another_sign_in(
        &self,
        request: AuthorizationRequest,
        continued_as: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(String, Option<String>), StoreError> {
        let auth_after = Some(request.auth_after.map_or(now, |after| after.max(now)));
        let request = AuthorizationRequest { hinted_user: None, auth_after, ..request };
        let uri = self.hold(&request, None, false, continued_as, now).await?;
        Ok((continue_url(request.client.id.as_str(), &uri), request.login_hint))
    }

    /// Holds a validated request, under `id` or a new random one; returns that request URI (or,
    /// bound to a session, the consent request id). A pushed request is held `as_sent`;
    /// otherwise prompts already being answered are not held: after signing in, `prompt=login`
    /// and `max_age` are answered by `auth_after`.
    async fn hold(
        &self,
        request: &AuthorizationRequest,
        session_hash: Option<[u8; 32]>,
        as_sent: bool,
        id: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let hinted_user = request.hinted_user.clone();
        // The scopes as validated (those the client is not registered for left out), not as
        // sent: a later check of the held request may only narrow them, so that a scope
        // registered for the client meanwhile is not granted on a consent page that never showed it.
        let scope = Some(request.scopes.join(" "));
        let held = if as_sent {
            Held {
                params: AuthorizationParams { request_uri: None, scope, ..request.params.clone() },
                auth_after_us: None,
                hinted_user,
                account_choice: false,
            }
        } else {
            let prompt = split_scope(request.params.prompt.as_deref().unwrap_or(""))
                .into_iter()
                .filter(|p| p != "login" && p != "select_account")
                .collect::<Vec<_>>()
                .join(" ");
            let params = AuthorizationParams {
                prompt: (!prompt.is_empty()).then_some(prompt),
                max_age: None,
                request_uri: None,
                scope,
                ..request.params.clone()
            };
            Held {
                params,
                auth_after_us: request.auth_after.map(|t| t.timestamp_micros()),
                hinted_user,
                account_choice: request.prompt_select_account,
            }
        };
        let id = id.unwrap_or_else(|| format!("{REQUEST_URI_PREFIX}{}", random_secret().expose_secret()));
        self.store
            .insert_request(&HeldRequest {
                id_hash: sha256(id.as_bytes()),
                client_id: request.client.id.to_string(),
                params: serde_json::to_string(&held).map_err(|_| StoreError::Corrupt("held request".into()))?,
                session_hash,
                expires_at: now + delta(REQUEST_TTL),
            })
            .await?;
        Ok(id)
    }

    async fn issue_code(
        &self,
        request: &AuthorizationRequest,
        session: &SessionView,
        now: DateTime<Utc>,
    ) -> Result<String, AuthorizeError> {
        let code = random_secret();
        let written = self
            .store
            .insert_grant(
                &NewGrant {
                    id: uuid::Uuid::now_v7(),
                    client_id: request.client.id.to_string(),
                    user_id: session.user,
                    identity_id: session.identity,
                    // Offline access (OpenID Connect Core, section 11) outlives the browser
                    // session: an agent's refresh token keeps working after the person signs out
                    // or stays away; any other grant ends with the session.
                    session_hash: (!request.scopes.iter().any(|s| s == OFFLINE_ACCESS)).then_some(session.hash),
                    scope: request.scopes.join(" "),
                    resource: request.resource.clone(),
                    provider: session.provider.clone(),
                    auth_time: session.auth_time,
                    now,
                    expires_at: now + delta(request.client.refresh_token_ttl),
                    consent_required: !request.client.first_party,
                },
                &NewCode {
                    code_hash: sha256(code.expose_secret().as_bytes()),
                    redirect_uri: request.redirect_uri.clone(),
                    code_challenge: request.code_challenge.clone(),
                    nonce: request.nonce.clone(),
                    expires_at: now + delta(CODE_TTL),
                },
            )
            .await?;
        if !written {
            return Err(
                request.reject("access_denied", "the app's access was removed, or the app or the account is gone")
            );
        }
        Ok(redirect_with(
            &request.redirect_uri,
            &[("code", code.expose_secret()), ("iss", &self.issuer)],
            request.state.as_deref(),
            false,
        ))
    }

    /// The redirect that reports `rejection` to the client (RFC 6749 4.1.2.1, RFC 9207 `iss`).
    pub fn error_redirect(&self, rejection: &Rejection) -> Option<String> {
        let (uri, state) = rejection.redirect.as_ref()?;
        let pairs = [("error", rejection.error), ("error_description", &rejection.description), ("iss", &self.issuer)];
        Some(redirect_with(uri, &pairs, state.as_deref(), rejection.in_fragment))
    }
}

impl AuthorizationRequest {
    fn reject(&self, error: &'static str, description: &str) -> AuthorizeError {
        reject(error, description, Some((self.redirect_uri.clone(), self.state.clone())))
    }
}

/// A failure of this service after the request was validated: told to the client at its
/// redirect URI (`back`, with the request's `state`), as RFC 6749 4.1.2.1 says
/// (`temporarily_unavailable` while the store is down, else `server_error`; the cause is logged),
/// so that an app waiting for an answer — a silent `prompt=none` check in a hidden frame — gets
/// one.
fn failure_to_client(error: AuthorizeError, back: (String, Option<String>)) -> AuthorizeError {
    match error {
        AuthorizeError::Store(error) => {
            let OAuthError { error, description, .. } = OAuthError::from_failure(&error, "an authorization request");
            reject(error, &description, Some(back))
        }
        told @ (AuthorizeError::Rejected(_) | AuthorizeError::ConsentGone) => told,
    }
}

/// A request validated: what [`OpenIdProvider::validate`] answered, its store failures apart.
type Checked = Result<AuthorizationRequest, AuthorizeError>;

fn reject(error: &'static str, description: &str, redirect: Option<(String, Option<String>)>) -> AuthorizeError {
    AuthorizeError::Rejected(Rejection { error, description: description.to_owned(), redirect, in_fragment: false })
}

/// Whether `value` is a PKCE S256 challenge: the base64url SHA-256 of a verifier, 43 characters.
fn is_pkce_challenge(value: &str) -> bool {
    value.len() == 43 && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The local path that resumes a held request.
impl OpenIdProvider {
    /// Whether `return_to`, where a sign-in comes back to, resumes an authorization request
    /// held for a fresh authentication (`prompt=login`, `max_age`, or another account chosen for
    /// `prompt=select_account`): the sign-in must then ask the upstream provider for one too,
    /// whichever way the browser reached it (the chooser included). Read from the held request,
    /// not from the URL, which the browser could change.
    pub async fn resumes_a_fresh_login(&self, return_to: &str) -> Result<bool, StoreError> {
        let now = crate::domain::now();
        let Some(held) = self.held_for(return_to, now).await? else { return Ok(false) };
        Ok(auth_after(&held, now).is_some() || held.account_choice)
    }

    /// Whether the authorization request `return_to` resumes would go on for the browser of
    /// `session` as who it is signed in as — rather than send it to sign in anew: it asks for a
    /// fresher login than the session's (`prompt=login`, `max_age`, another account chosen), or
    /// names another user (`id_token_hint`). Read from the held request as it will be checked,
    /// whether it was held as sent (pushed, or posted from another site) or decided. `false` when
    /// `return_to` resumes no request, or one gone.
    pub async fn goes_on_as(&self, return_to: &str, session: &SessionView) -> Result<bool, StoreError> {
        let now = crate::domain::now();
        let Some(held) = self.held_for(return_to, now).await? else { return Ok(false) };
        let fresh = session.authenticated_since(auth_after(&held, now).and_then(DateTime::from_timestamp_micros));
        let hinted = held.hinted_user.as_deref().is_none_or(|user| user == session.user.to_string());
        Ok(fresh && hinted && !held.account_choice)
    }

    /// The held request `return_to` resumes, if it is there.
    async fn held_for(&self, return_to: &str, now: DateTime<Utc>) -> Result<Option<Held>, StoreError> {
        let Some((hash, _)) = resumed_request(return_to) else { return Ok(None) };
        let Some(held) = self.store.held_request(&hash, now).await? else { return Ok(None) };
        Held::decode(&held).map(Some)
    }

    /// Whether `return_to` (where a sign-in is to come back to) resumes a held authorization
    /// request, by its form: whether that request is still there is [`give_up`](Self::give_up)'s
    /// to find out.
    pub fn resumes_a_request(&self, return_to: &str) -> bool {
        resumed_request(return_to).is_some()
    }

    /// Ends the authorization request that a sign-in which failed for good was to resume
    /// (`return_to`, where the sign-in was to come back to): the request is used up and its
    /// client is sent `error` (RFC 6749 4.1.2.1; `access_denied` when the user cancelled at the
    /// upstream provider, say), with its `state` and `iss`. Returns where to send the browser;
    /// `None` when `return_to` resumes no request, or one already used up or expired, or whose
    /// client or redirect URI no longer check out: the failure is then the user's page.
    pub async fn give_up(
        &self,
        return_to: &str,
        error: &'static str,
        description: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some((hash, client_id)) = resumed_request(return_to) else { return Ok(None) };
        let now = crate::domain::now();
        // A consent request is no request_uri, and a request is its own client's only.
        let Some(client_id) = client_id.as_deref() else { return Ok(None) };
        match self.take_checked(&hash, HeldFor::Client(client_id), now).await? {
            Some(Ok(request)) => {
                let redirect = Some((request.redirect_uri, request.state));
                let rejection = Rejection { error, description: description.to_owned(), redirect, in_fragment: false };
                Ok(self.error_redirect(&rejection))
            }
            Some(Err(_)) | None => Ok(None),
        }
    }

    /// [`OpenIdProvider::give_up`] for the form of a signed-in browser (`POST /auth/continue`,
    /// whose sender is the hash of its session): the same form sent again by the same session
    /// within [`KEPT`](crate::service::answers::KEPT) — a double click, whose first answer the
    /// browser dropped — is sent where the first was (the client, told `error`), not left
    /// without its request, used up by the first.
    pub async fn give_up_for(
        &self,
        return_to: &str,
        sender: &[u8; 32],
        error: &'static str,
        description: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some((hash, _)) = resumed_request(return_to) else { return Ok(None) };
        let (this, return_to, description) = (self.clone(), return_to.to_owned(), description.to_owned());
        let work = move || async move { this.give_up(&return_to, error, &description).await };
        self.given_up.answer(&hash, sender, work).await
    }
}

/// `params` with a `request_uri` that is not one of Tessera's (a request object by reference)
/// taken out and marked unsupported: refused once the client and its redirect URI (in the query,
/// as OpenID Connect Core 6.2 lets a client send them) check out.
fn without_foreign_request_uri(params: AuthorizationParams) -> AuthorizationParams {
    match params.request_uri.as_deref() {
        Some(uri) if request_uri_hash(uri).is_none() => {
            AuthorizationParams { request_uri: None, unsupported: Some(Unsupported::RequestUri), ..params }
        }
        _ => params,
    }
}

/// The authentication a held request asks for, at or after (unix microseconds: an authentication
/// in the same second as a `prompt=login` request, but before it, is not a fresh one): as
/// decided, raised by its `prompt=login` and its `max_age` (a request held as sent has them; one
/// that does not parse is refused by [`OpenIdProvider::validate`]).
fn auth_after(held: &Held, now: DateTime<Utc>) -> Option<i64> {
    let prompted = split_scope(held.params.prompt.as_deref().unwrap_or("")).iter().any(|p| p == "login");
    let max_age = held.params.max_age.as_deref().and_then(|v| v.parse::<u32>().ok());
    [
        held.auth_after_us,
        prompted.then(|| now.timestamp_micros()),
        max_age.map(|seconds| now.timestamp_micros() - i64::from(seconds) * 1_000_000),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// The store key of the held request a local `return_to` resumes (`/oauth/authorize?…&request_uri=…`),
/// and the client it names.
fn resumed_request(return_to: &str) -> Option<([u8; 32], Option<String>)> {
    let query = return_to.strip_prefix("/oauth/authorize?")?;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Some((get("request_uri").as_deref().and_then(request_uri_hash)?, get("client_id")))
}

/// The id a request that the browser of `session` used by its URI `used` goes on under: a
/// request URI that only this browser (which holds the cookie `browser_key` is derived from)
/// can derive again, and the client that knows `used` cannot.
fn continuation_id(used: &str, session: &SessionView) -> String {
    let id = crate::crypto::derive_secret(&session.browser_key, "tessera-continued-request-v1", used.as_bytes());
    format!("{REQUEST_URI_PREFIX}{}", id.expose_secret())
}

fn continue_url(client_id: &str, request_uri: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", client_id)
        .append_pair("request_uri", request_uri)
        .finish();
    format!("/oauth/authorize?{query}")
}

/// `uri` with `pairs` and `state` added to its query (keeping the query it has), or, `in_fragment`,
/// put in its fragment (a registered redirect URI has none).
fn redirect_with(uri: &str, pairs: &[(&str, &str)], state: Option<&str>, in_fragment: bool) -> String {
    let Ok(mut url) = url::Url::parse(uri) else { return uri.to_owned() };
    let state = state.map(|state| ("state", state));
    if in_fragment {
        let mut fragment = url::form_urlencoded::Serializer::new(String::new());
        fragment.extend_pairs(pairs.iter().copied().chain(state));
        url.set_fragment(Some(&fragment.finish()));
    } else {
        url.query_pairs_mut().extend_pairs(pairs.iter().copied().chain(state));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_request_asks_for_the_login_its_prompt_and_max_age_will_ask_for() {
        let now = crate::domain::now();
        let us = now.timestamp_micros();
        let held = |prompt: Option<&str>, max_age: Option<&str>, decided: Option<i64>| Held {
            params: AuthorizationParams {
                prompt: prompt.map(str::to_owned),
                max_age: max_age.map(str::to_owned),
                ..Default::default()
            },
            auth_after_us: decided,
            hinted_user: None,
            account_choice: false,
        };
        assert_eq!(auth_after(&held(None, None, None), now), None);
        assert_eq!(auth_after(&held(Some("consent select_account"), None, None), now), None);
        assert_eq!(auth_after(&held(Some("consent login"), None, None), now), Some(us));
        assert_eq!(auth_after(&held(None, Some("60"), None), now), Some(us - 60_000_000));
        assert_eq!(auth_after(&held(None, Some("60"), Some(us - 1)), now), Some(us - 1), "the later one");
        assert_eq!(auth_after(&held(None, Some("soon"), Some(us - 5)), now), Some(us - 5), "refused at validation");
    }

    #[test]
    fn redirects_keep_the_registered_query() {
        let to = redirect_with(
            "https://app.example/cb?tenant=a",
            &[("code", "c1"), ("iss", "https://id.example")],
            Some("s&1"),
            false,
        );
        assert_eq!(to, "https://app.example/cb?tenant=a&code=c1&iss=https%3A%2F%2Fid.example&state=s%261");
    }

    #[test]
    fn pkce_challenges_are_43_base64url_characters() {
        assert!(is_pkce_challenge("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!is_pkce_challenge("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c"));
        assert!(!is_pkce_challenge("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM"));
    }
}
