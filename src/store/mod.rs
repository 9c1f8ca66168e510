//! Storage: the [`Store`] trait and its one implementation, [`SqlStore`], written once for SQLite
//! and PostgreSQL; every difference between the two sits in `db.rs`. All SQL in Tessera lives
//! under this module.
//!
//! The database enforces every invariant that matters (unique identity keys, immutable identity
//! links, one default team per user); the services are the second line, not the first.
//! Unique violations are mapped where the SQL is, into [`StoreError::Conflict`].

mod admin;
mod audit;
mod cache_sync;
mod db;
mod grants;
mod import;
mod last_seen;
mod migrations;
mod profile_actions;
mod profile_credentials;
mod rows;
mod sql;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::{Backend, DatabaseConfig};
pub use crate::domain::events::SessionEnd;
use crate::domain::{
    AuthProfile, Client, ClientId, CredentialMeta, DeliveryJob, DomainClaim, DomainName, Email, EventId, Identity,
    IdentityId, Issuer, Principal, ProfileId, ProfileKind, ProfileRef, ProfileStatus, Role, SigningAlg, Slug, Subject,
    Team, TeamId, TeamRef, User, UserId, UserProfile, WebhookDelivery, WebhookEndpoint, WebhookId,
};

pub use admin::{
    CreateTeamOutcome, DeleteTeamOutcome, DeleteUserOutcome, DeletedUser, TeamMember, TeamQuery, UserQuery,
};
pub use audit::{ActorKind, AuditEvent, AuditQuery, NewAuditEvent};
pub use cache_sync::{CacheChange, LogPage, LoggedChange};
pub use db::{
    ReplicaLag, copy_sqlite, create_pg_database, drop_pg_database, replica_check_interval, sqlite_file,
    sqlite_file_missing, sqlite_file_uncreatable,
};
pub use grants::{
    CodeRecord, Consent, GrantAt, GrantRecord, HeldFor, HeldRequest, NewCode, NewGrant, RedeemOutcome, RotateOutcome,
    UserApp,
};
pub use migrations::MigrationStatus;
pub use profile_actions::{DefaultOutcome, ProfileChange, ProfileUpdate, Revocation};
pub use profile_credentials::{CredentialOutcome, CredentialWrite, StoredCredential};
pub use sql::SqlStore;

/// One key's entry in [`Store::principals`]: its principal, none, or why its rows could not be
/// read.
pub type PrincipalRead = Result<Option<Principal>, StoreError>;

/// Most identities [`Store::principals`] reads with one statement.
pub const PRINCIPALS_PER_READ: usize = 64;

/// Errors from the storage layer. Their messages are for logs only, never for clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, or is too busy to answer in time.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A uniqueness rule refused the write; `what` names the rule in domain terms.
    #[error("conflict: {what}")]
    Conflict {
        /// The rule in domain terms, e.g. `"team slug"`.
        what: &'static str,
    },
    /// A row the write refers to was removed by a concurrent change (a foreign key refused the
    /// write), or one just written was gone when read back; `what` names it in domain terms.
    /// Mapped where the SQL is, like `Conflict` (or by a service that read nothing back).
    #[error("gone: {what}")]
    Gone {
        /// The row in domain terms, e.g. `"the identity"`.
        what: &'static str,
    },
    /// A stored value does not decode into its domain type.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Applying migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// What a change cut off by the runtime's shutdown answers (its pool closing): nothing is
    /// known of whether it was made, and the caller is told to try again, as in an outage.
    pub fn shut_down() -> Self {
        StoreError::Unavailable(sqlx::Error::PoolClosed)
    }

    /// Whether the failure is transient ([`StoreError::Unavailable`]): the same call may
    /// succeed if made again.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// This error as [`StoreError::Gone`] (`what`) when a foreign key refused the write.
    pub(crate) fn or_gone(self, what: &'static str) -> Self {
        match &self {
            StoreError::Database(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                StoreError::Gone { what }
            }
            _ => self,
        }
    }

    /// Whether PostgreSQL aborted the transaction to let a concurrent one through (a deadlock,
    /// a serialization failure): the whole transaction may be run again at once.
    pub fn is_conflict(&self) -> bool {
        let StoreError::Unavailable(sqlx::Error::Database(db)) = self else { return false };
        matches!(db.code().as_deref(), Some("40001" | "40P01"))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let unavailable = match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => match (db.code(), db.try_downcast_ref::<sqlx::sqlite::SqliteError>()) {
                // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes; and the
                // file's own troubles — SQLITE_READONLY (8), SQLITE_IOERR (10), SQLITE_FULL (13),
                // SQLITE_CANTOPEN (14): its volume gone or full, its permissions changed — which
                // are the store being unavailable, not a bug, as PostgreSQL's I/O errors are.
                (Some(_), Some(_)) => matches!(self::db::sqlite_result_code(&error), Some(5 | 6 | 8 | 10 | 13 | 14)),
                // PostgreSQL: connection exceptions, insufficient resources, operator
                // intervention (a cancelled statement included), what a server answers when it
                // refuses a new connection (database missing or not accepting connections,
                // authentication failed) or is a read-only standby, the server's own I/O errors
                // (class 58, `io_error` among them), and the transient failures
                // of concurrent transactions (serialization failure, deadlock, lock not
                // available): all worth a retry.
                (Some(code), None) => {
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57")
                        || code.starts_with("28")
                        || code.starts_with("58")
                        || matches!(code.as_ref(), "3D000" | "55000" | "55P03" | "25006" | "40001" | "40P01")
                }
                (None, _) => false,
            },
            _ => false,
        };
        if unavailable { StoreError::Unavailable(error) } else { StoreError::Database(error) }
    }
}

/// A user after [`Store::update_user`], and whether the call changed anything (a field, the
/// `disabled` flag, or sessions a repeated disabling ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpdate {
    /// The user as it now is.
    pub user: User,
    /// `false` when every field named already had its value: nothing was written.
    pub changed: bool,
    /// The fields whose value changed (`name`, `email`, `email_verified`, `disabled`).
    pub fields: Vec<&'static str>,
}

/// What [`Store::update_user`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserUpdateOutcome {
    /// The change was made, or changed nothing.
    Updated(UserUpdate),
    /// There is no such user.
    NotFound,
    /// `email_verified: true` without an `email`, for a user who has none (read under the row's
    /// lock): nothing was written, whatever else the change named.
    NoEmailToVerify,
}

impl UserUpdateOutcome {
    /// The update, when the change was made.
    pub fn updated(self) -> Option<UserUpdate> {
        match self {
            Self::Updated(update) => Some(update),
            Self::NotFound | Self::NoEmailToVerify => None,
        }
    }
}

/// What one [`Store::fan_out_events`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    /// How many events were processed.
    pub events: u64,
    /// The events that wait for a missing sequence number, if any.
    pub waiting: Option<Waiting>,
    /// Another instance was fanning out: nothing was looked at, so nothing is known of a gap.
    pub busy: bool,
}

/// Events that [`Store::fan_out_events`] held back behind a missing sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// The first missing number.
    pub missing: i64,
    /// The highest number among the events looked at: those up to it (and any other number
    /// missing below it) were seen waiting then.
    pub up_to: i64,
}

/// A change of a webhook endpoint's fields, for [`Store::patch_webhook`]: `None` leaves one as
/// it is. The values are already checked.
#[derive(Debug, Clone, Default)]
pub struct WebhookChange {
    /// A new URL.
    pub url: Option<String>,
    /// New event types (empty: all).
    pub event_types: Option<Vec<String>>,
    /// Enabled or not.
    pub enabled: Option<bool>,
}

/// A change of a user's fields, for [`Store::update_user`]: `None` leaves a field as it is;
/// `Some(None)` clears `name` or `email`.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    /// The display name.
    pub name: Option<Option<String>>,
    /// The email address.
    pub email: Option<Option<Email>>,
    /// Whether the email is verified.
    pub email_verified: Option<bool>,
    /// Disabled or enabled.
    pub disabled: Option<bool>,
}

/// An outbox event, written in the same transaction as the change it reports (topics and
/// payloads: [`crate::domain::events`]).
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event id.
    pub id: EventId,
    /// Topic, e.g. `user.created`.
    pub topic: &'static str,
    /// JSON payload.
    pub payload: serde_json::Value,
}

impl NewEvent {
    /// A new event with a fresh id.
    pub fn new(topic: &'static str, payload: serde_json::Value) -> Self {
        Self { id: EventId::generate(), topic, payload }
    }
}

/// A team to create, with the slugs to try in order (the first free one wins).
#[derive(Debug, Clone)]
pub struct NewTeam {
    /// Team id.
    pub id: TeamId,
    /// Display name.
    pub name: String,
    /// Slugs to try, in order. The last one must be practically unique (it carries the team id).
    pub slug_candidates: Vec<Slug>,
}

/// Everything the provisioning transaction writes for a first-time identity.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// The user to create.
    pub user_id: UserId,
    /// The identity link to create.
    pub identity_id: IdentityId,
    /// Normalised issuer.
    pub issuer: Issuer,
    /// Subject at the issuer.
    pub subject: Subject,
    /// Provider name recorded on the identity.
    pub provider: String,
    /// Email seen at link time, if the issuer said one.
    pub email: Option<Email>,
    /// Whether the issuer vouched for the email.
    pub email_verified: bool,
    /// Display name, if known.
    pub name: Option<String>,
    /// The user's default team.
    pub team: NewTeam,
    /// The time of the write.
    pub now: DateTime<Utc>,
    /// For a first sign-in, which decided to make an account on the accounts that held its email
    /// when it looked: those accounts. Nothing is written when they are no longer exactly the
    /// accounts with that email ([`CreateOutcome::EmailHoldersChanged`]): another first sign-in
    /// with the address (another provider's identity of the same person) made one meanwhile,
    /// which the decision must see. `None` (the operator's paths) checks nothing.
    pub email_holders: Option<Vec<UserId>>,
}

