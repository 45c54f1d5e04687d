//! Wire types: the resources exactly as written, with Istio's field names.
//!
//! Unknown fields are rejected (the Kubernetes API server does the same with strict field
//! validation). Fields Istio defines but abgate does not act on are accepted as opaque
//! JSON so that real configurations load, and the analyzer says they are ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `metadata`: only what abgate uses is typed; the rest of Kubernetes' ObjectMeta is
/// accepted as it comes from `kubectl get -o yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// `metadata.name`.
    pub name: Option<String>,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A whole resource: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource<S> {
    /// `group/version`.
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// The metadata.
    pub metadata: Metadata,
    /// The spec.
    pub spec: S,
    /// Status written by a controller; ignored.
    #[serde(default)]
    pub status: Option<Value>,
}

/// Istio's StringMatch: one of `exact`, `prefix`, `regex`; empty means "present".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// Exact, case-sensitive.
    pub exact: Option<String>,
    /// Prefix, case-sensitive.
    pub prefix: Option<String>,
    /// RE2 regex, matched against the whole value.
    pub regex: Option<String>,
}

/// A percentage, 0 to 100.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// The percentage.
    #[serde(default)]
    pub value: f64,
}

/// `port: {number: N}` in a destination.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// The port number.
    pub number: u32,
}

// ---------------------------------------------------------------------------------------
// VirtualService

