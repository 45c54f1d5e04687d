//! Client connections, for the data and admin listeners alike: a cap on how many are open,
//! and an end to connections that hold nothing open.
//!
//! A connection is idle while it has no request in flight; a response counts until its
//! body has been sent. HTTP/2 pings and SETTINGS are answered by hyper but are not
//! requests, so a client that sends only those is closed like any idle one. Closing is
//! graceful: HTTP/1.1 ends after the response under way, HTTP/2 sends GOAWAY.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long an idle connection told to close may take to do so before it is dropped.
const IDLE_DRAIN: Duration = Duration::from_secs(1);

/// A cap on connections open at once across the listeners that share it.
#[derive(Debug)]
pub(crate) struct ConnectionCap {
    open: AtomicUsize,
    max: usize,
}

/// A place under a [`ConnectionCap`], given back when dropped.
#[derive(Debug)]
pub(crate) struct CapSlot(Arc<ConnectionCap>);

impl ConnectionCap {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A place, unless `max` connections are open.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<CapSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| CapSlot(Arc::clone(self)))
    }
}

impl Drop for CapSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Requests in flight on one connection, and since when none has been: atomics that a
/// request touches twice, and that the connection's idle timer reads when it fires, so
/// that tracking costs the request path no lock and no wake-up.
#[derive(Debug)]
pub(crate) struct Activity {
    open: AtomicU32,
    /// Milliseconds from `base` to when the last request ended (or the connection began).
    idle_since: AtomicU64,
    base: Instant,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            base: Instant::now(),
        })
    }

    /// Counts a request until the guard drops.
    pub(crate) fn request(self: &Arc<Self>) -> RequestOpen {
        self.open.fetch_add(1, Ordering::AcqRel);
        RequestOpen(Arc::clone(self))
    }

    /// Resolves once the connection has had no request in flight for `timeout`. It
    /// sleeps until the earliest moment that can be true and looks again: once per
    /// `timeout` while requests come and go.
    async fn idle_for(&self, timeout: Duration) {
        let mut at = self.base + timeout;
        loop {
            tokio::time::sleep_until(at).await;
            // `open` first: while a request is in flight `idle_since` is stale.
            if self.open.load(Ordering::Acquire) > 0 {
                at = Instant::now() + timeout;
                continue;
            }
            let since = self.idle_since.load(Ordering::Acquire);
            let idle_until = self.base + Duration::from_millis(since) + timeout;
            if idle_until <= Instant::now() {
                return;
            }
            at = idle_until;
        }
    }
}

/// A request counted on its connection; the count drops with it.
#[derive(Debug)]
pub(crate) struct RequestOpen(Arc<Activity>);

impl Drop for RequestOpen {
    fn drop(&mut self) {
        let activity = &self.0;
        let elapsed = u64::try_from(activity.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since.store(elapsed, Ordering::Release);
        activity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A response body that keeps its request counted on the connection until it ends.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        open: Option<RequestOpen>,
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.open.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `response`, whose request stays counted on its connection until its body ends.
pub(crate) fn counted<B>(response: Response<B>, open: RequestOpen) -> Response<Counted<B>> {
    let (parts, inner) = response.into_parts();
    Response::from_parts(
        parts,
        Counted {
            inner,
            open: Some(open),
        },
    )
}

/// Serves one client connection until it ends: on its own, at the gateway's stop
/// (gracefully), or after `idle` with no request in flight (gracefully).
pub(crate) async fn serve<IO, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: IO,
    service: S,
    activity: &Activity,
    idle: Duration,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), Box<dyn StdError + Send + Sync>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(connection);
    let mut closing = *stopped.borrow();
    if closing {
        connection.as_mut().graceful_shutdown();
    }
    // Set once an idle connection was told to close: HTTP/2's graceful close waits for
    // the client to acknowledge a PING, which a client that holds connections open on
    // purpose never does.
    let mut drained_by: Option<Instant> = None;
    let idle_timer = activity.idle_for(idle);
    tokio::pin!(idle_timer);
    loop {
        tokio::select! {
            biased;
            ended = connection.as_mut() => return ended,
            _ = stopped.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = &mut idle_timer, if !closing => {
                closing = true;
                drained_by = Some(Instant::now() + IDLE_DRAIN);
                tracing::debug!(?idle, "closing an idle client connection");
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(drained_by.unwrap_or_else(Instant::now)), if drained_by.is_some() => {
                return Ok(());
            }
        }
    }
}
