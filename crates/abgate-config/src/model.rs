//! Domain types: validated resources that cannot be invalid.
//!
//! Regexes are compiled, durations parsed, weights checked, short host names resolved,
//! defaults applied. The router compiles its tables from these and never re-validates.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::source::Node;

/// The kinds abgate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `networking.istio.io` Gateway.
    Gateway,
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `abgate.dev` Experiment.
    Experiment,
}

impl Kind {
    /// The kind as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Experiment => "Experiment",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a resource is and where it was written.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Its kind.
    pub kind: Kind,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// The file it came from.
    pub file: Arc<Path>,
    /// The parsed document, so later checks can point at a field's line.
    pub node: Arc<Node>,
}

impl Meta {
    /// The line of the document's start.
    pub fn line(&self) -> u32 {
        self.node.line
    }
}

/// A validated resource.
#[derive(Debug, Clone)]
pub enum Resource {
    /// A Gateway.
    Gateway(Gateway),
    /// A VirtualService.
    VirtualService(VirtualService),
    /// A DestinationRule.
    DestinationRule(DestinationRule),
    /// A ServiceEntry.
    ServiceEntry(ServiceEntry),
    /// A WorkloadEntry.
    WorkloadEntry(WorkloadEntry),
    /// An Experiment.
    Experiment(Experiment),
}

impl Resource {
    /// The resource's identity and origin.
    pub fn meta(&self) -> &Meta {
        match self {
            Resource::Gateway(r) => &r.meta,
            Resource::VirtualService(r) => &r.meta,
            Resource::DestinationRule(r) => &r.meta,
            Resource::ServiceEntry(r) => &r.meta,
            Resource::WorkloadEntry(r) => &r.meta,
            Resource::Experiment(r) => &r.meta,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Matching

/// A compiled StringMatch.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole-value RE2 match (compiled anchored).
    Regex(regex::Regex),
    /// Present, whatever the value (`{}`).
    Present,
}

impl StringMatcher {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(s) => value == s,
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::Regex(r) => r.is_match(value),
            StringMatcher::Present => true,
        }
    }

    /// Whether `value` matches, ignoring ASCII case for exact and prefix (`ignoreUriCase`).
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(s) => value.eq_ignore_ascii_case(s),
            StringMatcher::Prefix(p) => {
                value.len() >= p.len()
                    && value.is_char_boundary(p.len())
                    && value[..p.len()].eq_ignore_ascii_case(p)
            }
            other => other.matches(value),
        }
    }

    /// A same-shape comparison used to spot duplicate matches.
    pub fn same_as(&self, other: &StringMatcher) -> bool {
        match (self, other) {
            (StringMatcher::Exact(a), StringMatcher::Exact(b))
            | (StringMatcher::Prefix(a), StringMatcher::Prefix(b)) => a == b,
            (StringMatcher::Regex(a), StringMatcher::Regex(b)) => a.as_str() == b.as_str(),
            (StringMatcher::Present, StringMatcher::Present) => true,
            _ => false,
        }
    }
}

/// One match block: every condition must hold.
#[derive(Debug, Clone, Default)]
pub struct MatchBlock {
    /// Name for logs.
    pub name: Option<String>,
    /// Path.
    pub uri: Option<StringMatcher>,
    /// Scheme.
    pub scheme: Option<StringMatcher>,
    /// Method.
    pub method: Option<StringMatcher>,
    /// Authority.
    pub authority: Option<StringMatcher>,
    /// Headers (lowercase names).
    pub headers: Vec<(String, StringMatcher)>,
    /// Headers that must not match.
    pub without_headers: Vec<(String, StringMatcher)>,
    /// Query parameters.
    pub query_params: Vec<(String, StringMatcher)>,
    /// Listener port.
    pub port: Option<u16>,
    /// `exact`/`prefix` URI ignore case.
    pub ignore_uri_case: bool,
    /// Gateways this block is limited to (resolved `ns/name`); empty means the service's.
    pub gateways: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// VirtualService

/// A VirtualService.
#[derive(Debug, Clone)]
pub struct VirtualService {
    /// Identity.
    pub meta: Meta,
    /// Hosts, lowercase.
    pub hosts: Vec<String>,
    /// Gateways, resolved to `ns/name`, or `mesh`.
    pub gateways: Vec<String>,
    /// Rules in order.
    pub http: Vec<HttpRoute>,
}

/// One rule.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// Rule name.
    pub name: Option<String>,
    /// Match blocks; empty matches everything.
    pub matches: Vec<MatchBlock>,
    /// What to do.
    pub action: RouteAction,
    /// Rule-level header changes.
    pub headers: HeaderRules,
    /// Rewrite before forwarding.
    pub rewrite: Option<Rewrite>,
    /// Request timeout; none when absent (Istio's default).
    pub timeout: Option<Duration>,
    /// Retries, with Istio's defaults applied.
    pub retries: RetryPolicy,
    /// Whether the VirtualService wrote `retries` itself (else `retries` is Istio's
    /// default, which nobody asked for).
    pub retries_configured: bool,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Mirrors.
    pub mirrors: Vec<Mirror>,
    /// CORS.
    pub cors: Option<CorsPolicy>,
}

