//! The admin listener: health and readiness (later: metrics, the API, the dashboard).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ProxyBody;

fn respond(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

fn route(req: &Request<Incoming>, ready: &AtomicBool) -> Response<ProxyBody> {
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "ok\n"),
        "/readyz" if ready.load(Ordering::SeqCst) => respond(StatusCode::OK, "ready\n"),
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => respond(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves the admin endpoints until `stopped` changes.
pub async fn serve(
    socket: TcpListener,
    ready: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stopped.changed() => return,
        };
        let ready = Arc::clone(&ready);
        let connection = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| {
                    let response = route(&req, &ready);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                }),
            )
            .into_owned();
        tokio::spawn(connection);
    }
}
