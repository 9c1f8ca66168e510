//! Decoding rows into domain records, shared by both backends.
//!
//! Each backend implements [`RowExt`] for its row type (SQLite keeps times as integer
//! microseconds, PostgreSQL as `timestamptz`); the record decoders below then work on either.
//! Queries select columns under the aliases that the `*_columns!` macros define.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    ConnectToken, ProfileSecrets, SigningKeyRecord, StoreError, decode_domain, decode_issuer, decode_kind, decode_role,
    decode_slug, decode_subject,
};
use crate::domain::{
    AuthProfile, DomainClaim, Identity, IdentityId, Principal, ProfileId, ProfileStatus, Team, TeamId, TeamMembership,
    TeamRole, User, UserId, UserProfile,
};

/// Column accessors with the backend's storage conventions.
pub(super) trait RowExt {
    fn uuid(&self, col: &str) -> Result<Uuid, StoreError>;
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, StoreError>;
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// A JSON column (`jsonb` on PostgreSQL, text on SQLite), or NULL.
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, StoreError>;
    /// A JSON column that is never NULL.
    fn json(&self, col: &str) -> Result<serde_json::Value, StoreError> {
        self.opt_json(col)?.ok_or_else(|| StoreError::Corrupt(format!("{col} is NULL")))
    }
}

/// Columns of `users u`, aliased for [`user`].
macro_rules! user_columns {
    () => {
        "u.id AS user_id, u.email AS user_email, u.email_verified AS user_email_verified, \
         u.name AS user_name, u.disabled AS user_disabled, u.created_at AS user_created_at, \
         u.updated_at AS user_updated_at"
    };
}

/// Columns of `teams t`, aliased for [`team`].
macro_rules! team_columns {
    () => {
        "t.id AS team_id, t.slug AS team_slug, t.name AS team_name, t.created_at AS team_created_at"
    };
}

/// Columns of `identities i`, aliased for [`identity`].
macro_rules! identity_columns {
    () => {
        "i.id AS identity_id, i.user_id AS identity_user_id, i.issuer AS identity_issuer, \
         i.subject AS identity_subject, i.provider AS identity_provider, i.email AS identity_email, \
         i.email_verified AS identity_email_verified, i.created_at AS identity_created_at, \
         i.last_seen_at AS identity_last_seen_at"
    };
}

pub(super) use {identity_columns, team_columns, user_columns};

/// Decodes the [`user_columns!`] of a row.
pub(super) fn user(row: &impl RowExt) -> Result<User, StoreError> {
    Ok(User {
        id: UserId::from_uuid(row.uuid("user_id")?),
        email: row.opt_text("user_email")?,
        email_verified: row.flag("user_email_verified")?,
        name: row.opt_text("user_name")?,
        disabled: row.flag("user_disabled")?,
        created_at: row.time("user_created_at")?,
        updated_at: row.time("user_updated_at")?,
    })
}

/// Decodes the [`team_columns!`] of a row.
pub(super) fn team(row: &impl RowExt) -> Result<Team, StoreError> {
    Ok(Team {
        id: TeamId::from_uuid(row.uuid("team_id")?),
        slug: decode_slug(row.text("team_slug")?)?,
        name: row.text("team_name")?,
        created_at: row.time("team_created_at")?,
    })
}

/// Decodes the [`team_columns!`] of an outer-joined row, which may all be NULL.
pub(super) fn opt_team(row: &impl RowExt) -> Result<Option<Team>, StoreError> {
    match row.opt_uuid("team_id")? {
        Some(_) => team(row).map(Some),
        None => Ok(None),
    }
}

/// Decodes [`team_columns!`] plus `role` and `is_default`.
pub(super) fn membership(row: &impl RowExt) -> Result<TeamMembership, StoreError> {
    Ok(TeamMembership { team: team(row)?, role: decode_role(&row.text("role")?)?, is_default: row.flag("is_default")? })
}

/// Decodes the [`identity_columns!`] of a row.
pub(super) fn identity(row: &impl RowExt) -> Result<Identity, StoreError> {
    Ok(Identity {
        id: IdentityId::from_uuid(row.uuid("identity_id")?),
        user_id: UserId::from_uuid(row.uuid("identity_user_id")?),
        issuer: decode_issuer(&row.text("identity_issuer")?)?,
        subject: decode_subject(&row.text("identity_subject")?)?,
        provider: row.text("identity_provider")?,
        email: row.opt_text("identity_email")?,
        email_verified: row.flag("identity_email_verified")?,
        created_at: row.time("identity_created_at")?,
        last_seen_at: row.time("identity_last_seen_at")?,
    })
}

