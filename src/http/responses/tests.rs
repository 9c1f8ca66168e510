//! Each response serialises exactly as the domain record or `json!` value it replaced.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::{Value, json};

use super::*;
use crate::domain::{
    AuthProfile, DomainClaim, DomainName, Identity, IdentityId, Issuer, Principal, ProfileId, ProfileKind,
    ProfileStatus, Role, Slug, Subject, Team, TeamId, TeamMembership, TeamRole, User, UserId, UserProfile, now,
};
use crate::service::auth_profiles::{AccessToken, ConnectLink, Created, LinkType};
use crate::service::teams::Discovery;
use crate::service::validation::{IssuedFor, Validated};
use crate::upstream::tokens::VerifiedToken;

fn value(body: impl Serialize) -> Value {
    serde_json::to_value(body).unwrap()
}

fn issuer() -> Issuer {
    Issuer::parse("https://issuer.example.com").unwrap()
}

fn user(email: Option<&str>, name: Option<&str>) -> User {
    User {
        id: UserId::generate(),
        email: email.map(str::to_owned),
        email_verified: email.is_some(),
        name: name.map(str::to_owned),
        disabled: name.is_none(),
        created_at: now(),
        updated_at: now(),
    }
}

fn team(slug: &str) -> Team {
    Team { id: TeamId::generate(), slug: Slug::parse(slug).unwrap(), name: format!("Team {slug}"), created_at: now() }
}

const ROLES: [Role; 3] = [Role::Owner, Role::Admin, Role::Member];

#[test]
fn users_and_profiles_serialise_as_their_records() {
    for user in [user(Some("a@example.com"), Some("Ann")), user(None, None)] {
        assert_eq!(value(UserResponse::from(user.clone())), value(&user));
        let identity = Identity {
            id: IdentityId::generate(),
            user_id: user.id,
            issuer: issuer(),
            subject: Subject::parse("sub-1").unwrap(),
            provider: "oidc".to_owned(),
            email: user.email.clone(),
            email_verified: user.email_verified,
            created_at: now(),
            last_seen_at: now(),
        };
        let teams = ROLES
            .iter()
            .enumerate()
            .map(|(i, &role)| TeamMembership { team: team(&format!("t{i}")), role, is_default: i == 0 })
            .collect();
        let with = UserProfile {
            user: user.clone(),
            primary_identity_id: Some(identity.id),
            identities: vec![identity],
            teams,
        };
        let without = UserProfile { user, identities: vec![], primary_identity_id: None, teams: vec![] };
        for profile in [with, without] {
            assert_eq!(value(UserProfileResponse::from(profile.clone())), value(&profile));
        }
    }
}

#[test]
fn teams_members_and_domain_claims_serialise_as_before() {
    let t = team("acme");
    assert_eq!(value(TeamResponse::from(t.clone())), value(&t));
    let user = UserId::generate();
    assert_eq!(
        value(BootstrapResponse::new(user, true, t.clone())),
        json!({ "user_id": user, "created": true, "team": { "id": t.id, "slug": t.slug, "name": t.name } })
    );
    for role in ROLES {
        assert_eq!(value(MemberResponse::new(user, role)), json!({ "user_id": user, "role": role }));
    }
    let claims: Vec<DomainClaim> = [true, false]
        .map(|verified| DomainClaim {
            domain: DomainName::parse("example.com").unwrap(),
            team_id: t.id,
            issuer: issuer(),
            verified,
            created_at: now(),
            updated_at: now(),
        })
        .into();
    assert_eq!(value(DomainClaimResponse::from(claims[0].clone())), value(&claims[0]));
    assert_eq!(value(DomainClaimListResponse::from(claims.clone())), value(&claims));
    assert_eq!(value(DomainClaimListResponse::from(Vec::new())), json!([]));
}

