//! Tessera as an OpenID Provider: the HTTP side.

pub mod client_auth;
pub mod clients;