impl NewAccount {
    /// The user record this account creates.
    pub fn user(&self) -> User {
        User {
            id: self.user_id,
            email: self.email.as_ref().map(|e| e.as_str().to_owned()),
            email_verified: self.email_verified,
            name: self.name.clone(),
            disabled: false,
            created_at: self.now,
            updated_at: self.now,
        }
    }

    /// The identity record this account creates.
    pub fn identity(&self) -> Identity {
        Identity {
            id: self.identity_id,
            user_id: self.user_id,
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            provider: self.provider.clone(),
            email: self.email.as_ref().map(|e| e.as_str().to_owned()),
            email_verified: self.email_verified,
            created_at: self.now,
            last_seen_at: self.now,
        }
    }
}

/// What [`Store::create_account`] did.
#[derive(Debug, Clone)]
pub enum CreateOutcome {
    /// The user, identity, team and membership were created together.
    Created {
        /// The new user.
        user: User,
        /// Their default team.
        team: Team,
    },
    /// Another transaction linked this identity first; nothing was written.
    IdentityTaken,
    /// The accounts holding the email are no longer [`NewAccount::email_holders`]; nothing was
    /// written.
    EmailHoldersChanged,
}

/// What [`Store::ensure_default_team`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultTeam {
    /// The user's default team, there already.
    Found(Team),
    /// The default team, created now.
    Created(Team),
    /// No such user.
    NoUser,
    /// The user is disabled (read under the lock that serialises these calls): nothing created.
    UserDisabled,
}

/// An identity found by its key, with its user and the user's default team.
#[derive(Debug, Clone)]
pub struct IdentityMatch {
    /// The identity link.
    pub identity_id: IdentityId,
    /// When the identity was last seen.
    pub last_seen_at: DateTime<Utc>,
    /// Its user.
    pub user: User,
    /// The user's default team, if they have one.
    pub default_team: Option<Team>,
}

/// Where a read may be served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The primary: sees every committed write.
    Primary,
    /// The read replica when one is configured and was found, at its last check, within
    /// `database.replica_max_lag_ms` of the primary (see [`Store::check_replica`]), else the
    /// primary. Falls back to the primary when the replica is unreachable.
    Replica,
}

/// What [`Store::claim_domain`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The domain was unclaimed and now belongs to the team.
    Created(DomainClaim),
    /// The team already claimed it; issuer or verification changed (and `updated_at`).
    Updated(DomainClaim),
    /// The team already claimed it with that issuer and verification: the claim as it was.
    Unchanged(DomainClaim),
    /// Another team claims the domain; nothing changed.
    ClaimedByAnotherTeam,
    /// The team is gone (deleted meanwhile); nothing changed.
    TeamGone,
}

/// A sign-in in progress, as stored. Its `Debug` hides the salt.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginState {
    /// SHA-256 of the state value (the value itself is in the URLs of the flow; the browser holds
    /// the binding secret it is the SHA-256 of).
    pub state_hash: [u8; 32],
    /// The provider the flow started with.
    pub provider: String,
    /// The random salt its PKCE verifier and OpenID nonce are derived from, with the browser's
    /// binding secret (which only the browser holds): neither value is stored. `None` for a row
    /// a release before migration 30 wrote, which held the values themselves; such a flow cannot
    /// be completed (the browser's cookie holds its state, not a binding secret).
    pub salt: Option<[u8; 32]>,
    /// Where to send the browser afterwards: as stored, sealed under a key only the browser's
    /// binding secret and the salt give (an earlier release's rows: in the clear); opened when
    /// the flow is taken.
    pub return_to: String,
    /// For a link or connect flow, the signed-in user it is for.
    pub link_user: Option<UserId>,
    /// For a connect flow, the profile being connected.
    pub profile: Option<ProfileId>,
    /// For a connect flow, the profile's version when the flow started.
    pub profile_version: Option<i64>,
    /// For a connect flow, whether another upstream account may replace the connected one.
    pub allow_account_change: bool,
    /// When the flow started.
    pub created_at: DateTime<Utc>,
    /// When the state stops being accepted.
    pub expires_at: DateTime<Utc>,
    /// The sign-in must come back with a fresh authentication at the provider (a relying
    /// party's `prompt=login` or `max_age`).
    pub fresh_login: bool,
}

crate::debug_redacted!(LoginState {
    shown: [
        state_hash,
        provider,
        return_to,
        link_user,
        profile,
        profile_version,
        allow_account_change,
        created_at,
        expires_at,
        fresh_login,
    ],
    secret: [salt],
});

/// What [`Store::start_session`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStart {
    /// The session is stored; `replaced`: an earlier session ended with it.
    Started {
        /// Whether the browser's earlier session (`replaces`) ended.
        replaced: bool,
    },
    /// The user is disabled, or gone: nothing was written.
    NoUser,
}

/// What [`Store::write_member`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberWrite {
    /// Add the user, or change their role.
    Put,
    /// Add the user unless they are a member already, in any role, or disabled
    /// ([`MemberOutcome::Unchanged`], nothing written): a join (`tessera import`) never changes a
    /// role given meanwhile, nor adds a user disabled meanwhile.
    Join,
    /// Change a member's role, never adding anyone: [`MemberOutcome::NotMember`] when the user is
    /// not a member (left or removed meanwhile), so that a role change never puts back someone
    /// who just left.
    RoleOnly,
}

/// A new session.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// SHA-256 of the cookie value.
    pub token_hash: [u8; 32],
    /// The signed-in user.
    pub user_id: UserId,
    /// The identity used to sign in.
    pub identity_id: Option<IdentityId>,
    /// A short label of the device it was started from ("Firefox on Linux"), if known.
    pub device: Option<String>,
    /// When the user last authenticated at the provider, as far as the sign-in proves it.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub now: DateTime<Utc>,
    /// Absolute expiry.
    pub expires_at: DateTime<Utc>,
}

/// Whom [`Store::start_session_of_identity`] started a session for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentitySession {
    /// The identity's user.
    pub user: UserId,
    /// The identity.
    pub identity: IdentityId,
    /// Whether the user has a default team (one who left theirs has none).
    pub has_default_team: bool,
}

/// A session to start for whoever an identity belongs to (see
/// [`Store::start_session_of_identity`]).
#[derive(Debug, Clone)]
pub struct SessionOfIdentity {
    /// The identity's issuer.
    pub issuer: Issuer,
    /// Its subject at the issuer.
    pub subject: Subject,
    /// SHA-256 of the cookie value.
    pub token_hash: [u8; 32],
    /// A short label of the device it was started from, if known.
    pub device: Option<String>,
    /// When the user last authenticated at the provider, as far as the sign-in proves it.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub now: DateTime<Utc>,
    /// Absolute expiry.
    pub expires_at: DateTime<Utc>,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The signed-in user.
    pub user_id: UserId,
    /// The identity they signed in with, while it is linked.
    pub identity_id: Option<IdentityId>,
    /// Creation time (the `auth_time` of the id tokens issued in it).
    pub created_at: DateTime<Utc>,
    /// When the user last authenticated at the upstream provider, as far as the sign-in that
    /// started the session proves it; `None` when unknown. `prompt=login` and `max_age` are
    /// measured against this, not the session's start: a sign-in the provider answered from its
    /// own session is no fresh authentication.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// Last use.
    pub last_seen_at: DateTime<Utc>,
    /// Absolute expiry.
    pub expires_at: DateTime<Utc>,
    /// Whether the user is disabled (their sessions are deleted then, this is the backstop).
    pub user_disabled: bool,
}

/// An identity to link to an existing user.
#[derive(Debug, Clone)]
pub struct NewLink {
    /// Id of the new link.
    pub identity_id: IdentityId,
    /// Normalised issuer.
    pub issuer: Issuer,
    /// Subject at the issuer.
    pub subject: Subject,
    /// Provider name.
    pub provider: String,
    /// Email seen at link time.
    pub email: Option<Email>,
    /// Whether it was verified upstream.
    pub email_verified: bool,
    /// Link time.
    pub now: DateTime<Utc>,
    /// The audit row appended in the link's transaction when the link is made (not when it
    /// existed already).
    pub audit: Option<NewAuditEvent>,
    /// For a link made because the user holds this address (automatic linking by a verified
    /// email): in the link's transaction, under the address's lock, the user must still hold it,
    /// verified, and be enabled, and no other user hold it verified, else nothing is written
    /// ([`LinkOutcome::HolderChanged`]).
    pub by_email: Option<Email>,
}

/// What [`Store::link_identity`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The identity now belongs to the user.
    Linked(Identity),
    /// It already belonged to the user; nothing changed.
    AlreadyLinked(Identity),
    /// It belongs to another user; nothing changed.
    LinkedToAnotherUser,
    /// The user no longer holds [`NewLink::by_email`] verified, or was disabled, since the link
    /// was decided; nothing changed (decide again).
    HolderChanged,
}

/// What [`Store::unlink_identity`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlinkOutcome {
    /// The identity was unlinked.
    Unlinked(Identity),
    /// The user has no such identity.
    NotFound,
    /// It is the user's last identity; nothing changed.
    LastIdentity,
}

/// An identity's upstream tokens, as key-ring ciphertexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedTokens {
    /// The access token.
    pub access_token: Vec<u8>,
    /// The refresh token, if any.
    pub refresh_token: Option<Vec<u8>>,
    /// When the access token expires, if known.
    pub expires_at: Option<DateTime<Utc>>,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// Last write.
    pub updated_at: DateTime<Utc>,
}

