//! Why a request failed, and the one place that turns that into a status, an Istio
//! response flag and an OpenAI-shaped JSON error body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use abgate_telemetry::ResponseFlags;

use crate::body::ProxyBody;
use crate::client_body::ClientFault;

/// The header that carries Istio/Envoy response flags (`NR`, `UF`, `UT`, ...).
pub const FLAGS_HEADER: &str = "x-abgate-response-flags";

/// A failure on the request path. Each says where it came from: the client's request,
/// the route, or the upstream. Only the upstream's own failures are counted against it
/// (outlier detection, its metrics, its experiment variant); see
/// [`ProxyError::is_client_fault`]. The text sent to the client names no upstream address
/// and no library error: those go to the log ([`ProxyError::detail`]).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request body is larger than allowed.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The request body did not arrive in time (`SI`, 408): nothing of it for the body
    /// read timeout, or still incomplete when the route's timeout passed.
    #[error("the request body did not arrive in time (waited {})", humantime::format_duration(*.0))]
    BodyTimeout(std::time::Duration),
    /// The client went away before its request body was whole (`DC`); answered for a
    /// client that only closed its sending side.
    #[error("the request body ended before it was complete")]
    ClientDisconnected,
    /// A method no route takes explicitly (TRACE).
    #[error("method {0} is not allowed")]
    MethodNotAllowed(String),
    /// The request would come back into the gateway: it has passed through abgate too
    /// many times (`hops`), or its endpoint is one of abgate's own listeners.
    #[error("{}", if *hops { "loop detected: the request has passed through the gateway too many times" } else { "loop detected: the destination is the gateway itself" })]
    LoopDetected {
        /// Refused on its hop count rather than its destination.
        hops: bool,
    },
    /// No server, virtual host or rule takes the request (`NR`).
    #[error("no route for host {host} and path {path}")]
    NoRoute {
        /// The Host.
        host: String,
        /// The path.
        path: String,
    },
    /// The route's subset, or host, is not defined (`NC`).
    #[error("no cluster for {cluster}: the host or subset is not defined by any ServiceEntry or DestinationRule")]
    NoCluster {
        /// `host` or `host/subset`.
        cluster: String,
    },
    /// The cluster has no healthy endpoint (`UH`).
    #[error("no healthy upstream for {cluster}")]
    NoHealthyUpstream {
        /// `host` or `host/subset`.
        cluster: String,
    },
    /// Connecting to the upstream failed (`UF`).
    #[error("upstream connect error or disconnect before headers")]
    ConnectFailure {
        /// `address:port`.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The upstream reset or broke the exchange (`UC`).
    #[error("upstream connection terminated before the response")]
    UpstreamReset {
        /// `address:port`.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The upstream answered something that is not HTTP (`UPE`).
    #[error("upstream answered with a protocol error")]
    UpstreamProtocol {
        /// `address:port`.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The cluster's circuit breakers refused the request (`UO`).
    #[error("upstream overflow: the connection pool of {cluster} is full ({reason})")]
    Overflow {
        /// `host` or `host/subset`.
        cluster: String,
        /// Which limit.
        reason: String,
    },
    /// The route or per-try timeout passed before the response began (`UT`).
    #[error("upstream request timeout after {0:?}")]
    Timeout(std::time::Duration),
    /// Fault injection aborted the request (`FI`).
    #[error("fault filter abort")]
    FaultAbort(u16),
}

impl ProxyError {
    /// The HTTP status this failure answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientDisconnected => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::LoopDetected { .. } => StatusCode::LOOP_DETECTED,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::NoCluster { .. }
            | ProxyError::NoHealthyUpstream { .. }
            | ProxyError::ConnectFailure { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::Overflow { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::FaultAbort(code) => {
                StatusCode::from_u16(*code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// Envoy's response flag for this failure.
    pub fn flag(&self) -> ResponseFlags {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::LoopDetected { hops: true } => ResponseFlags::DPE,
            ProxyError::BodyTimeout(_) => ResponseFlags::SI,
            ProxyError::ClientDisconnected => ResponseFlags::DC,
            ProxyError::MethodNotAllowed(_) => ResponseFlags::NONE,
            ProxyError::LoopDetected { hops: false } => ResponseFlags::NC,
            ProxyError::NoRoute { .. } => ResponseFlags::NR,
            ProxyError::NoCluster { .. } => ResponseFlags::NC,
            ProxyError::NoHealthyUpstream { .. } => ResponseFlags::UH,
            ProxyError::ConnectFailure { .. } => ResponseFlags::UF,
            ProxyError::UpstreamReset { .. } => ResponseFlags::UC,
            ProxyError::Overflow { .. } => ResponseFlags::UO,
            ProxyError::UpstreamProtocol { .. } => ResponseFlags::UPE,
            ProxyError::Timeout(_) => ResponseFlags::UT,
            ProxyError::FaultAbort(_) => ResponseFlags::FI,
        }
    }

    /// How the client is answered when its request body failed: `limit` is the body limit
    /// it broke, `idle` the time it was allowed between chunks.
    pub(crate) fn from_client(
        fault: ClientFault,
        limit: u64,
        idle: std::time::Duration,
    ) -> ProxyError {
        match fault {
            ClientFault::Malformed => {
                ProxyError::BadRequest("the request body is malformed or incomplete".into())
            }
            ClientFault::TooLarge => ProxyError::BodyTooLarge { limit },
            ClientFault::Stalled => ProxyError::BodyTimeout(idle),
            ClientFault::Disconnected => ProxyError::ClientDisconnected,
        }
    }

    /// Whether the client, not the route or the upstream, is at fault: such a request is
    /// counted under no destination, never against an endpoint or a variant.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::BodyTooLarge { .. }
                | ProxyError::BodyTimeout(_)
                | ProxyError::ClientDisconnected
                | ProxyError::MethodNotAllowed(_)
                | ProxyError::LoopDetected { hops: true }
        )
    }

    /// What the log gets beyond the client's message: the upstream's address and the
    /// library's own account of the failure.
    pub fn detail(&self) -> Option<String> {
        match self {
            ProxyError::ConnectFailure { endpoint, reason }
            | ProxyError::UpstreamReset { endpoint, reason }
            | ProxyError::UpstreamProtocol { endpoint, reason } => {
                Some(format!("{endpoint}: {reason}"))
            }
            _ => None,
        }
    }

    /// Whether a retry could help (connect failures and resets, per `retryOn`).
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, ProxyError::ConnectFailure { .. })
    }

    /// The response for this failure, with `flags` (this failure's flag and any earlier
    /// ones such as `URX`) in [`FLAGS_HEADER`].
    pub fn into_response(self, flags: ResponseFlags) -> Response<ProxyBody> {
        let status = self.status();
        error_response(status, &flags.to_string(), &self.to_string(), self.code())
    }

    fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::BodyTimeout(_) => "request_timeout",
            ProxyError::ClientDisconnected => "client_disconnected",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::LoopDetected { .. } => "loop_detected",
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::NoCluster { .. } => "no_cluster",
            ProxyError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            ProxyError::ConnectFailure { .. } => "upstream_connect_failure",
            ProxyError::UpstreamReset { .. } => "upstream_reset",
            ProxyError::Overflow { .. } => "upstream_overflow",
            ProxyError::UpstreamProtocol { .. } => "upstream_protocol_error",
            ProxyError::Timeout(_) => "upstream_timeout",
            ProxyError::FaultAbort(_) => "fault_injected",
        }
    }
}

/// An OpenAI-style error response: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_response(
    status: StatusCode,
    flags: &str,
    message: &str,
    code: &str,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from(error_body(
        status, message, code,
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(flags) {
        headers.insert(FLAGS_HEADER, v);
    }
    response
}

/// The JSON of an OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error_body(status: StatusCode, message: &str, code: &str) -> String {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    })
    .to_string()
}
