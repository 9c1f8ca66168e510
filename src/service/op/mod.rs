//! Tessera as an OpenID Provider for the team's own apps: signing keys, registered clients,
//! grants, and the tokens whose `sub` is the internal user id.

pub mod authorize;
pub mod clients;
pub mod exchange;
pub mod keys;
pub mod provider;
pub mod tokens;
