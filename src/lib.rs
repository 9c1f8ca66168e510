//! Tessera: a self-hosted identity broker and user-provisioning service.
//!
//! Layers, from the outside in: [`http`] (parse and authorise), [`service`] (the rules), with
//! [`upstream`] beside it (the providers and issuers Tessera trusts), [`store`] (all SQL, on
//! SQLite or PostgreSQL), and [`worker`] for background loops. [`startup`] wires them together
//! and [`cli`] is what the `tessera` binary runs.

pub mod cache;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod http;
pub mod mcp;
pub mod observability;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod worker;
