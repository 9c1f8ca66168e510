//! Teams as seen from outside: lookups by id or slug, email-domain claims, and home-realm
//! discovery (which sign-in method fits an email).
//!
//! Discovery never looks at users: the answer for a domain is the same whether or not the email
//! has an account. Only verified claims whose issuer is still allowed route to single sign-on.

use std::sync::Arc;

use super::issuers::IssuerRegistry;
use crate::domain::{DomainClaim, DomainName, Email, Issuer, Team, TeamRef};
use crate::error::ErrorCode;
use crate::store::{ClaimOutcome, ReadFrom, Store, StoreError};

/// Why a team operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TeamError {
    /// No team has that id or slug.
    #[error("team not found")]
    TeamNotFound,
    /// The issuer is not on the allow-list.
    #[error("issuer not allowed")]
    IssuerNotAllowed,
    /// Another team claims the domain.
    #[error("the domain is claimed by another team")]
    DomainClaimedByAnotherTeam,
    /// The team does not claim the domain.
    #[error("the team does not claim this domain")]
    DomainNotClaimed,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TeamError {
    /// The public error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            TeamError::TeamNotFound => ErrorCode::TeamNotFound,
            TeamError::IssuerNotAllowed => ErrorCode::IssuerNotAllowed,
            TeamError::DomainClaimedByAnotherTeam => ErrorCode::DomainAlreadyClaimed,
            TeamError::DomainNotClaimed => ErrorCode::NotFound,
            TeamError::Store(StoreError::Unavailable(_)) => ErrorCode::StoreUnavailable,
            TeamError::Store(_) => ErrorCode::InternalError,
        }
    }
}

/// Which sign-in method fits an email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Sign in through the team's identity provider.
    Sso {
        /// The issuer to sign in with.
        issuer: Issuer,
        /// Its configured name.
        provider: String,
    },
    /// Use the default sign-in.
    Default,
}

/// The team service.
#[derive(Debug, Clone)]
pub struct Teams {
    store: Arc<dyn Store>,
    issuers: Arc<IssuerRegistry>,
}

impl Teams {
    /// Creates the service.
    pub fn new(store: Arc<dyn Store>, issuers: Arc<IssuerRegistry>) -> Self {
        Self { store, issuers }
    }

    /// A team by id or slug.
    pub async fn find(&self, team: &TeamRef) -> Result<Team, TeamError> {
        self.store.find_team(team).await?.ok_or(TeamError::TeamNotFound)
    }

    /// Claims `domain` for `team`, routed to `issuer`, or updates the team's claim. Returns the
    /// claim and whether it is new.
    pub async fn claim_domain(
        &self,
        team: &TeamRef,
        domain: DomainName,
        issuer: Issuer,
        verified: bool,
    ) -> Result<(DomainClaim, bool), TeamError> {
        if self.issuers.get(&issuer).is_none() {
            return Err(TeamError::IssuerNotAllowed);
        }
        let team = self.find(team).await?;
        let now = super::now();
        let claim = DomainClaim { domain, team_id: team.id, issuer, verified, created_at: now, updated_at: now };
        match self.store.claim_domain(&claim).await? {
            ClaimOutcome::Created(claim) => Ok((claim, true)),
            ClaimOutcome::Updated(claim) => Ok((claim, false)),
            ClaimOutcome::ClaimedByAnotherTeam => Err(TeamError::DomainClaimedByAnotherTeam),
        }
    }

    /// The domains a team claims.
    pub async fn domains(&self, team: &TeamRef) -> Result<Vec<DomainClaim>, TeamError> {
        let team = self.find(team).await?;
        Ok(self.store.team_domains(team.id).await?)
    }

    /// Releases a team's claim on a domain.
    pub async fn release_domain(&self, team: &TeamRef, domain: &DomainName) -> Result<(), TeamError> {
        let team = self.find(team).await?;
        if self.store.release_domain(team.id, domain).await? { Ok(()) } else { Err(TeamError::DomainNotClaimed) }
    }

    /// Which sign-in method fits `email`.
    pub async fn discover(&self, email: &Email) -> Result<Discovery, StoreError> {
        let Some(claim) = self.store.domain_claim(&email.domain_name(), ReadFrom::Replica).await? else {
            return Ok(Discovery::Default);
        };
        match self.issuers.get(&claim.issuer) {
            Some(entry) if claim.verified => {
                Ok(Discovery::Sso { issuer: claim.issuer, provider: entry.config.name.clone() })
            }
            _ => Ok(Discovery::Default),
        }
    }
}