/// The kinds of rows that hold key-ring ciphertexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `identity_tokens` (columns `access_token`, `refresh_token`).
    IdentityTokens,
    /// `auth_profiles` (columns `access_token`, `refresh_token`).
    AuthProfiles,
    /// `webhook_endpoints` (columns `secret`, `previous_secret`).
    WebhookEndpoints,
    /// `profile_credentials` (column `credential`): env values and browser sessions.
    ProfileCredentials,
}

impl SecretKind {
    /// Every kind, for `tessera keys rotate`.
    pub const ALL: &'static [SecretKind] = &[
        SecretKind::IdentityTokens,
        SecretKind::AuthProfiles,
        SecretKind::WebhookEndpoints,
        SecretKind::ProfileCredentials,
    ];

    /// The table name, also part of the associated data of its ciphertexts.
    pub fn table(self) -> &'static str {
        match self {
            SecretKind::IdentityTokens => "identity_tokens",
            SecretKind::AuthProfiles => "auth_profiles",
            SecretKind::WebhookEndpoints => "webhook_endpoints",
            SecretKind::ProfileCredentials => "profile_credentials",
        }
    }
}

/// One encrypted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    /// Which table.
    pub kind: SecretKind,
    /// The row's id.
    pub row_id: uuid::Uuid,
    /// The column.
    pub column: &'static str,
    /// The ciphertext.
    pub ciphertext: Vec<u8>,
}

impl StoredSecret {
    /// The associated data binding a ciphertext to its table, row and column.
    pub fn aad(kind: SecretKind, row_id: uuid::Uuid, column: &str) -> Vec<u8> {
        format!("{}|{}|{}", kind.table(), row_id, column).into_bytes()
    }
}

/// What [`Store::write_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberOutcome {
    /// The user joined the team.
    Added,
    /// The user was a member with another role; their role is now the given one.
    Updated,
    /// The user was a member with the given role already; nothing was written.
    Unchanged,
    /// No such user.
    UserNotFound,
    /// The user is the team's last owner and the new role is not owner; nothing changed.
    LastOwner,
    /// The acting user is not (or no longer) an enabled owner of the team, for the reason
    /// given; nothing changed.
    NotAllowed(ActingRefusal),
    /// The team was deleted meanwhile (with its last member); nothing changed.
    TeamNotFound,
    /// The user is not a member ([`MemberWrite::RoleOnly`] only); nothing changed.
    NotMember,
}

/// What [`Store::remove_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveOutcome {
    /// The user left the team.
    Removed,
    /// The user, its last owner and only member, left the team, which was deleted with them
    /// ([`Store::leave_team`] only).
    RemovedWithTeam,
    /// The user was not a member.
    NotMember,
    /// The user is the team's last owner; nothing changed.
    LastOwner,
    /// The acting user is not (or no longer) an enabled owner of the team, or, leaving it, is
    /// disabled ([`ActingRefusal::Disabled`]); nothing changed.
    NotAllowed(ActingRefusal),
    /// The team was deleted meanwhile (with its last member); nothing changed.
    TeamNotFound,
}

/// Why the acting user may not change a team's members, as the change's transaction reads it
/// (it may differ from what the request's credential said a moment before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActingRefusal {
    /// A member, but not an owner (demoted meanwhile).
    NotOwner,
    /// Not a member (removed meanwhile, or never was).
    NotMember,
    /// Disabled (meanwhile: a credential another instance's cache still takes).
    Disabled,
}

/// The key of the one-pending-profile rules.
#[derive(Debug, Clone, Copy)]
pub struct PendingKey<'a> {
    /// The team.
    pub team: TeamId,
    /// The connector.
    pub connector_key: &'a str,
    /// The provider.
    pub provider: &'a str,
    /// `oauth_account` (per member) or `oauth_app` (per team).
    pub kind: ProfileKind,
    /// The member, for personal profiles.
    pub created_by: UserId,
}

/// A connect link, as stored (the token itself only exists in the link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectToken {
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// The profile it connects.
    pub profile: ProfileId,
    /// The only user who may open it.
    pub user: UserId,
    /// Whether another upstream account may replace the connected one.
    pub allow_account_change: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// What [`Store::insert_profile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileInsert {
    /// The profile as stored (with its first write).
    Inserted(Box<AuthProfile>),
    /// A uniqueness rule refused it (a live slug of the team, or a pending profile's key).
    Taken,
    /// The team holds as many live profiles as it may.
    Full,
}

/// What [`Store::insert_profile`] writes with a new profile.
#[derive(Debug, Clone, Copy)]
pub enum FirstWrite<'a> {
    /// Nothing: the profile stays pending.
    Nothing,
    /// Its credential: the key-ring ciphertext (bound to the new profile's id), what may be
    /// shown about it, and the id of the request that creates it (for the audit row).
    Credential(&'a [u8], &'a CredentialMeta, Option<&'a str>),
    /// Its first connect link.
    Link(&'a ConnectToken),
}

/// A profile's encrypted credentials and refresh lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSecrets {
    /// Status.
    pub status: ProfileStatus,
    /// The token version (changes with every write of credentials).
    pub version: i64,
    /// The access token (key-ring ciphertext).
    pub access_token: Option<Vec<u8>>,
    /// The refresh token (key-ring ciphertext).
    pub refresh_token: Option<Vec<u8>>,
    /// When the access token expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the access token was stored (unknown for tokens stored before migration 20).
    pub stored_at: Option<DateTime<Utc>>,
    /// Who holds the refresh lease, until when.
    pub lease: Option<(uuid::Uuid, DateTime<Utc>)>,
    /// The provider account the tokens are for, read with them.
    pub upstream_account_id: Option<String>,
}

/// A profile activated by [`Store::activate_profile`].
#[derive(Debug, Clone)]
pub struct Activated {
    /// The credentials of the upstream account the profile held before, when the activation
    /// connected another one; `None` for the same account, or none held.
    pub replaced: Option<ProfileSecrets>,
}

/// The credentials a completed connect flow stores.
#[derive(Debug, Clone)]
pub struct Activation {
    /// The member who connected: still a member of the profile's team when it is written, and
    /// its creator or a team owner or admin (a removal or demotion meanwhile refuses it).
    pub by: UserId,
    /// The access token (key-ring ciphertext).
    pub access_token: Vec<u8>,
    /// The refresh token (key-ring ciphertext).
    pub refresh_token: Option<Vec<u8>>,
    /// When the access token expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// The upstream account.
    pub upstream_account_id: String,
    /// Granted scopes (stored as `granted_scopes`; the requested ones stay as they are).
    pub scopes: Vec<String>,
    /// Time of the change.
    pub now: DateTime<Utc>,
    /// The id of the request that completed the flow, for the audit row.
    pub request_id: Option<String>,
}

/// A refresh lease.
#[derive(Debug, Clone, Copy)]
pub struct RefreshLease {
    /// Its holder.
    pub owner: uuid::Uuid,
    /// Its end.
    pub until: DateTime<Utc>,
    /// The time now.
    pub now: DateTime<Utc>,
}

/// Credentials from a refresh.
#[derive(Debug, Clone)]
pub struct Refreshed {
    /// The new access token (key-ring ciphertext).
    pub access_token: Vec<u8>,
    /// The new refresh token, or `None` to keep the stored one.
    pub refresh_token: Option<Vec<u8>>,
    /// When the new access token expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// The scopes granted, when the provider said; `None` keeps the stored ones.
    pub granted_scopes: Option<Vec<String>>,
    /// Time of the change.
    pub now: DateTime<Utc>,
}

/// Counts of rows that break data invariants, plus facts that `tessera check` judges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataReport {
    /// Users with more than one default team (the database should make this impossible).
    pub users_with_several_default_teams: i64,
    /// Users without any identity.
    pub users_without_identity: i64,
    /// Users without a default team (allowed, repaired lazily on their next bootstrap).
    pub users_without_default_team: i64,
    /// Teams without an owner.
    pub teams_without_owner: i64,
    /// Every distinct issuer stored on identities.
    pub issuers: Vec<String>,
}

// ---- OpenID Provider: signing keys ----------------------------------------------------------

/// One of Tessera's own token-signing keys, as stored. Published (in the JWKS) from `created_at`,
/// signing from `signs_from` until `retired_at`, published until `unpublish_at`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// The key id (`kid`): the key's RFC 7638 thumbprint.
    pub kid: String,
    /// Its algorithm.
    pub alg: SigningAlg,
    /// The public key as a JWK (with `kid`, `alg` and `use`), JSON text.
    pub public_jwk: String,
    /// The key-ring ciphertext of the private key's PKCS#8 DER, bound to
    /// [`SigningKeyRecord::aad`]; empty once the key is unpublished and the sweeper has
    /// forgotten it.
    pub private_key: Vec<u8>,
    /// When it was made, and published.
    pub created_at: DateTime<Utc>,
    /// When it starts signing.
    pub signs_from: DateTime<Utc>,
    /// When it stops signing (`None`: not retired).
    pub retired_at: Option<DateTime<Utc>>,
    /// When it leaves the JWKS (set with `retired_at`).
    pub unpublish_at: Option<DateTime<Utc>>,
}

impl SigningKeyRecord {
    /// The associated data that binds a key's ciphertext to its table, row and column, in the
    /// form of [`StoredSecret::aad`].
    pub fn aad(kid: &str) -> Vec<u8> {
        format!("signing_keys|{kid}|private_key").into_bytes()
    }
}

impl Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ciphertext is left out: nothing of a private key goes to a log, even encrypted.
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("signs_from", &self.signs_from)
            .field("retired_at", &self.retired_at)
            .field("unpublish_at", &self.unpublish_at)
            .finish_non_exhaustive()
    }
}

