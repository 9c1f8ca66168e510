//! Operators' reads and writes: users, teams and members listed a page at a time, teams created
//! by an operator, and the deletion of a user with everything that is theirs, in one transaction.
//!
//! Pages are ordered by id: users and teams have time-ordered (UUIDv7) ids, so that order is the
//! order of creation, and a page after a given id is stable however rows are added meanwhile.

use chrono::{DateTime, Utc};

use super::cache_sync::{CacheChange, log_changes};
use super::db::{Db, Tx, query};
use super::rows::{self, RowExt, identity_columns, team_columns, user_columns};
use super::sql::{
    credit_team_wide_profiles, delete_team_in, insert_event, insert_events, lock_team, lock_user_key,
    revoke_found_profiles, user_in,
};
use super::{NewEvent, StoreError, decode_role};
use crate::domain::events;
use crate::domain::{Email, Identity, Issuer, Role, Subject, Team, TeamId, User, UserId};

/// What [`Store::list_users`](super::Store::list_users) returns: every filter that is set must
/// hold.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// Users whose email has this key ([`Email::key`], the rule of linking).
    pub email: Option<Email>,
    /// Users holding this identity.
    pub identity: Option<(Issuer, Subject)>,
    /// Members of this team.
    pub team: Option<TeamId>,
    /// Disabled (true) or enabled (false) users.
    pub disabled: Option<bool>,
    /// Only users whose id is greater (the last id of the previous page).
    pub after: Option<uuid::Uuid>,
    /// At most this many.
    pub limit: i64,
}

/// What [`Store::list_teams`](super::Store::list_teams) returns.
#[derive(Debug, Clone, Default)]
pub struct TeamQuery {
    /// Teams whose slug starts with this.
    pub slug_prefix: Option<String>,
    /// Only teams whose id is greater.
    pub after: Option<uuid::Uuid>,
    /// At most this many.
    pub limit: i64,
}

/// A member of a team, as an operator lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamMember {
    /// The member's user id.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
    /// Their email, if known.
    pub email: Option<String>,
    /// Their display name, if known.
    pub name: Option<String>,
    /// When they joined.
    pub joined_at: DateTime<Utc>,
}

/// What [`Store::create_team`](super::Store::create_team) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateTeamOutcome {
    /// The team was created (with its owner's membership, when one was named).
    Created(Team),
    /// Another team has the slug; nothing was written.
    SlugTaken,
    /// The named owner does not exist; nothing was written.
    OwnerNotFound,
}

/// What [`Store::delete_team`](super::Store::delete_team) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteTeamOutcome {
    /// The team is gone; these were its members.
    Deleted(Vec<UserId>),
    /// No such team.
    NotFound,
    /// The team is a member's default team (their personal one, which goes with the user);
    /// nothing was written.
    DefaultTeam,
}

/// What [`Store::delete_user`](super::Store::delete_user) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteUserOutcome {
    /// The user and everything of theirs are gone.
    Deleted(DeletedUser),
    /// No user has that id.
    NotFound,
    /// The user is the last owner of a team that has other members; nothing was written.
    LastOwner(Team),
}

/// A deleted user: what was deleted with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedUser {
    /// The user as they were.
    pub user: User,
    /// Their identities, unlinked and deleted.
    pub identities: Vec<Identity>,
    /// The teams they were removed from (the teams stay).
    pub left_teams: Vec<TeamId>,
    /// The teams deleted with them: those they were the only member of.
    pub deleted_teams: Vec<TeamId>,
}

