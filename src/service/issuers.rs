//! The registry of issuers whose identities Tessera accepts (the allow-list).

use crate::config::IssuerConfig;
use crate::domain::Issuer;

/// The configured issuers, looked up by normalised issuer.
#[derive(Debug, Clone, Default)]
pub struct IssuerRegistry {
    issuers: Vec<IssuerConfig>,
}

impl IssuerRegistry {
    /// Builds the registry from configuration (already validated and de-duplicated).
    pub fn new(issuers: Vec<IssuerConfig>) -> Self {
        Self { issuers }
    }

    /// The configuration of `issuer`, if it is allowed.
    pub fn get(&self, issuer: &Issuer) -> Option<&IssuerConfig> {
        self.issuers.iter().find(|c| &c.issuer == issuer)
    }

    /// Every configured issuer.
    pub fn all(&self) -> &[IssuerConfig] {
        &self.issuers
    }
}
