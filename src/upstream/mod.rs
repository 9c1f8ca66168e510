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
