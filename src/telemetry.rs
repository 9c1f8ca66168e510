//! Logging set-up: `tracing` to stderr, as text or JSON, filtered by `log.filter` (`TESSERA_LOG`).

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::{Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogConfig;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
///
/// A log sink that goes away (a closed pipe) must never take the server down, so write errors are
/// dropped rather than reported on stderr, which is the very stream that failed.
pub fn init(config: &LogConfig) {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    let layer = match config.json {
        true => layer.json().with_filter(filter(&config.filter)).boxed(),
        false => layer.with_filter(filter(&config.filter)).boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Has every panic logged as one error event, in the current span (a request's id), with its
/// message and location, instead of the standard library's lines of plain text on stderr, which
/// break a JSON log's one object per line and ignore `log.filter`. A caught panic is still
/// answered (a 500, a tool error) or restarted (a worker) where it is caught.
/// Its backtrace comes with it when `RUST_BACKTRACE` asks for one; a filter that drops the event
/// (`TESSERA_LOG=off`, or one naming other targets only) leaves the panic to the standard
/// library's own report, so that no panic goes unsaid.
pub fn log_panics() {
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !tracing::event_enabled!(Level::ERROR) {
            return standard(info);
        }
        let panic = crate::error::panic_message(info.payload());
        let location = info.location().map(|at| format!("{}:{}", at.file(), at.line())).unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => {
                tracing::error!(panic, location, backtrace = %backtrace, "panicked")
            }
            _ => tracing::error!(panic, location, "panicked"),
        }
    }));
}

/// `log.filter` (`info` when it does not parse), with the MCP SDK (`rmcp`) held at warnings and
/// errors whatever it says: the SDK logs whole requests and results at debug and trace level, and
/// the tool's results carry credentials. A separate filter, not a directive of the same
/// `EnvFilter`, because a span directive (`[request]=trace`) enables every event inside the span,
/// whatever the event's target.
fn filter<S: tracing::Subscriber + for<'a> LookupSpan<'a>>(directives: &str) -> impl Filter<S> + use<S> {
    let configured = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    configured.and(filter_fn(|meta| !mcp_sdk_detail(meta) && !database_options(meta)))
}

/// Whether an event is sqlx's reading of PostgreSQL connection options, at any level: it logs a
/// malformed `~/.pgpass` line whole, password included, at a warning (and an unknown URL
/// parameter with its value).
fn database_options(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("sqlx_postgres::options")
}

/// Whether an event or span is the MCP SDK's, below warnings.
fn mcp_sdk_detail(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    (target == "rmcp" || target.starts_with("rmcp::")) && *meta.level() > Level::WARN
}

#[cfg(test)]
mod tests {
    use std::sync::PoisonError;

    use super::*;

    #[test]
    fn the_mcp_sdk_stays_at_warnings_and_sqlx_options_unlogged_even_under_a_span_directive() {
        let buffer = capture::Buffer::default();
        let writer = {
            let buffer = buffer.clone();
            move || buffer.clone()
        };
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer);
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter("info,[request]=trace")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            let _entered = span.enter();
            tracing::trace!(target: "rmcp::service", "sdk-trace-with-a-credential");
            tracing::debug!(target: "rmcp", "sdk-debug-with-a-credential");
            tracing::warn!(target: "rmcp::service", "sdk-warning");
            tracing::trace!(target: "tessera::http", "own-trace");
            tracing::warn!(target: "sqlx_postgres::options::pgpass", "pgpass-line-with-a-credential");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap_or_else(PoisonError::into_inner).clone()).unwrap();
        assert!(text.contains("own-trace"), "the span directive applies: {text}");
        assert!(text.contains("sdk-warning"), "{text}");
        assert!(!text.contains("with-a-credential"), "{text}");
    }
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

    /// A writer into a shared byte buffer.
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(pub(crate) Arc<Mutex<Vec<u8>>>);

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