/// The filters of [`list_users`] beside the one its rows are driven from, after `FROM … u`
/// and the driving table's own condition, in user order by `$order` (the user's id, or the
/// driving table's copy of it: SQLite does not see that a join makes them the same, and would
/// read every row after the cursor to sort them by the other).
macro_rules! user_filters {
    () => {
        user_filters!("u.id")
    };
    ($order:literal) => {
        concat!(
            " AND ($1 IS NULL OR u.email_key = $1)
          AND ($2 IS NULL OR EXISTS (SELECT 1 FROM identities i
                                     WHERE i.user_id = u.id AND i.issuer = $2 AND i.subject = $3))
          AND ($4 IS NULL OR EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = u.id AND m.team_id = $4))
          AND ($5 = FALSE OR u.disabled = $6)
          AND u.id > $7
         ORDER BY ",
            $order,
            " LIMIT $8"
        )
    };
}

/// [`list_users`] with an identity filter.
pub(super) const USERS_OF_IDENTITY: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM identities d JOIN users u ON u.id = d.user_id WHERE d.issuer = $2 AND d.subject = $3",
    user_filters!()
);
/// [`list_users`] with an email filter and no identity or team filter (which read fewer rows).
pub(super) const USERS_OF_EMAIL: &str =
    concat!("SELECT ", user_columns!(), " FROM users u WHERE u.email_key = $1", user_filters!());
/// [`list_users`] with a team filter and no identity filter.
pub(super) const USERS_OF_TEAM: &str = concat!(
    "SELECT ",
    user_columns!(),
    // The cursor on the driving table too: PostgreSQL does not carry `u.id > $7` over the join.
    " FROM memberships t JOIN users u ON u.id = t.user_id WHERE t.team_id = $4 AND t.user_id > $7",
    user_filters!("t.user_id")
);
/// [`list_users`] with none of those filters.
pub(super) const USERS: &str = concat!("SELECT ", user_columns!(), " FROM users u WHERE TRUE", user_filters!());

/// A page of users. An identity, a team or an email filter drives the read from its own index
/// (one identity; the team's memberships, in user order by their key; the users of an email):
/// read from the users in id order with the filter beside, a team of three among a million users
/// is a scan of all of them, which a `LIMIT` does not stop (PostgreSQL does not turn a subquery
/// under an `OR` into a join, and SQLite uses no index for a condition under an `OR`). The cursor
/// is a plain `>` for the same reason: after the nil id when there is none, which no user has.
pub(super) async fn list_users(db: &Db, q: &UserQuery) -> Result<Vec<User>, StoreError> {
    let (issuer, subject) = match &q.identity {
        Some((issuer, subject)) => (Some(issuer.as_str()), Some(subject.as_str())),
        None => (None, None),
    };
    let sql = match (&q.identity, q.team) {
        (Some(_), _) => USERS_OF_IDENTITY,
        (None, Some(_)) => USERS_OF_TEAM,
        (None, None) if q.email.is_some() => USERS_OF_EMAIL,
        (None, None) => USERS,
    };
    query(sql)
        .bind(q.email.as_ref().map(Email::key))
        .bind(issuer)
        .bind(subject)
        .bind(q.team.map(|t| t.as_uuid()))
        .bind(q.disabled.is_some())
        .bind(q.disabled.unwrap_or(false))
        .bind(q.after.unwrap_or_else(uuid::Uuid::nil))
        .bind(q.limit.max(0))
        .fetch_all(db.reader())
        .await?
        .iter()
        .map(rows::user)
        .collect()
}

/// [`list_teams`]: a page from the cursor on, in id order.
pub(super) const TEAMS: &str = concat!(
    "SELECT ",
    team_columns!(),
    " FROM teams t
     WHERE ($1 IS NULL OR substr(t.slug, 1, length($1)) = $1)
       AND t.id > $2
     ORDER BY t.id
     LIMIT $3"
);

/// [`team_members`]: a page from the cursor on, in user order.
pub(super) const TEAM_MEMBERS: &str = "SELECT m.user_id, m.role, m.created_at, u.email, u.name
     FROM memberships m JOIN users u ON u.id = m.user_id
     WHERE m.team_id = $1 AND m.user_id > $2
     ORDER BY m.user_id
     LIMIT $3";