/// What a rule does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Forward to one of these by weight.
    Forward(Vec<RouteDestination>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    DirectResponse {
        /// Status.
        status: u16,
        /// Body.
        body: Vec<u8>,
    },
}

/// A weighted destination. Weights are relative; at least one is positive.
#[derive(Debug, Clone)]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Relative weight.
    pub weight: u32,
    /// Destination-level header changes.
    pub headers: HeaderRules,
}

/// A service, with optional subset and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Fully qualified host.
    pub host: String,
    /// Subset.
    pub subset: Option<String>,
    /// Port.
    pub port: Option<u16>,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(subset) = &self.subset {
            write!(f, " subset {subset}")?;
        }
        Ok(())
    }
}

/// Request and response header changes.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// On the request sent upstream.
    pub request: HeaderOps,
    /// On the response sent downstream.
    pub response: HeaderOps,
}

/// `set`, `add`, `remove`, names lowercase.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    /// Overwrite.
    pub set: Vec<(String, String)>,
    /// Append.
    pub add: Vec<(String, String)>,
    /// Remove.
    pub remove: Vec<String>,
    /// The Host sent upstream, from a request `set`/`add` of `:authority` (or `host`).
    pub authority: Option<String>,
}

impl HeaderOps {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.add.is_empty()
            && self.remove.is_empty()
            && self.authority.is_none()
    }
}

/// Rewrite.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// URI replacement.
    pub uri: Option<UriRewrite>,
    /// Authority replacement.
    pub authority: Option<String>,
}

/// How the path is rewritten.
#[derive(Debug, Clone)]
pub enum UriRewrite {
    /// Replace the matched prefix (or the whole path).
    Prefix(String),
    /// Regex replace.
    Regex(regex::Regex, String),
}

/// Redirect.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Path replacement.
    pub uri: Option<UriRedirect>,
    /// Authority.
    pub authority: Option<String>,
    /// Port.
    pub port: Option<RedirectPort>,
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// 3xx.
    pub code: u16,
}

/// Path part of a redirect.
#[derive(Debug, Clone)]
pub enum UriRedirect {
    /// Whole path.
    Replace(String),
    /// Matched prefix.
    PrefixRewrite(String),
}

/// Port part of a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPort {
    /// A fixed port.
    Fixed(u16),
    /// 80 or 443 from the scheme.
    FromProtocolDefault,
    /// The port the request came on.
    FromRequestPort,
}

/// Retry conditions (Envoy's `x-envoy-retry-on` names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`.
    pub server_error: bool,
    /// `gateway-error` (502, 503, 504).
    pub gateway_error: bool,
    /// `reset`.
    pub reset: bool,
    /// `reset-before-request`.
    pub reset_before_request: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `refused-stream`.
    pub refused_stream: bool,
    /// `retriable-4xx` (409).
    pub retriable_4xx: bool,
    /// `unavailable` (gRPC; also upstream 503 with grpc-status 14).
    pub unavailable: bool,
    /// `cancelled` (gRPC).
    pub cancelled: bool,
    /// `deadline-exceeded` (gRPC).
    pub deadline_exceeded: bool,
    /// `internal` (gRPC).
    pub internal: bool,
    /// `resource-exhausted` (gRPC).
    pub resource_exhausted: bool,
    /// Status codes (from integers in `retryOn`).
    pub status_codes: Vec<u16>,
}

