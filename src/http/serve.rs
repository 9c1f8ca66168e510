//! The server loop: accepts connections and serves the router on each with hyper, within the
//! limits of [`ServerConfig`] — a header-read timeout (a client that never finishes its headers
//! is disconnected), and a shutdown deadline after which connections still open are closed.
//! (`axum::serve` offers neither.) The body-read timeout is a layer of the router.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::ServerConfig;

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets requests in
/// flight finish within `limits.shutdown_timeout`, and closes what is left.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Reap finished connections, so that the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, for instance: wait rather than spin.
                    tracing::warn!(error = %error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        stream.set_nodelay(true).ok();
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
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
