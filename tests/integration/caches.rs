//! The caches of the validation path let go of expired entries on their own, long before the
//! entry limit would push them out: memory follows the recent load, not the total of subjects
//! ever seen.
//!
//! The caches are not observable over HTTP (and the product has no test-only endpoint), so the
//! validation service is assembled here as `Application::build_on` assembles it, from the same
//! configuration, and driven as `/v1/validate` drives it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::config::Config;
use tessera::service::principals::PrincipalCache;
use tessera::service::provisioning::Provisioner;
use tessera::service::teams::{MemberWrite, Teams};
use tessera::service::validation::Validator;
use tessera::upstream::issuers::{IssuerRegistry, outbound_client};
use tessera::upstream::tokens::TokenVerifier;
use tessera_testkit::local_issuer::LocalIssuer;

use crate::helpers::{AUDIENCE, Backend, TestDb, local_issuer_config, on_both_backends};

on_both_backends!(expired_entries_leave_both_validation_caches, refused_changes_purge_nothing);

/// Distinct subjects driven through validation.
const SUBJECTS: usize = 50;

async fn expired_entries_leave_both_validation_caches(backend: Backend) {
    let issuer = LocalIssuer::start().await.unwrap();
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.issuers.push(local_issuer_config(&issuer));
    // One-second lifetimes and a limit far above the load: only the lifetimes can empty them.
    config.cache =
        Config::from_toml("[cache]\nprincipal_ttl_seconds = 1\ntoken_ttl_seconds = 1\nmax_entries = 100000", |_| None)
            .expect("cache settings")
            .cache;

    let store = db.store().await;
    let issuers =
        Arc::new(IssuerRegistry::new(config.issuers.clone(), outbound_client(config.jwks.fetch_timeout), &config.jwks));
    let (principals, tokens) = PrincipalCache::with_token_cache(&config.cache);
    let provisioner = Provisioner::new(store.clone(), issuers.clone(), principals.clone());
    let verifier = TokenVerifier::new(issuers, tokens.clone(), config.cache.token_ttl);
    let validator = Validator::new(
        verifier,
        provisioner,
        store,
        principals.clone(),
        std::sync::Arc::new(tessera::worker::last_seen::LastSeen::new(Duration::from_secs(10))),
    );

    let minted: Vec<String> =
        (0..SUBJECTS).map(|i| issuer.sign("rsa-1", &issuer.claims(&format!("subject-{i}"), AUDIENCE))).collect();
    for token in &minted {
        let validated = validator.validate(token).await.expect("a valid token of a new subject");
        assert!(validated.created, "a first-time subject is provisioned");
    }
    let last = minted.last().unwrap();
    assert!(!validator.validate(last).await.unwrap().created, "the identity exists now");
    assert!(principals.entry_count() >= 1, "the principal cache was filled");
    assert!(!tokens.is_empty(), "the token cache was filled");

    // No more traffic: the entries must still go once their second is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (held_principals, held_tokens) = (principals.entry_count(), tokens.len());
        if held_principals == 0 && held_tokens == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held_principals} principals and {held_tokens} tokens still cached 10 s after a 1 s lifetime"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Emptied by expiry, not broken: the same subjects are served again, from the database.
    let again = validator.validate(&minted[0]).await.expect("validated again");
    assert!(!again.created, "the user was kept; only the cache entry went");
    assert_eq!(principals.entry_count(), 1);
    assert_eq!(tokens.len(), 1);
}

/// A change that is refused (an identity that is not the user's, a member who is not one)
/// changes nothing, and purges nothing: a purged user's next requests read the database, and
/// anyone signed in could otherwise ask for that in a loop. A change that happens purges the
/// user, and no one else.
async fn refused_changes_purge_nothing(backend: Backend) {
    let issuer = LocalIssuer::start().await.unwrap();
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.issuers.push(local_issuer_config(&issuer));
    let store = db.store().await;
    let issuers =
        Arc::new(IssuerRegistry::new(config.issuers.clone(), outbound_client(config.jwks.fetch_timeout), &config.jwks));
    let (principals, tokens) = PrincipalCache::with_token_cache(&config.cache);
    let provisioner = Provisioner::new(store.clone(), issuers.clone(), principals.clone());
    let teams = Teams::new(store.clone(), issuers.clone(), principals.clone());
    let verifier = TokenVerifier::new(issuers, tokens, config.cache.token_ttl);
    let validator = Validator::new(
        verifier,
        provisioner.clone(),
        store,
        principals.clone(),
        std::sync::Arc::new(tessera::worker::last_seen::LastSeen::new(Duration::from_secs(10))),
    );

    let ada = validator.validate(&issuer.sign("rsa-1", &issuer.claims("ada", AUDIENCE))).await.unwrap();
    let bob = validator.validate(&issuer.sign("rsa-1", &issuer.claims("bob", AUDIENCE))).await.unwrap();
    assert_eq!(principals.entry_count(), 2);
    let (ada_id, bob_id) = (ada.principal.user.id, bob.principal.user.id);
    let own_team = tessera::domain::TeamRef::Id(ada.principal.teams[0].id);
    let sign_in = [tessera::domain::Issuer::parse(issuer.issuer()).unwrap()];

    let someone_elses = bob.principal.identity_id;
    assert!(provisioner.unlink_identity(ada_id, someone_elses, &sign_in, None).await.is_err());
    assert!(teams.remove_member(&own_team, Some(ada_id), bob_id).await.is_err(), "bob is no member");
    assert!(teams.remove_member(&own_team, Some(ada_id), ada_id).await.is_err(), "her default team");
    let cached = |subject: &str| {
        let issuer = tessera::domain::Issuer::parse(issuer.issuer()).unwrap();
        principals.get(&issuer, &tessera::domain::Subject::parse(subject).unwrap()).is_some()
    };
    assert!(cached("ada") && cached("bob"), "nothing changed, nothing purged");

    teams.write_member(&own_team, Some(ada_id), bob_id, tessera::domain::Role::Member, MemberWrite::Put).await.unwrap();
    assert!(!cached("bob"), "bob joined: his entry no longer answers");
    assert!(cached("ada"), "hers does");
}