/// Retry policy with Istio's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables).
    pub attempts: u32,
    /// Timeout of each try.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub retry_on: RetryOn,
    /// Base backoff.
    pub backoff: Duration,
    /// Prefer endpoints not yet tried.
    pub ignore_previous_hosts: bool,
}

impl RetryPolicy {
    /// Istio's default when a route sets no `retries`: 2 retries on connect failure,
    /// refused stream, unavailable, cancelled and retriable status codes (none listed).
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                unavailable: true,
                cancelled: true,
                ..RetryOn::default()
            },
            backoff: Duration::from_millis(25),
            ignore_previous_hosts: true,
        }
    }

    /// No retries (a route with a fault gets none, as in Istio).
    pub fn none() -> Self {
        Self {
            attempts: 0,
            ..Self::istio_default()
        }
    }
}

/// Fault injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Delay and the percentage of requests delayed.
    pub delay: Option<(Duration, f64)>,
    /// Abort status and the percentage of requests aborted.
    pub abort: Option<(FaultAbort, f64)>,
}

/// How an aborted request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAbort {
    /// HTTP status.
    Http(u16),
    /// gRPC status name.
    Grpc(String),
}

/// A mirror target and its percentage.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// Where.
    pub destination: Destination,
    /// 0..=100.
    pub percentage: f64,
}

/// CORS.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    /// Allowed origins.
    pub allow_origins: Vec<StringMatcher>,
    /// Allowed methods.
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    pub allow_headers: Vec<String>,
    /// Exposed response headers.
    pub expose_headers: Vec<String>,
    /// Preflight cache time.
    pub max_age: Option<Duration>,
    /// Allow credentials.
    pub allow_credentials: bool,
    /// Forward preflights that match no origin (Istio's default) rather than ignore them.
    pub forward_unmatched_preflights: bool,
}

// ---------------------------------------------------------------------------------------
// DestinationRule

/// A DestinationRule.
#[derive(Debug, Clone)]
pub struct DestinationRule {
    /// Identity.
    pub meta: Meta,
    /// Fully qualified host.
    pub host: String,
    /// Host-level policy.
    pub traffic_policy: TrafficPolicy,
    /// Subsets.
    pub subsets: Vec<Subset>,
}

impl DestinationRule {
    /// A subset by name.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The policy for traffic sent to `subset` (or to the whole host): as in Istio, each
    /// top-level section the subset sets replaces the host's section whole.
    pub fn policy_for(&self, subset: Option<&str>) -> TrafficPolicy {
        let mut policy = self.traffic_policy.clone();
        if let Some(own) = subset
            .and_then(|s| self.subset(s))
            .map(|s| &s.traffic_policy)
        {
            if own.load_balancer.is_some() {
                policy.load_balancer.clone_from(&own.load_balancer);
            }
            if own.connection_pool.is_some() {
                policy.connection_pool.clone_from(&own.connection_pool);
            }
            if own.outlier_detection.is_some() {
                policy.outlier_detection.clone_from(&own.outlier_detection);
            }
        }
        policy
    }
}

/// A subset.
#[derive(Debug, Clone)]
pub struct Subset {
    /// Name.
    pub name: String,
    /// Endpoint selector.
    pub labels: BTreeMap<String, String>,
    /// Overrides.
    pub traffic_policy: TrafficPolicy,
}

/// The sections of a traffic policy abgate acts on. `None` means unset (inherit or default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficPolicy {
    /// Load balancer.
    pub load_balancer: Option<LoadBalancer>,
    /// Connection limits.
    pub connection_pool: Option<ConnectionPool>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetection>,
}

/// Load balancer choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadBalancer {
    /// Round robin.
    RoundRobin,
    /// Least request (power of two choices); Istio's default.
    LeastRequest,
    /// Random.
    Random,
    /// Send to the address the client asked for.
    Passthrough,
    /// Consistent hashing within the subset.
    ConsistentHash(ConsistentHash),
    /// abgate's model-server-aware balancing (the DestinationRule annotation
    /// [`LLM_LOAD_BALANCER_ANNOTATION`]): the endpoint with the least load by its own
    /// queue and KV-cache figures plus the gateway's requests in flight.
    LlmAware(LlmAware),
}

