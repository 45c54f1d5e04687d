//! Generates YAML that looks like Istio (and abgate Experiment) resources from fuzz input.
//!
//! The generator mostly follows a schema of the real field names (so that documents get
//! past `deny_unknown_fields` and into validation and analysis), and sometimes does not:
//! a value of the wrong type, an unknown or duplicated key, an odd scalar. Names, hosts
//! and subsets are drawn from small pools so that resources refer to each other.

use std::fmt::{self, Write as _};

use arbitrary::{Arbitrary, Result, Unstructured};

/// The generated files (one to three), each a multi-document YAML stream.
pub struct Generated {
    /// File texts.
    pub files: Vec<String>,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, text) in self.files.iter().enumerate() {
            writeln!(f, "# ---- file {i} ----")?;
            f.write_str(text)?;
        }
        Ok(())
    }
}

impl<'a> Arbitrary<'a> for Generated {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n_files = u.int_in_range(1..=3u8)?;
        let mut files = Vec::new();
        for _ in 0..n_files {
            files.push(gen_file(u)?);
        }
        Ok(Self { files })
    }
}

// ---------------------------------------------------------------------------------------
// Tree and emission

enum Node {
    /// Emitted as written (plain scalar, flow collection, tagged value...).
    Raw(String),
    /// A string, emitted quoted or plain.
    Str(String, bool),
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
}

fn plain_ok(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '/' || c == '.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-*^$+".contains(c))
}

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn scalar(node: &Node, out: &mut String) {
    match node {
        Node::Raw(r) => out.push_str(r),
        Node::Str(s, plain) if *plain && plain_ok(s) => out.push_str(s),
        Node::Str(s, _) => quote(s, out),
        Node::Map(m) if m.is_empty() => out.push_str("{}"),
        Node::Seq(s) if s.is_empty() => out.push_str("[]"),
        _ => unreachable!("not a scalar"),
    }
}

fn is_block(node: &Node) -> bool {
    matches!(node, Node::Map(m) if !m.is_empty()) || matches!(node, Node::Seq(s) if !s.is_empty())
}

fn key(k: &str, out: &mut String) {
    if plain_ok(k) {
        out.push_str(k);
    } else {
        quote(k, out);
    }
}

/// Emits `node` as block YAML; the caller has written the indentation of the first line.
fn emit(node: &Node, indent: usize, out: &mut String) {
    match node {
        Node::Map(entries) if !entries.is_empty() => {
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.extend(std::iter::repeat_n(' ', indent));
                }
                key(k, out);
                out.push(':');
                if is_block(v) {
                    out.push('\n');
                    // Sequences under a key may sit at the key's own indentation.
                    let child = if matches!(v, Node::Seq(_)) {
                        indent
                    } else {
                        indent + 2
                    };
                    out.extend(std::iter::repeat_n(' ', child));
                    emit(v, child, out);
                } else {
                    out.push(' ');
                    scalar(v, out);
                    out.push('\n');
                }
            }
        }
        Node::Seq(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend(std::iter::repeat_n(' ', indent));
                }
                out.push_str("- ");
                if is_block(item) {
                    emit(item, indent + 2, out);
                } else {
                    scalar(item, out);
                    out.push('\n');
                }
            }
        }
        other => {
            scalar(other, out);
            out.push('\n');
        }
    }
}

// ---------------------------------------------------------------------------------------
// Schema

#[derive(Clone, Copy)]
enum Shape {
    Str,
    Name,
    Namespace,
    Host,
    GwHost,
    GatewayRef,
    Subset,
    HeaderName,
    Path,
    Regex,
    Dur,
    Int,
    Num,
    Bool,
    Address,
    LabelKey,
    LabelVal,
    RetryOn,
    Enum(&'static [&'static str]),
    Any,
    Map(&'static [(&'static str, Shape)]),
    List(&'static Shape),
    Dict(&'static Shape, &'static Shape),
}

use Shape::*;