/// Columns of `team_domains d`, aliased for [`domain_claim`].
macro_rules! domain_columns {
    () => {
        "d.domain AS domain, d.team_id AS domain_team_id, d.issuer AS domain_issuer, d.verified AS domain_verified, \
         d.created_at AS domain_created_at, d.updated_at AS domain_updated_at"
    };
}

pub(super) use domain_columns;

/// Decodes the [`domain_columns!`] of a row.
pub(super) fn domain_claim(row: &impl RowExt) -> Result<DomainClaim, StoreError> {
    Ok(DomainClaim {
        domain: decode_domain(&row.text("domain")?)?,
        team_id: TeamId::from_uuid(row.uuid("domain_team_id")?),
        issuer: decode_issuer(&row.text("domain_issuer")?)?,
        verified: row.flag("domain_verified")?,
        created_at: row.time("domain_created_at")?,
        updated_at: row.time("domain_updated_at")?,
    })
}

/// Assembles a principal from the rows of a principal query: `identity_id`,
/// `identity_last_seen_at`, the [`user_columns!`], and per team `team_id`, `team_slug`, `role`
/// (NULL when the user has no team).
pub(super) fn principal<R: RowExt>(rows: &[R]) -> Result<Option<Principal>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut teams = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(id) = row.opt_uuid("team_id")? {
            teams.push(TeamRole {
                id: TeamId::from_uuid(id),
                slug: decode_slug(row.text("team_slug")?)?,
                role: decode_role(&row.text("role")?)?,
            });
        }
    }
    Ok(Some(Principal {
        identity_id: IdentityId::from_uuid(first.uuid("identity_id")?),
        last_seen_at: first.time("identity_last_seen_at")?,
        user: user(first)?,
        teams,
    }))
}

/// Assembles a profile; the primary identity is the chosen one, else the oldest.
pub(super) fn user_profile(
    user: User,
    chosen_primary: Option<uuid::Uuid>,
    identities: Vec<Identity>,
    teams: Vec<TeamMembership>,
) -> UserProfile {
    let primary_identity_id = chosen_primary
        .map(IdentityId::from_uuid)
        .filter(|id| identities.iter().any(|i| i.id == *id))
        .or_else(|| identities.first().map(|i| i.id));
    UserProfile { user, identities, primary_identity_id, teams }
}

/// Columns of `auth_profiles p`, aliased for [`profile`].
macro_rules! profile_columns {
    () => {
        "p.id AS profile_id, p.team_id AS profile_team_id, p.slug AS profile_slug, \
         p.connector_key AS profile_connector_key, p.profile_kind AS profile_kind, p.provider AS profile_provider, \
         p.status AS profile_status, p.created_by AS profile_created_by, p.display_name AS profile_display_name, \
         p.scopes AS profile_scopes, p.granted_scopes AS profile_granted_scopes, \
         EXISTS (SELECT 1 FROM connector_defaults d WHERE d.profile_id = p.id) AS profile_is_default, \
         p.upstream_account_id AS profile_upstream_account_id, \
         p.access_token_expires_at AS profile_access_token_expires_at, \
         p.pending_expires_at AS profile_pending_expires_at, p.version AS profile_version, \
         p.created_at AS profile_created_at, p.updated_at AS profile_updated_at, \
         (SELECT c.meta FROM profile_credentials c WHERE c.profile_id = p.id) AS profile_credential_meta"
    };
}

pub(super) use profile_columns;

