//! One request through the gateway: route, fault, split, endpoint, upstream, response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use abgate_config::model::{
    FaultAbort, RedirectPort, RetryOn, StringMatcher, UriRedirect, UriRewrite,
};
use abgate_router::cluster::DEFAULT_MAX_RETRIES;
use abgate_router::openai::model_of;
use abgate_router::request::{hash_of, hops, key_value, MAX_HOPS, VIA_ENTRY};
use abgate_router::{
    host_of, now_ms, Action, Admission, Cluster, Endpoint, Outcome, RequestView, Route, RouteTable,
    Target, Unavailable, MODEL_HEADER,
};
use abgate_telemetry::{
    DestinationLabels, DestinationSeries, RequestProtocol, ResponseFlags, Telemetry,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{request, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{ProxyBody, UpstreamBody};
use crate::client_body::{error_chain, ClientBody, ClientFault, FaultCell};
use crate::cors;
use crate::error::{ProxyError, FLAGS_HEADER};
use crate::headers::{apply_request_ops, apply_response_ops, strip_hop_by_hop};
use crate::meter::{LlmKind, Meter};
use crate::observe::{Observers, RequestInfo};
use crate::upstream::{Budget, Clients, UpstreamClient};

// Header names the request path uses, made once: a `&str` name is parsed on every use.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static MODEL: HeaderName = HeaderName::from_static(MODEL_HEADER);
static FLAGS: HeaderName = HeaderName::from_static(FLAGS_HEADER);

/// Request bodies up to this size are buffered so that they can be retried, mirrored, or
/// read for their `model`; larger ones stream through once.
pub const DEFAULT_BUFFER_LIMIT: usize = 1 << 20;

/// What every request handler shares.
pub struct Shared {
    /// The live routing snapshot, swapped whole on reload.
    pub table: ArcSwap<RouteTable>,
    /// The upstream connection pools: HTTP/1.1 and h2c, per connection settings.
    pub clients: Clients,
    /// See [`DEFAULT_BUFFER_LIMIT`].
    pub buffer_limit: usize,
    /// Largest request body accepted (`413` beyond); see [`crate::Limits`].
    pub max_request_body: u64,
    /// Time allowed between two chunks of a request body (`408` beyond).
    pub body_read_timeout: Duration,
    /// Metrics and the per-variant store.
    pub telemetry: Arc<Telemetry>,
    /// The series for requests that reach no destination (no route, bad request).
    unrouted: Arc<DestinationSeries>,
    /// Access log and tracer.
    pub observers: Arc<Observers>,
}

impl Shared {
    /// Shared state around a first table, with a pooled keep-alive upstream client.
    pub fn new(table: RouteTable, telemetry: Arc<Telemetry>, observers: Observers) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
            clients: Clients::default(),
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            max_request_body: crate::Limits::default().max_request_body,
            body_read_timeout: crate::Limits::default().body_read_timeout,
            unrouted: telemetry.destination(DestinationLabels::new("unknown", "unknown")),
            telemetry,
            observers: Arc::new(observers),
        }
    }
}

/// Where a connection came in.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The route table's listener port.
    pub port: u16,
    /// Whether TLS was terminated.
    pub tls: bool,
    /// The client.
    pub remote: SocketAddr,
}

/// Handles one request; never fails: every failure becomes a response. The request is
/// measured until its response ends.
pub async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = std::time::Instant::now();
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .cloned()
        .unwrap_or_else(new_request_id);
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // hyper has parsed and checked Content-Length: the body's exact size hint is it.
    let request_bytes = req.body().size_hint().exact().unwrap_or(0);
    let completion_path = req.uri().path().ends_with("completions");
    let mut info = shared.observers.active().then(|| {
        Box::new(RequestInfo::new(
            &req,
            &request_id,
            shared.observers.tracing(),
        ))
    });
    let protocol = if grpc {
        RequestProtocol::Grpc
    } else {
        RequestProtocol::Http
    };
    // Measured from the start: a client that leaves before the response is counted (DC).
    let mut meter = Meter::new(
        Arc::clone(&shared.telemetry),
        Arc::clone(&shared.unrouted),
        started,
        request_bytes,
        protocol,
    );
    let mut flags = ResponseFlags::NONE;
    let mut response = match proxy(
        &shared,
        conn,
        req,
        &request_id,
        &mut flags,
        &mut meter,
        &mut info,
    )
    .await
    {
        Ok(response) => response,
        Err(e) => {
            if e.is_client_fault() {
                // The client's own fault is no evidence about any destination.
                meter.charge(Arc::clone(&shared.unrouted));
            }
            if let Some(detail) = e.detail() {
                tracing::warn!(request_id = ?request_id, error = %e, %detail, "request failed");
            }
            flags |= e.flag();
            e.into_response(flags)
        }
    };
    // Flags are the gateway's own: an upstream's header of that name is not passed on.
    match flags.is_empty() {
        true => response.headers_mut().remove(&FLAGS),
        false => response.headers_mut().insert(
            &FLAGS,
            HeaderValue::from_str(&flags.to_string()).expect("flag names are header-safe"),
        ),
    };
    response.headers_mut().insert(&X_REQUEST_ID, request_id);

    let mut meter = meter.observed(Arc::clone(&shared.observers), info);
    let status = response.status();
    meter.respond(
        status.as_u16(),
        flags,
        llm_kind(response.headers(), completion_path),
    );
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.metered(meter))
}

