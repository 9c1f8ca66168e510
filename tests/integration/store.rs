//! The store conformance suite: the same stories against SQLite and PostgreSQL, through the
//! `Store` trait, plus the invariants the database itself must enforce.

use std::sync::Arc;

use chrono::{SubsecRound, TimeDelta, Utc};
use tessera::domain::{DisplayName, Email, IdentityId, Issuer, Slug, Subject, TeamId, UserId};
use tessera::service::provisioning::team_plan;
use tessera::store::{CreateOutcome, DataReport, NewAccount, NewEvent, NewTeam, ReadFrom, Store, StoreError};

use crate::helpers::{Backend, TestDb, on_both_backends};

on_both_backends!(
    migrations_apply_once_and_report_status,
    a_created_account_is_found_by_its_identity,
    a_second_account_for_one_identity_writes_nothing,
    concurrent_creates_of_one_identity_have_one_winner,
    a_taken_slug_falls_through_to_the_next_candidate,
    when_every_slug_is_taken_nothing_is_written,
    ensure_default_team_creates_at_most_one_team,
    identity_links_cannot_be_repointed,
    the_database_allows_one_default_team_per_user,
    touching_an_identity_only_moves_forward,
    the_data_report_counts_broken_invariants,
);

fn now() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn account(subject: &str, name: Option<&str>) -> NewAccount {
    let name = DisplayName::parse_optional(name).unwrap();
    let team = team_plan(name.as_ref());
    let user_id = UserId::generate();
    NewAccount {
        user_id,
        identity_id: IdentityId::generate(),
        issuer: Issuer::parse("https://issuer.example.com").unwrap(),
        subject: Subject::parse(subject).unwrap(),
        provider: "test".into(),
        email: Some(Email::parse("store@example.com").unwrap()),
        email_verified: true,
        name: name.map(|n| n.as_str().to_owned()),
        team,
        events: vec![NewEvent {
            id: tessera::domain::EventId::generate(),
            topic: "user.created",
            payload: serde_json::json!({ "user_id": user_id }),
        }],
        now: now(),
    }
}

async fn setup(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    (db, store)
}

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
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(db.sql().await.provisioning_counts().await, [1, 1, 1, 1, 1]);
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
    assert!(store.ensure_default_team(UserId::generate(), &team_plan(None), now()).await.unwrap().is_none());
    let new = account("ensure", None);
    let CreateOutcome::Created { user, team } = store.create_account(&new).await.unwrap() else { panic!() };
    let (existing, created) = store.ensure_default_team(user.id, &team_plan(None), now()).await.unwrap().unwrap();
    assert_eq!((existing, created), (team.clone(), false));

    let sql = db.sql().await;
    sql.exec(&format!("DELETE FROM teams WHERE id = {}", sql.uuid(&team.id.to_string()))).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.ensure_default_team(user.id, &team_plan(None), now()).await }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (team, was_created) = task.await.unwrap().unwrap().unwrap();
        created += usize::from(was_created);
        ids.insert(team.id);
    }
    assert_eq!((created, ids.len()), (1, 1));
    assert_eq!(sql.count("teams").await, 1);
    assert_eq!(sql.count("memberships").await, 1);
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
    assert!(sql.exec(&repoint).await.is_err(), "the database refuses to re-point a link");
    let rekey = format!("UPDATE identities SET subject = 'stolen' WHERE id = {}", sql.uuid(&a.identity_id.to_string()));
    assert!(sql.exec(&rekey).await.is_err(), "the database refuses to change a link's key");
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
