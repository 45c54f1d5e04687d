//! The client's request body, read under the client's own limits: a size cap and a time
//! allowed between chunks. Whatever goes wrong while reading it is the client's fault, and
//! is recorded as such where the request path can see it: a failed upstream exchange whose
//! request body broke on the client's side is answered and counted as the client's error
//! (400, 408 or 413), never as the upstream's.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

/// How a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Not valid HTTP framing: a bad chunk size, an oversized chunk extension.
    Malformed,
    /// The connection ended before the body did: the client went away (Envoy's `DC`).
    Disconnected,
    /// More bytes than `--max-request-body`.
    TooLarge,
    /// No byte of it for `--body-read-timeout`.
    Stalled,
}

impl ClientFault {
    fn code(self) -> u8 {
        match self {
            ClientFault::Malformed => 1,
            ClientFault::TooLarge => 2,
            ClientFault::Stalled => 3,
            ClientFault::Disconnected => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ClientFault::Malformed),
            2 => Some(ClientFault::TooLarge),
            3 => Some(ClientFault::Stalled),
            4 => Some(ClientFault::Disconnected),
            _ => None,
        }
    }
}

/// How a body being streamed upstream went, shared between the body (which records it)
/// and the request path (which reads it when the upstream exchange fails or times out).
#[derive(Debug, Default)]
pub struct FaultCell {
    fault: AtomicU8,
    complete: AtomicBool,
}

impl FaultCell {
    fn set(&self, fault: ClientFault) {
        let _ = self
            .fault
            .compare_exchange(0, fault.code(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// The first fault recorded, if any.
    pub fn get(&self) -> Option<ClientFault> {
        ClientFault::from_code(self.fault.load(Ordering::Acquire))
    }

    /// Whether the whole body has been received from the client.
    pub fn complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }
}

/// The error a [`ClientBody`] yields: which fault, and the library's account of it (for
/// the log, never for the client).
#[derive(Debug, thiserror::Error)]
#[error("client request body: {fault:?}: {detail}")]
pub struct ClientBodyError {
    /// What went wrong.
    pub fault: ClientFault,
    /// Why, in the words of the layer that found it.
    pub detail: String,
}

pin_project! {
    /// The client's body with a size cap and an idle timer reset by every frame.
    pub struct ClientBody {
        #[pin]
        inner: Incoming,
        left: u64,
        idle: Duration,
        // Armed only while a frame is awaited, so a body that arrives at once costs no
        // timer; boxed so that the body stays `Unpin`, as the upstream client wants.
        timer: Option<Pin<Box<Sleep>>>,
        fault: Option<Arc<FaultCell>>,
    }
}

impl ClientBody {
    /// `inner`, refused past `limit` bytes or after `idle` without a frame.
    pub fn new(inner: Incoming, limit: u64, idle: Duration) -> Self {
        Self {
            inner,
            left: limit,
            idle,
            timer: None,
            fault: None,
        }
    }

    /// Records faults in `cell` too, for a body handed to the upstream client (which
    /// reports only that its request failed, not why).
    pub fn report_to(mut self, cell: Arc<FaultCell>) -> Self {
        self.fault = Some(cell);
        self
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let mut this = self.project();
        let fail = |fault: ClientFault, detail: String| {
            if let Some(cell) = this.fault.as_ref() {
                cell.set(fault);
            }
            Poll::Ready(Some(Err(ClientBodyError { fault, detail })))
        };
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.timer = None;
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > *this.left {
                    return fail(ClientFault::TooLarge, "the body grew past the limit".into());
                }
                *this.left -= len;
                if this.inner.is_end_stream() {
                    if let Some(cell) = this.fault.as_ref() {
                        cell.complete.store(true, Ordering::Release);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = match ended_early(&e) {
                    true => ClientFault::Disconnected,
                    false => ClientFault::Malformed,
                };
                fail(fault, error_chain(&e))
            }
            Poll::Ready(None) => {
                if let Some(cell) = this.fault.as_ref() {
                    cell.complete.store(true, Ordering::Release);
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = *this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    let idle = *this.idle;
                    return fail(
                        ClientFault::Stalled,
                        format!("no body data for {}", humantime::format_duration(idle)),
                    );
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the body failed because the connection ended before it did.
fn ended_early(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// An error and its causes, joined, for the log.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