/// A page of teams.
pub(super) async fn list_teams(db: &Db, q: &TeamQuery) -> Result<Vec<Team>, StoreError> {
    query(TEAMS)
        .bind(q.slug_prefix.as_deref())
        .bind(q.after.unwrap_or_else(uuid::Uuid::nil))
        .bind(q.limit.max(0))
        .fetch_all(db.reader())
        .await?
        .iter()
        .map(rows::team)
        .collect()
}

/// A page of a team's members, by user id.
pub(super) async fn team_members(
    db: &Db,
    team: TeamId,
    after: Option<uuid::Uuid>,
    limit: i64,
) -> Result<Vec<TeamMember>, StoreError> {
    query(TEAM_MEMBERS)
        .bind(team.as_uuid())
        .bind(after.unwrap_or_else(uuid::Uuid::nil))
        .bind(limit.max(0))
        .fetch_all(db.reader())
        .await?
        .iter()
        .map(|row| {
            Ok(TeamMember {
                user_id: UserId::from_uuid(row.uuid("user_id")?),
                role: decode_role(&row.text("role")?)?,
                email: row.opt_text("email")?,
                name: row.opt_text("name")?,
                joined_at: row.time("created_at")?,
            })
        })
        .collect()
}

/// [`Store::delete_team`](super::Store::delete_team).
pub(super) async fn delete_team(db: &Db, team: TeamId, now: DateTime<Utc>) -> Result<DeleteTeamOutcome, StoreError> {
    let mut tx = db.begin().await?;
    // Serialises with membership changes of the team: none is added meanwhile.
    if !lock_team(&mut tx, team).await? {
        tx.rollback().await?;
        return Ok(DeleteTeamOutcome::NotFound);
    }
    let rows = query("SELECT user_id, role, is_default FROM memberships WHERE team_id = $1 ORDER BY user_id")
        .bind(team.as_uuid())
        .fetch_all(&mut tx)
        .await?;
    let mut members = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.flag("is_default")? {
            tx.rollback().await?;
            return Ok(DeleteTeamOutcome::DefaultTeam);
        }
        members.push((UserId::from_uuid(row.uuid("user_id")?), decode_role(&row.text("role")?)?));
    }
    // With its domains, profiles (each revoked, with its event), links and flows (cascades).
    delete_team_in(&mut tx, team, now).await?;
    let removed: Vec<_> = members
        .iter()
        .map(|(user, role)| {
            NewEvent::new(events::TEAM_MEMBER_REMOVED, events::member_removed(team, *user, *role, true))
        })
        .collect();
    insert_events(&mut tx, &removed, now).await?;
    let forget: Vec<_> = members.iter().map(|(user, _)| CacheChange::User(*user)).collect();
    log_changes(&mut tx, &forget, now).await?;
    tx.commit().await?;
    Ok(DeleteTeamOutcome::Deleted(members.into_iter().map(|(user, _)| user).collect()))
}

/// Creates a team, with `owner` as its owner (not their default team) when given.
pub(super) async fn create_team(
    db: &Db,
    team: &Team,
    owner: Option<UserId>,
    now: DateTime<Utc>,
) -> Result<CreateTeamOutcome, StoreError> {
    let mut tx = db.begin().await?;
    if let Some(owner) = owner
        && !lock_user_key(&mut tx, owner).await?
    {
        tx.rollback().await?;
        return Ok(CreateTeamOutcome::OwnerNotFound);
    }
    let inserted = query(
        "INSERT INTO teams (id, slug, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (slug) DO NOTHING RETURNING id",
    )
    .bind(team.id.as_uuid())
    .bind(team.slug.as_str())
    .bind(team.name.as_str())
    .bind(team.created_at)
    .fetch_optional(&mut tx)
    .await?;
    if inserted.is_none() {
        tx.rollback().await?;
        return Ok(CreateTeamOutcome::SlugTaken);
    }
    if let Some(owner) = owner {
        query(
            "INSERT INTO memberships (team_id, user_id, role, is_default, created_at)
             VALUES ($1, $2, 'owner', FALSE, $3)",
        )
        .bind(team.id.as_uuid())
        .bind(owner.as_uuid())
        .bind(now)
        .execute(&mut tx)
        .await?;
        let payload = events::member_changed(team.id, owner, Role::Owner, None);
        insert_event(&mut tx, &NewEvent::new(events::TEAM_MEMBER_ADDED, payload), now).await?;
        log_changes(&mut tx, &[CacheChange::User(owner)], now).await?;
    }
    tx.commit().await?;
    Ok(CreateTeamOutcome::Created(team.clone()))
}