static STRING_MATCH: Shape = Map(&[("exact", Str), ("prefix", Path), ("regex", Regex)]);
static PERCENT: Shape = Map(&[("value", Num)]);
static PORT_SELECTOR: Shape = Map(&[("number", Int)]);
static DESTINATION: Shape = Map(&[("host", Host), ("subset", Subset), ("port", PORT_SELECTOR)]);
static HEADER_OPS: Shape = Map(&[
    ("set", Dict(&HeaderName, &Str)),
    ("add", Dict(&HeaderName, &Str)),
    ("remove", List(&HeaderName)),
]);
static HEADERS: Shape = Map(&[("request", HEADER_OPS), ("response", HEADER_OPS)]);
static MATCH_REQUEST: Shape = Map(&[
    ("name", Name),
    ("uri", STRING_MATCH),
    ("scheme", STRING_MATCH),
    ("method", STRING_MATCH),
    ("authority", STRING_MATCH),
    ("headers", Dict(&HeaderName, &STRING_MATCH)),
    ("withoutHeaders", Dict(&HeaderName, &STRING_MATCH)),
    ("queryParams", Dict(&Name, &STRING_MATCH)),
    ("port", Int),
    ("sourceLabels", Dict(&LabelKey, &LabelVal)),
    ("sourceNamespace", Namespace),
    ("gateways", List(&GatewayRef)),
    ("ignoreUriCase", Bool),
    ("statPrefix", Str),
]);
static ROUTE_DESTINATION: Shape = Map(&[
    ("destination", DESTINATION),
    ("weight", Int),
    ("headers", HEADERS),
]);
static RETRIES: Shape = Map(&[
    ("attempts", Int),
    ("perTryTimeout", Dur),
    ("retryOn", RetryOn),
    ("retryRemoteLocalities", Bool),
    ("retryIgnorePreviousHosts", Bool),
    ("backoff", Dur),
]);
static FAULT: Shape = Map(&[
    (
        "delay",
        Map(&[
            ("fixedDelay", Dur),
            ("exponentialDelay", Dur),
            ("percentage", PERCENT),
            ("percent", Int),
        ]),
    ),
    (
        "abort",
        Map(&[
            ("httpStatus", Int),
            (
                "grpcStatus",
                Enum(&["UNAVAILABLE", "INTERNAL", "NOT_FOUND", "14", "bogus"]),
            ),
            ("percentage", PERCENT),
            ("percent", Int),
        ]),
    ),
]);
static REDIRECT: Shape = Map(&[
    ("uri", Path),
    ("prefixRewrite", Path),
    ("authority", Host),
    ("port", Int),
    (
        "derivePort",
        Enum(&["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT", "NOPE"]),
    ),
    ("scheme", Enum(&["http", "https", "ftp", ""])),
    ("redirectCode", Int),
]);
static DIRECT_RESPONSE: Shape = Map(&[
    ("status", Int),
    (
        "body",
        Map(&[
            ("string", Str),
            ("bytes", Enum(&["aGVsbG8=", "", "!!!", "aGVsbG8", "AAAA"])),
        ]),
    ),
]);
static REWRITE: Shape = Map(&[
    ("uri", Path),
    ("authority", Host),
    (
        "uriRegexRewrite",
        Map(&[("match", Regex), ("rewrite", Str)]),
    ),
]);
static CORS: Shape = Map(&[
    ("allowOrigins", List(&STRING_MATCH)),
    ("allowOrigin", List(&Str)),
    (
        "allowMethods",
        List(&Enum(&["GET", "POST", "*", "get", ""])),
    ),
    ("allowHeaders", List(&HeaderName)),
    ("exposeHeaders", List(&HeaderName)),
    ("maxAge", Dur),
    ("allowCredentials", Bool),
    (
        "unmatchedPreflights",
        Enum(&["FORWARD", "IGNORE", "UNSPECIFIED", "x"]),
    ),
]);
static HTTP_ROUTE: Shape = Map(&[
    ("name", Name),
    ("match", List(&MATCH_REQUEST)),
    ("route", List(&ROUTE_DESTINATION)),
    ("redirect", REDIRECT),
    ("directResponse", DIRECT_RESPONSE),
    ("delegate", Map(&[("name", Name), ("namespace", Namespace)])),
    ("rewrite", REWRITE),
    ("timeout", Dur),
    ("retries", RETRIES),
    ("fault", FAULT),
    ("mirror", DESTINATION),
    (
        "mirrors",
        List(&Map(&[
            ("destination", DESTINATION),
            ("percentage", PERCENT),
        ])),
    ),
    ("mirrorPercentage", PERCENT),
    ("mirrorPercent", Int),
    ("corsPolicy", CORS),
    ("headers", HEADERS),
]);
static VS_SPEC: Shape = Map(&[
    ("hosts", List(&Host)),
    ("gateways", List(&GatewayRef)),
    ("http", List(&HTTP_ROUTE)),
    ("tls", Any),
    ("tcp", Any),
    (
        "exportTo",
        List(&Enum(&[".", "*", "other", "~", "default", "ns_1"])),
    ),
]);

