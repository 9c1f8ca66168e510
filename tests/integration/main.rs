//! The integration suite: the real server over real HTTP on 127.0.0.1 (port 0), against real
//! SQLite files and a real PostgreSQL, and the store conformance suite on both backends.

mod helpers;

mod admin_listing;
mod audit;
mod bootstrap;
mod cache_sync;
mod caches;
mod catalogue;
mod cli;
mod connections;
mod credentials;
mod discovery;
mod e2e_oidc;
mod errors;
mod github;
mod import;
mod jwks_outage;
mod last_seen;
mod locale;
mod mcp;
mod metrics;
mod op_clients;
mod op_flow;
mod op_third_party;
mod openapi;
mod pages;
mod profile_actions;
mod profile_credentials;
mod readiness;
mod replica;
mod server;
mod signin;
mod signing_keys;
mod store;
mod token_exchange;
mod validation;
mod webhook_events;
mod webhooks;
