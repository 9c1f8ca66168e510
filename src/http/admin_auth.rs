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
        self.identify(presented).is_some()
    }

    /// Which admin token `presented` is: its position in `admin_tokens` (compared with every
    /// digest, in constant time).
    pub fn identify(&self, presented: &str) -> Option<usize> {
        let digest = sha256(presented.as_bytes());
        self.digests
            .iter()
            .enumerate()
            .fold(None, |found, (index, known)| if constant_time_eq(&digest, known) { Some(index) } else { found })
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// Middleware guarding the admin routes. Runs before any body is read.
pub async fn require_admin(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let identified = match Credentials::read(request.headers()) {
        Ok(credentials) => credentials.admin_token().map(|token| state.admin_tokens.identify(token)),
        Err(error) => {
            state.audit.admin_token_refused(error.code());
            return Err(error);
        }
    };
    match identified {
        None => Err(ApiError::new(
            ErrorCode::MissingCredentials,
            "send an admin token as `Authorization: Bearer <token>` or `X-Admin-Token: <token>`",
        )
        .challenge("Bearer realm=\"tessera-admin\"")),
        Some(Some(index)) => {
            request.extensions_mut().insert(AdminActor { index });
            Ok(next.run(request).await)
        }
        Some(None) => {
            state.audit.admin_token_refused(ErrorCode::InvalidCredentials);
            Err(ApiError::new(ErrorCode::InvalidCredentials, "the admin token is not valid")
                .challenge("Bearer realm=\"tessera-admin\", error=\"invalid_token\""))
        }
    }
}

/// The admin token a request was authenticated with, as the audit log names it: by position in
/// `admin_tokens`, never by value or digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminActor {
    /// The token's position in `admin_tokens` (from 0).
    pub index: usize,
}

impl AdminActor {
    /// The actor id in the audit log: the position, `"0"`.
    pub fn id(self) -> String {
        self.index.to_string()
    }

    /// The actor name in the audit log: `admin_tokens[0]`.
    pub fn name(self) -> String {
        format!("admin_tokens[{}]", self.index)
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
        assert_eq!(tokens.identify("first-token-0123456789"), Some(0));
        assert_eq!(tokens.identify("second-token-0123456789"), Some(1));
        assert_eq!(tokens.identify("third-token-0123456789"), None);
        assert!(!tokens.verify("first-token-012345678"));
        assert!(!tokens.verify(""));
        assert!(!format!("{tokens:?}").contains("token-0123"));
    }
}