static CONSISTENT_HASH: Shape = Map(&[
    ("httpHeaderName", HeaderName),
    (
        "httpCookie",
        Map(&[
            ("name", Name),
            ("path", Path),
            ("ttl", Dur),
            ("attributes", List(&Any)),
        ]),
    ),
    ("useSourceIp", Bool),
    ("httpQueryParameterName", Name),
    ("ringHash", Map(&[("minimumRingSize", Int)])),
    ("maglev", Map(&[("tableSize", Int)])),
    ("minimumRingSize", Int),
]);
static LOAD_BALANCER: Shape = Map(&[
    (
        "simple",
        Enum(&[
            "ROUND_ROBIN",
            "LEAST_REQUEST",
            "LEAST_CONN",
            "RANDOM",
            "PASSTHROUGH",
            "UNSPECIFIED",
            "round_robin",
        ]),
    ),
    ("consistentHash", CONSISTENT_HASH),
    ("localityLbSetting", Any),
    ("warmupDurationSecs", Dur),
    ("warmup", Any),
]);
static CONNECTION_POOL: Shape = Map(&[
    (
        "tcp",
        Map(&[
            ("maxConnections", Int),
            ("connectTimeout", Dur),
            (
                "tcpKeepalive",
                Map(&[("probes", Int), ("time", Dur), ("interval", Dur)]),
            ),
            ("maxConnectionDuration", Dur),
            ("idleTimeout", Dur),
        ]),
    ),
    (
        "http",
        Map(&[
            ("http1MaxPendingRequests", Int),
            ("http2MaxRequests", Int),
            ("maxRequestsPerConnection", Int),
            ("maxRetries", Int),
            ("idleTimeout", Dur),
            (
                "h2UpgradePolicy",
                Enum(&["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE", "x"]),
            ),
            ("useClientProtocol", Bool),
            ("maxConcurrentStreams", Int),
            (
                "http2KeepAlive",
                Map(&[("interval", Dur), ("timeout", Dur)]),
            ),
        ]),
    ),
]);
static OUTLIER: Shape = Map(&[
    ("consecutive5xxErrors", Int),
    ("consecutiveGatewayErrors", Int),
    ("consecutiveErrors", Int),
    ("splitExternalLocalOriginErrors", Bool),
    ("consecutiveLocalOriginFailures", Int),
    ("interval", Dur),
    ("baseEjectionTime", Dur),
    ("maxEjectionPercent", Int),
    ("minHealthPercent", Int),
    ("outlierDetectionHttpErrorCodes", Any),
]);
static TRAFFIC_POLICY: Shape = Map(&[
    ("loadBalancer", LOAD_BALANCER),
    ("connectionPool", CONNECTION_POOL),
    ("outlierDetection", OUTLIER),
    ("tls", Any),
    ("portLevelSettings", Any),
    ("tunnel", Any),
    ("proxyProtocol", Any),
    ("retryBudget", Any),
]);
static DR_SPEC: Shape = Map(&[
    ("host", Host),
    ("trafficPolicy", TRAFFIC_POLICY),
    (
        "subsets",
        List(&Map(&[
            ("name", Subset),
            ("labels", Dict(&LabelKey, &LabelVal)),
            ("trafficPolicy", TRAFFIC_POLICY),
        ])),
    ),
    ("exportTo", List(&Str)),
    ("workloadSelector", Any),
]);

static PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "HTTP2", "GRPC", "TLS", "TCP", "http", "MONGO", "GRPC-WEB", "", "REDIS",
    "UDP", "kafka",
];
static GW_SPEC: Shape = Map(&[
    ("selector", Dict(&LabelKey, &LabelVal)),
    (
        "servers",
        List(&Map(&[
            (
                "port",
                Map(&[
                    ("number", Int),
                    ("protocol", Enum(PROTOCOLS)),
                    ("name", Name),
                    ("targetPort", Int),
                ]),
            ),
            ("bind", Address),
            ("hosts", List(&GwHost)),
            (
                "tls",
                Map(&[
                    ("httpsRedirect", Bool),
                    (
                        "mode",
                        Enum(&[
                            "SIMPLE",
                            "MUTUAL",
                            "PASSTHROUGH",
                            "OPTIONAL_MUTUAL",
                            "ISTIO_MUTUAL",
                            "AUTO_PASSTHROUGH",
                            "simple",
                        ]),
                    ),
                    ("serverCertificate", Path),
                    ("privateKey", Path),
                    ("caCertificates", Path),
                    ("caCrl", Path),
                    ("credentialName", Name),
                    ("credentialNames", List(&Name)),
                    ("caCertCredentialName", Name),
                    ("tlsCertificates", List(&Any)),
                    ("subjectAltNames", List(&Host)),
                    ("verifyCertificateSpki", List(&Str)),
                    ("verifyCertificateHash", List(&Str)),
                    (
                        "minProtocolVersion",
                        Enum(&["TLSV1_2", "TLSV1_3", "TLS_AUTO", "x"]),
                    ),
                    (
                        "maxProtocolVersion",
                        Enum(&["TLSV1_2", "TLSV1_3", "TLSV1_0"]),
                    ),
                    ("cipherSuites", List(&Str)),
                    ("insecureSkipVerify", Bool),
                ]),
            ),
            ("name", Name),
            ("defaultEndpoint", Address),
        ])),
    ),
]);

static SERVICE_PORT: Shape = Map(&[
    ("number", Int),
    ("protocol", Enum(PROTOCOLS)),
    ("name", Name),
    ("targetPort", Int),
]);
static WE_SPEC: Shape = Map(&[
    ("address", Address),
    ("ports", Dict(&Name, &Int)),
    ("labels", Dict(&LabelKey, &LabelVal)),
    ("network", Name),
    ("locality", Enum(&["us-east1/a/b", "", "r", "a/b/c/d"])),
    ("weight", Int),
    ("serviceAccount", Name),
]);
static SE_SPEC: Shape = Map(&[
    ("hosts", List(&Host)),
    ("addresses", List(&Address)),
    ("ports", List(&SERVICE_PORT)),
    ("location", Enum(&["MESH_EXTERNAL", "MESH_INTERNAL", "x"])),
    (
        "resolution",
        Enum(&[
            "NONE",
            "STATIC",
            "DNS",
            "DNS_ROUND_ROBIN",
            "DYNAMIC_DNS",
            "x",
        ]),
    ),
    ("endpoints", List(&WE_SPEC)),
    (
        "workloadSelector",
        Map(&[("labels", Dict(&LabelKey, &LabelVal))]),
    ),
    ("exportTo", List(&Str)),
    ("subjectAltNames", List(&Str)),
]);