/// VirtualService spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Hosts this service answers for.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (`ns/name`, `name` or `mesh`); empty means `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP rules, in order; the first that matches wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// TLS passthrough routes (not handled by abgate).
    pub tls: Option<Value>,
    /// TCP routes (not handled by abgate).
    pub tcp: Option<Value>,
    /// Visibility.
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// One HTTP rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Rule name.
    pub name: Option<String>,
    /// Match blocks: any may match; within a block all conditions must hold.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly.
    pub direct_response: Option<HttpDirectResponse>,
    /// Delegate to another VirtualService (not handled by abgate).
    pub delegate: Option<Value>,
    /// Rewrite before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout; none by default.
    pub timeout: Option<String>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFault>,
    /// Single mirror target.
    pub mirror: Option<Destination>,
    /// Several mirror targets.
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Share of traffic mirrored to `mirror`.
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage` (also spelt `mirror_percent`).
    #[serde(alias = "mirror_percent")]
    pub mirror_percent: Option<u32>,
    /// CORS policy.
    pub cors_policy: Option<CorsPolicy>,
    /// Header changes for the whole rule.
    pub headers: Option<Headers>,
}

/// One match block.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name for logs.
    pub name: Option<String>,
    /// Path match.
    pub uri: Option<StringMatch>,
    /// Scheme match.
    pub scheme: Option<StringMatch>,
    /// Method match.
    pub method: Option<StringMatch>,
    /// Authority (Host) match.
    pub authority: Option<StringMatch>,
    /// Header matches; keys are lowercase.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Negated header matches.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameter matches.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Port of the listener.
    pub port: Option<u32>,
    /// Client workload labels (a mesh selector; not a runtime match).
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Client namespace (a mesh selector).
    pub source_namespace: Option<String>,
    /// Gateways this block applies to, overriding the VirtualService's.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Case-insensitive `exact`/`prefix` URI match.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Envoy stats prefix (ignored).
    pub stat_prefix: Option<String>,
}

/// A weighted destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send.
    pub destination: Destination,
    /// Relative weight (signed so that a negative value gets a clear diagnostic).
    pub weight: Option<i64>,
    /// Header changes for this destination.
    pub headers: Option<Headers>,
}

/// A service, optionally a subset and port of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Host name (short names resolve in the resource's namespace).
    pub host: String,
    /// Subset defined in a DestinationRule.
    pub subset: Option<String>,
    /// Port.
    pub port: Option<PortSelector>,
}

/// Request and response header changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// Changes to the request sent upstream.
    pub request: Option<HeaderOperations>,
    /// Changes to the response sent downstream.
    pub response: Option<HeaderOperations>,
}

/// `set`, `add`, `remove`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Retry policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries (0 disables).
    pub attempts: Option<i64>,
    /// Timeout of each try.
    pub per_try_timeout: Option<String>,
    /// Conditions, comma-separated; integers are status codes.
    pub retry_on: Option<String>,
    /// Retry other localities.
    pub retry_remote_localities: Option<bool>,
    /// Avoid the hosts already tried (default true).
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base backoff interval (default 25ms).
    pub backoff: Option<String>,
}

/// Fault injection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFault {
    /// Delay some requests.
    pub delay: Option<FaultDelay>,
    /// Abort some requests.
    pub abort: Option<FaultAbort>,
}

/// Delay part of a fault.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    pub fixed_delay: Option<String>,
    /// Not supported by Istio either.
    pub exponential_delay: Option<String>,
    /// Share of requests delayed.
    pub percentage: Option<Percent>,
    /// Deprecated integer share.
    pub percent: Option<i64>,
}

/// Abort part of a fault.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to answer with.
    pub http_status: Option<i64>,
    /// gRPC status name.
    pub grpc_status: Option<String>,
    /// HTTP/2 error (not supported).
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    pub percentage: Option<Percent>,
    /// Deprecated integer share.
    pub percent: Option<i64>,
}

/// Redirect.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replace the path.
    pub uri: Option<String>,
    /// Replace the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Replace the port.
    pub port: Option<u32>,
    /// `FROM_PROTOCOL_DEFAULT` or `FROM_REQUEST_PORT`.
    pub derive_port: Option<String>,
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// 3xx code; 301 by default.
    pub redirect_code: Option<i64>,
}

/// Direct response.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// Status code.
    pub status: i64,
    /// Body.
    pub body: Option<HttpBody>,
}

/// A direct response body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpBody {
    /// Text body.
    pub string: Option<String>,
    /// Base64 body.
    pub bytes: Option<String>,
}

/// Rewrite.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched URI prefix (or the whole path when the match was exact).
    pub uri: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Regex rewrite of the path.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Regex rewrite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Replacement, with `\1` style groups.
    pub rewrite: String,
}

/// One mirror target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where.
    pub destination: Destination,
    /// Share mirrored; all when absent.
    pub percentage: Option<Percent>,
}

/// CORS policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Allowed origins.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// Allowed methods.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Exposed response headers.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Preflight cache time.
    pub max_age: Option<String>,
    /// Allow credentials.
    pub allow_credentials: Option<bool>,
    /// `FORWARD` (default) or `IGNORE`.
    pub unmatched_preflights: Option<String>,
}

// ---------------------------------------------------------------------------------------
// DestinationRule

/// DestinationRule spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The host the rule applies to.
    #[serde(default)]
    pub host: String,
    /// Policy for the whole host.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Visibility.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Client workloads the rule applies to (mesh only).
    pub workload_selector: Option<Value>,
}

/// A subset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name used by routes.
    #[serde(default)]
    pub name: String,
    /// Endpoint label selector.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides of the host's policy.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Traffic policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancer.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS (not handled by abgate).
    pub tls: Option<Value>,
    /// Per-port policies (not handled by abgate).
    pub port_level_settings: Option<Value>,
    /// Tunnel (not handled by abgate).
    pub tunnel: Option<Value>,
    /// PROXY protocol (not handled by abgate).
    pub proxy_protocol: Option<Value>,
    /// Retry budget (not handled by abgate).
    pub retry_budget: Option<Value>,
}

/// Load balancer settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`, `LEAST_CONN`, `PASSTHROUGH`, `UNSPECIFIED`.
    pub simple: Option<String>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHash>,
    /// Locality (not handled by abgate).
    pub locality_lb_setting: Option<Value>,
    /// Zone awareness (not handled by abgate).
    pub zone_aware_lb_setting: Option<Value>,
    /// Deprecated warmup.
    pub warmup_duration_secs: Option<String>,
    /// Warmup (not handled by abgate).
    pub warmup: Option<Value>,
}

