//! The admin listener: health, readiness and Prometheus metrics (later: the API and the
//! dashboard).

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

use abgate_telemetry::Telemetry;

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

fn route(
    req: &Request<Incoming>,
    ready: &AtomicBool,
    telemetry: &Telemetry,
) -> Response<ProxyBody> {
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(ProxyBody::full(telemetry.render()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
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
    telemetry: Arc<Telemetry>,
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
        let telemetry = Arc::clone(&telemetry);
        let connection = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| {
                    let response = route(&req, &ready, &telemetry);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                }),
            )
            .into_owned();
        tokio::spawn(connection);
    }
}