/// DestinationRule annotation selecting [`LoadBalancer::LlmAware`] for the host (value
/// `llm-aware`). Istio ignores annotations, so the same resource still applies to a mesh.
pub const LLM_LOAD_BALANCER_ANNOTATION: &str = "abgate.dev/load-balancer";
/// Annotation: the path of the endpoints' Prometheus metrics (default `/metrics`).
pub const LLM_METRICS_PATH_ANNOTATION: &str = "abgate.dev/metrics-path";
/// Annotation: how often each endpoint's metrics are read (default `250ms`).
pub const LLM_METRICS_INTERVAL_ANNOTATION: &str = "abgate.dev/metrics-interval";

/// Where and how often the LLM-aware balancer reads its endpoints' load.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LlmAware {
    /// Path of the Prometheus text exposition on each endpoint's own address.
    pub metrics_path: String,
    /// Time between two reads of one endpoint.
    pub interval: Duration,
}

impl Default for LlmAware {
    fn default() -> Self {
        Self {
            metrics_path: "/metrics".into(),
            interval: Duration::from_millis(250),
        }
    }
}

/// Consistent hashing: key and algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistentHash {
    /// What to hash.
    pub key: HashKey,
    /// How.
    pub algorithm: HashAlgorithm,
}

/// A consistent hash key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A header (lowercase).
    Header(String),
    /// A cookie; generated with `ttl` when absent and a ttl is set.
    Cookie {
        /// Name.
        name: String,
        /// Path.
        path: Option<String>,
        /// Lifetime.
        ttl: Option<Duration>,
    },
    /// Client IP.
    SourceIp,
    /// Query parameter.
    QueryParameter(String),
}

/// Ring hash or maglev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// Ring hash with a minimum ring size.
    RingHash {
        /// Default 1024.
        minimum_ring_size: u64,
    },
    /// Maglev with a prime table size.
    Maglev {
        /// Default 65537.
        table_size: u64,
    },
}

/// Connection limits; each `None` is Istio's default (unlimited, or 10s to connect).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    /// Connections per endpoint.
    pub max_connections: Option<u32>,
    /// Connect timeout.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive time.
    pub tcp_keepalive_time: Option<Duration>,
    /// TCP keepalive interval.
    pub tcp_keepalive_interval: Option<Duration>,
    /// TCP keepalive probes.
    pub tcp_keepalive_probes: Option<u32>,
    /// Pending requests waiting for a connection.
    pub http1_max_pending_requests: Option<u32>,
    /// Active requests.
    pub http2_max_requests: Option<u32>,
    /// Requests per connection (0 unlimited).
    pub max_requests_per_connection: Option<u32>,
    /// Outstanding retries.
    pub max_retries: Option<u32>,
    /// Idle connection timeout.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: Option<u32>,
    /// `h2UpgradePolicy: UPGRADE`: speak HTTP/2 (h2c) to the endpoints.
    pub h2_upgrade: bool,
    /// `useClientProtocol`: speak to the endpoints in the protocol the client used.
    pub use_client_protocol: bool,
}

/// Outlier detection, with Istio's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// 5xx in a row; 0 disables (default 5).
    pub consecutive_5xx_errors: u32,
    /// 502/503/504 in a row; 0 disables (default off).
    pub consecutive_gateway_errors: u32,
    /// Sweep period (default 10s).
    pub interval: Duration,
    /// Base ejection time (default 30s).
    pub base_ejection_time: Duration,
    /// Percent of endpoints that may be ejected (default 10).
    pub max_ejection_percent: u32,
    /// Healthy percent below which ejection stops (default 0).
    pub min_health_percent: u32,
}

// ---------------------------------------------------------------------------------------
// Gateway

/// A Gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Identity.
    pub meta: Meta,
    /// Listeners.
    pub servers: Vec<GatewayServer>,
}

/// One Gateway server.
#[derive(Debug, Clone)]
pub struct GatewayServer {
    /// Index in `spec.servers`, for diagnostics.
    pub index: usize,
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Port name.
    pub port_name: Option<String>,
    /// Bind address.
    pub bind: Option<String>,
    /// Hosts, without namespace prefixes, lowercase.
    pub hosts: Vec<String>,
    /// TLS.
    pub tls: Option<ServerTls>,
}

