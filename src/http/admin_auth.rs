//! Admin API authentication: `Authorization: Bearer <token>` or `X-Admin-Token: <token>`, read
//! through [`Credentials`] (a repeated or disagreeing credential is a 400).
//!
//! Only SHA-256 digests of the configured tokens are kept in memory. A presented token is hashed
//! and compared with every digest in constant time, without stopping at the first match.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};

use super::AppState;
use super::credentials::Credentials;
use super::problem::ApiError;
use crate::crypto::{constant_time_eq, sha256};
use crate::error::ErrorCode;

/// Digests of the admin tokens.
#[derive(Clone, Default)]
pub struct AdminTokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} configured)", self.digests.len())
    }
}

impl AdminTokens {
    /// Hashes the configured tokens; the plaintexts are not kept.
    pub fn new(tokens: &[SecretString]) -> Self {
        Self { digests: tokens.iter().map(|t| sha256(t.expose_secret().as_bytes())).collect() }
    }

    /// Whether `presented` is one of the admin tokens.
    pub fn verify(&self, presented: &str) -> bool {
        let digest = sha256(presented.as_bytes());
        self.digests.iter().fold(false, |found, known| found | constant_time_eq(&digest, known))
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// Middleware guarding the admin routes. Runs before any body is read.
pub async fn require_admin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let verified = Credentials::read(request.headers())?.admin_token().map(|token| state.admin_tokens.verify(token));
    match verified {
        None => Err(ApiError::new(
            ErrorCode::MissingCredentials,
            "send an admin token as `Authorization: Bearer <token>` or `X-Admin-Token: <token>`",
        )
        .challenge("Bearer realm=\"tessera-admin\"")),
        Some(true) => Ok(next.run(request).await),
        Some(false) => Err(ApiError::new(ErrorCode::InvalidCredentials, "the admin token is not valid")
            .challenge("Bearer realm=\"tessera-admin\", error=\"invalid_token\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_verify() {
        let tokens = AdminTokens::new(&[
            SecretString::from("first-token-0123456789"),
            SecretString::from("second-token-0123456789"),
        ]);
        assert!(tokens.verify("first-token-0123456789"));
        assert!(tokens.verify("second-token-0123456789"));
        assert!(!tokens.verify("first-token-012345678"));
        assert!(!tokens.verify(""));
        assert!(!format!("{tokens:?}").contains("token-0123"));
    }
}
