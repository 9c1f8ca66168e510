//! Logging set-up: `tracing` to stderr, as text or JSON, filtered by `log.filter` (`TESSERA_LOG`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// The level the MCP SDK (`rmcp`) logs at, at most.
const MCP_SDK_FLOOR: &str = "rmcp=warn";

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
///
/// A log sink that goes away (a closed pipe) must never take the server down, so write errors are
/// dropped rather than reported on stderr, which is the very stream that failed.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // The MCP SDK logs whole requests and results at debug and trace level, and the tool's results
    // carry credentials: a filter such as `debug` leaves it at warnings and errors.
    let filter = filter.add_directive(MCP_SDK_FLOOR.parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    let _ = if config.json { builder.json().try_init() } else { builder.try_init() };
}

/// Log capture for unit tests of what is logged.
#[cfg(test)]
pub(crate) mod capture {
    use std::io::Write;
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

    use tracing::subscriber::DefaultGuard;

    /// Tests that capture logs, or emit the events other tests capture, run one at a time:
    /// `tracing` caches per call site whether anyone listens, and a thread-local subscriber set
    /// while another thread first hits the same call site can be missed.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What this thread logs at `info` and above (the default filter) while it is held.
    pub(crate) struct Logs {
        buffer: Buffer,
        _subscriber: DefaultGuard,
        _serial: MutexGuard<'static, ()>,
    }

    /// Starts capturing this thread's logs.
    pub(crate) fn capture() -> Logs {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();
        Logs { buffer, _subscriber: guard, _serial: serial }
    }

    impl Logs {
        /// Everything captured so far.
        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.buffer.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
        }

        /// The captured lines at `level` (`"INFO"`, `"WARN"`, …).
        pub(crate) fn lines(&self, level: &str) -> Vec<String> {
            let marker = format!(" {level} ");
            self.text().lines().filter(|line| line.contains(&marker)).map(str::to_owned).collect()
        }
    }
}