/// Decodes the [`profile_columns!`] of a row.
pub(super) fn profile(row: &impl RowExt) -> Result<AuthProfile, StoreError> {
    let kind = row.text("profile_kind")?;
    let status = row.text("profile_status")?;
    Ok(AuthProfile {
        id: ProfileId::from_uuid(row.uuid("profile_id")?),
        team_id: TeamId::from_uuid(row.uuid("profile_team_id")?),
        slug: decode_slug(row.text("profile_slug")?)?,
        connector_key: row.text("profile_connector_key")?,
        profile_kind: decode_kind(&kind)?,
        provider: row.text("profile_provider")?,
        status: ProfileStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
        created_by: UserId::from_uuid(row.uuid("profile_created_by")?),
        display_name: row.text("profile_display_name")?,
        scopes: row.text("profile_scopes")?.split_whitespace().map(str::to_owned).collect(),
        granted_scopes: row
            .opt_text("profile_granted_scopes")?
            .map(|scopes| scopes.split_whitespace().map(str::to_owned).collect()),
        is_default: row.flag("profile_is_default")?,
        upstream_account_id: row.opt_text("profile_upstream_account_id")?,
        access_token_expires_at: row.opt_time("profile_access_token_expires_at")?,
        pending_expires_at: row.opt_time("profile_pending_expires_at")?,
        version: row.int("profile_version")?,
        created_at: row.time("profile_created_at")?,
        updated_at: row.time("profile_updated_at")?,
        credential: row
            .opt_text("profile_credential_meta")?
            .map(|meta| super::profile_credentials::decode_meta(&meta))
            .transpose()?,
    })
}

/// Decodes `status`, `token_version`, `access_token`, `refresh_token`, `access_token_expires_at`,
/// `refresh_lease_owner` and `refresh_lease_until`.
pub(super) fn profile_secrets(row: &impl RowExt) -> Result<ProfileSecrets, StoreError> {
    let status = row.text("status")?;
    let lease = match (row.opt_uuid("refresh_lease_owner")?, row.opt_time("refresh_lease_until")?) {
        (Some(owner), Some(until)) => Some((owner, until)),
        _ => None,
    };
    Ok(ProfileSecrets {
        status: ProfileStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
        version: row.int("token_version")?,
        access_token: row.opt_bytes("access_token")?,
        refresh_token: row.opt_bytes("refresh_token")?,
        expires_at: row.opt_time("access_token_expires_at")?,
        stored_at: row.opt_time("access_token_stored_at")?,
        lease,
        upstream_account_id: row.opt_text("upstream_account_id")?,
    })
}

/// Decodes a connect token row (`profile_id`, `user_id`, `allow_account_change`, `created_at`,
/// `expires_at`).
pub(super) fn connect_token(row: &impl RowExt, token_hash: &[u8; 32]) -> Result<ConnectToken, StoreError> {
    Ok(ConnectToken {
        token_hash: *token_hash,
        profile: ProfileId::from_uuid(row.uuid("profile_id")?),
        user: UserId::from_uuid(row.uuid("user_id")?),
        allow_account_change: row.flag("allow_account_change")?,
        created_at: row.time("created_at")?,
        expires_at: row.time("expires_at")?,
    })
}

/// Implements the type-uniform accessors of [`RowExt`] for a backend's row type; the backend adds
/// `time` itself.
macro_rules! impl_row_ext_common {
    () => {
        fn uuid(&self, col: &str) -> Result<uuid::Uuid, StoreError> {
            Ok(sqlx::Row::try_get(self, col)?)
        }
        fn opt_uuid(&self, col: &str) -> Result<Option<uuid::Uuid>, StoreError> {
            Ok(sqlx::Row::try_get(self, col)?)
        }
        fn text(&self, col: &str) -> Result<String, StoreError> {
            Ok(sqlx::Row::try_get(self, col)?)
        }
        fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
            Ok(sqlx::Row::try_get(self, col)?)
        }
        fn flag(&self, col: &str) -> Result<bool, StoreError> {
            Ok(sqlx::Row::try_get(self, col)?)
        }
        fn int(&self, col: &str) -> Result<i64, StoreError> {
            Ok(sqlx::Row::try_get(self, col)?)
        }
        fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::Row::try_get(self, col)?)
        }
        fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
            Ok(sqlx::Row::try_get(self, col)?)
        }
        fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(sqlx::Row::try_get(self, col)?)
        }
    };
}

pub(super) use impl_row_ext_common;

/// A stored 32-byte hash.
pub(super) fn hash32(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt("a stored hash is not 32 bytes".into()))
}

// ---- OpenID Provider: registered clients ------------------------------------------------------

/// Columns of `clients c`, aliased for [`client`].
macro_rules! client_columns {
    () => {
        "c.id AS client_id, c.name AS client_name, c.kind AS client_kind, c.secret_hash AS client_secret_hash, \
         c.previous_secret_hash AS client_previous_secret_hash, c.previous_secret_until AS client_previous_secret_until, \
         c.jwks AS client_jwks, c.redirect_uris AS client_redirect_uris, \
         c.post_logout_redirect_uris AS client_post_logout_redirect_uris, c.scopes AS client_scopes, \
         c.grant_types AS client_grant_types, c.resources AS client_resources, c.first_party AS client_first_party, \
         c.signing_alg AS client_signing_alg, c.access_token_ttl_seconds AS client_access_token_ttl, \
         c.refresh_token_ttl_seconds AS client_refresh_token_ttl, c.from_config AS client_from_config, \
         c.created_at AS client_created_at, c.updated_at AS client_updated_at"
    };
}

