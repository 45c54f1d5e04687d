//! Bodies on both sides of the proxy. Responses stream through frame by frame: a frame
//! the upstream sends is handed to the client as soon as it arrives, never collected.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use abgate_router::{InFlight, Slot};
use abgate_telemetry::ResponseFlags;

use crate::client_body::ClientBody;
use crate::meter::Meter;

/// The error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A response body: a complete buffer, or an upstream stream that may be cut at the
    /// route's deadline, holding its endpoint's in-flight count until it ends.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// A buffered body (errors, direct responses).
        Full { data: Option<Bytes> },
        /// An upstream body.
        Stream {
            #[pin]
            inner: Incoming,
            #[pin]
            deadline: Option<Sleep>,
            in_flight: Option<InFlight>,
            slot: Option<Slot>,
            meter: Option<Meter>,
        },
    }
}

impl ProxyBody {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ProxyBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full { data: None }
    }

    /// An upstream body that is cut at `deadline` with an error (so the client's stream is
    /// reset, as Envoy resets a response its route timeout interrupts) and counts as in
    /// flight (at its endpoint, and in its cluster's circuit breakers) until it ends.
    pub fn stream(
        inner: Incoming,
        deadline: Option<Instant>,
        in_flight: Option<InFlight>,
        slot: Option<Slot>,
    ) -> Self {
        ProxyBody::Stream {
            inner,
            deadline: deadline.map(tokio::time::sleep_until),
            in_flight,
            slot,
            meter: None,
        }
    }

    /// Measures this streamed body as it is forwarded; a complete body gets its meter
    /// finished at once, as it will never be polled to an end.
    pub fn metered(self, mut meter: Meter) -> Self {
        match self {
            ProxyBody::Stream {
                inner,
                deadline,
                in_flight,
                slot,
                ..
            } if !inner.is_end_stream() => ProxyBody::Stream {
                inner,
                deadline,
                in_flight,
                slot,
                meter: Some(meter),
            },
            other => {
                if let ProxyBody::Full { data: Some(data) } = &other {
                    meter.data(data);
                }
                meter.finish();
                other
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Stream {
                mut inner,
                deadline,
                in_flight,
                slot,
                meter,
            } => {
                if let Some(deadline) = deadline.as_pin_mut() {
                    if deadline.poll(cx).is_ready() {
                        in_flight.take();
                        slot.take();
                        if let Some(mut m) = meter.take() {
                            m.flag(ResponseFlags::UT);
                            m.finish();
                        }
                        // An error, not an end: the server then resets the stream (HTTP/2)
                        // or closes the connection before the last chunk (HTTP/1.1), so
                        // the client can tell a cut response from a complete one.
                        return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "route timeout reached while streaming the response",
                        )))));
                    }
                }
                match inner.as_mut().poll_frame(cx) {
                    Poll::Ready(None) => {
                        in_flight.take();
                        slot.take();
                        if let Some(m) = meter.take() {
                            m.finish();
                        }
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        in_flight.take();
                        slot.take();
                        if let Some(mut m) = meter.take() {
                            m.flag(ResponseFlags::UC);
                            m.finish();
                        }
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(m), Some(data)) = (meter.as_mut(), frame.data_ref()) {
                            m.data(data);
                        }
                        if inner.is_end_stream() {
                            in_flight.take();
                            slot.take();
                            if let Some(m) = meter.take() {
                                m.finish();
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data } => data.is_none(),
            ProxyBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Stream {
                inner,
                deadline: None,
                ..
            } => inner.size_hint(),
            // A body that may be cut short has no exact size to promise.
            ProxyBody::Stream { .. } => SizeHint::default(),
        }
    }
}

pin_project! {
    /// A request body sent upstream: buffered (so it can be retried and mirrored) or the
    /// client's stream passed through (too large to buffer, so sent once) under the
    /// client's limits, which record a failure where the request path looks for it.
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        /// Buffered.
        Full { data: Option<Bytes> },
        /// Streamed from the client.
        Stream {
            #[pin]
            inner: ClientBody,
        },
    }
}

impl UpstreamBody {
    /// A buffered body.
    pub fn full(data: Bytes) -> Self {
        UpstreamBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// The client's body, streamed.
    pub fn stream(inner: ClientBody) -> Self {
        UpstreamBody::Stream { inner }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            UpstreamBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBodyProj::Stream { inner } => inner
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|e| Box::new(e) as BoxError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Full { data } => data.is_none(),
            UpstreamBody::Stream { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpstreamBody::Stream { inner } => inner.size_hint(),
        }
    }
}