static EXPERIMENT_SPEC: Shape = Map(&[
    ("id", Name),
    ("name", Name),
    ("description", Str),
    ("host", Host),
    ("baseline", Subset),
    (
        "variants",
        List(&Map(&[
            ("name", Subset),
            ("subset", Subset),
            ("weight", Int),
        ])),
    ),
    ("trafficSplit", Dict(&Subset, &Int)),
    ("traffic_split", Dict(&Subset, &Int)),
    ("match", List(&MATCH_REQUEST)),
    (
        "stickiness",
        Map(&[("header", HeaderName), ("cookie", Name), ("salt", Str)]),
    ),
    (
        "strategy",
        Enum(&[
            "canary",
            "abtest",
            "bluegreen",
            "featureflag",
            "mirror",
            "bandit",
            "Canary",
        ]),
    ),
    ("policy", Enum(&["sequential", "classic", "x"])),
    ("interval", Dur),
    ("duration", Dur),
    ("durationHours", Num),
    ("duration_hours", Num),
    ("targetMetrics", Dict(&Name, &Num)),
    ("target_metrics", Dict(&Name, &Num)),
    ("successCriteria", Dict(&Name, &Num)),
    ("success_criteria", Dict(&Name, &Num)),
    ("rollbackCriteria", Dict(&Name, &Num)),
    ("rollback_criteria", Dict(&Name, &Num)),
]);

static METADATA: Shape = Map(&[
    ("name", Name),
    ("namespace", Namespace),
    ("labels", Dict(&LabelKey, &LabelVal)),
    ("annotations", Dict(&LabelKey, &Str)),
    ("resourceVersion", Enum(&["1", "12345"])),
    ("uid", Str),
    ("generation", Int),
]);

/// Every key the schema knows, for keys put where they do not belong.
static ALL_KEYS: &[&str] = &[
    "hosts",
    "http",
    "match",
    "route",
    "destination",
    "host",
    "subset",
    "weight",
    "headers",
    "exact",
    "prefix",
    "regex",
    "timeout",
    "retries",
    "attempts",
    "perTryTimeout",
    "fault",
    "delay",
    "abort",
    "percentage",
    "value",
    "trafficPolicy",
    "loadBalancer",
    "consistentHash",
    "subsets",
    "labels",
    "servers",
    "port",
    "number",
    "protocol",
    "tls",
    "endpoints",
    "address",
    "ports",
    "variants",
    "baseline",
    "trafficSplit",
    "gateways",
    "name",
    "namespace",
    "spec",
    "metadata",
    "kind",
    "apiVersion",
    "uri",
    "redirect",
    "rewrite",
    "mirror",
    "corsPolicy",
    "outlierDetection",
    "connectionPool",
    "selector",
    "stickiness",
    "strategy",
    "status",
    "fixedDelay",
    "httpStatus",
    "simple",
    "",
    "unknownField",
    "<<",
];

// ---------------------------------------------------------------------------------------
// Scalar pools