/// The retirement of an algorithm's current key that [`Store::rotate_signing_key`] makes, for
/// the key that follows it.
#[derive(Debug, Clone, Copy)]
pub struct Retirement<'a> {
    /// The key to retire: the caller's view of the algorithm's one un-retired key.
    pub kid: &'a str,
    /// When it stops signing (the new key's `signs_from`).
    pub retired_at: DateTime<Utc>,
    /// When it leaves the JWKS.
    pub unpublish_at: DateTime<Utc>,
}

/// The storage interface. [`SqlStore`] implements it on both databases; the conformance suite
/// runs every method's stories against both.
#[async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Checks that the database answers within the readiness bound (`database.ready_timeout_ms`),
    /// for `/readyz`: [`StoreError::Unavailable`] when it does not, however long the pool would
    /// have waited.
    async fn ready(&self) -> Result<(), StoreError>;

    /// Compares the applied migrations with those built into this binary.
    async fn migration_status(&self) -> Result<MigrationStatus, StoreError>;

    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Counts invariant violations (see [`DataReport`]).
    async fn data_report(&self) -> Result<DataReport, StoreError>;

    /// Finds an identity by its key, with its user and default team.
    async fn find_identity(&self, issuer: &Issuer, subject: &Subject) -> Result<Option<IdentityMatch>, StoreError>;

    /// The provisioning transaction: creates user, identity, default team, owner membership and
    /// the `user.created` event together, or nothing at all when the identity is already linked.
    async fn create_account(&self, account: &NewAccount) -> Result<CreateOutcome, StoreError>;

    /// Makes sure `user` has a default team, creating `team` (with an owner membership) when they
    /// have none (logging the change for other instances' caches). Serialised per user, and
    /// never for a disabled user: one disabled while this call waited for the lock gets no team.
    async fn ensure_default_team(
        &self,
        user: UserId,
        team: &NewTeam,
        now: DateTime<Utc>,
    ) -> Result<DefaultTeam, StoreError>;

    /// Records that an identity was seen at `now`.
    async fn touch_identity(&self, identity: IdentityId, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records when each identity was last seen, a short transaction per batch of rows (no lock
    /// held across the whole list); a time never moves back.
    async fn touch_identities(&self, seen: &[(IdentityId, DateTime<Utc>)]) -> Result<(), StoreError>;

    /// A user by id.
    async fn get_user(&self, user: UserId) -> Result<Option<User>, StoreError>;

    /// A user with their identities and teams.
    async fn user_profile(&self, user: UserId, from: ReadFrom) -> Result<Option<UserProfile>, StoreError>;

    /// The identity `(issuer, subject)` with its user and all the user's teams.
    async fn principal(
        &self,
        issuer: &Issuer,
        subject: &Subject,
        from: ReadFrom,
    ) -> Result<Option<Principal>, StoreError>;

    /// [`Store::principal`] for many identities: one entry per key, in the keys' order (`None`
    /// for an identity nobody has), read with one statement per [`PRINCIPALS_PER_READ`] distinct
    /// keys. An identity whose rows cannot be decoded is an error for its key alone, not for the
    /// others read beside it.
    async fn principals(&self, keys: &[(Issuer, Subject)], from: ReadFrom) -> Result<Vec<PrincipalRead>, StoreError>;

    /// Changes the fields of a user that `change` names, in one transaction, writing one
    /// `user.updated` event naming the changed fields among `name`, `email` and `email_verified`
    /// (a new email is unverified unless `email_verified` is given),
    /// and one `user.disabled`/`user.enabled` when `disabled` changed; fields set to their current
    /// value change nothing and write nothing. Disabling deletes the user's browser sessions
    /// (`session.revoked`), and so does enabling them again (sessions that a sign-in racing the
    /// disable wrote after its delete). Refused, with nothing written, when the change verifies
    /// the email of a user who has none and gives none.
    async fn update_user(
        &self,
        user: UserId,
        change: &UserChange,
        now: DateTime<Utc>,
    ) -> Result<UserUpdateOutcome, StoreError>;

    /// A team by id or slug.
    async fn find_team(&self, team: &TeamRef) -> Result<Option<Team>, StoreError>;

    /// Claims a domain for a team, or updates the team's existing claim. With `keep_verified`,
    /// an existing claim of the team keeps its `verified` (read and written in one statement),
    /// and a new one takes `claim.verified`.
    async fn claim_domain(&self, claim: &DomainClaim, keep_verified: bool) -> Result<ClaimOutcome, StoreError>;

    /// The domains a team claims.
    async fn team_domains(&self, team: TeamId) -> Result<Vec<DomainClaim>, StoreError>;

    /// Releases a team's claim on a domain; false when the team did not claim it.
    async fn release_domain(&self, team: TeamId, domain: &DomainName) -> Result<bool, StoreError>;

    /// The claim on a domain, if any.
    async fn domain_claim(&self, domain: &DomainName, from: ReadFrom) -> Result<Option<DomainClaim>, StoreError>;

    /// Stores a sign-in in progress.
    async fn insert_login_state(&self, state: &LoginState) -> Result<(), StoreError>;

    /// Consumes a sign-in in progress: returns and deletes it in one statement, so that of two
    /// concurrent callbacks exactly one gets it. Expired states are deleted and not returned.
    async fn take_login_state(
        &self,
        state_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<LoginState>, StoreError>;

    /// Stores a new session with the audit rows of the sign-in that started it and, when
    /// `replaces` is the hash of the browser's earlier session, ends that one (reason
    /// `replaced`, with its `session.revoked` event and cache-invalidation row): one transaction,
    /// one commit. Only for a user who is not disabled, read with the user's row share-locked (a
    /// user being disabled meanwhile is waited for): else nothing is written
    /// ([`SessionStart::NoUser`]), so that no session outlives a disabling. Without `replaces`
    /// and with at most one audit row it is one statement on PostgreSQL.
    async fn start_session(
        &self,
        session: &NewSession,
        replaces: Option<&[u8; 32]>,
        audit: &[NewAuditEvent],
    ) -> Result<SessionStart, StoreError>;

    /// Starts `session` for the user of its identity when the identity exists and its user is not
    /// disabled, finding them in the statement that writes the session (a returning user's
    /// sign-in: one round trip on PostgreSQL, no read before it), with `audit` appended in the
    /// same unit: its actor and target, where unset, become the user (`actor_id` and `target_id`
    /// its id, `target_kind` `user`), and the identity's id is added to its details as
    /// `identity_id`. Returns the user and the identity (and whether the user has a default
    /// team); `None`, with nothing written, when there is no such identity or its user is
    /// disabled.
    async fn start_session_of_identity(
        &self,
        session: &SessionOfIdentity,
        audit: &NewAuditEvent,
    ) -> Result<Option<IdentitySession>, StoreError>;

    /// A session by the hash of its cookie, if it exists (expiry is the caller's rule).
    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError>;

    /// A session by the hash of its cookie with its user's profile, in one read (expiry is the
    /// caller's rule).
    async fn session_profile(&self, token_hash: &[u8; 32]) -> Result<Option<(SessionRecord, UserProfile)>, StoreError>;

    /// Records that a session was used at `now`.
    async fn touch_session(&self, token_hash: &[u8; 32], now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records when each session (by the hash of its cookie) was last used, a short transaction
    /// per batch of rows (no lock held across the whole list); a time never moves back, and
    /// sessions deleted meanwhile are skipped.
    async fn touch_sessions(&self, seen: &[([u8; 32], DateTime<Utc>)]) -> Result<(), StoreError>;

    /// Deletes a session, writing a `session.revoked` event with `reason`; false when there was
    /// none (and nothing is written).
    async fn delete_session(&self, token_hash: &[u8; 32], reason: SessionEnd) -> Result<bool, StoreError>;

    /// Deletes expired login states, connect links and sessions (absolute expiry, or unused since
    /// `idle_before`).
    async fn delete_expired(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Links a new identity to an existing user, with an audit row, unless the identity is
    /// linked already (to this user or another: links are never re-pointed).
    async fn link_identity(&self, user: UserId, link: &NewLink) -> Result<LinkOutcome, StoreError>;

    /// Unlinks one of a user's identities, with `audit` (whose details gain the identity's
    /// `provider`) in the same transaction; never their last one, nor their last one of the
    /// `sign_in` issuers (those a configured provider signs in with: the others, of a provider
    /// since removed, say, could not sign them in again).
    async fn unlink_identity(
        &self,
        user: UserId,
        identity: IdentityId,
        sign_in: &[Issuer],
        now: DateTime<Utc>,
        audit: Option<&NewAuditEvent>,
    ) -> Result<UnlinkOutcome, StoreError>;

    /// Makes one of a user's identities their primary one, with an audit row and a cache
    /// invalidation; `None` when the user has no such identity, `Some(false)` (nothing written)
    /// when it is their chosen primary already.
    async fn set_primary_identity(
        &self,
        user: UserId,
        identity: IdentityId,
        now: DateTime<Utc>,
    ) -> Result<Option<bool>, StoreError>;

    /// Users whose email equals `email`, ignoring case.
    async fn users_with_email(&self, email: &Email) -> Result<Vec<User>, StoreError>;

    /// Stores (or replaces) an identity's encrypted upstream tokens; without a refresh token,
    /// the one stored before is kept (a provider may send one only on the first consent).
    async fn put_identity_tokens(&self, identity: IdentityId, tokens: &EncryptedTokens) -> Result<(), StoreError>;

    /// An identity's encrypted upstream tokens.
    async fn identity_tokens(&self, identity: IdentityId) -> Result<Option<EncryptedTokens>, StoreError>;

    /// A page of encrypted values of one kind, ordered by row id, after `after`.
    async fn secrets_page(
        &self,
        kind: SecretKind,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<StoredSecret>, StoreError>;

    /// Replaces one encrypted value if it still is `old`; false when it changed meanwhile.
    async fn replace_secret(&self, secret: &StoredSecret, new: &[u8]) -> Result<bool, StoreError>;

    /// How many rows of one kind hold encrypted values.
    async fn count_secrets(&self, kind: SecretKind) -> Result<i64, StoreError>;

    /// A team by id or slug, with `user`'s role in it (`None`: not a member), in one read.
    async fn team_with_role(&self, team: &TeamRef, user: UserId) -> Result<Option<(Team, Option<Role>)>, StoreError>;

    /// Adds or changes a membership as `how` says; never demotes the team's last owner
    /// (serialised per team with [`Store::remove_member`]), never touches a default-team flag.
    /// With `acting`, only an owner of the team may: checked under the same lock (`NotAllowed`),
    /// so that a request from an owner who was just demoted or removed cannot undo that.
    async fn write_member(
        &self,
        team: TeamId,
        acting: Option<UserId>,
        user: UserId,
        role: Role,
        now: DateTime<Utc>,
        how: MemberWrite,
    ) -> Result<MemberOutcome, StoreError>;

    /// Removes a member; never the team's last owner (serialised per team). Their connect links
    /// and connect flows for the team's profiles go with them. `acting` as for
    /// [`Store::write_member`].
    async fn remove_member(
        &self,
        team: TeamId,
        acting: Option<UserId>,
        user: UserId,
    ) -> Result<RemoveOutcome, StoreError>;

    /// `user` leaves a team, as [`Store::remove_member`] removes them, except that the last owner
    /// who is also the team's only member may leave a team that is not their default one: the
    /// team is deleted with them leaving (with its domains, profiles, links and flows): then
    /// `RemovedWithTeam`. A member disabled meanwhile acts in nothing: `NotAllowed`.
    async fn leave_team(&self, team: TeamId, user: UserId) -> Result<RemoveOutcome, StoreError>;

    /// Inserts a profile unless a uniqueness rule refuses it (a live slug of the team, or the
    /// one-pending-profile rules): then `None`, and nothing is written. Its creator must still be
    /// a member of its team, read under the team's shared lock, as a removal takes it for update:
    /// otherwise [`StoreError::Gone`] and nothing is written, so that a profile is never created
    /// for a member whose removal (which hands over or revokes their profiles) came first. With
    /// it, in the same transaction, `first`: its credential (the profile then `active`, with an
    /// `auth_profile.connected` event, as [`Store::put_profile_credential`] writes it) or its first
    /// connect link; a failure writes none of them. Refused as [`ProfileInsert::Full`] when the
    /// team holds `max_live` live profiles already (pending ones counted, once the team's expired
    /// ones are deleted, as the sweep would), counted under the team's row lock, which concurrent
    /// creations take in turn.
    async fn insert_profile(
        &self,
        profile: &AuthProfile,
        first: FirstWrite<'_>,
        max_live: u32,
    ) -> Result<ProfileInsert, StoreError>;

    /// The pending OAuth profile of a connector (`created_by` for personal ones), expired or not.
    async fn pending_profile(&self, key: &PendingKey<'_>) -> Result<Option<AuthProfile>, StoreError>;

    /// Deletes expired pending profiles (all of them, or those of one key).
    async fn delete_expired_pending(&self, key: Option<&PendingKey<'_>>, now: DateTime<Utc>)
    -> Result<u64, StoreError>;

    /// A live (not revoked) profile of `team`, by id or by slug.
    async fn live_profile(&self, team: TeamId, named: &ProfileRef) -> Result<Option<AuthProfile>, StoreError>;

    /// A profile by id (revoked ones included).
    async fn profile(&self, id: ProfileId) -> Result<Option<AuthProfile>, StoreError>;

    /// Whether a connected profile (active or needing a reconnection) other than `except` holds
    /// a grant of the `provider` account `account`: a provider that revokes per grant (Google
    /// ends the whole user–client grant) would end its tokens too.
    async fn account_in_use(
        &self,
        provider: &str,
        account: &str,
        except: Option<ProfileId>,
    ) -> Result<bool, StoreError>;

    /// The live profiles of a team that `viewer` may see, oldest first: the team's, and the
    /// personal ones `viewer` made (not every member's, which a team of thousands holds).
    async fn team_profiles(&self, team: TeamId, viewer: UserId) -> Result<Vec<AuthProfile>, StoreError>;

    /// The live profiles `user` made, in the teams they are a member of, oldest first: found by
    /// their maker (`auth_profiles_created_by_idx`), not by reading each team's every profile.
    async fn profiles_made_by(&self, user: UserId) -> Result<Vec<AuthProfile>, StoreError>;

    /// Stores a new connect token for a profile, deleting the profile's older tokens. A pending
    /// profile's expiry is extended to the link's, at least. False (nothing written) when the
    /// profile is gone or revoked.
    async fn mint_connect_token(&self, token: &ConnectToken) -> Result<bool, StoreError>;

    /// A connect token, unless unknown or expired, without consuming it.
    async fn connect_token(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<ConnectToken>, StoreError>;

    /// Consumes a connect token: of two concurrent calls exactly one gets it. A pending profile
    /// it connects is kept until at least `keep_pending_until` (the end of the flow the link
    /// starts), so that the sweep of abandoned profiles does not take it, and the flow's state
    /// with it, while the person is still at the provider.
    async fn take_connect_token(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
        keep_pending_until: DateTime<Utc>,
    ) -> Result<Option<ConnectToken>, StoreError>;

    /// A profile's encrypted credentials and refresh lease.
    async fn profile_secrets(&self, id: ProfileId) -> Result<Option<ProfileSecrets>, StoreError>;

    /// Activates a profile with new credentials, if its version is still `expected_version`
    /// (pending → active is atomic: of two concurrent completions one wins). Bumps the version and
    /// the token version. Without a new refresh token, the stored one is kept if the upstream
    /// account is the same (providers such as Google send one only on first consent). With its
    /// `auth_profile.connected` event and audit row (by `activation.by`). `None`
    /// when not activated; else [`Activated::replaced`]: the credentials of another upstream
    /// account it held until then, read under the row's lock (a refresh that rotated them just
    /// before included), for the caller to revoke at the provider.
    async fn activate_profile(
        &self,
        id: ProfileId,
        expected_version: i64,
        activation: &Activation,
    ) -> Result<Option<Activated>, StoreError>;

    /// Takes the refresh lease of a profile at token version `version`, unless another holder's
    /// lease runs.
    async fn acquire_refresh_lease(
        &self,
        id: ProfileId,
        version: i64,
        lease: &RefreshLease,
    ) -> Result<bool, StoreError>;

    /// Stores refreshed credentials and releases the lease, if `owner` still holds it. A `None`
    /// refresh token keeps the stored one. Bumps the token version only: a refresh does not
    /// conflict with a connect flow in progress.
    async fn complete_refresh(
        &self,
        id: ProfileId,
        owner: uuid::Uuid,
        refreshed: &Refreshed,
    ) -> Result<bool, StoreError>;

    /// Puts the rotated refresh token `new` in place of `spent`, if the row still holds `spent`:
    /// a refresh that lost its lease to a reconnection of the same account whose code exchange
    /// brought no refresh token (and so kept the spent one) leaves the provider's rotated token
    /// rather than the one it revoked. Bumps the token version; whether it was written.
    async fn replace_spent_refresh_token(
        &self,
        id: ProfileId,
        spent: &[u8],
        new: &[u8],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Releases the refresh lease held by `owner`. With `refused_at` — the token version the
    /// lease was taken at, whose refresh token the provider refused — it also marks the profile
    /// `needs_reauth`, if it is still at that version (a refresh that outlived its lease may have
    /// stored a rotated refresh token since, which is not refused). Returns whether it marked it.
    async fn release_refresh_lease(
        &self,
        id: ProfileId,
        owner: uuid::Uuid,
        refused_at: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Revokes a profile: status `revoked`, credentials wiped, version bumped. Returns the
    /// credentials it held, for revocation at the provider. With `by`, a member who must still
    /// have [`ProfileRight::Manage`](crate::domain::ProfileRight) on it when the write runs
    /// ([`Revocation::Refused`] otherwise), and whose `auth_profile.revoked` audit row is
    /// written in the same transaction; `None`: Tessera itself.
    async fn revoke_profile(
        &self,
        id: ProfileId,
        by: Option<UserId>,
        now: DateTime<Utc>,
        request_id: Option<&str>,
    ) -> Result<Revocation, StoreError>;

    // --- OpenID Provider: grants, codes, refresh tokens, consents, held requests ---

    /// Writes a grant and its authorization code in one transaction; false (nothing written) when
    /// the grant needs the user's consent and it is gone (see [`NewGrant::consent_required`]), or
    /// when the user or the client no longer exists.
    async fn insert_grant(&self, grant: &NewGrant, code: &NewCode) -> Result<bool, StoreError>;

    /// The grant and code of a code hash (used or not), read from the primary.
    async fn code_grant(
        &self,
        code_hash: &[u8; 32],
        at: GrantAt,
    ) -> Result<Option<(GrantRecord, CodeRecord)>, StoreError>;

    /// Uses a code once: the one caller that marks it used stores `refresh_hash` (if any) for its
    /// grant in the same transaction; any later caller finds it used and revokes the grant
    /// (`Replayed`), or finds the grant revoked already and writes nothing (`Invalid`). A code
    /// whose grant has ended meanwhile (signed out, revoked) is `Invalid` and stays unused.
    async fn redeem_code(
        &self,
        code_hash: &[u8; 32],
        refresh_hash: Option<&[u8; 32]>,
        at: GrantAt,
        request_id: Option<&str>,
    ) -> Result<RedeemOutcome, StoreError>;

    /// The grant of a refresh token, and when the token was first rotated (`None`: not yet).
    async fn refresh_grant(
        &self,
        token_hash: &[u8; 32],
        at: GrantAt,
    ) -> Result<Option<(GrantRecord, Option<DateTime<Utc>>)>, StoreError>;

    /// Rotates a refresh token: marks `old` used (keeping the time of its first use) and stores
    /// `new` for the same grant, if the grant still counts. A token first used before
    /// `reusable_after` (or at all, when it is `None`) revokes its grant instead (`Reused`), or,
    /// its grant revoked already, writes nothing (`Invalid`).
    async fn rotate_refresh_token(
        &self,
        old: &[u8; 32],
        new: &[u8; 32],
        at: GrantAt,
        reusable_after: Option<DateTime<Utc>>,
        request_id: Option<&str>,
    ) -> Result<RotateOutcome, StoreError>;

    /// A grant with whether it still counts at `now`, read from the primary (a revocation must
    /// show at once).
    async fn grant(&self, id: uuid::Uuid, at: GrantAt) -> Result<Option<GrantRecord>, StoreError>;

    /// Revokes a grant; false when there was none or it was revoked already.
    async fn revoke_grant(&self, id: uuid::Uuid, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// What `user` consented to for `client`.
    async fn consent(&self, user: UserId, client: &str) -> Result<Option<Consent>, StoreError>;

    /// Adds `scopes` and `resource` to what `user` consented to for `client` (creating the
    /// consent), with an `app.authorized` audit row in the same transaction: what was granted
    /// before stays granted, also when two approvals run at once.
    /// Returns the consent now, each list in the order first granted, or `None` when the user or
    /// the client no longer exists (deleted while the user was approving).
    async fn widen_consent(
        &self,
        user: UserId,
        client: &str,
        scopes: &[String],
        resource: Option<&str>,
        now: DateTime<Utc>,
        request_id: Option<&str>,
    ) -> Result<Option<Consent>, StoreError>;

    /// The apps (clients) `user` has let in: one per client with an active grant whose code was
    /// redeemed or a remembered consent, by name, with the scopes of both.
    async fn user_apps(&self, user: UserId, at: GrantAt) -> Result<Vec<UserApp>, StoreError>;

    /// Ends `user`'s access for `client`: revokes every grant of theirs to it and forgets the
    /// consent (the app asks again next time), with `audit` in the same transaction. False when
    /// there was nothing to end (also for a client that does not exist).
    async fn remove_app(
        &self,
        user: UserId,
        client: &str,
        now: DateTime<Utc>,
        audit: &NewAuditEvent,
    ) -> Result<bool, StoreError>;

    /// Holds an authorization request for a later step.
    async fn insert_request(&self, request: &HeldRequest) -> Result<(), StoreError>;

    /// Takes a held request once, for `by` alone; `None` when absent, taken, expired or someone
    /// else's (which stays held: a session or client that is not its own cannot use it up).
    async fn take_request(
        &self,
        id_hash: &[u8; 32],
        by: HeldFor<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<HeldRequest>, StoreError>;

    /// A held request, left in place; `None` when absent, taken or expired.
    async fn held_request(&self, id_hash: &[u8; 32], now: DateTime<Utc>) -> Result<Option<HeldRequest>, StoreError>;

    /// Deletes expired codes, grants and held requests; returns how many rows went.
    async fn delete_expired_grants(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    // ---- OpenID Provider: signing keys ------------------------------------------------------

    /// Inserts the first un-retired key of its algorithm. False, and nothing written, when the
    /// algorithm has an un-retired key already (another instance made one first: read it).
    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> Result<bool, StoreError>;

    /// The keys still published at `now` (`unpublish_at` unset or later), every algorithm, oldest
    /// first.
    async fn published_signing_keys(&self, now: DateTime<Utc>) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// A rotation, in one transaction: retires `retire.kid` if it is still the un-retired key of
    /// `new.alg` (sets its `retired_at` and `unpublish_at`), then inserts `new`, un-retired. False,
    /// and nothing written, when the key was retired meanwhile (a concurrent rotation won).
    async fn rotate_signing_key(&self, retire: &Retirement<'_>, new: &SigningKeyRecord) -> Result<bool, StoreError>;

    /// Replaces a signing key's ciphertext if it still is `old` (`tessera keys rotate`); false
    /// when it changed meanwhile or the key is gone.
    async fn replace_signing_key_ciphertext(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError>;

    /// Every signing key, unpublished ones included, oldest first (`tessera keys rotate`).
    async fn all_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// Empties the private key of every key unpublished by `now` (nothing signs with it or is
    /// verified against it again; the row stays, for the record); returns how many it emptied.
    async fn forget_unpublished_private_keys(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Closes all connections.
    async fn close(&self);

    /// A sample of each connection pool (no query is run), for metrics.
    fn pool_stats(&self) -> Vec<PoolStats>;

    /// Measures how far the read replica is behind the primary, which decides whether
    /// [`ReadFrom::Replica`] reads go to it until the next check (see [`ReplicaLag`]); until a
    /// first check, they go to the primary. [`ReplicaLag::NoReplica`] without one.
    async fn check_replica(&self) -> Result<ReplicaLag, StoreError>;

    // ---- OpenID Provider: registered clients ----------------------------------------------------

    /// Registers a client; [`ClientInsert::IdTaken`] (nothing written) when its id is taken.
    async fn insert_client(&self, client: &Client) -> Result<ClientInsert, StoreError>;

    /// A client by id.
    async fn client(&self, id: &ClientId) -> Result<Option<Client>, StoreError>;

    /// Up to `limit` clients ordered by id, after `after` (for paging).
    async fn list_clients(&self, after: Option<&ClientId>, limit: i64) -> Result<Vec<Client>, StoreError>;

    /// Replaces a client's record (every field but `id` and `created_at`) if its `updated_at` is
    /// still `expected_updated_at`.
    async fn update_client(
        &self,
        client: &Client,
        expected_updated_at: DateTime<Utc>,
    ) -> Result<ClientUpdate, StoreError>;

    /// Deletes a client (and its used assertions); false when there was none.
    async fn delete_client(&self, id: &ClientId) -> Result<bool, StoreError>;

    /// Makes the clients of the configuration file (`from_config`) exactly `clients`, in one
    /// transaction: new ones are inserted, changed ones replaced (their `created_at` kept),
    /// unchanged ones left alone, and configuration clients no longer listed deleted. Clients
    /// registered through the admin API are never touched: when one has the id of a configuration
    /// client, nothing is written and its id is reported in [`ConfigClientSync::conflicts`].
    async fn sync_config_clients(&self, clients: &[Client]) -> Result<ConfigClientSync, StoreError>;

    /// Records the use of a client assertion (`private_key_jwt`) by its `jti`, kept until
    /// `expires_at`: false when the same client used the same `jti` before and it has not expired
    /// yet (a replay). Of concurrent uses of one `jti`, on any instance, exactly one gets true.
    async fn use_client_assertion(
        &self,
        client: &ClientId,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Deletes the records of used client assertions that expired.
    async fn delete_expired_client_assertions(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    // ---- Pages: a user's sessions ---------------------------------------------------------------

    /// Up to `limit` of the user's sessions that have not reached their absolute expiry and were
    /// last used after `seen_after` (the caller's idle rule), most recently used first, each with
    /// the provider of the identity it was signed in with while that identity is linked.
    async fn user_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
        seen_after: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<UserSession>, StoreError>;

    /// Deletes every session of `user` but the one whose hash is `keep`; returns how many, or
    /// `None` (and deletes nothing) when `keep` is no longer a session of `user`.
    async fn delete_other_sessions(&self, user: UserId, keep: &[u8; 32]) -> Result<Option<u64>, StoreError>;

    /// Deletes the sessions of `user` that began in `[from, until)` (the session an id token
    /// names by its `auth_time`), writing a `session.revoked` event with `reason` when any
    /// ended; returns how many.
    async fn delete_sessions_begun(
        &self,
        user: UserId,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        reason: SessionEnd,
    ) -> Result<u64, StoreError>;
    // ---- Webhooks ------------------------------------------------------------------------------

    /// Registers a webhook endpoint; one with the `config_name` of another is not inserted (a
    /// configuration endpoint another instance inserted at the same time), nor one of the admin
    /// API (no `config_name`) when [`MAX_API_WEBHOOKS`] of them are registered already (counted
    /// under the same lock, so concurrent registrations cannot pass it). It is inserted while no
    /// fan-out of events runs, registered after every event fanned out already (its
    /// `created_at`, or just after the newest such event's: the `created_at` stored and
    /// returned), so that no event written after its registration is passed over for it.
    async fn insert_webhook(&self, endpoint: &WebhookEndpoint) -> Result<WebhookInsert, StoreError>;

    /// A webhook endpoint by id.
    async fn webhook(&self, id: WebhookId) -> Result<Option<WebhookEndpoint>, StoreError>;

    /// Every webhook endpoint, oldest first.
    async fn list_webhooks(&self) -> Result<Vec<WebhookEndpoint>, StoreError>;

    /// Replaces an endpoint's URL, event types, enabled flag and `updated_at`; false when there
    /// is no such endpoint.
    async fn update_webhook(&self, endpoint: &WebhookEndpoint) -> Result<bool, StoreError>;

    /// Changes the fields of an endpoint that `change` names, and only those, in one statement
    /// (two concurrent changes of different fields both stick), and sets `updated_at`; the
    /// endpoint as it then is, or `None` when there is no such endpoint of the API (one of the
    /// configuration file is never changed here).
    async fn patch_webhook(
        &self,
        id: WebhookId,
        change: &WebhookChange,
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookEndpoint>, StoreError>;

    /// Forgets every endpoint's previous signing key whose overlap ended by `now` (it signs
    /// nothing more); returns how many.
    async fn forget_expired_webhook_secrets(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Replaces an endpoint's signing keys if its current key's ciphertext is still `expected`
    /// (of two concurrent rotations one wins); false otherwise.
    async fn replace_webhook_secret(
        &self,
        id: WebhookId,
        expected: &[u8],
        keys: &WebhookKeys<'_>,
    ) -> Result<bool, StoreError>;

    /// Deletes an endpoint with its deliveries; false when there was none.
    async fn delete_webhook(&self, id: WebhookId) -> Result<bool, StoreError>;

    /// Fans out up to `limit` events not yet processed, in sequence order: one pending delivery
    /// per event and enabled endpoint that wants its topic and was registered when it was written;
    /// then marks them processed. One instance at a time does this (on PostgreSQL a transaction
    /// advisory lock; others return 0 at once), so deliveries are created in sequence order.
    /// Events after a missing sequence number wait for the transaction that may hold it to
    /// commit (one that rolled back never fills it) — unless they are numbered up to
    /// `waited_up_to`: the caller has waited long enough since it saw them waiting (every number
    /// missing below them was missing then). The answer says which wait ([`Waiting`]).
    async fn fan_out_events(
        &self,
        limit: i64,
        waited_up_to: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<FanOut, StoreError>;

    /// Leases up to `limit` enabled endpoints whose first pending delivery (in sequence order) is
    /// due at `now` and whose lease (if any) ran out, to `owner` until `until`. On PostgreSQL the
    /// rows are claimed `FOR NO KEY UPDATE SKIP LOCKED`, so concurrent instances claim different ones.
    async fn claim_webhooks(
        &self,
        owner: uuid::Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<WebhookEndpoint>, StoreError>;

    /// Gives up `owner`'s lease of an endpoint (nothing when another holder has it).
    async fn release_webhook(&self, id: WebhookId, owner: uuid::Uuid) -> Result<(), StoreError>;

    /// Gives up every lease `owner` holds (a delivery loop started again after a panic, whose
    /// tasks went with it); how many.
    async fn release_webhooks_of(&self, owner: uuid::Uuid) -> Result<u64, StoreError>;

    /// An endpoint's first `limit` pending deliveries, in sequence order, with their events.
    async fn pending_deliveries(&self, endpoint: WebhookId, limit: i64) -> Result<Vec<DeliveryJob>, StoreError>;

    /// Every endpoint, with how many deliveries it has pending and since when the oldest waits
    /// (zero and `None` when none is pending), for metrics.
    async fn webhook_queues(&self) -> Result<Vec<WebhookQueue>, StoreError>;

    /// Records an attempt of a pending delivery to `endpoint` as it was leased. Nothing is
    /// recorded, and false returned, when the delivery is no longer pending in the same series
    /// (delivered, failed, replayed or deleted) or the endpoint has since been disabled, deleted
    /// or given another URL: the deliverer stops there, and the delivery stays pending for the
    /// endpoint as it is now.
    async fn record_attempt(
        &self,
        endpoint: &WebhookEndpoint,
        delivery: uuid::Uuid,
        attempt: &Attempt,
    ) -> Result<bool, StoreError>;

    /// An endpoint's deliveries, latest event first, before sequence number `before`.
    async fn webhook_deliveries(
        &self,
        endpoint: WebhookId,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;

    /// Deletes at most `limit` outbox events written before `before` that every endpoint is done
    /// with (fanned out, and no delivery of theirs pending), oldest first, with their delivery
    /// log rows (the retention sweep); how many events were deleted.
    async fn delete_old_events(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError>;

    /// Schedules again the events written since `since` that the endpoint wants, a page at a
    /// time: the first `limit` fanned-out events from `from` on (`None`: a new replay, which
    /// covers the events fanned out so far), in one transaction. Missing deliveries are created,
    /// existing ones made pending anew (attempts reset, due at `now`).
    async fn replay_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        since: DateTime<Utc>,
        from: Option<ReplayCursor>,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<ReplayPage, StoreError>;

    // --- Connected accounts: updates, connector defaults, credential tests ---

    /// Changes a live profile's display name, slug and requested scopes if its version is still
    /// `expected_version` (a concurrent connection completing is never overwritten: the caller
    /// reads again and retries). Widened scopes make an active profile `needs_reauth` and bump the
    /// version. A slug taken by another live profile writes nothing.
    async fn update_profile(
        &self,
        id: ProfileId,
        expected_version: i64,
        change: &ProfileChange<'_>,
    ) -> Result<ProfileUpdate, StoreError>;

    /// Makes a live team-wide profile its connector's default in `team`, replacing the previous
    /// default in the same statement (one row per team and connector), when `by` still has
    /// [`ProfileRight::Manage`](crate::domain::ProfileRight) on it ([`DefaultOutcome::Refused`]
    /// otherwise). A member who is neither owner nor admin sets it only where there is no
    /// default, or where it is one of their own profiles ([`DefaultOutcome::OthersDefault`]
    /// otherwise), decided in the same statement.
    async fn set_default_profile(
        &self,
        team: TeamId,
        id: ProfileId,
        by: UserId,
        now: DateTime<Utc>,
    ) -> Result<DefaultOutcome, StoreError>;

    /// Makes a profile no longer its connector's default: whether it was (`false` too when the
    /// profile was revoked or deleted meanwhile); `None` (nothing changed) when `by` no longer has
    /// [`ProfileRight::Manage`](crate::domain::ProfileRight) on the live profile.
    async fn clear_default_profile(&self, team: TeamId, id: ProfileId, by: UserId) -> Result<Option<bool>, StoreError>;

    /// The team's default profile of a connector (whatever its status, revoked excepted).
    async fn default_profile(&self, team: TeamId, connector_key: &str) -> Result<Option<AuthProfile>, StoreError>;

    /// The member's oldest active personal (`oauth_account`) profile of a connector.
    async fn active_personal_profile(
        &self,
        team: TeamId,
        user: UserId,
        connector_key: &str,
    ) -> Result<Option<AuthProfile>, StoreError>;

    /// Sets an active profile's access-token expiry to `expires_at`, if its token version is
    /// still `token_version`; false otherwise. `now` makes the token count as expired (so that
    /// the next use refreshes it); the expiry it had puts it back when that refresh failed.
    async fn set_access_token_expiry(
        &self,
        id: ProfileId,
        token_version: i64,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError>;

    /// Marks an active profile `needs_reauth`, if its token version is still `token_version` (a
    /// token refreshed or reconnected meanwhile is not judged by the old one) and no refresh
    /// lease is live (the refresh under way decides); false otherwise.
    async fn mark_needs_reauth(
        &self,
        id: ProfileId,
        token_version: i64,
        reason: crate::domain::events::ReauthReason,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    // ---- Operators: listings and user deletion -------------------------------------------------

    /// A page of users, ordered by id, that match every filter of `query` that is set.
    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>, StoreError>;

    /// A page of teams, ordered by id.
    async fn list_teams(&self, query: &TeamQuery) -> Result<Vec<Team>, StoreError>;

    /// A page of a team's members (with their email and name), ordered by user id, after the
    /// user id `after`.
    async fn team_members(
        &self,
        team: TeamId,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<TeamMember>, StoreError>;

    /// Creates a team under its slug, with `owner` as its owner (a `team.member.added` event)
    /// when given; nothing is written when the slug is taken or the owner does not exist.
    async fn create_team(
        &self,
        team: &Team,
        owner: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<CreateTeamOutcome, StoreError>;

    /// Deletes a team (an operator's) with its memberships, domain claims, connected accounts
    /// (each revoked, with an `auth_profile.revoked` event), connect links and flows, in one
    /// transaction under the team's lock: each member gets a `team.member.removed` event
    /// (`team_deleted`), and every instance forgets what it cached about them. A team that is a
    /// member's default team is left as it is ([`DeleteTeamOutcome::DefaultTeam`]).
    async fn delete_team(&self, team: TeamId, now: DateTime<Utc>) -> Result<DeleteTeamOutcome, StoreError>;

    /// Deletes a user with their identities (and upstream tokens), sessions, memberships,
    /// personal connected accounts, connect links and flows, audit rows, grants and consents,
    /// and the teams they were the only member of, writing a `user.deleted` event, in one
    /// transaction. Team-wide profiles they created stay, credited to their team's
    /// longest-standing owner. Refused, with nothing written, while they are the last owner of a
    /// team with other members.
    async fn delete_user(&self, user: UserId, now: DateTime<Utc>) -> Result<DeleteUserOutcome, StoreError>;

    // --- Credentials of env and browser_session profiles (profile_credentials.rs) ---

    /// Stores a profile's credential, replacing any, and makes the profile `active` (bumping its
    /// version), with its `auth_profile.connected` event and audit row (by `write.by`), in one
    /// transaction; nothing is written for a revoked profile. With a connect
    /// token, only while that link of the profile is unused and unexpired, consuming it: of
    /// concurrent posts of one form exactly one writes.
    async fn put_profile_credential(&self, write: &CredentialWrite<'_>) -> Result<CredentialOutcome, StoreError>;

    /// A profile's status and its stored credential, if any (`None`: no such profile).
    async fn profile_credential(&self, id: ProfileId) -> Result<Option<StoredCredential>, StoreError>;

    /// Appends rows to the audit log, in one transaction. Rows are never updated.
    async fn append_audit_events(&self, events: &[NewAuditEvent]) -> Result<(), StoreError>;

    /// A page of the audit log, latest first (see [`AuditQuery`]), read from the primary.
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError>;

    /// Deletes at most `limit` audit rows older than `before`, oldest first (the retention
    /// sweep); how many were deleted.
    async fn delete_audit_events_before(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError>;

    // ---- The cache-invalidation log (rows are written by the changes themselves) ----------------

    /// The highest sequence number of the cache-invalidation log (0 when it is empty), on the
    /// primary.
    async fn cache_changes_head(&self) -> Result<i64, StoreError>;

    /// Up to `limit` logged cache invalidations after the sequence number `after`, in order, with
    /// the log's head and when the row numbered `anchor` was written, at the same moment, read on
    /// the primary. Sequence numbers increase but have gaps, and on PostgreSQL a lower one may
    /// become visible after a higher one (see `src/service/cache_sync.rs`).
    async fn cache_changes_after(&self, after: i64, limit: i64, anchor: Option<i64>) -> Result<LogPage, StoreError>;

    /// Deletes the logged cache invalidations written before `before`; returns how many.
    async fn delete_cache_changes_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    // --- Import and export (import.rs) ---

    /// The users of those of `subjects` that have an identity at `issuer`, each with whether the
    /// user is disabled (in no particular order, one entry per subject found): the batched
    /// existence check of `tessera import`.
    async fn existing_identities(
        &self,
        issuer: &Issuer,
        subjects: &[Subject],
    ) -> Result<Vec<(Subject, UserId, bool)>, StoreError>;

    /// A page of at most `limit` identities with ids greater than `after`, in id order, each with
    /// its user: what `tessera export` writes.
    async fn export_identities(
        &self,
        after: Option<IdentityId>,
        limit: i64,
    ) -> Result<Vec<ExportedIdentity>, StoreError>;
}

/// An identity with its user, as [`Store::export_identities`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedIdentity {
    /// The identity link.
    pub identity: Identity,
    /// Its user (email, verification and name as they are now).
    pub user: User,
}

/// One of a user's sessions, as the account page lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSession {
    /// SHA-256 of the cookie value (the session's key).
    pub token_hash: [u8; 32],
    /// The provider of the identity used to sign in, while it is linked.
    pub provider: Option<String>,
    /// The device it was started from, if known.
    pub device: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last use.
    pub last_seen_at: DateTime<Utc>,
    /// Absolute expiry.
    pub expires_at: DateTime<Utc>,
}

/// An endpoint's signing keys after a rotation, for [`Store::replace_webhook_secret`]: key-ring
/// ciphertexts bound to the row and their column.
#[derive(Debug, Clone, Copy)]
pub struct WebhookKeys<'a> {
    /// The new current key (`secret`).
    pub secret: &'a [u8],
    /// The key that keeps signing beside it (`previous_secret`), if any.
    pub previous: Option<&'a [u8]>,
    /// Until when the previous key signs.
    pub previous_until: Option<DateTime<Utc>>,
    /// Now.
    pub now: DateTime<Utc>,
}

/// A sample of one database pool, for metrics ([`Store::pool_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// `primary` or `replica` on PostgreSQL, `writer` or `reader` on SQLite.
    pub pool: &'static str,
    /// Connections open.
    pub size: u32,
    /// Connections open and idle.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
}

/// The pending deliveries of one webhook endpoint ([`Store::webhook_queues`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookQueue {
    /// The endpoint.
    pub endpoint: WebhookId,
    /// How many deliveries are pending.
    pub pending: i64,
    /// When the oldest pending delivery was scheduled (created, or last replayed); `None` when
    /// none is pending.
    pub oldest_scheduled_at: Option<DateTime<Utc>>,
}

/// One page of a replay ([`Store::replay_webhook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPage {
    /// How many of the page's events the endpoint wants, scheduled again.
    pub scheduled: u64,
    /// Where the next page starts when this one was full; `None`: the replay is done.
    pub next: Option<ReplayCursor>,
    /// The endpoint was deleted meanwhile: nothing was scheduled, and the replay is over.
    pub gone: bool,
}

/// Where a replay goes on ([`Store::replay_webhook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplayCursor {
    /// The sequence number of the last event already covered.
    pub after: i64,
    /// The last event the replay covers: the last fanned out when it started. Events fanned out
    /// since have their deliveries from the fan-out; scheduling them again would send an event
    /// just delivered a second time.
    pub through: i64,
    /// When the replay started: a delivery the fan-out scheduled later (an event below
    /// `through` whose transaction committed late) is left as the fan-out made it.
    pub started: DateTime<Utc>,
}

/// The outcome of one delivery attempt, for [`Store::record_attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The HTTP status, when the endpoint answered.
    pub status: Option<i64>,
    /// Why it failed (`None`: delivered).
    pub error: Option<String>,
    /// The next attempt for a failure to retry; `None` with an error: retries ran out, the
    /// delivery has failed.
    pub retry_at: Option<DateTime<Utc>>,
    /// The start of the series of attempts it belongs to (the job's `scheduled_at`): when a replay
    /// started another series meanwhile, the attempt is not recorded over it.
    pub scheduled_at: DateTime<Utc>,
}

/// What [`Store::insert_client`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInsert {
    /// The client was registered.
    Inserted,
    /// A client has this id already; nothing was written.
    IdTaken,
}

/// What [`Store::update_client`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientUpdate {
    /// The record was replaced.
    Updated,
    /// No client has this id.
    NotFound,
    /// The client changed since it was read (`updated_at` differs); nothing was written.
    Changed,
}

/// The most webhook endpoints the admin API registers (those of the configuration file are
/// bounded by the file): every fan-out reads them all, and a burst of events is fanned out to
/// each.
pub const MAX_API_WEBHOOKS: i64 = 100;

/// What [`Store::insert_webhook`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookInsert {
    /// Registered, as of this time (its `created_at`).
    Registered(DateTime<Utc>),
    /// A configuration endpoint of that name is registered already; nothing was written.
    NameTaken,
    /// [`MAX_API_WEBHOOKS`] endpoints of the admin API are registered; nothing was written.
    Full,
}

/// What [`Store::sync_config_clients`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigClientSync {
    /// Configuration clients inserted.
    pub inserted: Vec<ClientId>,
    /// Configuration clients whose record changed.
    pub updated: Vec<ClientId>,
    /// Configuration clients deleted (no longer in the file).
    pub deleted: Vec<ClientId>,
    /// Ids of the file taken by clients registered through the admin API; when not empty,
    /// nothing was written.
    pub conflicts: Vec<ClientId>,
}

/// The environment variables sqlx reads for a PostgreSQL connection (besides `~/.pgpass`).
const PG_ENVIRONMENT: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGAPPNAME",
    "PGOPTIONS",
    "PGPASSFILE",
];

/// What is doubtful in the configured database URLs: parameters the driver ignores, a TLS mode
/// that does not verify the server. Logged by [`connect`], and listed by `tessera check`.
pub fn url_warnings(config: &DatabaseConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, url) in [("database.url", Some(&config.url)), ("database.replica_url", config.replica_url.as_ref())] {
        if let Some(ignored) = url.map(|url| url.ignored_parameters()).filter(|ignored| !ignored.is_empty()) {
            warnings.push(format!(
                "{key} has parameters Tessera's driver does not read, which are ignored: {}",
                ignored.join(", ")
            ));
        }
        if let Some(mode) = url.and_then(crate::config::DatabaseUrl::unverified_tls) {
            warnings.push(format!(
                "{key}: the connection to PostgreSQL does not verify the server's certificate (sslmode {mode}): \
                 set sslmode=verify-full (with sslrootcert) in the URL"
            ));
        }
    }
    warnings
}

/// Connects to the database the configuration names.
pub async fn connect(config: &DatabaseConfig) -> Result<Arc<dyn Store>, StoreError> {
    for warning in url_warnings(config) {
        tracing::warn!("{warning}");
    }
    // The driver reads these where the URL says nothing: named (never with their values), so
    // that one set in the environment by accident is seen.
    if config.url.backend() == crate::config::Backend::Postgres {
        let set: Vec<&str> = PG_ENVIRONMENT.iter().copied().filter(|name| std::env::var_os(name).is_some()).collect();
        if !set.is_empty() {
            tracing::info!(variables = %set.join(", "), "PostgreSQL environment variables are set: the driver reads them for what the database URL does not say");
        }
    }
    Ok(Arc::new(SqlStore::connect(config).await?))
}

/// Decodes a stored role, reporting corrupt data rather than panicking.
fn decode_role(value: &str) -> Result<crate::domain::Role, StoreError> {
    crate::domain::Role::parse(value).ok_or_else(|| StoreError::Corrupt(format!("unknown role {value:?}")))
}

/// Decodes a stored profile kind.
fn decode_kind(value: &str) -> Result<ProfileKind, StoreError> {
    ProfileKind::parse(value).ok_or_else(|| StoreError::Corrupt(format!("unknown kind {value:?}")))
}

/// Decodes a stored slug.
fn decode_slug(value: String) -> Result<Slug, StoreError> {
    Slug::parse(&value).map_err(|_| StoreError::Corrupt(format!("invalid slug {value:?}")))
}

/// Decodes a stored issuer.
fn decode_issuer(value: &str) -> Result<Issuer, StoreError> {
    Issuer::parse(value).map_err(|_| StoreError::Corrupt(format!("invalid issuer {value:?}")))
}

/// Decodes a stored domain.
fn decode_domain(value: &str) -> Result<DomainName, StoreError> {
    DomainName::parse(value).map_err(|_| StoreError::Corrupt(format!("invalid domain {value:?}")))
}

/// Decodes a stored subject.
fn decode_subject(value: &str) -> Result<Subject, StoreError> {
    Subject::parse(value).map_err(|_| StoreError::Corrupt("invalid subject".into()))
}
