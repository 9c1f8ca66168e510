//! Tessera's test and benchmark kit: a local OpenID provider that signs tokens for any subject
//! ([`local_issuer`]) and scratch databases ([`ScratchDb`]). It is a dev-dependency of the product
//! and a dependency of the benchmarks, never of the shipped `tessera` binary.

pub mod local_issuer;
mod scratch;

pub use scratch::ScratchDb;