const NAMES: &[&str] = &[
    "reviews", "ratings", "http", "a", "web", "x-1", "Upper", "", "v1",
];
const NAMESPACES: &[&str] = &["default", "production", "test", "istio-system", "", "a.b"];
const HOSTS: &[&str] = &[
    "reviews",
    "reviews.default.svc.cluster.local",
    "ratings.production.svc.cluster.local",
    "api.example.com",
    "*.example.com",
    "*",
    "*.local",
    "models.local",
    "REVIEWS.Default",
    "",
    "a..b",
    "-bad-",
    "10.0.0.1",
    "[::1]",
    "reviews.default",
    "ns/reviews",
    "ratings",
];
const GW_HOSTS: &[&str] = &[
    "*",
    "*/api.example.com",
    "./reviews",
    "production/*",
    "api.example.com",
    "*.example.com",
    "~/x",
    "",
    "a/b/c",
];
const GATEWAY_REFS: &[&str] = &[
    "mesh",
    "llm-gateway",
    "production/llm-gateway",
    "istio-system/ingress",
    "gw",
    "/",
    "",
    "a/b/c",
];
const SUBSETS: &[&str] = &[
    "v1", "v2", "stable", "canary", "baseline", "v1-0", "", "V1", "x.y", "v1_beta",
];
const HEADER_NAMES: &[&str] = &[
    "x-user-id",
    "X-Canary",
    "cookie",
    ":authority",
    ":path",
    "host",
    "end-user",
    "",
    "bad header",
    "x-variant",
];
const PATHS: &[&str] = &[
    "/",
    "/v1",
    "/v1/chat/completions",
    "",
    "v1",
    "/a/../b",
    "/%zz",
    "//",
];
const REGEXES: &[&str] = &[
    ".*",
    "^/v1/.*$",
    "(?i)abc",
    "(",
    "[",
    "\\",
    "a{1000000}",
    "(a+)+$",
    "a**",
    "\\p{Greek}+",
    "(?P<n>x)",
    "[z-a]",
    "",
    "x{2,1}",
    "(?<!a)b",
    "\\bword\\b",
];
const DURATIONS: &[&str] = &[
    "5s",
    "1.5s",
    "100ms",
    "0",
    "0s",
    "-1s",
    "1h30m",
    "10m",
    "1d",
    "5",
    "s",
    "",
    ".s",
    "1..5s",
    "99999999999999h",
    "1e3s",
    "0.0000001ns",
    "+5s",
    "1µs",
    "3us",
    "NaNs",
    "inf",
    "18446744073s",
    "584y",
    "2562047h47m16.854775808s",
];
const INTS: &[&str] = &[
    "50",
    "100",
    "80",
    "0",
    "1",
    "-1",
    "101",
    "443",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "0x10",
    "0o17",
    "1_000",
    "1.0",
    "30",
];
const NUMS: &[&str] = &[
    "0", "0.5", "-0.1", "100.0", "100.1", "1e308", "1e309", ".nan", ".inf", "-.inf", "50",
    "1e-320", "-0.0",
];
const ADDRESSES: &[&str] = &[
    "10.0.0.1",
    "::1",
    "reviews.internal",
    "[::1]",
    "",
    "0.0.0.0",
    "256.1.1.1",
    "unix:///s",
    "unix://relative.sock",
    "10.0.0.0/8",
];
const LABEL_KEYS: &[&str] = &[
    "version",
    "app",
    "track",
    "istio",
    "",
    "a/b",
    "Version",
    "app.kubernetes.io/name",
    "a*",
    "-x",
];
const LABEL_VALS: &[&str] = &[
    "v1",
    "v2",
    "stable",
    "canary",
    "",
    "ingressgateway",
    "reviews",
    "*",
    "-v",
];
const RETRY_ONS: &[&str] = &[
    "5xx",
    "gateway-error,connect-failure,refused-stream",
    "reset,retriable-4xx,503",
    "unavailable,cancelled,deadline-exceeded,internal,resource-exhausted",
    "",
    ",,",
    "99999",
    "bogus",
    "reset-before-request, 5xx",
];
/// Raw YAML scalars with special meaning or tags.
const RAWS: &[&str] = &[
    "~",
    "null",
    "true",
    "yes",
    "{}",
    "[]",
    "[1, 2]",
    "{a: 1}",
    "!!str 5",
    "!!binary aGVsbG8=",
    "!!float 1",
    "!custom x",
    "&anchor 7",
    "*anchor",
    "|\n  block\n",
    "'single'",
    "\"\\u0000\"",
    "\"\\ud800\"",
];

// ---------------------------------------------------------------------------------------
// Generation

struct Gen<'u, 'a> {
    u: &'u mut Unstructured<'a>,
    nodes: usize,
}

const MAX_NODES: usize = 600;

impl Gen<'_, '_> {
    /// Pools list values that validate first: half the time one of the first three.
    fn pick(&mut self, pool: &[&str]) -> Result<String> {
        let pool = if pool.len() > 3 && self.u.arbitrary::<bool>()? {
            &pool[..3]
        } else {
            pool
        };
        Ok((*self.u.choose(pool)?).to_owned())
    }

    /// One in `n`.
    /// (Never once the input is used up, so that exhausted input means "stop adding".)
    fn one_in(&mut self, n: u8) -> Result<bool> {
        Ok(!self.u.is_empty() && self.u.int_in_range(0..=n - 1)? == 0)
    }

