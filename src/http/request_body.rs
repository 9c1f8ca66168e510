//! Request bodies, for every route: one declaring more than [`MAX_BODY_BYTES`] is refused before
//! a byte of it is read, one still arriving after the body-read timeout is cut off, and a response
//! whose request body was not read to its end announces `Connection: close`.
//!
//! A handler may answer without reading the body (a 404, a 405, a refused credential). hyper then
//! cannot reuse the connection: it closes it once the response is written. Without a
//! `Connection: close` in that response, a client that sends its next request on the same
//! connection sees it reset. Saying so lets every client open a new connection instead.
//!
//! The timeout counts from the handler's first read of the body to its last piece, in all: a
//! client that sends a byte now and then cannot hold a connection (and its memory) for days.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use http_body_util::{Full, Limited};

use super::extract::MAX_BODY_BYTES;

/// The middleware (see the module documentation); its state is the body-read timeout.
pub async fn guard(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING) || declared.is_some_and(|n| n > 0);
    if !has_body {
        return next.run(request).await;
    }
    let ended = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // Too large as declared: the body the handler reads fails at once as over the limit, so
        // that it answers `payload_too_large` in its own format, and the client's is never read
        // (nor a `100 Continue` sent for it).
        drop(body);
        Body::new(Limited::new(Full::new(Bytes::from_static(b"-")), 0))
    } else {
        Body::new(Guarded { inner: body, ended: ended.clone(), timeout, deadline: None })
    };
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !ended.load(Ordering::Acquire) {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A body that must arrive within its timeout, and records when it has been read to its end.
struct Guarded {
    inner: Body,
    ended: Arc<AtomicBool>,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let timeout = this.timeout;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        // What has arrived is taken first: the deadline is for waiting on more.
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.ended.store(true, Ordering::Release);
        }
        if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
            let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "the body took longer than its timeout");
            return Poll::Ready(Some(Err(axum::Error::new(late))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