/// Whether, and how, a response is read for LLM figures: any event stream, and JSON
/// answers to completion requests (an error answer counts as a failed LLM response).
fn llm_kind(headers: &HeaderMap, completion_path: bool) -> Option<LlmKind> {
    let content_type = headers.get(header::CONTENT_TYPE)?.as_bytes();
    if content_type.starts_with(b"text/event-stream") {
        Some(LlmKind::Stream)
    } else if completion_path && content_type.starts_with(b"application/json") {
        Some(LlmKind::Json)
    } else {
        None
    }
}

/// 32 random lowercase hex digits.
fn new_request_id() -> HeaderValue {
    let id: u128 = rand::random();
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
}

fn draw() -> u64 {
    rand::random()
}

fn roll(percent: f64) -> bool {
    percent > 0.0 && rand::random::<f64>() * 100.0 < percent
}

async fn proxy(
    shared: &Shared,
    conn: ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    flags: &mut ResponseFlags,
    meter: &mut Meter,
    info: &mut Option<Box<RequestInfo>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let started = Instant::now();
    // A body declared larger than allowed is refused before anything else is read.
    if req.body().size_hint().lower() > shared.max_request_body {
        return Err(ProxyError::BodyTooLarge {
            limit: shared.max_request_body,
        });
    }
    let table = shared.table.load_full();
    let (mut parts, body) = req.into_parts();
    if hops(&parts.headers) >= MAX_HOPS {
        return Err(ProxyError::LoopDetected { hops: true });
    }
    // Two Host headers leave it to each hop which one wins (Envoy refuses them too).
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::BadRequest(
            "the request has more than one Host header".into(),
        ));
    }
    let body = ClientBody::new(body, shared.max_request_body, shared.body_read_timeout);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            ProxyError::BadRequest("the request has no Host header or authority".into())
        })?;
    let host = host_of(&authority);
    let no_route = |parts: &request::Parts| ProxyError::NoRoute {
        host: host.clone(),
        path: parts.uri.path().to_owned(),
    };
    let listener = table.listener(conn.port).ok_or_else(|| no_route(&parts))?;
    let server = listener
        .gateway_for(&host)
        .ok_or_else(|| no_route(&parts))?;
    let vhost = listener
        .virtual_host(&server.gateway, &host)
        .ok_or_else(|| no_route(&parts))?;

    let mut buffered: Option<Bytes> = None;
    let mut body = Some(body);
    // The model header is the gateway's reading of the body, never the client's word.
    if vhost.reads_model {
        parts.headers.remove(&MODEL);
    }
    if vhost.reads_model && parts.method == Method::POST {
        let bytes = read_bounded(
            body.take().expect("body not taken yet"),
            body_limit(shared),
            shared,
        )
        .await?;
        let model = model_of(&bytes).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        if let Some(model) = model {
            parts.headers.insert(&MODEL, model);
        }
        buffered = Some(bytes);
    }

    let scheme = if conn.tls { "https" } else { "http" };
    let view = RequestView {
        method: parts.method.as_str(),
        scheme,
        authority: &authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        port: server.port,
        gateway: &server.gateway,
    };
    let (route, matched_block) = vhost.route(&view).ok_or_else(|| no_route(&parts))?;
    // TRACE echoes the request, cookies and credentials included: only a rule that asks
    // for it by name gets it.
    if parts.method == Method::TRACE
        && matched_block.is_none_or(|i| route.matches[i].method.is_none())
    {
        return Err(ProxyError::MethodNotAllowed("TRACE".into()));
    }
    let route = Arc::clone(route);
    if let Some(info) = info.as_mut() {
        info.route = Some(Arc::clone(&route.name));
    }

    let origin = parts.headers.get(header::ORIGIN).cloned();
    if let Some(policy) = &route.cors {
        if let Some(preflight) = cors::preflight(policy, &parts.method, &parts.headers) {
            return Ok(preflight);
        }
    }

    // The target is chosen before any fault, so that an injected failure is counted
    // against the destination it stood in for.
    let target = match &route.action {
        Action::Forward(split) => {
            let key = split
                .stickiness
                .as_ref()
                .and_then(|s| key_value(&s.source, &parts.headers));
            let target = split.choose(key.as_deref(), &mut draw);
            meter.charge(Arc::clone(&target.unplaced));
            Some(target)
        }
        _ => None,
    };

    if let Some(fault) = &route.fault {
        if let Some((delay, percent)) = fault.delay {
            if roll(percent) {
                tokio::time::sleep(delay).await;
                *flags |= ResponseFlags::DI;
            }
        }
        if let Some((abort, percent)) = &fault.abort {
            if roll(*percent) {
                let status = match abort {
                    FaultAbort::Http(s) => *s,
                    FaultAbort::Grpc(_) => 503,
                };
                return Err(ProxyError::FaultAbort(status));
            }
        }
    }

    let mut response = match &route.action {
        Action::DirectResponse { status, body } => {
            let mut r = Response::new(ProxyBody::full(body.clone()));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            r
        }
        Action::Redirect(redirect) => {
            let location = redirect_location(
                redirect,
                &parts,
                scheme,
                &authority,
                server.port,
                matched_block.map(|i| &route.matches[i].uri),
            );
            let mut r = Response::new(ProxyBody::empty());
            *r.status_mut() =
                StatusCode::from_u16(redirect.code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Action::Forward(_) => {
            let target = target.expect("a forward rule has a target");
            let cluster = Arc::clone(&target.cluster);
            if let Some(info) = info.as_mut() {
                info.upstream_cluster = Some(target.cluster.name());
            }
            check_available(&cluster)?;

            let model_rewrite = target.model_rewrite.as_deref();
            let needs_buffer =
                route.retries.attempts > 0 || !route.mirrors.is_empty() || model_rewrite.is_some();
            let request_body = match (buffered, body.take()) {
                (Some(bytes), _) => Some(bytes),
                (None, Some(incoming)) if needs_buffer && fits(&incoming, shared.buffer_limit) => {
                    Some(
                        read_bounded(
                            incoming,
                            shared.buffer_limit.min(body_limit(shared)),
                            shared,
                        )
                        .await?,
                    )
                }
                (None, Some(incoming)) => {
                    body = Some(incoming);
                    None
                }
                (None, None) => None,
            };

            let request_body = match (request_body, model_rewrite) {
                (Some(bytes), Some(model)) => {
                    parts.headers.remove(header::CONTENT_LENGTH);
                    Some(with_model(bytes, model))
                }
                (body, _) => body,
            };
            let path = rewritten_path(&route, &parts.uri, matched_block);
            // `rewrite.authority`, or a `:authority` header rule (the destination's last).
            let rewritten_authority = target
                .headers
                .request
                .authority
                .clone()
                .or_else(|| route.rewrite.as_ref().and_then(|r| r.authority.clone()))
                .or_else(|| route.headers.request.authority.clone());
            // The Host sent upstream: the client's own header when nothing changes it.
            let host = match (&rewritten_authority, parts.uri.authority()) {
                (Some(a), _) => HeaderValue::from_str(a).ok(),
                (None, Some(a)) => HeaderValue::from_str(a.as_str()).ok(),
                (None, None) => parts.headers.get(header::HOST).cloned(),
            };
            let mut headers = std::mem::take(&mut parts.headers);
            strip_hop_by_hop(&mut headers);
            // The gateway answers `Expect: 100-continue` itself (hyper does, when the body
            // is first read); the upstream gets the body without being asked.
            headers.remove(header::EXPECT);
            headers.append(header::VIA, HeaderValue::from_static(VIA_ENTRY));
            apply_request_ops(&mut headers, &route.headers.request);
            apply_request_ops(&mut headers, &target.headers.request);
            headers.insert(&X_REQUEST_ID, request_id.clone());
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            append_forwarded_for(&mut headers, conn.remote);
            if let Some(host) = host {
                headers.insert(header::HOST, host);
            }
            let template = UpstreamRequest {
                method: parts.method.clone(),
                path,
                headers,
            };

            for (mirror, percent) in &route.mirrors {
                if let (Some(bytes), true) = (&request_body, roll(*percent)) {
                    mirror_request(shared, mirror, &template, bytes.clone(), route.timeout);
                }
            }

            let hash = cluster
                .balancer
                .hash_key()
                .and_then(|k| hash_of(k, &template.headers, parts.uri.query(), conn.remote.ip()));
            let deadline = route.timeout.map(|t| started + t);
            let body = match request_body {
                Some(bytes) => Sent::Buffered(bytes),
                None => Sent::Stream(body.take()),
            };
            let pool = cluster.policy.connection_pool.as_ref();
            let http2 = pool.is_some_and(|p| {
                p.h2_upgrade || (p.use_client_protocol && parts.version == http::Version::HTTP_2)
            });
            let client = shared.clients.get(pool, http2);
            let mut response = forward(
                shared, &client, !http2, target, &route, template, body, hash, deadline, flags,
                meter, info,
            )
            .await?;
            apply_response_ops(response.headers_mut(), &target.headers.response);
            response
        }
    };
    apply_response_ops(response.headers_mut(), &route.headers.response);
    if let (Some(policy), Some(origin)) = (&route.cors, origin) {
        cors::decorate(policy, &origin, response.headers_mut());
    }
    Ok(response)
}

fn check_available(cluster: &Cluster) -> Result<(), ProxyError> {
    match cluster.unavailable {
        None => Ok(()),
        Some(Unavailable::NoEndpoints) => Err(ProxyError::NoHealthyUpstream {
            cluster: cluster.name(),
        }),
        Some(Unavailable::NoSuchSubset | Unavailable::UnknownHost) => Err(ProxyError::NoCluster {
            cluster: cluster.name(),
        }),
    }
}

/// The body limit as a buffer size.
fn body_limit(shared: &Shared) -> usize {
    usize::try_from(shared.max_request_body).unwrap_or(usize::MAX)
}

/// Whether a body is small enough to buffer: its declared length, or an empty body.
fn fits(body: &ClientBody, limit: usize) -> bool {
    body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= limit as u64)
}