/// One of the user's memberships, with what deleting the user would leave behind.
struct Membership {
    team: Team,
    role: Role,
    /// Someone else is a member.
    others: bool,
    /// Another member is an owner who can act (not disabled).
    other_owner: bool,
}

/// A user's memberships, each with whether anyone else, and another owner who can act, is in
/// the team (owners read by `memberships_owners_idx`).
pub(super) const MEMBERSHIPS_OF: &str = concat!(
    "SELECT ",
    team_columns!(),
    ", m.role AS role,
       EXISTS (SELECT 1 FROM memberships o WHERE o.team_id = m.team_id AND o.user_id <> m.user_id) AS others,
       EXISTS (SELECT 1 FROM memberships o JOIN users u ON u.id = o.user_id
               WHERE o.team_id = m.team_id AND o.role = 'owner' AND o.user_id <> m.user_id
                 AND NOT u.disabled) AS other_owner
     FROM memberships m JOIN teams t ON t.id = m.team_id
     WHERE m.user_id = $1
     ORDER BY t.id"
);

async fn memberships_of(tx: &mut Tx, user: UserId) -> Result<Vec<Membership>, StoreError> {
    query(MEMBERSHIPS_OF)
        .bind(user.as_uuid())
        .fetch_all(tx)
        .await?
        .iter()
        .map(|row| {
            Ok(Membership {
                team: rows::team(row)?,
                role: decode_role(&row.text("role")?)?,
                others: row.flag("others")?,
                other_owner: row.flag("other_owner")?,
            })
        })
        .collect()
}

/// Deletes a user and everything of theirs, in one transaction (see [`DeleteUserOutcome`] and
/// README "More admin endpoints" for the list). Two co-owners deleted at once can deadlock on
/// PostgreSQL (each holds its own row and one waits for their team, which the other holds while
/// crediting its profiles to the first); the transaction PostgreSQL aborts is run again.
pub(super) async fn delete_user(db: &Db, user: UserId, now: DateTime<Utc>) -> Result<DeleteUserOutcome, StoreError> {
    // Not at once: the co-owner's deletion, which PostgreSQL let through, must get this user's
    // row (to credit its profiles) before this one takes it again, or the two trade deadlocks.
    super::sql::retrying_conflicts(|| delete_user_once(db, user, now)).await
}