pub(super) use client_columns;

/// Decodes the [`client_columns!`] of a row.
pub(super) fn client(row: &impl RowExt) -> Result<crate::domain::Client, StoreError> {
    use crate::domain::{Client, ClientId, ClientKind, GrantType, RedirectUri};
    let corrupt = |what: &str| StoreError::Corrupt(format!("client: invalid {what}"));
    let id = row.text("client_id")?;
    let uris = |col: &str| -> Result<Vec<RedirectUri>, StoreError> {
        let list: Vec<String> = serde_json::from_value(row.json(col)?).map_err(|_| corrupt(col))?;
        Ok(list.into_iter().map(RedirectUri::from_stored).collect())
    };
    let strings = |col: &str| -> Result<Vec<String>, StoreError> {
        serde_json::from_value(row.json(col)?).map_err(|_| corrupt(col))
    };
    let seconds = |col: &str| -> Result<std::time::Duration, StoreError> {
        u64::try_from(row.int(col)?).map(std::time::Duration::from_secs).map_err(|_| corrupt(col))
    };
    Ok(Client {
        id: ClientId::parse(&id).map_err(|_| corrupt("id"))?,
        name: row.text("client_name")?,
        kind: match row.text("client_kind")?.as_str() {
            "confidential" => ClientKind::Confidential,
            "public" => ClientKind::Public,
            _ => return Err(corrupt("kind")),
        },
        secret_hash: row
            .opt_bytes("client_secret_hash")?
            .map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| corrupt("secret hash")))
            .transpose()?,
        previous_secret: match (
            row.opt_bytes("client_previous_secret_hash")?,
            row.opt_time("client_previous_secret_until")?,
        ) {
            (Some(hash), Some(until)) => Some(crate::domain::PreviousSecret {
                hash: <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| corrupt("previous secret hash"))?,
                until,
            }),
            _ => None,
        },
        jwks: row.opt_json("client_jwks")?,
        redirect_uris: uris("client_redirect_uris")?,
        post_logout_redirect_uris: uris("client_post_logout_redirect_uris")?,
        scopes: strings("client_scopes")?,
        grant_types: serde_json::from_value::<Vec<GrantType>>(row.json("client_grant_types")?)
            .map_err(|_| corrupt("grant types"))?,
        resources: strings("client_resources")?,
        first_party: row.flag("client_first_party")?,
        signing_alg: row.text("client_signing_alg")?.parse().map_err(|()| corrupt("signing algorithm"))?,
        access_token_ttl: seconds("client_access_token_ttl")?,
        refresh_token_ttl: seconds("client_refresh_token_ttl")?,
        from_config: row.flag("client_from_config")?,
        created_at: row.time("client_created_at")?,
        updated_at: row.time("client_updated_at")?,
    })
}

/// Columns of `signing_keys k`, aliased for [`signing_key`].
macro_rules! signing_key_columns {
    () => {
        "k.kid AS kid, k.alg AS alg, k.public_jwk AS public_jwk, k.private_key AS private_key, \
         k.created_at AS created_at, k.signs_from AS signs_from, k.retired_at AS retired_at, \
         k.unpublish_at AS unpublish_at"
    };
}

pub(super) use signing_key_columns;

/// Decodes the [`signing_key_columns!`] of a row.
pub(super) fn signing_key(row: &impl RowExt) -> Result<SigningKeyRecord, StoreError> {
    let alg = row.text("alg")?;
    Ok(SigningKeyRecord {
        kid: row.text("kid")?,
        alg: alg.parse().map_err(|()| StoreError::Corrupt(format!("unknown signing algorithm {alg:?}")))?,
        public_jwk: row.text("public_jwk")?,
        private_key: row.bytes("private_key")?,
        created_at: row.time("created_at")?,
        signs_from: row.time("signs_from")?,
        retired_at: row.opt_time("retired_at")?,
        unpublish_at: row.opt_time("unpublish_at")?,
    })
}