/// The client's fault as the client is answered.
fn client_error(fault: ClientFault, shared: &Shared) -> ProxyError {
    ProxyError::from_client(fault, shared.max_request_body, shared.body_read_timeout)
}

/// The whole body, refused past `limit` bytes. A body that comes in one frame (the
/// usual small JSON request) is returned as it came, without a copy.
async fn read_bounded(
    mut body: ClientBody,
    limit: usize,
    shared: &Shared,
) -> Result<Bytes, ProxyError> {
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::debug!(error = %e, "the client's request body failed");
            client_error(e.fault, shared)
        })?;
        // Trailers are not part of the bytes.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(ProxyError::BodyTooLarge {
                limit: limit as u64,
            });
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(previous) => {
                joined.reserve(previous.len() + data.len());
                joined.extend_from_slice(&previous);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(match first {
        Some(only) => only,
        None => Bytes::from(joined),
    })
}

/// The body with its JSON `model` replaced (a candidate served under another model or
/// adapter name); a body that is not a JSON object goes unchanged.
fn with_model(body: Bytes, model: &str) -> Bytes {
    let Ok(serde_json::Value::Object(mut object)) =
        serde_json::from_slice::<serde_json::Value>(&body)
    else {
        return body;
    };
    object.insert(
        "model".to_owned(),
        serde_json::Value::String(model.to_owned()),
    );
    serde_json::to_vec(&object).map_or(body, Bytes::from)
}