async fn delete_user_once(db: &Db, user: UserId, now: DateTime<Utc>) -> Result<DeleteUserOutcome, StoreError> {
    let id = user.as_uuid();
    let mut tx = db.begin().await?;
    // The user's row lock serialises deletions of one user with each other and with disabling.
    let locked = query("SELECT id FROM users WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(&mut tx).await?;
    let Some(found) = (match locked {
        Some(_) => user_in(&mut tx, user).await?,
        None => None,
    }) else {
        tx.rollback().await?;
        return Ok(DeleteUserOutcome::NotFound);
    };
    // The team locks serialise this with membership changes of the same teams (as write_member and
    // remove_member take them), so that no team loses its last owner to a race.
    query(
        "SELECT id FROM teams WHERE id IN (SELECT team_id FROM memberships WHERE user_id = $1) ORDER BY id FOR UPDATE",
    )
    .bind(id)
    .execute(&mut tx)
    .await?;
    let memberships = memberships_of(&mut tx, user).await?;
    if let Some(blocking) = memberships.iter().find(|m| m.role == Role::Owner && m.others && !m.other_owner) {
        let team = blocking.team.clone();
        tx.rollback().await?;
        return Ok(DeleteUserOutcome::LastOwner(team));
    }
    let (mut left_teams, mut deleted_teams) = (Vec::new(), Vec::new());
    for membership in &memberships {
        if !membership.others {
            // Their own team: it goes, with its domains, profiles, links and flows (cascades).
            delete_team_in(&mut tx, membership.team.id, now).await?;
            deleted_teams.push(membership.team.id);
        } else {
            left_teams.push(membership.team.id);
        }
    }
    let identities = query(concat!(
        "SELECT ",
        identity_columns!(),
        " FROM identities i WHERE i.user_id = $1 ORDER BY i.created_at, i.id"
    ))
    .bind(id)
    .fetch_all(&mut tx)
    .await?
    .iter()
    .map(rows::identity)
    .collect::<Result<Vec<_>, _>>()?;
    // Their personal connected accounts in the teams they leave end with them, each told as a
    // revocation (those of the teams deleted with them were, with the team).
    let personal = query(
        "SELECT id FROM auth_profiles WHERE created_by = $1 AND profile_kind = 'oauth_account' AND status <> 'revoked'
         ORDER BY id FOR UPDATE",
    )
    .bind(id);
    revoke_found_profiles(&mut tx, personal, "user_deleted", now).await?;
    // Personal connected accounts, wherever they are.
    query("DELETE FROM auth_profiles WHERE created_by = $1 AND profile_kind = 'oauth_account'")
        .bind(id)
        .execute(&mut tx)
        .await?;
    // Team-wide profiles they created stay with their team, credited to its longest-standing
    // owner (or member, in a team without owner), one choice per team…
    let teams = query("SELECT DISTINCT team_id FROM auth_profiles WHERE created_by = $1")
        .bind(id)
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(|row| row.uuid("team_id").map(TeamId::from_uuid))
        .collect::<Result<Vec<_>, _>>()?;
    for team in teams {
        credit_team_wide_profiles(&mut tx, team, user).await?;
    }
    for sql in [
        // … unless nobody is left in that team to credit them to.
        "DELETE FROM auth_profiles WHERE created_by = $1",
        "DELETE FROM memberships WHERE user_id = $1",
        "DELETE FROM sessions WHERE user_id = $1",
        "DELETE FROM connect_tokens WHERE user_id = $1",
        "DELETE FROM login_states WHERE link_user_id = $1",
        // Their identities' audit trail holds their issuer and subject: it goes with them.
        "DELETE FROM identity_events WHERE user_id = $1",
        "UPDATE users SET primary_identity_id = NULL WHERE id = $1",
        // Upstream tokens go with the identities (cascade).
        "DELETE FROM identities WHERE user_id = $1",
        // Grants, codes, refresh tokens and consents at the OpenID Provider go with the user
        // (cascades).
        "DELETE FROM users WHERE id = $1",
    ] {
        query(sql).bind(id).execute(&mut tx).await?;
    }
    let payload = events::user_deleted(&found, &identities, &left_teams, &deleted_teams);
    insert_event(&mut tx, &NewEvent::new(events::USER_DELETED, payload), now).await?;
    let forget: Vec<_> = std::iter::once(CacheChange::User(user))
        .chain(
            identities.iter().map(|i| CacheChange::Identity { issuer: i.issuer.clone(), subject: i.subject.clone() }),
        )
        .collect();
    log_changes(&mut tx, &forget, now).await?;
    tx.commit().await?;
    Ok(DeleteUserOutcome::Deleted(DeletedUser { user: found, identities, left_teams, deleted_teams }))
}
