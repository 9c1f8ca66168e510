//! Rules that must not depend on the database's locale. The email rule (`Email::key`: ASCII case
//! folding only) is Tessera's, not the database's: the same on SQLite, on PostgreSQL with
//! `--no-locale`, and on PostgreSQL with a UTF-8 locale, where `lower()` folds Unicode and once
//! made different mailboxes auto-link to one account. Listings are ordered by bytes, not by the
//! database's collation.

use reqwest::StatusCode;
use tessera::domain::Email;
use tessera_testkit::local_issuer::StubUser;

use crate::helpers::{Backend, TestDb, identity, json as body, on_both_backends, on_utf8_cluster};
use crate::signin::{self, Browser};
use crate::store;

on_both_backends!(auto_linking_folds_ascii_case_only, lookups_by_email_fold_ascii_case_only);

/// The same stories on the UTF-8 cluster, and the sign-in linking stories with them.
mod postgres_utf8 {
    use super::*;

    macro_rules! on_utf8 {
        ($($path:path => $name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                on_utf8_cluster($path(Backend::Postgres)).await;
            }
        )*};
    }

    on_utf8! {
        super::auto_linking_folds_ascii_case_only => auto_linking_folds_ascii_case_only,
        super::lookups_by_email_fold_ascii_case_only => lookups_by_email_fold_ascii_case_only,
        signin::linking_attaches_an_identity_and_never_steals_one => linking_attaches_an_identity_and_never_steals_one,
        signin::a_known_email_is_not_linked_silently => a_known_email_is_not_linked_silently,
        signin::automatic_linking_needs_trust_and_verified_emails => automatic_linking_needs_trust_and_verified_emails,
        store::domains_and_issuers_are_listed_in_byte_order => domains_and_issuers_are_listed_in_byte_order,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_utf8_cluster_really_folds_unicode_in_lower() {
        on_utf8_cluster(async {
            let db = TestDb::new(Backend::Postgres).await;
            let sql = db.sql().await;
            // Without this, the stories above would prove nothing about such clusters.
            assert_eq!(sql.count("(SELECT 1 WHERE lower('\u{130}SAAC') = 'isaac') s").await, 1);
        })
        .await;
    }
}

const ISAAC: &str = "isaac.x@corp.example";
const KATE: &str = "kate.x@corp.example";

async fn lookups_by_email_fold_ascii_case_only(backend: Backend) {
    let w = signin::world(backend).await;
    for (subject, email) in [("isaac", ISAAC), ("kate", KATE)] {
        let mut claim = identity(subject, email, None);
        claim["email_verified"] = true.into();
        body(w.app.bootstrap(&claim).await, 201).await;
    }
    let store = w.app.db.store().await;
    let find = |email: &str| {
        let store = store.clone();
        let email = Email::parse(email).unwrap();
        async move { store.users_with_email(&email).await.unwrap().len() }
    };
    assert_eq!(find("ISAAC.X@Corp.Example").await, 1, "ASCII case is folded");
    assert_eq!(find("\u{130}saac.x@corp.example").await, 0, "capital dotted I is not i");
    assert_eq!(find("\u{212A}ate.x@corp.example").await, 0, "the Kelvin sign is not k");

    // The database computes the key (a generated column) by the same rule as `Email::key`.
    let odd = "\u{130}SAAC.X@Corp.Example";
    body(w.app.bootstrap(&identity("isaac-odd", odd, None)).await, 201).await;
    let key = Email::parse(odd).unwrap().key();
    assert_eq!(key, "\u{130}saac.x@corp.example");
    let sql = w.app.db.sql().await;
    assert_eq!(sql.count(&format!("users WHERE email_key = '{key}'")).await, 1, "the same key in SQL");
    assert_eq!(find(odd).await, 1);
    assert_eq!(find("isaac.x@corp.example").await, 1, "still only Isaac's own account");
}

async fn auto_linking_folds_ascii_case_only(backend: Backend) {
    let w = signin::world_with(backend, |config, _| {
        let local = config.providers.iter_mut().find(|p| p.name == "local").unwrap();
        local.trusted_email_verification = true;
        local.auto_link_by_email = true;
    })
    .await;
    let mut users = Vec::new();
    for (subject, email) in [("isaac-admin", ISAAC), ("kate-admin", KATE)] {
        let mut claim = identity(subject, email, None);
        claim["email_verified"] = true.into();
        users.push(body(w.app.bootstrap(&claim).await, 201).await["user_id"].clone());
    }

    // Other mailboxes, equal to the accounts' only under Unicode case folding: new users.
    for (subject, email) in [("isaac-u", "\u{130}saac.x@corp.example"), ("kate-u", "\u{212A}ate.x@corp.example")] {
        w.issuer.set_next_user(StubUser::new(subject, email));
        let mut browser = Browser::new();
        assert_eq!(browser.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
        let me = body(browser.me(&w.app).await, 200).await;
        assert!(!users.contains(&me["id"]), "{email} must not sign in as an existing account");
    }
    assert_eq!(w.app.db.sql().await.count("users").await, 4);

    // ASCII case alone is folded: this one links to Isaac's account.
    w.issuer.set_next_user(StubUser::new("isaac-upper", "ISAAC.X@corp.example"));
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(body(browser.me(&w.app).await, 200).await["id"], users[0]);
    assert_eq!(w.app.db.sql().await.count("users").await, 4);
}