/// Consistent hash settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// Hash on a header.
    pub http_header_name: Option<String>,
    /// Hash on a cookie.
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the client address.
    pub use_source_ip: Option<bool>,
    /// Hash on a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash.
    pub ring_hash: Option<RingHash>,
    /// Maglev.
    pub maglev: Option<Maglev>,
    /// Deprecated ring size.
    pub minimum_ring_size: Option<u64>,
}

/// Cookie hash key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name.
    #[serde(default)]
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime; when set and the cookie is absent, one is generated.
    pub ttl: Option<String>,
    /// Extra attributes.
    #[serde(default)]
    pub attributes: Vec<Value>,
}

/// Ring hash.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Ring size (default 1024).
    pub minimum_ring_size: Option<u64>,
}

/// Maglev.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// Table size, prime (default 65537).
    pub table_size: Option<u64>,
}

/// Connection pool.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    pub http: Option<HttpSettings>,
}

/// TCP limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Connections per endpoint.
    pub max_connections: Option<i64>,
    /// Connect timeout (default 10s).
    pub connect_timeout: Option<String>,
    /// Keepalive probes.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Connection lifetime.
    pub max_connection_duration: Option<String>,
    /// Idle timeout.
    pub idle_timeout: Option<String>,
}

/// TCP keepalive.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes before the connection is dead.
    pub probes: Option<u32>,
    /// Idle time before probing.
    pub time: Option<String>,
    /// Between probes.
    pub interval: Option<String>,
}

/// HTTP limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Requests waiting for a connection.
    pub http1_max_pending_requests: Option<i64>,
    /// Active requests.
    pub http2_max_requests: Option<i64>,
    /// Requests per connection (0 unlimited).
    pub max_requests_per_connection: Option<i64>,
    /// Outstanding retries.
    pub max_retries: Option<i64>,
    /// Idle timeout.
    pub idle_timeout: Option<String>,
    /// HTTP/2 upgrade policy.
    pub h2_upgrade_policy: Option<String>,
    /// Use the client's protocol upstream.
    pub use_client_protocol: Option<bool>,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: Option<i64>,
    /// HTTP/2 keepalive pings (added in Istio 1.31).
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// HTTP/2 keepalive pings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2KeepAlive {
    /// Between pings.
    pub interval: Option<String>,
    /// How long to wait for the answer.
    pub timeout: Option<String>,
}

/// Outlier detection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx in a row before ejection (default 5; 0 disables).
    pub consecutive5xx_errors: Option<i64>,
    /// 502/503/504 in a row before ejection.
    pub consecutive_gateway_errors: Option<i64>,
    /// Deprecated alias of consecutiveGatewayErrors.
    pub consecutive_errors: Option<i64>,
    /// Split local-origin failures.
    pub split_external_local_origin_errors: Option<bool>,
    /// Local-origin failures in a row.
    pub consecutive_local_origin_failures: Option<i64>,
    /// Sweep period (default 10s).
    pub interval: Option<String>,
    /// Ejection time, times the ejection count (default 30s).
    pub base_ejection_time: Option<String>,
    /// Most endpoints ejected at once, percent (default 10).
    pub max_ejection_percent: Option<i64>,
    /// Below this healthy share, ejection stops (default 0).
    pub min_health_percent: Option<i64>,
    /// Status codes counted as errors (added in Istio 1.31; not handled by abgate).
    pub outlier_detection_http_error_codes: Option<Value>,
}

// ---------------------------------------------------------------------------------------
// Gateway

/// Gateway spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Gateway workload labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Listeners.
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// One listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// Port and protocol.
    pub port: ServerPort,
    /// Address to bind.
    pub bind: Option<String>,
    /// Hosts served.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS settings.
    pub tls: Option<ServerTls>,
    /// Server name.
    pub name: Option<String>,
    /// Not implemented by Istio.
    pub default_endpoint: Option<String>,
}

/// A listener port.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPort {
    /// Port number.
    pub number: u32,
    /// `HTTP`, `HTTPS`, `HTTP2`, `GRPC`, `TLS`, `TCP`, `MONGO`.
    #[serde(default)]
    pub protocol: String,
    /// Port name.
    pub name: Option<String>,
    /// Deprecated.
    pub target_port: Option<u32>,
}

