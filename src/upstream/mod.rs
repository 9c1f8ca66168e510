//! Upstream: everything about the identity providers and issuers Tessera trusts — the issuer
//! allow-list and its key caches (JWKS), verification of other issuers' tokens, the sign-in
//! provider registry and the OAuth authorization-code flows built on it. Tessera's own identity
//! provider, for downstream apps, is a separate module.

pub mod catalogue;
pub mod issuers;
pub mod jwks;
pub mod oauth_flow;
pub mod providers;
pub mod tls;
pub mod tokens;

/// A provider's error word (RFC 6749's `error`, or a provider's own) as Tessera repeats it in logs
/// and pages: its letters, digits, `_`, `.` and `-`, at most 64 of them — a provider's answer
/// cannot write lines of its own into the logs, nor fill them.
pub fn error_word(error: &str) -> String {
    error.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')).take(64).collect()
}
