//! The admin listener: health, readiness, Prometheus metrics, the clusters' endpoints and
//! their outlier-detection state (`/endpoints`), and the API that the binary installs
//! (experiments), each on its own path.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;

use abgate_config::model::LoadBalancer;
use abgate_router::{now_ms, Cluster, RouteTable};
use abgate_telemetry::Telemetry;

use crate::body::ProxyBody;
use crate::client_body::ClientBody;
use crate::conn::counted;
use crate::error::{error_response, ProxyError};
use crate::service::Shared;
use crate::Listener;

/// Largest request body the admin API accepts.
const MAX_API_BODY: u64 = 1 << 20;

/// A request to the admin API, read whole (API bodies are small JSON documents).
#[derive(Debug)]
pub struct ApiRequest {
    /// Method.
    pub method: Method,
    /// Path, starting with `/api/`.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Headers (the bearer token is in `authorization`).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// The response future of an [`AdminApi`].
pub type ApiFuture = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// What serves `/api/...` on the admin listener (the binary installs the experiments API).
pub trait AdminApi: Send + Sync + 'static {
    /// Answers one API request.
    fn call(&self, request: ApiRequest) -> ApiFuture;
}

/// The installed API, swapped in after the gateway starts.
pub type ApiSlot = Arc<ArcSwapOption<Box<dyn AdminApi>>>;

fn respond(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

async fn route(req: Request<Incoming>, context: &Context) -> Response<ProxyBody> {
    let Context {
        ready,
        telemetry,
        api,
        shared,
    } = context;
    match req.uri().path() {
        "/endpoints" => {
            let table = shared.table.load();
            let mut r = Response::new(ProxyBody::full(Bytes::from(
                endpoints_json(&table).to_string(),
            )));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
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
        path if path.starts_with("/api/") => {
            let Some(handler) = api.load_full() else {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "NR",
                    "the admin API is not enabled",
                    "not_found",
                );
            };
            let (parts, body) = req.into_parts();
            let body = ClientBody::new(body, MAX_API_BODY, shared.body_read_timeout);
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let error =
                        ProxyError::from_client(e.fault, MAX_API_BODY, shared.body_read_timeout);
                    let flag = error.flag();
                    return error.into_response(flag);
                }
            };
            handler
                .call(ApiRequest {
                    method: parts.method,
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().map(str::to_owned),
                    headers: parts.headers,
                    body,
                })
                .await
        }
        _ => respond(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// What the admin endpoints read.
pub(crate) struct Context {
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) api: ApiSlot,
    pub(crate) shared: Arc<Shared>,
}

/// Serves the admin endpoints until `stopped` changes, under the same limits on heads,
/// bodies, idle time and connections as the data listeners (its own connection cap).
pub(crate) async fn serve(
    socket: TcpListener,
    context: Context,
    listener: Listener,
    stopped: watch::Receiver<bool>,
) {
    let context = Arc::new(context);
    let telemetry = Arc::clone(&context.telemetry);
    listener
        .run(
            socket,
            &telemetry,
            |_, activity| {
                let context = Arc::clone(&context);
                service_fn(move |req| {
                    let context = Arc::clone(&context);
                    let open = activity.request();
                    Box::pin(async move {
                        let response = route(req, &context).await;
                        Ok::<_, std::convert::Infallible>(counted(response, open))
                    })
                })
            },
            stopped,
        )
        .await;
}

/// `GET /endpoints`: every cluster the routes send to, its circuit breakers and each
/// endpoint's state (in rotation or ejected until when, consecutive errors, requests in
/// flight), like Envoy's `/clusters`, as JSON.
pub(crate) fn endpoints_json(table: &RouteTable) -> serde_json::Value {
    let now = now_ms();
    let wall = std::time::SystemTime::now();
    let clusters: Vec<serde_json::Value> = table
        .clusters
        .iter()
        .map(|c| cluster_json(c, now, wall))
        .collect();
    serde_json::json!({ "clusters": clusters })
}

/// The cluster's load balancer as its DestinationRule names it.
fn balancer_json(lb: Option<&LoadBalancer>) -> serde_json::Value {
    match lb {
        None | Some(LoadBalancer::LeastRequest) => serde_json::json!("LEAST_REQUEST"),
        Some(LoadBalancer::RoundRobin) => serde_json::json!("ROUND_ROBIN"),
        Some(LoadBalancer::Random) => serde_json::json!("RANDOM"),
        Some(LoadBalancer::Passthrough) => serde_json::json!("PASSTHROUGH"),
        Some(LoadBalancer::ConsistentHash(_)) => serde_json::json!("CONSISTENT_HASH"),
        Some(LoadBalancer::LlmAware(llm)) => serde_json::json!({
            "llmAware": {
                "metricsPath": llm.metrics_path,
                "interval": humantime::format_duration(llm.interval).to_string(),
            }
        }),
    }
}

fn cluster_json(c: &Cluster, now: u64, wall: std::time::SystemTime) -> serde_json::Value {
    let limit = |v: u32| (v != u32::MAX).then_some(v);
    let stats = c.state.stats();
    let outlier = c.policy.outlier_detection.as_ref().map(|o| {
        serde_json::json!({
            "consecutive5xxErrors": o.consecutive_5xx_errors,
            "consecutiveGatewayErrors": o.consecutive_gateway_errors,
            "interval": humantime::format_duration(o.interval).to_string(),
            "baseEjectionTime": humantime::format_duration(o.base_ejection_time).to_string(),
            "maxEjectionPercent": o.max_ejection_percent,
            "minHealthPercent": o.min_health_percent,
        })
    });
    let endpoints: Vec<serde_json::Value> = c
        .endpoints
        .iter()
        .map(|e| {
            let state = e.state(now);
            let until = state.ejected_until.map(|u| {
                let left = std::time::Duration::from_millis(u.saturating_sub(now));
                humantime::format_rfc3339_millis(wall + left).to_string()
            });
            serde_json::json!({
                "address": e.authority,
                "labels": e.labels,
                "health": if until.is_some() { "ejected" } else { "healthy" },
                "ejectedUntil": until,
                "ejectedForMs": state.ejected_until.map(|u| u.saturating_sub(now)),
                "ejections": state.ejections,
                "ejectionBackoff": state.ejection_backoff,
                "consecutive5xx": state.consecutive_5xx,
                "consecutiveGatewayErrors": state.consecutive_gateway_errors,
                "activeRequests": state.active,
                "load": state.load.map(|r| serde_json::json!({
                    "requestsWaiting": r.waiting,
                    "kvCacheUsage": f64::from(r.kv_milli) / 1000.0,
                    "ageMs": r.age_ms,
                })),
            })
        })
        .collect();
    serde_json::json!({
        "name": c.name(),
        "host": c.host,
        "subset": c.subset,
        "port": c.port,
        "unavailable": c.unavailable.as_ref().map(|u| format!("{u:?}")),
        "circuitBreakers": {
            "http2MaxRequests": limit(c.limits.max_requests),
            "maxConnections": limit(c.limits.max_connections),
            "http1MaxPendingRequests": limit(c.limits.max_pending),
            "maxRetries": limit(c.limits.max_retries),
            "activeRequests": stats.active,
            "pendingRequests": stats.pending,
            "activeRetries": stats.retries,
            "overflows": stats.overflows,
        },
        "outlierDetection": outlier,
        "loadBalancer": balancer_json(c.policy.load_balancer.as_ref()),
        "endpoints": endpoints,
    })
}
