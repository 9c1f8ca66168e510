//! Services: the rules of Tessera. The HTTP layer calls these after parsing and authorising; they
//! call the store for everything persistent.

pub mod audit;
pub mod auth_profiles;
pub mod cache_sync;
pub mod check;
pub mod coalesce;
pub mod import;
pub mod keys;
pub mod op;
pub mod principals;
pub mod profile_actions;
pub mod profile_credentials;
pub mod provisioning;
pub mod sessions;
pub mod signin;
pub mod teams;
pub mod users;
pub mod validation;
pub mod webhooks;

pub(crate) use crate::domain::now;