/// Listener protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (and h2c).
    Http,
    /// HTTP over TLS.
    Https,
    /// HTTP/2 cleartext.
    Http2,
    /// gRPC.
    Grpc,
    /// TLS passthrough or termination to TCP (not served by abgate).
    Tls,
    /// Raw TCP (not served by abgate).
    Tcp,
}

/// Server TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Redirect plain HTTP to HTTPS.
    pub https_redirect: bool,
    /// Mode; `None` with `https_redirect` on a plain server.
    pub mode: Option<TlsMode>,
    /// Where the certificate comes from.
    pub credential: Option<Credential>,
}

/// Server TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Terminate TLS.
    Simple,
    /// Terminate and require a client certificate.
    Mutual,
    /// Forward by SNI (not served by abgate).
    Passthrough,
    /// Optional client certificate.
    OptionalMutual,
    /// Mesh certificates (not served by abgate).
    IstioMutual,
    /// SNI clusters (not served by abgate).
    AutoPassthrough,
}

/// A certificate source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `<certs-dir>/<name>/tls.crt` and `tls.key`, as a Kubernetes TLS secret mounts.
    Named(String),
    /// Explicit files.
    Files {
        /// Certificate chain.
        certificate: String,
        /// Private key.
        private_key: String,
    },
}

// ---------------------------------------------------------------------------------------
// ServiceEntry, WorkloadEntry

/// A ServiceEntry.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// Identity.
    pub meta: Meta,
    /// Hosts, lowercase.
    pub hosts: Vec<String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Inline endpoints.
    pub endpoints: Vec<Endpoint>,
    /// WorkloadEntries selected by label, in the same namespace.
    pub workload_selector: Option<BTreeMap<String, String>>,
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Number clients use.
    pub number: u16,
    /// Protocol name.
    pub protocol: String,
    /// Name; endpoints' `ports` map by it.
    pub name: String,
    /// Port on the endpoints when they do not say.
    pub target_port: Option<u16>,
}

/// An endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Address (IP or host name).
    pub address: String,
    /// Port name to number.
    pub ports: BTreeMap<String, u16>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Load-balancing weight (default 1).
    pub weight: u32,
    /// Locality.
    pub locality: Option<String>,
}

impl Endpoint {
    /// Whether every selector label is on this endpoint.
    pub fn selected_by(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A WorkloadEntry.
#[derive(Debug, Clone)]
pub struct WorkloadEntry {
    /// Identity.
    pub meta: Meta,
    /// The endpoint it describes.
    pub endpoint: Endpoint,
}

// ---------------------------------------------------------------------------------------
// Experiment

/// An Experiment (its controller comes with the experiments work; this is its shape).
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Identity.
    pub meta: Meta,
    /// Experiment id (the seed's `id`), `metadata.name` by default.
    pub id: String,
    /// Description.
    pub description: Option<String>,
    /// Fully qualified host whose subsets are compared.
    pub host: String,
    /// Variants, the baseline among them.
    pub variants: Vec<Variant>,
    /// Index of the baseline in `variants`.
    pub baseline: usize,
    /// Who is in it; everyone when empty.
    pub matches: Vec<MatchBlock>,
    /// What keeps a user on one variant.
    pub stickiness: Option<StickinessKey>,
    /// Strategy.
    pub strategy: Strategy,
    /// Time between analyses (default 5m, as the seed's loop).
    pub interval: Duration,
    /// Planned length (default 24h).
    pub duration: Duration,
    /// The seed's target metrics.
    pub target_metrics: BTreeMap<String, f64>,
    /// The seed's success criteria.
    pub success_criteria: BTreeMap<String, f64>,
    /// The seed's rollback criteria.
    pub rollback_criteria: BTreeMap<String, f64>,
    /// How analyses judge the variants.
    pub policy: PolicyKind,
    /// How a canary ramps.
    pub canary: CanaryPlan,
    /// How a bandit allocates (read only by the `bandit` strategy).
    pub bandit: BanditPlan,
    /// Requests each variant needs in the period before any verdict.
    pub min_samples: u64,
    /// Where analysis reads its figures.
    pub metric_source: MetricSource,
    /// Rollback when no decision has moved the experiment on for this long.
    pub progress_deadline: Option<Duration>,
    /// Rollback after this many consecutive failed analyses.
    pub failure_limit: u32,
    /// `bluegreen` only: switch to green at the first analysis, without waiting for
    /// evidence that green is healthy (default false).
    pub skip_analysis: bool,
    /// Webhook gates.
    pub gates: Vec<Gate>,
}

/// Where an experiment's analysis reads each variant's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricSource {
    /// The gateway's own per-variant store.
    Builtin,
    /// PromQL against a Prometheus server.
    Prometheus {
        /// Base URL.
        address: String,
        /// Templates by figure, the defaults filled in.
        queries: BTreeMap<String, String>,
    },
}

