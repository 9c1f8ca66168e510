//! Services: the rules of Tessera. The HTTP layer calls these after parsing and authorising; they
//! call the store for everything persistent.

pub mod cache;
pub mod check;
pub mod connections;
pub mod issuers;
pub mod jwks;
pub mod keys;
pub mod oauth_flow;
pub mod providers;
pub mod provisioning;
pub mod sessions;
pub mod signin;
pub mod teams;
pub mod tokens;
pub mod validation;

use chrono::{DateTime, SubsecRound, Utc};

/// The current time at the precision the databases keep (microseconds), so that a record
/// returned from a write equals the same record read back.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