#[test]
fn validation_discovery_providers_and_health_serialise_as_before() {
    let user = user(Some("a@example.com"), None);
    let teams: Vec<TeamRole> =
        ROLES.iter().map(|&role| TeamRole { id: TeamId::generate(), slug: Slug::parse("t").unwrap(), role }).collect();
    let token = VerifiedToken {
        issuer: issuer(),
        provider: "oidc".to_owned(),
        jit: true,
        subject: Subject::parse("sub-1").unwrap(),
        email: None,
        email_verified: false,
        name: None,
        expires_at: now(),
        audiences: vec!["api".into()],
        acts_on_api: true,
    };
    let principal = Principal { identity_id: IdentityId::generate(), last_seen_at: now(), user, teams };
    let validated = Validated {
        token: Arc::new(token.clone()),
        principal: Arc::new(principal.clone()),
        created: true,
        issued_for: None,
    };
    assert_eq!(
        value(ValidateResponse::from(validated)),
        json!({
            "user_id": principal.user.id,
            "created": true,
            "issuer": token.issuer,
            "subject": token.subject,
            "email": principal.user.email,
            "email_verified": principal.user.email_verified,
            "teams": principal.teams,
            "expires_at": token.expires_at,
        })
    );
    let issued_for = IssuedFor {
        audience: "notes".into(),
        client_id: "notes".into(),
        scope: "openid email".into(),
        auth_time: None,
        act: None,
    };
    let own = Validated {
        token: Arc::new(token.clone()),
        principal: Arc::new(principal.clone()),
        created: false,
        issued_for: Some(issued_for),
    };
    assert_eq!(
        value(ValidateResponse::from(own))["issued_for"],
        json!({ "audience": "notes", "client_id": "notes", "scope": "openid email" })
    );

    let domain = DomainName::parse("example.com").unwrap();
    let sso = Discovery::Sso { issuer: issuer(), provider: "corp".to_owned() };
    assert_eq!(
        value(DiscoverResponse::new(sso, domain.clone())),
        json!({ "method": "sso", "issuer": issuer(), "provider": "corp", "domain": domain })
    );
    assert_eq!(
        value(DiscoverResponse::new(Discovery::Default, domain.clone())),
        json!({ "method": "default", "domain": domain })
    );

    let providers = ProvidersResponse { providers: vec![ProviderResponse::new("github")] };
    assert_eq!(
        value(providers),
        json!({ "providers": [{ "name": "github", "login_url": "/auth/login?provider=github" }] })
    );
    assert_eq!(value(HealthResponse { status: HealthStatus::Ok }), json!({ "status": "ok" }));
    assert_eq!(value(HealthResponse { status: HealthStatus::Ready }), json!({ "status": "ready" }));
}

fn profiles() -> Vec<AuthProfile> {
    let statuses =
        [ProfileStatus::PendingAuth, ProfileStatus::Active, ProfileStatus::NeedsReauth, ProfileStatus::Revoked];
    ProfileKind::ALL
        .into_iter()
        .flat_map(|kind| statuses.map(|status| (kind, status)))
        .enumerate()
        .map(|(i, (profile_kind, status))| {
            let connected = i % 2 == 0;
            AuthProfile {
                id: ProfileId::generate(),
                team_id: TeamId::generate(),
                slug: Slug::parse(&format!("p{i}")).unwrap(),
                connector_key: "github-issues".to_owned(),
                profile_kind,
                provider: "github".to_owned(),
                status,
                created_by: UserId::generate(),
                display_name: "GitHub".to_owned(),
                scopes: if connected { vec!["repo".to_owned()] } else { vec![] },
                granted_scopes: connected.then(|| vec!["repo".to_owned()]),
                is_default: i % 3 == 0,
                upstream_account_id: connected.then(|| "42".to_owned()),
                access_token_expires_at: connected.then(now),
                pending_expires_at: (!connected).then(now),
                version: i as i64,
                created_at: now(),
                updated_at: now(),
                credential: None,
            }
        })
        .collect()
}

#[test]
fn auth_profiles_serialise_as_before() {
    let all = profiles();
    for profile in &all {
        assert_eq!(value(AuthProfileResponse::from(profile.clone())), value(profile));
    }
    assert_eq!(value(AuthProfileListResponse::from(all.clone())), json!({ "auth_profiles": all }));

    let profile = all[0].clone();
    let link = ConnectLink {
        url: SecretString::from("https://tessera.example.com/connect/t/oauth/start"),
        expires_at: now(),
        auth_type: LinkType::OAuth,
    };
    let created = Created { profile: profile.clone(), link: Some(link.clone()), created: true };
    let expected = json!({
        "auth_profile": profile,
        "connect_url": "https://tessera.example.com/connect/t/oauth/start",
        "connect_expires_at": link.expires_at,
        "auth_type": "oauth",
    });
    assert_eq!(value(AuthProfileWithLinkResponse::from(created)), expected);
    assert_eq!(value(AuthProfileWithLinkResponse::from((profile.clone(), link))), expected);
    let created = Created { profile: profile.clone(), link: None, created: false };
    assert_eq!(
        value(AuthProfileWithLinkResponse::from(created)),
        json!({ "auth_profile": profile, "connect_url": null, "connect_expires_at": null, "auth_type": null })
    );

    for expires_at in [Some(now()), None] {
        let token = AccessToken {
            token: SecretString::from("at-secret"),
            expires_at,
            refreshed: expires_at.is_some(),
            version: None,
        };
        let response = AuthProfileTokenResponse::from(token);
        assert!(!format!("{response:?}").contains("at-secret"));
        assert_eq!(
            value(response),
            json!({ "access_token": "at-secret", "token_type": "Bearer", "expires_at": expires_at, "refreshed": expires_at.is_some() })
        );
    }
}