/// Server TLS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    /// Redirect plain HTTP to HTTPS.
    #[serde(default)]
    pub https_redirect: bool,
    /// `SIMPLE`, `MUTUAL`, `PASSTHROUGH`, ...
    pub mode: Option<String>,
    /// Certificate file.
    pub server_certificate: Option<String>,
    /// Key file.
    pub private_key: Option<String>,
    /// CA file.
    pub ca_certificates: Option<String>,
    /// CRL file.
    pub ca_crl: Option<String>,
    /// Secret name.
    pub credential_name: Option<String>,
    /// Several secrets.
    #[serde(default)]
    pub credential_names: Vec<String>,
    /// CA secret name.
    pub ca_cert_credential_name: Option<String>,
    /// Inline certificates.
    #[serde(default)]
    pub tls_certificates: Vec<Value>,
    /// Client SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Client SPKI pins.
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    /// Client cert hashes.
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS version.
    pub min_protocol_version: Option<String>,
    /// Maximum TLS version.
    pub max_protocol_version: Option<String>,
    /// Cipher suites.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// Skip client verification.
    pub insecure_skip_verify: Option<bool>,
}

// ---------------------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry

/// ServiceEntry spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` or `MESH_INTERNAL`.
    pub location: Option<String>,
    /// `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN`, `DYNAMIC_DNS`.
    pub resolution: Option<String>,
    /// Inline endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Selects WorkloadEntries by label.
    pub workload_selector: Option<WorkloadSelector>,
    /// Visibility.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// A service port.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number.
    pub number: u32,
    /// Protocol.
    #[serde(default)]
    pub protocol: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints.
    pub target_port: Option<u32>,
}

/// A label selector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// WorkloadEntry spec (also an inline ServiceEntry endpoint).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP, host name or `unix://` path.
    #[serde(default)]
    pub address: String,
    /// Port name to number.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels subsets select on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network.
    pub network: Option<String>,
    /// `region/zone/subzone`.
    pub locality: Option<String>,
    /// Load-balancing weight.
    pub weight: Option<u32>,
    /// Service account.
    pub service_account: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Experiment (abgate.dev/v1alpha1)

/// Experiment spec. The seed's `Experiment` fields are accepted under their own names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExperimentSpec {
    /// The seed's experiment id; defaults to `metadata.name`.
    pub id: Option<String>,
    /// Human name.
    pub name: Option<String>,
    /// What it tests.
    pub description: Option<String>,
    /// The host whose subsets are compared.
    #[serde(default)]
    pub host: String,
    /// The baseline variant; the first of `trafficSplit` when absent (as the seed assumes).
    pub baseline: Option<String>,
    /// Variants with their weights.
    #[serde(default)]
    pub variants: Vec<VariantSpec>,
    /// The seed's split: variant (subset) name to weight.
    #[serde(default, alias = "traffic_split")]
    pub traffic_split: indexmap::IndexMap<String, i64>,
    /// Who is in the experiment; everyone when empty.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// What keeps a user on one variant.
    pub stickiness: Option<Stickiness>,
    /// `canary`, `abtest`, `bluegreen`, `featureflag`, `mirror`, `bandit`.
    pub strategy: Option<String>,
    /// `sequential` (default) or `classic`.
    pub policy: Option<String>,
    /// How a canary ramps.
    pub canary: Option<CanarySpec>,
    /// How a `bandit` allocates: its reward, floor, winner threshold.
    pub bandit: Option<BanditSpec>,
    /// How much evidence analysis needs.
    pub analysis: Option<AnalysisSpec>,
    /// Where analysis reads each variant's figures.
    pub metrics: Option<MetricsSpec>,
    /// The longest the experiment may go without a decision that moves it on.
    pub progress_deadline: Option<String>,
    /// Consecutive failed analyses (metric source errors, failed gates) before rollback.
    pub failure_limit: Option<i64>,
    /// `bluegreen`: switch to green at once, without the pre-switch evidence.
    #[serde(default)]
    pub skip_analysis: bool,
    /// Webhooks consulted or told along the way.
    #[serde(default)]
    pub gates: Vec<GateSpec>,
    /// Time between analyses.
    pub interval: Option<String>,
    /// Planned length.
    pub duration: Option<String>,
    /// The seed's length in hours.
    #[serde(alias = "duration_hours")]
    pub duration_hours: Option<f64>,
    /// The seed's target metrics.
    #[serde(default, alias = "target_metrics")]
    pub target_metrics: BTreeMap<String, f64>,
    /// The seed's success criteria.
    #[serde(default, alias = "success_criteria")]
    pub success_criteria: BTreeMap<String, f64>,
    /// The seed's rollback criteria.
    #[serde(default, alias = "rollback_criteria")]
    pub rollback_criteria: BTreeMap<String, f64>,
}

