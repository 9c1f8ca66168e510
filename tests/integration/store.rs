//! The store conformance suite: the same stories against SQLite and PostgreSQL, through the
//! `Store` trait, plus the invariants the database itself must enforce.
//!
//! Every method of the trait has at least one story here. Times are truncated to microseconds,
//! the precision both backends keep.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use tessera::config::WebhooksConfig;
use tessera::domain::events::ReauthReason;
use tessera::domain::{
    AuthProfile, CredentialMeta, DeliveryState, DisplayName, DomainClaim, DomainName, Email, FieldSet, Identity,
    IdentityId, Issuer, Principal, ProfileId, ProfileKind, ProfileRef, ProfileStatus, Role, SigningAlg, Slug, Subject,
    Team, TeamId, TeamMembership, TeamRef, TeamRole, User, UserId, WebhookEndpoint, WebhookId,
};
use tessera::service::provisioning::team_plan;
use tessera::service::webhooks::{REPLAY_PAGE, Webhooks};
use tessera::store::{
    ActingRefusal, Activation, Attempt, ClaimOutcome, ConnectToken, CreateOutcome, CreateTeamOutcome,
    CredentialOutcome, CredentialWrite, DataReport, DefaultTeam, DeleteTeamOutcome, DeleteUserOutcome, EncryptedTokens,
    LinkOutcome, LoginState, MemberOutcome, MemberWrite, NewAccount, NewLink, NewSession, NewTeam, PendingKey,
    ProfileSecrets, ReadFrom, RefreshLease, Refreshed, RemoveOutcome, Retirement, SecretKind, SessionOfIdentity,
    SessionRecord, SessionStart, SigningKeyRecord, Store, StoreError, StoredCredential, StoredSecret, TeamQuery,
    UnlinkOutcome, UserChange, UserQuery, UserSession, UserUpdate, UserUpdateOutcome,
};
use tessera::store::{
    DefaultOutcome, FanOut, FirstWrite, ProfileChange, ProfileInsert, ProfileUpdate, ReplayPage, Revocation, Waiting,
    WebhookChange, WebhookInsert,
};
use uuid::Uuid;

use crate::helpers::{Backend, ISSUER, OTHER_ISSUER, Sql, TestDb, concurrently, eventually_within, on_both_backends};

on_both_backends!(
    a_team_of_many_members_is_deleted_with_an_event_for_each,
    a_link_by_email_is_made_only_while_its_user_holds_the_address,
    webhook_endpoints_are_stored_updated_and_deleted,
    instances_starting_together_insert_a_config_endpoint_once,
    events_fan_out_once_in_order_to_the_endpoints_that_want_them,
    an_endpoint_deleted_during_a_fan_out_waits_for_it,
    a_replay_sends_again_what_failed_for_good_while_it_ran,
    a_backlog_fans_out_whole_in_one_round,
    an_endpoint_disabled_before_the_fan_out_still_gets_the_events_written_before,
    events_after_a_gap_wait_for_the_transaction_that_may_fill_it,
    an_endpoint_is_leased_to_one_owner_at_a_time,
    the_endpoint_waiting_longest_is_claimed_first,
    attempts_are_recorded_and_a_replay_schedules_events_again,
    a_webhook_deletion_stopped_part_way_leaves_it_disabled_and_a_second_finishes,
    a_replay_longer_than_a_page_schedules_every_event_it_wants,
    old_events_go_once_no_delivery_of_theirs_is_pending,
    a_sweep_never_deletes_an_event_a_replay_scheduled,
    concurrent_sweeps_delete_each_old_event_once,
    a_replay_racing_the_endpoints_deletion_ends_without_an_error,
    each_change_writes_one_outbox_event_in_its_transaction,
    // Schema and connection
    migrations_apply_once_and_report_status,
    sessions_left_without_their_identity_end_with_migration_22,
    a_store_names_its_backend_and_is_unavailable_once_closed,
    a_transaction_that_fails_half_way_leaves_its_connection_clean,
    // Provisioning
    a_created_account_is_found_by_its_identity,
    a_second_account_for_one_identity_writes_nothing,
    concurrent_creates_of_one_identity_have_one_winner,
    concurrent_first_accounts_with_one_email_have_one_winner,
    a_taken_slug_falls_through_to_the_next_candidate,
    when_every_slug_is_taken_nothing_is_written,
    ensure_default_team_creates_at_most_one_team,
    identity_links_cannot_be_repointed,
    the_database_allows_one_default_team_per_user,
    touching_an_identity_only_moves_forward,
    batched_touches_only_move_forward_and_skip_what_is_gone,
    a_batch_of_touches_longer_than_one_statement_writes_every_row,
    instances_flushing_the_same_last_uses_at_once_do_not_deadlock,
    the_data_report_counts_broken_invariants,
    // Users
    disabling_a_user_deletes_their_sessions,
    signing_out_elsewhere_beside_a_transaction_holding_its_sessions_is_not_refused,
    users_are_found_by_email_exactly_or_ignoring_ascii_case,
    a_principal_carries_the_user_and_their_teams_default_first,
    principals_are_read_many_at_once_one_entry_per_key_in_order,
    an_undecodable_identity_fails_only_its_own_entry,
    // Identities
    linking_an_identity_reports_who_holds_it,
    concurrent_links_of_one_identity_give_it_to_one_user,
    the_last_identity_is_never_unlinked,
    concurrent_unlinks_leave_one_identity,
    only_a_current_owner_changes_members,
    an_identity_chosen_while_it_is_unlinked_is_either_chosen_or_gone,
    a_primary_identity_is_one_of_the_users_own,
    identity_tokens_are_stored_and_replaced,
    // Teams and members
    a_team_is_found_by_id_or_slug_with_the_callers_role,
    put_member_adds_updates_and_never_demotes_the_last_owner,
    add_member_never_changes_a_role_given_meanwhile,
    concurrent_puts_of_one_member_add_them_once,
    members_added_while_the_user_or_team_is_deleted_are_refused_not_errors,
    concurrent_demotions_and_removals_leave_one_owner,
    removing_a_member_takes_their_connect_links_and_flows_with_them,
    the_last_member_of_an_ownerless_team_leaves_no_live_team_profile,
    team_wide_profiles_go_to_the_longest_standing_enabled_owner_else_member,
    a_user_disabled_meanwhile_cannot_leave_a_team_nor_delete_it,
    // Domains
    a_domain_claim_is_created_updated_or_refused,
    a_domain_is_released_only_by_its_team,
    // Sign-in state and sessions
    a_login_state_is_taken_once,
    an_expired_login_state_is_not_returned_and_is_gone,
    concurrent_takes_of_a_login_state_have_one_winner,
    a_session_is_read_touched_and_deleted,
    a_session_is_read_with_its_users_profile_in_one_go,
    delete_expired_counts_what_it_deletes,
    a_backlog_of_expired_rows_is_deleted_whole_in_batches,
    a_users_sessions_are_listed_and_the_others_deleted,
    // Auth profiles
    insert_profile_refuses_a_taken_slug_and_writes_nothing,
    insert_profile_allows_one_pending_profile_per_key,
    pending_profile_finds_the_pending_profile_of_a_key_expired_or_not,
    delete_expired_pending_deletes_expired_pending_profiles_only,
    team_profiles_lists_live_profiles_oldest_first,
    // Connect links
    a_new_connect_token_replaces_the_older_ones,
    concurrent_mints_of_connect_tokens_leave_one_alive,
    taking_and_minting_links_of_one_profile_at_once_never_deadlock,
    minting_a_connect_token_extends_a_pending_profile_never_shortens_it,
    minting_a_connect_token_sets_a_missing_pending_expiry,
    a_connect_token_is_read_without_being_consumed_until_it_expires,
    a_connect_token_is_taken_once,
    taking_a_connect_token_keeps_its_pending_profile_through_the_flow,
    concurrent_takes_of_a_connect_token_have_one_winner,
    // Profile credentials
    activating_a_profile_compares_and_swaps_its_version,
    activation_keeps_the_refresh_token_only_for_the_same_account,
    concurrent_activations_have_one_winner,
    an_activation_needs_the_members_right_when_it_is_written,
    a_refresh_lease_is_held_by_one_owner_until_it_ends,
    concurrent_lease_acquisitions_have_one_winner,
    completing_a_refresh_bumps_the_token_version_only,
    releasing_a_refresh_lease_can_mark_the_profile_for_reauth,
    revoking_a_profile_wipes_its_credentials_and_returns_them,
    // Env and browser-session credentials
    a_credential_activates_its_profile_and_is_replaced_whole,
    a_credential_written_with_a_connect_token_consumes_it,
    a_credential_is_written_only_by_who_may_still_set_it,
    concurrent_credential_writes_with_one_connect_token_have_one_winner,
    // Profile actions
    updating_a_profile_compares_and_swaps_its_version,
    a_connector_has_at_most_one_default_and_switching_is_one_write,
    a_removed_members_personal_accounts_in_the_team_are_revoked,
    a_members_active_personal_profile_is_found_by_connector,
    a_credential_test_expires_and_marks_only_the_token_it_tested,
    a_refresh_records_the_granted_scopes_when_the_provider_says,
    // Key rotation
    secrets_are_counted_and_paged_in_whole_rows,
    a_negative_page_size_reads_nothing,
    domains_and_issuers_are_listed_in_byte_order,
    replacing_a_secret_compares_and_swaps,
    // OpenID Provider: signing keys
    one_signing_key_per_algorithm_is_unretired_and_keys_are_listed_while_published,
    a_retired_signing_key_that_does_not_decrypt_does_not_fail_a_rotation_of_the_ring,
    a_rotation_retires_the_current_signing_key_and_inserts_the_next,
    concurrent_rotations_of_one_signing_key_have_one_winner,
    concurrent_first_signing_keys_of_an_algorithm_have_one_winner,
    replacing_a_signing_key_ciphertext_compares_and_swaps,
    // Operators: listings and user deletion
    users_are_listed_by_id_with_every_filter,
    teams_are_listed_by_id_and_slug_prefix_and_members_with_their_roles,
    create_team_refuses_a_taken_slug_or_a_missing_owner_and_writes_nothing,
    deleting_a_user_takes_everything_of_theirs_and_spares_their_teams_shared_profiles,
    deleting_the_last_owner_of_a_shared_team_is_refused_and_writes_nothing,
    concurrent_deletes_of_one_user_have_one_winner,
    co_owners_deleted_at_once_are_both_deleted,
);

// ---- Builders -------------------------------------------------------------------------------

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Grants judged at `now`, sessions idle after the default day.
fn grant_at(now: DateTime<Utc>) -> tessera::store::GrantAt {
    tessera::store::GrantAt { now, idle_before: now - TimeDelta::days(1) }
}

fn account(subject: &str, name: Option<&str>) -> NewAccount {
    let name = DisplayName::parse_optional(name).unwrap();
    let team = team_plan(name.as_ref());
    let user_id = UserId::generate();
    NewAccount {
        user_id,
        identity_id: IdentityId::generate(),
        issuer: Issuer::parse(ISSUER).unwrap(),
        subject: Subject::parse(subject).unwrap(),
        provider: "test".into(),
        email: Some(Email::parse("store@example.com").unwrap()),
        email_verified: true,
        name: name.map(|n| n.as_str().to_owned()),
        team,
        now: now(),
        email_holders: None,
    }
}

async fn setup(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    (db, store)
}

/// Disables or re-enables a user, as the provisioning service does: `update_user` with `disabled`.
async fn set_user_disabled(
    store: &Arc<dyn Store>,
    user: UserId,
    disabled: bool,
    now: DateTime<Utc>,
) -> Result<Option<UserUpdate>, StoreError> {
    let change = UserChange { disabled: Some(disabled), ..UserChange::default() };
    Ok(store.update_user(user, &change, now).await?.updated())
}

/// Someone who signed up: the account as written, the user and their default team.
struct Person {
    account: NewAccount,
    user: User,
    team: Team,
}

impl Person {
    fn id(&self) -> UserId {
        self.account.user_id
    }

    fn identity(&self) -> IdentityId {
        self.account.identity_id
    }
}

async fn sign_up(store: &Arc<dyn Store>, subject: &str) -> Person {
    sign_up_as(store, account(subject, None)).await
}

async fn sign_up_as(store: &Arc<dyn Store>, account: NewAccount) -> Person {
    let CreateOutcome::Created { user, team } = store.create_account(&account).await.unwrap() else {
        panic!("the identity {} is taken", account.subject.as_str());
    };
    Person { account, user, team }
}

/// `user` joins `team` (they must not be a member yet).
async fn join(store: &Arc<dyn Store>, team: &Team, user: UserId, role: Role, at: DateTime<Utc>) {
    assert_eq!(
        store.write_member(team.id, None, user, role, at, MemberWrite::Put).await.unwrap(),
        MemberOutcome::Added
    );
}

/// A fresh, random 32-byte value, for state, session and token hashes.
fn hash() -> [u8; 32] {
    let mut hash = [0; 32];
    hash[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    hash[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    hash
}

fn new_link(subject: &str, at: DateTime<Utc>) -> NewLink {
    NewLink {
        identity_id: IdentityId::generate(),
        issuer: Issuer::parse(OTHER_ISSUER).unwrap(),
        subject: Subject::parse(subject).unwrap(),
        provider: "other".into(),
        email: Some(Email::parse("linked@example.org").unwrap()),
        email_verified: false,
        now: at,
        audit: None,
        by_email: None,
    }
}

async fn linked(store: &Arc<dyn Store>, person: &Person, subject: &str) -> Identity {
    match store.link_identity(person.id(), &new_link(subject, now())).await.unwrap() {
        LinkOutcome::Linked(identity) => identity,
        other => panic!("expected a new link, got {other:?}"),
    }
}

fn tokens(access: &[u8], refresh: Option<&[u8]>, at: DateTime<Utc>) -> EncryptedTokens {
    EncryptedTokens {
        access_token: access.to_vec(),
        refresh_token: refresh.map(<[u8]>::to_vec),
        expires_at: Some(at + TimeDelta::hours(1)),
        scopes: "openid email".into(),
        updated_at: at,
    }
}

fn domain_claim(domain: &str, team: &Team, verified: bool, at: DateTime<Utc>) -> DomainClaim {
    DomainClaim {
        domain: DomainName::parse(domain).unwrap(),
        team_id: team.id,
        issuer: Issuer::parse(ISSUER).unwrap(),
        verified,
        created_at: at,
        updated_at: at,
    }
}

fn login_state(at: DateTime<Utc>, ttl: TimeDelta) -> LoginState {
    LoginState {
        state_hash: hash(),
        provider: "test".into(),
        salt: Some(hash()),
        return_to: "/after".into(),
        link_user: None,
        profile: None,
        profile_version: None,
        allow_account_change: false,
        created_at: at,
        expires_at: at + ttl,
        fresh_login: false,
    }
}

/// The login state of a connect flow of `user` for `profile`.
fn connect_flow(profile: &AuthProfile, user: UserId, at: DateTime<Utc>) -> LoginState {
    LoginState {
        link_user: Some(user),
        profile: Some(profile.id),
        profile_version: Some(profile.version),
        allow_account_change: true,
        ..login_state(at, TimeDelta::minutes(10))
    }
}

fn session(person: &Person, at: DateTime<Utc>, ttl: TimeDelta) -> NewSession {
    NewSession {
        token_hash: hash(),
        user_id: person.id(),
        identity_id: Some(person.identity()),
        device: Some("Firefox on Linux".into()),
        authenticated_at: Some(at - TimeDelta::minutes(3)),
        now: at,
        expires_at: at + ttl,
    }
}

const CONNECTOR: &str = "github-issues";
const PROVIDER: &str = "github";

/// A profile as the service creates one: OAuth kinds pending for 30 minutes, others active.
fn profile(team: &Team, by: UserId, kind: ProfileKind, slug: &str, at: DateTime<Utc>) -> AuthProfile {
    AuthProfile {
        id: ProfileId::generate(),
        team_id: team.id,
        slug: Slug::parse(slug).unwrap(),
        connector_key: CONNECTOR.into(),
        profile_kind: kind,
        provider: PROVIDER.into(),
        status: if kind.is_oauth() { ProfileStatus::PendingAuth } else { ProfileStatus::Active },
        created_by: by,
        display_name: format!("Profile {slug}"),
        scopes: vec!["repo".into(), "read:user".into()],
        granted_scopes: None,
        is_default: false,
        upstream_account_id: None,
        access_token_expires_at: None,
        pending_expires_at: kind.is_oauth().then(|| at + TimeDelta::minutes(30)),
        version: 0,
        created_at: at,
        updated_at: at,
        credential: None,
    }
}

async fn inserted(store: &Arc<dyn Store>, profile: AuthProfile) -> AuthProfile {
    match store.insert_profile(&profile, FirstWrite::Nothing, u32::MAX).await.unwrap() {
        ProfileInsert::Inserted(inserted) => *inserted,
        refused => panic!("the profile is not inserted: {refused:?}"),
    }
}

fn key(profile: &AuthProfile) -> PendingKey<'_> {
    PendingKey {
        team: profile.team_id,
        connector_key: &profile.connector_key,
        provider: &profile.provider,
        kind: profile.profile_kind,
        created_by: profile.created_by,
    }
}

fn activation(by: UserId, account: &str, access: &[u8], refresh: Option<&[u8]>, at: DateTime<Utc>) -> Activation {
    Activation {
        by,
        access_token: access.to_vec(),
        refresh_token: refresh.map(<[u8]>::to_vec),
        expires_at: Some(at + TimeDelta::hours(1)),
        upstream_account_id: account.into(),
        scopes: vec!["repo".into()],
        now: at,
        request_id: None,
    }
}

/// A team-wide OAuth profile of `owner`'s team, connected to `acct-1` with `access-1` and
/// `refresh-1`.
async fn connected(store: &Arc<dyn Store>, owner: &Person, slug: &str) -> AuthProfile {
    let pending = inserted(store, profile(&owner.team, owner.id(), ProfileKind::OauthApp, slug, now())).await;
    let credentials = activation(owner.id(), "acct-1", b"access-1", Some(b"refresh-1"), now());
    assert!(store.activate_profile(pending.id, pending.version, &credentials).await.unwrap().is_some());
    store.profile(pending.id).await.unwrap().unwrap()
}

async fn secrets_of(store: &Arc<dyn Store>, profile: ProfileId) -> ProfileSecrets {
    store.profile_secrets(profile).await.unwrap().expect("the profile exists")
}

fn connect_token(profile: &AuthProfile, user: UserId, at: DateTime<Utc>, ttl: TimeDelta) -> ConnectToken {
    ConnectToken {
        token_hash: hash(),
        profile: profile.id,
        user,
        allow_account_change: false,
        created_at: at,
        expires_at: at + ttl,
    }
}

fn lease(owner: Uuid, at: DateTime<Utc>) -> RefreshLease {
    RefreshLease { owner, until: at + TimeDelta::seconds(30), now: at }
}

// ---- Schema and connection ------------------------------------------------------------------

async fn migrations_apply_once_and_report_status(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = tessera::store::connect(&db.config().database).await.unwrap();
    let fresh = store.migration_status().await.unwrap();
    assert_eq!(fresh.applied, 0);
    assert_eq!(fresh.pending[..2], ["1_people_identities_teams", "2_team_domains"]);
    assert!(fresh.only_pending() && !fresh.is_current());
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let migrated = store.migration_status().await.unwrap();
    assert!(migrated.is_current(), "{migrated:?}");
    assert_eq!(migrated.applied, fresh.pending.len());
}

/// Before an unlink ended the sessions signed in with the identity, the foreign key only cleared
/// their `identity_id`; migration 22 ends such leftovers, and no other session.
async fn sessions_left_without_their_identity_end_with_migration_22(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "orphaned").await;
    let t = now();
    let (kept, orphaned) = (session(&ada, t, TimeDelta::hours(1)), session(&ada, t, TimeDelta::hours(1)));
    for s in [&kept, &orphaned] {
        store.start_session(s, None, &[]).await.unwrap();
    }
    let sql = db.sql().await;
    let hex = orphaned.token_hash.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let orphan = match backend {
        Backend::Sqlite => format!("UPDATE sessions SET identity_id = NULL WHERE hex(token_hash) = upper('{hex}')"),
        Backend::Postgres => format!("UPDATE sessions SET identity_id = NULL WHERE token_hash = '\\x{hex}'"),
    };
    assert_eq!(sql.exec(&orphan).await.unwrap(), 1);
    // The database as it was before migration 22, with that leftover in it.
    assert_eq!(sql.exec("DELETE FROM _sqlx_migrations WHERE version = 22").await.unwrap(), 1);
    store.migrate().await.unwrap();
    assert!(store.migration_status().await.unwrap().is_current());
    assert_eq!(sql.count("sessions").await, 1);
    assert_eq!(sql.count("sessions WHERE identity_id IS NOT NULL").await, 1, "the session with its identity stays");
}

async fn a_store_names_its_backend_and_is_unavailable_once_closed(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let expected = match backend {
        Backend::Sqlite => tessera::config::Backend::Sqlite,
        Backend::Postgres => tessera::config::Backend::Postgres,
    };
    assert_eq!(store.backend(), expected);
    store.ping().await.unwrap();
    store.close().await;
    let error = store.ping().await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    let error = store.get_user(UserId::generate()).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
}

/// A store on `backend` whose pool has one connection, migrated, with one user signed up.
async fn one_connection_store(backend: Backend) -> (TestDb, Arc<dyn Store>, Person) {
    let db = TestDb::new(backend).await;
    let (store, ada) = store_on(&db, |database| database.max_connections = 1).await;
    (db, store, ada)
}

/// A store on `db` with the database settings `edit` makes, migrated, with Ada signed up.
async fn store_on(db: &TestDb, edit: impl FnOnce(&mut tessera::config::DatabaseConfig)) -> (Arc<dyn Store>, Person) {
    let mut config = db.config();
    edit(&mut config.database);
    let store = tessera::store::connect(&config.database).await.unwrap();
    store.migrate().await.unwrap();
    let ada = sign_up(&store, "ada").await;
    (store, ada)
}

/// A write transaction that fails half-way (a session written, then the end of the one it
/// replaces refused by an injected trigger) leaves nothing behind, and the pool's one connection
/// goes on committing what comes next: it is never handed out again still inside the failed
/// transaction.
async fn a_transaction_that_fails_half_way_leaves_its_connection_clean(backend: Backend) {
    let (db, store, ada) = one_connection_store(backend).await;
    let t0 = now();
    let doomed = NewSession { device: Some("doomed".into()), ..session(&ada, t0, TimeDelta::days(1)) };
    store.start_session(&doomed, None, &[]).await.unwrap();
    let sql = db.sql().await;
    let doomed_only = Some("OLD.device = 'doomed'");
    sql.inject("DELETE", "sessions", doomed_only, "SELECT RAISE(ABORT, 'injected');", "RAISE EXCEPTION 'injected';")
        .await;
    for _ in 0..3 {
        let replacing = session(&ada, t0, TimeDelta::days(1));
        assert!(store.start_session(&replacing, Some(&doomed.token_hash), &[]).await.is_err());
        let next = session(&ada, t0, TimeDelta::days(1));
        store.start_session(&next, None, &[]).await.unwrap();
        assert!(store.session(&replacing.token_hash).await.unwrap().is_none(), "the failed one left nothing");
        assert!(store.session(&next.token_hash).await.unwrap().is_some());
    }
    // Seen from another connection: committed, not held in a transaction left open.
    assert_eq!(sql.count("sessions").await, 4, "the doomed session and the three written after a failure");
}

/// A database whose default isolation an operator set to REPEATABLE READ: the store's
/// transactions still read, after waiting for a lock, what committed meanwhile (they run READ
/// COMMITTED, as their rules assume), so concurrent adds of one member and concurrent default
/// teams of one user still end in one row each, and never in an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reads_committed_whatever_the_databases_default_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let admin = sqlx::PgPool::connect(&crate::helpers::pg_admin_url()).await.unwrap();
    let default = format!("ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'");
    sqlx::query(sqlx::AssertSqlSafe(default)).execute(&admin).await.unwrap();
    let store = db.store().await;
    let sql = db.sql().await;
    assert_eq!(sql.texts("SHOW default_transaction_isolation").await, ["repeatable read"]);
    for round in 0..4 {
        let ada = sign_up(&store, &format!("ada-{round}")).await;
        let bob = sign_up(&store, &format!("bob-{round}")).await;
        let outcomes = concurrently(16, |_| {
            let (store, team, user) = (store.clone(), ada.team.id, bob.id());
            async move { store.write_member(team, None, user, Role::Member, now(), MemberWrite::Put).await }
        })
        .await;
        let outcomes: Vec<MemberOutcome> = outcomes.into_iter().map(|o| o.expect("added or unchanged")).collect();
        let added = outcomes.iter().filter(|o| **o == MemberOutcome::Added).count();
        assert_eq!(added, 1, "round {round}: {outcomes:?}");

        sql.exec(&format!("DELETE FROM teams WHERE id = {}", sql.uuid(&bob.team.id.to_string()))).await.unwrap();
        let teams = concurrently(16, |_| {
            let (store, user) = (store.clone(), bob.id());
            async move { store.ensure_default_team(user, &team_plan(None), now()).await }
        })
        .await;
        let created = teams.into_iter().filter(|t| matches!(t, Ok(DefaultTeam::Created(_)))).count();
        assert_eq!(created, 1, "round {round}: one default team, and no error");
    }
}

/// A pooled PostgreSQL connection the server ends (a restart, an administrator's
/// `pg_terminate_backend`) fails the one statement that finds it ended, and is closed: the next
/// statement gets a new connection, although the pool hands out a recently used connection
/// without pinging it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_ended_fails_one_statement_on_postgres() {
    let (db, store, ada) = one_connection_store(Backend::Postgres).await;
    let sql = db.sql().await;
    let mut failed = 0;
    for round in 0..3 {
        store.get_user(ada.id()).await.unwrap();
        let ended = sql
            .exec(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            )
            .await
            .unwrap();
        assert!(ended >= 1, "round {round}: the pool's connection was ended");
        // Within the second after its last use the connection is handed out unpinged, and the
        // statement finds it ended (on a machine too slow for that, the ping replaces it first).
        if let Err(error) = store.get_user(ada.id()).await {
            assert!(matches!(error, StoreError::Unavailable(_) | StoreError::Database(_)), "{error:?}");
            failed += 1;
        }
        // Only the failure itself can have taken the ended connection out of the pool.
        assert_eq!(store.get_user(ada.id()).await.unwrap().map(|user| user.id), Some(ada.id()), "round {round}");
    }
    assert!(failed > 0, "no round found its connection ended: nothing was tested");
}

/// A statement dropped half-way (its request cancelled) whose answer is still to come — here an
/// error, after a pause an injected trigger makes — leaves nothing for whoever has the pool's one
/// connection next: that caller's statement runs and answers as if nothing had happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_dropped_half_way_leaves_nothing_for_the_next_on_postgres() {
    let (db, store, ada) = one_connection_store(Backend::Postgres).await;
    let sql = db.sql().await;
    let slow_only = Some("NEW.device = 'slow'");
    sql.inject("INSERT", "sessions", slow_only, "", "PERFORM pg_sleep(2); RAISE EXCEPTION 'injected';").await;
    for round in 0..2 {
        let slow = NewSession { device: Some("slow".into()), ..session(&ada, now(), TimeDelta::days(1)) };
        let cancelled = tokio::spawn({
            let store = store.clone();
            async move { store.start_session(&slow, None, &[]).await }
        });
        // Dropped once the server is inside the statement, its answer (an error) still to come.
        let sleeping = "pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'";
        let mut waited = 0;
        while sql.count(sleeping).await == 0 {
            assert!(waited < 200, "round {round}: the statement never reached the server");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }
        cancelled.abort();
        assert!(cancelled.await.unwrap_err().is_cancelled());
        let user = store.get_user(ada.id()).await;
        assert_eq!(user.unwrap().map(|user| user.id), Some(ada.id()), "round {round}");
        let next = session(&ada, now(), TimeDelta::days(1));
        store.start_session(&next, None, &[]).await.unwrap();
    }
    assert_eq!(sql.count("sessions").await, 2);
}

/// An instance that goes silent inside a transaction (here: the only thread of its runtime
/// blocked between two statements, as a lost node or a partition leaves it) does not hold the
/// transaction's locks on the server until the kernel gives the socket up: the server ends it
/// once it has been idle for the statement bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_instance_went_silent_is_ended_by_the_server() {
    let db = TestDb::new(Backend::Postgres).await;
    // Long enough for the steps below to stop the runtime before its own bound gives up (which
    // would close the connection: a case the server notices on its own).
    let (store, ada) = store_on(&db, |database| database.statement_timeout = std::time::Duration::from_secs(5)).await;
    let old = session(&ada, now(), TimeDelta::days(1));
    store.start_session(&old, None, &[]).await.unwrap();
    let sql = db.sql().await;
    // The transaction's first statement waits for the user's row, held here.
    let held = sql.hold("", &format!("BEGIN; SELECT 1 FROM users WHERE id = '{}' FOR UPDATE;", ada.id())).await;
    let silent = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let handle = silent.handle().clone();
    let replacing = session(&ada, now(), TimeDelta::days(1));
    handle.spawn(async move { store.start_session(&replacing, Some(&old.token_hash), &[]).await });
    std::thread::spawn(move || silent.block_on(std::future::pending::<()>()));
    let waiting = "pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query ILIKE '%INSERT INTO sessions%'";
    sql.until_waiting_for_a_lock("INSERT INTO sessions").await;
    let pid = sql.texts(&format!("SELECT pid::text FROM {waiting}")).await.remove(0);
    // The runtime's one thread stops (a blocking sleep): the statement's answer goes unread.
    let (stopped, told) = tokio::sync::oneshot::channel();
    handle.spawn(async move {
        stopped.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(90));
    });
    told.await.unwrap();
    held.end("COMMIT").await;
    let idle = format!("pg_stat_activity WHERE pid = {pid} AND state = 'idle in transaction'");
    eventually_within("the answer goes unread", std::time::Duration::from_secs(5), || async {
        sql.count(&idle).await == 1
    })
    .await;
    let alive = format!("pg_stat_activity WHERE pid = {pid}");
    eventually_within("the silent transaction is ended", std::time::Duration::from_secs(30), || async {
        sql.count(&alive).await == 0
    })
    .await;
    assert_eq!(sql.count("sessions").await, 1, "nothing of it was written");
}

// ---- Provisioning ---------------------------------------------------------------------------

async fn a_created_account_is_found_by_its_identity(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let new = account("found", Some("Fay Found"));
    assert!(store.find_identity(&new.issuer, &new.subject).await.unwrap().is_none());
    let CreateOutcome::Created { user, team } = store.create_account(&new).await.unwrap() else {
        panic!("expected a creation");
    };
    assert_eq!(user.id, new.user_id);
    assert_eq!(team.slug.as_str(), "fays-team");
    let found = store.find_identity(&new.issuer, &new.subject).await.unwrap().unwrap();
    assert_eq!(found.user, user, "what the write returned equals what a read returns");
    assert_eq!(found.default_team, Some(team.clone()));
    assert_eq!(found.identity_id, new.identity_id);

    let profile = store.user_profile(user.id, ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(profile.identities.len(), 1);
    assert_eq!(profile.identities[0].email.as_deref(), Some("store@example.com"));
    assert!(profile.identities[0].email_verified);
    assert_eq!(profile.teams.len(), 1);
    assert_eq!(profile.teams[0].team, team);
    assert!(profile.teams[0].is_default);
    assert!(store.user_profile(UserId::generate(), ReadFrom::Primary).await.unwrap().is_none());
    assert!(store.get_user(UserId::generate()).await.unwrap().is_none());
}

async fn a_second_account_for_one_identity_writes_nothing(backend: Backend) {
    let (db, store) = setup(backend).await;
    let first = account("twice", None);
    assert!(matches!(store.create_account(&first).await.unwrap(), CreateOutcome::Created { .. }));
    let second = account("twice", Some("Other Person"));
    assert!(matches!(store.create_account(&second).await.unwrap(), CreateOutcome::IdentityTaken));
    assert_eq!(db.sql().await.provisioning_counts().await, [1, 1, 1, 1, 1]);
    let found = store.find_identity(&first.issuer, &first.subject).await.unwrap().unwrap();
    assert_eq!(found.user.id, first.user_id, "the first link is never re-pointed");
}

async fn concurrent_creates_of_one_identity_have_one_winner(backend: Backend) {
    let (db, store) = setup(backend).await;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.create_account(&account("contended", None)).await }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            CreateOutcome::Created { .. } => winners += 1,
            CreateOutcome::IdentityTaken => {}
            CreateOutcome::EmailHoldersChanged => panic!("no email holders were named"),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(db.sql().await.provisioning_counts().await, [1, 1, 1, 1, 1]);
}

/// First sign-ins of one person through several providers at once (different identities, one
/// email), each having seen no account with the address: one account is made; the others write
/// nothing and are told to decide again.
async fn concurrent_first_accounts_with_one_email_have_one_winner(backend: Backend) {
    let (db, store) = setup(backend).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let new = NewAccount { email_holders: Some(Vec::new()), ..account(&format!("provider-{i}"), None) };
        tasks.push(tokio::spawn(async move { store.create_account(&new).await }));
    }
    let mut outcomes = (0, 0);
    for task in tasks {
        match task.await.unwrap().unwrap() {
            CreateOutcome::Created { .. } => outcomes.0 += 1,
            CreateOutcome::EmailHoldersChanged => outcomes.1 += 1,
            CreateOutcome::IdentityTaken => panic!("every identity is another"),
        }
    }
    assert_eq!(outcomes, (1, 15));
    let sql = db.sql().await;
    assert_eq!((sql.count("users").await, sql.count("identities").await), (1, 1));
    // Told the holders as they are, the next one is made.
    let holders = sql.uuids("SELECT id FROM users").await.into_iter().map(UserId::from_uuid).collect();
    let next = NewAccount { email_holders: Some(holders), ..account("provider-again", None) };
    assert!(matches!(store.create_account(&next).await.unwrap(), CreateOutcome::Created { .. }));
    assert_eq!(sql.count("users").await, 2);
}

async fn a_taken_slug_falls_through_to_the_next_candidate(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let a = account("slug-a", Some("Sol"));
    let b = account("slug-b", Some("Sol"));
    let CreateOutcome::Created { team: team_a, .. } = store.create_account(&a).await.unwrap() else { panic!() };
    let CreateOutcome::Created { team: team_b, .. } = store.create_account(&b).await.unwrap() else { panic!() };
    assert_eq!(team_a.slug.as_str(), "sols-team");
    assert_eq!(team_b.slug, b.team.slug_candidates[1]);
}

async fn when_every_slug_is_taken_nothing_is_written(backend: Backend) {
    let (db, store) = setup(backend).await;
    let first = account("only", Some("Una"));
    store.create_account(&first).await.unwrap();
    let mut clash = account("clash", Some("Una"));
    clash.team = NewTeam {
        id: TeamId::generate(),
        name: "Una's Team".into(),
        slug_candidates: vec![Slug::parse("unas-team").unwrap()],
    };
    let error = store.create_account(&clash).await.unwrap_err();
    assert!(matches!(error, StoreError::Conflict { what: "team slug" }), "{error:?}");
    assert_eq!(db.sql().await.provisioning_counts().await, [1, 1, 1, 1, 1], "no partial write");
    assert!(store.find_identity(&clash.issuer, &clash.subject).await.unwrap().is_none());
}

async fn ensure_default_team_creates_at_most_one_team(backend: Backend) {
    let (db, store) = setup(backend).await;
    let nobody = store.ensure_default_team(UserId::generate(), &team_plan(None), now()).await.unwrap();
    assert_eq!(nobody, DefaultTeam::NoUser);
    let new = account("ensure", None);
    let CreateOutcome::Created { user, team } = store.create_account(&new).await.unwrap() else { panic!() };
    let existing = store.ensure_default_team(user.id, &team_plan(None), now()).await.unwrap();
    assert_eq!(existing, DefaultTeam::Found(team.clone()));

    let sql = db.sql().await;
    sql.exec(&format!("DELETE FROM teams WHERE id = {}", sql.uuid(&team.id.to_string()))).await.unwrap();
    // A disabled user gets no team: the flag is read in the transaction that would create it.
    let id = sql.uuid(&user.id.to_string());
    sql.exec(&format!("UPDATE users SET disabled = TRUE WHERE id = {id}")).await.unwrap();
    let disabled = store.ensure_default_team(user.id, &team_plan(None), now()).await.unwrap();
    assert_eq!((disabled, sql.count("teams").await), (DefaultTeam::UserDisabled, 0));
    sql.exec(&format!("UPDATE users SET disabled = FALSE WHERE id = {id}")).await.unwrap();
    let logged = sql.count("cache_invalidations").await;
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.ensure_default_team(user.id, &team_plan(None), now()).await }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let team = match task.await.unwrap().unwrap() {
            DefaultTeam::Created(team) => {
                created += 1;
                team
            }
            DefaultTeam::Found(team) => team,
            other => panic!("{other:?}"),
        };
        ids.insert(team.id);
    }
    assert_eq!((created, ids.len()), (1, 1));
    assert_eq!(sql.count("teams").await, 1);
    assert_eq!(sql.count("memberships").await, 1);
    assert_eq!(sql.count("cache_invalidations").await, logged + 1, "the one that created the team logged it");
}

async fn identity_links_cannot_be_repointed(backend: Backend) {
    let (db, store) = setup(backend).await;
    let a = account("link-a", None);
    let b = account("link-b", None);
    store.create_account(&a).await.unwrap();
    store.create_account(&b).await.unwrap();
    let sql = db.sql().await;
    let repoint = format!(
        "UPDATE identities SET user_id = {} WHERE id = {}",
        sql.uuid(&b.user_id.to_string()),
        sql.uuid(&a.identity_id.to_string())
    );
    let refused = sql.exec(&repoint).await.unwrap_err().to_string();
    assert!(refused.contains("identity links are immutable"), "the database refuses to re-point a link: {refused}");
    let rekey = format!("UPDATE identities SET subject = 'stolen' WHERE id = {}", sql.uuid(&a.identity_id.to_string()));
    let refused = sql.exec(&rekey).await.unwrap_err().to_string();
    assert!(refused.contains("identity links are immutable"), "nor to change a link's key: {refused}");
    // The same columns written unchanged pass the same trigger.
    let same = format!(
        "UPDATE identities SET user_id = user_id, subject = subject WHERE id = {}",
        sql.uuid(&a.identity_id.to_string())
    );
    assert_eq!(sql.exec(&same).await.unwrap(), 1);
    let found = store.find_identity(&a.issuer, &a.subject).await.unwrap().unwrap();
    assert_eq!(found.user.id, a.user_id);
}

async fn the_database_allows_one_default_team_per_user(backend: Backend) {
    let (db, store) = setup(backend).await;
    let a = account("defaults", None);
    store.create_account(&a).await.unwrap();
    let sql = db.sql().await;
    let team = TeamId::generate().to_string();
    sql.exec(&format!(
        "INSERT INTO teams (id, slug, name, created_at, updated_at) VALUES ({}, 'second', 'Second', {now}, {now})",
        sql.uuid(&team),
        now = if backend == Backend::Sqlite { "0" } else { "now()" }
    ))
    .await
    .unwrap();
    let second_default = format!(
        "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES ({}, {}, 'owner', TRUE, {})",
        sql.uuid(&team),
        sql.uuid(&a.user_id.to_string()),
        if backend == Backend::Sqlite { "0" } else { "now()" }
    );
    assert!(sql.exec(&second_default).await.is_err());
    let plain_member = second_default.replace("TRUE", "FALSE");
    sql.exec(&plain_member).await.expect("a second, non-default membership is fine");
}

async fn touching_an_identity_only_moves_forward(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let new = account("touch", None);
    store.create_account(&new).await.unwrap();
    let later = new.now + TimeDelta::minutes(5);
    store.touch_identity(new.identity_id, later).await.unwrap();
    store.touch_identity(new.identity_id, new.now).await.unwrap();
    let found = store.find_identity(&new.issuer, &new.subject).await.unwrap().unwrap();
    assert_eq!(found.last_seen_at, later);
}

async fn batched_touches_only_move_forward_and_skip_what_is_gone(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let (a, b) = (account("batch-a", None), account("batch-b", None));
    store.create_account(&a).await.unwrap();
    store.create_account(&b).await.unwrap();
    let later = a.now + TimeDelta::minutes(5);
    let earlier = a.now - TimeDelta::minutes(5);
    store.touch_identities(&[(a.identity_id, later), (b.identity_id, earlier)]).await.unwrap();
    store.touch_identities(&[]).await.unwrap();
    let seen = |account: &NewAccount| {
        let store = store.clone();
        let (issuer, subject) = (account.issuer.clone(), account.subject.clone());
        async move { store.find_identity(&issuer, &subject).await.unwrap().unwrap().last_seen_at }
    };
    assert_eq!(seen(&a).await, later);
    assert_eq!(seen(&b).await, b.now, "never moved back");

    let user = store.find_identity(&a.issuer, &a.subject).await.unwrap().unwrap().user.id;
    let (kept, gone) = ([1u8; 32], [2u8; 32]);
    for token_hash in [kept, gone] {
        let new = NewSession {
            token_hash,
            user_id: user,
            identity_id: None,
            device: None,
            authenticated_at: None,
            now: a.now,
            expires_at: later,
        };
        store.start_session(&new, None, &[]).await.unwrap();
    }
    assert!(store.delete_session(&gone, tessera::store::SessionEnd::SignedOut).await.unwrap());
    store.touch_sessions(&[(kept, later), (gone, later)]).await.unwrap();
    assert_eq!(store.session(&kept).await.unwrap().unwrap().last_seen_at, later);
    assert_eq!(store.session(&gone).await.unwrap(), None, "a deleted session stays deleted");
    store.touch_sessions(&[(kept, a.now)]).await.unwrap();
    assert_eq!(store.session(&kept).await.unwrap().unwrap().last_seen_at, later, "never moved back");
}

/// `n` accounts made one after the other, their subjects `{prefix}-0`, `{prefix}-1`, ….
async fn accounts(store: &Arc<dyn Store>, prefix: &str, n: usize) -> Vec<NewAccount> {
    let mut made = Vec::with_capacity(n);
    for i in 0..n {
        let new = account(&format!("{prefix}-{i}"), None);
        store.create_account(&new).await.unwrap();
        made.push(new);
    }
    made
}

/// The worker writes a batch in statements of a fixed number of rows (a short one repeats its
/// last row): 300 rows take three, the last one padded; each row gets its own time.
async fn a_batch_of_touches_longer_than_one_statement_writes_every_row(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let accounts = accounts(&store, "many", 300).await;
    let base = accounts[0].now + TimeDelta::minutes(5);
    let at = |n: usize| base + TimeDelta::seconds(i64::try_from(n).unwrap());
    let seen: Vec<_> = accounts.iter().enumerate().map(|(n, a)| (a.identity_id, at(n))).collect();
    store.touch_identities(&seen).await.unwrap();
    for (n, account) in accounts.iter().enumerate() {
        let found = store.find_identity(&account.issuer, &account.subject).await.unwrap().unwrap();
        assert_eq!(found.last_seen_at, at(n), "row {n}");
    }
}

/// Several instances note the same identities in the same minute (a round-robin balancer) and
/// flush at once: each flush writes its rows in one order, so none deadlocks another and every
/// flush succeeds.
async fn instances_flushing_the_same_last_uses_at_once_do_not_deadlock(backend: Backend) {
    use tessera::worker::last_seen::LastSeen;
    let (_db, store) = setup(backend).await;
    let identities: Vec<IdentityId> = accounts(&store, "flush", 400).await.iter().map(|a| a.identity_id).collect();
    for round in 0..4 {
        let at = now() + TimeDelta::minutes(round + 1);
        let flushes: Vec<_> = (0..4)
            .map(|_| {
                let instance = LastSeen::new(std::time::Duration::from_secs(10));
                for identity in &identities {
                    instance.identity(*identity, at);
                }
                let store = store.clone();
                tokio::spawn(async move { instance.flush(store.as_ref()).await })
            })
            .collect();
        for flushed in flushes {
            assert_eq!(flushed.await.unwrap().expect("no flush fails"), identities.len(), "round {round}");
        }
    }
}

async fn the_data_report_counts_broken_invariants(backend: Backend) {
    let (db, store) = setup(backend).await;
    let a = account("report", None);
    store.create_account(&a).await.unwrap();
    let clean = store.data_report().await.unwrap();
    assert_eq!(clean, DataReport { issuers: vec!["https://issuer.example.com".into()], ..DataReport::default() });
    let sql = db.sql().await;
    sql.exec("DROP INDEX memberships_one_default_per_user").await.unwrap();
    let team = TeamId::generate().to_string();
    let time = if backend == Backend::Sqlite { "0" } else { "now()" };
    sql.exec(&format!(
        "INSERT INTO teams (id, slug, name, created_at, updated_at) VALUES ({}, 'extra', 'Extra', {time}, {time})",
        sql.uuid(&team)
    ))
    .await
    .unwrap();
    sql.exec(&format!(
        "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES ({}, {}, 'member', TRUE, {time})",
        sql.uuid(&team),
        sql.uuid(&a.user_id.to_string())
    ))
    .await
    .unwrap();
    let broken = store.data_report().await.unwrap();
    assert_eq!(broken.users_with_several_default_teams, 1);
    assert_eq!(broken.teams_without_owner, 1);
}

// ---- Users ----------------------------------------------------------------------------------

/// "Sign out everywhere else" deleting a user's sessions while another transaction writes to
/// them in another order (a last-use flush): on PostgreSQL the two deadlock, and the one aborted
/// is run again rather than answered `store_unavailable`. On SQLite, flush and sign-out simply
/// take turns.
async fn signing_out_elsewhere_beside_a_transaction_holding_its_sessions_is_not_refused(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let keep = session(&ada, t0, TimeDelta::days(1));
    // The session with the highest hash first: the delete meets it first in the user's index.
    let hi = NewSession { token_hash: [0xff; 32], ..session(&ada, t0, TimeDelta::days(1)) };
    let lo = NewSession { token_hash: [0x00; 32], ..session(&ada, t0, TimeDelta::days(1)) };
    for s in [&hi, &lo, &keep] {
        store.start_session(s, None, &[]).await.unwrap();
    }
    match db.sql().await {
        Sql::Postgres(pool) => {
            let mut flush = pool.acquire().await.unwrap();
            let touch = "UPDATE sessions SET last_seen_at = now() + interval '1 minute' WHERE token_hash = $1";
            // The delete, which waits first, is the one PostgreSQL aborts: its detection runs
            // first (this side's only after 10 s).
            sqlx::raw_sql("SET deadlock_timeout = '10s'").execute(&mut *flush).await.unwrap();
            sqlx::raw_sql("BEGIN").execute(&mut *flush).await.unwrap();
            sqlx::query(touch).bind(&lo.token_hash[..]).execute(&mut *flush).await.unwrap();
            let deleting = {
                let (store, user, keep) = (store.clone(), ada.id(), keep.token_hash);
                tokio::spawn(async move { store.delete_other_sessions(user, &keep).await })
            };
            // The delete holds `hi` and waits for `lo`; taking `hi` now closes the cycle.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            // Through once the delete is aborted for the deadlock.
            sqlx::query(touch).bind(&hi.token_hash[..]).execute(&mut *flush).await.unwrap();
            sqlx::raw_sql("COMMIT").execute(&mut *flush).await.unwrap();
            assert_eq!(deleting.await.unwrap().unwrap(), Some(2), "run again, not refused");
        }
        Sql::Sqlite(_) => {
            let seen: Vec<([u8; 32], DateTime<Utc>)> =
                [hi.token_hash, lo.token_hash].iter().map(|hash| (*hash, t0 + TimeDelta::minutes(1))).collect();
            let (touched, deleted) =
                tokio::join!(store.touch_sessions(&seen), store.delete_other_sessions(ada.id(), &keep.token_hash));
            touched.unwrap();
            assert_eq!(deleted.unwrap(), Some(2));
        }
    }
    assert!(store.session(&keep.token_hash).await.unwrap().is_some());
    assert!(store.session(&hi.token_hash).await.unwrap().is_none());
}

async fn disabling_a_user_deletes_their_sessions(backend: Backend) {
    let (db, store) = setup(backend).await;
    let sql = db.sql().await;
    let revoked = async || sql.count("outbox_events WHERE topic = 'session.revoked'").await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    let adas = [session(&ada, t0, TimeDelta::days(1)), session(&ada, t0, TimeDelta::hours(1))];
    let bobs = session(&bob, t0, TimeDelta::days(1));
    for session in adas.iter().chain([&bobs]) {
        store.start_session(session, None, &[]).await.unwrap();
    }

    let t1 = t0 + TimeDelta::minutes(1);
    let disabled = set_user_disabled(&store, ada.id(), true, t1).await.unwrap().unwrap();
    assert!(disabled.changed);
    let disabled = disabled.user;
    assert_eq!(disabled, User { disabled: true, updated_at: t1, ..ada.user.clone() });
    assert_eq!(store.get_user(ada.id()).await.unwrap(), Some(disabled));
    for session in &adas {
        assert!(store.session(&session.token_hash).await.unwrap().is_none(), "disabling deletes the sessions");
    }
    assert!(store.session(&bobs.token_hash).await.unwrap().is_some(), "other users keep theirs");

    // A sign-in racing the disable writes no session for the disabled user.
    let refused = session(&ada, t1, TimeDelta::days(1));
    assert_eq!(store.start_session(&refused, None, &[]).await.unwrap(), SessionStart::NoUser);
    assert!(store.session(&refused.token_hash).await.unwrap().is_none());
    // One of an earlier release could (made here: started while the flag was set back behind the
    // store's back): it carries the flag, and enabling the user again ends it rather than
    // bringing it back.
    let flag = |on: bool| format!("UPDATE users SET disabled = {on} WHERE id = {}", sql.uuid(&ada.id().to_string()));
    sql.exec(&flag(false)).await.unwrap();
    let late = session(&ada, t1, TimeDelta::days(1));
    store.start_session(&late, None, &[]).await.unwrap();
    sql.exec(&flag(true)).await.unwrap();
    assert!(store.session(&late.token_hash).await.unwrap().unwrap().user_disabled);

    let t2 = t1 + TimeDelta::minutes(1);
    let events_before = revoked().await;
    let enabled = set_user_disabled(&store, ada.id(), false, t2).await.unwrap().unwrap().user;
    assert_eq!(enabled, User { disabled: false, updated_at: t2, ..ada.user.clone() });
    assert_eq!(store.get_user(ada.id()).await.unwrap(), Some(enabled));
    assert!(store.session(&late.token_hash).await.unwrap().is_none(), "enabling ends a session left from the race");
    assert_eq!(revoked().await, events_before + 1, "with its session.revoked event");
    assert!(store.session(&bobs.token_hash).await.unwrap().is_some(), "other users keep theirs");
    // A session started once the user is enabled is kept by a change that leaves the flag alone.
    let fresh = session(&ada, t2, TimeDelta::days(1));
    store.start_session(&fresh, None, &[]).await.unwrap();
    assert!(!set_user_disabled(&store, ada.id(), false, t2).await.unwrap().unwrap().changed);
    assert!(store.session(&fresh.token_hash).await.unwrap().is_some(), "enabling an enabled user ends nothing");
    assert!(set_user_disabled(&store, UserId::generate(), true, t2).await.unwrap().is_none());

    // Disabling a disabled user ends a session written after the fact: that is a change.
    let t3 = t2 + TimeDelta::minutes(1);
    assert!(set_user_disabled(&store, ada.id(), true, t3).await.unwrap().unwrap().changed);
    let later = session(&ada, t3, TimeDelta::days(1));
    sql.exec(&flag(false)).await.unwrap();
    store.start_session(&later, None, &[]).await.unwrap();
    sql.exec(&flag(true)).await.unwrap();
    assert!(set_user_disabled(&store, ada.id(), true, t3).await.unwrap().unwrap().changed, "it ended a session");
    assert!(store.session(&later.token_hash).await.unwrap().is_none());
    assert!(!set_user_disabled(&store, ada.id(), true, t3).await.unwrap().unwrap().changed, "nothing left to end");
    assert_eq!(store.get_user(bob.id()).await.unwrap(), Some(bob.user), "other users are untouched");
}

/// The users with `email`, in id order.
async fn users_with_email(store: &Arc<dyn Store>, email: &str) -> Vec<User> {
    let mut users = store.users_with_email(&Email::parse(email).unwrap()).await.unwrap();
    users.sort_by_key(|user| user.id);
    users
}

async fn users_are_found_by_email_exactly_or_ignoring_ascii_case(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let with_email = |subject: &str, email: Option<&str>| NewAccount {
        email: email.map(|e| Email::parse(e).unwrap()),
        ..account(subject, None)
    };
    let first = sign_up_as(&store, with_email("alice-1", Some("alice@example.com"))).await;
    let second = sign_up_as(&store, with_email("alice-2", Some("ALICE@example.com"))).await;
    let bob = sign_up_as(&store, with_email("bob", Some("Bob@example.com"))).await;
    sign_up_as(&store, with_email("nobody", None)).await;

    let mut alices = vec![first.user, second.user];
    alices.sort_by_key(|user| user.id);
    for query in ["alice@example.com", "Alice@Example.com", "ALICE@EXAMPLE.COM"] {
        assert_eq!(users_with_email(&store, query).await, alices, "{query}");
    }
    assert_eq!(users_with_email(&store, "bob@example.com").await, std::slice::from_ref(&bob.user));
    assert_eq!(users_with_email(&store, "Bob@example.com").await, [bob.user]);
    assert!(users_with_email(&store, "alic@example.com").await.is_empty());
    assert!(users_with_email(&store, "alice@example.org").await.is_empty());
}

/// Ada, Bob and Cy, each with their default team; Ada also joins Bob's team (first, but with a
/// later time) and Cy's. Returns them and the time `t0` the joins are counted from.
async fn ada_in_three_teams(store: &Arc<dyn Store>) -> (Person, Person, Person, DateTime<Utc>) {
    let ada = sign_up(store, "ada").await;
    let bob = sign_up(store, "bob").await;
    let cy = sign_up(store, "cy").await;
    let t0 = now();
    join(store, &bob.team, ada.id(), Role::Member, t0 + TimeDelta::minutes(2)).await;
    join(store, &cy.team, ada.id(), Role::Admin, t0 + TimeDelta::minutes(1)).await;
    (ada, bob, cy, t0)
}

async fn a_principal_carries_the_user_and_their_teams_default_first(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let (ada, bob, cy, t0) = ada_in_three_teams(&store).await;

    let role = |team: &Team, role| TeamRole { id: team.id, slug: team.slug.clone(), role };
    let expected = Principal {
        identity_id: ada.identity(),
        last_seen_at: ada.account.now,
        user: ada.user.clone(),
        teams: vec![role(&ada.team, Role::Owner), role(&cy.team, Role::Admin), role(&bob.team, Role::Member)],
    };
    for from in [ReadFrom::Primary, ReadFrom::Replica] {
        let principal = store.principal(&ada.account.issuer, &ada.account.subject, from).await.unwrap();
        assert_eq!(principal.as_ref(), Some(&expected), "{from:?}");
    }
    let membership = |team: &Team, role, is_default| TeamMembership { team: team.clone(), role, is_default };
    let profile = store.user_profile(ada.id(), ReadFrom::Replica).await.unwrap().unwrap();
    assert_eq!(
        profile.teams,
        [
            membership(&ada.team, Role::Owner, true),
            membership(&cy.team, Role::Admin, false),
            membership(&bob.team, Role::Member, false)
        ]
    );
    let nobody = Subject::parse("nobody").unwrap();
    assert!(store.principal(&ada.account.issuer, &nobody, ReadFrom::Primary).await.unwrap().is_none());
    let elsewhere = Issuer::parse(OTHER_ISSUER).unwrap();
    assert!(store.principal(&elsewhere, &ada.account.subject, ReadFrom::Primary).await.unwrap().is_none());

    // Left without any team, Ada is still a principal.
    join(&store, &ada.team, bob.id(), Role::Owner, t0).await;
    for team in [&ada.team, &bob.team, &cy.team] {
        assert_eq!(store.remove_member(team.id, None, ada.id()).await.unwrap(), RemoveOutcome::Removed);
    }
    let teamless = store.principal(&ada.account.issuer, &ada.account.subject, ReadFrom::Primary).await.unwrap();
    assert_eq!(teamless, Some(Principal { teams: Vec::new(), ..expected }));
}

async fn principals_are_read_many_at_once_one_entry_per_key_in_order(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let (ada, bob, cy, _) = ada_in_three_teams(&store).await;
    let key = |person: &Person| (person.account.issuer.clone(), person.account.subject.clone());
    let unknown = |i: usize| (ada.account.issuer.clone(), Subject::parse(&format!("nobody-{i}")).unwrap());
    let elsewhere = (Issuer::parse(OTHER_ISSUER).unwrap(), ada.account.subject.clone());

    // Unknown keys, a key twice, a subject known only at another issuer; then more keys than
    // one statement reads, so that the last of them fall in a second, padded statement.
    let mut keys = vec![key(&bob), unknown(0), key(&ada), elsewhere, key(&bob), key(&cy)];
    keys.extend((1..=60).map(unknown));
    keys.extend([key(&cy), unknown(61), key(&ada)]);
    assert!(keys.len() > tessera::store::PRINCIPALS_PER_READ);
    let role = |team: &Team, role| TeamRole { id: team.id, slug: team.slug.clone(), role };
    let principal = |person: &Person, teams| Principal {
        identity_id: person.identity(),
        last_seen_at: person.account.now,
        user: person.user.clone(),
        teams,
    };
    // Ada's teams come default first, then by the time she joined.
    let ada_p =
        principal(&ada, vec![role(&ada.team, Role::Owner), role(&cy.team, Role::Admin), role(&bob.team, Role::Member)]);
    let bob_p = principal(&bob, vec![role(&bob.team, Role::Owner)]);
    let cy_p = principal(&cy, vec![role(&cy.team, Role::Owner)]);
    let mut expected = vec![Some(bob_p.clone()), None, Some(ada_p.clone()), None, Some(bob_p), Some(cy_p.clone())];
    expected.extend((1..=60).map(|_| None));
    expected.extend([Some(cy_p), None, Some(ada_p)]);
    for from in [ReadFrom::Primary, ReadFrom::Replica] {
        let read: Vec<_> = store.principals(&keys, from).await.unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(read, expected, "{from:?}");
    }
    assert!(store.principals(&[], ReadFrom::Replica).await.unwrap().is_empty());
}

/// A row that no longer decodes (here a team slug written by hand) fails its identity's entry,
/// not the others read in the same statement.
async fn an_undecodable_identity_fails_only_its_own_entry(backend: Backend) {
    let (db, store) = setup(backend).await;
    let (ada, bob, cy, _) = ada_in_three_teams(&store).await;
    let key = |person: &Person| (person.account.issuer.clone(), person.account.subject.clone());
    let sql = db.sql().await;
    sql.exec(&format!("UPDATE teams SET slug = 'Not A Slug!' WHERE id = {}", sql.uuid(&cy.team.id.to_string())))
        .await
        .unwrap();
    // Ada is in Cy's team, so both of theirs fail; Bob's is read beside them.
    let read = store.principals(&[key(&bob), key(&ada), key(&cy), key(&cy)], ReadFrom::Primary).await.unwrap();
    assert_eq!(read[0].as_ref().unwrap().as_ref().unwrap().user.id, bob.user.id);
    for entry in &read[1..] {
        assert!(matches!(entry, Err(StoreError::Corrupt(_))), "{entry:?}");
    }
    assert!(matches!(
        store.principal(&cy.account.issuer, &cy.account.subject, ReadFrom::Primary).await,
        Err(StoreError::Corrupt(_))
    ));
}

// ---- Identities -----------------------------------------------------------------------------

async fn linking_an_identity_reports_who_holds_it(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    let link = new_link("ada-elsewhere", t0);
    let outcome = store.link_identity(ada.id(), &link).await.unwrap();
    let expected = Identity {
        id: link.identity_id,
        user_id: ada.id(),
        issuer: link.issuer.clone(),
        subject: link.subject.clone(),
        provider: "other".into(),
        email: Some("linked@example.org".into()),
        email_verified: false,
        created_at: t0,
        last_seen_at: t0,
    };
    assert_eq!(outcome, LinkOutcome::Linked(expected.clone()));

    let again = NewLink { identity_id: IdentityId::generate(), now: t0 + TimeDelta::minutes(1), ..link.clone() };
    assert_eq!(store.link_identity(ada.id(), &again).await.unwrap(), LinkOutcome::AlreadyLinked(expected.clone()));
    assert_eq!(store.link_identity(bob.id(), &again).await.unwrap(), LinkOutcome::LinkedToAnotherUser);
    let adas_first = NewLink { issuer: ada.account.issuer.clone(), subject: ada.account.subject.clone(), ..again };
    assert_eq!(store.link_identity(bob.id(), &adas_first).await.unwrap(), LinkOutcome::LinkedToAnotherUser);
    // To a user deleted meanwhile: gone, as a sign-in says it, not an internal error.
    let orphan = new_link("orphan", t0);
    let gone = store.link_identity(UserId::generate(), &orphan).await.unwrap_err();
    assert!(matches!(gone, StoreError::Gone { .. }), "{gone:?}");

    let found = store.find_identity(&link.issuer, &link.subject).await.unwrap().unwrap();
    assert_eq!((found.identity_id, found.user.id), (link.identity_id, ada.id()));
    let profile = store.user_profile(ada.id(), ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(profile.identities.iter().map(|i| i.id).collect::<Vec<_>>(), [ada.identity(), link.identity_id]);
    assert_eq!(profile.identities[1], expected, "oldest first");
    let bobs = store.user_profile(bob.id(), ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(bobs.identities.iter().map(|i| i.id).collect::<Vec<_>>(), [bob.identity()]);
    // Several identities and several teams: each once, in order (they are read side by side).
    join(&store, &bob.team, ada.id(), Role::Member, now()).await;
    let third = linked(&store, &ada, "ada-third").await;
    let profile = store.user_profile(ada.id(), ReadFrom::Primary).await.unwrap().unwrap();
    let identities: Vec<_> = profile.identities.iter().map(|i| i.id).collect();
    assert_eq!(identities, [ada.identity(), link.identity_id, third.id]);
    let teams: Vec<_> = profile.teams.iter().map(|m| m.team.id).collect();
    assert_eq!(teams, [ada.team.id, bob.team.id], "the default team first, each once");
    // Audit rows: one per sign-up and one for the link made, none for the refusals.
    assert_eq!(db.sql().await.count("identity_events").await, 4);
}

/// Sixteen links of one (issuer, subject) at once, half to one user and half to another (two
/// browsers finishing a link with the same provider account): one user gets it, once; every
/// other attempt says who holds it, and one link event and one `identity.linked` are written.
async fn concurrent_links_of_one_identity_give_it_to_one_user(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let sql = db.sql().await;
    let (events, linked_events) =
        (sql.count("identity_events").await, sql.count("outbox_events WHERE topic = 'identity.linked'").await);
    let users = [ada.id(), bob.id()];
    let outcomes = concurrently(16, |i| {
        let (store, user) = (store.clone(), users[i % 2]);
        async move { (user, store.link_identity(user, &new_link("contested", now())).await.unwrap()) }
    })
    .await;
    let winners: Vec<UserId> =
        outcomes.iter().filter(|(_, o)| matches!(o, LinkOutcome::Linked(_))).map(|(user, _)| *user).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for (user, outcome) in &outcomes {
        match outcome {
            LinkOutcome::Linked(identity) | LinkOutcome::AlreadyLinked(identity) => {
                assert_eq!((*user, identity.user_id), (winners[0], winners[0]), "{outcome:?}");
            }
            LinkOutcome::LinkedToAnotherUser => assert_ne!(*user, winners[0]),
            LinkOutcome::HolderChanged => panic!("no link here is by email"),
        }
    }
    assert_eq!(sql.count("identities WHERE subject = 'contested'").await, 1);
    assert_eq!(sql.count("identity_events").await - events, 1, "one link event");
    assert_eq!(sql.count("outbox_events WHERE topic = 'identity.linked'").await - linked_events, 1);
}

async fn the_last_identity_is_never_unlinked(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let second = linked(&store, &ada, "ada-elsewhere").await;
    let t0 = now();
    for (user, identity) in [(ada.id(), bob.identity()), (ada.id(), IdentityId::generate()), (bob.id(), second.id)] {
        assert_eq!(store.unlink_identity(user, identity, &[], t0, None).await.unwrap(), UnlinkOutcome::NotFound);
    }
    assert_eq!(
        store.unlink_identity(ada.id(), second.id, &[], t0, None).await.unwrap(),
        UnlinkOutcome::Unlinked(second.clone())
    );
    assert!(store.find_identity(&second.issuer, &second.subject).await.unwrap().is_none());
    assert_eq!(store.unlink_identity(ada.id(), second.id, &[], t0, None).await.unwrap(), UnlinkOutcome::NotFound);
    assert_eq!(
        store.unlink_identity(ada.id(), ada.identity(), &[], t0, None).await.unwrap(),
        UnlinkOutcome::LastIdentity
    );
    assert!(store.find_identity(&ada.account.issuer, &ada.account.subject).await.unwrap().is_some());
    // Audit rows: two sign-ups, one link, one unlink.
    assert_eq!(db.sql().await.count("identity_events").await, 4);
    // With only the first identity's issuer signing in here (the other's provider removed), the
    // first is the last one she could sign in with: it stays; the other may go.
    let third = linked(&store, &ada, "ada-elsewhere-again").await;
    let sign_in = [ada.account.issuer.clone()];
    let last = store.unlink_identity(ada.id(), ada.identity(), &sign_in, t0, None).await.unwrap();
    assert_eq!(last, UnlinkOutcome::LastIdentity);
    let other = store.unlink_identity(ada.id(), third.id, &sign_in, t0, None).await.unwrap();
    assert!(matches!(other, UnlinkOutcome::Unlinked(_)), "{other:?}");

    // Once unlinked, the identity is free to be linked again, to anyone.
    let outcome = store.link_identity(bob.id(), &new_link(second.subject.as_str(), t0)).await.unwrap();
    assert!(matches!(&outcome, LinkOutcome::Linked(identity) if identity.user_id == bob.id()), "{outcome:?}");
}

async fn only_a_current_owner_changes_members(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let cat = sign_up(&store, "cat").await;
    let team = ada.team.id;
    store.write_member(team, Some(ada.id()), bob.id(), Role::Owner, now(), MemberWrite::Put).await.unwrap();
    assert_eq!(
        store.write_member(team, Some(bob.id()), cat.id(), Role::Member, now(), MemberWrite::Put).await.unwrap(),
        MemberOutcome::Added
    );
    // Bob is disabled: a session of his that another instance has not forgotten yet changes no
    // member, even as an owner on record.
    set_user_disabled(&store, bob.id(), true, now()).await.unwrap();
    let put = store.write_member(team, Some(bob.id()), cat.id(), Role::Owner, now(), MemberWrite::Put).await.unwrap();
    assert_eq!(put, MemberOutcome::NotAllowed(ActingRefusal::Disabled));
    assert_eq!(
        store.remove_member(team, Some(bob.id()), ada.id()).await.unwrap(),
        RemoveOutcome::NotAllowed(ActingRefusal::Disabled)
    );
    assert_eq!(role_in(&store, &ada.team, cat.id()).await, Some(Role::Member));
    assert_eq!(role_in(&store, &ada.team, ada.id()).await, Some(Role::Owner));
    set_user_disabled(&store, bob.id(), false, now()).await.unwrap();
    // Bob is demoted: whatever he sent as an owner is checked against what he is now, under
    // the team's lock, so it cannot promote him back or act on others.
    assert_eq!(
        store.write_member(team, Some(ada.id()), bob.id(), Role::Member, now(), MemberWrite::Put).await.unwrap(),
        MemberOutcome::Updated
    );
    let put = store.write_member(team, Some(bob.id()), bob.id(), Role::Owner, now(), MemberWrite::Put).await.unwrap();
    assert_eq!(put, MemberOutcome::NotAllowed(ActingRefusal::NotOwner));
    // Naming a user who does not exist, he is told what he is, not that the user is missing.
    let nobody = UserId::generate();
    let put = store.write_member(team, Some(bob.id()), nobody, Role::Member, now(), MemberWrite::Put).await.unwrap();
    assert_eq!(put, MemberOutcome::NotAllowed(ActingRefusal::NotOwner));
    let put = store.write_member(team, Some(ada.id()), nobody, Role::Member, now(), MemberWrite::Put).await.unwrap();
    assert_eq!(put, MemberOutcome::UserNotFound, "to an owner");
    assert_eq!(
        store.remove_member(team, Some(bob.id()), cat.id()).await.unwrap(),
        RemoveOutcome::NotAllowed(ActingRefusal::NotOwner)
    );
    assert_eq!(role_in(&store, &ada.team, bob.id()).await, Some(Role::Member));
    assert_eq!(role_in(&store, &ada.team, cat.id()).await, Some(Role::Member));
    // Removed, likewise; someone who never was a member neither.
    assert_eq!(store.remove_member(team, Some(ada.id()), bob.id()).await.unwrap(), RemoveOutcome::Removed);
    let back = store.write_member(team, Some(bob.id()), bob.id(), Role::Owner, now(), MemberWrite::Put).await.unwrap();
    assert_eq!(back, MemberOutcome::NotAllowed(ActingRefusal::NotMember));
    assert_eq!(
        store.remove_member(team, Some(UserId::generate()), cat.id()).await.unwrap(),
        RemoveOutcome::NotAllowed(ActingRefusal::NotMember)
    );
    assert_eq!(role_in(&store, &ada.team, bob.id()).await, None);
}

async fn concurrent_unlinks_leave_one_identity(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let second = linked(&store, &ada, "ada-elsewhere").await;
    let identities = [ada.identity(), second.id];
    let outcomes = concurrently(16, |i| {
        let (store, user, identity) = (store.clone(), ada.id(), identities[i % 2]);
        async move { store.unlink_identity(user, identity, &[], now(), None).await.unwrap() }
    })
    .await;
    let unlinked = outcomes.iter().filter(|o| matches!(o, UnlinkOutcome::Unlinked(_))).count();
    assert_eq!(unlinked, 1, "{outcomes:?}");
    let profile = store.user_profile(ada.id(), ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(profile.identities.len(), 1);
}

async fn an_identity_chosen_while_it_is_unlinked_is_either_chosen_or_gone(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    for round in 0..8 {
        let second = linked(&store, &ada, &format!("ada-elsewhere-{round}")).await;
        // Half the callers choose the identity as primary while the other half unlink it: each
        // gets an answer (never a store error), and the user ends with a primary identity of
        // their own.
        let outcomes = concurrently(16, |i| {
            let (store, user, identity) = (store.clone(), ada.id(), second.id);
            async move {
                if i % 2 == 0 {
                    store.set_primary_identity(user, identity, now()).await.map(|_| ())
                } else {
                    store.unlink_identity(user, identity, &[], now(), None).await.map(|_| ())
                }
            }
        })
        .await;
        assert!(outcomes.iter().all(Result::is_ok), "round {round}: {outcomes:?}");
        let profile = store.user_profile(ada.id(), ReadFrom::Primary).await.unwrap().unwrap();
        assert_eq!(profile.identities.len(), 1, "round {round}");
        assert_eq!(profile.primary_identity_id, Some(ada.identity()), "round {round}");
    }
}

async fn a_primary_identity_is_one_of_the_users_own(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let second = linked(&store, &ada, "ada-elsewhere").await;
    let primary = async |person: &Person| {
        store.user_profile(person.id(), ReadFrom::Primary).await.unwrap().unwrap().primary_identity_id
    };
    assert_eq!(primary(&ada).await, Some(ada.identity()), "the oldest until one is chosen");

    let t0 = now();
    assert_eq!(store.set_primary_identity(ada.id(), second.id, t0).await.unwrap(), Some(true));
    assert_eq!(primary(&ada).await, Some(second.id));
    // Chosen already: nothing written (no audit row, no cache invalidation).
    let invalidations = db.sql().await.count("cache_invalidations").await;
    assert_eq!(store.set_primary_identity(ada.id(), second.id, t0).await.unwrap(), Some(false));
    assert_eq!(db.sql().await.count("cache_invalidations").await, invalidations);
    assert_eq!(store.set_primary_identity(ada.id(), bob.identity(), t0).await.unwrap(), None);
    assert_eq!(store.set_primary_identity(bob.id(), second.id, t0).await.unwrap(), None);
    assert_eq!(store.set_primary_identity(ada.id(), IdentityId::generate(), t0).await.unwrap(), None);
    assert_eq!(primary(&ada).await, Some(second.id), "refusals change nothing");
    assert_eq!(primary(&bob).await, Some(bob.identity()));
    // Audit rows: two sign-ups, one link, one choice of primary.
    assert_eq!(db.sql().await.count("identity_events").await, 4);

    assert!(matches!(
        store.unlink_identity(ada.id(), second.id, &[], t0, None).await.unwrap(),
        UnlinkOutcome::Unlinked(_)
    ));
    assert_eq!(primary(&ada).await, Some(ada.identity()), "back to the oldest when the chosen one goes");
}

async fn identity_tokens_are_stored_and_replaced(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    assert!(store.identity_tokens(ada.identity()).await.unwrap().is_none());
    let t0 = now();
    let first = tokens(b"access-1", Some(b"refresh-1"), t0);
    store.put_identity_tokens(ada.identity(), &first).await.unwrap();
    assert_eq!(store.identity_tokens(ada.identity()).await.unwrap(), Some(first.clone()));
    let second = EncryptedTokens {
        access_token: b"access-2".to_vec(),
        refresh_token: None,
        expires_at: None,
        scopes: "openid".into(),
        updated_at: t0 + TimeDelta::minutes(1),
    };
    store.put_identity_tokens(ada.identity(), &second).await.unwrap();
    // A token answer without a refresh token (RFC 6749 lets a provider leave it out: Google
    // sends one only on the first consent) keeps the one kept before.
    let kept = EncryptedTokens { refresh_token: first.refresh_token.clone(), ..second.clone() };
    assert_eq!(store.identity_tokens(ada.identity()).await.unwrap(), Some(kept), "replaced but the refresh token");
    let third = tokens(b"access-3", Some(b"refresh-3"), t0 + TimeDelta::minutes(2));
    store.put_identity_tokens(ada.identity(), &third).await.unwrap();
    assert_eq!(store.identity_tokens(ada.identity()).await.unwrap(), Some(third), "replaced as a whole");
    assert!(store.identity_tokens(bob.identity()).await.unwrap().is_none());
}

// ---- Teams and members ----------------------------------------------------------------------

async fn role_in(store: &Arc<dyn Store>, team: &Team, user: UserId) -> Option<Role> {
    store.team_with_role(&TeamRef::Id(team.id), user).await.unwrap().expect("the team exists").1
}

async fn a_team_is_found_by_id_or_slug_with_the_callers_role(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let by_id = TeamRef::Id(ada.team.id);
    let by_slug = TeamRef::Slug(ada.team.slug.clone());
    for team in [&by_id, &by_slug] {
        assert_eq!(store.find_team(team).await.unwrap(), Some(ada.team.clone()));
        assert_eq!(store.team_with_role(team, ada.id()).await.unwrap(), Some((ada.team.clone(), Some(Role::Owner))));
        assert_eq!(store.team_with_role(team, bob.id()).await.unwrap(), Some((ada.team.clone(), None)));
    }
    join(&store, &ada.team, bob.id(), Role::Admin, now()).await;
    assert_eq!(store.team_with_role(&by_slug, bob.id()).await.unwrap(), Some((ada.team.clone(), Some(Role::Admin))));
    assert_eq!(store.find_team(&TeamRef::Slug(bob.team.slug.clone())).await.unwrap(), Some(bob.team));
    for unknown in [TeamRef::Id(TeamId::generate()), TeamRef::Slug(Slug::parse("no-such-team").unwrap())] {
        assert!(store.find_team(&unknown).await.unwrap().is_none());
        assert!(store.team_with_role(&unknown, ada.id()).await.unwrap().is_none());
    }
}

async fn put_member_adds_updates_and_never_demotes_the_last_owner(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let (team, t0) = (ada.team.id, now());
    let put = async |user: UserId, role: Role| {
        store.write_member(team, None, user, role, t0, MemberWrite::Put).await.unwrap()
    };

    assert_eq!(put(UserId::generate(), Role::Member).await, MemberOutcome::UserNotFound);
    assert_eq!(put(ada.id(), Role::Admin).await, MemberOutcome::LastOwner);
    assert_eq!(role_in(&store, &ada.team, ada.id()).await, Some(Role::Owner), "the refusal changed nothing");

    assert_eq!(put(bob.id(), Role::Member).await, MemberOutcome::Added);
    let bobs = store.user_profile(bob.id(), ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(
        bobs.teams,
        [
            TeamMembership { team: bob.team.clone(), role: Role::Owner, is_default: true },
            TeamMembership { team: ada.team.clone(), role: Role::Member, is_default: false },
        ],
        "joining a team leaves the default team alone"
    );

    assert_eq!(put(bob.id(), Role::Owner).await, MemberOutcome::Updated);
    assert_eq!(put(ada.id(), Role::Admin).await, MemberOutcome::Updated, "no longer the last owner");
    let adas = store.user_profile(ada.id(), ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(
        adas.teams,
        [TeamMembership { team: ada.team.clone(), role: Role::Admin, is_default: true }],
        "a role change keeps the default flag"
    );
    assert_eq!(put(bob.id(), Role::Member).await, MemberOutcome::LastOwner);
    assert_eq!(put(bob.id(), Role::Owner).await, MemberOutcome::Unchanged, "the same role again writes nothing");
    assert_eq!(role_in(&store, &ada.team, bob.id()).await, Some(Role::Owner));

    // A disabled owner cannot act for the team, so it does not count as another owner.
    assert_eq!(put(ada.id(), Role::Owner).await, MemberOutcome::Updated);
    set_user_disabled(&store, ada.id(), true, t0).await.unwrap();
    assert_eq!(put(bob.id(), Role::Member).await, MemberOutcome::LastOwner);
    assert_eq!(store.remove_member(team, None, bob.id()).await.unwrap(), RemoveOutcome::LastOwner);
    set_user_disabled(&store, ada.id(), false, t0).await.unwrap();
    assert_eq!(put(bob.id(), Role::Member).await, MemberOutcome::Updated, "enabled again, Ada counts");
}

/// `add_member` (the import's join) adds or leaves alone: racing an owner who makes the same
/// user an admin, the user ends up an admin whichever comes first, and is added once.
async fn add_member_never_changes_a_role_given_meanwhile(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let (team, user, owner) = (ada.team.id, bob.id(), ada.id());
    let outcomes = concurrently(17, |i| {
        let store = store.clone();
        async move {
            if i == 8 {
                store.write_member(team, Some(owner), user, Role::Admin, now(), MemberWrite::Put).await.unwrap()
            } else {
                store.write_member(team, None, user, Role::Member, now(), MemberWrite::Join).await.unwrap()
            }
        }
    })
    .await;
    assert_eq!(role_in(&store, &ada.team, user).await, Some(Role::Admin), "{outcomes:?}");
    let added = outcomes.iter().filter(|o| **o == MemberOutcome::Added).count();
    assert_eq!(added, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(o, MemberOutcome::Added | MemberOutcome::Updated | MemberOutcome::Unchanged))
    );
    assert_eq!(
        store.write_member(team, None, user, Role::Owner, now(), MemberWrite::Join).await.unwrap(),
        MemberOutcome::Unchanged
    );
    assert_eq!(role_in(&store, &ada.team, user).await, Some(Role::Admin));
    assert_eq!(
        store.write_member(team, None, UserId::generate(), Role::Member, now(), MemberWrite::Join).await.unwrap(),
        MemberOutcome::UserNotFound
    );
    // A disabled user joins no team (as on the provisioning path); racing the disable, the join
    // comes before it (a member, then disabled) or after it (not added), never both.
    let cy = sign_up(&store, "cy").await;
    set_user_disabled(&store, cy.id(), true, now()).await.unwrap();
    assert_eq!(
        store.write_member(team, None, cy.id(), Role::Member, now(), MemberWrite::Join).await.unwrap(),
        MemberOutcome::Unchanged
    );
    assert_eq!(role_in(&store, &ada.team, cy.id()).await, None);
}

async fn concurrent_puts_of_one_member_add_them_once(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let outcomes = concurrently(16, |_| {
        let (store, team, user) = (store.clone(), ada.team.id, bob.id());
        async move { store.write_member(team, None, user, Role::Member, now(), MemberWrite::Put).await.unwrap() }
    })
    .await;
    let added = outcomes.iter().filter(|o| **o == MemberOutcome::Added).count();
    let unchanged = outcomes.iter().filter(|o| **o == MemberOutcome::Unchanged).count();
    assert_eq!((added, unchanged), (1, 15), "{outcomes:?}");
    let profile = store.user_profile(bob.id(), ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(profile.teams.len(), 2);
}

async fn members_added_while_the_user_or_team_is_deleted_are_refused_not_errors(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let adds = |team: TeamId, user: UserId| {
        let store = store.clone();
        concurrently(8, move |_| {
            let store = store.clone();
            async move { store.write_member(team, None, user, Role::Member, now(), MemberWrite::Put).await }
        })
    };
    // Bob joins Ada's team while Bob is deleted.
    let bob = sign_up(&store, "bob").await;
    let (outcomes, deleted) = tokio::join!(adds(ada.team.id, bob.id()), store.delete_user(bob.id(), now()));
    assert!(matches!(deleted.unwrap(), DeleteUserOutcome::Deleted(_)));
    for outcome in outcomes {
        let outcome = outcome.expect("added, or refused: never an error");
        assert!(matches!(outcome, MemberOutcome::Added | MemberOutcome::Unchanged | MemberOutcome::UserNotFound));
    }
    // Cid joins Dee's own team while Dee is deleted: either Cid got in first (and Dee, the last
    // owner of a team with a member, stays), or the team went with Dee.
    let (cid, dee) = (sign_up(&store, "cid").await, sign_up(&store, "dee").await);
    let (outcomes, deleted) = tokio::join!(adds(dee.team.id, cid.id()), store.delete_user(dee.id(), now()));
    let deleted = matches!(deleted.unwrap(), DeleteUserOutcome::Deleted(_));
    for outcome in outcomes {
        let outcome = outcome.expect("added, or refused: never an error");
        assert!(matches!(outcome, MemberOutcome::Added | MemberOutcome::Unchanged | MemberOutcome::TeamNotFound));
    }
    let teams = store.user_profile(cid.id(), ReadFrom::Primary).await.unwrap().unwrap().teams.len();
    assert_eq!(teams, if deleted { 1 } else { 2 });
    if deleted {
        let put = store.write_member(dee.team.id, None, cid.id(), Role::Member, now(), MemberWrite::Put).await.unwrap();
        assert_eq!(put, MemberOutcome::TeamNotFound);
        assert_eq!(store.remove_member(dee.team.id, None, cid.id()).await.unwrap(), RemoveOutcome::TeamNotFound);
    }
}

async fn concurrent_demotions_and_removals_leave_one_owner(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "owner-0").await;
    let mut owners = vec![ada.id()];
    for i in 1..16 {
        let owner = sign_up(&store, &format!("owner-{i}")).await;
        join(&store, &ada.team, owner.id(), Role::Owner, now()).await;
        owners.push(owner.id());
    }
    // Every owner at once: half are demoted, half removed. All but one may go.
    let outcomes = concurrently(owners.len(), |i| {
        let (store, team, user) = (store.clone(), ada.team.id, owners[i]);
        async move {
            if i % 2 == 0 {
                Ok(store.write_member(team, None, user, Role::Member, now(), MemberWrite::Put).await.unwrap())
            } else {
                Err(store.remove_member(team, None, user).await.unwrap())
            }
        }
    })
    .await;
    let refused =
        outcomes.iter().filter(|o| matches!(o, Ok(MemberOutcome::LastOwner) | Err(RemoveOutcome::LastOwner))).count();
    let done =
        outcomes.iter().filter(|o| matches!(o, Ok(MemberOutcome::Updated) | Err(RemoveOutcome::Removed))).count();
    assert_eq!((refused, done), (1, 15), "{outcomes:?}");
    let mut remaining = 0;
    for owner in &owners {
        remaining += usize::from(role_in(&store, &ada.team, *owner).await == Some(Role::Owner));
    }
    assert_eq!(remaining, 1);
}

async fn removing_a_member_takes_their_connect_links_and_flows_with_them(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    join(&store, &ada.team, bob.id(), Role::Member, t0).await;
    let shared = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "shared", t0)).await;
    let adas_own = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "adas", t0)).await;
    let bobs_own = inserted(&store, profile(&bob.team, bob.id(), ProfileKind::OauthApp, "bobs", t0)).await;
    let ttl = TimeDelta::minutes(15);
    let (gone_link, kept_links) = (
        connect_token(&shared, bob.id(), t0, ttl),
        [connect_token(&adas_own, ada.id(), t0, ttl), connect_token(&bobs_own, bob.id(), t0, ttl)],
    );
    for link in kept_links.iter().chain([&gone_link]) {
        store.mint_connect_token(link).await.unwrap();
    }
    let (gone_flow, kept_flows) = (
        connect_flow(&shared, bob.id(), t0),
        [
            connect_flow(&shared, ada.id(), t0),
            connect_flow(&bobs_own, bob.id(), t0),
            LoginState { link_user: Some(bob.id()), ..login_state(t0, TimeDelta::minutes(10)) },
        ],
    );
    for flow in kept_flows.iter().chain([&gone_flow]) {
        store.insert_login_state(flow).await.unwrap();
    }

    assert_eq!(store.remove_member(ada.team.id, None, ada.id()).await.unwrap(), RemoveOutcome::LastOwner);
    assert_eq!(role_in(&store, &ada.team, ada.id()).await, Some(Role::Owner));
    assert_eq!(store.remove_member(ada.team.id, None, UserId::generate()).await.unwrap(), RemoveOutcome::NotMember);
    assert_eq!(store.remove_member(ada.team.id, None, bob.id()).await.unwrap(), RemoveOutcome::Removed);
    assert_eq!(role_in(&store, &ada.team, bob.id()).await, None);
    assert_eq!(store.remove_member(ada.team.id, None, bob.id()).await.unwrap(), RemoveOutcome::NotMember);

    assert!(store.connect_token(&gone_link.token_hash, t0).await.unwrap().is_none());
    assert!(store.take_login_state(&gone_flow.state_hash, t0).await.unwrap().is_none());
    for link in &kept_links {
        assert_eq!(store.connect_token(&link.token_hash, t0).await.unwrap().as_ref(), Some(link));
    }
    for flow in &kept_flows {
        assert_eq!(store.take_login_state(&flow.state_hash, t0).await.unwrap().as_ref(), Some(flow));
    }
}

/// The heir of a leaving member's team-wide profiles is the team's longest-standing enabled
/// owner — not an older disabled owner, nor an older plain member —; with no enabled owner left,
/// its longest-standing other member, whatever their role. The same for a removal and for a
/// deletion of the user.
async fn team_wide_profiles_go_to_the_longest_standing_enabled_owner_else_member(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let [bob, cy, dan, ada, eve] = [
        sign_up(&store, "bob").await,
        sign_up(&store, "cy").await,
        sign_up(&store, "dan").await,
        sign_up(&store, "ada").await,
        sign_up(&store, "eve").await,
    ];
    let t0 = now();
    let lab = Team { id: TeamId::generate(), slug: Slug::parse("lab").unwrap(), name: "Lab".into(), created_at: t0 };
    assert_eq!(store.create_team(&lab, None, t0).await.unwrap(), CreateTeamOutcome::Created(lab.clone()));
    let second = TimeDelta::seconds(1);
    join(&store, &lab, bob.id(), Role::Member, t0).await;
    join(&store, &lab, cy.id(), Role::Owner, t0 + second).await;
    join(&store, &lab, dan.id(), Role::Owner, t0 + second * 2).await;
    join(&store, &lab, ada.id(), Role::Admin, t0 + second * 3).await;
    join(&store, &lab, eve.id(), Role::Member, t0 + second * 4).await;
    set_user_disabled(&store, cy.id(), true, now()).await.unwrap();
    let adas = inserted(&store, profile(&lab, ada.id(), ProfileKind::Env, "adas", t0)).await;
    assert_eq!(store.remove_member(lab.id, None, ada.id()).await.unwrap(), RemoveOutcome::Removed);
    assert_eq!(store.profile(adas.id).await.unwrap().unwrap().created_by, dan.id(), "the enabled owner");

    set_user_disabled(&store, dan.id(), true, now()).await.unwrap();
    let eves = inserted(&store, profile(&lab, eve.id(), ProfileKind::Env, "eves", t0)).await;
    assert!(matches!(store.delete_user(eve.id(), now()).await.unwrap(), DeleteUserOutcome::Deleted(_)));
    assert_eq!(store.profile(eves.id).await.unwrap().unwrap().created_by, bob.id(), "the longest-standing member");
}

/// A team of more members than one statement writes events for (100): its deletion writes a
/// `team.member.removed` event for each member, none twice, all in the deletion's transaction.
async fn a_team_of_many_members_is_deleted_with_an_event_for_each(backend: Backend) {
    let (db, store) = setup(backend).await;
    let at = now();
    let lab = Team { id: TeamId::generate(), slug: Slug::parse("lab").unwrap(), name: "Lab".into(), created_at: at };
    assert_eq!(store.create_team(&lab, None, at).await.unwrap(), CreateTeamOutcome::Created(lab.clone()));
    let mut members = Vec::new();
    for i in 0..230 {
        let person = sign_up(&store, &format!("member-{i}")).await;
        join(&store, &lab, person.id(), if i == 0 { Role::Owner } else { Role::Member }, at).await;
        members.push(person.id().to_string());
    }
    members.sort();
    let sql = db.sql().await;
    let removed = "outbox_events WHERE topic = 'team.member.removed'";
    assert_eq!(sql.count(removed).await, 0);
    let DeleteTeamOutcome::Deleted(gone) = store.delete_team(lab.id, now()).await.unwrap() else {
        panic!("deleted");
    };
    assert_eq!(gone.len(), 230);
    let payloads = sql.texts(&format!("SELECT CAST(payload AS TEXT) FROM {removed}")).await;
    let mut told: Vec<String> = payloads
        .iter()
        .map(|p| {
            let payload: serde_json::Value = serde_json::from_str(p).unwrap();
            assert_eq!(
                (&payload["team_id"], &payload["team_deleted"]),
                (&serde_json::json!(lab.id.to_string()), &serde_json::json!(true))
            );
            payload["user_id"].as_str().unwrap().to_owned()
        })
        .collect();
    told.sort();
    assert_eq!(told, members, "each member told once");
}

/// A team an operator made without an owner: a member who leaves has their team-wide profiles
/// credited to one who stays; the last one to go, with nobody to credit them to, has theirs
/// revoked — their creator's rights must not come back with a later membership.
async fn the_last_member_of_an_ownerless_team_leaves_no_live_team_profile(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let at = now();
    let lab = Team { id: TeamId::generate(), slug: Slug::parse("lab").unwrap(), name: "Lab".into(), created_at: at };
    assert_eq!(store.create_team(&lab, None, at).await.unwrap(), CreateTeamOutcome::Created(lab.clone()));
    join(&store, &lab, ada.id(), Role::Admin, at).await;
    join(&store, &lab, bob.id(), Role::Member, at).await;
    let bobs = inserted(&store, profile(&lab, bob.id(), ProfileKind::Env, "bobs-shared", at)).await;
    let adas = inserted(&store, profile(&lab, ada.id(), ProfileKind::OauthApp, "adas-shared", at)).await;
    assert_eq!(store.remove_member(lab.id, None, bob.id()).await.unwrap(), RemoveOutcome::Removed);
    let credited = store.profile(bobs.id).await.unwrap().unwrap();
    assert_eq!((credited.created_by, credited.status), (ada.id(), ProfileStatus::Active), "credited to who stays");
    assert_eq!(store.remove_member(lab.id, None, ada.id()).await.unwrap(), RemoveOutcome::Removed);
    for id in [bobs.id, adas.id] {
        assert_eq!(store.profile(id).await.unwrap().unwrap().status, ProfileStatus::Revoked);
    }
}

/// Leaving acts in the team: a user disabled a moment ago (whose credential another instance
/// still takes) cannot — and so cannot delete a team they are alone in by leaving it.
async fn a_user_disabled_meanwhile_cannot_leave_a_team_nor_delete_it(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let at = now();
    let lab = Team { id: TeamId::generate(), slug: Slug::parse("lab").unwrap(), name: "Lab".into(), created_at: at };
    assert_eq!(store.create_team(&lab, None, at).await.unwrap(), CreateTeamOutcome::Created(lab.clone()));
    join(&store, &lab, ada.id(), Role::Owner, at).await;
    set_user_disabled(&store, ada.id(), true, at).await.unwrap();
    assert_eq!(store.leave_team(lab.id, ada.id()).await.unwrap(), RemoveOutcome::NotAllowed(ActingRefusal::Disabled));
    assert!(store.find_team(&TeamRef::Id(lab.id)).await.unwrap().is_some(), "the team stays");
    // Enabled again, she leaves, alone, and the team goes with her; one who is not a member is
    // told so.
    set_user_disabled(&store, ada.id(), false, at).await.unwrap();
    assert_eq!(store.leave_team(lab.id, ada.id()).await.unwrap(), RemoveOutcome::RemovedWithTeam);
    assert!(store.find_team(&TeamRef::Id(lab.id)).await.unwrap().is_none());
    assert_eq!(store.leave_team(ada.team.id, UserId::generate()).await.unwrap(), RemoveOutcome::NotMember);
}

// ---- Domains --------------------------------------------------------------------------------

async fn a_domain_claim_is_created_updated_or_refused(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    let claim = domain_claim("example.com", &ada.team, false, t0);
    assert_eq!(store.claim_domain(&claim, false).await.unwrap(), ClaimOutcome::Created(claim.clone()));
    for from in [ReadFrom::Primary, ReadFrom::Replica] {
        assert_eq!(store.domain_claim(&claim.domain, from).await.unwrap().as_ref(), Some(&claim), "{from:?}");
    }

    let t1 = t0 + TimeDelta::minutes(1);
    let change = DomainClaim {
        issuer: Issuer::parse(OTHER_ISSUER).unwrap(),
        verified: true,
        created_at: t1,
        updated_at: t1,
        ..claim.clone()
    };
    let updated = DomainClaim { created_at: t0, ..change.clone() };
    assert_eq!(store.claim_domain(&change, false).await.unwrap(), ClaimOutcome::Updated(updated.clone()));
    assert_eq!(store.domain_claim(&claim.domain, ReadFrom::Primary).await.unwrap().as_ref(), Some(&updated));
    // Keeping `verified`: the stored claim's, whatever the new one says; a new claim takes its own.
    // With the same issuer that changes nothing, not even the time of the last change.
    let later = t1 + TimeDelta::seconds(30);
    let kept = DomainClaim { verified: false, created_at: later, updated_at: later, ..change.clone() };
    assert_eq!(store.claim_domain(&kept, true).await.unwrap(), ClaimOutcome::Unchanged(updated.clone()));
    let same = DomainClaim { created_at: later, updated_at: later, ..change.clone() };
    assert_eq!(store.claim_domain(&same, false).await.unwrap(), ClaimOutcome::Unchanged(updated.clone()));
    let moved = DomainClaim { issuer: Issuer::parse(ISSUER).unwrap(), ..kept.clone() };
    let outcome = store.claim_domain(&moved, true).await.unwrap();
    assert_eq!(outcome, ClaimOutcome::Updated(DomainClaim { verified: true, created_at: t0, ..moved.clone() }));
    assert_eq!(store.claim_domain(&change, false).await.unwrap(), ClaimOutcome::Updated(updated.clone()));
    let fresh = domain_claim("fresh.example", &ada.team, false, t1);
    assert_eq!(store.claim_domain(&fresh, true).await.unwrap(), ClaimOutcome::Created(fresh.clone()));

    let t2 = t1 + TimeDelta::minutes(1);
    let taken = domain_claim("example.com", &bob.team, true, t2);
    assert_eq!(store.claim_domain(&taken, false).await.unwrap(), ClaimOutcome::ClaimedByAnotherTeam);
    assert_eq!(
        store.domain_claim(&claim.domain, ReadFrom::Primary).await.unwrap().as_ref(),
        Some(&updated),
        "a refused claim changes nothing"
    );

    let (last, first) = (
        domain_claim("zeta.example.org", &ada.team, false, t2),
        domain_claim("alpha.example.net", &ada.team, true, t2),
    );
    for claim in [&last, &first] {
        assert_eq!(store.claim_domain(claim, false).await.unwrap(), ClaimOutcome::Created(claim.clone()));
    }
    assert_eq!(store.team_domains(ada.team.id).await.unwrap(), [first, updated, fresh, last], "in domain order");
    assert!(store.team_domains(bob.team.id).await.unwrap().is_empty());
    // A team that is gone claims nothing (a deletion racing the claim), and no error says why.
    let ghost = DomainClaim { team_id: TeamId::generate(), ..domain_claim("ghost.example.org", &ada.team, true, t2) };
    assert_eq!(store.claim_domain(&ghost, false).await.unwrap(), ClaimOutcome::TeamGone);
    assert!(store.domain_claim(&ghost.domain, ReadFrom::Primary).await.unwrap().is_none());
    let unclaimed = DomainName::parse("unclaimed.example.com").unwrap();
    assert!(store.domain_claim(&unclaimed, ReadFrom::Primary).await.unwrap().is_none());
}

async fn a_domain_is_released_only_by_its_team(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    let claim = domain_claim("example.com", &ada.team, true, t0);
    store.claim_domain(&claim, false).await.unwrap();
    assert!(!store.release_domain(bob.team.id, &claim.domain).await.unwrap());
    assert_eq!(store.domain_claim(&claim.domain, ReadFrom::Primary).await.unwrap().as_ref(), Some(&claim));
    assert!(store.release_domain(ada.team.id, &claim.domain).await.unwrap());
    assert!(store.domain_claim(&claim.domain, ReadFrom::Primary).await.unwrap().is_none());
    assert!(store.team_domains(ada.team.id).await.unwrap().is_empty());
    assert!(!store.release_domain(ada.team.id, &claim.domain).await.unwrap(), "released once");
    let bobs = domain_claim("example.com", &bob.team, true, t0 + TimeDelta::minutes(1));
    assert_eq!(
        store.claim_domain(&bobs, false).await.unwrap(),
        ClaimOutcome::Created(bobs.clone()),
        "free to claim again"
    );
}

// ---- Sign-in state and sessions -------------------------------------------------------------

async fn a_login_state_is_taken_once(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let connected = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "adas", t0)).await;
    let sign_in = login_state(t0, TimeDelta::minutes(10));
    let fresh = LoginState { fresh_login: true, ..login_state(t0, TimeDelta::minutes(10)) };
    let connect = LoginState { profile_version: Some(7), ..connect_flow(&connected, ada.id(), t0) };
    // As an earlier release wrote them, without a salt.
    let earlier = LoginState { salt: None, ..login_state(t0, TimeDelta::minutes(10)) };
    for state in [&sign_in, &fresh, &connect, &earlier] {
        store.insert_login_state(state).await.unwrap();
    }
    for state in [&sign_in, &fresh, &connect, &earlier] {
        assert_eq!(store.take_login_state(&state.state_hash, t0).await.unwrap().as_ref(), Some(state));
        assert_eq!(store.take_login_state(&state.state_hash, t0).await.unwrap(), None, "taken once");
    }
    assert_eq!(store.take_login_state(&hash(), t0).await.unwrap(), None);
}

async fn an_expired_login_state_is_not_returned_and_is_gone(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let t0 = now();
    let state = login_state(t0, TimeDelta::minutes(10));
    store.insert_login_state(&state).await.unwrap();
    let late = store.take_login_state(&state.state_hash, state.expires_at).await.unwrap();
    assert_eq!(late, None, "a state is expired from its expiry on");
    let early = store.take_login_state(&state.state_hash, t0).await.unwrap();
    assert_eq!(early, None, "an expired state is deleted when taken");
}

async fn concurrent_takes_of_a_login_state_have_one_winner(backend: Backend) {
    let (db, store) = setup(backend).await;
    let t0 = now();
    let state = login_state(t0, TimeDelta::minutes(10));
    store.insert_login_state(&state).await.unwrap();
    let taken = concurrently(16, |_| {
        let (store, hash) = (store.clone(), state.state_hash);
        async move { store.take_login_state(&hash, t0).await.unwrap() }
    })
    .await;
    let winners: Vec<_> = taken.into_iter().flatten().collect();
    assert_eq!(winners, [state]);
    assert_eq!(db.sql().await.count("login_states").await, 0, "taken means gone");
}

async fn a_session_is_read_with_its_users_profile_in_one_go(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    // Several identities and teams, so that the joined rows multiply.
    linked(&store, &ada, "ada-second").await;
    linked(&store, &ada, "ada-third").await;
    join(&store, &bob.team, ada.id(), Role::Member, t0).await;
    let signed_in = session(&ada, t0, TimeDelta::days(1));
    store.start_session(&signed_in, None, &[]).await.unwrap();

    let (record, profile) = store.session_profile(&signed_in.token_hash).await.unwrap().unwrap();
    assert_eq!(Some(record), store.session(&signed_in.token_hash).await.unwrap());
    let alone = store.user_profile(ada.id(), ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(profile, alone, "the same profile as read on its own");
    assert_eq!((profile.identities.len(), profile.teams.len()), (3, 2));
    assert_eq!(store.session_profile(&hash()).await.unwrap(), None);

    set_user_disabled(&store, ada.id(), true, t0).await.unwrap();
    assert_eq!(store.session_profile(&signed_in.token_hash).await.unwrap(), None, "disabling deletes sessions");
}

async fn a_session_is_read_touched_and_deleted(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let signed_in = session(&ada, t0, TimeDelta::days(1));
    let anonymous = NewSession { identity_id: None, authenticated_at: None, ..session(&ada, t0, TimeDelta::hours(1)) };
    for session in [&signed_in, &anonymous] {
        store.start_session(session, None, &[]).await.unwrap();
    }
    let record = SessionRecord {
        user_id: ada.id(),
        identity_id: signed_in.identity_id,
        created_at: t0,
        authenticated_at: Some(t0 - TimeDelta::minutes(3)),
        last_seen_at: t0,
        expires_at: t0 + TimeDelta::days(1),
        user_disabled: false,
    };
    assert_eq!(store.session(&signed_in.token_hash).await.unwrap(), Some(record.clone()));
    let other = SessionRecord {
        identity_id: None,
        authenticated_at: None,
        expires_at: t0 + TimeDelta::hours(1),
        ..record.clone()
    };
    assert_eq!(store.session(&anonymous.token_hash).await.unwrap(), Some(other.clone()));

    let t5 = t0 + TimeDelta::minutes(5);
    store.touch_session(&signed_in.token_hash, t5).await.unwrap();
    store.touch_session(&signed_in.token_hash, t0 + TimeDelta::minutes(1)).await.unwrap();
    let touched = SessionRecord { last_seen_at: t5, ..record };
    assert_eq!(store.session(&signed_in.token_hash).await.unwrap(), Some(touched), "touches only move forward");
    assert_eq!(store.session(&anonymous.token_hash).await.unwrap(), Some(other), "other sessions are untouched");

    assert!(store.delete_session(&signed_in.token_hash, tessera::store::SessionEnd::SignedOut).await.unwrap());
    assert!(store.session(&signed_in.token_hash).await.unwrap().is_none());
    assert!(
        !store.delete_session(&signed_in.token_hash, tessera::store::SessionEnd::SignedOut).await.unwrap(),
        "deleted once"
    );
    assert!(store.session(&anonymous.token_hash).await.unwrap().is_some());
    assert!(store.session(&hash()).await.unwrap().is_none());
}

async fn a_users_sessions_are_listed_and_the_others_deleted(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let (ada, bob) = (sign_up(&store, "ada").await, sign_up(&store, "bob").await);
    let t0 = now();
    let older = session(&ada, t0 - TimeDelta::hours(2), TimeDelta::days(1));
    let newer =
        NewSession { identity_id: None, device: None, ..session(&ada, t0 - TimeDelta::hours(1), TimeDelta::days(1)) };
    let expired = session(&ada, t0 - TimeDelta::days(2), TimeDelta::days(1));
    let bobs = session(&bob, t0, TimeDelta::days(1));
    for s in [&older, &newer, &expired, &bobs] {
        store.start_session(s, None, &[]).await.unwrap();
    }
    // The older one was used last: most recently used first.
    store.touch_session(&older.token_hash, t0).await.unwrap();
    let provider =
        store.user_profile(ada.id(), ReadFrom::Primary).await.unwrap().unwrap().identities[0].provider.clone();
    let day_ago = t0 - TimeDelta::days(1);
    let listed = store.user_sessions(ada.id(), t0, day_ago, 10).await.unwrap();
    assert_eq!(
        listed,
        [
            UserSession {
                token_hash: older.token_hash,
                provider: Some(provider),
                device: Some("Firefox on Linux".into()),
                created_at: older.now,
                last_seen_at: t0,
                expires_at: older.expires_at,
            },
            UserSession {
                token_hash: newer.token_hash,
                provider: None,
                device: None,
                created_at: newer.now,
                last_seen_at: newer.now,
                expires_at: newer.expires_at,
            },
        ],
        "expired sessions and other users' are not listed"
    );
    // The idle rule and the limit: the most recently used first.
    let recent = store.user_sessions(ada.id(), t0, t0 - TimeDelta::minutes(30), 10).await.unwrap();
    assert_eq!(recent, listed[..1], "the newer one was last used an hour ago");
    assert_eq!(store.user_sessions(ada.id(), t0, day_ago, 1).await.unwrap(), listed[..1]);
    // A session that is not (or no longer) the user's speaks for nobody: nothing is deleted.
    assert_eq!(store.delete_other_sessions(ada.id(), &bobs.token_hash).await.unwrap(), None, "Bob's");
    assert_eq!(store.delete_other_sessions(ada.id(), &[7; 32]).await.unwrap(), None, "ended or never there");
    assert!(store.session(&newer.token_hash).await.unwrap().is_some());
    assert_eq!(
        store.delete_other_sessions(ada.id(), &older.token_hash).await.unwrap(),
        Some(2),
        "the newer and expired"
    );
    assert!(store.session(&older.token_hash).await.unwrap().is_some(), "the kept one stays");
    assert!(store.session(&newer.token_hash).await.unwrap().is_none());
    assert!(store.session(&bobs.token_hash).await.unwrap().is_some(), "other users keep theirs");
    assert_eq!(store.delete_other_sessions(ada.id(), &older.token_hash).await.unwrap(), Some(0));
    assert_eq!(store.user_sessions(bob.id(), t0, day_ago, 10).await.unwrap().len(), 1);
}

async fn delete_expired_counts_what_it_deletes(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let idle_before = t0 - TimeDelta::hours(1);
    let ten = TimeDelta::minutes(10);
    // Login states: past their expiry, at it, and live.
    let states = [login_state(t0 - ten * 2, ten), login_state(t0 - ten, ten), login_state(t0, ten)];
    for state in &states {
        store.insert_login_state(state).await.unwrap();
    }
    // Sessions: at their absolute expiry, idle since before `idle_before`, and live.
    let day = TimeDelta::days(1);
    let sessions =
        [session(&ada, t0 - day, day), session(&ada, t0 - TimeDelta::hours(2), day), session(&ada, t0 - ten, day)];
    for session in &sessions {
        store.start_session(session, None, &[]).await.unwrap();
    }
    // Connect links (one per profile: a new link replaces the older ones): expired, and live.
    let first = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "first", t0)).await;
    let second = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "second", t0)).await;
    let links = [connect_token(&first, ada.id(), t0 - ten * 2, ten), connect_token(&second, ada.id(), t0, ten)];
    for link in &links {
        store.mint_connect_token(link).await.unwrap();
    }

    assert_eq!(store.delete_expired(t0, idle_before).await.unwrap(), 5);
    assert_eq!(store.delete_expired(t0, idle_before).await.unwrap(), 0, "nothing is left to delete");
    // Read at their creation time, what was deleted would otherwise still be valid.
    for state in &states[..2] {
        assert!(store.take_login_state(&state.state_hash, state.created_at).await.unwrap().is_none());
    }
    assert!(store.take_login_state(&states[2].state_hash, t0).await.unwrap().is_some());
    for session in &sessions[..2] {
        assert!(store.session(&session.token_hash).await.unwrap().is_none());
    }
    assert!(store.session(&sessions[2].token_hash).await.unwrap().is_some());
    assert!(store.connect_token(&links[0].token_hash, links[0].created_at).await.unwrap().is_none());
    assert!(store.connect_token(&links[1].token_hash, t0).await.unwrap().is_some());
    assert!(store.profile(first.id).await.unwrap().is_some(), "profiles are not its business");
}

async fn a_backlog_of_expired_rows_is_deleted_whole_in_batches(backend: Backend) {
    let (db, store) = setup(backend).await;
    let t0 = now();
    let ten = TimeDelta::minutes(10);
    // More abandoned sign-ins than two statements of the sweep delete (1,000 rows each), and
    // one live one.
    let expired = 2_345;
    for _ in 0..expired {
        store.insert_login_state(&login_state(t0 - ten * 2, ten)).await.unwrap();
    }
    let live = login_state(t0, ten);
    store.insert_login_state(&live).await.unwrap();

    assert_eq!(store.delete_expired(t0, t0 - TimeDelta::hours(1)).await.unwrap(), expired);
    let sql = db.sql().await;
    assert_eq!(sql.count("login_states").await, 1);
    assert!(store.take_login_state(&live.state_hash, t0).await.unwrap().is_some(), "the live one is kept");
}

// ---- Auth profiles --------------------------------------------------------------------------

async fn insert_profile_refuses_a_taken_slug_and_writes_nothing(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    let first = profile(&ada.team, ada.id(), ProfileKind::Env, "main", t0);
    assert_eq!(
        store.insert_profile(&first, FirstWrite::Nothing, u32::MAX).await.unwrap(),
        ProfileInsert::Inserted(Box::new(first.clone()))
    );
    assert_eq!(store.profile(first.id).await.unwrap(), Some(first.clone()), "what the write returned is stored");

    let clash = profile(&ada.team, ada.id(), ProfileKind::Interactive, "main", t0 + TimeDelta::minutes(1));
    assert_eq!(store.insert_profile(&clash, FirstWrite::Nothing, u32::MAX).await.unwrap(), ProfileInsert::Taken);
    assert_eq!(store.profile(clash.id).await.unwrap(), None);
    assert_eq!(store.team_profiles(ada.team.id, ada.id()).await.unwrap(), std::slice::from_ref(&first));

    // Only a member of the team may create one there.
    let strangers = profile(&ada.team, bob.id(), ProfileKind::Interactive, "strangers", t0);
    let refused = store.insert_profile(&strangers, FirstWrite::Nothing, u32::MAX).await;
    assert!(matches!(refused, Err(StoreError::Gone { .. })), "{refused:?}");
    assert_eq!(store.profile(strangers.id).await.unwrap(), None);
    // Nor a member disabled a moment ago (a session another instance has not forgotten yet).
    set_user_disabled(&store, ada.id(), true, t0).await.unwrap();
    let disabled = profile(&ada.team, ada.id(), ProfileKind::Interactive, "disabled", t0);
    let refused = store.insert_profile(&disabled, FirstWrite::Nothing, u32::MAX).await;
    assert!(matches!(refused, Err(StoreError::Gone { .. })), "{refused:?}");
    set_user_disabled(&store, ada.id(), false, t0).await.unwrap();

    let elsewhere = profile(&bob.team, bob.id(), ProfileKind::Interactive, "main", t0);
    assert_eq!(
        store.insert_profile(&elsewhere, FirstWrite::Nothing, u32::MAX).await.unwrap(),
        ProfileInsert::Inserted(Box::new(elsewhere)),
        "slugs are per team"
    );

    // Revoking a profile frees its slug.
    assert!(matches!(store.revoke_profile(first.id, None, t0, None).await.unwrap(), Revocation::Revoked(_)));
    let again = profile(&ada.team, ada.id(), ProfileKind::Interactive, "main", t0 + TimeDelta::minutes(2));
    assert_eq!(
        store.insert_profile(&again, FirstWrite::Nothing, u32::MAX).await.unwrap(),
        ProfileInsert::Inserted(Box::new(again.clone()))
    );
    assert_eq!(store.live_profile(ada.team.id, &ProfileRef::Slug(again.slug.clone())).await.unwrap(), Some(again));
}

async fn insert_profile_allows_one_pending_profile_per_key(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    join(&store, &ada.team, bob.id(), Role::Member, t0).await;
    let team = &ada.team;
    let personal = |by: UserId, slug| profile(team, by, ProfileKind::OauthAccount, slug, t0);
    let team_wide = |by: UserId, slug| profile(team, by, ProfileKind::OauthApp, slug, t0);

    let adas = inserted(&store, personal(ada.id(), "adas")).await;
    let adas_second = personal(ada.id(), "adas-second");
    assert_eq!(
        store.insert_profile(&adas_second, FirstWrite::Nothing, u32::MAX).await.unwrap(),
        ProfileInsert::Taken,
        "one pending personal profile per member"
    );
    assert_eq!(store.profile(adas_second.id).await.unwrap(), None);
    inserted(&store, personal(bob.id(), "bobs")).await;

    inserted(&store, team_wide(ada.id(), "app")).await;
    let bobs_app = team_wide(bob.id(), "bobs-app");
    assert_eq!(
        store.insert_profile(&bobs_app, FirstWrite::Nothing, u32::MAX).await.unwrap(),
        ProfileInsert::Taken,
        "one pending team-wide profile per team"
    );
    assert_eq!(store.profile(bobs_app.id).await.unwrap(), None);
    inserted(&store, AuthProfile { provider: "gitlab".into(), ..team_wide(ada.id(), "gitlab-app") }).await;
    inserted(&store, AuthProfile { connector_key: "github-actions".into(), ..personal(ada.id(), "actions") }).await;
    // Each member sees the team's profiles and their own personal ones, not the other's.
    let seen = async |viewer: UserId| {
        store.team_profiles(team.id, viewer).await.unwrap().into_iter().map(|p| p.slug.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(seen(ada.id()).await, ["adas", "app", "gitlab-app", "actions"]);
    assert_eq!(seen(bob.id()).await, ["bobs", "app", "gitlab-app"]);

    // Once connected, a profile no longer holds the pending place.
    assert!(
        store
            .activate_profile(adas.id, 0, &activation(ada.id(), "acct-1", b"access", None, t0))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store.insert_profile(&adas_second, FirstWrite::Nothing, u32::MAX).await.unwrap(),
        ProfileInsert::Inserted(Box::new(adas_second))
    );
}

async fn pending_profile_finds_the_pending_profile_of_a_key_expired_or_not(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    join(&store, &ada.team, bob.id(), Role::Member, t0).await;
    let expired = AuthProfile {
        pending_expires_at: Some(t0 - TimeDelta::minutes(1)),
        ..profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "adas", t0 - TimeDelta::hours(1))
    };
    let expired = inserted(&store, expired).await;
    assert_eq!(store.pending_profile(&key(&expired)).await.unwrap().as_ref(), Some(&expired), "expired or not");
    let bobs_key = PendingKey { created_by: bob.id(), ..key(&expired) };
    assert_eq!(store.pending_profile(&bobs_key).await.unwrap(), None, "a personal profile is its creator's");

    let app = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let for_bob = PendingKey { created_by: bob.id(), ..key(&app) };
    assert_eq!(store.pending_profile(&for_bob).await.unwrap().as_ref(), Some(&app), "a team-wide one is the team's");
    for other in [
        PendingKey { provider: "gitlab", ..key(&app) },
        PendingKey { connector_key: "github-actions", ..key(&app) },
        PendingKey { team: bob.team.id, ..key(&app) },
    ] {
        assert_eq!(store.pending_profile(&other).await.unwrap(), None, "{other:?}");
    }

    assert!(
        store
            .activate_profile(app.id, 0, &activation(ada.id(), "acct-1", b"access", None, t0))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.pending_profile(&key(&app)).await.unwrap(), None, "a connected profile is not pending");
    let env = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::Env, "env", t0)).await;
    assert_eq!(store.pending_profile(&key(&env)).await.unwrap(), None);
}

async fn delete_expired_pending_deletes_expired_pending_profiles_only(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    join(&store, &ada.team, bob.id(), Role::Member, t0).await;
    let team = &ada.team;
    let expiring = |profile: AuthProfile, at| AuthProfile { pending_expires_at: Some(at), ..profile };
    let minute = TimeDelta::minutes(1);
    let live = AuthProfile {
        connector_key: "github-actions".into(),
        ..profile(team, ada.id(), ProfileKind::OauthApp, "live", t0)
    };
    let live = inserted(&store, live).await;
    let active = inserted(&store, profile(team, ada.id(), ProfileKind::Env, "env", t0 + minute)).await;
    // Made before they expired (a creation deletes its team's expired pending profiles).
    let before = t0 - minute * 2;
    let adas =
        inserted(&store, expiring(profile(team, ada.id(), ProfileKind::OauthAccount, "adas", before), t0 - minute))
            .await;
    let bobs =
        inserted(&store, expiring(profile(team, bob.id(), ProfileKind::OauthAccount, "bobs", before), t0 - minute))
            .await;
    let at_expiry = inserted(&store, expiring(profile(team, ada.id(), ProfileKind::OauthApp, "app", before), t0)).await;

    assert_eq!(store.delete_expired_pending(Some(&key(&adas)), t0).await.unwrap(), 1);
    assert_eq!(store.profile(adas.id).await.unwrap(), None);
    assert_eq!(store.profile(bobs.id).await.unwrap().as_ref(), Some(&bobs), "another key is left alone");
    assert_eq!(store.delete_expired_pending(None, t0).await.unwrap(), 2, "Bob's, and the one expiring now");
    assert_eq!(store.profile(bobs.id).await.unwrap(), None);
    assert_eq!(store.profile(at_expiry.id).await.unwrap(), None);
    assert_eq!(store.team_profiles(team.id, ada.id()).await.unwrap(), [live, active]);
    assert_eq!(store.delete_expired_pending(None, t0).await.unwrap(), 0);
}

async fn team_profiles_lists_live_profiles_oldest_first(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    let minutes = TimeDelta::minutes;
    let env = |slug, at| profile(&ada.team, ada.id(), ProfileKind::Env, slug, at);
    let newest = inserted(&store, env("newest", t0 + minutes(2))).await;
    let oldest = inserted(&store, env("oldest", t0)).await;
    let middle = inserted(&store, env("middle", t0 + minutes(1))).await;
    let revoked = inserted(&store, env("revoked", t0 - minutes(1))).await;
    inserted(&store, profile(&bob.team, bob.id(), ProfileKind::Env, "middle", t0 - minutes(2))).await;
    assert!(matches!(store.revoke_profile(revoked.id, None, t0, None).await.unwrap(), Revocation::Revoked(_)));

    assert_eq!(
        store.team_profiles(ada.team.id, ada.id()).await.unwrap(),
        [oldest.clone(), middle.clone(), newest.clone()]
    );
    // Hers alone, found by their maker: not Bob's, nor the revoked one.
    assert_eq!(store.profiles_made_by(ada.id()).await.unwrap(), [oldest, middle.clone(), newest]);
    // By id as by slug: live ones only, of their own team only.
    assert_eq!(
        store.live_profile(ada.team.id, &ProfileRef::Id(middle.id)).await.unwrap().map(|p| p.id),
        Some(middle.id)
    );
    assert_eq!(store.live_profile(ada.team.id, &ProfileRef::Id(revoked.id)).await.unwrap(), None);
    assert_eq!(store.live_profile(ada.team.id, &ProfileRef::Slug(middle.slug.clone())).await.unwrap(), Some(middle));
    assert_eq!(
        store.live_profile(ada.team.id, &ProfileRef::Slug(revoked.slug.clone())).await.unwrap(),
        None,
        "a revoked one is not live"
    );
    assert_eq!(
        store.live_profile(ada.team.id, &ProfileRef::Slug(Slug::parse("unknown").unwrap())).await.unwrap(),
        None
    );
    let by_id = store.profile(revoked.id).await.unwrap().expect("by id, revoked profiles are found");
    assert_eq!(by_id.status, ProfileStatus::Revoked);
    assert!(store.profile(ProfileId::generate()).await.unwrap().is_none());
}

// ---- Connect links --------------------------------------------------------------------------

async fn a_new_connect_token_replaces_the_older_ones(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let app = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let other = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "adas", t0)).await;
    let ttl = TimeDelta::minutes(15);
    let (older, others) = (connect_token(&app, ada.id(), t0, ttl), connect_token(&other, ada.id(), t0, ttl));
    store.mint_connect_token(&older).await.unwrap();
    store.mint_connect_token(&others).await.unwrap();
    let newer = connect_token(&app, ada.id(), t0 + TimeDelta::minutes(1), ttl);
    store.mint_connect_token(&newer).await.unwrap();

    assert_eq!(store.connect_token(&older.token_hash, t0).await.unwrap(), None);
    assert_eq!(store.take_connect_token(&older.token_hash, t0, t0).await.unwrap(), None);
    assert_eq!(store.connect_token(&newer.token_hash, t0).await.unwrap(), Some(newer));
    assert_eq!(store.connect_token(&others.token_hash, t0).await.unwrap(), Some(others), "other profiles keep theirs");

    // A profile gone meanwhile (swept, or revoked and deleted) gets no link, and no error.
    let gone = AuthProfile { id: ProfileId::generate(), ..app.clone() };
    let orphan = connect_token(&gone, ada.id(), t0, ttl);
    assert!(!store.mint_connect_token(&orphan).await.unwrap());
    assert_eq!(store.connect_token(&orphan.token_hash, t0).await.unwrap(), None);
    // Nor does a revoked one.
    assert!(matches!(store.revoke_profile(other.id, None, t0, None).await.unwrap(), Revocation::Revoked(_)));
    let late = connect_token(&other, ada.id(), t0 + TimeDelta::minutes(2), ttl);
    assert!(!store.mint_connect_token(&late).await.unwrap());
    assert_eq!(store.connect_token(&late.token_hash, t0).await.unwrap(), None);
}

async fn taking_and_minting_links_of_one_profile_at_once_never_deadlock(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let pending = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let ttl = TimeDelta::minutes(15);
    for _ in 0..8 {
        let link = connect_token(&pending, ada.id(), t0, ttl);
        store.mint_connect_token(&link).await.unwrap();
        // Using the link (profile, then link) against new mints (profile, then links): every
        // call answers, and at most the one link taken was used.
        let results = concurrently(8, |i| {
            let (store, link, fresh) = (store.clone(), link.clone(), connect_token(&pending, ada.id(), t0, ttl));
            async move {
                if i % 2 == 0 {
                    store.take_connect_token(&link.token_hash, t0, t0 + ttl).await.unwrap().is_some()
                } else {
                    store.mint_connect_token(&fresh).await.unwrap();
                    false
                }
            }
        })
        .await;
        assert!(results.iter().filter(|taken| **taken).count() <= 1, "a link is used once");
    }
}

async fn concurrent_mints_of_connect_tokens_leave_one_alive(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let app = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let tokens: Vec<_> = (0..16).map(|_| connect_token(&app, ada.id(), t0, TimeDelta::minutes(15))).collect();
    let minted = concurrently(16, |i| {
        let (store, token) = (store.clone(), tokens[i].clone());
        async move { store.mint_connect_token(&token).await.unwrap() }
    })
    .await;
    assert_eq!(minted.len(), 16);
    let mut alive = 0;
    for token in &tokens {
        alive += usize::from(store.connect_token(&token.token_hash, t0).await.unwrap().is_some());
    }
    assert_eq!(alive, 1, "a new link invalidates the older ones, also under concurrency");
}

async fn minting_a_connect_token_sets_a_missing_pending_expiry(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let mut open_ended = profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0);
    open_ended.pending_expires_at = None;
    let pending = inserted(&store, open_ended).await;
    store.mint_connect_token(&connect_token(&pending, ada.id(), t0, TimeDelta::hours(1))).await.unwrap();
    let stored = store.profile(pending.id).await.unwrap().unwrap();
    assert_eq!(stored.pending_expires_at, Some(t0 + TimeDelta::hours(1)), "the link's expiry, on both backends");
}

async fn minting_a_connect_token_extends_a_pending_profile_never_shortens_it(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let pending = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let pending_until = async |id| store.profile(id).await.unwrap().unwrap().pending_expires_at;
    assert_eq!(pending_until(pending.id).await, Some(t0 + TimeDelta::minutes(30)));
    store.mint_connect_token(&connect_token(&pending, ada.id(), t0, TimeDelta::hours(1))).await.unwrap();
    assert_eq!(pending_until(pending.id).await, Some(t0 + TimeDelta::hours(1)), "extended to the link's expiry");
    store.mint_connect_token(&connect_token(&pending, ada.id(), t0, TimeDelta::minutes(15))).await.unwrap();
    assert_eq!(pending_until(pending.id).await, Some(t0 + TimeDelta::hours(1)), "never shortened");

    let active = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::Env, "env", t0)).await;
    store.mint_connect_token(&connect_token(&active, ada.id(), t0, TimeDelta::hours(1))).await.unwrap();
    assert_eq!(store.profile(active.id).await.unwrap(), Some(active), "only a pending profile is extended");
}

async fn a_connect_token_is_read_without_being_consumed_until_it_expires(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let app = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let token =
        ConnectToken { allow_account_change: true, ..connect_token(&app, ada.id(), t0, TimeDelta::minutes(15)) };
    store.mint_connect_token(&token).await.unwrap();
    for _ in 0..2 {
        assert_eq!(store.connect_token(&token.token_hash, t0).await.unwrap().as_ref(), Some(&token));
    }
    assert_eq!(store.connect_token(&token.token_hash, token.expires_at).await.unwrap(), None, "expired at its expiry");
    assert_eq!(store.connect_token(&hash(), t0).await.unwrap(), None);
}

async fn a_connect_token_is_taken_once(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let app = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let token = connect_token(&app, ada.id(), t0, TimeDelta::minutes(15));
    store.mint_connect_token(&token).await.unwrap();
    assert_eq!(store.take_connect_token(&token.token_hash, t0, t0).await.unwrap().as_ref(), Some(&token));
    assert_eq!(store.take_connect_token(&token.token_hash, t0, t0).await.unwrap(), None, "taken once");
    assert_eq!(store.connect_token(&token.token_hash, t0).await.unwrap(), None);

    let expired = connect_token(&app, ada.id(), t0, TimeDelta::minutes(15));
    store.mint_connect_token(&expired).await.unwrap();
    assert_eq!(store.take_connect_token(&expired.token_hash, expired.expires_at, t0).await.unwrap(), None);
    assert_eq!(store.take_connect_token(&hash(), t0, t0).await.unwrap(), None);
}

async fn taking_a_connect_token_keeps_its_pending_profile_through_the_flow(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let minute = TimeDelta::minutes(1);
    // Pending until t0 + 30 min, the link's expiry too: opened a minute before, its flow (ten
    // minutes at the provider) would outlive the profile, and the sweep would take both.
    let pending = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let token = connect_token(&pending, ada.id(), t0, TimeDelta::minutes(30));
    store.mint_connect_token(&token).await.unwrap();
    let opened = t0 + minute * 29;
    let taken = store.take_connect_token(&token.token_hash, opened, opened + minute * 10).await.unwrap();
    assert_eq!(taken.as_ref(), Some(&token));
    let until = store.profile(pending.id).await.unwrap().unwrap().pending_expires_at;
    assert_eq!(until, Some(opened + minute * 10), "kept to the end of the flow");
    assert_eq!(store.delete_expired_pending(None, t0 + minute * 35).await.unwrap(), 0);
    assert!(store.profile(pending.id).await.unwrap().is_some(), "the sweep leaves it while the flow may finish");
    assert_eq!(store.delete_expired_pending(None, opened + minute * 10).await.unwrap(), 1, "and takes it after");

    // A link that is no longer valid extends nothing.
    let other = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "adas", t0)).await;
    let late = connect_token(&other, ada.id(), t0, TimeDelta::minutes(15));
    store.mint_connect_token(&late).await.unwrap();
    let after = late.expires_at;
    assert_eq!(store.take_connect_token(&late.token_hash, after, after + minute * 10).await.unwrap(), None);
    let until = store.profile(other.id).await.unwrap().unwrap().pending_expires_at;
    assert_eq!(until, Some(t0 + TimeDelta::minutes(30)), "unchanged");
}

/// PostgreSQL alone (on SQLite one writer runs at a time): a pending profile connected while
/// the sweep of expired ones waits for its row is left alone, although the sweep's own read
/// found it pending and expired. At READ COMMITTED the waiting DELETE re-checks only its own
/// conditions on the row's new version, not a subquery's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_spares_a_profile_connected_while_it_waited() {
    use sqlx::Connection;
    let (db, store) = setup(Backend::Postgres).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let expired = AuthProfile {
        pending_expires_at: Some(t0 - TimeDelta::minutes(1)),
        ..profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)
    };
    let expired = inserted(&store, expired).await;
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut connecting = holder.begin().await.unwrap();
    sqlx::query(
        "UPDATE auth_profiles SET status = 'active', pending_expires_at = NULL, version = version + 1 WHERE id = $1",
    )
    .bind(expired.id.as_uuid())
    .execute(&mut *connecting)
    .await
    .unwrap();
    let sweep = tokio::spawn({
        let store = store.clone();
        async move { store.delete_expired_pending(None, t0).await.unwrap() }
    });
    // Until the sweep waits for the row the connection holds.
    db.sql().await.until_waiting_for_a_lock("DELETE FROM auth_profiles").await;
    connecting.commit().await.unwrap();
    assert_eq!(sweep.await.unwrap(), 0, "the connected profile is not expired any more");
    let kept = store.profile(expired.id).await.unwrap().expect("still there");
    assert_eq!(kept.status, ProfileStatus::Active);
}

async fn concurrent_takes_of_a_connect_token_have_one_winner(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let app = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let token = connect_token(&app, ada.id(), t0, TimeDelta::minutes(15));
    store.mint_connect_token(&token).await.unwrap();
    let taken = concurrently(16, |_| {
        let (store, hash) = (store.clone(), token.token_hash);
        async move { store.take_connect_token(&hash, t0, t0).await.unwrap() }
    })
    .await;
    let winners: Vec<_> = taken.into_iter().flatten().collect();
    assert_eq!(winners, [token]);
}

// ---- Profile credentials --------------------------------------------------------------------

async fn activating_a_profile_compares_and_swaps_its_version(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let pending = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let unconnected = secrets_of(&store, pending.id).await;
    assert_eq!(
        unconnected,
        ProfileSecrets {
            status: ProfileStatus::PendingAuth,
            version: unconnected.version,
            access_token: None,
            refresh_token: None,
            expires_at: None,
            stored_at: None,
            lease: None,
            upstream_account_id: None,
        }
    );

    let t1 = t0 + TimeDelta::minutes(1);
    let first = activation(ada.id(), "acct-1", b"access-1", Some(b"refresh-1"), t1);
    assert!(
        store.activate_profile(pending.id, pending.version + 1, &first).await.unwrap().is_none(),
        "a version it never had"
    );
    assert_eq!(store.profile(pending.id).await.unwrap().as_ref(), Some(&pending), "a refusal changes nothing");
    assert!(store.activate_profile(pending.id, pending.version, &first).await.unwrap().is_some());
    let active = AuthProfile {
        status: ProfileStatus::Active,
        granted_scopes: Some(first.scopes.clone()),
        upstream_account_id: Some("acct-1".into()),
        access_token_expires_at: first.expires_at,
        pending_expires_at: None,
        version: pending.version + 1,
        updated_at: t1,
        ..pending.clone()
    };
    assert_eq!(store.profile(pending.id).await.unwrap().as_ref(), Some(&active));
    let credentials = ProfileSecrets {
        status: ProfileStatus::Active,
        version: unconnected.version + 1,
        access_token: Some(b"access-1".to_vec()),
        refresh_token: Some(b"refresh-1".to_vec()),
        expires_at: first.expires_at,
        stored_at: Some(t1),
        lease: None,
        upstream_account_id: Some("acct-1".into()),
    };
    assert_eq!(secrets_of(&store, pending.id).await, credentials);

    let second = activation(ada.id(), "acct-1", b"access-2", None, t1 + TimeDelta::minutes(1));
    assert!(
        store.activate_profile(pending.id, pending.version, &second).await.unwrap().is_none(),
        "a stale version loses"
    );
    assert_eq!(secrets_of(&store, pending.id).await, credentials, "and changes nothing");
    assert!(store.activate_profile(pending.id, active.version, &second).await.unwrap().is_some(), "a reconnection");
    assert_eq!(store.profile(pending.id).await.unwrap().unwrap().version, active.version + 1);

    assert!(matches!(store.revoke_profile(pending.id, None, t1, None).await.unwrap(), Revocation::Revoked(_)));
    let revoked = store.profile(pending.id).await.unwrap().unwrap();
    assert!(
        store.activate_profile(pending.id, revoked.version, &first).await.unwrap().is_none(),
        "revoked stays revoked"
    );
    assert_eq!(store.profile(pending.id).await.unwrap(), Some(revoked));
    assert!(store.activate_profile(ProfileId::generate(), 0, &first).await.unwrap().is_none());
}

async fn activation_keeps_the_refresh_token_only_for_the_same_account(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let app = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", now())).await;
    let (first, second) = (Some(b"refresh-1".as_slice()), Some(b"refresh-2".as_slice()));
    // (upstream account, refresh token sent, refresh token stored afterwards, why)
    let steps = [
        ("acct-1", first, first, "a first consent"),
        ("acct-1", None, first, "the same account keeps its refresh token"),
        ("acct-2", None, None, "another account does not inherit it"),
        ("acct-2", second, second, "a new refresh token replaces the stored one"),
    ];
    let mut held: Option<&str> = None;
    for (account, refresh, kept, why) in steps {
        let version = store.profile(app.id).await.unwrap().unwrap().version;
        let before = secrets_of(&store, app.id).await;
        let activated = store
            .activate_profile(app.id, version, &activation(ada.id(), account, b"access", refresh, now()))
            .await
            .unwrap()
            .expect("activated");
        // What it held is handed back (to be revoked there) when, and only when, the account changed.
        let replaced = activated.replaced.map(|r| (r.upstream_account_id, r.refresh_token));
        let expected = held.filter(|h| *h != account).map(|h| (Some(h.to_owned()), before.refresh_token));
        assert_eq!(replaced, expected, "{why}");
        held = Some(account);
        assert_eq!(secrets_of(&store, app.id).await.refresh_token.as_deref(), kept, "{why}");
        let stored = store.profile(app.id).await.unwrap().unwrap();
        assert_eq!(stored.upstream_account_id.as_deref(), Some(account));
    }
}

async fn an_activation_needs_the_members_right_when_it_is_written(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let cara = sign_up(&store, "cara").await;
    let t0 = now();
    join(&store, &ada.team, bob.id(), Role::Admin, t0).await;
    let app = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let version = async |id| store.profile(id).await.unwrap().unwrap().version;
    // A team admin may connect the team's profile; demoted to member (not its creator), not.
    let by_bob = activation(bob.id(), "acct-1", b"access-1", None, t0);
    assert!(store.activate_profile(app.id, version(app.id).await, &by_bob).await.unwrap().is_some());
    store.write_member(ada.team.id, None, bob.id(), Role::Member, t0, MemberWrite::Put).await.unwrap();
    assert!(
        store.activate_profile(app.id, version(app.id).await, &by_bob).await.unwrap().is_none(),
        "demoted meanwhile"
    );
    // Its creator may, whatever their role; removed from the team, not even their own.
    let own = inserted(&store, profile(&ada.team, bob.id(), ProfileKind::OauthApp, "bobs", t0)).await;
    assert!(
        store.activate_profile(own.id, version(own.id).await, &by_bob).await.unwrap().is_some(),
        "a member creator"
    );
    assert_eq!(store.remove_member(ada.team.id, None, bob.id()).await.unwrap(), RemoveOutcome::Removed);
    let kept = store.profile(own.id).await.unwrap().unwrap();
    assert!(store.activate_profile(own.id, kept.version, &by_bob).await.unwrap().is_none(), "removed meanwhile");
    assert_eq!(store.profile(own.id).await.unwrap().unwrap(), kept, "nothing written");
    let kept = store.profile(app.id).await.unwrap().unwrap();
    // Never someone outside the team.
    let by_cara = activation(cara.id(), "acct-1", b"access-1", None, t0);
    assert!(store.activate_profile(app.id, kept.version, &by_cara).await.unwrap().is_none());
}

async fn concurrent_activations_have_one_winner(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let app = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", now())).await;
    let won = concurrently(16, |i| {
        let (store, id, version) = (store.clone(), app.id, app.version);
        let credentials = activation(ada.id(), "acct-1", format!("access-{i}").as_bytes(), None, now());
        async move { store.activate_profile(id, version, &credentials).await.unwrap().is_some() }
    })
    .await;
    let winners: Vec<usize> = (0..won.len()).filter(|i| won[*i]).collect();
    assert_eq!(winners.len(), 1, "{won:?}");
    assert_eq!(store.profile(app.id).await.unwrap().unwrap().version, app.version + 1);
    let access = secrets_of(&store, app.id).await.access_token;
    assert_eq!(access, Some(format!("access-{}", winners[0]).into_bytes()), "the winner's credentials are stored");
}

async fn a_refresh_lease_is_held_by_one_owner_until_it_ends(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let app = connected(&store, &ada, "app").await;
    let version = secrets_of(&store, app.id).await.version;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let t0 = now();

    assert!(!store.acquire_refresh_lease(app.id, version + 1, &lease(first, t0)).await.unwrap(), "a stale version");
    assert_eq!(secrets_of(&store, app.id).await.lease, None);
    assert!(store.acquire_refresh_lease(app.id, version, &lease(first, t0)).await.unwrap());
    assert_eq!(secrets_of(&store, app.id).await.lease, Some((first, t0 + TimeDelta::seconds(30))));
    let t10 = t0 + TimeDelta::seconds(10);
    assert!(!store.acquire_refresh_lease(app.id, version, &lease(second, t10)).await.unwrap(), "the lease runs");
    assert_eq!(secrets_of(&store, app.id).await.lease, Some((first, t0 + TimeDelta::seconds(30))));
    let t31 = t0 + TimeDelta::seconds(31);
    assert!(store.acquire_refresh_lease(app.id, version, &lease(second, t31)).await.unwrap(), "an ended lease");
    assert_eq!(secrets_of(&store, app.id).await.lease, Some((second, t31 + TimeDelta::seconds(30))));

    let pending = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "adas", t0)).await;
    let pending_version = secrets_of(&store, pending.id).await.version;
    assert!(!store.acquire_refresh_lease(pending.id, pending_version, &lease(first, t0)).await.unwrap());
    assert!(!store.acquire_refresh_lease(ProfileId::generate(), 0, &lease(first, t0)).await.unwrap());
}

async fn concurrent_lease_acquisitions_have_one_winner(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let app = connected(&store, &ada, "app").await;
    let version = secrets_of(&store, app.id).await.version;
    let t0 = now();
    let owners: Vec<Uuid> = (0..16).map(|_| Uuid::new_v4()).collect();
    let won = concurrently(owners.len(), |i| {
        let (store, id, wanted) = (store.clone(), app.id, lease(owners[i], t0));
        async move { store.acquire_refresh_lease(id, version, &wanted).await.unwrap() }
    })
    .await;
    let winners: Vec<Uuid> = (0..won.len()).filter(|i| won[*i]).map(|i| owners[i]).collect();
    assert_eq!(winners.len(), 1, "{won:?}");
    assert_eq!(secrets_of(&store, app.id).await.lease, Some((winners[0], t0 + TimeDelta::seconds(30))));
}

async fn completing_a_refresh_bumps_the_token_version_only(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let app = connected(&store, &ada, "app").await;
    let before = secrets_of(&store, app.id).await;
    let (holder, next) = (Uuid::new_v4(), Uuid::new_v4());
    let t0 = now();
    assert!(store.acquire_refresh_lease(app.id, before.version, &lease(holder, t0)).await.unwrap());
    let held = secrets_of(&store, app.id).await;

    let t1 = t0 + TimeDelta::seconds(1);
    let refreshed = Refreshed {
        access_token: b"access-2".to_vec(),
        refresh_token: None,
        expires_at: Some(t1 + TimeDelta::hours(2)),
        granted_scopes: None,
        now: t1,
    };
    assert!(!store.complete_refresh(app.id, next, &refreshed).await.unwrap(), "only the holder completes");
    assert_eq!(secrets_of(&store, app.id).await, held, "a refusal changes nothing");
    assert!(store.complete_refresh(app.id, holder, &refreshed).await.unwrap());
    let after = secrets_of(&store, app.id).await;
    let expected = ProfileSecrets {
        version: before.version + 1,
        access_token: Some(b"access-2".to_vec()),
        expires_at: refreshed.expires_at,
        stored_at: Some(refreshed.now),
        lease: None,
        ..before.clone()
    };
    assert_eq!(after, expected, "the refresh token is kept and the lease released");
    let stored = store.profile(app.id).await.unwrap().unwrap();
    assert_eq!(stored.version, app.version, "a refresh is not a reconnection");
    assert_eq!(stored.access_token_expires_at, refreshed.expires_at);
    assert!(!store.complete_refresh(app.id, holder, &refreshed).await.unwrap(), "the lease went with the first");

    // The next refresh compares with the new token version, and may rotate the refresh token.
    assert!(!store.acquire_refresh_lease(app.id, before.version, &lease(next, t1)).await.unwrap());
    assert!(store.acquire_refresh_lease(app.id, after.version, &lease(next, t1)).await.unwrap());
    let rotated = Refreshed { refresh_token: Some(b"refresh-2".to_vec()), ..refreshed };
    assert!(store.complete_refresh(app.id, next, &rotated).await.unwrap());
    assert_eq!(secrets_of(&store, app.id).await.refresh_token, Some(b"refresh-2".to_vec()));

    // A connect flow that started before both refreshes still completes.
    let reconnect = activation(ada.id(), "acct-1", b"access-3", None, t1);
    assert!(store.activate_profile(app.id, app.version, &reconnect).await.unwrap().is_some());
}

async fn releasing_a_refresh_lease_can_mark_the_profile_for_reauth(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let app = connected(&store, &ada, "app").await;
    let version = secrets_of(&store, app.id).await.version;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let t0 = now();
    let held_by = |owner| Some((owner, t0 + TimeDelta::seconds(30)));
    assert!(store.acquire_refresh_lease(app.id, version, &lease(first, t0)).await.unwrap());

    store.release_refresh_lease(app.id, second, None, t0).await.unwrap();
    assert_eq!(secrets_of(&store, app.id).await.lease, held_by(first), "only the holder releases");
    store.release_refresh_lease(app.id, first, None, t0).await.unwrap();
    let released = secrets_of(&store, app.id).await;
    assert_eq!((released.status, released.lease), (ProfileStatus::Active, None));
    assert!(
        store.acquire_refresh_lease(app.id, version, &lease(second, t0)).await.unwrap(),
        "a released lease is free at once, at the same token version"
    );

    assert!(!store.release_refresh_lease(app.id, first, Some(version), t0).await.unwrap());
    let untouched = secrets_of(&store, app.id).await;
    assert_eq!((untouched.status, untouched.lease), (ProfileStatus::Active, held_by(second)), "not the holder");
    // A refresh that outlived its lease stored a rotated refresh token meanwhile: the refusal of
    // the one the lease was taken with judges nothing.
    let spent = secrets_of(&store, app.id).await.refresh_token.unwrap();
    assert!(store.replace_spent_refresh_token(app.id, &spent, b"rotated", t0).await.unwrap());
    assert!(!store.release_refresh_lease(app.id, second, Some(version), t0).await.unwrap());
    let moved = secrets_of(&store, app.id).await;
    assert_eq!((moved.status, moved.lease), (ProfileStatus::Active, None), "released, not marked");
    let version = moved.version;
    assert!(store.acquire_refresh_lease(app.id, version, &lease(second, t0)).await.unwrap());
    assert!(store.release_refresh_lease(app.id, second, Some(version), t0).await.unwrap());
    let marked = secrets_of(&store, app.id).await;
    assert_eq!((marked.status, marked.lease), (ProfileStatus::NeedsReauth, None));
    let stored = store.profile(app.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ProfileStatus::NeedsReauth);
    assert!(!store.acquire_refresh_lease(app.id, marked.version, &lease(first, t0)).await.unwrap(), "no refresh");

    let reconnect = activation(ada.id(), "acct-1", b"access-2", Some(b"refresh-2"), t0);
    assert!(
        store.activate_profile(app.id, stored.version, &reconnect).await.unwrap().is_some(),
        "reconnecting mends it"
    );
    assert_eq!(secrets_of(&store, app.id).await.status, ProfileStatus::Active);
}

async fn revoking_a_profile_wipes_its_credentials_and_returns_them(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let app = connected(&store, &ada, "app").await;
    let holder = Uuid::new_v4();
    let t0 = now();
    assert!(
        store
            .acquire_refresh_lease(app.id, secrets_of(&store, app.id).await.version, &lease(holder, t0))
            .await
            .unwrap()
    );
    let held = secrets_of(&store, app.id).await;
    assert!(held.access_token.is_some() && held.refresh_token.is_some());

    let t1 = t0 + TimeDelta::minutes(1);
    assert_eq!(
        store.revoke_profile(app.id, None, t1, None).await.unwrap(),
        Revocation::Revoked(held),
        "what it held, for the provider"
    );
    let wiped = secrets_of(&store, app.id).await;
    assert_eq!(
        (wiped.status, wiped.access_token, wiped.refresh_token, wiped.expires_at, wiped.lease),
        (ProfileStatus::Revoked, None, None, None, None)
    );
    let revoked = store.profile(app.id).await.unwrap().unwrap();
    assert_eq!(
        revoked,
        AuthProfile {
            status: ProfileStatus::Revoked,
            access_token_expires_at: None,
            version: app.version + 1,
            updated_at: t1,
            ..app.clone()
        }
    );
    assert_eq!(store.count_secrets(SecretKind::AuthProfiles).await.unwrap(), 0, "nothing is left to rotate");
    let refreshed = Refreshed {
        access_token: b"access-2".to_vec(),
        refresh_token: None,
        expires_at: None,
        granted_scopes: None,
        now: t1,
    };
    assert!(!store.complete_refresh(app.id, holder, &refreshed).await.unwrap(), "the lease went with it");
    assert_eq!(store.revoke_profile(app.id, None, t1, None).await.unwrap(), Revocation::NotFound, "revoked once");
    assert_eq!(store.revoke_profile(ProfileId::generate(), None, t1, None).await.unwrap(), Revocation::NotFound);
}

// ---- Env and browser-session credentials ----------------------------------------------------

/// A pending `env` profile of `owner`'s team.
async fn pending_env(store: &Arc<dyn Store>, owner: &Person, slug: &str, at: DateTime<Utc>) -> AuthProfile {
    let pending = AuthProfile {
        status: ProfileStatus::PendingAuth,
        pending_expires_at: Some(at + TimeDelta::hours(1)),
        ..profile(&owner.team, owner.id(), ProfileKind::Env, slug, at)
    };
    inserted(store, pending).await
}

fn env_meta(fields: &[&str], at: DateTime<Utc>) -> CredentialMeta {
    CredentialMeta::Env { fields: fields.iter().map(|name| FieldSet { name: (*name).into(), set_at: at }).collect() }
}

async fn a_credential_activates_its_profile_and_is_replaced_whole(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let env = pending_env(&store, &ada, "env", t0).await;
    assert_eq!(
        store.profile_credential(env.id).await.unwrap(),
        Some(StoredCredential { status: ProfileStatus::PendingAuth, credential: None })
    );
    assert_eq!(store.profile_credential(ProfileId::generate()).await.unwrap(), None);

    let (t1, t2) = (t0 + TimeDelta::seconds(1), t0 + TimeDelta::seconds(2));
    let first = env_meta(&["A", "B"], t1);
    let write = CredentialWrite {
        profile: env.id,
        by: ada.id(),
        ciphertext: b"sealed-1",
        meta: &first,
        connect_token: None,
        now: t1,
        request_id: None,
    };
    let expected = AuthProfile {
        status: ProfileStatus::Active,
        pending_expires_at: None,
        version: 1,
        updated_at: t1,
        credential: Some(first.clone()),
        ..env.clone()
    };
    assert_eq!(
        store.put_profile_credential(&write).await.unwrap(),
        CredentialOutcome::Stored(Box::new(expected.clone()))
    );
    assert_eq!(store.profile(env.id).await.unwrap(), Some(expected.clone()), "profile reads carry what may be shown");
    assert_eq!(store.team_profiles(ada.team.id, ada.id()).await.unwrap(), [expected]);
    assert_eq!(
        store.profile_credential(env.id).await.unwrap(),
        Some(StoredCredential { status: ProfileStatus::Active, credential: Some((b"sealed-1".to_vec(), first)) })
    );

    let session = CredentialMeta::BrowserSession { browser_kind: "firefox".into(), cdp_url: None, set_at: t2 };
    let write = CredentialWrite {
        profile: env.id,
        by: ada.id(),
        ciphertext: b"sealed-2",
        meta: &session,
        connect_token: None,
        now: t2,
        request_id: None,
    };
    let CredentialOutcome::Stored(replaced) = store.put_profile_credential(&write).await.unwrap() else {
        panic!("stored");
    };
    assert_eq!((replaced.version, replaced.credential.clone()), (2, Some(session.clone())));
    let stored = store.profile_credential(env.id).await.unwrap().unwrap();
    assert_eq!(stored.credential, Some((b"sealed-2".to_vec(), session.clone())), "replaced, not merged");
    assert_eq!(store.count_secrets(SecretKind::ProfileCredentials).await.unwrap(), 1);

    // Revoking wipes it, and nothing is written to a revoked profile or to none.
    assert!(matches!(store.revoke_profile(env.id, None, t2, None).await.unwrap(), Revocation::Revoked(_)));
    assert_eq!(
        store.profile_credential(env.id).await.unwrap(),
        Some(StoredCredential { status: ProfileStatus::Revoked, credential: None })
    );
    assert_eq!(store.put_profile_credential(&write).await.unwrap(), CredentialOutcome::ProfileGone);
    let nowhere = CredentialWrite { profile: ProfileId::generate(), ..write.clone() };
    assert_eq!(store.put_profile_credential(&nowhere).await.unwrap(), CredentialOutcome::ProfileGone);
    assert_eq!(store.count_secrets(SecretKind::ProfileCredentials).await.unwrap(), 0);
    assert_eq!(store.profile(env.id).await.unwrap().unwrap().credential, None);
}

async fn a_credential_written_with_a_connect_token_consumes_it(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let env = pending_env(&store, &ada, "env", t0).await;
    let other = pending_env(&store, &ada, "other", t0).await;
    let token = connect_token(&env, ada.id(), t0, TimeDelta::minutes(30));
    store.mint_connect_token(&token).await.unwrap();
    let others = connect_token(&other, ada.id(), t0, TimeDelta::minutes(30));
    store.mint_connect_token(&others).await.unwrap();
    let meta = env_meta(&["A"], t0);
    let with = |hash: &[u8; 32], now| {
        let write = CredentialWrite {
            profile: env.id,
            by: ada.id(),
            ciphertext: b"sealed",
            meta: &meta,
            connect_token: None,
            now,
            request_id: None,
        };
        (write, *hash)
    };
    let put = async |(write, hash): (CredentialWrite<'_>, [u8; 32])| {
        store.put_profile_credential(&CredentialWrite { connect_token: Some(&hash), ..write }).await.unwrap()
    };
    let (token_hash, others_hash) = (&token.token_hash, &others.token_hash);
    // Another profile's link, or an expired one, writes nothing and is not consumed.
    assert_eq!(put(with(others_hash, t0)).await, CredentialOutcome::LinkUsed);
    let late = t0 + TimeDelta::minutes(31);
    assert_eq!(put(with(token_hash, late)).await, CredentialOutcome::LinkUsed);
    assert_eq!(store.profile_credential(env.id).await.unwrap().unwrap().credential, None);
    assert_eq!(store.profile(env.id).await.unwrap().unwrap().version, 0);
    assert!(store.connect_token(&others.token_hash, t0).await.unwrap().is_some());
    assert!(store.connect_token(&token.token_hash, t0).await.unwrap().is_some());

    let CredentialOutcome::Stored(stored) = put(with(token_hash, t0)).await else {
        panic!("stored");
    };
    assert_eq!((stored.status, stored.version), (ProfileStatus::Active, 1));
    assert_eq!(store.connect_token(&token.token_hash, t0).await.unwrap(), None, "used up");
    assert_eq!(put(with(token_hash, t0)).await, CredentialOutcome::LinkUsed);
    assert_eq!(store.profile(env.id).await.unwrap().unwrap().version, 1, "written once");
}

async fn a_credential_is_written_only_by_who_may_still_set_it(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let (bob, cat, dan) = (sign_up(&store, "bob").await, sign_up(&store, "cat").await, sign_up(&store, "dan").await);
    let (team, t0) = (ada.team.id, now());
    store.write_member(team, Some(ada.id()), bob.id(), Role::Admin, t0, MemberWrite::Put).await.unwrap();
    store.write_member(team, Some(ada.id()), cat.id(), Role::Member, t0, MemberWrite::Put).await.unwrap();
    let env = pending_env(&store, &ada, "env", t0).await;
    let meta = env_meta(&["A"], t0);
    let write = |by: UserId, connect_token| CredentialWrite {
        profile: env.id,
        by,
        ciphertext: b"sealed",
        meta: &meta,
        connect_token,
        now: t0,
        request_id: None,
    };
    // The right is read in the write's transaction, whatever the caller checked before: a team
    // admin sets a team's profile; a plain member, or someone of another team, does not.
    assert!(matches!(
        store.put_profile_credential(&write(bob.id(), None)).await.unwrap(),
        CredentialOutcome::Stored(_)
    ));
    for outsider in [cat.id(), dan.id()] {
        assert_eq!(store.put_profile_credential(&write(outsider, None)).await.unwrap(), CredentialOutcome::NotAllowed);
    }
    // Demoted after his link was minted, Bob's post through it writes nothing and leaves the link.
    let link = connect_token(&env, bob.id(), t0, TimeDelta::minutes(30));
    store.mint_connect_token(&link).await.unwrap();
    store.write_member(team, Some(ada.id()), bob.id(), Role::Member, t0, MemberWrite::Put).await.unwrap();
    let through_link = write(bob.id(), Some(&link.token_hash));
    assert_eq!(store.put_profile_credential(&through_link).await.unwrap(), CredentialOutcome::NotAllowed);
    assert!(store.connect_token(&link.token_hash, t0).await.unwrap().is_some(), "not consumed");
    // A creator who left the team no longer sets their own profile either.
    let cats = pending_env(&store, &cat, "cats", t0).await;
    store.write_member(cat.team.id, Some(cat.id()), ada.id(), Role::Owner, t0, MemberWrite::Put).await.unwrap();
    assert_eq!(store.remove_member(cat.team.id, Some(ada.id()), cat.id()).await.unwrap(), RemoveOutcome::Removed);
    let own = CredentialWrite { profile: cats.id, by: cat.id(), ..write(cat.id(), None) };
    assert_eq!(store.put_profile_credential(&own).await.unwrap(), CredentialOutcome::NotAllowed);
    assert_eq!(store.profile(cats.id).await.unwrap().unwrap().version, cats.version, "nothing written");
    assert_eq!(store.profile(env.id).await.unwrap().unwrap().version, 1, "only the admin's write");
}

async fn concurrent_credential_writes_with_one_connect_token_have_one_winner(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    let env = pending_env(&store, &ada, "env", t0).await;
    let token = connect_token(&env, ada.id(), t0, TimeDelta::minutes(30));
    store.mint_connect_token(&token).await.unwrap();
    let outcomes = concurrently(16, |i| {
        let (store, hash, id, by) = (store.clone(), token.token_hash, env.id, ada.id());
        async move {
            let meta = env_meta(&["A"], t0);
            let sealed = format!("sealed-{i}").into_bytes();
            let write = CredentialWrite {
                profile: id,
                by,
                ciphertext: &sealed,
                meta: &meta,
                connect_token: Some(&hash),
                now: t0,
                request_id: None,
            };
            (store.put_profile_credential(&write).await.unwrap(), sealed)
        }
    })
    .await;
    let winners: Vec<_> = outcomes.iter().filter(|(o, _)| matches!(o, CredentialOutcome::Stored(_))).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|(o, _)| matches!(o, CredentialOutcome::Stored(_) | CredentialOutcome::LinkUsed)));
    let stored = store.profile_credential(env.id).await.unwrap().unwrap().credential.unwrap().0;
    assert_eq!(&stored, &winners[0].1, "the winner's credential is the one kept");
    assert_eq!(store.profile(env.id).await.unwrap().unwrap().version, 1);
}

// ---- Auth profiles: updates, connector defaults, credential tests ---------------------------

fn change<'a>(
    by: UserId,
    name: &'a str,
    slug: &'a Slug,
    scopes: &'a [String],
    widened: bool,
    at: DateTime<Utc>,
) -> ProfileChange<'a> {
    ProfileChange { display_name: Some(name), slug: Some(slug), scopes: Some(scopes), by, widened, now: at }
}

async fn updating_a_profile_compares_and_swaps_its_version(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let active = connected(&store, &ada, "active").await;
    let t0 = now();
    let pending = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "app", t0)).await;
    let other = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::Env, "taken", t0)).await;
    let (renamed, scopes) = (Slug::parse("renamed").unwrap(), vec!["repo".to_owned()]);
    let t1 = t0 + TimeDelta::seconds(1);
    let update = change(ada.id(), "Renamed", &renamed, &scopes, false, t1);
    assert_eq!(store.update_profile(pending.id, pending.version + 1, &update).await.unwrap(), ProfileUpdate::Changed);
    assert_eq!(store.profile(pending.id).await.unwrap().as_ref(), Some(&pending), "a refusal changes nothing");
    assert_eq!(store.update_profile(pending.id, pending.version, &update).await.unwrap(), ProfileUpdate::Updated);
    let updated = AuthProfile {
        display_name: "Renamed".into(),
        slug: renamed.clone(),
        scopes: scopes.clone(),
        updated_at: t1,
        ..pending.clone()
    };
    assert_eq!(store.profile(pending.id).await.unwrap(), Some(updated.clone()), "not widened: the version stays");
    let taken = change(ada.id(), "Renamed", &other.slug, &scopes, false, t1);
    assert_eq!(store.update_profile(pending.id, pending.version, &taken).await.unwrap(), ProfileUpdate::SlugTaken);
    assert_eq!(store.profile(pending.id).await.unwrap(), Some(updated), "nothing written");

    // Widened: a pending profile stays pending with a new version; an active one needs reauth.
    let wider = vec!["repo".to_owned(), "admin".to_owned()];
    let widen = change(ada.id(), "Renamed", &renamed, &wider, true, t1);
    assert_eq!(store.update_profile(pending.id, pending.version, &widen).await.unwrap(), ProfileUpdate::Updated);
    let after = store.profile(pending.id).await.unwrap().unwrap();
    assert_eq!((after.status, after.version), (ProfileStatus::PendingAuth, pending.version + 1));
    let widen = change(ada.id(), "Active", &active.slug, &wider, true, t1);
    assert_eq!(store.update_profile(active.id, active.version, &widen).await.unwrap(), ProfileUpdate::Updated);
    let after = store.profile(active.id).await.unwrap().unwrap();
    assert_eq!((after.status, after.version), (ProfileStatus::NeedsReauth, active.version + 1));
    assert_eq!(after.granted_scopes, active.granted_scopes, "what was granted stays on record");

    // A revoked profile is not updated; of concurrent updates of one version, one wins.
    store.revoke_profile(other.id, None, t1, None).await.unwrap();
    let update = change(ada.id(), "Gone", &other.slug, &scopes, false, t1);
    assert_eq!(store.update_profile(other.id, other.version + 1, &update).await.unwrap(), ProfileUpdate::Changed);
    let fresh = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::Env, "raced", t0)).await;
    let outcomes = concurrently(8, |i| {
        let (store, id, version, by) = (store.clone(), fresh.id, fresh.version, ada.id());
        async move {
            let (slug, scopes) = (Slug::parse(&format!("raced-{i}")).unwrap(), vec![format!("s{i}")]);
            store.update_profile(id, version, &change(by, "Raced", &slug, &scopes, true, now())).await.unwrap()
        }
    })
    .await;
    assert_eq!(outcomes.iter().filter(|o| **o == ProfileUpdate::Updated).count(), 1, "{outcomes:?}");

    // Updates of different fields, each from the same read (neither widens, so the version
    // stays): both stay applied — each writes only the field it names.
    let both = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::Env, "both", t0)).await;
    let (only_name, only_slug) = (
        ProfileChange {
            display_name: Some("Billing"),
            slug: None,
            scopes: None,
            by: ada.id(),
            widened: false,
            now: t1,
        },
        ProfileChange {
            display_name: None,
            slug: Some(&renamed_again()),
            scopes: None,
            by: ada.id(),
            widened: false,
            now: t1,
        },
    );
    for update in [&only_name, &only_slug] {
        assert_eq!(store.update_profile(both.id, both.version, update).await.unwrap(), ProfileUpdate::Updated);
    }
    let after = store.profile(both.id).await.unwrap().unwrap();
    assert_eq!((after.display_name.as_str(), after.slug.as_str()), ("Billing", "billing"));
    assert_eq!(after.scopes, both.scopes);
}

fn renamed_again() -> Slug {
    Slug::parse("billing").unwrap()
}

async fn a_connector_has_at_most_one_default_and_switching_is_one_write(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    let first = connected(&store, &ada, "first").await;
    let second = connected(&store, &ada, "second").await;
    assert_eq!(store.default_profile(ada.team.id, CONNECTOR).await.unwrap(), None);
    assert_eq!(store.set_default_profile(ada.team.id, first.id, ada.id(), t0).await.unwrap(), DefaultOutcome::Set);
    let default = store.default_profile(ada.team.id, CONNECTOR).await.unwrap().unwrap();
    assert_eq!((default.id, default.is_default), (first.id, true));
    assert_eq!(store.set_default_profile(ada.team.id, second.id, ada.id(), t0).await.unwrap(), DefaultOutcome::Set);
    assert_eq!(store.default_profile(ada.team.id, CONNECTOR).await.unwrap().unwrap().id, second.id);
    assert!(!store.profile(first.id).await.unwrap().unwrap().is_default, "switched, not added");
    assert_eq!(db.sql().await.count("connector_defaults").await, 1);
    // A member (neither owner nor admin) makes a default only of a profile they created, and
    // replaces only a default of their own; once removed from the team, nothing at all.
    store.write_member(ada.team.id, None, bob.id(), Role::Member, t0, MemberWrite::Put).await.unwrap();
    let bobs_own = inserted(&store, profile(&ada.team, bob.id(), ProfileKind::Env, "bobs-own", t0)).await;
    let others = store.set_default_profile(ada.team.id, bobs_own.id, bob.id(), t0).await.unwrap();
    assert_eq!(others, DefaultOutcome::OthersDefault);
    assert_eq!(store.default_profile(ada.team.id, CONNECTOR).await.unwrap().unwrap().id, second.id, "unchanged");
    let not_his = store.set_default_profile(ada.team.id, first.id, bob.id(), t0).await.unwrap();
    assert_eq!(not_his, DefaultOutcome::Refused);
    assert_eq!(store.clear_default_profile(ada.team.id, second.id, bob.id()).await.unwrap(), None);
    assert_eq!(store.clear_default_profile(ada.team.id, second.id, ada.id()).await.unwrap(), Some(true));
    for _ in 0..2 {
        let own = store.set_default_profile(ada.team.id, bobs_own.id, bob.id(), t0).await.unwrap();
        assert_eq!(own, DefaultOutcome::Set, "where there is none, then over his own");
    }
    // Disabled, he does nothing with it (a session of his another instance still knows).
    set_user_disabled(&store, bob.id(), true, t0).await.unwrap();
    assert_eq!(store.revoke_profile(bobs_own.id, Some(bob.id()), t0, None).await.unwrap(), Revocation::Refused);
    assert_eq!(store.clear_default_profile(ada.team.id, bobs_own.id, bob.id()).await.unwrap(), None);
    set_user_disabled(&store, bob.id(), false, t0).await.unwrap();
    assert_eq!(store.remove_member(ada.team.id, None, bob.id()).await.unwrap(), RemoveOutcome::Removed);
    let removed = store.set_default_profile(ada.team.id, bobs_own.id, bob.id(), t0).await.unwrap();
    assert_eq!(removed, DefaultOutcome::Refused);
    assert_eq!(store.clear_default_profile(ada.team.id, bobs_own.id, bob.id()).await.unwrap(), None);
    let (slug, scopes) = (Slug::parse("still-his").unwrap(), vec!["repo".to_owned()]);
    let update = change(bob.id(), "Still his", &slug, &scopes, false, t0);
    assert_eq!(store.update_profile(bobs_own.id, bobs_own.version, &update).await.unwrap(), ProfileUpdate::Refused);
    assert_eq!(store.revoke_profile(bobs_own.id, Some(bob.id()), t0, None).await.unwrap(), Revocation::Refused);
    let kept = store.profile(bobs_own.id).await.unwrap().unwrap();
    assert_eq!((kept.status, kept.slug.as_str(), kept.is_default), (ProfileStatus::Active, "bobs-own", true));
    assert!(matches!(
        store.revoke_profile(bobs_own.id, Some(ada.id()), t0, None).await.unwrap(),
        Revocation::Revoked(_)
    ));
    // Revoked meanwhile: not a right lost, a profile to read again (and find gone).
    let adas_update = change(ada.id(), "Gone", &slug, &scopes, false, t0);
    let gone = store.update_profile(bobs_own.id, kept.version, &adas_update).await.unwrap();
    assert_eq!(gone, ProfileUpdate::Changed);
    assert_eq!(store.clear_default_profile(ada.team.id, bobs_own.id, ada.id()).await.unwrap(), Some(false));
    assert_eq!(store.set_default_profile(ada.team.id, second.id, ada.id(), t0).await.unwrap(), DefaultOutcome::Set);
    assert_eq!(store.default_profile(ada.team.id, "another-connector").await.unwrap(), None);

    // Refusals: a personal profile, another team's profile, an unknown one.
    let personal = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "mine", t0)).await;
    assert_eq!(
        store.set_default_profile(ada.team.id, personal.id, ada.id(), t0).await.unwrap(),
        DefaultOutcome::Personal
    );
    let bobs = inserted(&store, profile(&bob.team, bob.id(), ProfileKind::Env, "bobs", t0)).await;
    assert_eq!(store.set_default_profile(ada.team.id, bobs.id, ada.id(), t0).await.unwrap(), DefaultOutcome::NotFound);
    assert_eq!(
        store.set_default_profile(ada.team.id, ProfileId::generate(), ada.id(), t0).await.unwrap(),
        DefaultOutcome::NotFound
    );
    assert_eq!(store.default_profile(ada.team.id, CONNECTOR).await.unwrap().unwrap().id, second.id);

    // Clearing: only the default's own row.
    assert_eq!(store.clear_default_profile(ada.team.id, first.id, ada.id()).await.unwrap(), Some(false));
    assert_eq!(store.clear_default_profile(ada.team.id, second.id, ada.id()).await.unwrap(), Some(true));
    assert_eq!(store.default_profile(ada.team.id, CONNECTOR).await.unwrap(), None);

    // A revoked profile stops being the default, and cannot become it.
    assert_eq!(store.set_default_profile(ada.team.id, first.id, ada.id(), t0).await.unwrap(), DefaultOutcome::Set);
    store.revoke_profile(first.id, None, t0, None).await.unwrap();
    assert_eq!(store.default_profile(ada.team.id, CONNECTOR).await.unwrap(), None);
    assert_eq!(db.sql().await.count("connector_defaults").await, 0);
    assert_eq!(store.set_default_profile(ada.team.id, first.id, ada.id(), t0).await.unwrap(), DefaultOutcome::NotFound);

    // The database itself refuses a second default of a connector, and a default of another
    // team's or connector's profile.
    let sql = db.sql().await;
    let (team, at) = (sql.uuid(&ada.team.id.to_string()), if backend == Backend::Sqlite { "0" } else { "now()" });
    let insert = |profile: &AuthProfile, team: &str, connector: &str| {
        format!(
            "INSERT INTO connector_defaults (team_id, connector_key, profile_id, updated_at) VALUES ({team}, '{connector}', {}, {at})",
            sql.uuid(&profile.id.to_string())
        )
    };
    sql.exec(&insert(&second, &team, CONNECTOR)).await.unwrap();
    assert!(sql.exec(&insert(&personal, &team, CONNECTOR)).await.is_err(), "one row per team and connector");
    sql.exec("DELETE FROM connector_defaults").await.unwrap();
    assert!(sql.exec(&insert(&personal, &team, "elsewhere")).await.is_err(), "not the profile's connector");
    assert!(sql.exec(&insert(&bobs, &team, CONNECTOR)).await.is_err(), "not the profile's team");
    assert_eq!(sql.count("connector_defaults").await, 0);

    // Concurrent switches: every one succeeds, one row remains.
    let mut envs = Vec::new();
    for i in 0..8 {
        envs.push(inserted(&store, profile(&ada.team, ada.id(), ProfileKind::Env, &format!("env-{i}"), t0)).await);
    }
    let ids: Vec<ProfileId> = envs.iter().map(|p| p.id).collect();
    let outcomes = concurrently(8, |i| {
        let (store, team, id, by) = (store.clone(), ada.team.id, ids[i], ada.id());
        async move { store.set_default_profile(team, id, by, now()).await.unwrap() }
    })
    .await;
    assert!(outcomes.iter().all(|o| *o == DefaultOutcome::Set), "{outcomes:?}");
    assert_eq!(sql.count("connector_defaults").await, 1);
    let default = store.default_profile(ada.team.id, CONNECTOR).await.unwrap().unwrap();
    assert!(ids.contains(&default.id));
    let defaults =
        store.team_profiles(ada.team.id, ada.id()).await.unwrap().into_iter().filter(|p| p.is_default).count();
    assert_eq!(defaults, 1);
}

async fn a_members_active_personal_profile_is_found_by_connector(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    let t0 = now();
    join(&store, &ada.team, bob.id(), Role::Member, t0).await;
    let pending = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "mine", t0)).await;
    assert_eq!(store.active_personal_profile(ada.team.id, ada.id(), CONNECTOR).await.unwrap(), None, "pending");
    let credentials = activation(ada.id(), "acct-1", b"access-1", Some(b"refresh-1"), t0);
    assert!(store.activate_profile(pending.id, pending.version, &credentials).await.unwrap().is_some());
    let found = store.active_personal_profile(ada.team.id, ada.id(), CONNECTOR).await.unwrap().unwrap();
    assert_eq!(found.id, pending.id);
    assert_eq!(store.active_personal_profile(ada.team.id, bob.id(), CONNECTOR).await.unwrap(), None, "not Bob's");
    assert_eq!(store.active_personal_profile(ada.team.id, ada.id(), "other").await.unwrap(), None);
    let app = connected(&store, &ada, "app").await;
    let found = store.active_personal_profile(ada.team.id, ada.id(), CONNECTOR).await.unwrap().unwrap();
    assert_ne!(found.id, app.id, "personal profiles only");
    // The oldest active one, when there are several.
    let later =
        inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "later", t0 + TimeDelta::seconds(5)))
            .await;
    assert!(store.activate_profile(later.id, later.version, &credentials).await.unwrap().is_some());
    assert_eq!(store.active_personal_profile(ada.team.id, ada.id(), CONNECTOR).await.unwrap().unwrap().id, pending.id);
}

async fn a_credential_test_expires_and_marks_only_the_token_it_tested(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let app = connected(&store, &ada, "app").await;
    let before = secrets_of(&store, app.id).await;
    let t0 = now();
    assert!(!store.set_access_token_expiry(app.id, before.version + 1, Some(t0)).await.unwrap(), "another token");
    assert_eq!(secrets_of(&store, app.id).await, before);
    assert!(store.set_access_token_expiry(app.id, before.version, Some(t0)).await.unwrap());
    assert_eq!(secrets_of(&store, app.id).await, ProfileSecrets { expires_at: Some(t0), ..before.clone() });
    // Put back (a test whose refresh failed): the token is handed out as before.
    assert!(store.set_access_token_expiry(app.id, before.version, before.expires_at).await.unwrap());
    assert_eq!(secrets_of(&store, app.id).await, before);
    assert!(
        !store.mark_needs_reauth(app.id, before.version + 1, ReauthReason::TestFailed, t0).await.unwrap(),
        "another token"
    );
    // Not while a refresh holds its lease (the lease leaves the version as it is): the refresh
    // decides. Once the lease has run out, the token tested is judged.
    assert!(store.acquire_refresh_lease(app.id, before.version, &lease(Uuid::new_v4(), t0)).await.unwrap());
    assert!(
        !store.mark_needs_reauth(app.id, before.version, ReauthReason::TestFailed, t0).await.unwrap(),
        "a refresh is under way"
    );
    assert_eq!(secrets_of(&store, app.id).await.status, ProfileStatus::Active);
    let t0 = t0 + TimeDelta::seconds(31);
    assert!(store.mark_needs_reauth(app.id, before.version, ReauthReason::TestFailed, t0).await.unwrap());
    let marked = secrets_of(&store, app.id).await;
    assert_eq!((marked.status, marked.version), (ProfileStatus::NeedsReauth, before.version + 1));
    assert_eq!(store.profile(app.id).await.unwrap().unwrap().version, app.version, "connect flows still complete");
    assert!(
        !store.mark_needs_reauth(app.id, marked.version, ReauthReason::TestFailed, t0).await.unwrap(),
        "only active profiles"
    );
    assert!(!store.set_access_token_expiry(app.id, marked.version, Some(t0)).await.unwrap(), "only active profiles");
}

async fn a_refresh_records_the_granted_scopes_when_the_provider_says(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let app = connected(&store, &ada, "app").await;
    assert_eq!(app.scopes, vec!["repo".to_owned(), "read:user".to_owned()], "requested");
    assert_eq!(app.granted_scopes, Some(vec!["repo".to_owned()]), "granted at the connection");
    let t0 = now();
    for (granted, expected) in
        [(None, vec!["repo"]), (Some(vec!["repo", "gist"]), vec!["repo", "gist"]), (None, vec!["repo", "gist"])]
    {
        let holder = Uuid::new_v4();
        assert!(
            store
                .acquire_refresh_lease(app.id, secrets_of(&store, app.id).await.version, &lease(holder, t0))
                .await
                .unwrap()
        );
        let refreshed = Refreshed {
            access_token: b"access-2".to_vec(),
            refresh_token: None,
            expires_at: None,
            granted_scopes: granted.map(|g| g.into_iter().map(str::to_owned).collect()),
            now: t0,
        };
        assert!(store.complete_refresh(app.id, holder, &refreshed).await.unwrap());
        let expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
        assert_eq!(store.profile(app.id).await.unwrap().unwrap().granted_scopes, Some(expected));
    }
}

// ---- Key rotation ---------------------------------------------------------------------------

/// Walks every page of one kind the way `tessera keys rotate` does, asserting that pages come in
/// row-id order and hold at most `limit` rows; returns the secrets and the number of pages.
async fn walk_secrets(store: &Arc<dyn Store>, kind: SecretKind, limit: i64) -> (Vec<StoredSecret>, usize) {
    let (mut secrets, mut pages, mut after) = (Vec::<StoredSecret>::new(), 0, None);
    loop {
        let page = store.secrets_page(kind, after, limit).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.row_id);
        assert!(page.iter().map(|s| s.row_id).collect::<HashSet<_>>().len() <= limit as usize, "{page:?}");
        assert!(page.iter().all(|s| s.kind == kind));
        secrets.extend(page);
        pages += 1;
    }
    assert!(secrets.windows(2).all(|pair| pair[0].row_id <= pair[1].row_id), "in row-id order: {secrets:?}");
    (secrets, pages)
}

fn sorted(mut secrets: Vec<StoredSecret>) -> Vec<StoredSecret> {
    secrets.sort_by(|a, b| (a.row_id, a.column).cmp(&(b.row_id, b.column)));
    secrets
}

fn secret(kind: SecretKind, row_id: Uuid, column: &'static str, ciphertext: &[u8]) -> StoredSecret {
    StoredSecret { kind, row_id, column, ciphertext: ciphertext.to_vec() }
}

async fn a_negative_page_size_reads_nothing(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    store.put_identity_tokens(ada.identity(), &tokens(b"access", None, now())).await.unwrap();
    assert_eq!(store.secrets_page(SecretKind::IdentityTokens, None, -1).await.unwrap(), vec![]);
    assert_eq!(store.secrets_page(SecretKind::IdentityTokens, None, 1).await.unwrap().len(), 1);
}

pub(crate) async fn domains_and_issuers_are_listed_in_byte_order(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    // A UTF-8 collation ignores the hyphen and would put `ab.` first.
    for domain in ["ab.example.com", "a-c.example.com", "b.example.com"] {
        store.claim_domain(&domain_claim(domain, &ada.team, true, now()), false).await.unwrap();
    }
    let domains: Vec<_> =
        store.team_domains(ada.team.id).await.unwrap().into_iter().map(|c| c.domain.as_str().to_owned()).collect();
    assert_eq!(domains, ["a-c.example.com", "ab.example.com", "b.example.com"]);
    let issuers = store.data_report().await.unwrap().issuers;
    let mut sorted = issuers.clone();
    sorted.sort();
    assert_eq!(issuers, sorted);
}

async fn secrets_are_counted_and_paged_in_whole_rows(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let mut people = Vec::new();
    for i in 0..5 {
        people.push(sign_up(&store, &format!("person-{i}")).await);
    }
    let t0 = now();
    // Written in reverse id order; every other row without a refresh token.
    let mut expected = Vec::new();
    for (i, person) in people.iter().enumerate().rev() {
        let (access, refresh) = (format!("access-{i}").into_bytes(), format!("refresh-{i}").into_bytes());
        let refresh = (i % 2 == 0).then_some(refresh.as_slice());
        store.put_identity_tokens(person.identity(), &tokens(&access, refresh, t0)).await.unwrap();
        let row = person.identity().as_uuid();
        expected.push(secret(SecretKind::IdentityTokens, row, "access_token", &access));
        expected.extend(refresh.map(|r| secret(SecretKind::IdentityTokens, row, "refresh_token", r)));
    }
    assert_eq!(store.count_secrets(SecretKind::IdentityTokens).await.unwrap(), 5);
    let (walked, pages) = walk_secrets(&store, SecretKind::IdentityTokens, 2).await;
    assert_eq!(pages, 3, "five rows, two a page");
    assert_eq!(sorted(walked), sorted(expected));

    // Profiles: only rows holding credentials count.
    let owner = &people[0];
    let both = connected(&store, owner, "both").await;
    let revoked = connected(&store, owner, "revoked").await;
    assert!(matches!(store.revoke_profile(revoked.id, None, t0, None).await.unwrap(), Revocation::Revoked(_)));
    let access_only =
        inserted(&store, profile(&owner.team, owner.id(), ProfileKind::OauthAccount, "access-only", t0)).await;
    assert!(
        store
            .activate_profile(access_only.id, 0, &activation(owner.id(), "acct-2", b"access-2", None, t0))
            .await
            .unwrap()
            .is_some()
    );
    inserted(&store, profile(&owner.team, owner.id(), ProfileKind::OauthApp, "pending", t0)).await;
    inserted(&store, profile(&owner.team, owner.id(), ProfileKind::Env, "env", t0)).await;

    assert_eq!(store.count_secrets(SecretKind::AuthProfiles).await.unwrap(), 2);
    let (walked, pages) = walk_secrets(&store, SecretKind::AuthProfiles, 1).await;
    assert_eq!(pages, 2, "two rows, one a page");
    let kind = SecretKind::AuthProfiles;
    let expected = vec![
        secret(kind, both.id.as_uuid(), "access_token", b"access-1"),
        secret(kind, both.id.as_uuid(), "refresh_token", b"refresh-1"),
        secret(kind, access_only.id.as_uuid(), "access_token", b"access-2"),
    ];
    assert_eq!(sorted(walked), sorted(expected));
    assert_eq!(store.count_secrets(SecretKind::IdentityTokens).await.unwrap(), 5, "kinds are counted apart");
}

async fn replacing_a_secret_compares_and_swaps(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await;
    let t0 = now();
    store.put_identity_tokens(ada.identity(), &tokens(b"access-1", Some(b"refresh-1"), t0)).await.unwrap();
    let app = connected(&store, &ada, "app").await;
    let hook = endpoint(&[], t0);
    store.insert_webhook(&hook).await.unwrap();
    let env = pending_env(&store, &ada, "env", t0).await;
    let meta = env_meta(&["KEY"], t0);
    let write = CredentialWrite {
        profile: env.id,
        by: ada.id(),
        ciphertext: b"sealed-1",
        meta: &meta,
        connect_token: None,
        now: t0,
        request_id: None,
    };
    assert!(matches!(store.put_profile_credential(&write).await.unwrap(), CredentialOutcome::Stored(_)));
    for &kind in SecretKind::ALL {
        let secrets = store.secrets_page(kind, None, 10).await.unwrap();
        let columns = if matches!(kind, SecretKind::WebhookEndpoints | SecretKind::ProfileCredentials) { 1 } else { 2 };
        assert_eq!(secrets.len(), columns, "{kind:?}");
        assert_eq!(store.count_secrets(kind).await.unwrap(), 1, "{kind:?}");
        for secret in &secrets {
            let rotated = [b"rotated-".as_slice(), &secret.ciphertext].concat();
            assert!(store.replace_secret(secret, &rotated).await.unwrap());
            assert!(!store.replace_secret(secret, b"stale").await.unwrap(), "the old value is gone");
        }
    }
    let rotated = tokens(b"rotated-access-1", Some(b"rotated-refresh-1"), t0);
    assert_eq!(store.identity_tokens(ada.identity()).await.unwrap(), Some(rotated), "the rest of the row is kept");
    let rotated_key = [b"rotated-".as_slice(), &hook.secret].concat();
    assert_eq!(store.webhook(hook.id).await.unwrap().unwrap().secret, rotated_key, "a webhook's signing key too");
    let sealed = store.profile_credential(env.id).await.unwrap().unwrap().credential.unwrap().0;
    assert_eq!(sealed, b"rotated-sealed-1", "an env profile's credential too");
    let stored = secrets_of(&store, app.id).await;
    assert_eq!(stored.access_token.as_deref(), Some(b"rotated-access-1".as_slice()));
    assert_eq!(stored.refresh_token.as_deref(), Some(b"rotated-refresh-1".as_slice()));

    // A value rewritten meanwhile (here by a refresh) is not overwritten.
    let page = store.secrets_page(SecretKind::AuthProfiles, None, 10).await.unwrap();
    let access = page.iter().find(|s| s.column == "access_token").unwrap();
    let holder = Uuid::new_v4();
    assert!(store.acquire_refresh_lease(app.id, stored.version, &lease(holder, t0)).await.unwrap());
    let refreshed = Refreshed {
        access_token: b"access-2".to_vec(),
        refresh_token: None,
        expires_at: None,
        granted_scopes: None,
        now: t0,
    };
    assert!(store.complete_refresh(app.id, holder, &refreshed).await.unwrap());
    assert!(!store.replace_secret(access, b"rotated-too-late").await.unwrap());
    assert_eq!(secrets_of(&store, app.id).await.access_token, Some(b"access-2".to_vec()));
}

// ---- Errors ---------------------------------------------------------------------------------

/// Errors are told apart by backend: a PostgreSQL code whose digits happen to look like SQLite's
/// BUSY is not "unavailable", and the transient failures of PostgreSQL are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_are_classified_by_postgres_rules() {
    let db = TestDb::new(Backend::Postgres).await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&db.url).await.unwrap();
    // 22021 (invalid byte sequence): 22021 & 0xff == 5, SQLite's BUSY. Bad input, not an outage.
    let bad_input = sqlx::query("SELECT convert_from('\\x00ff'::bytea, 'UTF8')").execute(&pool).await.unwrap_err();
    assert_eq!(code(&bad_input), "22021");
    assert!(matches!(StoreError::from(bad_input), StoreError::Database(_)));
    // 57014 (statement timeout): transient, worth a retry.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL statement_timeout = 10").execute(&mut *tx).await.unwrap();
    let timeout = sqlx::query("SELECT pg_sleep(1)").execute(&mut *tx).await.unwrap_err();
    assert_eq!(code(&timeout), "57014");
    assert!(matches!(StoreError::from(timeout), StoreError::Unavailable(_)));
    drop(tx);
    // 40001 (serialization failure): raised on purpose, the way a SERIALIZABLE conflict is.
    let conflict = sqlx::query("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(matches!(StoreError::from(conflict), StoreError::Unavailable(_)));
    pool.close().await;
}

/// A PostgreSQL connection idle for a second or more is pinged at checkout: when the server
/// dropped it meanwhile, the ping finds out, and the statement runs on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_dropped_while_idle_are_replaced_before_use() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    store.ping().await.unwrap();
    let admin = sqlx::PgPool::connect(&crate::helpers::pg_admin_url()).await.unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let dropped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1) AS t",
    )
    .bind(&name)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(dropped >= 1, "the store's connection was dropped");
    // Longer than the idle time after which a connection is pinged (one second).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    store.ping().await.expect("the dropped connection is replaced, not handed out");
    admin.close().await;
}

/// A PostgreSQL connection gone silent while idle (no reset, no answer: a failover behind a proxy,
/// a middlebox that lost its state) is given up after a bounded ping at checkout, and the
/// statement runs on a new connection — within the acquire timeout, which the ping alone would
/// otherwise take whole, failing the statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_connection_gone_silent_is_replaced_within_the_acquire_timeout() {
    let db = TestDb::new(Backend::Postgres).await;
    let relay = crate::helpers::Relay::start(&db.url).await;
    let (store, ada) = store_on(&db, |database| {
        database.url = tessera::config::DatabaseUrl::parse(&relay.url).unwrap();
        database.max_connections = 1;
        database.acquire_timeout = std::time::Duration::from_secs(3);
    })
    .await;
    relay.silence();
    // Longer than the idle time after which a connection is pinged (one second).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let user = store.get_user(ada.id()).await.expect("a new connection, not the silent one");
    assert_eq!(user.map(|user| user.id), Some(ada.id()));
    relay.cut().await;
}

/// A connection that goes silent right after a statement (too recently used to be pinged at
/// checkout) fails its next statement at `database.statement_timeout` as unavailable, instead of
/// waiting for the kernel to give the socket up (some fifteen minutes); the one after runs on a
/// new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_on_a_connection_gone_silent_fails_at_the_statement_timeout() {
    let db = TestDb::new(Backend::Postgres).await;
    let relay = crate::helpers::Relay::start(&db.url).await;
    let (store, ada) = store_on(&db, |database| {
        database.url = tessera::config::DatabaseUrl::parse(&relay.url).unwrap();
        database.max_connections = 1;
        database.statement_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    relay.silence();
    // A bound for the test, far above the statement timeout, so that a regression fails rather
    // than hangs.
    let bound = std::time::Duration::from_secs(20);
    let silent = tokio::time::timeout(bound, store.get_user(ada.id())).await.expect("failed within the bound");
    assert!(matches!(silent, Err(StoreError::Unavailable(_))), "{silent:?}");
    let user = tokio::time::timeout(bound, store.get_user(ada.id())).await.unwrap().expect("a new connection");
    assert_eq!(user.map(|user| user.id), Some(ada.id()));
    relay.cut().await;
}

/// A statement the client gives up at `database.statement_timeout` (here one waiting for a row
/// lock) is ended by the server too, a second later, rather than left waiting with its locks on
/// a connection nobody reads; migrations are not bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_given_up_by_the_client_is_ended_by_the_server_too() {
    let db = TestDb::new(Backend::Postgres).await;
    let (store, ada) =
        store_on(&db, |database| database.statement_timeout = std::time::Duration::from_millis(300)).await;
    let Sql::Postgres(pool) = db.sql().await else { unreachable!() };
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users FOR UPDATE").execute(&mut *holder).await.unwrap();
    let waited = set_user_disabled(&store, ada.id(), true, now()).await;
    assert!(matches!(waited, Err(StoreError::Unavailable(_))), "{waited:?}");
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
    let mut left = -1;
    for _ in 0..50 {
        left = sqlx::query_scalar::<_, i64>(waiting).fetch_one(&pool).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the abandoned UPDATE still waits for the lock on the server");
    holder.rollback().await.unwrap();
    // The store goes on, on a new connection.
    set_user_disabled(&store, ada.id(), true, now()).await.unwrap();
}

/// PostgreSQL alone: a migration that replaces an index (35, of `auth_profiles`) deadlocks with a
/// request that holds a row lock of the table and waits to write it (a connection's activation)
/// while the new index is built. PostgreSQL ends the migration at once; it is run again, once the
/// request is through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_ended_as_a_deadlock_is_run_again() {
    use sqlx::Connection;
    let (db, store) = setup(Backend::Postgres).await;
    let sql = db.sql().await;
    // The database as it was before migration 35.
    sql.exec("DROP INDEX auth_profiles_team_connector_creator_idx").await.unwrap();
    sql.exec("CREATE INDEX auth_profiles_team_connector_idx ON auth_profiles (team_id, connector_key)").await.unwrap();
    assert_eq!(sql.exec("DELETE FROM _sqlx_migrations WHERE version = 35").await.unwrap(), 1);
    // A long index build: the new index's name is taken by a transaction still open, which the
    // build waits for while it holds its lock of the table.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut name = holder.begin().await.unwrap();
    sqlx::query("CREATE TABLE auth_profiles_team_connector_creator_idx (id int)").execute(&mut *name).await.unwrap();
    let mut request = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut request).await.unwrap();
    // The activation's `SELECT … FOR UPDATE` (a row share lock of the table).
    sqlx::query("LOCK TABLE auth_profiles IN ROW SHARE MODE").execute(&mut request).await.unwrap();
    let migrating = tokio::spawn({
        let store = store.clone();
        async move { store.migrate().await }
    });
    sql.until_waiting_for_a_lock("CREATE INDEX auth_profiles_team_connector_creator_idx").await;
    // The activation's `UPDATE` waits for the build; the build then ends, and the migration
    // asks to drop the old index, which waits for the activation: a deadlock.
    let update = tokio::spawn(async move {
        sqlx::query("LOCK TABLE auth_profiles IN ROW EXCLUSIVE MODE").execute(&mut request).await?;
        sqlx::raw_sql("COMMIT").execute(&mut request).await
    });
    sql.until_waiting_for_a_lock("ROW EXCLUSIVE MODE").await;
    name.rollback().await.unwrap();
    update.await.unwrap().expect("the request goes through; the migration was the one ended");
    migrating.await.unwrap().expect("the migration is run again");
    assert!(store.migration_status().await.unwrap().is_current());
    let indexes = "pg_indexes WHERE indexname LIKE 'auth_profiles_team_connector%'";
    assert_eq!(
        sql.texts(&format!("SELECT indexname FROM {indexes}")).await,
        ["auth_profiles_team_connector_creator_idx"]
    );
}

/// Two processes upgrading one SQLite file at once (both started with `serve`, which migrates
/// on SQLite) both come up: each migration commits whole, and one applied by the other counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_migrating_one_sqlite_file_at_once_both_succeed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = db.config();
    // A file that has a table already, so that the migrations run one by one (a new file gets
    // the whole schema in one transaction).
    let options = db.url.parse::<sqlx::sqlite::SqliteConnectOptions>().unwrap().create_if_missing(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
    sqlx::query("CREATE TABLE unrelated (id INTEGER PRIMARY KEY)").execute(&pool).await.unwrap();
    pool.close().await;
    let (a, b) = (
        tessera::store::connect(&config.database).await.unwrap(),
        tessera::store::connect(&config.database).await.unwrap(),
    );
    let (first, second) = tokio::join!(a.migrate(), b.migrate());
    first.unwrap();
    second.unwrap();
    assert!(a.migration_status().await.unwrap().is_current());
}

/// SQLite's BUSY is unavailable (retry); a constraint failure is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_errors_are_classified_by_sqlite_rules() {
    let db = TestDb::new(Backend::Sqlite).await;
    let options = db.url.parse::<sqlx::sqlite::SqliteConnectOptions>().unwrap().create_if_missing(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(2).connect_with(options).await.unwrap();
    sqlx::query("CREATE TABLE classify (id INTEGER PRIMARY KEY)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO classify VALUES (1)").execute(&pool).await.unwrap();
    let duplicate = sqlx::query("INSERT INTO classify VALUES (1)").execute(&pool).await.unwrap_err();
    assert!(matches!(StoreError::from(duplicate), StoreError::Database(_)));
    // One connection holds the write lock; another with no busy timeout is refused at once.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *holder).await.unwrap();
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("PRAGMA busy_timeout = 0").execute(&mut *other).await.unwrap();
    let busy = sqlx::query("BEGIN IMMEDIATE").execute(&mut *other).await.unwrap_err();
    assert_eq!(code(&busy), "5");
    assert!(matches!(StoreError::from(busy), StoreError::Unavailable(_)));
    sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
}

fn code(error: &sqlx::Error) -> String {
    error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned()).unwrap_or_default()
}

// ---- OpenID Provider: registered clients ----------------------------------------------------

mod clients {
    use std::time::Duration;

    use tessera::domain::client_rules::new_client;
    use tessera::domain::{Client, ClientId, ClientKind, GrantType, RedirectUri, SigningAlg};
    use tessera::store::{ClientInsert, ClientUpdate, ConfigClientSync};

    use super::*;

    on_both_backends!(
        a_client_is_inserted_once_and_read_back_whole,
        clients_are_listed_by_id_a_page_at_a_time,
        clients_are_listed_in_byte_order,
        updating_a_client_compares_its_last_change,
        deleting_a_client_takes_its_used_assertions_with_it,
        config_clients_are_synced_and_admin_clients_never_touched,
        instances_starting_together_write_the_config_clients_once,
        a_config_client_with_the_id_of_an_admin_client_writes_nothing,
        a_client_assertion_is_used_once_until_it_expires,
        concurrent_uses_of_one_client_assertion_have_one_winner,
        expired_client_assertions_are_deleted,
    );

    /// A confidential client with every field set to something other than the default.
    fn client(id: &str, from_config: bool, at: DateTime<Utc>) -> Client {
        let mut client = new_client(
            ClientId::parse(id).unwrap(),
            format!("App {id}"),
            ClientKind::Confidential,
            SigningAlg::ES256,
            from_config,
            at,
        );
        client.secret_hash = Some(hash());
        client.previous_secret =
            Some(tessera::domain::PreviousSecret { hash: [7; 32], until: at + TimeDelta::hours(1) });
        client.jwks = Some(serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}));
        client.redirect_uris = vec![
            RedirectUri::parse("https://app.example.com/cb").unwrap(),
            RedirectUri::parse("http://127.0.0.1/cb").unwrap(),
        ];
        client.post_logout_redirect_uris = vec![RedirectUri::parse("https://app.example.com/bye").unwrap()];
        client.scopes = vec!["openid".into(), "email".into(), "api:read".into()];
        client.grant_types = vec![GrantType::AuthorizationCode, GrantType::RefreshToken, GrantType::ClientCredentials];
        client.resources = vec!["https://api.example.com".into()];
        client.first_party = true;
        client.signing_alg = SigningAlg::EdDSA;
        client.access_token_ttl = Duration::from_secs(300);
        client.refresh_token_ttl = Duration::from_secs(7200);
        client
    }

    fn public(id: &str, at: DateTime<Utc>) -> Client {
        let mut client =
            new_client(ClientId::parse(id).unwrap(), "Public".into(), ClientKind::Public, SigningAlg::ES256, false, at);
        client.redirect_uris = vec![RedirectUri::parse("com.example.app:/cb").unwrap()];
        client
    }

    fn id(text: &str) -> ClientId {
        ClientId::parse(text).unwrap()
    }

    async fn a_client_is_inserted_once_and_read_back_whole(backend: Backend) {
        let (db, store) = setup(backend).await;
        let t0 = now();
        let app = client("app", false, t0);
        assert_eq!(store.insert_client(&app).await.unwrap(), ClientInsert::Inserted);
        assert_eq!(store.client(&app.id).await.unwrap(), Some(app.clone()));
        let other = Client { name: "Another".into(), ..client("app", false, t0 + TimeDelta::seconds(1)) };
        assert_eq!(store.insert_client(&other).await.unwrap(), ClientInsert::IdTaken);
        assert_eq!(store.client(&app.id).await.unwrap(), Some(app), "the first registration stays");
        let spa = public("spa", t0);
        assert_eq!(store.insert_client(&spa).await.unwrap(), ClientInsert::Inserted);
        assert_eq!(store.client(&spa.id).await.unwrap(), Some(spa));
        assert_eq!(store.client(&id("nobody")).await.unwrap(), None);
        // The database refuses a public client with a secret, whatever the service checks.
        let secret = match backend {
            Backend::Sqlite => "zeroblob(32)",
            Backend::Postgres => "decode(repeat('00', 32), 'hex')",
        };
        let sql = db.sql().await;
        assert!(sql.exec(&format!("UPDATE clients SET secret_hash = {secret} WHERE id = 'spa'")).await.is_err());
        assert_eq!(sql.exec(&format!("UPDATE clients SET secret_hash = {secret} WHERE id = 'app'")).await.unwrap(), 1);
    }

    async fn clients_are_listed_by_id_a_page_at_a_time(backend: Backend) {
        let (_db, store) = setup(backend).await;
        for name in ["c", "a", "e", "b", "d"] {
            store.insert_client(&client(name, false, now())).await.unwrap();
        }
        let ids = |page: Vec<Client>| page.into_iter().map(|c| c.id.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(store.list_clients(None, 2).await.unwrap()), ["a", "b"]);
        assert_eq!(ids(store.list_clients(Some(&id("b")), 2).await.unwrap()), ["c", "d"]);
        assert_eq!(ids(store.list_clients(Some(&id("d")), 2).await.unwrap()), ["e"]);
        assert!(store.list_clients(Some(&id("e")), 2).await.unwrap().is_empty());
        assert_eq!(store.list_clients(None, 100).await.unwrap().len(), 5);
    }

    /// By bytes, on every backend and locale: a linguistic collation ignores case and
    /// punctuation.
    async fn clients_are_listed_in_byte_order(backend: Backend) {
        let (db, store) = setup(backend).await;
        for name in ["argo", "Grafana", "app_a", "app-b", "apps"] {
            store.insert_client(&client(name, false, now())).await.unwrap();
        }
        if backend == Backend::Postgres {
            // The column collated as a cluster with an English locale would have it (the test
            // clusters have none: `--no-locale`, `C.UTF-8`), which orders these otherwise.
            let sql = db.sql().await;
            sql.exec("ALTER TABLE clients ALTER COLUMN id TYPE TEXT COLLATE \"en-x-icu\"").await.unwrap();
            let linguistic = sql.texts("SELECT id FROM clients ORDER BY id").await;
            assert_eq!(linguistic, ["app_a", "app-b", "apps", "argo", "Grafana"]);
        }
        let ids = |page: Vec<Client>| page.into_iter().map(|c| c.id.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(store.list_clients(None, 2).await.unwrap()), ["Grafana", "app-b"]);
        assert_eq!(ids(store.list_clients(Some(&id("app-b")), 2).await.unwrap()), ["app_a", "apps"]);
        assert_eq!(ids(store.list_clients(Some(&id("apps")), 2).await.unwrap()), ["argo"]);
    }

    async fn updating_a_client_compares_its_last_change(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let t0 = now();
        let app = client("app", false, t0);
        store.insert_client(&app).await.unwrap();
        let t1 = t0 + TimeDelta::seconds(1);
        let renamed = Client {
            name: "Renamed".into(),
            jwks: None,
            scopes: vec!["openid".into()],
            grant_types: vec![GrantType::ClientCredentials],
            updated_at: t1,
            ..app.clone()
        };
        assert_eq!(store.update_client(&renamed, t0).await.unwrap(), ClientUpdate::Updated);
        assert_eq!(store.client(&app.id).await.unwrap(), Some(renamed.clone()));
        let stale = Client { name: "Stale".into(), updated_at: t1 + TimeDelta::seconds(1), ..app.clone() };
        assert_eq!(store.update_client(&stale, t0).await.unwrap(), ClientUpdate::Changed);
        assert_eq!(store.client(&app.id).await.unwrap(), Some(renamed), "a stale change writes nothing");
        let ghost = client("ghost", false, t0);
        assert_eq!(store.update_client(&ghost, t0).await.unwrap(), ClientUpdate::NotFound);
        assert_eq!(store.client(&ghost.id).await.unwrap(), None);
    }

    async fn deleting_a_client_takes_its_used_assertions_with_it(backend: Backend) {
        let (db, store) = setup(backend).await;
        let t0 = now();
        let app = client("app", false, t0);
        store.insert_client(&app).await.unwrap();
        assert!(store.use_client_assertion(&app.id, "jti-1", t0 + TimeDelta::minutes(5), t0).await.unwrap());
        assert!(store.delete_client(&app.id).await.unwrap());
        assert!(!store.delete_client(&app.id).await.unwrap(), "deleted once");
        assert_eq!(store.client(&app.id).await.unwrap(), None);
        assert_eq!(db.sql().await.count("client_assertions").await, 0);
    }

    /// Instances started together with one file (a rolling deploy's first pods) each sync it:
    /// every sync succeeds, without a conflict, and the clients are written once.
    async fn instances_starting_together_write_the_config_clients_once(backend: Backend) {
        let (db, _store) = setup(backend).await;
        let t0 = now();
        let file = vec![client("cfg-a", true, t0), client("cfg-b", true, t0)];
        let mut stores = Vec::new();
        for _ in 0..8 {
            stores.push(db.store().await);
        }
        let stores = Arc::new(stores);
        let synced = crate::helpers::concurrently(8, |i| {
            let (stores, file) = (stores.clone(), file.clone());
            async move { stores[i].sync_config_clients(&file).await.unwrap() }
        })
        .await;
        assert!(synced.iter().all(|sync| sync.conflicts.is_empty()), "{synced:?}");
        assert_eq!(synced.iter().map(|sync| sync.inserted.len()).sum::<usize>(), 2, "{synced:?}");
        assert!(synced.iter().all(|sync| sync.updated.is_empty() && sync.deleted.is_empty()), "{synced:?}");
        assert_eq!(db.sql().await.count("clients").await, 2);
        for client in &file {
            assert_eq!(stores[0].client(&client.id).await.unwrap().as_ref(), Some(client));
        }
    }

    async fn config_clients_are_synced_and_admin_clients_never_touched(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let t0 = now();
        let admin = client("admin-app", false, t0);
        store.insert_client(&admin).await.unwrap();
        let (a, b) = (client("cfg-a", true, t0), client("cfg-b", true, t0));
        let first = store.sync_config_clients(&[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(first, ConfigClientSync { inserted: vec![a.id.clone(), b.id.clone()], ..Default::default() });
        assert_eq!(store.client(&a.id).await.unwrap(), Some(a.clone()));

        // The next start: b unchanged (its times too), a changed (created_at kept), c new, and a
        // client of an earlier file deleted.
        let t1 = t0 + TimeDelta::minutes(1);
        let a2 = Client { name: "Changed".into(), created_at: t1, updated_at: t1, ..a.clone() };
        let b2 = Client { created_at: t1, updated_at: t1, ..b.clone() };
        let c = client("cfg-c", true, t1);
        let second = store.sync_config_clients(&[c.clone(), a2.clone(), b2]).await.unwrap();
        let changed =
            ConfigClientSync { inserted: vec![c.id.clone()], updated: vec![a.id.clone()], ..Default::default() };
        assert_eq!(second, changed);
        assert_eq!(store.client(&a.id).await.unwrap(), Some(Client { created_at: t0, ..a2 }));
        assert_eq!(store.client(&b.id).await.unwrap(), Some(b.clone()), "an unchanged client is not written");

        // A client whose kind changes is a new one: what its users gave the old one ends.
        let ada = sign_up(&store, "ada").await;
        for app in [&a.id, &b.id] {
            store.widen_consent(ada.id(), app.as_str(), &["openid".into()], None, t1, None).await.unwrap().unwrap();
        }
        let b3 = Client { from_config: true, ..public("cfg-b", t1) };
        let a3 = Client { created_at: t1, updated_at: t1, ..a.clone() };
        let kinds = store.sync_config_clients(&[c.clone(), a3.clone(), b3.clone()]).await.unwrap();
        assert_eq!(kinds, ConfigClientSync { updated: vec![a.id.clone(), b.id.clone()], ..Default::default() });
        assert_eq!(store.client(&b.id).await.unwrap(), Some(b3), "registered anew");
        assert!(store.consent(ada.id(), b.id.as_str()).await.unwrap().is_none(), "its consent ended with it");
        assert!(store.consent(ada.id(), a.id.as_str()).await.unwrap().is_some(), "another change keeps them");
        let third = store.sync_config_clients(std::slice::from_ref(&c)).await.unwrap();
        assert_eq!(third, ConfigClientSync { deleted: vec![a.id.clone(), b.id.clone()], ..Default::default() });
        let ids: Vec<_> = store.list_clients(None, 10).await.unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, [admin.id.clone(), c.id.clone()]);
        assert_eq!(store.sync_config_clients(&[]).await.unwrap().deleted, std::slice::from_ref(&c.id));
        assert_eq!(store.client(&admin.id).await.unwrap(), Some(admin), "admin clients are never touched");
    }

    async fn a_config_client_with_the_id_of_an_admin_client_writes_nothing(backend: Backend) {
        let (db, store) = setup(backend).await;
        let t0 = now();
        let admin = client("taken", false, t0);
        store.insert_client(&admin).await.unwrap();
        let old = client("old-cfg", true, t0);
        store.sync_config_clients(std::slice::from_ref(&old)).await.unwrap();
        // A user's grant of the client the new file drops.
        let ada = sign_up(&store, "ada").await;
        let grant = tessera::store::NewGrant {
            id: Uuid::now_v7(),
            client_id: "old-cfg".into(),
            user_id: ada.id(),
            identity_id: Some(ada.identity()),
            session_hash: None,
            scope: "openid".into(),
            resource: None,
            provider: None,
            auth_time: t0,
            now: t0,
            expires_at: t0 + TimeDelta::days(30),
            consent_required: false,
        };
        let code = tessera::store::NewCode {
            code_hash: [7; 32],
            redirect_uri: "https://app.example.com/cb".into(),
            code_challenge: None,
            nonce: None,
            expires_at: t0 + TimeDelta::seconds(60),
        };
        assert!(store.insert_grant(&grant, &code).await.unwrap());
        let sync = store.sync_config_clients(&[client("new-cfg", true, t0), client("taken", true, t0)]).await.unwrap();
        assert_eq!(sync.conflicts, std::slice::from_ref(&admin.id));
        assert_eq!(store.client(&admin.id).await.unwrap(), Some(admin));
        assert_eq!(store.client(&id("new-cfg")).await.unwrap(), None, "nothing is written");
        assert_eq!(store.client(&old.id).await.unwrap(), Some(old), "nothing is deleted");
        let sql = db.sql().await;
        assert_eq!((sql.count("oauth_grants").await, sql.count("oauth_codes").await), (1, 1), "nor its grants");
    }

    async fn a_client_assertion_is_used_once_until_it_expires(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let t0 = now();
        let (app, other) = (client("app", false, t0), client("other", false, t0));
        store.insert_client(&app).await.unwrap();
        store.insert_client(&other).await.unwrap();
        let until = t0 + TimeDelta::minutes(5);
        assert!(store.use_client_assertion(&app.id, "jti-1", until, t0).await.unwrap());
        assert!(!store.use_client_assertion(&app.id, "jti-1", until, t0).await.unwrap(), "a replay");
        assert!(!store.use_client_assertion(&app.id, "jti-1", until, until - TimeDelta::seconds(1)).await.unwrap());
        assert!(store.use_client_assertion(&other.id, "jti-1", until, t0).await.unwrap(), "jtis are per client");
        assert!(store.use_client_assertion(&app.id, "jti-2", until, t0).await.unwrap());
        // Once the record expired, the jti may be used again (the assertion itself expired too).
        let later = until + TimeDelta::minutes(10);
        assert!(store.use_client_assertion(&app.id, "jti-1", later, until).await.unwrap());
        assert!(!store.use_client_assertion(&app.id, "jti-1", later, until).await.unwrap());
    }

    async fn concurrent_uses_of_one_client_assertion_have_one_winner(backend: Backend) {
        let (db, store) = setup(backend).await;
        let t0 = now();
        let app = client("app", false, t0);
        store.insert_client(&app).await.unwrap();
        let results = concurrently(16, |_| {
            let (store, id) = (store.clone(), app.id.clone());
            async move { store.use_client_assertion(&id, "the-jti", t0 + TimeDelta::minutes(5), t0).await.unwrap() }
        })
        .await;
        assert_eq!(results.iter().filter(|used| **used).count(), 1, "{results:?}");
        assert_eq!(db.sql().await.count("client_assertions").await, 1);
    }

    async fn expired_client_assertions_are_deleted(backend: Backend) {
        let (db, store) = setup(backend).await;
        let t0 = now();
        let app = client("app", false, t0);
        store.insert_client(&app).await.unwrap();
        for (jti, minutes) in [("a", 1), ("b", 2), ("c", 10)] {
            store.use_client_assertion(&app.id, jti, t0 + TimeDelta::minutes(minutes), t0).await.unwrap();
        }
        assert_eq!(store.delete_expired_client_assertions(t0 + TimeDelta::minutes(2)).await.unwrap(), 2);
        assert_eq!(store.delete_expired_client_assertions(t0 + TimeDelta::minutes(2)).await.unwrap(), 0);
        assert_eq!(db.sql().await.count("client_assertions").await, 1);
    }
}

// ---- OpenID Provider: signing keys ---------------------------------------------------------

/// A signing key as the store sees it: the store neither parses the JWK nor decrypts the key.
fn signing_key(kid: &str, alg: SigningAlg, created_at: DateTime<Utc>) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.to_owned(),
        alg,
        public_jwk: serde_json::json!({ "kty": "OKP", "kid": kid }).to_string(),
        private_key: format!("ciphertext of {kid}").into_bytes(),
        created_at,
        signs_from: created_at,
        retired_at: None,
        unpublish_at: None,
    }
}

/// `tessera keys rotate` re-encrypts signing keys' private keys; a retired one whose ring key was
/// lost (it was rotated away for that reason) is never decrypted again and must not fail every
/// later rotation; one that signs, or will, still does.
async fn a_retired_signing_key_that_does_not_decrypt_does_not_fail_a_rotation_of_the_ring(backend: Backend) {
    use tessera::crypto::keyring::KeyRing;
    use tessera::service::keys::rotate_signing_keys;
    let (_db, store) = setup(backend).await;
    let ring = |id: &str, byte: u8| {
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [byte; 32]);
        KeyRing::parse(&format!("{id}:{key}")).unwrap()
    };
    let (lost, kept) = (ring("k1", 1), ring("k2", 2));
    let t0 = now() - TimeDelta::hours(2);
    let sealed = |ring: &KeyRing, kid: &str| ring.encrypt(b"pkcs8", &SigningKeyRecord::aad(kid));
    // Each algorithm's first key is under the lost ring key; its successor under the kept one.
    // ES256's was retired an hour ago; RS256's signs for another hour.
    for (alg, old, new, retired_at) in [
        (SigningAlg::ES256, "es-old", "es-new", now() - TimeDelta::hours(1)),
        (SigningAlg::RS256, "rs-old", "rs-new", now() + TimeDelta::hours(1)),
    ] {
        let first = SigningKeyRecord { private_key: sealed(&lost, old), ..signing_key(old, alg, t0) };
        assert!(store.insert_signing_key(&first).await.unwrap());
        let next = SigningKeyRecord {
            private_key: sealed(&kept, new),
            signs_from: retired_at,
            ..signing_key(new, alg, t0 + TimeDelta::minutes(1))
        };
        let retire = Retirement { kid: old, retired_at, unpublish_at: retired_at + TimeDelta::hours(2) };
        assert!(store.rotate_signing_key(&retire, &next).await.unwrap());
    }
    // The retired key is passed over; the one that still signs is needed, and fails.
    let rotation = rotate_signing_keys(store.as_ref(), &kept).await.unwrap();
    assert_eq!((rotation.current, rotation.failed, rotation.retired, rotation.left), (2, 1, 1, 0), "{rotation:?}");
}

async fn one_signing_key_per_algorithm_is_unretired_and_keys_are_listed_while_published(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let t0 = now();
    let es = signing_key("es-1", SigningAlg::ES256, t0);
    assert!(store.insert_signing_key(&es).await.unwrap());
    let second = signing_key("es-2", SigningAlg::ES256, t0);
    assert!(!store.insert_signing_key(&second).await.unwrap(), "ES256 has an un-retired key already");
    let rs = signing_key("rs-1", SigningAlg::RS256, t0 + TimeDelta::seconds(1));
    assert!(store.insert_signing_key(&rs).await.unwrap(), "one per algorithm");
    assert_eq!(store.published_signing_keys(t0).await.unwrap(), [es.clone(), rs.clone()], "oldest first");
    assert_eq!(store.all_signing_keys().await.unwrap(), [es, rs]);
}

async fn a_rotation_retires_the_current_signing_key_and_inserts_the_next(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let t0 = now();
    let first = signing_key("es-1", SigningAlg::ES256, t0);
    store.insert_signing_key(&first).await.unwrap();
    let t1 = t0 + TimeDelta::days(30);
    let next =
        SigningKeyRecord { signs_from: t1 + TimeDelta::minutes(12), ..signing_key("es-2", SigningAlg::ES256, t1) };
    let retire =
        Retirement { kid: "es-1", retired_at: next.signs_from, unpublish_at: next.signs_from + TimeDelta::hours(1) };
    assert!(store.rotate_signing_key(&retire, &next).await.unwrap());
    let retired =
        SigningKeyRecord { retired_at: Some(retire.retired_at), unpublish_at: Some(retire.unpublish_at), ..first };
    assert_eq!(store.published_signing_keys(t1).await.unwrap(), [retired.clone(), next.clone()]);

    // A rotation from a key retired meanwhile (another instance rotated first) writes nothing,
    // and so does one that names a key of another algorithm.
    let late = signing_key("es-3", SigningAlg::ES256, t1);
    assert!(!store.rotate_signing_key(&retire, &late).await.unwrap());
    let rs = signing_key("rs-1", SigningAlg::RS256, t1);
    store.insert_signing_key(&rs).await.unwrap();
    assert!(!store.rotate_signing_key(&Retirement { kid: "rs-1", ..retire }, &late).await.unwrap());
    assert_eq!(store.all_signing_keys().await.unwrap(), [retired.clone(), next.clone(), rs.clone()]);

    // From its unpublish time on, a retired key is no longer listed as published; it stays stored.
    assert_eq!(store.published_signing_keys(retire.unpublish_at - TimeDelta::microseconds(1)).await.unwrap().len(), 3);
    assert_eq!(store.published_signing_keys(retire.unpublish_at).await.unwrap(), [next, rs]);
    assert_eq!(store.all_signing_keys().await.unwrap().len(), 3);
}

async fn concurrent_rotations_of_one_signing_key_have_one_winner(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let t0 = now();
    store.insert_signing_key(&signing_key("es-1", SigningAlg::ES256, t0)).await.unwrap();
    let rotated = concurrently(16, |i| {
        let store = store.clone();
        async move {
            let next = signing_key(&format!("es-next-{i}"), SigningAlg::ES256, t0);
            let retire = Retirement { kid: "es-1", retired_at: t0, unpublish_at: t0 + TimeDelta::hours(1) };
            store.rotate_signing_key(&retire, &next).await.unwrap()
        }
    })
    .await;
    assert_eq!(rotated.iter().filter(|r| **r).count(), 1, "{rotated:?}");
    let keys = store.all_signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.iter().filter(|k| k.retired_at.is_none()).count(), 1, "one successor: {keys:?}");
}

async fn concurrent_first_signing_keys_of_an_algorithm_have_one_winner(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let t0 = now();
    let inserted = concurrently(16, |i| {
        let store = store.clone();
        async move { store.insert_signing_key(&signing_key(&format!("ed-{i}"), SigningAlg::EdDSA, t0)).await.unwrap() }
    })
    .await;
    assert_eq!(inserted.iter().filter(|r| **r).count(), 1, "{inserted:?}");
    assert_eq!(store.all_signing_keys().await.unwrap().len(), 1);
}

async fn replacing_a_signing_key_ciphertext_compares_and_swaps(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let key = signing_key("es-1", SigningAlg::ES256, now());
    store.insert_signing_key(&key).await.unwrap();
    assert!(store.replace_signing_key_ciphertext("es-1", &key.private_key, b"new").await.unwrap());
    assert!(
        !store.replace_signing_key_ciphertext("es-1", &key.private_key, b"newer").await.unwrap(),
        "changed meanwhile"
    );
    assert!(!store.replace_signing_key_ciphertext("es-2", b"new", b"newer").await.unwrap(), "no such key");
    assert_eq!(store.all_signing_keys().await.unwrap()[0].private_key, b"new");
}

// ---- OpenID Provider: grants, codes, refresh tokens, consents, held requests ----------------

mod grants {
    use tessera::domain::client_rules::new_client;
    use tessera::domain::{ClientId, ClientKind};
    use tessera::store::{HeldFor, HeldRequest, NewCode, NewGrant, RedeemOutcome, RotateOutcome};

    use super::*;
    use tessera::store::{ActorKind, Consent, NewAuditEvent};

    on_both_backends!(
        a_grant_and_its_code_are_read_back_and_the_code_is_redeemed_once,
        an_expired_code_is_invalid_and_revokes_nothing,
        an_unredeemed_grant_is_not_listed_as_an_app,
        a_code_of_a_grant_that_ended_is_invalid_and_stays_unused,
        concurrent_redemptions_of_one_code_have_one_winner,
        a_refresh_token_rotates_once_and_reuse_revokes_its_grant,
        a_rotated_refresh_token_rotates_again_within_the_reuse_interval,
        concurrent_rotations_of_one_refresh_token_have_one_winner,
        a_grant_counts_while_its_user_session_and_identity_do,
        consents_widen_and_concurrent_approvals_lose_none,
        a_grant_needing_consent_is_written_only_while_the_consent_stands,
        a_held_request_is_taken_once_and_not_after_it_expires,
        expired_grants_codes_and_requests_are_deleted,
        a_code_redeemed_as_it_expires_keeps_its_grant_from_the_sweep,
        deleting_a_client_deletes_its_grants_codes_and_tokens_and_no_others,
        grants_tied_to_no_identity_are_revoked_by_migration_22,
        consents_with_unpaired_resources_are_asked_again_after_migration_23,
    );

    /// Migration 23's data step: a consent of before it that lists resources beside its scopes
    /// (which scopes went with which resource unknown) covers neither those scopes nor any
    /// resource after it, so the app asks once more; a consent without a resource keeps its
    /// scopes.
    async fn consents_with_unpaired_resources_are_asked_again_after_migration_23(backend: Backend) {
        let (db, store) = setup(backend).await;
        let app = client(&store).await;
        let (ada, bob) = (sign_up(&store, "ada").await, sign_up(&store, "bob").await);
        let scopes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        let t = now();
        store.widen_consent(ada.id(), &app, &scopes(&["openid", "offline_access"]), None, t, None).await.unwrap();
        store.widen_consent(bob.id(), &app, &scopes(&["openid"]), None, t, None).await.unwrap();
        // The table as migration 21 left it: Bob approved the API besides two scopes, unpaired.
        let sql = db.sql().await;
        let before_23 = [
            "ALTER TABLE oauth_consents DROP COLUMN resource_scopes",
            "UPDATE oauth_consents SET scope = 'openid api:read', resources = 'https://api.example.com'
             WHERE scope = 'openid'",
            "DELETE FROM _sqlx_migrations WHERE version = 23",
        ];
        for statement in before_23 {
            assert_eq!(sql.exec(statement).await.unwrap() > 0, !statement.starts_with("ALTER"), "{statement}");
        }
        store.migrate().await.unwrap();
        assert!(store.migration_status().await.unwrap().is_current());

        let ada_consent = store.consent(ada.id(), &app).await.unwrap().unwrap();
        assert_eq!(ada_consent.scopes, scopes(&["openid", "offline_access"]), "no resource: kept");
        assert!(ada_consent.covers(&scopes(&["openid", "offline_access"]), None));
        // Kept (the app stays among the user's apps), but covering nothing.
        let bob_consent = store.consent(bob.id(), &app).await.unwrap().unwrap();
        assert_eq!((bob_consent.scopes.len(), bob_consent.resources.len()), (0, 0), "{bob_consent:?}");
        assert!(!bob_consent.covers(&scopes(&["openid"]), None), "unpaired: asked again");
        // Approved again, it covers what was approved, paired.
        let api = Some("https://api.example.com");
        store.widen_consent(bob.id(), &app, &scopes(&["api:read"]), api, now(), None).await.unwrap();
        let bob_consent = store.consent(bob.id(), &app).await.unwrap().unwrap();
        assert!(bob_consent.covers(&scopes(&["api:read"]), api));
        assert!(!bob_consent.covers(&scopes(&["openid"]), api), "{bob_consent:?}");

        // During the roll-out, an instance of the binary of before migration 23 approves the
        // API for Ada its own way: the scopes into `scope`, the resource onto the unpaired list
        // (which this binary leaves empty, also for a resource it paired itself, as Bob's).
        assert_eq!(sql.texts("SELECT resources FROM oauth_consents").await, ["", ""]);
        let older = "UPDATE oauth_consents SET scope = 'openid offline_access api:write', \
                     resources = 'https://api.example.com' WHERE scope = 'openid offline_access'";
        assert_eq!(sql.exec(older).await.unwrap(), 1);
        let ada_consent = store.consent(ada.id(), &app).await.unwrap().unwrap();
        assert!(!ada_consent.covers(&scopes(&["api:write"]), None), "its scopes cover nothing: {ada_consent:?}");
        assert!(!ada_consent.covers(&scopes(&["openid"]), api), "{ada_consent:?}");
        // Approved again by this binary, the row is whole: the stray entry goes.
        store.widen_consent(ada.id(), &app, &scopes(&["openid"]), None, now(), None).await.unwrap();
        let ada_consent = store.consent(ada.id(), &app).await.unwrap().unwrap();
        assert!(ada_consent.covers(&scopes(&["openid"]), None), "{ada_consent:?}");
        assert!(!ada_consent.covers(&scopes(&["api:write"]), None), "{ada_consent:?}");
        assert_eq!(sql.texts("SELECT resources FROM oauth_consents WHERE scope = 'openid'").await, [""]);
    }

    /// The grants an orphaned session made (migration 22's comment) carry no identity, so no
    /// unlink could end them: the migration revokes them, and no other.
    async fn grants_tied_to_no_identity_are_revoked_by_migration_22(backend: Backend) {
        let (db, store) = setup(backend).await;
        client(&store).await;
        let ada = sign_up(&store, "ada").await;
        let t0 = now();
        let kept = grant(&ada, None, t0);
        let orphaned = NewGrant { id: Uuid::now_v7(), identity_id: None, ..grant(&ada, None, t0) };
        for g in [&kept, &orphaned] {
            assert!(store.insert_grant(g, &code(t0)).await.unwrap());
        }
        let active = async |id| store.grant(id, grant_at(now())).await.unwrap().unwrap().active;
        assert!(active(kept.id).await && active(orphaned.id).await, "before: both count");
        let sql = db.sql().await;
        assert_eq!(sql.exec("DELETE FROM _sqlx_migrations WHERE version = 22").await.unwrap(), 1);
        store.migrate().await.unwrap();
        assert!(active(kept.id).await, "a grant with its identity stays");
        assert!(!active(orphaned.id).await, "one tied to no identity is revoked");
    }

    /// A client's grants, with their codes and refresh tokens (cleared in batches before the
    /// client row goes, see `delete_client`), go with it; another client's stay.
    async fn deleting_a_client_deletes_its_grants_codes_and_tokens_and_no_others(backend: Backend) {
        let (db, store) = setup(backend).await;
        client(&store).await;
        let other = new_client(
            ClientId::parse("other").unwrap(),
            "Other".into(),
            ClientKind::Confidential,
            SigningAlg::ES256,
            false,
            now(),
        );
        store.insert_client(&other).await.unwrap();
        let (ada, bob) = (sign_up(&store, "ada").await, sign_up(&store, "bob").await);
        let t0 = now();
        for person in [&ada, &bob] {
            let (_, refresh) = granted(&store, person, t0).await;
            // A second refresh token of the grant (a rotation), and an unredeemed grant's code.
            let next = hash();
            let rotated = store.rotate_refresh_token(&refresh, &next, grant_at(t0), None, None).await.unwrap();
            assert_eq!(rotated, RotateOutcome::Rotated);
            store.insert_grant(&grant(person, None, t0), &code(t0)).await.unwrap();
        }
        let kept = NewGrant { client_id: "other".into(), ..grant(&ada, None, t0) };
        let kept_code = code(t0);
        store.insert_grant(&kept, &kept_code).await.unwrap();
        assert_eq!(
            store.redeem_code(&kept_code.code_hash, Some(&hash()), grant_at(t0), None).await.unwrap(),
            RedeemOutcome::Redeemed
        );
        // Consents: both users' for the client, Ada's for the other.
        let openid = ["openid".to_owned()];
        for (person, app) in [(&ada, "app"), (&bob, "app"), (&ada, "other")] {
            store.widen_consent(person.id(), app, &openid, None, t0, None).await.unwrap().unwrap();
        }
        let sql = db.sql().await;
        let counts = async || {
            (
                sql.count("oauth_grants").await,
                sql.count("oauth_codes").await,
                sql.count("oauth_refresh_tokens").await,
                sql.count("oauth_consents").await,
            )
        };
        assert_eq!(counts().await, (5, 5, 5, 3));
        // Held authorization requests (anyone may hold them for a public client) and used
        // assertions, of both clients.
        for app in ["app", "other"] {
            for _ in 0..3 {
                let params = r#"{"client_id":"x"}"#.to_owned();
                let expires_at = t0 + TimeDelta::minutes(10);
                let held =
                    HeldRequest { id_hash: hash(), client_id: app.into(), params, session_hash: None, expires_at };
                store.insert_request(&held).await.unwrap();
                let jti = format!("{}", uuid::Uuid::new_v4());
                assert!(
                    store.use_client_assertion(&ClientId::parse(app).unwrap(), &jti, expires_at, t0).await.unwrap()
                );
            }
        }
        // They are deleted in batches before the client row, not by its cascade in one
        // transaction: a deletion of the client row that fails leaves the client's gone.
        sql.inject("DELETE", "clients", None, "SELECT RAISE(ABORT, 'injected');", "RAISE EXCEPTION 'injected';").await;
        store.delete_client(&ClientId::parse("app").unwrap()).await.expect_err("the client row stays");
        sql.remove_injected("clients").await;
        for table in ["oauth_requests", "client_assertions"] {
            assert_eq!(sql.count(&format!("{table} WHERE client_id = 'app'")).await, 0, "{table}");
            assert_eq!(sql.count(&format!("{table} WHERE client_id = 'other'")).await, 3, "{table}");
        }

        assert!(store.delete_client(&ClientId::parse("app").unwrap()).await.unwrap());
        assert_eq!(counts().await, (1, 1, 1, 1), "the other client's grant, code, token and consent alone");
        assert_eq!(sql.count("oauth_consents WHERE client_id = 'other'").await, 1);
        assert_eq!(sql.count("oauth_grants WHERE client_id = 'other'").await, 1);
        assert!(store.grant(kept.id, grant_at(now())).await.unwrap().unwrap().active);
        assert_eq!(store.client(&ClientId::parse("app").unwrap()).await.unwrap(), None);
    }

    async fn client(store: &Arc<dyn Store>) -> String {
        let client = new_client(
            ClientId::parse("app").unwrap(),
            "App".into(),
            ClientKind::Confidential,
            SigningAlg::ES256,
            false,
            now(),
        );
        store.insert_client(&client).await.unwrap();
        "app".into()
    }

    fn grant(person: &Person, session: Option<[u8; 32]>, at: DateTime<Utc>) -> NewGrant {
        NewGrant {
            id: Uuid::now_v7(),
            client_id: "app".into(),
            user_id: person.id(),
            identity_id: Some(person.identity()),
            session_hash: session,
            scope: "openid email".into(),
            resource: Some("https://api.example.com".into()),
            provider: Some("local".into()),
            auth_time: at,
            now: at,
            expires_at: at + TimeDelta::days(30),
            consent_required: false,
        }
    }

    fn code(at: DateTime<Utc>) -> NewCode {
        NewCode {
            code_hash: hash(),
            redirect_uri: "https://app.example.com/cb".into(),
            code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
            nonce: Some("n-1".into()),
            expires_at: at + TimeDelta::seconds(60),
        }
    }

    /// A database with the client, Ada, and a grant of hers made at `t0` with its unused code.
    struct Issued {
        db: TestDb,
        store: Arc<dyn Store>,
        ada: Person,
        t0: DateTime<Utc>,
        grant: NewGrant,
        code: NewCode,
    }

    async fn issued(backend: Backend) -> Issued {
        let (db, store) = setup(backend).await;
        client(&store).await;
        let ada = sign_up(&store, "ada").await;
        let t0 = now();
        let (grant, code) = (grant(&ada, None, t0), code(t0));
        store.insert_grant(&grant, &code).await.unwrap();
        Issued { db, store, ada, t0, grant, code }
    }

    /// A grant with a redeemed code and one refresh token; returns its id and the token's hash.
    async fn granted(store: &Arc<dyn Store>, person: &Person, at: DateTime<Utc>) -> (Uuid, [u8; 32]) {
        let (g, c, refresh) = (grant(person, None, at), code(at), hash());
        store.insert_grant(&g, &c).await.unwrap();
        assert_eq!(
            store.redeem_code(&c.code_hash, Some(&refresh), grant_at(at), None).await.unwrap(),
            RedeemOutcome::Redeemed
        );
        (g.id, refresh)
    }

    async fn a_grant_and_its_code_are_read_back_and_the_code_is_redeemed_once(backend: Backend) {
        let Issued { db, store, ada, t0, grant: g, code: c } = issued(backend).await;
        let (record, stored) = store.code_grant(&c.code_hash, grant_at(t0)).await.unwrap().unwrap();
        assert_eq!((record.id, record.client_id.as_str(), record.user_id), (g.id, "app", ada.id()));
        assert_eq!(
            (record.scope.as_str(), record.resource.as_deref()),
            ("openid email", Some("https://api.example.com"))
        );
        assert_eq!((record.provider.as_deref(), record.auth_time, record.active), (Some("local"), t0, true));
        assert_eq!(record.identity_id, Some(ada.identity()));
        assert_eq!(
            (stored.redirect_uri, stored.nonce.as_deref(), stored.used),
            (c.redirect_uri.clone(), Some("n-1"), false)
        );
        assert_eq!(stored.code_challenge, c.code_challenge);

        let refresh = hash();
        assert_eq!(
            store.redeem_code(&c.code_hash, Some(&refresh), grant_at(t0), None).await.unwrap(),
            RedeemOutcome::Redeemed
        );
        assert!(store.code_grant(&c.code_hash, grant_at(t0)).await.unwrap().unwrap().1.used);
        let (by_refresh, used_at) = store.refresh_grant(&refresh, grant_at(t0)).await.unwrap().unwrap();
        assert_eq!((by_refresh.id, used_at), (g.id, None));
        // Again: a replay, which revokes the grant and stores nothing.
        assert_eq!(
            store.redeem_code(&c.code_hash, Some(&hash()), grant_at(t0), None).await.unwrap(),
            RedeemOutcome::Replayed
        );
        assert!(!store.grant(g.id, grant_at(t0)).await.unwrap().unwrap().active);
        assert_eq!(db.sql().await.count("oauth_refresh_tokens").await, 1);
        // And again: the grant is revoked already; nothing more is written.
        assert_eq!(store.redeem_code(&c.code_hash, None, grant_at(t0), None).await.unwrap(), RedeemOutcome::Invalid);
        assert_eq!(db.sql().await.count("audit_events WHERE action = 'grant.revoked'").await, 1);
        assert_eq!(store.redeem_code(&hash(), None, grant_at(t0), None).await.unwrap(), RedeemOutcome::Invalid);
        assert_eq!(store.code_grant(&hash(), grant_at(t0)).await.unwrap(), None);
        assert_eq!(store.grant(Uuid::now_v7(), grant_at(t0)).await.unwrap(), None);
    }

    /// An abandoned sign-in (a code never redeemed) gave the app nothing: the user's list of
    /// apps with access shows it only once its code is redeemed.
    async fn an_unredeemed_grant_is_not_listed_as_an_app(backend: Backend) {
        let Issued { db: _db, store, ada, t0, code: c, .. } = issued(backend).await;
        assert!(store.user_apps(ada.id(), grant_at(t0)).await.unwrap().is_empty());
        assert_eq!(
            store.redeem_code(&c.code_hash, Some(&hash()), grant_at(t0), None).await.unwrap(),
            RedeemOutcome::Redeemed
        );
        let apps = store.user_apps(ada.id(), grant_at(t0)).await.unwrap();
        assert_eq!(apps.iter().map(|a| a.client_id.as_str()).collect::<Vec<_>>(), ["app"]);
    }

    async fn an_expired_code_is_invalid_and_revokes_nothing(backend: Backend) {
        let Issued { store, t0, grant: g, code: c, .. } = issued(backend).await;
        let late = t0 + TimeDelta::seconds(61);
        assert_eq!(
            store.redeem_code(&c.code_hash, Some(&hash()), grant_at(late), None).await.unwrap(),
            RedeemOutcome::Invalid
        );
        assert!(store.grant(g.id, grant_at(late)).await.unwrap().unwrap().active);
    }

    async fn a_code_of_a_grant_that_ended_is_invalid_and_stays_unused(backend: Backend) {
        let Issued { db, store, t0, grant: g, code: c, .. } = issued(backend).await;
        // Revoked between the token endpoint's read of the code and its redemption.
        assert!(store.code_grant(&c.code_hash, grant_at(t0)).await.unwrap().unwrap().0.active);
        assert!(store.revoke_grant(g.id, t0).await.unwrap());
        assert_eq!(
            store.redeem_code(&c.code_hash, Some(&hash()), grant_at(t0), None).await.unwrap(),
            RedeemOutcome::Invalid
        );
        assert!(!store.code_grant(&c.code_hash, grant_at(t0)).await.unwrap().unwrap().1.used);
        assert_eq!(db.sql().await.count("oauth_refresh_tokens").await, 0, "no refresh token stored");
    }

    async fn concurrent_redemptions_of_one_code_have_one_winner(backend: Backend) {
        let Issued { db, store, t0, grant: g, code: c, .. } = issued(backend).await;
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (store, code) = (store.clone(), c.code_hash);
                tokio::spawn(async move { store.redeem_code(&code, Some(&hash()), grant_at(t0), None).await.unwrap() })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        assert_eq!(outcomes.iter().filter(|o| **o == RedeemOutcome::Redeemed).count(), 1);
        // One of the others revokes the grant; the rest find it revoked already and write nothing.
        assert_eq!(outcomes.iter().filter(|o| **o == RedeemOutcome::Replayed).count(), 1);
        assert_eq!(outcomes.iter().filter(|o| **o == RedeemOutcome::Invalid).count(), 14);
        assert_eq!(db.sql().await.count("audit_events WHERE action = 'grant.revoked'").await, 1);
        assert_eq!(db.sql().await.count("oauth_refresh_tokens").await, 1);
        assert!(!store.grant(g.id, grant_at(t0)).await.unwrap().unwrap().active, "the replays revoked the grant");
    }

    async fn a_refresh_token_rotates_once_and_reuse_revokes_its_grant(backend: Backend) {
        let (db, store) = setup(backend).await;
        client(&store).await;
        let ada = sign_up(&store, "ada").await;
        let t0 = now();
        let (grant_id, r1) = granted(&store, &ada, t0).await;
        let r2 = hash();
        assert_eq!(
            store.rotate_refresh_token(&r1, &r2, grant_at(t0), None, None).await.unwrap(),
            RotateOutcome::Rotated
        );
        assert_eq!(store.refresh_grant(&r1, grant_at(t0)).await.unwrap().unwrap().1, Some(t0), "r1 is used");
        assert_eq!(store.refresh_grant(&r2, grant_at(t0)).await.unwrap().unwrap().1, None);
        assert_eq!(
            store.rotate_refresh_token(&r1, &hash(), grant_at(t0), None, None).await.unwrap(),
            RotateOutcome::Reused
        );
        assert!(!store.grant(grant_id, grant_at(t0)).await.unwrap().unwrap().active);
        // The family is revoked: r2 rotates no more, and nothing is written.
        assert_eq!(
            store.rotate_refresh_token(&r2, &hash(), grant_at(t0), None, None).await.unwrap(),
            RotateOutcome::Invalid
        );
        assert_eq!(
            store.rotate_refresh_token(&hash(), &hash(), grant_at(t0), None, None).await.unwrap(),
            RotateOutcome::Invalid
        );
        assert_eq!(db.sql().await.count("oauth_refresh_tokens").await, 2);
        assert_eq!(
            store.refresh_grant(&r2, grant_at(t0)).await.unwrap().unwrap().1,
            None,
            "a refused rotation leaves r2 unused"
        );
    }

    /// Within the reuse interval a rotated token rotates again, keeping the time of its first
    /// use (the interval does not slide); past it, a use revokes the grant and every sibling.
    async fn a_rotated_refresh_token_rotates_again_within_the_reuse_interval(backend: Backend) {
        let (db, store) = setup(backend).await;
        client(&store).await;
        let ada = sign_up(&store, "ada").await;
        let t0 = now();
        let (grant_id, r1) = granted(&store, &ada, t0).await;
        let (r2, r3, r4) = (hash(), hash(), hash());
        let reuse = chrono::Duration::seconds(10);
        assert_eq!(
            store.rotate_refresh_token(&r1, &r2, grant_at(t0), Some(t0 - reuse), None).await.unwrap(),
            RotateOutcome::Rotated
        );
        let t1 = t0 + chrono::Duration::seconds(5);
        assert_eq!(
            store.rotate_refresh_token(&r1, &r3, grant_at(t1), Some(t1 - reuse), None).await.unwrap(),
            RotateOutcome::Rotated
        );
        assert_eq!(store.refresh_grant(&r1, grant_at(t1)).await.unwrap().unwrap().1, Some(t0), "the first use is kept");
        // Both successors are live, each rotates on its own.
        assert_eq!(
            store.rotate_refresh_token(&r2, &r4, grant_at(t1), Some(t1 - reuse), None).await.unwrap(),
            RotateOutcome::Rotated
        );
        assert_eq!(store.refresh_grant(&r3, grant_at(t1)).await.unwrap().unwrap().1, None);
        assert_eq!(db.sql().await.count("oauth_refresh_tokens").await, 4);
        // Eleven seconds after its first use, r1 is past the interval: its grant is revoked.
        let t2 = t0 + chrono::Duration::seconds(11);
        assert_eq!(
            store.rotate_refresh_token(&r1, &hash(), grant_at(t2), Some(t2 - reuse), None).await.unwrap(),
            RotateOutcome::Reused
        );
        assert!(!store.grant(grant_id, grant_at(t2)).await.unwrap().unwrap().active);
        assert_eq!(
            store.rotate_refresh_token(&r3, &hash(), grant_at(t2), Some(t2 - reuse), None).await.unwrap(),
            RotateOutcome::Invalid
        );
        assert_eq!(db.sql().await.count("oauth_refresh_tokens").await, 4);
    }

    async fn concurrent_rotations_of_one_refresh_token_have_one_winner(backend: Backend) {
        let (db, store) = setup(backend).await;
        client(&store).await;
        let ada = sign_up(&store, "ada").await;
        let t0 = now();
        let (grant_id, r1) = granted(&store, &ada, t0).await;
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.rotate_refresh_token(&r1, &hash(), grant_at(t0), None, None).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        assert_eq!(outcomes.iter().filter(|o| **o == RotateOutcome::Rotated).count(), 1);
        // One of the others revokes the grant; the rest find it revoked already and write nothing.
        assert_eq!(outcomes.iter().filter(|o| **o == RotateOutcome::Reused).count(), 1);
        assert_eq!(outcomes.iter().filter(|o| **o == RotateOutcome::Invalid).count(), 14);
        assert_eq!(db.sql().await.count("audit_events WHERE action = 'grant.revoked'").await, 1);
        assert_eq!(db.sql().await.count("oauth_refresh_tokens").await, 2);
        assert!(!store.grant(grant_id, grant_at(t0)).await.unwrap().unwrap().active);
    }

    async fn a_grant_counts_while_its_user_session_and_identity_do(backend: Backend) {
        let (_db, store) = setup(backend).await;
        client(&store).await;
        let ada = sign_up(&store, "ada").await;
        let t0 = now();
        let active = |id: Uuid, at: DateTime<Utc>| {
            let store = store.clone();
            async move { store.grant(id, grant_at(at)).await.unwrap().unwrap().active }
        };
        // Bound to a session: ends with it.
        let browser = session(&ada, t0, TimeDelta::hours(1));
        store.start_session(&browser, None, &[]).await.unwrap();
        let with_session = grant(&ada, Some(browser.token_hash), t0);
        store.insert_grant(&with_session, &code(t0)).await.unwrap();
        assert!(active(with_session.id, t0).await);
        assert!(!active(with_session.id, t0 + TimeDelta::hours(2)).await, "the session expired");
        store.delete_session(&browser.token_hash, tessera::store::SessionEnd::SignedOut).await.unwrap();
        assert!(!active(with_session.id, t0).await, "the session ended");
        // Bound to an identity: ends when it is unlinked.
        let second = linked(&store, &ada, "ada-elsewhere").await;
        let with_identity = NewGrant { identity_id: Some(second.id), ..grant(&ada, None, t0) };
        store.insert_grant(&with_identity, &code(t0)).await.unwrap();
        assert!(active(with_identity.id, t0).await);
        store.unlink_identity(ada.id(), second.id, &[], t0, None).await.unwrap();
        assert!(!active(with_identity.id, t0).await, "the identity was unlinked");
        // Ends with its expiry, and when revoked.
        let plain = grant(&ada, None, t0);
        store.insert_grant(&plain, &code(t0)).await.unwrap();
        assert!(!active(plain.id, t0 + TimeDelta::days(31)).await);
        assert!(active(plain.id, t0).await);
        assert!(store.revoke_grant(plain.id, t0).await.unwrap());
        assert!(!store.revoke_grant(plain.id, t0).await.unwrap(), "revoked once");
        assert!(!active(plain.id, t0).await);
        // Disabling the user ends even a grant bound to nothing (offline access), for good.
        let offline = grant(&ada, None, t0);
        store.insert_grant(&offline, &code(t0)).await.unwrap();
        assert!(active(offline.id, t0).await);
        set_user_disabled(&store, ada.id(), true, t0).await.unwrap();
        assert!(!active(offline.id, t0).await);
        set_user_disabled(&store, ada.id(), false, t0).await.unwrap();
        assert!(!active(offline.id, t0).await, "enabling the user again brings no grant back");
    }

    async fn consents_widen_and_concurrent_approvals_lose_none(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let app = client(&store).await;
        let ada = sign_up(&store, "ada").await;
        let t0 = now();
        assert_eq!(store.consent(ada.id(), &app).await.unwrap(), None);
        let scopes = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let widen = |user: UserId, list: &[&str], resource: Option<&'static str>| {
            let (store, app, list) = (store.clone(), app.clone(), scopes(list));
            async move { store.widen_consent(user, &app, &list, resource, t0, None).await.unwrap() }
        };
        let consent = |scopes_: &[&str], resources: &[(&str, &[&str])]| Consent {
            scopes: scopes(scopes_),
            resources: resources.iter().map(|(r, s)| ((*r).to_owned(), scopes(s))).collect(),
        };
        assert_eq!(widen(ada.id(), &["openid"], None).await, Some(consent(&["openid"], &[])));
        let api = "https://api.example.com";
        let widened = widen(ada.id(), &["email", "openid"], Some(api)).await;
        assert_eq!(widened, Some(consent(&["openid"], &[(api, &["email", "openid"])])), "paired with the resource");
        // Another resource joins the first, with its own scopes; one already there is widened.
        let mcp = "https://mcp.example.com";
        widen(ada.id(), &["openid"], Some(mcp)).await;
        let widened = widen(ada.id(), &["openid", "offline_access"], Some(api)).await;
        let expected = consent(&["openid"], &[(api, &["email", "openid", "offline_access"]), (mcp, &["openid"])]);
        assert_eq!(widened, Some(expected.clone()));
        assert_eq!(store.consent(ada.id(), &app).await.unwrap(), widened);
        // Covered: only pairs approved together.
        let covers = |list: &[&str], resource| expected.covers(&scopes(list), resource);
        assert!(covers(&["openid", "offline_access"], Some(api)) && covers(&["openid"], Some(mcp)));
        assert!(!covers(&["openid", "offline_access"], Some(mcp)), "offline access was approved for the API only");
        assert!(!covers(&["email"], None) && covers(&["openid"], None));
        assert!(!covers(&["openid"], Some("https://other.example.com")));
        let bob = sign_up(&store, "bob").await;
        assert_eq!(store.consent(bob.id(), &app).await.unwrap(), None);
        // Approvals at once, each of another scope, first ones included: none is lost.
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (store, app, bob) = (store.clone(), app.clone(), bob.id());
                tokio::spawn(async move {
                    store.widen_consent(bob, &app, &[format!("scope-{i}")], None, t0, None).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let mut consented = store.consent(bob.id(), &app).await.unwrap().unwrap().scopes;
        consented.sort_unstable();
        assert_eq!(consented, (0..8).map(|i| format!("scope-{i}")).collect::<Vec<_>>());
        // A user or client deleted while approving leaves nothing to widen: no error, no row.
        let gone = sign_up(&store, "gone").await;
        assert!(matches!(store.delete_user(gone.id(), t0).await.unwrap(), DeleteUserOutcome::Deleted(_)));
        assert_eq!(widen(gone.id(), &["openid"], None).await, None);
        assert!(store.delete_client(&ClientId::parse(&app).unwrap()).await.unwrap());
        assert_eq!(widen(ada.id(), &["openid"], None).await, None);
        assert_eq!(store.consent(ada.id(), &app).await.unwrap(), None);
        assert_eq!(store.consent(gone.id(), &app).await.unwrap(), None);
    }

    async fn a_grant_needing_consent_is_written_only_while_the_consent_stands(backend: Backend) {
        let (db, store) = setup(backend).await;
        let app = client(&store).await;
        let ada = sign_up(&store, "ada").await;
        let t0 = now();
        let audit = NewAuditEvent::new(ActorKind::User, "app.removed");
        let needing = || NewGrant { consent_required: true, ..grant(&ada, None, t0) };
        assert!(!store.insert_grant(&needing(), &code(t0)).await.unwrap(), "no consent: nothing written");
        assert_eq!(db.sql().await.count("oauth_grants").await, 0);
        store.widen_consent(ada.id(), &app, &["openid".to_owned()], None, t0, None).await.unwrap();
        assert!(store.insert_grant(&needing(), &code(t0)).await.unwrap());
        // Grants written while the app's access is removed: each is refused or revoked, never
        // left standing.
        let writes: Vec<_> = (0..8)
            .map(|_| {
                let (store, grant, code) = (store.clone(), needing(), code(t0));
                tokio::spawn(async move { store.insert_grant(&grant, &code).await.unwrap() })
            })
            .collect();
        assert!(store.remove_app(ada.id(), &app, t0, &audit).await.unwrap());
        for write in writes {
            write.await.unwrap();
        }
        assert!(store.user_apps(ada.id(), grant_at(t0)).await.unwrap().is_empty());
        assert_eq!(db.sql().await.count("oauth_grants WHERE revoked_at IS NULL").await, 0);
        assert!(!store.insert_grant(&needing(), &code(t0)).await.unwrap(), "after the removal: refused");
        // A user deleted while grants needing consent are written: each write either lands (and
        // goes with the user) or is refused; none fails (no deadlock between the two).
        let gone = sign_up(&store, "gone").await;
        store.widen_consent(gone.id(), &app, &["openid".to_owned()], None, t0, None).await.unwrap();
        let writes: Vec<_> = (0..8)
            .map(|_| {
                let (store, grant, code) =
                    (store.clone(), NewGrant { consent_required: true, ..grant(&gone, None, t0) }, code(t0));
                tokio::spawn(async move { store.insert_grant(&grant, &code).await })
            })
            .collect();
        assert!(matches!(store.delete_user(gone.id(), t0).await.unwrap(), DeleteUserOutcome::Deleted(_)));
        for write in writes {
            write.await.unwrap().expect("written or refused, never an error");
        }
        assert_eq!(db.sql().await.count("oauth_grants WHERE revoked_at IS NULL").await, 0);
        // A grant without the consent rule, of a user deleted before: refused, not an error.
        assert!(!store.insert_grant(&grant(&gone, None, t0), &code(t0)).await.unwrap());
        assert!(!store.remove_app(ada.id(), &app, t0, &audit).await.unwrap(), "nothing left to remove");
    }

    async fn a_held_request_is_taken_once_and_not_after_it_expires(backend: Backend) {
        let (_db, store) = setup(backend).await;
        client(&store).await;
        let t0 = now();
        let held = HeldRequest {
            id_hash: hash(),
            client_id: "app".into(),
            params: r#"{"scope":"openid"}"#.into(),
            session_hash: Some(hash()),
            expires_at: t0 + TimeDelta::minutes(10),
        };
        store.insert_request(&held).await.unwrap();
        let (id, own, other) = (held.id_hash, held.session_hash.unwrap(), hash());
        // Anyone but its own session leaves it held: another session, a client's request URI.
        assert_eq!(store.take_request(&id, HeldFor::Session(&other), t0).await.unwrap(), None);
        let as_uri = store.take_request(&id, HeldFor::Client("app"), t0).await.unwrap();
        assert_eq!(as_uri, None, "a consent request is no request URI");
        assert_eq!(store.take_request(&id, HeldFor::Session(&own), t0).await.unwrap(), Some(held.clone()));
        assert_eq!(store.take_request(&id, HeldFor::Session(&own), t0).await.unwrap(), None, "taken once");
        let expiring = HeldRequest { id_hash: hash(), session_hash: None, ..held };
        store.insert_request(&expiring).await.unwrap();
        let by_app = HeldFor::Client("app");
        assert_eq!(store.take_request(&expiring.id_hash, HeldFor::Client("other"), t0).await.unwrap(), None);
        assert!(store.held_request(&expiring.id_hash, t0).await.unwrap().is_some(), "another client's take leaves it");
        assert_eq!(store.take_request(&expiring.id_hash, by_app, t0 + TimeDelta::minutes(11)).await.unwrap(), None);
        assert_eq!(
            store.take_request(&expiring.id_hash, by_app, t0).await.unwrap(),
            None,
            "an expired request is gone"
        );
    }

    /// A code redeemed at its last moment, its redemption still committing when the sweep
    /// comes: the sweep leaves the grant (and the code), rather than delete the grant under the
    /// tokens just issued from it, or deadlock with the redemption (PostgreSQL re-checks only
    /// the row a DELETE targets).
    async fn a_code_redeemed_as_it_expires_keeps_its_grant_from_the_sweep(backend: Backend) {
        let Issued { db, store, t0, grant: g, .. } = issued(backend).await;
        let sql = db.sql().await;
        let grant = sql.uuid(&g.id.to_string());
        let redeem = format!("UPDATE oauth_codes SET used_at = expires_at WHERE grant_id = {grant}");
        let redeeming = sql.hold(&format!("BEGIN IMMEDIATE; {redeem}"), &format!("BEGIN; {redeem}")).await;
        let sweeping = {
            let store = store.clone();
            tokio::spawn(async move { store.delete_expired_grants(t0 + TimeDelta::seconds(61)).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        redeeming.end("COMMIT").await;
        sweeping.await.unwrap().unwrap();
        assert_eq!((sql.count("oauth_grants").await, sql.count("oauth_codes").await), (1, 1));
    }

    async fn expired_grants_codes_and_requests_are_deleted(backend: Backend) {
        let (db, store) = setup(backend).await;
        client(&store).await;
        let ada = sign_up(&store, "ada").await;
        let t0 = now();
        let (_, _) = granted(&store, &ada, t0).await;
        let unused = grant(&ada, None, t0);
        store.insert_grant(&unused, &code(t0)).await.unwrap();
        let held = HeldRequest {
            id_hash: hash(),
            client_id: "app".into(),
            params: "{}".into(),
            session_hash: None,
            expires_at: t0 + TimeDelta::minutes(10),
        };
        store.insert_request(&held).await.unwrap();
        // An hour on: the request is gone, and the unused code with its grant (which issued
        // nothing); the other grant and its used code stay.
        assert_eq!(store.delete_expired_grants(t0 + TimeDelta::hours(1)).await.unwrap(), 2);
        let sql = db.sql().await;
        assert_eq!((sql.count("oauth_grants").await, sql.count("oauth_codes").await), (1, 1));
        let left = sql.uuids("SELECT id FROM oauth_grants").await;
        assert_ne!(left, [unused.id], "the grant that issued nothing went");
        // Past the grants' end: everything goes, the grants' refresh tokens and codes first (in
        // batches of their own, not in one cascade), each row counted.
        let mut rows = 0;
        for table in ["oauth_grants", "oauth_codes", "oauth_refresh_tokens"] {
            rows += sql.count(table).await;
        }
        assert!(sql.count("oauth_refresh_tokens").await > 0);
        assert_eq!(store.delete_expired_grants(t0 + TimeDelta::days(31)).await.unwrap(), rows as u64);
        for table in ["oauth_grants", "oauth_codes", "oauth_refresh_tokens", "oauth_requests"] {
            assert_eq!(sql.count(table).await, 0, "{table}");
        }
    }
}

/// A link decided on a verified address (automatic linking) is made only while its user still
/// holds the address, verified, and is enabled: an admin may change either between the decision
/// and the write.
async fn a_link_by_email_is_made_only_while_its_user_holds_the_address(backend: Backend) {
    let (db, store) = setup(backend).await;
    let sql = db.sql().await;
    let ada = sign_up(&store, "ada").await;
    let by = |subject: &str, email: &str| NewLink {
        by_email: Some(Email::parse(email).unwrap()),
        ..new_link(subject, now())
    };
    let link = async |link: NewLink| store.link_identity(ada.id(), &link).await.unwrap();
    assert!(matches!(link(by("x0", "Store@example.com")).await, LinkOutcome::Linked(_)), "her verified address");
    assert_eq!(link(by("x1", "other@example.com")).await, LinkOutcome::HolderChanged, "not her address");
    set_user_disabled(&store, ada.id(), true, now()).await.unwrap();
    assert_eq!(link(by("x2", "store@example.com")).await, LinkOutcome::HolderChanged, "disabled");
    set_user_disabled(&store, ada.id(), false, now()).await.unwrap();
    let moved = UserChange { email: Some(Some(Email::parse("new@example.com").unwrap())), ..UserChange::default() };
    store.update_user(ada.id(), &moved, now()).await.unwrap();
    assert_eq!(link(by("x3", "store@example.com")).await, LinkOutcome::HolderChanged, "the address changed");
    assert_eq!(link(by("x4", "new@example.com")).await, LinkOutcome::HolderChanged, "the new one is not verified");
    // Verified again, but another account was given the address too.
    let verified = UserChange { email_verified: Some(true), ..UserChange::default() };
    store.update_user(ada.id(), &verified, now()).await.unwrap();
    let bob = sign_up(&store, "bob").await;
    let shared = UserChange {
        email: Some(Some(Email::parse("new@example.com").unwrap())),
        email_verified: Some(true),
        ..UserChange::default()
    };
    store.update_user(bob.id(), &shared, now()).await.unwrap();
    assert_eq!(link(by("x6", "new@example.com")).await, LinkOutcome::HolderChanged, "another holds it too");
    assert_eq!(sql.count("identities").await, 3, "only the first link was written (and bob's own)");
    // A link the user made themselves is not tied to an address.
    assert!(matches!(link(new_link("x5", now())).await, LinkOutcome::Linked(_)));
}

// ---- Outbox events ----------------------------------------------------------------------------

async fn each_change_writes_one_outbox_event_in_its_transaction(backend: Backend) {
    let (db, store) = setup(backend).await;
    let sql = db.sql().await;
    let topics = async || sql.texts("SELECT topic FROM outbox_events ORDER BY seq").await;
    let ada = sign_up(&store, "ada").await;
    let bob = sign_up(&store, "bob").await;
    assert_eq!(topics().await, ["user.created", "user.created"]);
    let payload = sql.texts("SELECT CAST(payload AS TEXT) FROM outbox_events ORDER BY seq LIMIT 1").await;
    let payload: serde_json::Value = serde_json::from_str(&payload[0]).unwrap();
    assert_eq!(payload["user"]["id"], ada.id().as_uuid().to_string());
    assert_eq!(payload["team"]["slug"], ada.team.slug.as_str());
    assert_eq!(payload["identity"]["subject"], "ada");

    let t = now();
    assert!(set_user_disabled(&store, bob.id(), true, t).await.unwrap().unwrap().changed);
    assert!(!set_user_disabled(&store, bob.id(), true, t).await.unwrap().unwrap().changed, "already disabled");
    assert!(set_user_disabled(&store, bob.id(), false, t).await.unwrap().unwrap().changed);
    assert!(!set_user_disabled(&store, bob.id(), false, t).await.unwrap().unwrap().changed, "already enabled");
    assert!(set_user_disabled(&store, UserId::generate(), true, t).await.unwrap().is_none());
    let link = NewLink {
        identity_id: IdentityId::generate(),
        issuer: Issuer::parse(ISSUER).unwrap(),
        subject: Subject::parse("ada-2").unwrap(),
        provider: "test".into(),
        email: None,
        email_verified: false,
        now: t,
        audit: None,
        by_email: None,
    };
    assert!(matches!(store.link_identity(ada.id(), &link).await.unwrap(), LinkOutcome::Linked(_)));
    assert!(matches!(store.link_identity(ada.id(), &link).await.unwrap(), LinkOutcome::AlreadyLinked(_)));
    assert!(matches!(store.link_identity(bob.id(), &link).await.unwrap(), LinkOutcome::LinkedToAnotherUser));
    assert!(matches!(
        store.unlink_identity(ada.id(), link.identity_id, &[], t, None).await.unwrap(),
        UnlinkOutcome::Unlinked(_)
    ));
    assert_eq!(
        store.write_member(ada.team.id, None, bob.id(), Role::Member, t, MemberWrite::Put).await.unwrap(),
        MemberOutcome::Added
    );
    assert_eq!(
        store.write_member(ada.team.id, None, bob.id(), Role::Member, t, MemberWrite::Put).await.unwrap(),
        MemberOutcome::Unchanged
    );
    assert_eq!(
        store.write_member(ada.team.id, None, bob.id(), Role::Admin, t, MemberWrite::Put).await.unwrap(),
        MemberOutcome::Updated
    );
    assert_eq!(store.remove_member(ada.team.id, None, bob.id()).await.unwrap(), RemoveOutcome::Removed);
    assert_eq!(store.remove_member(ada.team.id, None, bob.id()).await.unwrap(), RemoveOutcome::NotMember);
    assert_eq!(
        topics().await,
        [
            "user.created",
            "user.created",
            "user.disabled",
            "user.enabled",
            "identity.linked",
            "identity.unlinked",
            "team.member.added",
            "team.member.role_changed",
            "team.member.removed",
        ],
        "one event per change, none for a call that changed nothing"
    );
}

// ---- Webhooks -----------------------------------------------------------------------------------

fn endpoint(types: &[&str], created_at: DateTime<Utc>) -> WebhookEndpoint {
    WebhookEndpoint {
        id: WebhookId::generate(),
        url: "https://hooks.example.com/t".into(),
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        enabled: true,
        secret: vec![1, 2, 3],
        previous_secret: None,
        previous_secret_until: None,
        config_name: None,
        created_at,
        updated_at: created_at,
    }
}

/// Instances started together with one file each insert its endpoint: one row, one winner, the
/// others told so (what their start-up does next is `Webhooks::sync_config`'s, not tested here).
async fn instances_starting_together_insert_a_config_endpoint_once(backend: Backend) {
    let (db, _store) = setup(backend).await;
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(db.store().await);
    }
    let stores = Arc::new(stores);
    let named = WebhookEndpoint { config_name: Some("billing".into()), ..endpoint(&["user.created"], now()) };
    let inserted = crate::helpers::concurrently(8, |i| {
        let (stores, named) = (stores.clone(), named.clone());
        async move {
            let mine = WebhookEndpoint { id: WebhookId::generate(), ..named };
            matches!(stores[i].insert_webhook(&mine).await.unwrap(), WebhookInsert::Registered(_))
        }
    })
    .await;
    assert_eq!(inserted.iter().filter(|won| **won).count(), 1, "{inserted:?}");
    assert_eq!(db.sql().await.count("webhook_endpoints WHERE config_name = 'billing'").await, 1);
}

async fn webhook_endpoints_are_stored_updated_and_deleted(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let mut hook = endpoint(&["user.created", "user.disabled"], now());
    assert!(matches!(store.insert_webhook(&hook).await.unwrap(), WebhookInsert::Registered(_)));
    assert_eq!(store.webhook(hook.id).await.unwrap(), Some(hook.clone()));
    assert_eq!(store.list_webhooks().await.unwrap(), [hook.clone()]);
    // A configuration endpoint another instance inserted under the same name first: not inserted,
    // and said so (that instance's settings are then brought to this one's file).
    let named = WebhookEndpoint { id: WebhookId::generate(), config_name: Some("billing".into()), ..hook.clone() };
    assert!(matches!(store.insert_webhook(&named).await.unwrap(), WebhookInsert::Registered(_)));
    let again = WebhookEndpoint { id: WebhookId::generate(), ..named.clone() };
    assert_eq!(store.insert_webhook(&again).await.unwrap(), WebhookInsert::NameTaken);
    assert!(store.webhook(again.id).await.unwrap().is_none());
    assert!(store.delete_webhook(named.id).await.unwrap());
    hook.url = "https://other.example.com/".into();
    hook.event_types = vec![];
    hook.enabled = false;
    hook.updated_at = now();
    assert!(store.update_webhook(&hook).await.unwrap());
    assert_eq!(store.webhook(hook.id).await.unwrap(), Some(hook.clone()));
    assert!(!store.update_webhook(&endpoint(&[], now())).await.unwrap(), "no such endpoint");
    // A patch changes what it names, and only that.
    let later = now() + TimeDelta::seconds(1);
    let enabled = WebhookChange { enabled: Some(true), ..Default::default() };
    let patched = store.patch_webhook(hook.id, &enabled, later).await.unwrap().unwrap();
    assert_eq!(patched, WebhookEndpoint { enabled: true, updated_at: later, ..hook.clone() });
    let types = WebhookChange { event_types: Some(vec!["user.created".into()]), ..Default::default() };
    let patched = store.patch_webhook(hook.id, &types, later).await.unwrap().unwrap();
    assert_eq!((patched.url.as_str(), patched.enabled), ("https://other.example.com/", true));
    assert_eq!(patched.event_types, ["user.created"]);
    assert_eq!(store.webhook(hook.id).await.unwrap(), Some(patched));
    assert_eq!(store.patch_webhook(WebhookId::generate(), &enabled, later).await.unwrap(), None);
    assert!(store.delete_webhook(hook.id).await.unwrap());
    assert!(!store.delete_webhook(hook.id).await.unwrap());
    assert_eq!(store.webhook(hook.id).await.unwrap(), None);
}

/// An endpoint deleted while a fan-out that read it is still writing its deliveries: the
/// deletion waits for the fan-out and takes its deliveries with it, rather than the fan-out's
/// round failing on a foreign key to an endpoint gone (and being done again at the next poll).
async fn an_endpoint_deleted_during_a_fan_out_waits_for_it(backend: Backend) {
    let (db, store) = setup(backend).await;
    let hook = endpoint(&[], now() - TimeDelta::seconds(1));
    store.insert_webhook(&hook).await.unwrap();
    sign_up(&store, "ada").await;
    let sql = db.sql().await;
    // The fan-out's deliveries are slow to write (after it read the endpoints): a second for its
    // statement of 100 rows (the one delivery and its padding).
    sql.inject("INSERT", "webhook_deliveries", None, "SELECT 1;", "PERFORM pg_sleep(0.01); RETURN NEW;").await;
    let fan_out = tokio::spawn({
        let store = store.clone();
        async move { store.fan_out_events(100, None, now()).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(store.delete_webhook(hook.id).await.unwrap());
    let fanned = fan_out.await.unwrap().expect("the fan-out's round commits");
    assert_eq!(fanned.events, 1);
    sql.remove_injected("webhook_deliveries").await;
    assert_eq!(sql.count("webhook_deliveries").await, 0, "none left for an endpoint gone");
    assert_eq!(sql.count("webhook_endpoints").await, 0);
}

/// A delivery queued before a replay began whose first attempt came while it ran, and failed it
/// for good (a receiver still warming up): the replay's later page sends it again, as it does
/// every failure since `since` — only a delivery not failed whose series began after the
/// replay (the fan-out's, another replay's) is left as it is.
async fn a_replay_sends_again_what_failed_for_good_while_it_ran(backend: Backend) {
    let (db, store) = setup(backend).await;
    let start = now() - TimeDelta::seconds(1);
    let hook = endpoint(&[], start);
    store.insert_webhook(&hook).await.unwrap();
    sign_up(&store, "ada").await;
    sign_up(&store, "bob").await;
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 2);
    let first = store.replay_webhook(&hook, start, None, 1, now()).await.unwrap();
    assert_eq!(first.scheduled, 1);
    let later = match backend {
        Backend::Sqlite => "(CAST(strftime('%s','now') AS INTEGER) + 60) * 1000000",
        Backend::Postgres => "now() + interval '60 seconds'",
    };
    let failed = format!(
        "UPDATE webhook_deliveries SET state = 'failed', attempts = 1, scheduled_at = {later}
         WHERE event_seq = (SELECT max(event_seq) FROM webhook_deliveries)"
    );
    assert_eq!(db.sql().await.exec(&failed).await.unwrap(), 1);
    let second = store.replay_webhook(&hook, start, first.next, 1, now()).await.unwrap();
    assert_eq!(second.scheduled, 1, "{second:?}");
    assert_eq!(store.pending_deliveries(hook.id, 100).await.unwrap().len(), 2);
}

async fn events_fan_out_once_in_order_to_the_endpoints_that_want_them(backend: Backend) {
    let (db, store) = setup(backend).await;
    let before = now() - TimeDelta::seconds(1);
    let (all, disabled_only, off) =
        (endpoint(&[], before), endpoint(&["user.disabled"], before), endpoint(&[], before));
    for hook in [&all, &disabled_only] {
        store.insert_webhook(hook).await.unwrap();
    }
    store.insert_webhook(&WebhookEndpoint { enabled: false, ..off.clone() }).await.unwrap();
    let ada = sign_up(&store, "ada").await;
    set_user_disabled(&store, ada.id(), true, now()).await.unwrap();
    // Registered after these events: it gets none of them.
    let late = endpoint(&[], now() + TimeDelta::seconds(1));
    store.insert_webhook(&late).await.unwrap();

    assert_eq!(store.fan_out_events(1, None, now()).await.unwrap().events, 1, "at most the limit");
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 1);
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 0, "each event once");
    // Registered as of a time before events fanned out already (a registration that waited for
    // a running fan-out): it counts as registered after them, as stored and as returned.
    let waited = endpoint(&[], before);
    let WebhookInsert::Registered(registered) = store.insert_webhook(&waited).await.unwrap() else { panic!() };
    let newest = db.sql().await.count("outbox_events").await;
    assert!(newest == 2 && registered > before, "{registered} after {before}");
    assert_eq!(store.webhook(waited.id).await.unwrap().unwrap().created_at, registered);
    // Unless those events come from a clock far ahead (more than a minute): an outlier, which
    // the endpoint's registration does not follow.
    let a_day_ahead = match db.sql().await {
        Sql::Sqlite(_) => "created_at + 86400000000",
        Sql::Postgres(_) => "created_at + interval '1 day'",
    };
    let sql = db.sql().await;
    sql.exec(&format!("UPDATE outbox_events SET created_at = {a_day_ahead}")).await.unwrap();
    let skewed = endpoint(&[], now());
    let WebhookInsert::Registered(registered) = store.insert_webhook(&skewed).await.unwrap() else { panic!() };
    assert_eq!(registered, skewed.created_at);
    sql.exec(&format!("UPDATE outbox_events SET created_at = created_at - ({a_day_ahead} - created_at)"))
        .await
        .unwrap();
    let topics = async |hook: &WebhookEndpoint| {
        let jobs = store.pending_deliveries(hook.id, 100).await.unwrap();
        assert!(jobs.windows(2).all(|w| w[0].event_seq < w[1].event_seq), "in sequence order");
        jobs.into_iter().map(|j| j.topic).collect::<Vec<_>>()
    };
    assert_eq!(topics(&all).await, ["user.created", "user.disabled"]);
    assert_eq!(topics(&disabled_only).await, ["user.disabled"]);
    assert!(topics(&off).await.is_empty(), "a disabled endpoint gets nothing");
    assert!(topics(&late).await.is_empty());
    let first = &store.pending_deliveries(all.id, 1).await.unwrap()[0];
    assert_eq!(first.payload["user"]["id"], ada.id().as_uuid().to_string());
    assert_eq!(first.attempts, 0);
}

/// A backlog larger than one statement's rows (deliveries and events are written a hundred a
/// statement): every event reaches every endpoint that wants it once, and every event taken is
/// marked processed — none left over, none fanned out twice.
async fn a_backlog_fans_out_whole_in_one_round(backend: Backend) {
    let (db, store) = setup(backend).await;
    let before = now() - TimeDelta::seconds(1);
    let (all, created, also_all) = (endpoint(&[], before), endpoint(&["user.created"], before), endpoint(&[], before));
    for hook in [&all, &created, &also_all] {
        store.insert_webhook(hook).await.unwrap();
    }
    for n in 0..130 {
        sign_up(&store, &format!("user-{n}")).await;
    }
    let sql = db.sql().await;
    let events = sql.count("outbox_events").await;
    let users_created = sql.count("outbox_events WHERE topic = 'user.created'").await;
    assert!(events > 100 && users_created == 130, "{events} events");
    assert_eq!(store.fan_out_events(500, None, now()).await.unwrap().events, events as u64);
    assert_eq!(sql.count("outbox_events WHERE processed_at IS NULL").await, 0);
    for (hook, wanted) in [(&all, events), (&created, users_created), (&also_all, events)] {
        let jobs = store.pending_deliveries(hook.id, 500).await.unwrap();
        assert_eq!(jobs.len() as i64, wanted);
        assert!(jobs.windows(2).all(|w| w[0].event_seq < w[1].event_seq), "each once, in sequence order");
    }
    assert_eq!(sql.count("webhook_deliveries").await, 2 * events + users_created);
    assert_eq!(store.fan_out_events(500, None, now()).await.unwrap().events, 0);
}

/// Events written while an endpoint was enabled are its, however far behind the fan-out is when
/// the endpoint is disabled: their deliveries wait until it is enabled again. Events written
/// after it was disabled are not.
async fn an_endpoint_disabled_before_the_fan_out_still_gets_the_events_written_before(backend: Backend) {
    let (db, store) = setup(backend).await;
    let registered = now() - TimeDelta::seconds(1);
    let (patched, configured) = (endpoint(&[], registered), endpoint(&[], registered));
    for hook in [&patched, &configured] {
        store.insert_webhook(hook).await.unwrap();
    }
    let ada = sign_up(&store, "ada").await;
    // Both disabled before the fan-out ran: one through the API, one by the configuration file.
    let disabled = now() + TimeDelta::seconds(1);
    let off = WebhookChange { enabled: Some(false), ..Default::default() };
    store.patch_webhook(patched.id, &off, disabled).await.unwrap().unwrap();
    store
        .update_webhook(&WebhookEndpoint { enabled: false, updated_at: disabled, ..configured.clone() })
        .await
        .unwrap();
    // Written after: for no one.
    set_user_disabled(&store, ada.id(), true, disabled + TimeDelta::seconds(1)).await.unwrap();
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 2);
    for hook in [&patched, &configured] {
        let jobs = store.pending_deliveries(hook.id, 100).await.unwrap();
        let topics: Vec<_> = jobs.iter().map(|job| job.topic.as_str()).collect();
        assert_eq!(topics, ["user.created"], "what was written before the endpoint was disabled");
    }
    // Disabled, the deliveries wait; a repeated disable does not move the time.
    let owner = uuid::Uuid::new_v4();
    let lease = now() + TimeDelta::minutes(1);
    assert!(store.claim_webhooks(owner, now(), lease, 10).await.unwrap().is_empty(), "nothing is sent while disabled");
    store.patch_webhook(patched.id, &off, disabled + TimeDelta::seconds(2)).await.unwrap().unwrap();
    set_user_disabled(&store, ada.id(), false, disabled + TimeDelta::seconds(1)).await.unwrap();
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 1);
    assert_eq!(
        store.pending_deliveries(patched.id, 100).await.unwrap().len(),
        1,
        "nothing written since the first disable"
    );
    // Enabled again: they go, and the endpoint gets new events as before.
    let on = WebhookChange { enabled: Some(true), ..Default::default() };
    store.patch_webhook(patched.id, &on, now()).await.unwrap().unwrap();
    let claimed = store.claim_webhooks(owner, now(), lease, 10).await.unwrap();
    assert_eq!(claimed.iter().map(|hook| hook.id).collect::<Vec<_>>(), [patched.id]);
    // Enabled by a binary from before `disabled_at` (during a roll-out), which leaves it set: the
    // endpoint gets what is written from then on all the same.
    let sql = db.sql().await;
    let configured_id = sql.uuid(&configured.id.to_string());
    sql.exec(&format!("UPDATE webhook_endpoints SET enabled = TRUE WHERE id = {configured_id}")).await.unwrap();
    assert_eq!(
        sql.count(&format!("webhook_endpoints WHERE id = {configured_id} AND disabled_at IS NOT NULL")).await,
        1
    );
    set_user_disabled(&store, ada.id(), true, disabled + TimeDelta::seconds(3)).await.unwrap();
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 1);
    assert_eq!(store.pending_deliveries(patched.id, 100).await.unwrap().len(), 2);
    assert_eq!(store.pending_deliveries(configured.id, 100).await.unwrap().len(), 2);
}

/// On PostgreSQL, a member's profile of a connector (the credentials endpoint, at every tool
/// call of an agent) is found by team, connector and maker, also in the generic plan a
/// connection switches to after five executions of a statement: never by reading every member's
/// profile of the connector in a large team.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_profile_of_a_connector_is_found_by_its_maker_on_postgres() {
    let (db, store) = setup(Backend::Postgres).await;
    let ada = sign_up(&store, "ada").await;
    let Sql::Postgres(pool) = db.sql().await else { unreachable!("a PostgreSQL test") };
    // 3,000 members of Ada's team, each with a profile of the `github` connector.
    let team = ada.team.id.as_uuid();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (id, created_at, updated_at)
           SELECT gen_random_uuid(), now(), now() FROM generate_series(1, 3000);
         INSERT INTO auth_profiles (id, team_id, slug, connector_key, profile_kind, provider, status, created_by,
                                    display_name, scopes, created_at, updated_at)
           SELECT gen_random_uuid(), '{team}', 'p-' || u.id, 'github', 'oauth_account', 'github', 'active', u.id,
                  'GitHub', '', now(), now()
           FROM users u WHERE u.id <> '{ada}';
         ANALYZE auth_profiles;",
        ada = ada.id().as_uuid()
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await.unwrap();
    // The statement of the credentials endpoint's lookup (`active_personal_profile`).
    sqlx::raw_sql(
        "PREPARE credentials (uuid, text, uuid) AS
           SELECT id FROM auth_profiles p WHERE p.team_id = $1 AND p.connector_key = $2 AND p.created_by = $3
             AND p.profile_kind = 'oauth_account' AND p.status = 'active' ORDER BY p.created_at, p.id LIMIT 1",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let explain = format!("EXPLAIN (FORMAT JSON) EXECUTE credentials('{team}', 'github', '{}')", ada.id().as_uuid());
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain)).fetch_one(&mut *conn).await.unwrap();
    let plan = plan.to_string();
    assert!(plan.contains("\"Index Name\":\"auth_profiles_team_connector_creator_idx\""), "{plan}");
    assert!(plan.contains("created_by = $3)") && !plan.contains("Seq Scan"), "{plan}");
}

/// The store's `Debug` output (which everything holding it derives) never shows the database
/// password: sqlx's connect options print it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_debug_output_never_shows_the_database_password_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let password = url::Url::parse(&db.url).unwrap().password().expect("the test cluster's password").to_owned();
    let store = db.store().await;
    let debug = format!("{store:?}");
    assert!(debug.contains("PgConnector"), "{debug}");
    assert!(!debug.contains(&password), "{debug}");
}

/// A fan-out that finds another instance's under way says so (`busy`), rather than answer as
/// if no event waited behind a gap: the worker then keeps its wait for the gap as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_under_way_elsewhere_is_reported_busy_on_postgres() {
    let (db, store) = setup(Backend::Postgres).await;
    store.insert_webhook(&endpoint(&[], now() - TimeDelta::seconds(1))).await.unwrap();
    sign_up(&store, "ada").await;
    let Sql::Postgres(pool) = db.sql().await else { unreachable!("a PostgreSQL test") };
    let mut elsewhere = pool.begin().await.unwrap();
    // The fan-out's advisory lock (FAN_OUT_LOCK in the store), as another instance holds it.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(0x7465_7373_6f75_7401_i64)
        .execute(&mut *elsewhere)
        .await
        .unwrap();
    let busy = store.fan_out_events(100, None, now()).await.unwrap();
    assert_eq!((busy.events, busy.busy), (0, true));
    elsewhere.rollback().await.unwrap();
    let done = store.fan_out_events(100, None, now()).await.unwrap();
    assert_eq!((done.events, done.busy), (1, false));
}

/// While a fan-out's transaction is open, its new deliveries' foreign keys hold a key-share lock
/// on each endpoint they went to: another instance's claim must still take those endpoints (a
/// claim that locked them `FOR UPDATE` would skip exactly the endpoints just given work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_under_a_running_fan_out_is_still_claimed_on_postgres() {
    let (db, store) = setup(Backend::Postgres).await;
    let hook = endpoint(&[], now() - TimeDelta::seconds(1));
    store.insert_webhook(&hook).await.unwrap();
    sign_up(&store, "ada").await;
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 1);
    let Sql::Postgres(pool) = db.sql().await else { unreachable!("a PostgreSQL test") };
    let mut fan_out = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM webhook_endpoints WHERE id = $1 FOR KEY SHARE")
        .bind(hook.id.as_uuid())
        .execute(&mut *fan_out)
        .await
        .unwrap();
    let claimed = store.claim_webhooks(uuid::Uuid::new_v4(), now(), now() + TimeDelta::minutes(1), 10).await.unwrap();
    assert_eq!(claimed.iter().map(|claimed| claimed.id).collect::<Vec<_>>(), [hook.id]);
    fan_out.rollback().await.unwrap();
}

async fn events_after_a_gap_wait_for_the_transaction_that_may_fill_it(backend: Backend) {
    let (db, store) = setup(backend).await;
    let hook = endpoint(&[], now() - TimeDelta::seconds(1));
    store.insert_webhook(&hook).await.unwrap();
    sign_up(&store, "ada").await;
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 1);
    let sql = db.sql().await;
    let topics =
        async || store.pending_deliveries(hook.id, 100).await.unwrap().into_iter().map(|j| j.topic).collect::<Vec<_>>();

    // A number that went missing (as a rolled-back transaction leaves one), a new event after it:
    // held while young, then fanned out.
    sign_up(&store, "bob").await;
    sign_up(&store, "cat").await;
    let lowest = "SELECT min(seq) FROM outbox_events WHERE processed_at IS NULL";
    sql.exec(&format!("DELETE FROM outbox_events WHERE seq = ({lowest})")).await.unwrap();
    let held = store.fan_out_events(100, None, now()).await.unwrap();
    let missing: i64 = sql.texts(&format!("SELECT CAST(({lowest}) - 1 AS TEXT)")).await[0].parse().unwrap();
    let waiting = Waiting { missing, up_to: missing + 1 };
    assert_eq!(held, FanOut { events: 0, waiting: Some(waiting), busy: false }, "the event after the gap waits");
    // Until the caller has waited long enough since it saw that event wait (the worker counts
    // from then): not forever.
    assert_eq!(store.fan_out_events(100, Some(missing), now()).await.unwrap().events, 0, "not seen waiting");
    // However old the waiting event looks: its time is its writer's, taken before it waited.
    let later = now() + TimeDelta::hours(1);
    assert_eq!(store.fan_out_events(100, None, later).await.unwrap().events, 0, "not by the events' times");
    assert_eq!(store.fan_out_events(100, Some(waiting.up_to), now()).await.unwrap().events, 1, "not forever");

    // On PostgreSQL, a transaction still running holds a lower number than an event already
    // committed: that event waits for it, and the endpoint gets both in sequence order.
    if let crate::helpers::Sql::Postgres(pool) = &sql {
        let mut running = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO outbox_events (id, topic, payload, created_at) VALUES ($1, 'test.first', '{}', $2)")
            .bind(Uuid::new_v4())
            .bind(now())
            .execute(&mut *running)
            .await
            .unwrap();
        sign_up(&store, "dan").await;
        assert_eq!(
            store.fan_out_events(100, None, now()).await.unwrap().events,
            0,
            "dan's event waits for the running one"
        );
        running.commit().await.unwrap();
        assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 2);
        assert_eq!(topics().await[2..], ["test.first", "user.created"], "in sequence order");

        // One that commits after more than 10 s, below the last number fanned out: it goes out
        // at once, and holds up no event after it.
        let mut slow = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO outbox_events (id, topic, payload, created_at) VALUES ($1, 'test.late', '{}', $2)")
            .bind(Uuid::new_v4())
            .bind(now())
            .execute(&mut *slow)
            .await
            .unwrap();
        sign_up(&store, "eve").await;
        let held = store.fan_out_events(100, None, now()).await.unwrap();
        assert_eq!(held.events, 0, "eve's waits for the slow one");
        let eves = store.fan_out_events(100, held.waiting.map(|w| w.up_to), now()).await.unwrap();
        assert_eq!(eves.events, 1, "eve's, after the wait");
        slow.commit().await.unwrap();
        sign_up(&store, "fay").await;
        assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 2, "the late one and fay's, at once");
        assert_eq!(topics().await[4..], ["test.late", "user.created", "user.created"], "by number");
    }
    assert_eq!(topics().await[..2], ["user.created"; 2], "ada and cat (bob's event went missing)");

    // Two numbers missing at once (a burst of rollbacks): one wait passes both, not one wait each.
    let before = topics().await.len();
    for name in ["gil", "hal", "ivy", "jon"] {
        sign_up(&store, name).await;
    }
    let pending =
        sql.texts("SELECT CAST(seq AS TEXT) AS n FROM outbox_events WHERE processed_at IS NULL ORDER BY seq").await;
    sql.exec(&format!("DELETE FROM outbox_events WHERE seq IN ({}, {})", pending[0], pending[2])).await.unwrap();
    let held = store.fan_out_events(100, None, now()).await.unwrap();
    let waiting = held.waiting.expect("hal's and jon's events wait");
    assert_eq!(
        (held.events, waiting.missing, waiting.up_to.to_string()),
        (0, pending[0].parse().unwrap(), pending[3].clone())
    );
    assert_eq!(store.fan_out_events(100, Some(waiting.up_to), now()).await.unwrap().events, 2, "both at once");
    assert_eq!(topics().await.len(), before + 2);
}

async fn an_endpoint_is_leased_to_one_owner_at_a_time(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let hook = endpoint(&[], now() - TimeDelta::seconds(1));
    store.insert_webhook(&hook).await.unwrap();
    let (t, until) = (now(), now() + TimeDelta::seconds(30));
    assert!(store.claim_webhooks(Uuid::new_v4(), t, until, 10).await.unwrap().is_empty(), "nothing to deliver");
    sign_up(&store, "ada").await;
    store.fan_out_events(100, None, now()).await.unwrap();

    let t = now();
    let claims = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.claim_webhooks(Uuid::new_v4(), t, until, 10).await.unwrap().len() })
    });
    let mut won = 0;
    for claim in claims {
        won += claim.await.unwrap();
    }
    assert_eq!(won, 1, "of concurrent claims one gets the endpoint");
    let owner = Uuid::new_v4();
    assert!(store.claim_webhooks(owner, t, until, 10).await.unwrap().is_empty(), "while leased");
    let later = until + TimeDelta::seconds(1);
    let taken = store.claim_webhooks(owner, later, later + TimeDelta::seconds(30), 10).await.unwrap();
    assert_eq!(taken.len(), 1, "a lease that ran out is taken over");
    store.release_webhook(hook.id, Uuid::new_v4()).await.unwrap();
    assert!(store.claim_webhooks(Uuid::new_v4(), later, later, 10).await.unwrap().is_empty(), "not its lease");
    store.release_webhook(hook.id, owner).await.unwrap();
    let again = Uuid::new_v4();
    assert_eq!(
        store.claim_webhooks(again, later, later + TimeDelta::seconds(30), 10).await.unwrap().len(),
        1,
        "released"
    );
    // Every lease of an owner given back at once (its delivery loop started again): not another's.
    assert_eq!(store.release_webhooks_of(owner).await.unwrap(), 0, "not its lease");
    assert!(store.claim_webhooks(owner, later, later, 10).await.unwrap().is_empty(), "still leased");
    assert_eq!(store.release_webhooks_of(again).await.unwrap(), 1);
    assert_eq!(store.claim_webhooks(owner, later, later, 10).await.unwrap().len(), 1, "given back");
}

/// SQLite only (a PostgreSQL row has no value its types refuse to decode): an endpoint whose row
/// cannot be decoded (a time out of range, written by hand) is passed over by the claim — it
/// keeps its lease, so that the next polls do not claim it again — and the endpoints claimed with
/// it get their work, rather than the whole claim failing round after round while the damaged
/// one is the longest waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_endpoint_row_does_not_keep_the_others_from_their_deliveries() {
    let (db, store) = setup(Backend::Sqlite).await;
    let registered = now() - TimeDelta::seconds(1);
    let (damaged, healthy) = (endpoint(&[], registered), endpoint(&[], registered));
    for hook in [&damaged, &healthy] {
        store.insert_webhook(hook).await.unwrap();
    }
    sign_up(&store, "ada").await;
    store.fan_out_events(100, None, now()).await.unwrap();
    let sql = db.sql().await;
    let damage = format!(
        "UPDATE webhook_endpoints SET updated_at = 9223372036854775807 WHERE id = {}",
        sql.uuid(&damaged.id.to_string())
    );
    assert_eq!(sql.exec(&damage).await.unwrap(), 1);
    let (t, until) = (now(), now() + TimeDelta::seconds(30));
    let claimed = store.claim_webhooks(Uuid::new_v4(), t, until, 10).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [healthy.id]);
    let again = store.claim_webhooks(Uuid::new_v4(), t, until, 10).await.unwrap();
    assert!(again.is_empty(), "the damaged one keeps its lease: {again:?}");
}

async fn the_endpoint_waiting_longest_is_claimed_first(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let registered = now() - TimeDelta::seconds(1);
    let (first, second) = (endpoint(&[], registered), endpoint(&[], registered));
    for hook in [&first, &second] {
        store.insert_webhook(hook).await.unwrap();
    }
    sign_up(&store, "ada").await;
    store.fan_out_events(100, None, now()).await.unwrap();
    // The second endpoint's delivery has been due for ten minutes (a retry that came due), the
    // first's since the fan-out: a claim of one takes the second, whatever the ids' order.
    let job = store.pending_deliveries(second.id, 1).await.unwrap().remove(0);
    let (t, long_due) = (now(), now() - TimeDelta::minutes(10));
    let retry = Attempt {
        at: t,
        status: Some(503),
        error: Some("answered 503".into()),
        retry_at: Some(long_due),
        scheduled_at: job.scheduled_at,
    };
    assert!(store.record_attempt(&second, job.id, &retry).await.unwrap());
    let until = t + TimeDelta::seconds(30);
    let claimed = store.claim_webhooks(Uuid::new_v4(), t, until, 1).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [second.id]);
    let claimed = store.claim_webhooks(Uuid::new_v4(), t, until, 1).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [first.id], "then the next");
}

async fn attempts_are_recorded_and_a_replay_schedules_events_again(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let start = now() - TimeDelta::seconds(1);
    let hook = endpoint(&[], start);
    store.insert_webhook(&hook).await.unwrap();
    sign_up(&store, "ada").await;
    sign_up(&store, "bob").await;
    store.fan_out_events(100, None, now()).await.unwrap();
    let jobs = store.pending_deliveries(hook.id, 100).await.unwrap();
    let (t, retry) = (now(), now() + TimeDelta::seconds(60));
    let scheduled_at = jobs[0].scheduled_at;
    let failure =
        |retry_at| Attempt { at: t, status: Some(500), error: Some("answered 500".into()), retry_at, scheduled_at };
    store.record_attempt(&hook, jobs[0].id, &failure(Some(retry))).await.unwrap();
    let log = store.webhook_deliveries(hook.id, None, 10).await.unwrap();
    assert_eq!(log.len(), 2);
    let first = &log[1];
    assert_eq!((first.state, first.attempts, first.next_attempt_at), (DeliveryState::Pending, 1, retry));
    assert_eq!((first.last_status, first.last_error.as_deref()), (Some(500), Some("answered 500")));
    assert!(
        store.claim_webhooks(Uuid::new_v4(), now(), now(), 10).await.unwrap().is_empty(),
        "the first pending delivery is not due: the endpoint waits, its later events too"
    );
    // The series of attempts now counts from its first (the time to give up runs from there).
    let series = store.pending_deliveries(hook.id, 100).await.unwrap()[0].scheduled_at;
    assert_eq!(series, t);
    let stale = Attempt { scheduled_at, ..failure(None) };
    assert!(!store.record_attempt(&hook, jobs[0].id, &stale).await.unwrap(), "not of the current series");
    store.record_attempt(&hook, jobs[0].id, &Attempt { scheduled_at: series, ..failure(None) }).await.unwrap();
    let delivered = Attempt { at: t, status: Some(204), error: None, retry_at: None, scheduled_at };
    store.record_attempt(&hook, jobs[1].id, &delivered).await.unwrap();
    store.record_attempt(&hook, jobs[1].id, &failure(None)).await.unwrap();
    let log = store.webhook_deliveries(hook.id, None, 10).await.unwrap();
    assert_eq!((log[1].state, log[1].attempts), (DeliveryState::Failed, 2));
    assert_eq!((log[0].state, log[0].attempts, log[0].delivered_at), (DeliveryState::Delivered, 1, Some(t)));
    assert_eq!(store.webhook_deliveries(hook.id, Some(log[0].event_seq), 10).await.unwrap(), [log[1].clone()]);

    // Page by page: one event, then the next after it, then none.
    let page = |from, limit| store.replay_webhook(&hook, start, from, limit, now());
    let first = page(None, 1).await.unwrap();
    assert_eq!(first.scheduled, 1);
    let second = page(first.next, 1).await.unwrap();
    assert_eq!(second.scheduled, 1);
    assert!(second.next > first.next && first.next.is_some(), "{first:?} {second:?}");
    assert_eq!(page(second.next, 1).await.unwrap(), ReplayPage { scheduled: 0, next: None, gone: false });
    assert_eq!(page(None, 100).await.unwrap(), ReplayPage { scheduled: 2, next: None, gone: false });
    let jobs = store.pending_deliveries(hook.id, 100).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.attempts == 0));
    let later = store.replay_webhook(&hook, now() + TimeDelta::seconds(5), None, 100, now()).await.unwrap();
    assert_eq!(later, ReplayPage { scheduled: 0, next: None, gone: false });
    // An attempt of the series the replay replaced (sent before it, recorded after) is not
    // recorded over the new one: the replayed event is still sent.
    store.record_attempt(&hook, jobs[0].id, &delivered).await.unwrap();
    let again = store.pending_deliveries(hook.id, 100).await.unwrap();
    assert_eq!(again.len(), 2, "both replayed deliveries are still pending");
    let current = Attempt { scheduled_at: again[0].scheduled_at, ..delivered.clone() };
    assert!(store.record_attempt(&hook, again[0].id, &current).await.unwrap());
    let last = store.pending_deliveries(hook.id, 100).await.unwrap();
    assert_eq!(last.len(), 1);

    // An attempt sent to the endpoint as it was leased is not recorded once the endpoint has
    // another URL or is disabled (the deliverer stops; the delivery waits for the endpoint as it
    // is now), nor once it is gone.
    let last_attempt = Attempt { scheduled_at: last[0].scheduled_at, ..delivered };
    let moved = WebhookEndpoint { url: "https://elsewhere.example/hook".into(), updated_at: now(), ..hook.clone() };
    store.update_webhook(&moved).await.unwrap();
    assert!(!store.record_attempt(&hook, last[0].id, &last_attempt).await.unwrap(), "another URL");
    let disabled = WebhookEndpoint { enabled: false, updated_at: now(), ..moved.clone() };
    store.update_webhook(&disabled).await.unwrap();
    assert!(!store.record_attempt(&moved, last[0].id, &last_attempt).await.unwrap(), "disabled");
    // Still pending, untried, its series started anew when the URL changed.
    let waiting = store.pending_deliveries(hook.id, 100).await.unwrap();
    assert_eq!((waiting.len(), waiting[0].id, waiting[0].attempts), (1, last[0].id, 0));
    assert!(waiting[0].scheduled_at > last[0].scheduled_at, "restarted at the new URL: {waiting:?}");
    store.update_webhook(&WebhookEndpoint { enabled: true, updated_at: now(), ..moved.clone() }).await.unwrap();
    // Enabled again, its pending deliveries start a new series: an attempt of the series before
    // is not recorded; one of the new series is.
    let restarted = store.pending_deliveries(hook.id, 100).await.unwrap();
    assert_eq!((restarted.len(), restarted[0].attempts), (1, 0));
    assert!(restarted[0].scheduled_at > last[0].scheduled_at, "a new series");
    assert!(!store.record_attempt(&moved, last[0].id, &last_attempt).await.unwrap(), "the series before");
    let last_attempt = Attempt { scheduled_at: restarted[0].scheduled_at, ..last_attempt };
    assert!(store.record_attempt(&moved, last[0].id, &last_attempt).await.unwrap(), "as it is now");
    store.delete_webhook(hook.id).await.unwrap();
    assert!(!store.record_attempt(&moved, last[0].id, &last_attempt).await.unwrap(), "gone");
}

/// An endpoint's deletion stops its deliveries first, then removes its log (in batches, outside
/// the endpoint's lock), then the endpoint: one stopped before the end leaves the endpoint
/// disabled — nothing more is queued for it — and a second deletion finishes.
async fn a_webhook_deletion_stopped_part_way_leaves_it_disabled_and_a_second_finishes(backend: Backend) {
    let (db, store) = setup(backend).await;
    let sql = db.sql().await;
    let hook = endpoint(&[], now() - TimeDelta::seconds(1));
    store.insert_webhook(&hook).await.unwrap();
    for name in ["ada", "bob", "cat"] {
        sign_up(&store, name).await;
    }
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 3);
    assert_eq!(sql.count("webhook_deliveries").await, 3);
    sql.inject("DELETE", "webhook_endpoints", None, "SELECT RAISE(ABORT, 'injected');", "RAISE EXCEPTION 'injected';")
        .await;
    assert!(store.delete_webhook(hook.id).await.is_err());
    sql.remove_injected("webhook_endpoints").await;
    let left = store.webhook(hook.id).await.unwrap().expect("still there");
    assert!(!left.enabled, "disabled, so that nothing more goes to it");
    assert_eq!(sql.count("webhook_deliveries").await, 0, "its log went first");
    sign_up(&store, "dan").await;
    assert_eq!(store.fan_out_events(100, None, now()).await.unwrap().events, 1);
    assert_eq!(sql.count("webhook_deliveries").await, 0, "nothing queued for an endpoint being deleted");
    assert!(store.delete_webhook(hook.id).await.unwrap());
    assert!(store.webhook(hook.id).await.unwrap().is_none());
    assert!(!store.delete_webhook(hook.id).await.unwrap(), "gone");
}

async fn a_replay_longer_than_a_page_schedules_every_event_it_wants(backend: Backend) {
    let (db, store) = setup(backend).await;
    let sql = db.sql().await;
    let start = now() - TimeDelta::hours(1);
    let ada = sign_up(&store, "ada").await.id();
    // Over two pages of events, half of them wanted, all older than the endpoint.
    let toggles = 2 * REPLAY_PAGE + 2;
    for i in 0..toggles {
        set_user_disabled(&store, ada, i % 2 == 0, start + TimeDelta::milliseconds(i)).await.unwrap();
    }
    while store.fan_out_events(500, None, now()).await.unwrap().events > 0 {}
    let hook = endpoint(&["user.disabled"], now());
    store.insert_webhook(&hook).await.unwrap();
    assert_eq!(store.fan_out_events(500, None, now()).await.unwrap().events, 0);
    assert_eq!(sql.count("webhook_deliveries").await, 0, "older than the endpoint");

    let webhooks = Webhooks::new(store.clone(), None, WebhooksConfig::default());
    let scheduled = webhooks.replay(hook.id, start - TimeDelta::seconds(1)).await.unwrap();
    assert_eq!(scheduled, toggles as u64 / 2);
    assert_eq!(sql.count("webhook_deliveries WHERE state = 'pending'").await, toggles / 2);
    assert_eq!(store.pending_deliveries(hook.id, 1).await.unwrap()[0].topic, "user.disabled");

    // A replay covers the events fanned out when it began: one fanned out between its pages has
    // its delivery from the fan-out, and is not scheduled again (it could be sent twice).
    let first = store.replay_webhook(&hook, start, None, REPLAY_PAGE, now()).await.unwrap();
    assert_eq!(first.scheduled, REPLAY_PAGE as u64 / 2);
    set_user_disabled(&store, ada, true, now()).await.unwrap();
    store.fan_out_events(500, None, now()).await.unwrap();
    assert_eq!(sql.count("webhook_deliveries").await, toggles / 2 + 1, "the fan-out's delivery");
    let mut scheduled = first.scheduled;
    let mut next = first.next;
    while let Some(from) = next {
        let page = store.replay_webhook(&hook, start, Some(from), REPLAY_PAGE, now()).await.unwrap();
        (scheduled, next) = (scheduled + page.scheduled, page.next);
    }
    assert_eq!(scheduled, toggles as u64 / 2, "the later event is not part of it");

    // Nor is a delivery scheduled after the replay began, below that bound (the fan-out's, for an
    // event whose transaction committed late; here a second replay's): it is left as it is.
    let first = store.replay_webhook(&hook, start, None, REPLAY_PAGE, now()).await.unwrap();
    assert_eq!(webhooks.replay(hook.id, start).await.unwrap(), toggles as u64 / 2 + 1, "the second one");
    let mut next = first.next;
    while let Some(from) = next {
        let page = store.replay_webhook(&hook, start, Some(from), REPLAY_PAGE, now()).await.unwrap();
        assert_eq!(page.scheduled, 0, "already scheduled anew by the second replay");
        next = page.next;
    }
}

async fn old_events_go_once_no_delivery_of_theirs_is_pending(backend: Backend) {
    let (db, store) = setup(backend).await;
    let sql = db.sql().await;
    let (long_ago, cutoff) = (now() - TimeDelta::days(40), now() - TimeDelta::days(30));
    let minute = TimeDelta::minutes(1);
    let registered = long_ago - TimeDelta::days(1);
    let (a, b) = (endpoint(&["user.disabled"], registered), endpoint(&["user.disabled"], registered));
    let c = endpoint(&["user.enabled", "user.created"], registered);
    for hook in [&a, &b, &c] {
        store.insert_webhook(hook).await.unwrap();
    }
    let ada = sign_up(&store, "ada").await;
    // Old events: one for a and b, one for c, one nobody wants; the sign-up is recent.
    set_user_disabled(&store, ada.id(), true, long_ago).await.unwrap();
    set_user_disabled(&store, ada.id(), false, long_ago + minute).await.unwrap();
    let rename = |name: &str| UserChange { name: Some(Some(name.into())), ..UserChange::default() };
    store.update_user(ada.id(), &rename("Ada L."), long_ago + minute * 2).await.unwrap();
    let topics = async || sql.texts("SELECT topic FROM outbox_events ORDER BY seq").await;
    assert_eq!(store.delete_old_events(cutoff, 100).await.unwrap(), 0, "not fanned out yet");
    store.fan_out_events(100, None, now()).await.unwrap();
    assert_eq!(store.delete_old_events(cutoff, 100).await.unwrap(), 0, "the last one fanned out stays");
    // A recent one after it: the old one may go.
    sign_up(&store, "bob").await;

    store.fan_out_events(100, None, now()).await.unwrap();
    assert_eq!(store.delete_old_events(cutoff, 100).await.unwrap(), 1, "user.updated had no delivery to make");
    assert_eq!(topics().await, ["user.created", "user.disabled", "user.enabled", "user.created"]);
    assert_eq!(store.delete_old_events(cutoff, 100).await.unwrap(), 0, "deliveries are pending");

    // c is disabled with its delivery of user.enabled pending; a delivers, b gives up.
    store.update_webhook(&WebhookEndpoint { enabled: false, updated_at: now(), ..c.clone() }).await.unwrap();
    for (hook, status, error) in [(&a, 204, None), (&b, 500, Some("answered 500".to_owned()))] {
        let job = store.pending_deliveries(hook.id, 100).await.unwrap().remove(0);
        let (at, scheduled_at) = (now(), job.scheduled_at);
        let attempt = Attempt { at, status: Some(status), error, retry_at: None, scheduled_at };
        assert!(store.record_attempt(hook, job.id, &attempt).await.unwrap());
    }
    let states = store.webhook_deliveries(b.id, None, 10).await.unwrap();
    assert_eq!(states.iter().map(|d| d.state).collect::<Vec<_>>(), [DeliveryState::Failed]);
    assert_eq!(store.delete_old_events(cutoff, 0).await.unwrap(), 0, "at most the limit");
    assert_eq!(store.delete_old_events(cutoff, 100).await.unwrap(), 1, "delivered and failed: done with");
    let left = ["user.created", "user.enabled", "user.created"];
    assert_eq!(topics().await, left, "the recent ones, and the one still pending");
    assert_eq!(sql.count("webhook_deliveries").await, 3, "user.disabled's log rows went with it");
    assert!(store.webhook_deliveries(a.id, None, 10).await.unwrap().is_empty());
    // A replay since before the cutoff finds only what is left.
    assert_eq!(store.replay_webhook(&c, registered, None, 100, now()).await.unwrap().scheduled, 3);

    // The service: a retention of 0 keeps everything; 30 days lets the old event nobody wants go.
    store.update_user(ada.id(), &rename("Ada"), long_ago + minute * 3).await.unwrap();
    sign_up(&store, "cat").await;
    store.fan_out_events(100, None, now()).await.unwrap();
    let service = |retention| {
        let settings = WebhooksConfig { retention, ..WebhooksConfig::default() };
        Webhooks::new(store.clone(), None, settings)
    };
    assert_eq!(service(None).sweep().await.unwrap(), 0);
    assert_eq!(service(Some(std::time::Duration::from_secs(30 * 86_400))).sweep().await.unwrap(), 1);
    assert_eq!(topics().await, ["user.created", "user.enabled", "user.created", "user.created"]);
}

/// SQLite only (its one writer is what is at stake): a retention sweep picks its candidates
/// without the writer, so old events all held back by a pending delivery (an endpoint disabled
/// for weeks) cost other writes nothing — with nothing to delete, it does not wait for the writer
/// at all (here held by the test, which would fail it at the busy timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_with_nothing_to_delete_takes_no_write() {
    let (db, store) = setup(Backend::Sqlite).await;
    let long_ago = now() - TimeDelta::days(40);
    let hook = endpoint(&[], long_ago - TimeDelta::days(1));
    store.insert_webhook(&hook).await.unwrap();
    store.update_webhook(&WebhookEndpoint { enabled: false, updated_at: now(), ..hook.clone() }).await.unwrap();
    let ada = sign_up(&store, "ada").await.id();
    for i in 0..5 {
        set_user_disabled(&store, ada, i % 2 == 0, long_ago + TimeDelta::seconds(i)).await.unwrap();
    }
    sign_up(&store, "bob").await;
    store.fan_out_events(100, None, now()).await.unwrap();
    let sql = db.sql().await;
    assert!(sql.count("webhook_deliveries WHERE state = 'pending'").await >= 5, "held back");
    let writer = sql.hold("BEGIN IMMEDIATE", "").await;
    let swept = store.delete_old_events(now() - TimeDelta::days(30), 100).await;
    writer.end("ROLLBACK").await;
    assert_eq!(swept.unwrap(), 0);
}

/// Retention sweeps of several instances at once skip each other's rows: none fails, and every
/// event deleted is counted by exactly one of them.
async fn concurrent_sweeps_delete_each_old_event_once(backend: Backend) {
    let (db, store) = setup(backend).await;
    let sql = db.sql().await;
    let (long_ago, cutoff) = (now() - TimeDelta::days(40), now() - TimeDelta::days(30));
    let ada = sign_up(&store, "ada").await.id();
    for i in 0..60 {
        set_user_disabled(&store, ada, i % 2 == 0, long_ago + TimeDelta::seconds(i)).await.unwrap();
    }
    // A recent one after them, so that the last old one fanned out may go too.
    sign_up(&store, "bob").await;
    store.fan_out_events(100, None, now()).await.unwrap();
    let old = "outbox_events WHERE topic <> 'user.created'";
    assert_eq!(sql.count(old).await, 60);
    let sweeps: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.delete_old_events(cutoff, 10).await.unwrap() })
        })
        .collect();
    let mut deleted = 0;
    for sweep in sweeps {
        deleted += sweep.await.unwrap();
    }
    assert!(deleted > 0);
    assert_eq!(sql.count(old).await, 60 - deleted as i64, "each deleted event counted once");
    while store.delete_old_events(cutoff, 10).await.unwrap() > 0 {}
    assert_eq!(sql.count(old).await, 0);
}

async fn a_sweep_never_deletes_an_event_a_replay_scheduled(backend: Backend) {
    let (db, store) = setup(backend).await;
    let sql = db.sql().await;
    let long_ago = now() - TimeDelta::days(40);
    let hook = endpoint(&["user.disabled", "user.enabled"], long_ago - TimeDelta::days(1));
    store.insert_webhook(&hook).await.unwrap();
    let ada = sign_up(&store, "ada").await.id();
    for round in 0..12 {
        // One more old event, delivered (so the sweep may delete it), then a replay of it and a
        // sweep at once: either the replay schedules it again and it stays, or it is gone.
        let written = long_ago + TimeDelta::seconds(round);
        set_user_disabled(&store, ada, round % 2 == 0, written).await.unwrap();
        store.fan_out_events(100, None, now()).await.unwrap();
        for job in store.pending_deliveries(hook.id, 100).await.unwrap() {
            let attempt =
                Attempt { at: now(), status: Some(204), error: None, retry_at: None, scheduled_at: job.scheduled_at };
            store.record_attempt(&hook, job.id, &attempt).await.unwrap();
        }
        let replay = {
            let (store, hook) = (store.clone(), hook.clone());
            tokio::spawn(async move { store.replay_webhook(&hook, written, None, 100, now()).await.unwrap().scheduled })
        };
        let sweep = {
            let store = store.clone();
            tokio::spawn(async move { store.delete_old_events(now() - TimeDelta::days(30), 100).await.unwrap() })
        };
        let (replayed, _) = (replay.await.unwrap(), sweep.await.unwrap());
        let pending = sql.count("webhook_deliveries WHERE state = 'pending'").await;
        let kept = sql.count("outbox_events WHERE topic <> 'user.created'").await;
        assert_eq!((replayed, pending, kept), if replayed == 1 { (1, 1, 1) } else { (0, 0, 0) }, "round {round}");
    }
}

async fn a_replay_racing_the_endpoints_deletion_ends_without_an_error(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "ada").await.id();
    let start = now() - TimeDelta::minutes(1);
    for round in 0..6 {
        let hook = endpoint(&["user.disabled", "user.enabled"], start - TimeDelta::minutes(1));
        store.insert_webhook(&hook).await.unwrap();
        set_user_disabled(&store, ada, round % 2 == 0, now()).await.unwrap();
        store.fan_out_events(100, None, now()).await.unwrap();
        // Replays (each page locks the endpoint) against its deletion (the endpoint, then its
        // deliveries): every call answers, and a replay that lost the race says the endpoint
        // is gone rather than breaking a foreign key.
        let replays: Vec<_> = (0..4)
            .map(|_| {
                let (store, hook) = (store.clone(), hook.clone());
                tokio::spawn(async move { store.replay_webhook(&hook, start, None, 1, now()).await.unwrap() })
            })
            .collect();
        assert!(store.delete_webhook(hook.id).await.unwrap());
        for replay in replays {
            let page = replay.await.unwrap();
            assert!(page.gone || page.scheduled <= 1, "round {round}: {page:?}");
        }
        let page = store.replay_webhook(&hook, start, None, 100, now()).await.unwrap();
        assert!(page.gone && page.scheduled == 0, "after the deletion: {page:?}");
        assert_eq!(db.sql().await.count("webhook_deliveries").await, 0, "round {round}");
    }
}

// ---- Operators: listings and user deletion ---------------------------------------------------

/// Every user the listing returns, page after page of `limit`.
async fn all_pages(store: &Arc<dyn Store>, mut query: UserQuery, limit: i64) -> Vec<UserId> {
    let mut ids = Vec::new();
    query.limit = limit;
    loop {
        let page = store.list_users(&query).await.unwrap();
        ids.extend(page.iter().map(|u| u.id));
        if page.len() < limit as usize {
            return ids;
        }
        query.after = page.last().map(|u| u.id.as_uuid());
    }
}

async fn users_are_listed_by_id_with_every_filter(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let mut people = Vec::new();
    for (i, email) in ["ada@example.com", "Ada@Example.com", "bob@example.com", "cy@example.org"].iter().enumerate() {
        let mut new = account(&format!("list-{i}"), None);
        new.email = Some(Email::parse(email).unwrap());
        people.push(sign_up_as(&store, new).await);
    }
    let ids: Vec<UserId> = people.iter().map(Person::id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(all_pages(&store, UserQuery::default(), 100).await, sorted, "ordered by id");
    assert_eq!(all_pages(&store, UserQuery::default(), 1).await, sorted, "pages of one meet end to end");
    let after_second = UserQuery { after: Some(sorted[1].as_uuid()), limit: 10, ..Default::default() };
    assert_eq!(store.list_users(&after_second).await.unwrap().len(), 2);

    let by_email = UserQuery { email: Some(Email::parse("ADA@example.COM").unwrap()), ..Default::default() };
    assert_eq!(all_pages(&store, by_email, 10).await, [ids[0], ids[1]], "the email key, as linking compares");
    let identity = (Issuer::parse(ISSUER).unwrap(), Subject::parse("list-2").unwrap());
    let by_identity = UserQuery { identity: Some(identity), ..Default::default() };
    assert_eq!(all_pages(&store, by_identity, 10).await, [ids[2]]);
    let unknown = (Issuer::parse(OTHER_ISSUER).unwrap(), Subject::parse("list-2").unwrap());
    assert!(all_pages(&store, UserQuery { identity: Some(unknown), ..Default::default() }, 10).await.is_empty());

    join(&store, &people[0].team, ids[3], Role::Member, now()).await;
    let members = UserQuery { team: Some(people[0].team.id), ..Default::default() };
    let mut expected = vec![ids[0], ids[3]];
    expected.sort();
    assert_eq!(all_pages(&store, members, 10).await, expected);

    set_user_disabled(&store, ids[2], true, now()).await.unwrap();
    let disabled = UserQuery { disabled: Some(true), ..Default::default() };
    assert_eq!(all_pages(&store, disabled, 10).await, [ids[2]]);
    let enabled = all_pages(&store, UserQuery { disabled: Some(false), ..Default::default() }, 10).await;
    assert_eq!(enabled.len(), 3);
    assert!(!enabled.contains(&ids[2]));
    let both = UserQuery {
        email: Some(Email::parse("bob@example.com").unwrap()),
        disabled: Some(false),
        ..Default::default()
    };
    assert!(all_pages(&store, both, 10).await.is_empty(), "filters combine");
    assert!(store.list_users(&UserQuery { limit: 0, ..Default::default() }).await.unwrap().is_empty());
}

async fn teams_are_listed_by_id_and_slug_prefix_and_members_with_their_roles(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let ada = sign_up_as(&store, account("teams-ada", Some("Ada Lovelace"))).await;
    let bob = sign_up_as(&store, account("teams-bob", Some("Bob Builder"))).await;
    let at = now();
    join(&store, &ada.team, bob.id(), Role::Admin, at).await;

    let all = store.list_teams(&TeamQuery { limit: 10, ..Default::default() }).await.unwrap();
    let mut expected = vec![ada.team.id, bob.team.id];
    expected.sort();
    assert_eq!(all.iter().map(|t| t.id).collect::<Vec<_>>(), expected);
    let first = store.list_teams(&TeamQuery { limit: 1, ..Default::default() }).await.unwrap();
    let rest = TeamQuery { after: Some(first[0].id.as_uuid()), limit: 10, ..Default::default() };
    assert_eq!(store.list_teams(&rest).await.unwrap().iter().map(|t| t.id).collect::<Vec<_>>(), expected[1..]);
    let prefixed = TeamQuery { slug_prefix: Some("adas".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_teams(&prefixed).await.unwrap(), std::slice::from_ref(&ada.team));
    let none = TeamQuery { slug_prefix: Some("adas-team-and-more".into()), limit: 10, ..Default::default() };
    assert!(store.list_teams(&none).await.unwrap().is_empty());

    let members = store.team_members(ada.team.id, None, 10).await.unwrap();
    let mut ids: Vec<UserId> = vec![ada.id(), bob.id()];
    ids.sort();
    assert_eq!(members.iter().map(|m| m.user_id).collect::<Vec<_>>(), ids, "by user id");
    let bob_row = members.iter().find(|m| m.user_id == bob.id()).unwrap();
    assert_eq!((bob_row.role, bob_row.joined_at, bob_row.name.as_deref()), (Role::Admin, at, Some("Bob Builder")));
    assert_eq!(bob_row.email.as_deref(), Some("store@example.com"));
    let after = store.team_members(ada.team.id, Some(ids[0].as_uuid()), 10).await.unwrap();
    assert_eq!(after.iter().map(|m| m.user_id).collect::<Vec<_>>(), ids[1..]);
    assert!(store.team_members(TeamId::generate(), None, 10).await.unwrap().is_empty());
}

async fn create_team_refuses_a_taken_slug_or_a_missing_owner_and_writes_nothing(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "create-team").await;
    let at = now();
    let team = |slug: &str| Team {
        id: TeamId::generate(),
        slug: Slug::parse(slug).unwrap(),
        name: "Acme".into(),
        created_at: at,
    };
    let acme = team("acme");
    assert_eq!(store.create_team(&acme, Some(ada.id()), at).await.unwrap(), CreateTeamOutcome::Created(acme.clone()));
    assert_eq!(store.find_team(&TeamRef::Slug(acme.slug.clone())).await.unwrap(), Some(acme.clone()));
    let (found, role) = store.team_with_role(&TeamRef::Id(acme.id), ada.id()).await.unwrap().unwrap();
    assert_eq!((found.id, role), (acme.id, Some(Role::Owner)));
    let profile = store.user_profile(ada.id(), ReadFrom::Primary).await.unwrap().unwrap();
    assert!(profile.teams.iter().any(|m| m.team.id == acme.id && !m.is_default), "not a default team");

    let sql = db.sql().await;
    let before = sql.provisioning_counts().await;
    assert_eq!(store.create_team(&team("acme"), None, at).await.unwrap(), CreateTeamOutcome::SlugTaken);
    assert_eq!(
        store.create_team(&team("nobodys"), Some(UserId::generate()), at).await.unwrap(),
        CreateTeamOutcome::OwnerNotFound
    );
    assert_eq!(sql.provisioning_counts().await, before, "nothing written");
    let unowned = team("unowned");
    assert_eq!(store.create_team(&unowned, None, at).await.unwrap(), CreateTeamOutcome::Created(unowned.clone()));
    assert!(store.team_members(unowned.id, None, 10).await.unwrap().is_empty());

    // Concurrent creates of one slug: one team.
    let outcomes = concurrently(8, |_| {
        let (store, team) = (store.clone(), team("raced"));
        async move { store.create_team(&team, None, team.created_at).await.unwrap() }
    })
    .await;
    let created = outcomes.iter().filter(|o| matches!(o, CreateTeamOutcome::Created(_))).count();
    assert_eq!(created, 1, "{outcomes:?}");
    assert_eq!(sql.count("teams WHERE slug = 'raced'").await, 1);
}

/// Rows anywhere that still name `user`.
async fn rows_of(sql: &crate::helpers::Sql, user: UserId) -> Vec<(&'static str, i64)> {
    let id = sql.uuid(&user.to_string());
    let mut counts = Vec::new();
    for (table, column) in [
        ("users", "id"),
        ("identities", "user_id"),
        ("sessions", "user_id"),
        ("memberships", "user_id"),
        ("auth_profiles", "created_by"),
        ("connect_tokens", "user_id"),
        ("login_states", "link_user_id"),
        ("identity_events", "user_id"),
        ("oauth_consents", "user_id"),
        ("oauth_grants", "user_id"),
    ] {
        counts.push((table, sql.count(&format!("{table} WHERE {column} = {id}")).await));
    }
    counts
}

async fn deleting_a_user_takes_everything_of_theirs_and_spares_their_teams_shared_profiles(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "delete-ada").await;
    let bob = sign_up(&store, "delete-bob").await;
    let cy = sign_up(&store, "delete-cy").await;
    let at = now();
    let second = linked(&store, &ada, "delete-ada-elsewhere").await;
    store.put_identity_tokens(second.id, &tokens(b"access", Some(b"refresh"), at)).await.unwrap();
    store.start_session(&session(&ada, at, TimeDelta::hours(1)), None, &[]).await.unwrap();
    // Ada is a member of Bob's team, where she made a personal and a team-wide profile, and
    // an admin of Cy's team, where she made a team-wide profile too; her own team has a profile.
    join(&store, &bob.team, ada.id(), Role::Member, at).await;
    join(&store, &cy.team, ada.id(), Role::Admin, at).await;
    let personal = inserted(&store, profile(&bob.team, ada.id(), ProfileKind::OauthAccount, "ada-own", at)).await;
    store.mint_connect_token(&connect_token(&personal, ada.id(), at, TimeDelta::minutes(10))).await.unwrap();
    let shared = inserted(&store, profile(&bob.team, ada.id(), ProfileKind::Env, "ada-shared", at)).await;
    let in_cy = inserted(&store, profile(&cy.team, ada.id(), ProfileKind::Env, "ada-in-cy", at)).await;
    let in_own = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::Env, "ada-home", at)).await;
    let sql = db.sql().await;
    let events_before = sql.count("outbox_events").await;

    let DeleteUserOutcome::Deleted(deleted) = store.delete_user(ada.id(), at).await.unwrap() else {
        panic!("ada is deleted");
    };
    assert_eq!(deleted.user.id, ada.id());
    assert_eq!(deleted.identities.iter().map(|i| i.id).collect::<Vec<_>>(), [ada.identity(), second.id]);
    let mut left = vec![bob.team.id, cy.team.id];
    left.sort();
    assert_eq!((deleted.left_teams.clone(), deleted.deleted_teams.clone()), (left, vec![ada.team.id]));

    for (table, count) in rows_of(&sql, ada.id()).await {
        assert_eq!(count, 0, "{table} still holds a row of the deleted user");
    }
    assert_eq!(sql.count("identity_tokens").await, 0);
    assert!(store.find_team(&TeamRef::Id(ada.team.id)).await.unwrap().is_none(), "her own team is gone");
    assert!(store.profile(personal.id).await.unwrap().is_none());
    assert!(store.profile(in_own.id).await.unwrap().is_none());
    assert_eq!(store.profile(shared.id).await.unwrap().unwrap().created_by, bob.id(), "credited to the owner");
    assert_eq!(store.profile(in_cy.id).await.unwrap().unwrap().created_by, cy.id());
    assert_eq!(store.team_members(bob.team.id, None, 10).await.unwrap().len(), 1);
    // The user's deletion, after the revocations of the two profiles that ended with her: her
    // personal one in Bob's team, and the one of her own team, deleted with her.
    assert_eq!(sql.count("outbox_events").await, events_before + 3);
    assert_eq!(sql.count("outbox_events WHERE topic = 'user.deleted'").await, 1);
    assert_eq!(sql.count("outbox_events WHERE topic = 'auth_profile.revoked'").await, 2);
    // The others are untouched.
    for person in [&bob, &cy] {
        let profile = store.user_profile(person.id(), ReadFrom::Primary).await.unwrap().unwrap();
        assert_eq!((profile.identities.len(), profile.teams.len()), (1, 1));
    }
    assert_eq!(store.delete_user(ada.id(), at).await.unwrap(), DeleteUserOutcome::NotFound);
    assert_eq!(sql.count("outbox_events").await, events_before + 3, "a repeated delete writes nothing");
    // The identity is free again: it provisions a new user.
    assert!(store.find_identity(&ada.account.issuer, &ada.account.subject).await.unwrap().is_none());
    sign_up_as(&store, account("delete-ada", None)).await;
}

async fn deleting_the_last_owner_of_a_shared_team_is_refused_and_writes_nothing(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "last-owner-ada").await;
    let bob = sign_up(&store, "last-owner-bob").await;
    join(&store, &ada.team, bob.id(), Role::Admin, now()).await;
    let sql = db.sql().await;
    let before = (sql.provisioning_counts().await, rows_of(&sql, ada.id()).await);
    assert_eq!(store.delete_user(ada.id(), now()).await.unwrap(), DeleteUserOutcome::LastOwner(ada.team.clone()));
    assert_eq!((sql.provisioning_counts().await, rows_of(&sql, ada.id()).await), before, "nothing written");

    // A second owner who is disabled cannot act for the team: still the last owner.
    store.write_member(ada.team.id, None, bob.id(), Role::Owner, now(), MemberWrite::Put).await.unwrap();
    set_user_disabled(&store, bob.id(), true, now()).await.unwrap();
    assert_eq!(store.delete_user(ada.id(), now()).await.unwrap(), DeleteUserOutcome::LastOwner(ada.team.clone()));
    set_user_disabled(&store, bob.id(), false, now()).await.unwrap();

    // With a second owner, Ada goes and her team stays with Bob.
    let DeleteUserOutcome::Deleted(deleted) = store.delete_user(ada.id(), now()).await.unwrap() else {
        panic!("ada is deleted");
    };
    assert_eq!((deleted.left_teams, deleted.deleted_teams), (vec![ada.team.id], vec![]));
    let members = store.team_members(ada.team.id, None, 10).await.unwrap();
    assert_eq!(members.iter().map(|m| (m.user_id, m.role)).collect::<Vec<_>>(), [(bob.id(), Role::Owner)]);
}

async fn concurrent_deletes_of_one_user_have_one_winner(backend: Backend) {
    let (db, store) = setup(backend).await;
    let ada = sign_up(&store, "delete-race").await.id();
    let outcomes = concurrently(8, |_| {
        let store = store.clone();
        async move { store.delete_user(ada, now()).await.unwrap() }
    })
    .await;
    let deleted = outcomes.iter().filter(|o| matches!(o, DeleteUserOutcome::Deleted(_))).count();
    assert_eq!(deleted, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(o, DeleteUserOutcome::Deleted(_) | DeleteUserOutcome::NotFound)));
    let sql = db.sql().await;
    assert_eq!(sql.count("outbox_events WHERE topic = 'user.deleted'").await, 1);
    assert_eq!(sql.provisioning_counts().await[..4], [0, 0, 0, 0]);
}

/// Two owners of one team, each the creator of a team-wide profile there, deleted at once: the
/// first to go credits its profiles to the other, whose deletion is under way. Both end deleted
/// (on PostgreSQL the two can deadlock; the one aborted is run again), never an error.
async fn co_owners_deleted_at_once_are_both_deleted(backend: Backend) {
    let (db, store) = setup(backend).await;
    for round in 0..6 {
        let ada = sign_up(&store, &format!("co-owner-ada-{round}")).await;
        let bob = sign_up(&store, &format!("co-owner-bob-{round}")).await;
        join(&store, &ada.team, bob.id(), Role::Owner, now()).await;
        for (who, slug) in [(&ada, "adas-app"), (&bob, "bobs-app")] {
            let own = AuthProfile {
                connector_key: slug.into(),
                ..profile(&ada.team, who.id(), ProfileKind::OauthApp, slug, now())
            };
            inserted(&store, own).await;
        }
        let (first, second) = tokio::join!(store.delete_user(ada.id(), now()), store.delete_user(bob.id(), now()));
        for deleted in [first, second] {
            assert!(matches!(deleted, Ok(DeleteUserOutcome::Deleted(_))), "round {round}: {deleted:?}");
        }
    }
    assert_eq!(db.sql().await.count("auth_profiles").await, 0, "the team went with its last owner");
}

// ---- The cache-invalidation log ---------------------------------------------------------------

mod cache_log {
    use tessera::domain::client_rules::new_client;
    use tessera::domain::{Client, ClientId, ClientKind, RedirectUri};
    use tessera::store::{CacheChange, ClientUpdate, LogPage, LoggedChange};

    use super::*;

    on_both_backends!(
        changes_that_caches_must_forget_are_logged_in_their_transaction,
        client_changes_are_logged,
        a_change_that_writes_nothing_logs_nothing,
        concurrent_changes_each_log_one_row_with_a_number_of_its_own,
        old_rows_are_deleted_and_their_numbers_never_come_back,
        a_row_that_does_not_decode_is_passed_on_as_unreadable,
    );

    /// Everything logged after `after`, in order.
    async fn logged_after(store: &Arc<dyn Store>, after: i64) -> Vec<LoggedChange> {
        let page = store.cache_changes_after(after, 1_000, None).await.unwrap();
        assert_eq!(page.anchor_written_at, None, "no row asked about");
        let rows = page.rows;
        assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq), "in order, each number once: {rows:?}");
        assert_eq!(page.head, store.cache_changes_head().await.unwrap(), "the page carries the log's head");
        rows
    }

    fn changes(rows: &[LoggedChange]) -> Vec<CacheChange> {
        rows.iter().map(|row| row.change.clone().expect("a readable row")).collect()
    }

    fn identity(issuer: &str, subject: &str) -> CacheChange {
        CacheChange::Identity { issuer: Issuer::parse(issuer).unwrap(), subject: Subject::parse(subject).unwrap() }
    }

    fn app(id: &str, from_config: bool, at: DateTime<Utc>) -> Client {
        let mut client = new_client(
            ClientId::parse(id).unwrap(),
            format!("App {id}"),
            ClientKind::Public,
            SigningAlg::ES256,
            from_config,
            at,
        );
        client.redirect_uris = vec![RedirectUri::parse("https://app.example.com/cb").unwrap()];
        client
    }

    async fn changes_that_caches_must_forget_are_logged_in_their_transaction(backend: Backend) {
        let (_db, store) = setup(backend).await;
        assert_eq!(store.cache_changes_head().await.unwrap(), 0, "an empty log");
        let ada = sign_up(&store, "log-ada").await;
        let bob = sign_up(&store, "log-bob").await;
        assert_eq!(store.cache_changes_head().await.unwrap(), 0, "nothing is cached about a new user");

        set_user_disabled(&store, ada.id(), true, now()).await.unwrap();
        set_user_disabled(&store, ada.id(), false, now()).await.unwrap();
        join(&store, &bob.team, ada.id(), Role::Member, now()).await;
        store.write_member(bob.team.id, None, ada.id(), Role::Admin, now(), MemberWrite::Put).await.unwrap();
        store.remove_member(bob.team.id, None, ada.id()).await.unwrap();
        let second = linked(&store, &ada, "log-ada-elsewhere").await;
        assert!(matches!(
            store.unlink_identity(ada.id(), second.id, &[], now(), None).await.unwrap(),
            UnlinkOutcome::Unlinked(_)
        ));
        let team = Team {
            id: TeamId::generate(),
            slug: Slug::parse("log-team").unwrap(),
            name: "Log".into(),
            created_at: now(),
        };
        assert!(matches!(
            store.create_team(&team, Some(ada.id()), now()).await.unwrap(),
            CreateTeamOutcome::Created(_)
        ));
        // Bob is the only member of his team: it goes with him, and so does his identity.
        assert!(matches!(store.delete_user(bob.id(), now()).await.unwrap(), DeleteUserOutcome::Deleted(_)));

        let rows = logged_after(&store, 0).await;
        let user = |person: &Person| CacheChange::User(person.id());
        assert_eq!(
            changes(&rows),
            [
                user(&ada),
                user(&ada),
                user(&ada),
                user(&ada),
                user(&ada),
                user(&ada),
                user(&ada),
                identity(OTHER_ISSUER, "log-ada-elsewhere"),
                user(&ada),
                user(&bob),
                identity(ISSUER, "log-bob"),
            ]
        );
        assert_eq!(store.cache_changes_head().await.unwrap(), rows.last().unwrap().seq);
        // Read after a number, and a page at a time.
        assert_eq!(logged_after(&store, rows[8].seq).await, rows[9..]);
        let head = rows.last().unwrap().seq;
        // With when the row asked about was written (the last one its reader read), if it is there.
        let anchored = |i: usize| rows[i].written_at;
        assert_eq!(
            store.cache_changes_after(0, 2, Some(rows[5].seq)).await.unwrap(),
            LogPage { head, anchor_written_at: anchored(5), rows: rows[..2].to_vec() }
        );
        // Past the head, a page is empty but still says where the head is, and the anchor.
        assert_eq!(
            store.cache_changes_after(head, 10, Some(head)).await.unwrap(),
            LogPage { head, anchor_written_at: anchored(10), rows: vec![] }
        );
        assert_eq!(
            store.cache_changes_after(head + 100, 10, Some(head + 100)).await.unwrap(),
            LogPage { head, anchor_written_at: None, rows: vec![] }
        );
    }

    async fn client_changes_are_logged(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let t0 = now();
        let admin = app("log-admin", false, t0);
        store.insert_client(&admin).await.unwrap();
        let config = app("log-config", true, t0);
        store.sync_config_clients(std::slice::from_ref(&config)).await.unwrap();
        assert_eq!(store.cache_changes_head().await.unwrap(), 0, "a new client was never cached");

        let renamed = Client { name: "Renamed".into(), updated_at: t0 + TimeDelta::seconds(1), ..admin.clone() };
        assert_eq!(store.update_client(&renamed, t0).await.unwrap(), ClientUpdate::Updated);
        assert!(store.delete_client(&admin.id).await.unwrap());
        let changed = Client { name: "Changed".into(), ..config.clone() };
        store.sync_config_clients(std::slice::from_ref(&changed)).await.unwrap();
        store.sync_config_clients(&[]).await.unwrap();
        let client = |c: &Client| CacheChange::Client(c.id.clone());
        assert_eq!(
            changes(&logged_after(&store, 0).await),
            [client(&admin), client(&admin), client(&config), client(&config)]
        );
    }

    async fn a_change_that_writes_nothing_logs_nothing(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let ada = sign_up(&store, "quiet-ada").await;
        let bob = sign_up(&store, "quiet-bob").await;
        join(&store, &bob.team, ada.id(), Role::Member, now()).await;
        let client = app("quiet-app", false, now());
        store.insert_client(&client).await.unwrap();
        let head = store.cache_changes_head().await.unwrap();

        set_user_disabled(&store, ada.id(), false, now()).await.unwrap();
        assert_eq!(set_user_disabled(&store, UserId::generate(), true, now()).await.unwrap(), None);
        assert_eq!(
            store.write_member(bob.team.id, None, ada.id(), Role::Member, now(), MemberWrite::Put).await.unwrap(),
            MemberOutcome::Unchanged
        );
        assert_eq!(store.remove_member(ada.team.id, None, bob.id()).await.unwrap(), RemoveOutcome::NotMember);
        assert_eq!(store.remove_member(bob.team.id, None, bob.id()).await.unwrap(), RemoveOutcome::LastOwner);
        let own = store.find_identity(&ada.account.issuer, &ada.account.subject).await.unwrap().unwrap().identity_id;
        assert_eq!(store.unlink_identity(ada.id(), own, &[], now(), None).await.unwrap(), UnlinkOutcome::LastIdentity);
        assert!(matches!(
            store.link_identity(ada.id(), &new_link("quiet-ada-2", now())).await.unwrap(),
            LinkOutcome::Linked(_)
        ));
        let head = head + 1;
        assert!(matches!(
            store.link_identity(ada.id(), &new_link("quiet-ada-2", now())).await.unwrap(),
            LinkOutcome::AlreadyLinked(_)
        ));
        assert_eq!(store.delete_user(bob.id(), now()).await.unwrap(), DeleteUserOutcome::LastOwner(bob.team.clone()));
        let stale = Client { name: "Stale".into(), ..client.clone() };
        assert_eq!(
            store.update_client(&stale, client.updated_at - TimeDelta::seconds(1)).await.unwrap(),
            ClientUpdate::Changed
        );
        assert!(!store.delete_client(&ClientId::parse("no-such-app").unwrap()).await.unwrap());
        assert_eq!(store.cache_changes_head().await.unwrap(), head, "only the new link was logged");
    }

    async fn concurrent_changes_each_log_one_row_with_a_number_of_its_own(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let mut people = Vec::new();
        for i in 0..24 {
            people.push(sign_up(&store, &format!("log-many-{i}")).await.id());
        }
        let before = store.cache_changes_head().await.unwrap();
        let people = Arc::new(people);
        concurrently(24, |i| {
            let (store, people) = (store.clone(), people.clone());
            async move { set_user_disabled(&store, people[i], true, now()).await.unwrap() }
        })
        .await;
        let rows = logged_after(&store, before).await;
        assert_eq!(rows.len(), 24, "one row per change");
        let logged: HashSet<CacheChange> = changes(&rows).into_iter().collect();
        let expected: HashSet<CacheChange> = people.iter().map(|id| CacheChange::User(*id)).collect();
        assert_eq!(logged, expected);
    }

    /// A row this binary cannot read (here an issuer that no longer parses) does not fail the
    /// batch it is in: readers would stop at it, on every instance, until it was pruned.
    async fn a_row_that_does_not_decode_is_passed_on_as_unreadable(backend: Backend) {
        let (db, store) = setup(backend).await;
        let ada = sign_up(&store, "unreadable-ada").await;
        let before = store.cache_changes_head().await.unwrap();
        set_user_disabled(&store, ada.id(), true, now()).await.unwrap();
        let created = match backend {
            Backend::Postgres => "now()",
            Backend::Sqlite => "0",
        };
        let insert = format!(
            "INSERT INTO cache_invalidations (kind, issuer, subject, created_at) \
             VALUES ('identity', 'not an issuer', 'someone', {created})"
        );
        db.sql().await.exec(&insert).await.unwrap();
        set_user_disabled(&store, ada.id(), false, now()).await.unwrap();
        let rows = logged_after(&store, before).await;
        let read: Vec<Option<CacheChange>> = rows.iter().map(|row| row.change.clone()).collect();
        assert_eq!(read, [Some(CacheChange::User(ada.id())), None, Some(CacheChange::User(ada.id()))]);
        // Nor does a time out of range, read in the page or as its anchor: the row is passed on,
        // without its time. (SQLite's integer column holds one; sqlx panics on PostgreSQL's
        // `infinity`, which no writer of this log can store.)
        if backend == Backend::Postgres {
            return;
        }
        let beyond = "9223372036854775807";
        let insert = format!(
            "INSERT INTO cache_invalidations (kind, user_id, created_at) VALUES ('signing_keys', NULL, {beyond})"
        );
        db.sql().await.exec(&insert).await.unwrap();
        set_user_disabled(&store, ada.id(), true, now()).await.unwrap();
        let after = rows.last().unwrap().seq;
        let rows = logged_after(&store, after).await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].change.clone(), rows[0].written_at), (Some(CacheChange::SigningKeys), None));
        assert!(rows[1].written_at.is_some());
        let anchored = store.cache_changes_after(rows[0].seq, 10, Some(rows[0].seq)).await.unwrap();
        assert_eq!((anchored.anchor_written_at, anchored.rows), (None, rows[1..].to_vec()));
    }

    async fn old_rows_are_deleted_and_their_numbers_never_come_back(backend: Backend) {
        let (db, store) = setup(backend).await;
        let ada = sign_up(&store, "prune-ada").await;
        for disabled in [true, false, true] {
            set_user_disabled(&store, ada.id(), disabled, now()).await.unwrap();
        }
        let highest = store.cache_changes_head().await.unwrap();
        assert_eq!(store.delete_cache_changes_before(now() - TimeDelta::minutes(10)).await.unwrap(), 0);
        // Rows go in the log's order: a row younger than the cutoff keeps the ones after it, also
        // older ones (a writer's clock behind), so that the head goes only with every row.
        let sql = db.sql().await;
        let rows = logged_after(&store, 0).await;
        let second = rows[1].seq;
        let an_hour_later = match &sql {
            Sql::Sqlite(_) => "created_at + 3600000000",
            Sql::Postgres(_) => "created_at + interval '1 hour'",
        };
        let skewed = format!("UPDATE cache_invalidations SET created_at = {an_hour_later} WHERE seq = {second}");
        sql.exec(&skewed).await.unwrap();
        assert_eq!(store.delete_cache_changes_before(now() + TimeDelta::seconds(1)).await.unwrap(), 1);
        let kept: Vec<i64> = logged_after(&store, 0).await.iter().map(|row| row.seq).collect();
        assert_eq!(kept, [second, highest], "the head, and the young row before it");
        sql.exec(&format!("DELETE FROM cache_invalidations WHERE seq = {second}")).await.unwrap();
        assert_eq!(store.delete_cache_changes_before(now() + TimeDelta::seconds(1)).await.unwrap(), 1);
        assert_eq!(sql.count("cache_invalidations").await, 0);
        assert_eq!(store.cache_changes_head().await.unwrap(), 0, "an empty log");
        assert_eq!(
            store.cache_changes_after(highest, 10, Some(highest)).await.unwrap(),
            LogPage { head: 0, anchor_written_at: None, rows: vec![] }
        );
        // A reader that has read up to `highest` sees the next change.
        set_user_disabled(&store, ada.id(), false, now()).await.unwrap();
        let next = logged_after(&store, highest).await;
        assert_eq!(changes(&next), [CacheChange::User(ada.id())]);
        assert!(next[0].seq > highest, "numbers are never reused, even once the log was emptied");
    }
}

// ---- Metrics: pool samples and webhook queues -----------------------------------------------

mod metrics {
    use tessera::store::WebhookQueue;

    use super::*;

    on_both_backends!(
        pools_are_sampled_by_name_within_their_limits,
        webhook_queues_count_pending_deliveries_per_endpoint
    );

    async fn pools_are_sampled_by_name_within_their_limits(backend: Backend) {
        let (_db, store) = setup(backend).await;
        sign_up(&store, "pool-ada").await;
        let stats = store.pool_stats();
        let names: Vec<_> = stats.iter().map(|s| s.pool).collect();
        match backend {
            Backend::Sqlite => {
                assert_eq!(names, ["writer", "reader", "background"]);
                assert_eq!(stats[2].max, 1, "the background loops' one connection");
            }
            Backend::Postgres => {
                assert_eq!(names, ["primary", "background"], "no replica configured");
                assert_eq!(stats[1].max, 1, "the background loops' one connection");
            }
        }
        for pool in &stats {
            assert!(pool.max >= 1 && pool.size <= pool.max && pool.idle <= pool.size, "{pool:?}");
        }
        // Writes went through the writer (or primary), which keeps its connection open.
        assert!(stats[0].size >= 1, "{stats:?}");
        if backend == Backend::Sqlite {
            assert_eq!(stats[0].max, 1, "one SQLite writer");
        }
    }

    async fn webhook_queues_count_pending_deliveries_per_endpoint(backend: Backend) {
        let (_db, store) = setup(backend).await;
        assert!(store.webhook_queues().await.unwrap().is_empty(), "no endpoint, no queue");
        let start = now() - TimeDelta::seconds(1);
        let (busy, idle) = (endpoint(&[], start), endpoint(&["team.deleted"], start));
        for hook in [&busy, &idle] {
            store.insert_webhook(hook).await.unwrap();
        }
        sign_up(&store, "queue-ada").await;
        sign_up(&store, "queue-bob").await;
        let fanned_at = now();
        store.fan_out_events(100, None, fanned_at).await.unwrap();
        let queues = store.webhook_queues().await.unwrap();
        let of = |id: WebhookId| queues.iter().find(|q| q.endpoint == id).cloned().unwrap();
        assert_eq!(queues.len(), 2, "every endpoint, an empty queue too: {queues:?}");
        assert_eq!(of(idle.id), WebhookQueue { endpoint: idle.id, pending: 0, oldest_scheduled_at: None });
        let busy_queue = of(busy.id);
        assert_eq!(busy_queue.pending, 2);
        let oldest = busy_queue.oldest_scheduled_at.expect("a pending delivery");
        assert!(oldest <= now() && oldest >= start, "{oldest}");

        // Delivered and failed deliveries leave the queue.
        let jobs = store.pending_deliveries(busy.id, 10).await.unwrap();
        let t = now();
        store
            .record_attempt(
                &busy,
                jobs[0].id,
                &Attempt { at: t, status: Some(204), error: None, retry_at: None, scheduled_at: jobs[0].scheduled_at },
            )
            .await
            .unwrap();
        assert_eq!(of_now(&store, busy.id).await.pending, 1);
        let failed = Attempt {
            at: t,
            status: Some(500),
            error: Some("answered 500".into()),
            retry_at: None,
            scheduled_at: jobs[1].scheduled_at,
        };
        store.record_attempt(&busy, jobs[1].id, &failed).await.unwrap();
        assert_eq!(
            of_now(&store, busy.id).await,
            WebhookQueue { endpoint: busy.id, pending: 0, oldest_scheduled_at: None }
        );
        // A deleted endpoint has no queue.
        store.delete_webhook(busy.id).await.unwrap();
        let left: Vec<_> = store.webhook_queues().await.unwrap().into_iter().map(|q| q.endpoint).collect();
        assert_eq!(left, [idle.id]);
    }

    async fn of_now(store: &Arc<dyn Store>, id: WebhookId) -> WebhookQueue {
        store.webhook_queues().await.unwrap().into_iter().find(|q| q.endpoint == id).unwrap()
    }
}

/// `tessera import` and `tessera export` (store/import.rs): the batched existence check and the
/// export's pages.
mod import_export {
    use super::*;

    on_both_backends!(
        existing_identities_answers_for_the_subjects_that_exist_at_the_issuer,
        export_identities_pages_every_identity_with_its_user_in_id_order,
    );

    async fn existing_identities_answers_for_the_subjects_that_exist_at_the_issuer(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let issuer = Issuer::parse(ISSUER).unwrap();
        let mut people = Vec::new();
        for i in 0..150 {
            people.push(sign_up(&store, &format!("exists-{i}")).await);
        }
        let mut elsewhere = account("exists-0", None);
        elsewhere.issuer = Issuer::parse(OTHER_ISSUER).unwrap();
        let elsewhere = sign_up_as(&store, elsewhere).await;

        // 250 subjects (three queries' worth), one of them twice.
        let mut asked: Vec<Subject> = (0..250).map(|i| Subject::parse(&format!("exists-{i}")).unwrap()).collect();
        asked.push(Subject::parse("exists-7").unwrap());
        set_user_disabled(&store, people[3].id(), true, now()).await.unwrap();
        let mut found = store.existing_identities(&issuer, &asked).await.unwrap();
        found.sort_by_key(|a| a.1);
        let mut expected: Vec<(Subject, UserId, bool)> =
            people.iter().enumerate().map(|(i, p)| (p.account.subject.clone(), p.id(), i == 3)).collect();
        expected.sort_by_key(|a| a.1);
        assert_eq!(found, expected, "each existing subject once, with its user; none of the other issuer's");

        let other = Issuer::parse(OTHER_ISSUER).unwrap();
        let pair = [Subject::parse("exists-0").unwrap(), Subject::parse("exists-1").unwrap()];
        assert_eq!(store.existing_identities(&other, &pair).await.unwrap(), [(pair[0].clone(), elsewhere.id(), false)]);
        let unknown = [Subject::parse("nobody").unwrap()];
        assert!(
            store.existing_identities(&issuer, &unknown).await.unwrap().is_empty(),
            "a short batch finds nothing extra"
        );
        assert!(store.existing_identities(&issuer, &[]).await.unwrap().is_empty());
    }

    async fn export_identities_pages_every_identity_with_its_user_in_id_order(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let mut people = [
            sign_up_as(&store, account("export-ada", Some("Ada Lovelace"))).await,
            sign_up(&store, "export-bob").await,
            sign_up(&store, "export-cy").await,
        ];
        people.sort_by_key(|p| p.identity());
        // A disabled user is exported too.
        set_user_disabled(&store, people[1].id(), true, now()).await.unwrap().unwrap();

        let first = store.export_identities(None, 2).await.unwrap();
        assert_eq!(
            first.iter().map(|e| e.identity.id).collect::<Vec<_>>(),
            [people[0].identity(), people[1].identity()]
        );
        assert_eq!(first[0].user, people[0].user, "with the user as stored");
        assert_eq!(first[0].identity.subject, people[0].account.subject);
        assert_eq!(first[0].identity.issuer.as_str(), ISSUER);
        assert!(first[1].user.disabled);
        let rest = store.export_identities(Some(first[1].identity.id), 2).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.identity.id).collect::<Vec<_>>(), [people[2].identity()]);
        assert!(store.export_identities(Some(people[2].identity()), 2).await.unwrap().is_empty());
        assert!(store.export_identities(None, 0).await.unwrap().is_empty());
    }
}

// ---- The audit log ---------------------------------------------------------------------------

mod audit_log {
    use tessera::store::{ActorKind, AuditEvent, AuditQuery, IdentitySession, NewAuditEvent};

    use super::*;

    on_both_backends!(
        audit_rows_are_appended_whole_and_read_latest_first_with_every_filter,
        audit_rows_are_never_updated,
        audit_rows_past_retention_are_deleted_oldest_first_in_bounded_batches,
        a_signing_key_rotation_writes_its_audit_row_in_its_transaction,
        concurrent_appends_keep_every_row_with_distinct_increasing_ids,
        a_sign_in_writes_its_session_its_rows_and_the_replaced_session_end_together,
        a_returning_sign_in_finds_its_user_in_the_statement_that_writes_the_session,
        a_link_writes_its_audit_row_in_its_transaction_only_when_it_links,
        more_rows_than_one_insert_takes_keep_their_order,
    );

    fn row(action: &str, at: DateTime<Utc>) -> NewAuditEvent {
        NewAuditEvent { at, ..NewAuditEvent::new(ActorKind::AdminToken, action) }
            .actor(Some("0".into()), Some("admin_tokens[0]".into()))
    }

    fn query(limit: i64) -> AuditQuery {
        AuditQuery { limit, ..AuditQuery::default() }
    }

    fn actions(rows: &[AuditEvent]) -> Vec<&str> {
        rows.iter().map(|r| r.event.action.as_str()).collect()
    }

    async fn a_sign_in_writes_its_session_its_rows_and_the_replaced_session_end_together(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let (ada, bob) = (sign_up(&store, "ada").await, sign_up(&store, "bob").await);
        let t = now();
        let (old, other) = (session(&bob, t, TimeDelta::hours(1)), session(&bob, t, TimeDelta::hours(1)));
        for s in [&old, &other] {
            assert_eq!(
                store.start_session(s, None, &[]).await.unwrap(),
                SessionStart::Started { replaced: false },
                "nothing to replace"
            );
        }
        // Ada signs in in the browser where Bob was signed in: his session there ends.
        let new = session(&ada, t, TimeDelta::hours(1));
        let rows = [row("sign_in.succeeded", t), row("identity.linked", t)];
        assert_eq!(
            store.start_session(&new, Some(&old.token_hash), &rows).await.unwrap(),
            SessionStart::Started { replaced: true }
        );
        assert_eq!(store.session(&new.token_hash).await.unwrap().unwrap().user_id, ada.id());
        assert!(store.session(&old.token_hash).await.unwrap().is_none(), "the replaced session ended");
        assert_eq!(actions(&store.audit_events(&query(10)).await.unwrap()), ["identity.linked", "sign_in.succeeded"]);
        // A session that is gone already is no longer ended, and the sign-in still stands.
        let again = session(&ada, t, TimeDelta::hours(1));
        assert_eq!(
            store.start_session(&again, Some(&old.token_hash), &[]).await.unwrap(),
            SessionStart::Started { replaced: false }
        );
        assert!(store.session(&again.token_hash).await.unwrap().is_some());
        // With no session to end, the session and its rows are written together too (with one
        // row, one statement on PostgreSQL).
        let fresh = session(&ada, t, TimeDelta::hours(1));
        let rows = [row("sign_in.succeeded", t), row("session.note", t)];
        assert_eq!(store.start_session(&fresh, None, &rows).await.unwrap(), SessionStart::Started { replaced: false });
        assert!(store.session(&fresh.token_hash).await.unwrap().is_some());
        let logged = store.audit_events(&query(10)).await.unwrap();
        assert_eq!(actions(&logged[..2]), ["session.note", "sign_in.succeeded"], "in order, latest first");
        assert_eq!(logged.len(), 4);
        // All or nothing: a session that cannot be stored (its hash is taken) writes no row and
        // ends no session, with a session to end or without.
        let refused = store.start_session(&new, Some(&other.token_hash), &[row("not.written", t)]).await;
        assert!(refused.is_err());
        assert!(store.session(&other.token_hash).await.unwrap().is_some(), "Bob's other session is live");
        let refused = store.start_session(&fresh, None, &[row("not.written", t), row("nor.this", t)]).await;
        assert!(refused.is_err());
        let refused = store.start_session(&fresh, None, &[row("not.written", t)]).await;
        assert!(refused.is_err());
        assert_eq!(store.audit_events(&query(10)).await.unwrap().len(), 4, "no row of the failed sign-ins");
        // Nor for a disabled user, whichever way it is written: nothing is, and the caller is told.
        set_user_disabled(&store, bob.id(), true, t).await.unwrap();
        for (replaces, rows) in [(None, 0), (None, 1), (None, 2), (Some(&fresh.token_hash), 1)] {
            let refused = session(&bob, t, TimeDelta::hours(1));
            let rows: Vec<NewAuditEvent> = (0..rows).map(|_| row("not.written", t)).collect();
            let started = store.start_session(&refused, replaces, &rows).await.unwrap();
            assert_eq!(started, SessionStart::NoUser, "{replaces:?} {}", rows.len());
            assert!(store.session(&refused.token_hash).await.unwrap().is_none());
        }
        assert!(store.session(&fresh.token_hash).await.unwrap().is_some(), "not replaced either");
        assert_eq!(store.audit_events(&query(10)).await.unwrap().len(), 4, "no row of the refused sign-ins");
    }

    async fn a_returning_sign_in_finds_its_user_in_the_statement_that_writes_the_session(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let (ada, bob) = (sign_up(&store, "ada").await, sign_up(&store, "bob").await);
        let t = now();
        let of = |person: &Person| SessionOfIdentity {
            issuer: person.account.issuer.clone(),
            subject: person.account.subject.clone(),
            token_hash: hash(),
            device: Some("Firefox on Linux".into()),
            authenticated_at: Some(t - TimeDelta::seconds(30)),
            now: t,
            expires_at: t + TimeDelta::hours(1),
        };
        let audit = NewAuditEvent { at: t, ..NewAuditEvent::new(ActorKind::User, "sign_in.succeeded") }
            .request(Some("req-1".into()))
            .details(serde_json::json!({ "provider": "test" }));
        let ada_session = of(&ada);
        let started = store.start_session_of_identity(&ada_session, &audit).await.unwrap();
        assert_eq!(started, Some(IdentitySession { user: ada.id(), identity: ada.identity(), has_default_team: true }));
        let stored = store.session(&ada_session.token_hash).await.unwrap().unwrap();
        let expected = SessionRecord {
            user_id: ada.id(),
            identity_id: Some(ada.identity()),
            created_at: t,
            authenticated_at: Some(t - TimeDelta::seconds(30)),
            last_seen_at: t,
            expires_at: t + TimeDelta::hours(1),
            user_disabled: false,
        };
        assert_eq!(stored, expected);
        let devices = store.user_sessions(ada.id(), t, t - TimeDelta::days(1), 10).await.unwrap();
        assert_eq!(devices.iter().map(|s| s.device.as_deref()).collect::<Vec<_>>(), [Some("Firefox on Linux")]);
        let logged = store.audit_events(&query(10)).await.unwrap();
        assert_eq!(logged.len(), 1);
        let ada_id = ada.id().to_string();
        let details = serde_json::json!({ "provider": "test", "identity_id": ada.identity().to_string() });
        let written = NewAuditEvent {
            actor_id: Some(ada_id.clone()),
            target_kind: Some("user".into()),
            target_id: Some(ada_id),
            details: Some(details),
            ..audit.clone()
        };
        assert_eq!(logged[0].event, written);
        // Only what the caller left unset is the user's: a target it names is kept.
        let cy = sign_up(&store, "cy").await;
        let named = audit.clone().target("team", "t-1");
        assert!(store.start_session_of_identity(&of(&cy), &named).await.unwrap().is_some());
        let logged = store.audit_events(&query(10)).await.unwrap();
        let (kind, id) = (logged[0].event.target_kind.as_deref(), logged[0].event.target_id.as_deref());
        assert_eq!(
            (kind, id, logged[0].event.actor_id.clone()),
            (Some("team"), Some("t-1"), Some(cy.id().to_string()))
        );

        // An identity nobody has, and a disabled user: nothing is written, and the caller is told.
        let mut stranger = of(&ada);
        stranger.subject = Subject::parse("nobody").unwrap();
        assert_eq!(store.start_session_of_identity(&stranger, &audit).await.unwrap(), None);
        set_user_disabled(&store, bob.id(), true, t).await.unwrap();
        let bob_session = of(&bob);
        assert_eq!(store.start_session_of_identity(&bob_session, &audit).await.unwrap(), None);
        assert!(store.session(&stranger.token_hash).await.unwrap().is_none());
        assert!(store.session(&bob_session.token_hash).await.unwrap().is_none());
        let logged = store.audit_events(&query(10)).await.unwrap();
        assert_eq!(logged.iter().filter(|r| r.event.action == "sign_in.succeeded").count(), 2);
        // All or nothing: a session whose hash is taken writes no audit row either.
        let taken = SessionOfIdentity { token_hash: ada_session.token_hash, ..of(&ada) };
        assert!(store.start_session_of_identity(&taken, &audit).await.is_err());
        let logged = store.audit_events(&query(10)).await.unwrap();
        assert_eq!(logged.iter().filter(|r| r.event.action == "sign_in.succeeded").count(), 2);
    }

    /// A transaction (PostgreSQL) that has disabled `person`, holding their row until it commits.
    async fn disabling(db: &TestDb, person: &Person) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let Sql::Postgres(pg) = db.sql().await else { unreachable!() };
        let mut disabling = pg.begin().await.unwrap();
        sqlx::query("UPDATE users SET disabled = TRUE WHERE id = $1")
            .bind(person.id().as_uuid())
            .execute(&mut *disabling)
            .await
            .unwrap();
        disabling
    }

    /// A user being disabled while a returning sign-in's statement runs (PostgreSQL; on SQLite
    /// the two are serialised whole): the statement waits for the disabling, reads the user
    /// again and writes nothing. Without its share lock it would not wait (the disabling takes no
    /// lock the foreign key check conflicts with) and would start a session for a disabled user.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_returning_sign_in_racing_a_disable_writes_nothing() {
        let (db, store) = setup(Backend::Postgres).await;
        let ada = sign_up(&store, "ada").await;
        let disabling = disabling(&db, &ada).await;
        let t = now();
        let session = SessionOfIdentity {
            issuer: ada.account.issuer.clone(),
            subject: ada.account.subject.clone(),
            token_hash: hash(),
            device: None,
            authenticated_at: None,
            now: t,
            expires_at: t + TimeDelta::hours(1),
        };
        let started = tokio::spawn({
            let (store, session) = (store.clone(), session.clone());
            async move {
                let audit = NewAuditEvent::new(ActorKind::User, "sign_in.succeeded");
                store.start_session_of_identity(&session, &audit).await
            }
        });
        // Until the sign-in waits for the disabling.
        db.sql().await.until_waiting_for_a_lock("INSERT INTO sessions").await;
        disabling.commit().await.unwrap();
        assert_eq!(started.await.unwrap().unwrap(), None);
        assert!(store.session(&session.token_hash).await.unwrap().is_none());
        assert!(store.audit_events(&query(10)).await.unwrap().is_empty());
    }

    /// The same for a session started for a user found before (a first sign-in, a browser signed
    /// in already), in one statement or in a transaction that ends an earlier session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_of_a_found_user_racing_a_disable_writes_nothing() {
        let (db, store) = setup(Backend::Postgres).await;
        let (ada, cy) = (sign_up(&store, "ada").await, sign_up(&store, "cy").await);
        let earlier = session(&cy, now(), TimeDelta::hours(1));
        store.start_session(&earlier, None, &[]).await.unwrap();
        for replaces in [None, Some(earlier.token_hash)] {
            let disabling = disabling(&db, &ada).await;
            let new = session(&ada, now(), TimeDelta::hours(1));
            let started = tokio::spawn({
                let (store, new) = (store.clone(), new.clone());
                async move {
                    let audit = [NewAuditEvent::new(ActorKind::User, "sign_in.succeeded")];
                    store.start_session(&new, replaces.as_ref(), &audit).await
                }
            });
            db.sql().await.until_waiting_for_a_lock("INSERT INTO sessions").await;
            disabling.commit().await.unwrap();
            assert_eq!(started.await.unwrap().unwrap(), SessionStart::NoUser, "{replaces:?}");
            assert!(store.session(&new.token_hash).await.unwrap().is_none());
            assert!(store.audit_events(&query(10)).await.unwrap().is_empty());
            let enable = format!("UPDATE users SET disabled = FALSE WHERE id = '{}'", ada.id());
            db.sql().await.exec(&enable).await.unwrap();
        }
        assert!(store.session(&earlier.token_hash).await.unwrap().is_some(), "not replaced");
    }

    async fn more_rows_than_one_insert_takes_keep_their_order(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let ada = sign_up(&store, "ada").await;
        let t = now();
        let many: Vec<NewAuditEvent> = (0..17).map(|n| row(&format!("step.{n:02}"), t)).collect();
        store.append_audit_events(&many).await.unwrap();
        // A new session with as many rows (more than one statement takes) writes them all too.
        let signed_in = session(&ada, t, TimeDelta::hours(1));
        assert_eq!(
            store.start_session(&signed_in, None, &many).await.unwrap(),
            SessionStart::Started { replaced: false }
        );
        assert!(store.session(&signed_in.token_hash).await.unwrap().is_some());
        let logged = store.audit_events(&query(40)).await.unwrap();
        let latest_first: Vec<String> = (0..17).rev().map(|n| format!("step.{n:02}")).collect();
        assert_eq!(logged.len(), 34);
        assert_eq!(actions(&logged[..17]), latest_first);
        assert_eq!(actions(&logged[17..]), latest_first);
    }

    async fn a_link_writes_its_audit_row_in_its_transaction_only_when_it_links(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let (ada, bob) = (sign_up(&store, "ada").await, sign_up(&store, "bob").await);
        let link = NewLink { audit: Some(row("identity.linked", now())), ..new_link("ada-elsewhere", now()) };
        assert!(matches!(store.link_identity(ada.id(), &link).await.unwrap(), LinkOutcome::Linked(_)));
        assert_eq!(actions(&store.audit_events(&query(10)).await.unwrap()), ["identity.linked"]);
        // Linked already, to her or to someone else: no link made, so no row.
        assert!(matches!(store.link_identity(ada.id(), &link).await.unwrap(), LinkOutcome::AlreadyLinked(_)));
        let stolen = store.link_identity(bob.id(), &link).await.unwrap();
        assert!(matches!(stolen, LinkOutcome::LinkedToAnotherUser));
        assert_eq!(store.audit_events(&query(10)).await.unwrap().len(), 1);
    }

    async fn audit_rows_are_appended_whole_and_read_latest_first_with_every_filter(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let t0 = now();
        let user = Uuid::now_v7().to_string();
        let disabled = row("user.disabled", t0).target("user", user.clone()).request(Some("req-1".into()));
        let created = row("team.created", t0 + TimeDelta::seconds(1))
            .actor(Some("1".into()), Some("admin_tokens[1]".into()))
            .target("team", "acme")
            .details(serde_json::json!({ "slug": "acme" }));
        let failed =
            NewAuditEvent { at: t0 + TimeDelta::seconds(2), ..NewAuditEvent::new(ActorKind::User, "sign_in.failed") }
                .failed("invalid_state")
                .details(serde_json::json!({ "provider": "local" }));
        let deleted = row("user.deleted", t0 + TimeDelta::seconds(3)).target("user", user.clone());
        store.append_audit_events(&[disabled.clone(), created.clone()]).await.unwrap();
        store.append_audit_events(&[failed.clone(), deleted.clone()]).await.unwrap();
        store.append_audit_events(&[]).await.unwrap();

        let all = store.audit_events(&query(10)).await.unwrap();
        let events: Vec<NewAuditEvent> = all.iter().map(|r| r.event.clone()).collect();
        assert_eq!(events, [deleted, failed, created, disabled], "whole, latest first");
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));

        let by = |q: AuditQuery| {
            let store = store.clone();
            async move { store.audit_events(&AuditQuery { limit: 10, ..q }).await.unwrap() }
        };
        assert_eq!(
            actions(&by(AuditQuery { action: Some("user.disabled".into()), ..query(0) }).await),
            ["user.disabled"]
        );
        assert_eq!(
            actions(&by(AuditQuery { actor: Some("admin_tokens[1]".into()), ..query(0) }).await),
            ["team.created"]
        );
        assert_eq!(actions(&by(AuditQuery { actor: Some("1".into()), ..query(0) }).await), ["team.created"]);
        let on_user = AuditQuery { target_kind: Some("user".into()), target_id: Some(user.clone()), ..query(0) };
        assert_eq!(actions(&by(on_user).await), ["user.deleted", "user.disabled"]);
        assert!(
            by(AuditQuery { target_kind: Some("team".into()), target_id: Some(user), ..query(0) }).await.is_empty()
        );
        let window =
            AuditQuery { since: Some(t0 + TimeDelta::seconds(1)), until: Some(t0 + TimeDelta::seconds(3)), ..query(0) };
        assert_eq!(actions(&by(window).await), ["sign_in.failed", "team.created"], "since included, until not");
        let before = AuditQuery { before: Some(all[1].id), ..query(0) };
        assert_eq!(actions(&by(before).await), ["team.created", "user.disabled"]);
        assert_eq!(actions(&store.audit_events(&query(2)).await.unwrap()), ["user.deleted", "sign_in.failed"]);
        assert!(store.audit_events(&query(0)).await.unwrap().is_empty());
    }

    async fn audit_rows_are_never_updated(backend: Backend) {
        let (db, store) = setup(backend).await;
        store.append_audit_events(&[row("user.disabled", now())]).await.unwrap();
        let sql = db.sql().await;
        for statement in [
            "UPDATE audit_events SET action = 'user.enabled'",
            "UPDATE audit_events SET details = NULL",
            "UPDATE audit_events SET at = at",
        ] {
            let refused = sql.exec(statement).await.expect_err(statement);
            assert!(refused.to_string().contains("append-only"), "{refused}");
        }
        assert_eq!(sql.count("audit_events WHERE action = 'user.disabled'").await, 1);
    }

    async fn audit_rows_past_retention_are_deleted_oldest_first_in_bounded_batches(backend: Backend) {
        let (db, store) = setup(backend).await;
        let t0 = now();
        let old: Vec<NewAuditEvent> =
            (0..2100).map(|i| row("team.created", t0 - TimeDelta::days(400) + TimeDelta::seconds(i))).collect();
        store.append_audit_events(&old).await.unwrap();
        store
            .append_audit_events(&[row("user.disabled", t0 - TimeDelta::days(10)), row("user.enabled", t0)])
            .await
            .unwrap();
        let cutoff = t0 - TimeDelta::days(365);
        assert_eq!(store.delete_audit_events_before(cutoff, 1000).await.unwrap(), 1000);
        let oldest_left = store.audit_events(&query(5000)).await.unwrap().last().unwrap().event.at;
        assert_eq!(oldest_left, t0 - TimeDelta::days(400) + TimeDelta::seconds(1000), "oldest first");
        assert_eq!(store.delete_audit_events_before(cutoff, 1000).await.unwrap(), 1000);
        assert_eq!(store.delete_audit_events_before(cutoff, 1000).await.unwrap(), 100);
        assert_eq!(store.delete_audit_events_before(cutoff, 1000).await.unwrap(), 0);
        assert_eq!(actions(&store.audit_events(&query(10)).await.unwrap()), ["user.enabled", "user.disabled"]);
        assert_eq!(db.sql().await.count("audit_events").await, 2);
    }

    async fn a_signing_key_rotation_writes_its_audit_row_in_its_transaction(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let t0 = now();
        store.insert_signing_key(&signing_key("es-1", SigningAlg::ES256, t0)).await.unwrap();
        assert!(store.audit_events(&query(10)).await.unwrap().is_empty(), "a first key is not a rotation");
        // Published now, signing a minute later: not a rotation made at once.
        let next = SigningKeyRecord {
            signs_from: t0 + TimeDelta::seconds(61),
            ..signing_key("es-2", SigningAlg::ES256, t0 + TimeDelta::seconds(1))
        };
        let retire = Retirement { kid: "es-1", retired_at: next.signs_from, unpublish_at: next.signs_from };
        assert!(store.rotate_signing_key(&retire, &next).await.unwrap());
        // A rotation that loses (the key was retired meanwhile) writes no row.
        assert!(!store.rotate_signing_key(&retire, &signing_key("es-3", SigningAlg::ES256, t0)).await.unwrap());
        let rows = store.audit_events(&query(10)).await.unwrap();
        assert_eq!(actions(&rows), ["keys.rotated"]);
        let event = &rows[0].event;
        assert_eq!((event.actor_kind, event.actor_name.as_deref()), (ActorKind::System, Some("signing_keys")));
        assert_eq!((event.target_kind.as_deref(), event.target_id.as_deref()), (Some("signing_key"), Some("es-2")));
        let details = event.details.as_ref().unwrap();
        assert_eq!((details["alg"].as_str(), details["previous_kid"].as_str()), (Some("ES256"), Some("es-1")));
        assert_eq!(details["at_once"], false);
        // `--now`: the next key signs as it is made, and the row says so.
        let now_key = signing_key("es-4", SigningAlg::ES256, t0 + TimeDelta::seconds(2));
        let retire = Retirement { kid: "es-2", retired_at: now_key.signs_from, unpublish_at: now_key.signs_from };
        assert!(store.rotate_signing_key(&retire, &now_key).await.unwrap());
        let rows = store.audit_events(&query(10)).await.unwrap();
        assert_eq!(rows[0].event.details.as_ref().unwrap()["at_once"], true, "{rows:?}");
    }

    async fn concurrent_appends_keep_every_row_with_distinct_increasing_ids(backend: Backend) {
        let (_db, store) = setup(backend).await;
        concurrently(16, |i| {
            let store = store.clone();
            async move {
                let rows: Vec<NewAuditEvent> = (0..5).map(|_| row(&format!("test.writer_{i}"), now())).collect();
                store.append_audit_events(&rows).await.unwrap();
            }
        })
        .await;
        // Every row, once, following the cursor a page at a time.
        let mut ids = Vec::new();
        let mut before = None;
        loop {
            let page = store.audit_events(&AuditQuery { before, ..query(7) }).await.unwrap();
            if page.is_empty() {
                break;
            }
            before = page.last().map(|r| r.id);
            ids.extend(page.iter().map(|r| r.id));
        }
        assert_eq!(ids.len(), 80);
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "strictly decreasing: no row twice");
        for i in 0..16 {
            let mine = AuditQuery { action: Some(format!("test.writer_{i}")), ..query(10) };
            assert_eq!(store.audit_events(&mine).await.unwrap().len(), 5);
        }
    }
}

// ---- Events of users, connected accounts and sessions; webhook keys (issue 12) -------------------

mod issue_12_events {
    use tessera::store::{SessionEnd, UserChange, WebhookKeys};

    use super::*;

    on_both_backends!(
        user_changes_write_one_user_updated_naming_the_changed_fields,
        concurrent_identical_user_changes_write_one_event,
        profile_changes_write_one_auth_profile_event_each,
        ended_sessions_write_session_revoked_with_their_reason,
        webhook_keys_are_replaced_by_compare_and_swap_and_config_names_are_unique,
    );

    /// The topics and payloads of the outbox, in order.
    async fn events(db: &TestDb) -> Vec<(String, serde_json::Value)> {
        let sql = db.sql().await;
        let topics = sql.texts("SELECT topic FROM outbox_events ORDER BY seq").await;
        let payloads = sql.texts("SELECT CAST(payload AS TEXT) FROM outbox_events ORDER BY seq").await;
        topics.into_iter().zip(payloads.iter().map(|p| serde_json::from_str(p).unwrap())).collect()
    }

    async fn events_since(db: &TestDb, skip: usize) -> Vec<(String, serde_json::Value)> {
        events(db).await.into_iter().skip(skip).collect()
    }

    async fn user_changes_write_one_user_updated_naming_the_changed_fields(backend: Backend) {
        let (db, store) = setup(backend).await;
        let ada = sign_up(&store, "ada").await;
        let start = events(&db).await.len();
        let t = now();
        let rename = UserChange { name: Some(Some("Ada L.".into())), ..UserChange::default() };
        let changed = store.update_user(ada.id(), &rename, t).await.unwrap().updated().unwrap();
        assert!(changed.changed);
        assert_eq!(changed.user.name.as_deref(), Some("Ada L."));
        let again = store.update_user(ada.id(), &rename, t).await.unwrap().updated().unwrap();
        assert_eq!((again.user, again.changed), (changed.user, false), "a no-op");
        let email = Email::parse("ada@new.example.com").unwrap();
        let readdress = UserChange { email: Some(Some(email)), ..UserChange::default() };
        let readdressed = store.update_user(ada.id(), &readdress, t).await.unwrap().updated().unwrap().user;
        assert_eq!(readdressed.email.as_deref(), Some("ada@new.example.com"));
        let verify = UserChange { email_verified: Some(true), disabled: Some(true), ..UserChange::default() };
        assert!(store.update_user(ada.id(), &verify, t).await.unwrap().updated().unwrap().changed);
        assert!(!store.update_user(ada.id(), &verify, t).await.unwrap().updated().unwrap().changed);
        // Another spelling of the same address (its letter case) is stored and stays verified.
        let recase =
            UserChange { email: Some(Some(Email::parse("Ada@new.example.com").unwrap())), ..UserChange::default() };
        let recased = store.update_user(ada.id(), &recase, t).await.unwrap().updated().unwrap().user;
        assert_eq!((recased.email.as_deref(), recased.email_verified), (Some("Ada@new.example.com"), true));
        let unnamed = UserChange { name: Some(None), disabled: Some(false), ..UserChange::default() };
        assert_eq!(store.update_user(ada.id(), &unnamed, t).await.unwrap().updated().unwrap().user.name, None);
        assert_eq!(store.update_user(UserId::generate(), &rename, t).await.unwrap(), UserUpdateOutcome::NotFound);

        let written = events_since(&db, start).await;
        let summary: Vec<(&str, serde_json::Value)> = written
            .iter()
            .map(|(topic, payload)| (topic.as_str(), payload.get("changed").cloned().unwrap_or_default()))
            .collect();
        assert_eq!(
            summary,
            [
                ("user.updated", serde_json::json!(["name"])),
                // A new address is unverified unless the change says otherwise.
                ("user.updated", serde_json::json!(["email", "email_verified"])),
                ("user.updated", serde_json::json!(["email_verified"])),
                ("user.disabled", serde_json::Value::Null),
                ("user.updated", serde_json::json!(["email"])),
                ("user.updated", serde_json::json!(["name"])),
                ("user.enabled", serde_json::Value::Null),
            ]
        );
        assert_eq!(written[0].1["user"]["name"], "Ada L.");
        assert_eq!(written[0].1["user"]["id"], ada.id().as_uuid().to_string());
        assert_eq!(written[1].1["user"]["email"], "ada@new.example.com");
        assert_eq!(written[5].1["user"]["name"], serde_json::Value::Null);

        // Verifying the address of a user who has none is refused under the row's lock, and
        // nothing else the change names is written either.
        let unaddressed = UserChange { email: Some(None), ..UserChange::default() };
        store.update_user(ada.id(), &unaddressed, t).await.unwrap().updated().unwrap();
        let before = events(&db).await.len();
        let verify_none = UserChange { name: Some(Some("Not written".into())), ..verify };
        let refused = store.update_user(ada.id(), &verify_none, t).await.unwrap();
        assert_eq!(refused, UserUpdateOutcome::NoEmailToVerify);
        let user = store.get_user(ada.id()).await.unwrap().unwrap();
        assert_eq!((user.name, user.email, user.email_verified, user.disabled), (None, None, false, false));
        assert_eq!(events(&db).await.len(), before, "no event for a refused change");
    }

    async fn concurrent_identical_user_changes_write_one_event(backend: Backend) {
        let (db, store) = setup(backend).await;
        let ada = sign_up(&store, "ada").await.id();
        let start = events(&db).await.len();
        let changed = concurrently(12, |_| {
            let store = store.clone();
            async move {
                let change = UserChange { name: Some(Some("Same".into())), ..UserChange::default() };
                store.update_user(ada, &change, now()).await.unwrap().updated().unwrap().changed
            }
        })
        .await;
        assert_eq!(changed.iter().filter(|c| **c).count(), 1, "one call changed the name: {changed:?}");
        let written = events_since(&db, start).await;
        assert_eq!(written.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["user.updated"]);
    }

    async fn profile_changes_write_one_auth_profile_event_each(backend: Backend) {
        let (db, store) = setup(backend).await;
        let ada = sign_up(&store, "ada").await;
        let start = events(&db).await.len();
        // Connected (pending → active), then a refresh refused, reconnected, a test failed,
        // reconnected, scopes widened, revoked.
        let app = connected(&store, &ada, "app").await;
        let t = now();
        let owner = Uuid::new_v4();
        let held = secrets_of(&store, app.id).await;
        assert!(store.acquire_refresh_lease(app.id, held.version, &lease(owner, t)).await.unwrap());
        assert!(store.release_refresh_lease(app.id, owner, Some(held.version), t).await.unwrap());
        assert!(!store.release_refresh_lease(app.id, owner, Some(held.version), t).await.unwrap());
        let reconnect = activation(ada.id(), "acct-1", b"access-2", None, t);
        let current = store.profile(app.id).await.unwrap().unwrap();
        assert!(store.activate_profile(app.id, current.version, &reconnect).await.unwrap().is_some());
        assert!(
            store.activate_profile(app.id, current.version, &reconnect).await.unwrap().is_none(),
            "a stale version"
        );
        let tested = secrets_of(&store, app.id).await;
        assert!(store.mark_needs_reauth(app.id, tested.version, ReauthReason::TestFailed, t).await.unwrap());
        assert!(!store.mark_needs_reauth(app.id, tested.version, ReauthReason::TestFailed, t).await.unwrap());
        let current = store.profile(app.id).await.unwrap().unwrap();
        assert!(store.activate_profile(app.id, current.version, &reconnect).await.unwrap().is_some());
        let current = store.profile(app.id).await.unwrap().unwrap();
        let scopes = vec!["repo".to_owned(), "admin:org".to_owned()];
        let widen = change(ada.id(), "App", &current.slug, &scopes, true, t);
        assert_eq!(store.update_profile(app.id, current.version, &widen).await.unwrap(), ProfileUpdate::Updated);
        let current = store.profile(app.id).await.unwrap().unwrap();
        let rename = change(ada.id(), "Renamed", &current.slug, &scopes, false, t);
        assert_eq!(store.update_profile(app.id, current.version, &rename).await.unwrap(), ProfileUpdate::Updated);
        assert!(matches!(store.revoke_profile(app.id, None, t, None).await.unwrap(), Revocation::Revoked(_)));
        assert!(store.revoke_profile(app.id, None, t, None).await.unwrap() == Revocation::NotFound);
        // A pending profile whose scopes widen is not "needs_reauth": no event.
        let pending = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthApp, "later", t)).await;
        let widen = change(ada.id(), "Later", &pending.slug, &scopes, true, t);
        assert_eq!(store.update_profile(pending.id, pending.version, &widen).await.unwrap(), ProfileUpdate::Updated);
        // An env credential connects its profile.
        let env = pending_env(&store, &ada, "env", t).await;
        let meta = env_meta(&["TOKEN"], t);
        let write = CredentialWrite {
            profile: env.id,
            by: ada.id(),
            ciphertext: b"sealed",
            meta: &meta,
            connect_token: None,
            now: t,
            request_id: None,
        };
        assert!(matches!(store.put_profile_credential(&write).await.unwrap(), CredentialOutcome::Stored(_)));

        let written = events_since(&db, start).await;
        let summary: Vec<(&str, String, serde_json::Value)> = written
            .iter()
            .map(|(topic, p)| {
                let detail = p.get("reason").or(p.get("previous_status")).cloned().unwrap_or_default();
                (topic.as_str(), p["profile"]["status"].as_str().unwrap().to_owned(), detail)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("auth_profile.connected", "active".into(), "pending_auth".into()),
                ("auth_profile.needs_reauth", "needs_reauth".into(), "refresh_refused".into()),
                ("auth_profile.connected", "active".into(), "needs_reauth".into()),
                ("auth_profile.needs_reauth", "needs_reauth".into(), "test_failed".into()),
                ("auth_profile.connected", "active".into(), "needs_reauth".into()),
                ("auth_profile.needs_reauth", "needs_reauth".into(), "scopes_widened".into()),
                ("auth_profile.revoked", "revoked".into(), serde_json::Value::Null),
                ("auth_profile.connected", "active".into(), "pending_auth".into()),
            ]
        );
        let first = &written[0].1["profile"];
        assert_eq!(first["id"], app.id.as_uuid().to_string());
        assert_eq!(first["team_id"], ada.team.id.as_uuid().to_string());
        assert_eq!((first["slug"].as_str(), first["connector_key"].as_str()), (Some("app"), Some(CONNECTOR)));
        assert_eq!(written[7].1["profile"]["kind"], "env");
        let text = written.iter().map(|(_, p)| p.to_string()).collect::<String>();
        for secret in ["access-1", "access-2", "refresh-1", "sealed", "acct-1"] {
            assert!(!text.contains(secret), "no credential in a payload: {secret}");
        }
    }

    async fn ended_sessions_write_session_revoked_with_their_reason(backend: Backend) {
        let (db, store) = setup(backend).await;
        let ada = sign_up(&store, "ada").await;
        let t = now();
        let sessions: Vec<NewSession> = (0..4).map(|_| session(&ada, t, TimeDelta::hours(1))).collect();
        for s in &sessions {
            store.start_session(s, None, &[]).await.unwrap();
        }
        let start = events(&db).await.len();
        assert!(store.delete_session(&sessions[0].token_hash, SessionEnd::SignedOut).await.unwrap());
        assert!(!store.delete_session(&sessions[0].token_hash, SessionEnd::SignedOut).await.unwrap());
        assert!(store.delete_session(&sessions[1].token_hash, SessionEnd::Replaced).await.unwrap());
        assert_eq!(store.delete_other_sessions(ada.id(), &sessions[2].token_hash).await.unwrap(), Some(1));
        assert_eq!(store.delete_other_sessions(ada.id(), &sessions[2].token_hash).await.unwrap(), Some(0));
        set_user_disabled(&store, ada.id(), true, t).await.unwrap().unwrap();
        set_user_disabled(&store, ada.id(), true, t).await.unwrap().unwrap();

        let written = events_since(&db, start).await;
        let summary: Vec<(&str, serde_json::Value, serde_json::Value)> = written
            .iter()
            .map(|(topic, p)| (topic.as_str(), p.get("reason").cloned().unwrap_or_default(), p["sessions"].clone()))
            .collect();
        let revoked = |reason: &str, n: u64| ("session.revoked", serde_json::json!(reason), serde_json::json!(n));
        assert_eq!(
            summary,
            [
                revoked("signed_out", 1),
                revoked("replaced", 1),
                revoked("signed_out_elsewhere", 1),
                ("user.disabled", serde_json::Value::Null, serde_json::Value::Null),
                revoked("user_disabled", 1),
            ]
        );
        assert!(written.iter().all(|(t, p)| t != "session.revoked" || p["user_id"] == ada.id().as_uuid().to_string()));
    }

    async fn webhook_keys_are_replaced_by_compare_and_swap_and_config_names_are_unique(backend: Backend) {
        let (_db, store) = setup(backend).await;
        let mut hook = endpoint(&[], now());
        hook.config_name = Some("billing".into());
        store.insert_webhook(&hook).await.unwrap();
        let stored = store.webhook(hook.id).await.unwrap().unwrap();
        assert_eq!((stored.config_name.as_deref(), stored.previous_secret.as_ref()), (Some("billing"), None));

        let t = now();
        let keys = WebhookKeys { secret: b"new", previous: Some(b"old"), previous_until: Some(t), now: t };
        assert!(!store.replace_webhook_secret(hook.id, b"not the key", &keys).await.unwrap(), "compare-and-swap");
        assert!(store.replace_webhook_secret(hook.id, &hook.secret, &keys).await.unwrap());
        assert!(!store.replace_webhook_secret(hook.id, &hook.secret, &keys).await.unwrap(), "once");
        let rotated = store.webhook(hook.id).await.unwrap().unwrap();
        assert_eq!(
            (rotated.secret.as_slice(), rotated.previous_secret.as_deref(), rotated.previous_secret_until),
            (&b"new"[..], Some(&b"old"[..]), Some(t))
        );
        // The key ring's rotation sees both columns.
        let secrets = store.secrets_page(SecretKind::WebhookEndpoints, None, 10).await.unwrap();
        let mut columns: Vec<&str> = secrets.iter().map(|s| s.column).collect();
        columns.sort_unstable();
        assert_eq!(columns, ["previous_secret", "secret"]);
        let previous = secrets.iter().find(|s| s.column == "previous_secret").unwrap();
        assert!(store.replace_secret(previous, b"re-encrypted").await.unwrap());
        assert_eq!(
            store.webhook(hook.id).await.unwrap().unwrap().previous_secret.as_deref(),
            Some(&b"re-encrypted"[..])
        );
        // Once its overlap has ended the previous key is forgotten, once; the current one stays.
        let before = t - chrono::TimeDelta::seconds(1);
        assert_eq!(store.forget_expired_webhook_secrets(before).await.unwrap(), 0, "still overlapping");
        assert_eq!(store.forget_expired_webhook_secrets(t).await.unwrap(), 1);
        assert_eq!(store.forget_expired_webhook_secrets(t).await.unwrap(), 0);
        let forgotten = store.webhook(hook.id).await.unwrap().unwrap();
        assert_eq!(
            (forgotten.secret.as_slice(), forgotten.previous_secret, forgotten.previous_secret_until),
            (&b"new"[..], None, None)
        );

        // A second endpoint of the same configuration name is not inserted (another instance's).
        let mut twin = endpoint(&[], now());
        twin.config_name = Some("billing".into());
        store.insert_webhook(&twin).await.unwrap();
        assert!(store.webhook(twin.id).await.unwrap().is_none());
        // Admin endpoints have no name, and any number of them can exist.
        for _ in 0..2 {
            store.insert_webhook(&endpoint(&[], now())).await.unwrap();
        }
        assert_eq!(store.list_webhooks().await.unwrap().len(), 3);
    }
}

/// A member's personal connected accounts are theirs alone: once they leave the team nobody may
/// use them, so removing them revokes those (tokens wiped, an event each), in the same
/// transaction; a team-wide profile they made stays the team's, and their accounts elsewhere stay.
async fn a_removed_members_personal_accounts_in_the_team_are_revoked(backend: Backend) {
    let (db, store) = setup(backend).await;
    let (ada, bob) = (sign_up(&store, "ada").await, sign_up(&store, "bob").await);
    let t0 = now();
    store.write_member(ada.team.id, None, bob.id(), Role::Member, t0, MemberWrite::Put).await.unwrap();
    let personal = inserted(&store, profile(&ada.team, bob.id(), ProfileKind::OauthAccount, "bobs-github", t0)).await;
    let credentials = activation(bob.id(), "acct-bob", b"access-bob", Some(b"refresh-bob"), t0);
    assert!(store.activate_profile(personal.id, personal.version, &credentials).await.unwrap().is_some());
    let team_wide = inserted(&store, profile(&ada.team, bob.id(), ProfileKind::Env, "bobs-env", t0)).await;
    let at_home = inserted(&store, profile(&bob.team, bob.id(), ProfileKind::OauthAccount, "home", t0)).await;
    let adas = inserted(&store, profile(&ada.team, ada.id(), ProfileKind::OauthAccount, "adas", t0)).await;

    assert_eq!(store.remove_member(ada.team.id, None, bob.id()).await.unwrap(), RemoveOutcome::Removed);
    let revoked = store.profile(personal.id).await.unwrap().unwrap();
    assert_eq!(revoked.status, ProfileStatus::Revoked);
    let secrets = secrets_of(&store, personal.id).await;
    assert_eq!((secrets.access_token, secrets.refresh_token), (None, None), "no token is kept");
    for (kept, status) in [
        (&team_wide, ProfileStatus::Active),
        (&at_home, ProfileStatus::PendingAuth),
        (&adas, ProfileStatus::PendingAuth),
    ] {
        assert_eq!(store.profile(kept.id).await.unwrap().unwrap().status, status, "{}", kept.slug);
    }
    // The team-wide one stays the team's, no longer Bob's: his creator's rights went with him
    // (and do not come back with a later membership).
    assert_eq!(store.profile(team_wide.id).await.unwrap().unwrap().created_by, ada.id());
    assert_eq!(store.profile(at_home.id).await.unwrap().unwrap().created_by, bob.id(), "another team's is his");
    let sql = db.sql().await;
    let events =
        sql.texts("SELECT CAST(payload AS TEXT) FROM outbox_events WHERE topic = 'auth_profile.revoked'").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains("member_removed") && events[0].contains(&personal.id.to_string()), "{events:?}");
}
