//! A `408 Request Timeout` for clients too slow to send a request head.
//!
//! hyper enforces the HTTP/1.1 header read timeout but closes the connection without a
//! word, and its protocol detection (HTTP/1.1 or HTTP/2) waits for a first byte with no
//! timeout at all. [`Watched`] wraps a client connection to fill both gaps: it gives up
//! on a connection that sends nothing within the timeout, and it hands the stream back
//! when hyper is done with it, with what it saw, so that the accept loop can answer 408
//! where a request was under way — the first one never completed, or bytes of the next
//! one arrived after the last response — and close an idle keep-alive silently (a 408
//! there would race with the client's next request).

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::error::error_body;

/// How long writing the 408 may take before the connection is just closed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// A client connection as hyper sees it, watched for a slow head.
pub(crate) struct Watched<S> {
    stream: Option<S>,
    /// Fires when no byte at all arrived in time (armed until the first byte).
    first_byte: Option<Pin<Box<Sleep>>>,
    wrote_any: bool,
    read_since_write: bool,
    give_back: Option<oneshot::Sender<Returned<S>>>,
}

/// The stream, back from hyper.
pub(crate) struct Returned<S> {
    stream: S,
    /// A request head was under way when the connection ended.
    mid_request: bool,
}

impl<S> Watched<S> {
    /// Wraps `stream`; the receiver gets it back once hyper drops it.
    pub(crate) fn new(stream: S, timeout: Duration) -> (Self, oneshot::Receiver<Returned<S>>) {
        let (give_back, returned) = oneshot::channel();
        let watched = Self {
            stream: Some(stream),
            first_byte: Some(Box::pin(tokio::time::sleep(timeout))),
            wrote_any: false,
            read_since_write: false,
            give_back: Some(give_back),
        };
        (watched, returned)
    }

    fn stream(&mut self) -> &mut S {
        self.stream.as_mut().expect("present until dropped")
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        if let (Some(stream), Some(give_back)) = (self.stream.take(), self.give_back.take()) {
            let _ = give_back.send(Returned {
                stream,
                mid_request: !self.wrote_any || self.read_since_write,
            });
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(self.stream()).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.read_since_write = true;
                    self.first_byte = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = self
                    .first_byte
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(self.stream()).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(self.stream()).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_shutdown(cx)
    }
}

impl<S> Watched<S> {
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.wrote_any = true;
            self.read_since_write = false;
        }
    }
}

/// Whether a connection ended because the client did not send a request head in time
/// (hyper's header read timeout, or [`Watched`]'s wait for a first byte).
pub(crate) fn is_head_timeout(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
            || e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Answers `408` on the returned stream when a request was under way, then closes it.
pub(crate) async fn answer_timeout<S: AsyncWrite + Unpin>(
    returned: oneshot::Receiver<Returned<S>>,
    timeout: Duration,
) {
    let Ok(Returned {
        mut stream,
        mid_request,
    }) = returned.await
    else {
        return;
    };
    if !mid_request {
        return;
    }
    let body = error_body(
        StatusCode::REQUEST_TIMEOUT,
        &format!(
            "The request head was not received within {}.",
            humantime::format_duration(timeout)
        ),
        "request_timeout",
    );
    let answer = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