/// A canary's ramp.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanarySpec {
    /// Points of weight added to the candidate at each healthy analysis.
    pub step_weight: Option<i64>,
    /// Explicit weights to walk through instead of fixed steps.
    #[serde(default)]
    pub steps: Vec<i64>,
    /// The candidate weight at which the canary is promoted.
    pub max_weight: Option<i64>,
}

/// A `bandit` experiment's allocation (Thompson sampling).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BanditSpec {
    /// What an arm is rewarded for: `success` (default: a response that is not an
    /// error), `goodput` (a success within `slo`) or `feedback` (scores in [0, 1] posted
    /// to the admin API).
    pub reward: Option<String>,
    /// The SLO a `goodput` reward is judged against.
    pub slo: Option<SloSpec>,
    /// The least share of traffic, in percent, every arm keeps (default 5).
    pub min_weight: Option<i64>,
    /// Reward units (requests, or feedback scores) every arm needs in a period before
    /// the weights move or a winner is named (default `analysis.minSamples`).
    pub min_samples: Option<i64>,
    /// The probability of being best at which an arm is declared the winner and
    /// promoted (default 0.95).
    pub winner_probability: Option<f64>,
}

/// A latency SLO for goodput.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SloSpec {
    /// Time to first token at most this many milliseconds.
    pub ttft_ms: Option<f64>,
    /// End-to-end request duration at most this many milliseconds.
    pub latency_ms: Option<f64>,
}

/// Where analysis reads its figures.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSpec {
    /// `builtin` (the gateway's own per-variant store, the default) or `prometheus`.
    pub source: Option<String>,
    /// The Prometheus server, for `source: prometheus`.
    pub prometheus: Option<PrometheusSpec>,
}

/// A Prometheus metric source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusSpec {
    /// Base URL, e.g. `http://prometheus.monitoring.svc.cluster.local:9090`.
    #[serde(default)]
    pub address: String,
    /// PromQL templates by figure (`requests`, `errors`, `latency_p95_ms`,
    /// `ttft_p95_ms`, `tokens_per_second`); the seed's queries are the defaults.
    #[serde(default)]
    pub queries: BTreeMap<String, String>,
}

/// A webhook gate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GateSpec {
    /// Name, for the decision log.
    pub name: Option<String>,
    /// `pre-rollout`, `confirm-promotion`, `rollback` or `event`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The URL posted to.
    #[serde(default)]
    pub url: String,
    /// How long to wait for an answer (default 10s).
    pub timeout: Option<String>,
}

/// Analysis settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisSpec {
    /// Requests each variant needs in the period before any verdict.
    pub min_samples: Option<i64>,
}

/// One experiment variant.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariantSpec {
    /// Variant name, reported in metrics and `x-variant`.
    pub name: String,
    /// The subset it routes to; the name when absent.
    pub subset: Option<String>,
    /// Relative weight.
    pub weight: Option<i64>,
}

/// Stickiness key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stickiness {
    /// A request header, such as `x-user-id`.
    pub header: Option<String>,
    /// A cookie name.
    pub cookie: Option<String>,
    /// Salt for the hash; the experiment id when absent.
    pub salt: Option<String>,
}
