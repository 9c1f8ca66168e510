//! Records of the OpenID Provider's grants: what a user authorised a client to do, the single-use
//! code that starts it, the rotating refresh tokens that extend it, remembered consents and held
//! authorization requests. Only hashes of codes, tokens and request ids are stored.

use chrono::{DateTime, Utc};

use crate::domain::{IdentityId, UserId};

/// A new grant, written with its authorization code.
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// Its id (carried in access tokens as `gid`).
    pub id: uuid::Uuid,
    /// The client it is for.
    pub client_id: String,
    /// The user who authorised it.
    pub user_id: UserId,
    /// The upstream identity the user signed in with; unlinking it ends the grant.
    pub identity_id: Option<IdentityId>,
    /// The browser session it came from; ending the session ends the grant. `None` for a grant of
    /// `offline_access`, which outlives the session.
    pub session_hash: Option<[u8; 32]>,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// The resource (RFC 8707) its access tokens are for, if one was asked.
    pub resource: Option<String>,
    /// The upstream provider the user signed in with.
    pub provider: Option<String>,
    /// When the user authenticated.
    pub auth_time: DateTime<Utc>,
    /// Now.
    pub now: DateTime<Utc>,
    /// When the grant (and so its refresh tokens) ends at the latest.
    pub expires_at: DateTime<Utc>,
    /// A third-party client's grant: written only while the user's consent to the client stands
    /// (checked under a lock in the grant's transaction, so that removing the app's access,
    /// which deletes the consent, is never followed by a grant decided before it).
    pub consent_required: bool,
}

/// A new authorization code.
#[derive(Debug, Clone)]
pub struct NewCode {
    /// SHA-256 of the code.
    pub code_hash: [u8; 32],
    /// The redirect URI it was sent to (the token request must repeat it).
    pub redirect_uri: String,
    /// The PKCE S256 challenge, if the client sent one.
    pub code_challenge: Option<String>,
    /// The OpenID nonce, echoed in the id token.
    pub nonce: Option<String>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// When a grant is judged: `now`, and the last use of a browser session before which it is idle
/// (`now` less `auth.session_idle_minutes`): a grant bound to a session ends when the session
/// does, by sign-out, expiry or idleness alike, whether or not the sweep has removed it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantAt {
    /// The time.
    pub now: DateTime<Utc>,
    /// A session last used before this is idle.
    pub idle_before: DateTime<Utc>,
}

/// A grant as read back, with whether it still counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// Its id.
    pub id: uuid::Uuid,
    /// The client.
    pub client_id: String,
    /// The user.
    pub user_id: UserId,
    /// The upstream identity, if any.
    pub identity_id: Option<IdentityId>,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The resource, if any.
    pub resource: Option<String>,
    /// The upstream provider, if known.
    pub provider: Option<String>,
    /// When the user authenticated.
    pub auth_time: DateTime<Utc>,
    /// When it ends at the latest.
    pub expires_at: DateTime<Utc>,
    /// The hash of the browser session it is bound to; `None` for an offline grant.
    pub session_hash: Option<[u8; 32]>,
    /// Not revoked, not expired, its user not disabled, its identity still there, and its
    /// session (if bound to one) neither ended, expired nor idle.
    pub active: bool,
}

/// An authorization code as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRecord {
    /// The redirect URI it was sent to.
    pub redirect_uri: String,
    /// The PKCE challenge.
    pub code_challenge: Option<String>,
    /// The OpenID nonce.
    pub nonce: Option<String>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Whether it was used already.
    pub used: bool,
}

/// What redeeming a code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemOutcome {
    /// This call used the code (and stored the refresh token, if one was given).
    Redeemed,
    /// The code had been used: its grant is now revoked, with every token it issued.
    Replayed,
    /// No such code, or expired; or one used already whose grant was revoked already (nothing
    /// was written).
    Invalid,
}

/// What rotating a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The old token is used up and the new one stored.
    Rotated,
    /// The token had been rotated already: its grant is now revoked.
    Reused,
    /// No such token, or its grant no longer counts; or one rotated already whose grant was
    /// revoked already. Nothing was written.
    Invalid,
}

/// An authorization request held for a later step (pushed, or waiting for consent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRequest {
    /// SHA-256 of its id (the id itself is only with the client or the browser).
    pub id_hash: [u8; 32],
    /// The client that made it.
    pub client_id: String,
    /// The request's parameters, as JSON.
    pub params: String,
    /// For consent: the session it is bound to.
    pub session_hash: Option<[u8; 32]>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// Who may take a held request ([`Store::take_request`](super::Store::take_request)): the
/// browser session a consent request is bound to, or the client whose `request_uri` it is (a
/// request bound to no session). Anyone else leaves it where it is.
#[derive(Debug, Clone, Copy)]
pub enum HeldFor<'a> {
    /// A consent request, by the SHA-256 of its session.
    Session(&'a [u8; 32]),
    /// A request URI, by its client's id.
    Client(&'a str),
}

impl HeldFor<'_> {
    /// Whether `held` is one this taker may take: what
    /// [`Store::take_request`](super::Store::take_request) checks as it deletes.
    pub fn may_take(self, held: &HeldRequest) -> bool {
        match self {
            HeldFor::Session(session) => held.session_hash.as_ref() == Some(session),
            HeldFor::Client(client) => held.session_hash.is_none() && held.client_id == client,
        }
    }
}

/// What a user consented to for a third-party client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consent {
    /// The scopes approved without a resource (tokens for the client itself), in the order
    /// first granted.
    pub scopes: Vec<String>,
    /// Each resource (RFC 8707) approved, in the order first granted, with the scopes approved
    /// together with it.
    pub resources: Vec<(String, Vec<String>)>,
}

impl Consent {
    /// Whether it covers a request for `scopes` with `resource`: every scope was approved
    /// together with that resource (or, without one, without one) — never a pair the consent
    /// page did not show.
    pub fn covers(&self, scopes: &[String], resource: Option<&str>) -> bool {
        let approved = match resource {
            None => Some(&self.scopes),
            Some(resource) => self.resources.iter().find(|(r, _)| r == resource).map(|(_, scopes)| scopes),
        };
        approved.is_some_and(|approved| scopes.iter().all(|scope| approved.contains(scope)))
    }

    /// Adds `scopes` approved with `resource` (or without one).
    pub fn widen(&mut self, scopes: &[String], resource: Option<&str>) {
        let approved = match resource {
            None => &mut self.scopes,
            Some(resource) => match self.resources.iter().position(|(r, _)| r == resource) {
                Some(index) => &mut self.resources[index].1,
                None => {
                    self.resources.push((resource.to_owned(), Vec::new()));
                    &mut self.resources.last_mut().expect("just pushed").1
                }
            },
        };
        scopes.iter().for_each(|scope| add_once(approved, scope));
    }
}

/// Appends `value` to `list` unless it is there already (scope and resource lists keep their
/// first order).
pub(super) fn add_once(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
}

/// An app a user has let in (see [`super::Store::user_apps`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserApp {
    /// The client's id.
    pub client_id: String,
    /// The client's name.
    pub client_name: String,
    /// The scopes of the user's active grants to it and of their consent, in first-seen order.
    pub scopes: Vec<String>,
    /// Whether an active grant lasts while the user is signed out (`offline_access`).
    pub offline: bool,
    /// Whether any grant is active (false: only a remembered consent).
    pub active: bool,
    /// Whether the client is first-party (it never asks for consent).
    pub first_party: bool,
    /// The earliest of its active grants and the consent's last change.
    pub since: DateTime<Utc>,
}
