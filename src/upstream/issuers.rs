//! The registry of issuers whose identities Tessera accepts (the allow-list), each with its
//! validation settings and its shared key cache.

use std::sync::Arc;
use std::time::Duration;

use super::jwks::JwksCache;
use crate::config::{IssuerConfig, JwksConfig};
use crate::domain::Issuer;

/// One allowed issuer.
#[derive(Debug)]
pub struct IssuerEntry {
    /// Its configuration.
    pub config: IssuerConfig,
    /// Its signing keys.
    pub keys: JwksCache,
}

/// The configured issuers, looked up by normalised issuer.
#[derive(Debug, Default)]
pub struct IssuerRegistry {
    entries: Vec<IssuerEntry>,
}

impl IssuerRegistry {
    /// Builds the registry from configuration (already validated and de-duplicated); `http` is
    /// the client that fetches keys.
    pub fn new(issuers: Vec<IssuerConfig>, http: reqwest::Client, jwks: &JwksConfig) -> Self {
        let entries = issuers
            .into_iter()
            .map(|config| IssuerEntry {
                keys: JwksCache::new(config.issuer.clone(), config.jwks_uri.clone(), http.clone(), jwks),
                config,
            })
            .collect();
        Self { entries }
    }

    /// The registry of `config`'s issuers with their own outbound client, for commands that
    /// mostly ask which issuers are allowed (a key is fetched only when a token needs one).
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(config.issuers.clone(), outbound_client(config.jwks.fetch_timeout), &config.jwks)
    }

    /// The entry of `issuer`, if it is allowed.
    pub fn get(&self, issuer: &Issuer) -> Option<&IssuerEntry> {
        self.entries.iter().find(|e| &e.config.issuer == issuer)
    }

    /// Every configured issuer.
    pub fn all(&self) -> impl Iterator<Item = &IssuerEntry> {
        self.entries.iter()
    }

    /// Starts fetching every issuer's keys in the background, so that the first token does not
    /// wait for them. Failures are logged and retried on demand.
    pub fn prefetch(self: &Arc<Self>) {
        // Issuers without audiences only bootstrap users; their tokens are never validated.
        for index in (0..self.entries.len()).filter(|&i| !self.entries[i].config.audiences.is_empty()) {
            let registry = self.clone();
            tokio::spawn(async move {
                let _ = registry.entries[index].keys.keys().await;
            });
        }
    }
}

/// The HTTP client for calls to issuers and providers: bounded time, no redirects (only
/// configured URLs are ever fetched), no proxies, rustls with the trust roots read at the first
/// handshake ([`super::tls`]).
pub fn outbound_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(super::tls::client_config())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("tessera/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client configuration is valid")
}
