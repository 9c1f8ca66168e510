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

/// The tasks [`run_to_end`] started, which shutdown waits for ([`finish_in_flight`]).
static TO_THE_END: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// Runs `work` in a task of its own, so that it goes to its end even if the caller is dropped (a
/// client that hangs up, a timeout, a shutdown's drain closing its connection); a panic in it is
/// resumed here. `None` only when the runtime shut down first. (Here, not in a layer: the
/// services and the upstream key caches use it.) What it logs is logged in the caller's span
/// (the request's id, method and route).
pub(crate) async fn run_to_end<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    match TO_THE_END.spawn(tracing::Instrument::in_current_span(work)).await {
        Ok(done) => Some(done),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => None,
    }
}

/// At shutdown, once requests are drained: waits up to `limit` for the work [`run_to_end`]
/// started (a change cut off with its connection still writes its audit row); false when some
/// was still running.
pub(crate) async fn finish_in_flight(limit: std::time::Duration) -> bool {
    TO_THE_END.close();
    tokio::time::timeout(limit, TO_THE_END.wait()).await.is_ok()
}
