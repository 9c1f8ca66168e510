//! Logging set-up: `tracing` to stderr, as text or JSON, filtered by `log.filter` (`TESSERA_LOG`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
///
/// A log sink that goes away (a closed pipe) must never take the server down, so write errors are
/// dropped rather than reported on stderr, which is the very stream that failed.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    let _ = if config.json { builder.json().try_init() } else { builder.try_init() };
}
