//! The server loop: accepts connections and serves the router on each with hyper, within the
//! limits of [`ServerConfig`] — a header-read timeout (a client that never finishes its headers,
//! or never reads a response, is disconnected), a cap on connections open at once, and a
//! shutdown deadline after which connections still open are closed. (`axum::serve` offers none
//! of these.) The body-read timeout is a layer of the router.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::config::ServerConfig;
use crate::error::ErrorChain as _;
use crate::observability::{self, OpenConnection};

/// Descriptors kept for everything but inbound connections: database connections, SQLite's
/// files, outbound requests, listeners.
const OTHER_FILES: u64 = 1024;

/// Raises the process's soft limit on open files, if it is lower, to `limits.max_connections`
/// for each of its `listeners` plus what the rest of the process needs, as far as the hard limit
/// allows (many systems start services with a soft limit of 1024); warns when the hard limit is
/// lower still, since the server would then run out of descriptors before it reached its cap.
/// For the `tessera` binary: a process embedding the server keeps its own limits.
pub fn fit_open_file_limit(limits: &ServerConfig, listeners: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let wanted = (limits.max_connections * listeners) as u64 + OTHER_FILES;
    let mut current = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    if current.current.is_some_and(|soft| soft < wanted) {
        let raised = current.maximum.map_or(wanted, |hard| hard.min(wanted));
        let before = current.current;
        current.current = Some(raised);
        match setrlimit(Resource::Nofile, current) {
            Ok(()) => tracing::debug!(before = before, after = raised, "raised the open-file limit"),
            Err(error) => {
                current.current = before;
                tracing::debug!(error = %error.chain(), "cannot raise the open-file limit");
            }
        }
    }
    if let Some(soft) = current.current.filter(|soft| *soft < wanted) {
        tracing::warn!(
            open_file_limit = soft,
            max_connections = limits.max_connections,
            listeners,
            "the open-file limit is below server.max_connections (per listener) plus {OTHER_FILES}: raise it (LimitNOFILE, ulimit -n) or lower server.max_connections"
        );
    }
}

/// The most a request's line and headers may take (a session cookie and a bearer token take a
/// few KiB; proxies in front allow 8 to 64).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets requests in
/// flight finish within `limits.shutdown_timeout`, and closes what is left. With
/// `limits.max_connections` open, it accepts nothing until one of them closes (an idle one does
/// within `limits.header_read_timeout`): new clients wait in the kernel's listen backlog rather
/// than cost a file descriptor and a task each.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    // A request's line and headers within 64 KiB (431 beyond), not hyper's 400 KiB: a client
    // that opens every connection the cap allows and fills each with headers it never ends
    // would otherwise hold 1.6 GiB.
    http.max_buf_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_warned = None;
    let mut accept_failed_warned = None;
    loop {
        // Reap finished connections, so that the set holds only live ones.
        while connections.try_join_next().is_some() {}
        // At least one: with none, the wait below would return at once, for ever.
        if connections.len() >= limits.max_connections.max(1) {
            observability::record_connection_limit_reached();
            // Once a minute at most: a server held at its cap reaches it again at every close.
            if last_warned.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(60)) {
                last_warned = Some(Instant::now());
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: accepting no more until one closes (server.max_connections)"
                );
            }
            tokio::select! {
                _ = connections.join_next() => continue,
                () = &mut shutdown => break,
            }
        }
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, for instance: wait rather than spin, and say so
                    // once a minute at most, not twenty times a second.
                    if accept_failed_warned.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(60)) {
                        accept_failed_warned = Some(Instant::now());
                        tracing::warn!(error = %error.chain(), "cannot accept a connection (said again in a minute at most)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        stream.set_nodelay(true).ok();
        let stream = StallLimit::new(stream, limits.header_read_timeout);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        let open = OpenConnection::new();
        connections.spawn(async move {
            let _open = open;
            if let Err(error) = connection.await {
                tracing::debug!(error = %error.chain(), "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = connections.len();
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            deadline_s = limits.shutdown_timeout.as_secs(),
            "closing the connections still open at the shutdown deadline"
        );
    } else if open > 0 {
        tracing::debug!(open, "connections finished before the shutdown deadline");
    }
    connections.shutdown().await;
    Ok(())
}

/// A connection's socket whose writes fail once they have made no progress for `limit`: a client
/// that stops reading (a closed receive window) would otherwise hold its connection, and a place
/// under `server.max_connections`, for as long as its kernel answers probes.
struct StallLimit {
    stream: TcpStream,
    limit: Duration,
    /// Running while a write waits for the client to read.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl StallLimit {
    fn new(stream: TcpStream, limit: Duration) -> Self {
        Self { stream, limit, stalled: None }
    }

    /// The answer to a write (or flush, or shutdown) that made progress or failed; a pending one
    /// starts the stall timer, and fails once it runs out.
    fn watch<T>(&mut self, polled: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of the response within the limit",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for StallLimit {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallLimit {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.watch(polled, cx)
    }
}