/// When a gate is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateKind {
    /// Before the candidate gets its first traffic; a refusal rolls back.
    PreRollout,
    /// Before a promotion; a refusal holds (and the progress deadline then decides).
    ConfirmPromotion,
    /// Asked at every analysis; a yes rolls back.
    Rollback,
    /// Told of every decision; its answer does not matter.
    Event,
}

/// A webhook gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// Name.
    pub name: String,
    /// When it is consulted.
    pub kind: GateKind,
    /// URL posted to.
    pub url: String,
    /// How long to wait.
    pub timeout: Duration,
}

/// Which analysis policy an experiment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Always-valid sequential tests (the default).
    Sequential,
    /// The seed's thresholds, with its defects fixed.
    Classic,
}

/// A canary's ramp: fixed steps up to a maximum, or an explicit list of weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryPlan {
    /// Points added at each healthy analysis (default 10, as the seed's +10).
    pub step_weight: u32,
    /// Explicit candidate weights, in order; empty for fixed steps.
    pub steps: Vec<u32>,
    /// Candidate weight at which the canary is promoted (default 50, the seed's cap).
    pub max_weight: u32,
}

impl Default for CanaryPlan {
    fn default() -> Self {
        Self {
            step_weight: 10,
            steps: Vec::new(),
            max_weight: 50,
        }
    }
}

/// A bandit's allocation: Thompson sampling over `reward`, every arm kept at
/// `min_weight` percent or more, weights moved only once every arm has `min_samples`
/// reward units in the period, a winner at `winner_probability`.
#[derive(Debug, Clone, PartialEq)]
pub struct BanditPlan {
    /// What an arm is rewarded for.
    pub reward: BanditReward,
    /// The least share of traffic, percent, of every arm (default 5).
    pub min_weight: u32,
    /// Reward units every arm needs in a period before an update (default `minSamples`).
    pub min_samples: u64,
    /// The probability of being best that names (and promotes) a winner (default 0.95).
    pub winner_probability: f64,
}

impl Default for BanditPlan {
    fn default() -> Self {
        Self {
            reward: BanditReward::Success,
            min_weight: 5,
            min_samples: 100,
            winner_probability: 0.95,
        }
    }
}

/// A bandit's reward.
#[derive(Debug, Clone, PartialEq)]
pub enum BanditReward {
    /// A response that is not an error.
    Success,
    /// A success within the SLO (each limit in milliseconds, when set).
    Goodput {
        /// Time to first token at most this.
        ttft_ms: Option<f64>,
        /// End-to-end duration at most this.
        latency_ms: Option<f64>,
    },
    /// A score in [0, 1] posted to `POST /api/v1/experiments/{id}/feedback`.
    Feedback,
}

/// An experiment variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Name (reported as `x-variant`).
    pub name: String,
    /// Subset of the host.
    pub subset: String,
    /// Relative weight.
    pub weight: u32,
}

/// A stickiness key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickinessKey {
    /// Where the key comes from.
    pub source: KeySource,
    /// Hash salt.
    pub salt: String,
}

/// Where a stickiness key is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header (lowercase).
    Header(String),
    /// A cookie.
    Cookie(String),
}

/// Experiment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Ramp the candidate.
    Canary,
    /// Fixed split, then a verdict.
    AbTest,
    /// All-or-nothing switch.
    BlueGreen,
    /// Header-matched subset.
    FeatureFlag,
    /// Shadow traffic.
    Mirror,
    /// Thompson sampling.
    Bandit,
}
