//! Tessera: a self-hosted identity broker and user-provisioning service.
//!
//! Layers, from the outside in: [`http`] (parse and authorise), [`service`] (the rules),
//! [`store`] (all SQL, on SQLite or PostgreSQL). [`startup`] wires them together and [`cli`] is
//! what the `tessera` binary runs.

pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod http;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