fn append_forwarded_for(headers: &mut HeaderMap, remote: SocketAddr) {
    // The client's address, written without `fmt` (IPv4 is the common case).
    let mut ip = [0u8; 15];
    let mut len = 0;
    let text;
    let ip: &[u8] = match remote.ip() {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    ip[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    ip[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    ip[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                ip[len] = b'0' + octet % 10;
                len += 1;
            }
            &ip[..len]
        }
        v6 => {
            text = v6.to_string();
            text.as_bytes()
        }
    };
    // An existing value that is not text is replaced, as before.
    let existing = headers.get(&X_FORWARDED_FOR).filter(|v| v.to_str().is_ok());
    let value = match existing {
        Some(existing) => {
            let mut joined = Vec::with_capacity(existing.len() + 2 + ip.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(Bytes::from(joined))
        }
        None => HeaderValue::from_bytes(ip),
    };
    if let Ok(v) = value {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// The path and query sent upstream, after `rewrite`; `None` when a rewrite makes it
/// invalid. Without a rewrite, the request's own (shared, not copied).
fn rewritten_path(route: &Route, uri: &Uri, matched_block: Option<usize>) -> Option<PathAndQuery> {
    let path = uri.path();
    let new_path = match route.rewrite.as_ref().and_then(|r| r.uri.as_ref()) {
        None => {
            return Some(
                uri.path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
        }
        Some(UriRewrite::Prefix(replacement)) => {
            let matched = matched_block.and_then(|i| route.matches[i].uri.as_ref());
            match matched {
                // A prefix match replaces just the prefix; any other match the whole path.
                Some(StringMatcher::Prefix(prefix)) if path.len() >= prefix.len() => {
                    format!("{replacement}{}", &path[prefix.len()..])
                }
                _ => replacement.clone(),
            }
        }
        Some(UriRewrite::Regex(re, replacement)) => {
            re.replace_all(path, replacement.as_str()).into_owned()
        }
    };
    let text = match uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    PathAndQuery::from_maybe_shared(text).ok()
}

fn redirect_location(
    redirect: &abgate_config::model::Redirect,
    parts: &request::Parts,
    scheme: &str,
    authority: &str,
    port: u16,
    matched_uri: Option<&Option<StringMatcher>>,
) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or(scheme);
    let host = redirect
        .authority
        .clone()
        .unwrap_or_else(|| host_of(authority));
    let request_port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let port = match redirect.port {
        Some(RedirectPort::Fixed(p)) => Some(p),
        Some(RedirectPort::FromRequestPort) => request_port.or(Some(port)),
        Some(RedirectPort::FromProtocolDefault) => None,
        None if redirect.scheme.is_some() => None,
        None => request_port,
    };
    let path = parts.uri.path();
    let new_path = match &redirect.uri {
        None => path.to_owned(),
        Some(UriRedirect::Replace(p)) => p.clone(),
        Some(UriRedirect::PrefixRewrite(replacement)) => match matched_uri.and_then(|m| m.as_ref())
        {
            Some(StringMatcher::Prefix(prefix)) if path.starts_with(prefix.as_str()) => {
                format!("{replacement}{}", &path[prefix.len()..])
            }
            _ => replacement.clone(),
        },
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = port
        .filter(|p| *p != default_port)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{host}{port}{new_path}{query}")
}

/// What is sent upstream, before an endpoint is chosen.
struct UpstreamRequest {
    method: Method,
    /// Path and query (`None`: a rewrite made it invalid, and the request fails).
    path: Option<PathAndQuery>,
    /// Every header sent, `Host` included.
    headers: HeaderMap,
}

impl UpstreamRequest {
    /// The request to `endpoint`, with the template's headers (the caller passes them:
    /// a copy, or the template's own for the last attempt).
    fn build(
        &self,
        endpoint: &Endpoint,
        headers: HeaderMap,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
        let uri = match (&endpoint.uri_authority, &self.path) {
            (Some(authority), Some(path)) => {
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(authority.clone());
                uri.path_and_query = Some(path.clone());
                Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"))
            }
            _ => Uri::from_static("/"),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        req
    }
}

enum Sent {
    Buffered(Bytes),
    Stream(Option<ClientBody>),
}

/// Sends to an endpoint of the cluster, retrying as the route's policy says, within the
/// route's deadline. Each attempt takes a place in the cluster's circuit breakers first
/// (`503 UO` when refused, a FIFO wait when every HTTP/1.1 connection is busy), and its
/// outcome feeds the cluster's outlier detection.
#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Shared,
    client: &UpstreamClient,
    http1: bool,
    target: &Target,
    route: &Route,
    mut template: UpstreamRequest,
    mut body: Sent,
    hash: Option<u64>,
    deadline: Option<Instant>,
    flags: &mut ResponseFlags,
    meter: &mut Meter,
    info: &mut Option<Box<RequestInfo>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let started = Instant::now();
    let policy = &route.retries;
    let retry_cap = match route.retries_capped {
        true => DEFAULT_MAX_RETRIES,
        false => u32::MAX,
    };
    let cluster = &target.cluster;
    let endpoints = &cluster.endpoints;
    let pool = cluster.policy.connection_pool.as_ref();
    // Endpoints tried, kept only when the policy avoids them on a retry.
    let mut tried: Vec<usize> = Vec::new();
    let mut attempt: u32 = 0;
    // Where a streamed request body records the client's fault, if it fails.
    let client_fault =
        matches!(body, Sent::Stream(Some(_))).then(|| Arc::new(FaultCell::default()));
    // Held from a retry's scheduling until its outcome is known (Envoy's `maxRetries`).
    let mut _retry = None;
    // A streamed body can be sent once only.
    let attempts = if matches!(body, Sent::Stream(_)) {
        0
    } else {
        policy.attempts
    };
    loop {
        let slot = match cluster.admit(http1) {
            Admission::Now(slot) => slot,
            Admission::Queued(waiter) => match deadline {
                Some(d) => {
                    let slot = tokio::time::timeout_at(d, waiter)
                        .await
                        .map_err(|_| ProxyError::Timeout(started.elapsed()))?;
                    // A place freed in the tick the deadline passes is too late: tokio's
                    // timeout polls the wait before its timer, so check the clock.
                    if Instant::now() >= d {
                        return Err(ProxyError::Timeout(started.elapsed()));
                    }
                    slot
                }
                None => waiter.await,
            },
            Admission::Overflow(why) => {
                shared.telemetry.gateway().record_pool_overflow();
                return Err(ProxyError::Overflow {
                    cluster: cluster.name(),
                    reason: why.to_string(),
                });
            }
        };
        let mut index = cluster.pick(hash, &mut draw, now_ms());
        if policy.ignore_previous_hosts && tried.contains(&index) && tried.len() < endpoints.len() {
            let now = now_ms();
            index = (0..endpoints.len())
                .find(|i| !tried.contains(i) && !endpoints[*i].is_ejected(now))
                .or_else(|| (0..endpoints.len()).find(|i| !tried.contains(i)))
                .unwrap_or(index);
        }
        if policy.ignore_previous_hosts {
            tried.push(index);
        }
        let endpoint = &endpoints[index];
        if endpoint.loops_back() {
            return Err(ProxyError::LoopDetected { hops: false });
        }
        // The last endpoint tried answers for the request in the metrics.
        if let Some(series) = target.series.get(index) {
            meter.charge(Arc::clone(series));
        }
        let upstream_body = match &mut body {
            Sent::Buffered(bytes) => UpstreamBody::full(bytes.clone()),
            Sent::Stream(incoming) => match incoming.take() {
                Some(inner) => UpstreamBody::stream(inner.report_to(Arc::clone(
                    client_fault.as_ref().expect("made for a streamed body"),
                ))),
                None => UpstreamBody::full(Bytes::new()),
            },
        };
        // The last attempt takes the template's headers; an earlier one sends a copy.
        let headers = if attempt >= attempts {
            std::mem::take(&mut template.headers)
        } else {
            template.headers.clone()
        };
        let mut request = template.build(endpoint, headers, upstream_body);
        if let Some(info) = info.as_mut() {
            info.upstream_host = Some(endpoint.authority.clone());
            if let Some(trace) = info.trace.as_mut() {
                trace.start_attempt(&endpoint.authority, request.headers_mut());
            }
        }
        let budget = Budget::watch(pool, &mut request);
        let in_flight = endpoint.start();
        let per_try = match (policy.per_try_timeout, deadline) {
            (Some(t), Some(d)) => Some((Instant::now() + t).min(d)),
            (Some(t), None) => Some(Instant::now() + t),
            (None, d) => d,
        };
        let outcome = match per_try {
            Some(at) => match tokio::time::timeout_at(at, client.request(request)).await {
                Ok(r) => Attempt::from_result(r, endpoint),
                Err(_) => Attempt::TimedOut,
            },
            None => Attempt::from_result(client.request(request).await, endpoint),
        };
        // The client's body, not the upstream, ended the exchange: the client's error,
        // kept from the endpoint's health and the retry policy. So is a timeout that
        // passed while the client was still sending (Envoy starts the route's timer only
        // once the request is whole).
        if let Some(cell) = &client_fault {
            match (&outcome, cell.get()) {
                (Attempt::Failed(_) | Attempt::TimedOut, Some(fault)) => {
                    return Err(client_error(fault, shared));
                }
                (Attempt::TimedOut, None) if !cell.complete() => {
                    return Err(ProxyError::BodyTimeout(started.elapsed()));
                }
                _ => {}
            }
        }
        if let (Some(budget), Attempt::Response(_)) = (&budget, &outcome) {
            budget.spend();
        }
        if let Some(trace) = info.as_mut().and_then(|i| i.trace.as_mut()) {
            trace.end_attempt(match &outcome {
                Attempt::Response(r) => Some(r.status().as_u16()),
                _ => None,
            });
        }
        report(shared, cluster, index, outcome.outlier());
        let retriable = match &outcome {
            Attempt::Response(r) => retriable_status(&policy.retry_on, r.status(), r.headers()),
            // A refused connection never sent the request: `reset-before-request` covers it.
            Attempt::Failed(e) if e.is_connect_failure() => {
                let on = &policy.retry_on;
                on.connect_failure
                    || on.server_error
                    || on.gateway_error
                    || on.reset
                    || on.reset_before_request
                    || on.refused_stream
            }
            Attempt::Failed(_) => {
                policy.retry_on.reset
                    || policy.retry_on.server_error
                    || policy.retry_on.gateway_error
            }
            // Envoy counts a per-try timeout as an upstream that did not respond: `reset`
            // retries it as `5xx` and `gateway-error` do.
            Attempt::TimedOut => {
                policy.retry_on.server_error
                    || policy.retry_on.gateway_error
                    || policy.retry_on.reset
            }
        };
        let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
        let mut give_up = !retriable || past_deadline || attempt >= attempts;
        if retriable && attempt >= attempts && attempts > 0 {
            *flags |= ResponseFlags::URX;
        }
        if !give_up {
            // Past `maxRetries` outstanding across the cluster, Envoy answers with what it
            // has and flags `UO`. The previous retry of this request ends here first.
            _retry = None;
            match cluster.try_retry(retry_cap) {
                Some(token) => _retry = Some(token),
                None => {
                    shared.telemetry.gateway().record_pool_overflow();
                    *flags |= ResponseFlags::UO;
                    give_up = true;
                }
            }
        }
        if give_up {
            return match outcome {
                Attempt::Response(response) => {
                    let (mut parts, incoming) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Ok(Response::from_parts(
                        parts,
                        ProxyBody::stream(incoming, deadline, Some(in_flight), Some(slot)),
                    ))
                }
                Attempt::Failed(e) => Err(e),
                Attempt::TimedOut => Err(ProxyError::Timeout(started.elapsed())),
            };
        }
        drop(in_flight);
        drop(slot);
        attempt += 1;
        // Envoy's backoff: a random wait up to base × 2^attempt, at most ten times the base.
        let cap = policy
            .backoff
            .saturating_mul(1 << attempt.min(10))
            .min(policy.backoff * 10);
        let wait = cap.mul_f64(rand::random::<f64>());
        match deadline {
            Some(d) => tokio::time::sleep_until((Instant::now() + wait).min(d)).await,
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// Feeds an attempt's outcome to the cluster's outlier detection; counts and logs an
/// ejection.
fn report(shared: &Shared, cluster: &Cluster, index: usize, outcome: Outcome) {
    if let Some(ejection) = cluster.report(index, outcome, now_ms()) {
        shared.telemetry.gateway().record_endpoint_ejection();
        let endpoint = &cluster.endpoints[ejection.index];
        tracing::warn!(
            cluster = %cluster.name(),
            endpoint = %endpoint.authority,
            cause = ?ejection.cause,
            for_ms = ejection.until.saturating_sub(now_ms()),
            times = ejection.backoff,
            "outlier detection ejected an endpoint"
        );
    }
}

enum Attempt {
    Response(Response<Incoming>),
    Failed(ProxyError),
    TimedOut,
}

impl Attempt {
    /// What outlier detection sees.
    fn outlier(&self) -> Outcome {
        match self {
            Attempt::Response(r) => Outcome::Status(r.status().as_u16()),
            Attempt::Failed(e) if e.is_connect_failure() => Outcome::ConnectFailure,
            Attempt::Failed(_) => Outcome::Reset,
            Attempt::TimedOut => Outcome::Timeout,
        }
    }

    fn from_result(
        result: Result<Response<Incoming>, hyper_util::client::legacy::Error>,
        endpoint: &Endpoint,
    ) -> Self {
        match result {
            Ok(r) => Attempt::Response(r),
            Err(e) if e.is_connect() => Attempt::Failed(ProxyError::ConnectFailure {
                endpoint: endpoint.authority.clone(),
                reason: error_chain(&e),
            }),
            Err(e) if is_protocol_error(&e) => Attempt::Failed(ProxyError::UpstreamProtocol {
                endpoint: endpoint.authority.clone(),
                reason: error_chain(&e),
            }),
            Err(e) => Attempt::Failed(ProxyError::UpstreamReset {
                endpoint: endpoint.authority.clone(),
                reason: error_chain(&e),
            }),
        }
    }
}

/// Whether the upstream answered something that is not HTTP (hyper could not parse it).
fn is_protocol_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_parse() || h.is_parse_status();
        }
        source = s.source();
    }
    false
}

/// Whether a response's status (or gRPC status) is one the policy retries.
fn retriable_status(on: &RetryOn, status: StatusCode, headers: &HeaderMap) -> bool {
    let code = status.as_u16();
    if (on.server_error && status.is_server_error())
        || (on.gateway_error && matches!(code, 502..=504))
        || (on.retriable_4xx && code == 409)
        || on.status_codes.contains(&code)
    {
        return true;
    }
    if !(on.unavailable
        || on.cancelled
        || on.deadline_exceeded
        || on.internal
        || on.resource_exhausted)
    {
        return false;
    }
    let grpc = headers
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok());
    matches!(
        (grpc, on),
        (
            Some(14),
            RetryOn {
                unavailable: true,
                ..
            }
        ) | (
            Some(1),
            RetryOn {
                cancelled: true,
                ..
            }
        ) | (
            Some(4),
            RetryOn {
                deadline_exceeded: true,
                ..
            }
        ) | (Some(13), RetryOn { internal: true, .. })
            | (
                Some(8),
                RetryOn {
                    resource_exhausted: true,
                    ..
                }
            )
    )
}

/// Sends a copy to a mirror, fire and forget: its answer, slowness or failure never
/// touches the client's response. The Host gets `-shadow`, as Envoy does.
fn mirror_request(
    shared: &Shared,
    mirror: &Target,
    template: &UpstreamRequest,
    body: Bytes,
    timeout: Option<Duration>,
) {
    let cluster = &mirror.cluster;
    if cluster.unavailable.is_some() || cluster.endpoints.is_empty() {
        return;
    }
    // A copy takes a place in the cluster's limits or is dropped; it never queues.
    let Some(slot) = cluster.try_admit() else {
        shared.telemetry.gateway().record_pool_overflow();
        return;
    };
    let index = cluster.pick(None, &mut draw, now_ms());
    let endpoint = Arc::clone(&cluster.endpoints[index]);
    let series = mirror.series.get(index).cloned();
    let request_bytes = body.len() as u64;
    let mut headers = template.headers.clone();
    let shadow = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(shadow_host)
        .and_then(|s| HeaderValue::from_str(&s).ok());
    if let Some(shadow) = shadow {
        headers.insert(header::HOST, shadow);
    }
    let request = template.build(&endpoint, headers, UpstreamBody::full(body));
    let pool = cluster.policy.connection_pool.as_ref();
    let client = shared.clients.get(pool, pool.is_some_and(|p| p.h2_upgrade));
    let limit = timeout.unwrap_or(Duration::from_secs(30));
    let cluster = Arc::clone(cluster);
    let telemetry = Arc::clone(&shared.telemetry);
    tokio::spawn(async move {
        let _slot = slot;
        let _in_flight = endpoint.start();
        let started = std::time::Instant::now();
        // The shadow's answer is measured (as Istio measures mirrored requests) and then
        // dropped; the connection goes back to the pool once the body is drained.
        let (code, flags, body) = match tokio::time::timeout(limit, client.request(request)).await {
            Ok(Ok(response)) => {
                let code = response.status().as_u16();
                match tokio::time::timeout(limit, response.into_body().collect()).await {
                    Ok(Ok(collected)) => (code, ResponseFlags::NONE, collected.to_bytes()),
                    Ok(Err(_)) => (code, ResponseFlags::UC, Bytes::new()),
                    Err(_) => (code, ResponseFlags::UT, Bytes::new()),
                }
            }
            Ok(Err(e)) if e.is_connect() => (0, ResponseFlags::UF, Bytes::new()),
            Ok(Err(_)) => (0, ResponseFlags::UC, Bytes::new()),
            Err(_) => (0, ResponseFlags::UT, Bytes::new()),
        };
        // The copy's outcome feeds outlier detection, as any upstream request does.
        let outcome = match (code, flags) {
            (0, ResponseFlags::UF) => Outcome::ConnectFailure,
            (0, ResponseFlags::UT) => Outcome::Timeout,
            (0, _) => Outcome::Reset,
            (code, _) => Outcome::Status(code),
        };
        if cluster.report(index, outcome, now_ms()).is_some() {
            telemetry.gateway().record_endpoint_ejection();
        }
        if let Some(series) = series {
            record_shadow(&series, code, flags, started, request_bytes, &body);
        }
    });
}

/// Records a mirrored request and, for a completion, its LLM figures.
fn record_shadow(
    series: &DestinationSeries,
    code: u16,
    flags: ResponseFlags,
    started: std::time::Instant,
    request_bytes: u64,
    body: &[u8],
) {
    let now = std::time::Instant::now();
    let e2e = now.saturating_duration_since(started);
    series.record_request(&abgate_telemetry::RequestRecord {
        code,
        flags,
        protocol: RequestProtocol::Http,
        duration: e2e,
        request_bytes,
        response_bytes: body.len() as u64,
        at: now,
    });
    if let Some((prompt_tokens, completion_tokens)) = crate::meter::usage_of(body) {
        series.record_llm(&abgate_telemetry::LlmRecord {
            ttft: None,
            e2e,
            prompt_tokens,
            completion_tokens,
            success: (200..300).contains(&code) && flags.is_empty(),
            at: now,
        });
    }
}

/// `host:port` → `host-shadow:port`.
fn shadow_host(authority: &str) -> String {
    if let Some(end) = authority.rfind(']') {
        let (host, rest) = authority.split_at(end + 1);
        return format!("{host}-shadow{rest}");
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abgate_config::model::RetryPolicy;

    #[test]
    fn shadow_host_goes_before_the_port() {
        assert_eq!(
            shadow_host("api.example.com:8080"),
            "api.example.com-shadow:8080"
        );
        assert_eq!(shadow_host("api.example.com"), "api.example.com-shadow");
    }

    #[test]
    fn model_rewrite_keeps_the_rest_of_the_body() {
        let body = Bytes::from_static(
            br#"{"model":"a","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        );
        let rewritten = with_model(body, "b");
        assert_eq!(
            &rewritten[..],
            br#"{"model":"b","messages":[{"role":"user","content":"hi"}],"stream":true}"#
        );
        assert_eq!(
            with_model(Bytes::from_static(b"[1]"), "b"),
            Bytes::from_static(b"[1]")
        );
    }

    #[test]
    fn retry_on_statuses_follow_envoy() {
        let default = RetryPolicy::istio_default().retry_on;
        let headers = HeaderMap::new();
        assert!(!retriable_status(
            &default,
            StatusCode::SERVICE_UNAVAILABLE,
            &headers
        ));
        let on = RetryOn {
            gateway_error: true,
            ..RetryOn::default()
        };
        assert!(retriable_status(&on, StatusCode::BAD_GATEWAY, &headers));
        assert!(!retriable_status(
            &on,
            StatusCode::INTERNAL_SERVER_ERROR,
            &headers
        ));
        let on = RetryOn {
            status_codes: vec![429],
            ..RetryOn::default()
        };
        assert!(retriable_status(
            &on,
            StatusCode::TOO_MANY_REQUESTS,
            &headers
        ));
    }
}