    /// A short string from the input itself.
    fn own_string(&mut self) -> Result<String> {
        let len = self.u.int_in_range(0..=12usize)?;
        let bytes = self.u.bytes(len.min(self.u.len()))?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn str_from(&mut self, pool: &[&str]) -> Result<Node> {
        let s = if self.one_in(16)? {
            self.own_string()?
        } else {
            self.pick(pool)?
        };
        let plain = self.u.arbitrary()?;
        Ok(Node::Str(s, plain))
    }

    fn raw_from(&mut self, pool: &[&str]) -> Result<Node> {
        if self.one_in(10)? {
            // The same text as a string: "5" is not 5.
            return Ok(Node::Str(self.pick(pool)?, false));
        }
        Ok(Node::Raw(self.pick(pool)?))
    }

    /// A value of no particular shape.
    fn any(&mut self, depth: u8) -> Result<Node> {
        let choice = if depth == 0 {
            0
        } else {
            self.u.int_in_range(0..=5u8)?
        };
        Ok(match choice {
            0 => match self.u.int_in_range(0..=5u8)? {
                0 => self.raw_from(INTS)?,
                1 => self.raw_from(NUMS)?,
                2 => self.str_from(DURATIONS)?,
                3 => self.raw_from(RAWS)?,
                4 => self.str_from(REGEXES)?,
                _ => self.str_from(NAMES)?,
            },
            1 | 2 => {
                let n = self.u.int_in_range(0..=3usize)?;
                let mut entries = Vec::new();
                for _ in 0..n {
                    let k = self.pick(ALL_KEYS)?;
                    entries.push((k, self.any(depth - 1)?));
                }
                Node::Map(entries)
            }
            3 => {
                let n = self.u.int_in_range(0..=3usize)?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.any(depth - 1)?);
                }
                Node::Seq(items)
            }
            _ => self.str_from(HOSTS)?,
        })
    }

    fn node(&mut self, shape: &Shape, depth: u8) -> Result<Node> {
        self.nodes += 1;
        if self.nodes > MAX_NODES || depth > 24 {
            return Ok(Node::Raw("1".to_owned()));
        }
        // Now and then, something of the wrong shape.
        if self.one_in(64)? {
            return self.any(2);
        }
        Ok(match shape {
            Str => self.str_from(&["hello", "", "ab-test-v1", "true", "5", "a: b", "#x", "é"])?,
            Name => self.str_from(NAMES)?,
            Namespace => self.str_from(NAMESPACES)?,
            Host => self.str_from(HOSTS)?,
            GwHost => self.str_from(GW_HOSTS)?,
            GatewayRef => self.str_from(GATEWAY_REFS)?,
            Subset => self.str_from(SUBSETS)?,
            HeaderName => self.str_from(HEADER_NAMES)?,
            Path => self.str_from(PATHS)?,
            Regex => self.str_from(REGEXES)?,
            Dur => self.str_from(DURATIONS)?,
            Int => self.raw_from(INTS)?,
            Num => self.raw_from(NUMS)?,
            Bool => self.raw_from(&["true", "false", "True", "no", "1"])?,
            Address => self.str_from(ADDRESSES)?,
            LabelKey => self.str_from(LABEL_KEYS)?,
            LabelVal => self.str_from(LABEL_VALS)?,
            RetryOn => self.str_from(RETRY_ONS)?,
            Enum(values) => self.str_from(values)?,
            Any => self.any(3)?,
            Map(fields) => {
                let mut entries = Vec::new();
                // Usually a few fields, in schema order, sometimes shuffled by rotation.
                let keep = self.u.int_in_range(0..=3u8)?;
                for (k, s) in fields.iter() {
                    // keep: 0 → 1/4 of fields, 1 → 1/2, 2 → 3/4, 3 → all.
                    if !self.u.is_empty() && self.u.int_in_range(0..=3u8)? <= keep {
                        entries.push(((*k).to_owned(), self.node(s, depth + 1)?));
                    }
                }
                if !entries.is_empty() && self.one_in(8)? {
                    let by = self.u.int_in_range(0..=entries.len() - 1)?;
                    entries.rotate_left(by);
                }
                if self.one_in(30)? {
                    let k = self.pick(ALL_KEYS)?;
                    entries.push((k, self.any(1)?));
                }
                if !entries.is_empty() && self.one_in(40)? {
                    // A duplicated key.
                    let i = self.u.int_in_range(0..=entries.len() - 1)?;
                    let k = entries[i].0.clone();
                    entries.push((k, self.any(1)?));
                }
                Node::Map(entries)
            }
            List(item) => {
                let n = self.u.int_in_range(0..=4usize)?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.node(item, depth + 1)?);
                }
                Node::Seq(items)
            }
            Dict(k, v) => {
                let n = self.u.int_in_range(0..=3usize)?;
                let mut entries = Vec::new();
                for _ in 0..n {
                    let key = match self.node(k, depth + 1)? {
                        Node::Str(s, _) | Node::Raw(s) => s,
                        _ => "k".to_owned(),
                    };
                    entries.push((key, self.node(v, depth + 1)?));
                }
                Node::Map(entries)
            }
        })
    }

    fn document(&mut self) -> Result<Node> {
        const KINDS: &[(&str, &str, &Shape)] = &[
            ("networking.istio.io/v1", "VirtualService", &VS_SPEC),
            ("networking.istio.io/v1", "DestinationRule", &DR_SPEC),
            ("networking.istio.io/v1", "Gateway", &GW_SPEC),
            ("networking.istio.io/v1", "ServiceEntry", &SE_SPEC),
            ("networking.istio.io/v1", "WorkloadEntry", &WE_SPEC),
            ("abgate.dev/v1alpha1", "Experiment", &EXPERIMENT_SPEC),
        ];
        let (api, kind, spec) = *self.u.choose(KINDS)?;
        let mut api = api.to_owned();
        if self.one_in(4)? {
            api = self.pick(&[
                "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3",
                "networking.istio.io/v2",
                "abgate.dev/v1alpha1",
                "networking.istio.io/v1",
                "v1",
                "",
            ])?;
        }
        let mut kind = kind.to_owned();
        if self.one_in(20)? {
            kind = self.pick(&["Sidecar", "virtualservice", "", "Experiment", "Gateway"])?;
        }
        let mut entries = Vec::new();
        if !self.one_in(30)? {
            entries.push(("apiVersion".to_owned(), Node::Str(api, true)));
        }
        if !self.one_in(30)? {
            entries.push(("kind".to_owned(), Node::Str(kind, true)));
        }
        if !self.one_in(30)? {
            let mut meta = self.node(&METADATA, 1)?;
            // Most resources need a name.
            if let Node::Map(m) = &mut meta {
                if !m.iter().any(|(k, _)| k == "name") && !self.one_in(10)? {
                    m.insert(0, ("name".to_owned(), self.str_from(NAMES)?));
                }
            }
            entries.push(("metadata".to_owned(), meta));
        }
        if !self.one_in(30)? {
            entries.push(("spec".to_owned(), self.node(spec, 1)?));
        }
        if self.one_in(20)? {
            entries.push(("status".to_owned(), self.any(2)?));
        }
        Ok(Node::Map(entries))
    }
}

fn gen_file(u: &mut Unstructured<'_>) -> Result<String> {
    let mut g = Gen { u, nodes: 0 };
    let n_docs = g.u.int_in_range(1..=6u8)?;
    let mut out = String::new();
    for i in 0..n_docs {
        if i > 0 || g.one_in(4)? {
            out.push_str(if g.one_in(30)? { "--- \n" } else { "---\n" });
        }
        if g.one_in(20)? {
            out.push_str("# a comment\n");
        }
        let doc = g.document()?;
        emit(&doc, 0, &mut out);
        if g.one_in(50)? {
            // A broken line, for syntax-error recovery.
            out.push_str(
                g.pick(&["  : :\n", "\t- x\n", "[\n", "key: 'unterminated\n", "...\n"])?
                    .as_str(),
            );
        }
    }
    Ok(out)
}
