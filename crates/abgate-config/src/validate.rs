//! Validation of one resource on its own: wire types in, domain types and diagnostics out.
//!
//! Every problem is gathered before giving up, so one pass shows them all. A resource with
//! an error is not produced: as the API server would, abgate refuses it whole.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::diag::{Code, Diagnostic, Severity};
use crate::model::*;
use crate::source::{Document, FieldPath, Node};
use crate::{duration, syntax, wire};

/// The namespace a resource without `metadata.namespace` lives in.
pub const DEFAULT_NAMESPACE: &str = "default";

const NETWORKING_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
const EXPERIMENT_VERSION: &str = "abgate.dev/v1alpha1";
/// The Istio release whose schema and validation abgate follows.
const ISTIO_VERSION: &str = "1.31";
const MAX_REGEX_LEN: usize = 1024;
const MAX_DIRECT_RESPONSE_BODY: usize = 1 << 20;
/// The gRPC status names a fault abort may answer with.
const GRPC_STATUSES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
/// The methods a CORS policy may allow.
const CORS_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

/// Validates one YAML document into a resource. Returns `None` for the resource when
/// it has an error (or is a kind abgate ignores), with every diagnostic found.
pub fn validate_document(doc: &Document) -> (Option<Resource>, Vec<Diagnostic>) {
    let root = Arc::new(doc.root.clone());
    let mut cx = Cx {
        file: Arc::clone(&doc.file),
        node: Arc::clone(&root),
        kind: String::new(),
        name: String::new(),
        namespace: String::new(),
        diagnostics: Vec::new(),
    };
    let Some(kind) = identify(&mut cx) else {
        return (None, cx.diagnostics);
    };
    let meta_labels = |key: &str| -> BTreeMap<String, String> {
        root.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(|n| serde_json::from_value(n.to_json()).ok())
            .unwrap_or_default()
    };
    let meta = Meta {
        kind,
        name: cx.name.clone(),
        namespace: cx.namespace.clone(),
        labels: meta_labels("labels"),
        annotations: meta_labels("annotations"),
        file: Arc::clone(&doc.file),
        node: Arc::clone(&root),
    };
    let resource = match kind {
        Kind::VirtualService => cx
            .spec::<wire::VirtualServiceSpec>()
            .map(|s| Resource::VirtualService(virtual_service(&mut cx, meta, s))),
        Kind::DestinationRule => cx
            .spec::<wire::DestinationRuleSpec>()
            .map(|s| Resource::DestinationRule(destination_rule(&mut cx, meta, s))),
        Kind::Gateway => cx
            .spec::<wire::GatewaySpec>()
            .map(|s| Resource::Gateway(gateway(&mut cx, meta, s))),
        Kind::ServiceEntry => cx
            .spec::<wire::ServiceEntrySpec>()
            .map(|s| Resource::ServiceEntry(service_entry(&mut cx, meta, s))),
        Kind::WorkloadEntry => cx.spec::<wire::WorkloadEntrySpec>().map(|s| {
            let endpoint = endpoint(&mut cx, &FieldPath::root().key("spec"), s);
            Resource::WorkloadEntry(WorkloadEntry { meta, endpoint })
        }),
        Kind::Experiment => cx
            .spec::<wire::ExperimentSpec>()
            .map(|s| Resource::Experiment(experiment(&mut cx, meta, s))),
    };
    let rejected = cx.diagnostics.iter().any(Diagnostic::is_error);
    (resource.filter(|_| !rejected), cx.diagnostics)
}

/// Resolves a host as Istio does: a name with no dot is short and lives in the
/// resource's namespace; anything else (including `*` wildcards) is taken as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.contains('.') || host.starts_with('*') {
        host
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

/// Resolves a gateway reference to `namespace/name`; `mesh` stays `mesh`.
pub fn resolve_gateway(reference: &str, namespace: &str) -> String {
    match reference.split_once('/') {
        _ if reference == "mesh" => reference.to_owned(),
        Some((ns, name)) => format!("{ns}/{name}"),
        // `name.namespace.svc.cluster.local`-style references are Istio's older form.
        None => match reference.split_once('.') {
            Some((name, ns)) if !ns.is_empty() => {
                format!("{}/{name}", ns.split('.').next().unwrap_or(ns))
            }
            _ => format!("{namespace}/{reference}"),
        },
    }
}

/// Whether two hosts (either possibly a wildcard) can name the same host.
fn hosts_overlap(a: &str, b: &str) -> bool {
    crate::host_matches(a, b) || crate::host_matches(b, a)
}

/// Validation context for one resource: who it is and what was found.
pub(crate) struct Cx {
    file: Arc<std::path::Path>,
    node: Arc<Node>,
    kind: String,
    name: String,
    namespace: String,
    diagnostics: Vec<Diagnostic>,
}

impl Cx {
    fn push(&mut self, code: Code, severity: Severity, field: FieldPath, message: String) {
        let line = self.node.line_of(&field);
        self.diagnostics.push(Diagnostic {
            code,
            severity,
            file: Arc::clone(&self.file),
            line,
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            field,
            message,
        });
    }

    fn error(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.push(
            Code::SchemaValidationError,
            Severity::Error,
            field.clone(),
            message.into(),
        );
    }

    fn warn(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.push(
            Code::SchemaWarning,
            Severity::Warning,
            field.clone(),
            message.into(),
        );
    }

    /// Accepted by abgate, but Istio in a cluster would refuse it or read it otherwise.
    fn diverges(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.push(
            Code::IstioDivergence,
            Severity::Warning,
            field.clone(),
            message.into(),
        );
    }

    /// A duration Envoy takes: at least 1ms, in whole milliseconds (Istio's check).
    fn envoy_duration(&mut self, field: &FieldPath, text: &Option<String>) -> Option<Duration> {
        let d = self.duration(field, text)?;
        if d < Duration::from_millis(1) {
            self.error(field, "duration must be at least 1ms");
            return None;
        }
        if d.subsec_nanos() % 1_000_000 != 0 {
            self.error(field, "duration must be a whole number of milliseconds");
            return None;
        }
        Some(d)
    }

    fn unsupported(&mut self, field: &FieldPath, what: &str) {
        self.push(
            Code::UnsupportedField,
            Severity::Info,
            field.clone(),
            format!("{what} is valid Istio configuration that abgate accepts but does not act on"),
        );
    }

    /// Deserializes `spec`, reporting a schema error with its exact field on failure.
    fn spec<T: DeserializeOwned>(&mut self) -> Option<T> {
        let spec_path = FieldPath::root().key("spec");
        let Some(spec) = self.node.get("spec") else {
            self.error(&spec_path, "`spec` is missing");
            return None;
        };
        let json = spec.to_json();
        match serde_path_to_error::deserialize::<_, T>(json) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut path = spec_path;
                for segment in e.path().iter() {
                    use serde_path_to_error::Segment as S;
                    path = match segment {
                        S::Seq { index } => path.index(*index),
                        S::Map { key } => path.key(key),
                        S::Enum { variant } => path.key(variant),
                        S::Unknown => path,
                    };
                }
                let inner = e.into_inner().to_string();
                let message = match unknown_field_name(&inner) {
                    Some(field) => {
                        if path.segments().last()
                            != Some(&crate::source::Segment::Key(field.clone()))
                        {
                            path = path.key(&field);
                        }
                        let hint = suggest(&field, &inner)
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                        format!("unknown field `{field}`{hint}: not in the Istio {ISTIO_VERSION} schema abgate follows (a field added by a newer Istio is not known to abgate yet); the resource is rejected as Kubernetes would reject it")
                    }
                    None => format!("schema error: {inner}"),
                };
                self.error(&path, message);
                None
            }
        }
    }

    fn duration(&mut self, field: &FieldPath, text: &Option<String>) -> Option<Duration> {
        let text = text.as_deref()?;
        match duration::parse(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(field, format!("malformed duration: {e}"));
                None
            }
        }
    }

    fn nonneg_u32(&mut self, field: &FieldPath, value: Option<i64>) -> Option<u32> {
        let value = value?;
        match u32::try_from(value) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(
                    field,
                    format!("must be between 0 and {}, got {value}", u32::MAX),
                );
                None
            }
        }
    }

    fn port(&mut self, field: &FieldPath, value: u32) -> u16 {
        match u16::try_from(value) {
            Ok(p) if p > 0 => p,
            _ => {
                self.error(
                    field,
                    format!("port must be between 1 and 65535, got {value}"),
                );
                0
            }
        }
    }

    fn percent(&mut self, field: &FieldPath, value: f64) -> f64 {
        if !(0.0..=100.0).contains(&value) {
            self.error(
                field,
                format!("percentage must be between 0 and 100, got {value}"),
            );
        }
        value.clamp(0.0, 100.0)
    }
}

/// Reads apiVersion, kind and metadata, reporting what is missing or unsupported.
fn identify(cx: &mut Cx) -> Option<Kind> {
    let root = Arc::clone(&cx.node);
    let text = |key: &str| root.get(key).and_then(Node::as_str).map(str::to_owned);
    let meta = root.get("metadata");
    cx.name = meta
        .and_then(|m| m.get("name"))
        .and_then(Node::as_str)
        .unwrap_or("")
        .to_owned();
    cx.namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Node::as_str)
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_owned();
    let api_version = text("apiVersion");
    let kind = text("kind");
    cx.kind = kind.clone().unwrap_or_default();

    let mut missing = Vec::new();
    if api_version.is_none() {
        missing.push("apiVersion");
    }
    if kind.is_none() {
        missing.push("kind");
    }
    if cx.name.is_empty() {
        missing.push("metadata.name");
    }
    if !missing.is_empty() {
        let field = FieldPath::parse(missing[0]);
        cx.push(
            Code::MissingTypeMeta,
            Severity::Error,
            field,
            format!(
                "{} missing: every resource needs apiVersion, kind and metadata.name",
                missing.join(", ")
            ),
        );
        return None;
    }
    let (api_version, kind_name) = (api_version.unwrap_or_default(), kind.unwrap_or_default());
    let kind = match kind_name.as_str() {
        "Gateway" => Kind::Gateway,
        "VirtualService" => Kind::VirtualService,
        "DestinationRule" => Kind::DestinationRule,
        "ServiceEntry" => Kind::ServiceEntry,
        "WorkloadEntry" => Kind::WorkloadEntry,
        "Experiment" => Kind::Experiment,
        _ => {
            cx.push(
                Code::UnsupportedKind,
                Severity::Warning,
                FieldPath::root().key("kind"),
                format!("{api_version} {kind_name} is not a kind abgate handles; it is ignored"),
            );
            return None;
        }
    };
    let supported = if kind == Kind::Experiment {
        api_version == EXPERIMENT_VERSION
    } else {
        NETWORKING_VERSIONS.contains(&api_version.as_str())
    };
    if !supported {
        let expected = if kind == Kind::Experiment {
            EXPERIMENT_VERSION.to_owned()
        } else {
            NETWORKING_VERSIONS.join(", ")
        };
        cx.push(
            Code::UnsupportedKind,
            Severity::Error,
            FieldPath::root().key("apiVersion"),
            format!(
                "apiVersion {api_version} is not supported for {kind_name}; use one of {expected}"
            ),
        );
        return None;
    }
    Some(kind)
}

/// Pulls the field name out of serde's "unknown field `x`, expected ..." message.
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The expected field closest to a misspelt one, from serde's message.
fn suggest(field: &str, message: &str) -> Option<String> {
    let expected = message.split("expected ").nth(1)?;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (edit_distance(field, candidate), candidate))
        .filter(|(d, c)| *d <= 3.max(c.len() / 3))
        .min()
        .map(|(_, c)| c.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

// ---------------------------------------------------------------------------------------
// Matching

fn string_matcher(cx: &mut Cx, field: &FieldPath, m: &wire::StringMatch) -> Option<StringMatcher> {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()];
    match set.iter().filter(|s| **s).count() {
        0 => return Some(StringMatcher::Present),
        1 => {}
        _ => {
            cx.error(field, "only one of exact, prefix or regex may be set");
            return None;
        }
    }
    if let Some(exact) = &m.exact {
        return Some(StringMatcher::Exact(exact.clone()));
    }
    if let Some(prefix) = &m.prefix {
        if prefix.is_empty() {
            cx.error(&field.key("prefix"), "prefix must not be empty");
            return None;
        }
        return Some(StringMatcher::Prefix(prefix.clone()));
    }
    let pattern = m.regex.as_deref().unwrap_or_default();
    compile_regex(cx, &field.key("regex"), pattern).map(StringMatcher::Regex)
}

/// Compiles an RE2-syntax pattern anchored at both ends, as Envoy matches it.
fn compile_regex(cx: &mut Cx, field: &FieldPath, pattern: &str) -> Option<regex::Regex> {
    if pattern.is_empty() {
        cx.error(field, "regex must not be empty");
        return None;
    }
    if pattern.len() > MAX_REGEX_LEN {
        cx.error(
            field,
            format!(
                "regex is {} characters; at most {MAX_REGEX_LEN} are allowed",
                pattern.len()
            ),
        );
        return None;
    }
    match regex::Regex::new(&format!("^(?:{pattern})$")) {
        Ok(r) => Some(r),
        Err(e) => {
            let reason = e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_owned();
            cx.error(field, format!("invalid regex `{pattern}`: {reason}"));
            None
        }
    }
}

fn string_matchers(
    cx: &mut Cx,
    field: &FieldPath,
    map: &BTreeMap<String, wire::StringMatch>,
    header_names: bool,
) -> Vec<(String, StringMatcher)> {
    let mut out = Vec::new();
    for (name, m) in map {
        let f = field.key(name);
        if header_names {
            if name.chars().any(|c| c.is_ascii_uppercase()) {
                cx.error(&f, format!("header name `{name}` must be lowercase"));
                continue;
            }
            if http_token(name).is_err() {
                cx.error(&f, format!("`{name}` is not a valid header name"));
                continue;
            }
            if matches!(name.as_str(), "uri" | "scheme" | "method" | "authority") {
                cx.warn(
                    &f,
                    format!("`{name}` is ignored as a header key; use the `{name}` match field"),
                );
                continue;
            }
        }
        if let Some(matcher) = string_matcher(cx, &f, m) {
            out.push((name.clone(), matcher));
        }
    }
    out
}

fn http_token(name: &str) -> Result<(), ()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

pub(crate) fn match_block(
    cx: &mut Cx,
    field: &FieldPath,
    m: &wire::HttpMatchRequest,
    namespace: &str,
) -> MatchBlock {
    let opt = |cx: &mut Cx, key: &str, v: &Option<wire::StringMatch>| {
        v.as_ref()
            .and_then(|m| string_matcher(cx, &field.key(key), m))
    };
    if !m.source_labels.is_empty() {
        cx.unsupported(
            &field.key("sourceLabels"),
            "sourceLabels (a mesh workload selector)",
        );
    }
    for (i, reference) in m.gateways.iter().enumerate() {
        if let Err(reason) = syntax::check_gateway_reference(reference) {
            cx.error(&field.key("gateways").index(i), reason);
        }
    }
    if let Some(ns) = m.source_namespace.as_deref() {
        if !syntax::is_dns1123_label(ns) {
            cx.error(
                &field.key("sourceNamespace"),
                format!("`{ns}` is not a namespace (a DNS-1123 label)"),
            );
        }
    }
    if m.source_namespace.is_some() {
        cx.unsupported(
            &field.key("sourceNamespace"),
            "sourceNamespace (a mesh workload selector)",
        );
    }
    MatchBlock {
        name: m.name.clone(),
        uri: opt(cx, "uri", &m.uri),
        scheme: opt(cx, "scheme", &m.scheme),
        method: opt(cx, "method", &m.method),
        authority: opt(cx, "authority", &m.authority),
        headers: string_matchers(cx, &field.key("headers"), &m.headers, true),
        without_headers: string_matchers(
            cx,
            &field.key("withoutHeaders"),
            &m.without_headers,
            true,
        ),
        query_params: string_matchers(cx, &field.key("queryParams"), &m.query_params, false),
        port: m.port.map(|p| cx.port(&field.key("port"), p)),
        ignore_uri_case: m.ignore_uri_case,
        gateways: m
            .gateways
            .iter()
            .map(|g| resolve_gateway(g, namespace))
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------
// VirtualService

/// Label keys and values as Kubernetes takes them (Istio's check of subset and
/// endpoint labels).
fn check_labels(cx: &mut Cx, field: &FieldPath, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        if let Err(reason) =
            syntax::check_label_key(key).and_then(|()| syntax::check_label_value(key, value))
        {
            cx.error(&field.key(key), reason);
        }
    }
}

/// `exportTo`, which abgate reads no further: it serves one view of every namespace.
fn check_export_to(
    cx: &mut Cx,
    field: &FieldPath,
    entries: &[String],
    namespace: &str,
    service_entry: bool,
) {
    for (i, reason) in syntax::check_export_to(entries, namespace, service_entry) {
        cx.error(&field.index(i), reason);
    }
}

fn virtual_service(cx: &mut Cx, meta: Meta, spec: wire::VirtualServiceSpec) -> VirtualService {
    let spec_path = FieldPath::root().key("spec");
    let ns = meta.namespace.clone();
    if spec.hosts.is_empty() {
        // Istio takes a VirtualService with no hosts as a delegate, reachable only
        // through another VirtualService's `delegate`, which abgate does not follow.
        cx.unsupported(
            &spec_path.key("hosts"),
            "a VirtualService with no hosts (a delegate, used only through another VirtualService's `delegate`)",
        );
    }
    check_export_to(cx, &spec_path.key("exportTo"), &spec.export_to, &ns, false);
    for (i, reference) in spec.gateways.iter().enumerate() {
        if let Err(reason) = syntax::check_gateway_reference(reference) {
            cx.error(&spec_path.key("gateways").index(i), reason);
        }
    }
    // As Istio: with no gateways, or `mesh` among them, the rules apply to the mesh.
    let applies_to_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    let mut all_valid = true;
    for (i, host) in spec.hosts.iter().enumerate() {
        let f = spec_path.key("hosts").index(i);
        if let Err(reason) = syntax::check_wildcard_domain(host) {
            if !syntax::is_ip(host) {
                cx.error(&f, reason);
                all_valid = false;
            }
        } else if host == "*" && applies_to_mesh {
            cx.diverges(
                &f,
                "host `*` on a VirtualService bound to the mesh: abgate's mesh view (`serve --listen` with no Gateway) serves every host with it, but Istio rejects it in a cluster; there, list the hosts, or bind the VirtualService to a Gateway with `gateways: [NAME]`",
            );
        }
    }
    if all_valid {
        let hosts: Vec<String> = spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        for (j, host) in hosts.iter().enumerate() {
            if let Some(earlier) = hosts[..j].iter().find(|e| hosts_overlap(e, host)) {
                let what = if earlier == host {
                    format!("host `{host}` is listed twice")
                } else {
                    format!("host `{host}` overlaps `{earlier}` listed before it")
                };
                cx.error(
                    &spec_path.key("hosts").index(j),
                    format!("{what}; Istio rejects duplicate hosts in one VirtualService"),
                );
            }
        }
    }
    if spec.http.is_empty() && spec.tcp.is_none() && spec.tls.is_none() {
        cx.error(
            &spec_path.key("http"),
            "at least one of http, tcp or tls routes is required",
        );
    }
    if let Some(tcp) = &spec.tcp {
        cx.unsupported(&spec_path.key("tcp"), "tcp routing");
        l4_routes(cx, &spec_path.key("tcp"), tcp, None);
    }
    if let Some(tls) = &spec.tls {
        cx.unsupported(&spec_path.key("tls"), "tls (SNI) routing");
        l4_routes(cx, &spec_path.key("tls"), tls, Some(&spec.hosts));
    }
    let http = spec
        .http
        .iter()
        .enumerate()
        .filter_map(|(i, r)| http_route(cx, &spec_path.key("http").index(i), r, &ns))
        .collect();
    VirtualService {
        hosts: spec.hosts.iter().map(|h| resolve_host(h, &ns)).collect(),
        gateways: if spec.gateways.is_empty() {
            vec!["mesh".to_owned()]
        } else {
            spec.gateways
                .iter()
                .map(|g| resolve_gateway(g, &ns))
                .collect()
        },
        http,
        meta,
    }
}

/// TCP and TLS routes, which abgate does not serve but checks as Istio does: each needs
/// a route with valid destinations, and a TLS route SNI hosts within the
/// VirtualService's hosts. `vs_hosts` is set for TLS routes.
fn l4_routes(
    cx: &mut Cx,
    field: &FieldPath,
    routes: &serde_json::Value,
    vs_hosts: Option<&[String]>,
) {
    let Some(routes) = routes.as_array() else {
        return;
    };
    for (i, route) in routes.iter().enumerate() {
        let f = field.index(i);
        if let Some(vs_hosts) = vs_hosts {
            let matches = route.get("match").and_then(|m| m.as_array());
            if matches.is_none_or(|m| m.is_empty()) {
                cx.error(&f.key("match"), "a TLS route needs at least one match");
            }
            for (j, m) in matches.into_iter().flatten().enumerate() {
                let sni = m.get("sniHosts").and_then(|s| s.as_array());
                if sni.is_none_or(|s| s.is_empty()) {
                    cx.error(&f.key("match").index(j), "a TLS match needs sniHosts");
                }
                for (k, host) in sni.into_iter().flatten().enumerate() {
                    let host = host.as_str().unwrap_or_default();
                    let hf = f.key("match").index(j).key("sniHosts").index(k);
                    sni_host(cx, &hf, host, vs_hosts);
                }
            }
        }
        let destinations = route.get("route").and_then(|r| r.as_array());
        if destinations.is_none_or(|d| d.is_empty()) {
            cx.error(&f.key("route"), "a route needs at least one destination");
        }
        let mut total = 0i64;
        let destinations = destinations.map(Vec::as_slice).unwrap_or_default();
        for (j, d) in destinations.iter().enumerate() {
            let df = f.key("route").index(j);
            match d
                .get("destination")
                .and_then(|d| d.get("host"))
                .and_then(|h| h.as_str())
            {
                Some(host) => destination_host(cx, &df.key("destination").key("host"), host),
                None => cx.error(&df.key("destination"), "destination host is required"),
            }
            let weight = d.get("weight").and_then(|w| w.as_i64()).unwrap_or(0);
            if weight < 0 {
                cx.error(&df.key("weight"), "weight must not be negative");
            }
            total += weight;
        }
        if destinations.len() > 1 && total == 0 {
            cx.error(&f.key("route"), "the destination weights add up to 0");
        }
    }
}

fn sni_host(cx: &mut Cx, field: &FieldPath, host: &str, vs_hosts: &[String]) {
    if let Err(reason) = syntax::check_wildcard_domain(host) {
        if syntax::is_ip(host) {
            cx.warn(
                field,
                format!("SNI host `{host}` is an IP address; SNI carries names, and most clients never send an IP"),
            );
        } else {
            cx.error(field, reason);
        }
        return;
    }
    let host = host.to_ascii_lowercase();
    let within = vs_hosts
        .iter()
        .any(|h| crate::host_matches(&h.to_ascii_lowercase(), &host));
    if !within {
        cx.error(
            field,
            format!("SNI host `{host}` is not within any of the VirtualService's hosts"),
        );
    }
}

/// A destination host as Istio checks it: a domain whose first label may be a wildcard,
/// but not `*` alone.
fn destination_host(cx: &mut Cx, field: &FieldPath, host: &str) {
    if host.is_empty() {
        cx.error(field, "destination host is required");
    } else if host == "*" {
        cx.error(field, "a destination host cannot be `*`: name the service");
    } else if let Err(reason) = syntax::check_wildcard_domain(host) {
        cx.error(field, reason);
    }
}

fn http_route(cx: &mut Cx, field: &FieldPath, r: &wire::HttpRoute, ns: &str) -> Option<HttpRoute> {
    let matches = r
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| match_block(cx, &field.key("match").index(i), m, ns))
        .collect::<Vec<_>>();

    if r.delegate.is_some() {
        cx.push(
            Code::UnsupportedField,
            Severity::Error,
            field.key("delegate"),
            "delegate VirtualServices are not supported by abgate; inline the delegate's rules"
                .to_owned(),
        );
        return None;
    }
    let has_route = !r.route.is_empty();
    let action = match (&r.redirect, &r.direct_response) {
        (Some(_), _)
            if has_route
                || r.rewrite.is_some()
                || r.fault.is_some()
                || r.direct_response.is_some() =>
        {
            cx.error(
                &field.key("redirect"),
                "redirect cannot be combined with route, rewrite, fault or directResponse",
            );
            None
        }
        (Some(redirect), None) => http_redirect(cx, &field.key("redirect"), redirect, &r.matches),
        (None, Some(_)) if has_route => {
            cx.error(
                &field.key("directResponse"),
                "directResponse cannot be combined with route",
            );
            None
        }
        (None, Some(direct)) => direct_response(cx, &field.key("directResponse"), direct),
        (None, None) if !has_route => {
            cx.error(
                field,
                "a rule needs a route, a redirect or a directResponse",
            );
            None
        }
        _ => route_destinations(cx, &field.key("route"), &r.route, ns).map(RouteAction::Forward),
    };

    let fault = r
        .fault
        .as_ref()
        .and_then(|f| http_fault(cx, &field.key("fault"), f));
    let explicit_timeout = cx.envoy_duration(&field.key("timeout"), &r.timeout);
    let mut retries = match &r.retries {
        Some(retry) => http_retry(cx, &field.key("retries"), retry),
        None => RetryPolicy::istio_default(),
    };
    let mut timeout = explicit_timeout.filter(|d| !d.is_zero());
    if fault.is_some() {
        // Istio enables neither timeouts nor retries on a rule that injects faults.
        if r.retries.is_some() || explicit_timeout.is_some() {
            cx.warn(
                &field.key("fault"),
                "timeout and retries are disabled on a rule with fault injection (as in Istio)",
            );
        }
        retries = RetryPolicy::none();
        timeout = None;
    }

    let mirrors = mirrors(cx, field, r, ns);
    let cors = r
        .cors_policy
        .as_ref()
        .map(|c| cors_policy(cx, &field.key("corsPolicy"), c));
    let rewrite = r
        .rewrite
        .as_ref()
        .and_then(|rw| http_rewrite(cx, &field.key("rewrite"), rw));
    let headers = header_rules(cx, &field.key("headers"), r.headers.as_ref());
    let rewrites_authority = r
        .rewrite
        .as_ref()
        .is_some_and(|rw| rw.authority.as_deref().is_some_and(|a| !a.is_empty()));
    if rewrites_authority {
        if let Some(f) = authority_header_field(&field.key("headers"), r.headers.as_ref()) {
            cx.error(
                &f,
                "the authority is already rewritten by rewrite.authority; set it in one place",
            );
        }
    }
    Some(HttpRoute {
        name: r.name.clone(),
        matches,
        action: action?,
        headers,
        rewrite,
        timeout,
        retries,
        retries_configured: r.retries.is_some(),
        fault,
        mirrors,
        cors,
    })
}

fn route_destinations(
    cx: &mut Cx,
    field: &FieldPath,
    route: &[wire::HttpRouteDestination],
    ns: &str,
) -> Option<Vec<RouteDestination>> {
    let single = route.len() == 1;
    let mut out = Vec::with_capacity(route.len());
    let mut total: u64 = 0;
    let mut ok = true;
    for (i, d) in route.iter().enumerate() {
        let f = field.index(i);
        let weight = match d.weight {
            Some(w) if w < 0 => {
                cx.error(
                    &f.key("weight"),
                    format!("weight must not be negative, got {w}"),
                );
                ok = false;
                0
            }
            Some(w) if w > i64::from(i32::MAX) => {
                cx.error(&f.key("weight"), format!("weight {w} is too large"));
                ok = false;
                0
            }
            Some(w) => w as u32,
            // A lone destination takes all traffic whatever its weight.
            None if single => 100,
            None => 0,
        };
        total += u64::from(weight);
        let destination = destination(cx, &f.key("destination"), &d.destination, ns);
        let headers = header_rules(cx, &f.key("headers"), d.headers.as_ref());
        out.push(RouteDestination {
            destination,
            weight: if single { weight.max(1) } else { weight },
            headers,
        });
    }
    if !ok {
        return None;
    }
    if route.len() > 1 && total == 0 {
        cx.error(field, "total destination weight is 0: with several destinations at least one weight must be positive");
        return None;
    }
    if route.len() > 1 && total != 100 {
        cx.push(
            Code::WeightsNotHundred,
            Severity::Warning,
            field.clone(),
            format!(
                "weights sum to {total}, not 100; they are relative, so destinations get {}",
                out.iter()
                    .map(|d| format!("{:.1}%", 100.0 * f64::from(d.weight) / total as f64))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
        );
    }
    Some(out)
}

fn destination(cx: &mut Cx, field: &FieldPath, d: &wire::Destination, ns: &str) -> Destination {
    destination_host(cx, &field.key("host"), &d.host);
    // proto3: an empty subset is no subset.
    if let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty()) {
        if !syntax::is_dns1123_label(subset) {
            cx.error(
                &field.key("subset"),
                format!("subset `{subset}` is not a valid subset name (a DNS-1123 label)"),
            );
        }
    }
    Destination {
        host: resolve_host(&d.host, ns),
        subset: d.subset.clone().filter(|s| !s.is_empty()),
        port: d
            .port
            .map(|p| cx.port(&field.key("port").key("number"), p.number)),
    }
}

fn header_rules(cx: &mut Cx, field: &FieldPath, h: Option<&wire::Headers>) -> HeaderRules {
    let Some(h) = h else {
        return HeaderRules::default();
    };
    HeaderRules {
        request: header_ops(cx, &field.key("request"), h.request.as_ref(), true),
        response: header_ops(cx, &field.key("response"), h.response.as_ref(), false),
    }
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Header changes as Istio accepts them: no pseudo-header and no `Host`, except that a
/// request's `set`/`add` may name `:authority` (or `host`), which sets the Host sent
/// upstream.
fn header_ops(
    cx: &mut Cx,
    field: &FieldPath,
    ops: Option<&wire::HeaderOperations>,
    request: bool,
) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let check = |cx: &mut Cx, f: &FieldPath, name: &str| -> bool {
        if name.is_empty() {
            cx.error(f, "header name must not be empty");
            false
        } else if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            cx.error(f, format!("`{name}` cannot be modified here"));
            false
        } else if http_token(name).is_err() {
            cx.error(f, format!("`{name}` is not a valid header name"));
            false
        } else {
            true
        }
    };
    let mut authority: Option<(FieldPath, String)> = None;
    let mut pairs = |cx: &mut Cx, key: &str, map: &BTreeMap<String, String>| {
        let mut out = Vec::new();
        for (k, v) in map {
            let f = field.key(key).key(k);
            if let Err(reason) = syntax::check_header_value(v) {
                cx.error(&f, reason);
                continue;
            }
            if request && is_authority_header(k) {
                if authority.is_some() {
                    cx.error(&f, "the authority is set more than once");
                } else {
                    authority = Some((f, v.clone()));
                }
                continue;
            }
            if check(cx, &f, k) {
                out.push((k.to_ascii_lowercase(), v.clone()));
            }
        }
        out
    };
    let set = pairs(cx, "set", &ops.set);
    let add = pairs(cx, "add", &ops.add);
    let remove = ops
        .remove
        .iter()
        .enumerate()
        .filter(|(i, n)| check(cx, &field.key("remove").index(*i), n))
        .map(|(_, n)| n.to_ascii_lowercase())
        .collect();
    HeaderOps {
        set,
        add,
        remove,
        authority: authority.map(|(_, value)| value),
    }
}

/// The field of a request `set`/`add` of the authority, when there is one.
fn authority_header_field(field: &FieldPath, h: Option<&wire::Headers>) -> Option<FieldPath> {
    let request = h?.request.as_ref()?;
    [("set", &request.set), ("add", &request.add)]
        .into_iter()
        .find_map(|(key, map)| {
            map.keys()
                .find(|k| is_authority_header(k))
                .map(|k| field.key("request").key(key).key(k))
        })
}

fn http_retry(cx: &mut Cx, field: &FieldPath, r: &wire::HttpRetry) -> RetryPolicy {
    let default = RetryPolicy::istio_default();
    let attempts = cx
        .nonneg_u32(&field.key("attempts"), r.attempts)
        .unwrap_or(0);
    if r.attempts.unwrap_or(0) == 0
        && (r.per_try_timeout.is_some()
            || r.retry_on.as_deref().is_some_and(|s| !s.is_empty())
            || r.retry_remote_localities.is_some())
    {
        cx.error(
            &field.key("attempts"),
            "attempts is 0 (retries disabled) but other retry settings are set; set attempts, or remove them",
        );
    }
    let per_try_timeout = cx.envoy_duration(&field.key("perTryTimeout"), &r.per_try_timeout);
    let retry_on = match &r.retry_on {
        Some(text) => retry_on(cx, &field.key("retryOn"), text),
        None => default.retry_on.clone(),
    };
    RetryPolicy {
        attempts,
        per_try_timeout,
        retry_on,
        backoff: cx
            .envoy_duration(&field.key("backoff"), &r.backoff)
            .unwrap_or(default.backoff),
        ignore_previous_hosts: r.retry_ignore_previous_hosts.unwrap_or(true),
    }
}

fn retry_on(cx: &mut Cx, field: &FieldPath, text: &str) -> RetryOn {
    let mut on = RetryOn::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(code) = part.parse::<u16>() {
            if (100..=599).contains(&code) {
                on.status_codes.push(code);
            } else {
                cx.error(field, format!("`{part}` is not an HTTP status code"));
            }
            continue;
        }
        let flag = match part {
            "5xx" => &mut on.server_error,
            "gateway-error" => &mut on.gateway_error,
            "reset" => &mut on.reset,
            "reset-before-request" => &mut on.reset_before_request,
            "connect-failure" => &mut on.connect_failure,
            "refused-stream" => &mut on.refused_stream,
            "retriable-4xx" => &mut on.retriable_4xx,
            "unavailable" => &mut on.unavailable,
            "cancelled" => &mut on.cancelled,
            "deadline-exceeded" => &mut on.deadline_exceeded,
            "internal" => &mut on.internal,
            "resource-exhausted" => &mut on.resource_exhausted,
            // Status codes listed as integers already enable these.
            "retriable-status-codes" => continue,
            "envoy-ratelimited" | "retriable-headers" | "http3-post-connect-failure" => {
                cx.unsupported(field, &format!("retry condition `{part}`"));
                continue;
            }
            other => {
                cx.error(field, format!("unknown retry condition `{other}`"));
                continue;
            }
        };
        *flag = true;
    }
    on
}

fn http_fault(cx: &mut Cx, field: &FieldPath, f: &wire::HttpFault) -> Option<Fault> {
    if f.delay.is_none() && f.abort.is_none() {
        cx.error(field, "fault must set delay, abort or both");
        return None;
    }
    let share =
        |cx: &mut Cx, f: &FieldPath, pct: Option<wire::Percent>, int: Option<i64>, what: &str| {
            if let Some(p) = pct {
                let field = f.key("percentage").key("value");
                if p.value > 0.0 && p.value < 0.0001 {
                    cx.error(
                        &field,
                        format!("percentage {} is neither 0 nor at least 0.0001", p.value),
                    );
                }
                return cx.percent(&field, p.value);
            }
            if let Some(p) = int {
                cx.warn(
                    &f.key("percent"),
                    "`percent` is deprecated; use `percentage.value`",
                );
                return cx.percent(&f.key("percent"), p as f64);
            }
            cx.warn(
                f,
                format!("no percentage is set, so no request is {what} (as in Istio)"),
            );
            0.0
        };
    let delay = f.delay.as_ref().and_then(|d| {
        let df = field.key("delay");
        if d.exponential_delay.is_some() {
            cx.error(
                &df.key("exponentialDelay"),
                "exponentialDelay is not supported (nor by Istio)",
            );
        }
        let Some(fixed) = cx.envoy_duration(&df.key("fixedDelay"), &d.fixed_delay) else {
            if d.fixed_delay.is_none() {
                cx.error(&df, "delay needs a duration: fixedDelay");
            }
            return None;
        };
        Some((fixed, share(cx, &df, d.percentage, d.percent, "delayed")))
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let af = field.key("abort");
        let kind = match (a.http_status, &a.grpc_status, &a.http2_error) {
            (Some(status), None, None) => match u16::try_from(status) {
                Ok(s) if (200..=599).contains(&s) => FaultAbort::Http(s),
                _ => {
                    cx.error(
                        &af.key("httpStatus"),
                        format!("httpStatus must be between 200 and 599, got {status}"),
                    );
                    return None;
                }
            },
            (None, Some(grpc), None) if !GRPC_STATUSES.contains(&grpc.as_str()) => {
                cx.error(
                    &af.key("grpcStatus"),
                    format!(
                        "`{grpc}` is not a gRPC status; use one of {}",
                        GRPC_STATUSES.join(", ")
                    ),
                );
                return None;
            }
            (None, Some(grpc), None) => FaultAbort::Grpc(grpc.clone()),
            (None, None, Some(_)) => {
                cx.error(
                    &af.key("http2Error"),
                    "http2Error aborts are not supported (nor by Istio)",
                );
                return None;
            }
            (None, None, None) => {
                cx.warn(
                    &af,
                    "abort sets no httpStatus or grpcStatus; nothing is aborted",
                );
                return None;
            }
            _ => {
                cx.error(
                    &af,
                    "only one of httpStatus, grpcStatus or http2Error may be set",
                );
                return None;
            }
        };
        Some((kind, share(cx, &af, a.percentage, a.percent, "aborted")))
    });
    Some(Fault { delay, abort })
}

fn mirrors(cx: &mut Cx, field: &FieldPath, r: &wire::HttpRoute, ns: &str) -> Vec<Mirror> {
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        cx.error(
            &field.key("mirrors"),
            "mirror and mirrors cannot both be set",
        );
        return Vec::new();
    }
    if let Some(m) = &r.mirror {
        let percentage = match (r.mirror_percentage, r.mirror_percent) {
            (Some(p), _) => cx.percent(&field.key("mirrorPercentage").key("value"), p.value),
            (None, Some(p)) => {
                cx.warn(
                    &field.key("mirrorPercent"),
                    "`mirrorPercent` is deprecated; use `mirrorPercentage.value`",
                );
                cx.percent(&field.key("mirrorPercent"), f64::from(p))
            }
            (None, None) => 100.0,
        };
        return vec![Mirror {
            destination: destination(cx, &field.key("mirror"), m, ns),
            percentage,
        }];
    }
    if let Some(p) = r.mirror_percentage {
        cx.percent(&field.key("mirrorPercentage").key("value"), p.value);
    }
    if let Some(p) = r.mirror_percent {
        cx.percent(&field.key("mirrorPercent"), f64::from(p));
    }
    if r.mirror_percentage.is_some() || r.mirror_percent.is_some() {
        cx.warn(
            &field.key("mirrorPercentage"),
            "a mirror percentage without `mirror` has no effect",
        );
    }
    r.mirrors
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let f = field.key("mirrors").index(i);
            let percentage = m.percentage.map_or(100.0, |p| {
                cx.percent(&f.key("percentage").key("value"), p.value)
            });
            Mirror {
                destination: destination(cx, &f.key("destination"), &m.destination, ns),
                percentage,
            }
        })
        .collect()
}

fn cors_policy(cx: &mut Cx, field: &FieldPath, c: &wire::CorsPolicy) -> CorsPolicy {
    let mut allow_origins: Vec<StringMatcher> = c
        .allow_origins
        .iter()
        .enumerate()
        .filter_map(|(i, m)| string_matcher(cx, &field.key("allowOrigins").index(i), m))
        .collect();
    if !c.allow_origin.is_empty() {
        cx.warn(
            &field.key("allowOrigin"),
            "`allowOrigin` is deprecated; use `allowOrigins`",
        );
        allow_origins.extend(
            c.allow_origin
                .iter()
                .map(|o| StringMatcher::Exact(o.clone())),
        );
    }
    let forward_unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("FORWARD") | Some("UNSPECIFIED") => true,
        Some("IGNORE") => false,
        Some(other) => {
            cx.error(
                &field.key("unmatchedPreflights"),
                format!("`{other}` is not FORWARD or IGNORE"),
            );
            true
        }
    };
    for (i, m) in c.allow_origins.iter().enumerate() {
        let empty = [&m.exact, &m.prefix, &m.regex]
            .iter()
            .all(|v| v.as_deref().is_none_or(str::is_empty));
        if empty {
            cx.error(
                &field.key("allowOrigins").index(i),
                "an allowed origin needs a non-empty exact, prefix or regex",
            );
        }
    }
    for (i, method) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&method.as_str()) {
            cx.error(
                &field.key("allowMethods").index(i),
                format!("`{method}` is not an HTTP method (GET, HEAD, POST, PUT, PATCH, DELETE, CONNECT, OPTIONS, TRACE or *)"),
            );
        }
    }
    for key in ["allowHeaders", "exposeHeaders"] {
        let names = if key == "allowHeaders" {
            &c.allow_headers
        } else {
            &c.expose_headers
        };
        for (i, name) in names.iter().enumerate() {
            if name != "*" && http_token(name).is_err() {
                cx.error(
                    &field.key(key).index(i),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }
    let max_age = cx.envoy_duration(&field.key("maxAge"), &c.max_age);
    if max_age.is_some_and(|d| d.subsec_nanos() != 0) {
        cx.error(
            &field.key("maxAge"),
            "maxAge is sent in whole seconds; give it in seconds",
        );
    }
    CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        forward_unmatched_preflights,
    }
}

fn http_rewrite(cx: &mut Cx, field: &FieldPath, r: &wire::HttpRewrite) -> Option<Rewrite> {
    // proto3 reads an empty string as unset.
    let uri_text = r.uri.clone().filter(|u| !u.is_empty());
    let authority = r.authority.clone().filter(|a| !a.is_empty());
    if let Some(rx) = &r.uri_regex_rewrite {
        if rx.pattern.is_empty() || rx.rewrite.is_empty() {
            cx.error(
                &field.key("uriRegexRewrite"),
                "uriRegexRewrite needs both match and rewrite",
            );
            return None;
        }
    }
    let uri = match (&uri_text, &r.uri_regex_rewrite) {
        (Some(_), Some(_)) => {
            cx.error(field, "uri and uriRegexRewrite cannot both be set");
            return None;
        }
        (Some(uri), None) => Some(UriRewrite::Prefix(uri.clone())),
        (None, Some(rx)) => {
            let re = regex::Regex::new(&rx.pattern);
            match re {
                Ok(re) => Some(UriRewrite::Regex(re, envoy_substitution(&rx.rewrite))),
                Err(e) => {
                    let reason = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .to_owned();
                    cx.error(
                        &field.key("uriRegexRewrite").key("match"),
                        format!("invalid regex: {reason}"),
                    );
                    return None;
                }
            }
        }
        (None, None) => None,
    };
    if uri.is_none() && authority.is_none() {
        cx.error(
            field,
            "rewrite must set at least one of uri, uriRegexRewrite or authority",
        );
        return None;
    }
    Some(Rewrite { uri, authority })
}

/// The seed's `_collect_experiment_metrics` queries, made to return one number per
/// variant: the seed filtered on `destination_version="{variant}"` (a subset name where the
/// label holds the endpoint's version) and read `result[0]` of unaggregated series; these
/// select by `destination_subset` and aggregate. `{host}`, `{service}`, `{subset}`,
/// `{variant}`, `{experiment}` and `{window}` are filled in.
pub fn default_prometheus_queries() -> BTreeMap<String, String> {
    let selector = r#"destination_service_name="{service}",destination_subset="{subset}""#;
    [
        ("requests", format!("sum(increase(istio_requests_total{{{selector}}}[{{window}}]))")),
        (
            "errors",
            format!(r#"sum(increase(istio_requests_total{{{selector},response_code=~"5.*"}}[{{window}}]))"#),
        ),
        (
            "latency_p95_ms",
            format!("histogram_quantile(0.95, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{selector}}}[{{window}}])))"),
        ),
        (
            "ttft_p95_ms",
            format!("1000 * histogram_quantile(0.95, sum by (le) (rate(llm_time_to_first_token_seconds_bucket{{{selector}}}[{{window}}])))"),
        ),
        (
            "tokens_per_second",
            format!("sum(rate(llm_tokens_generated_total{{{selector}}}[{{window}}]))"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Turns Envoy's `\1` group references into the regex crate's `${1}`.
fn envoy_substitution(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

fn http_redirect(
    cx: &mut Cx,
    field: &FieldPath,
    r: &wire::HttpRedirect,
    matches: &[wire::HttpMatchRequest],
) -> Option<RouteAction> {
    // proto3 reads an empty string as unset.
    let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let (uri_text, prefix_rewrite, authority, scheme) = (
        set(&r.uri),
        set(&r.prefix_rewrite),
        set(&r.authority),
        set(&r.scheme),
    );
    let uri = match (uri_text, prefix_rewrite) {
        (Some(_), Some(_)) => {
            cx.error(field, "uri and prefixRewrite cannot both be set");
            None
        }
        (Some(u), None) => Some(UriRedirect::Replace(u)),
        (None, Some(p)) => {
            // A match with no uri is fine; a uri match must be a prefix for the prefix
            // to be replaced.
            if matches
                .iter()
                .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
            {
                cx.error(
                    &field.key("prefixRewrite"),
                    "prefixRewrite needs every uri match to be a prefix match",
                );
            }
            Some(UriRedirect::PrefixRewrite(p))
        }
        (None, None) => None,
    };
    let port = match (r.port, r.derive_port.as_deref()) {
        (Some(_), Some(_)) => {
            cx.error(field, "port and derivePort cannot both be set");
            None
        }
        (Some(p), None) => Some(RedirectPort::Fixed(cx.port(&field.key("port"), p))),
        (None, Some("FROM_PROTOCOL_DEFAULT")) => Some(RedirectPort::FromProtocolDefault),
        (None, Some("FROM_REQUEST_PORT")) => Some(RedirectPort::FromRequestPort),
        (None, Some(other)) => {
            cx.error(
                &field.key("derivePort"),
                format!("`{other}` is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"),
            );
            None
        }
        (None, None) => None,
    };
    if let Some(scheme) = &scheme {
        if scheme != "http" && scheme != "https" {
            cx.error(
                &field.key("scheme"),
                format!("scheme must be http or https, got `{scheme}`"),
            );
        }
    }
    if uri.is_none() && authority.is_none() && port.is_none() && scheme.is_none() {
        cx.error(
            field,
            "redirect must set at least one of uri, prefixRewrite, authority, port or scheme",
        );
    }
    let code = match r.redirect_code {
        // proto3: 0 is unset.
        None | Some(0) => 301,
        Some(c) if (300..=399).contains(&c) => c as u16,
        Some(c) => {
            cx.error(
                &field.key("redirectCode"),
                format!("redirectCode must be 3xx, got {c}"),
            );
            301
        }
    };
    Some(RouteAction::Redirect(Redirect {
        uri,
        authority,
        port,
        scheme,
        code,
    }))
}

fn direct_response(
    cx: &mut Cx,
    field: &FieldPath,
    d: &wire::HttpDirectResponse,
) -> Option<RouteAction> {
    let status = match u16::try_from(d.status) {
        Ok(s) if (200..=599).contains(&s) => s,
        _ => {
            cx.error(
                &field.key("status"),
                format!("status must be between 200 and 599, got {}", d.status),
            );
            return None;
        }
    };
    let body = match &d.body {
        None => Vec::new(),
        Some(wire::HttpBody {
            string: Some(s),
            bytes: None,
        }) => s.clone().into_bytes(),
        Some(wire::HttpBody {
            string: None,
            bytes: Some(b),
        }) => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(b) {
                Ok(bytes) => bytes,
                Err(e) => {
                    cx.error(
                        &field.key("body").key("bytes"),
                        format!("bytes is not valid base64: {e}"),
                    );
                    return None;
                }
            }
        }
        Some(_) => {
            cx.error(
                &field.key("body"),
                "body must set exactly one of string or bytes",
            );
            return None;
        }
    };
    if body.len() > MAX_DIRECT_RESPONSE_BODY {
        cx.error(
            &field.key("body"),
            format!("body is {} bytes; at most 1 MiB is allowed", body.len()),
        );
        return None;
    }
    Some(RouteAction::DirectResponse { status, body })
}

// ---------------------------------------------------------------------------------------
// DestinationRule

fn destination_rule(cx: &mut Cx, meta: Meta, spec: wire::DestinationRuleSpec) -> DestinationRule {
    let spec_path = FieldPath::root().key("spec");
    if spec.host.is_empty() {
        cx.error(&spec_path.key("host"), "host is required");
    } else if let Err(reason) = syntax::check_wildcard_domain(&spec.host) {
        cx.error(&spec_path.key("host"), reason);
    }
    if spec.workload_selector.is_some() {
        cx.unsupported(&spec_path.key("workloadSelector"), "workloadSelector");
    }
    let export_path = spec_path.key("exportTo");
    check_export_to(cx, &export_path, &spec.export_to, &meta.namespace, false);
    // A rule for selected workloads stays in its own namespace.
    if spec.workload_selector.is_some() {
        let own = |e: &String| e == "." || *e == meta.namespace;
        if let Some(i) = spec.export_to.iter().position(|e| !own(e)) {
            cx.error(
                &export_path.index(i),
                "a DestinationRule with a workloadSelector can only be exported to its own namespace (`.`)",
            );
        }
    }
    let mut host_policy = traffic_policy(
        cx,
        &spec_path.key("trafficPolicy"),
        spec.traffic_policy.as_ref(),
    );
    if let Some(llm) = llm_aware(cx, &meta.annotations) {
        host_policy.load_balancer = Some(LoadBalancer::LlmAware(llm));
    }
    let mut names = BTreeSet::new();
    let subsets = spec
        .subsets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let f = spec_path.key("subsets").index(i);
            if s.name.is_empty() {
                cx.error(&f.key("name"), "subset name is required");
            } else if !names.insert(s.name.clone()) {
                cx.error(
                    &f.key("name"),
                    format!("subset `{}` is defined twice", s.name),
                );
            } else if !syntax::is_dns1123_label(&s.name) {
                cx.error(
                    &f.key("name"),
                    format!("subset name `{}` is not a DNS-1123 label", s.name),
                );
            }
            check_labels(cx, &f.key("labels"), &s.labels);
            Subset {
                name: s.name.clone(),
                labels: s.labels.clone(),
                traffic_policy: traffic_policy(
                    cx,
                    &f.key("trafficPolicy"),
                    s.traffic_policy.as_ref(),
                ),
            }
        })
        .collect();
    DestinationRule {
        host: resolve_host(&spec.host, &meta.namespace),
        traffic_policy: host_policy,
        subsets,
        meta,
    }
}

/// The LLM-aware balancer a DestinationRule's annotations ask for, if any. It takes the
/// host's place of `trafficPolicy.loadBalancer` (which stays what Istio would use); a
/// subset's own `loadBalancer` still overrides it, section by section as in Istio.
fn llm_aware(cx: &mut Cx, annotations: &BTreeMap<String, String>) -> Option<LlmAware> {
    let field = |key: &str| {
        FieldPath::root()
            .key("metadata")
            .key("annotations")
            .key(key)
    };
    let selected = match annotations
        .get(LLM_LOAD_BALANCER_ANNOTATION)
        .map(String::as_str)
    {
        None => false,
        Some("llm-aware") => true,
        Some(other) => {
            cx.error(
                &field(LLM_LOAD_BALANCER_ANNOTATION),
                format!(
                    "`{other}` is not a load balancer abgate knows; the one value is `llm-aware`"
                ),
            );
            false
        }
    };
    let mut llm = LlmAware::default();
    if let Some(path) = annotations.get(LLM_METRICS_PATH_ANNOTATION) {
        if path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            llm.metrics_path = path.clone();
        } else {
            cx.error(
                &field(LLM_METRICS_PATH_ANNOTATION),
                format!("`{path}` is not an absolute URL path"),
            );
        }
    }
    if let Some(text) = annotations.get(LLM_METRICS_INTERVAL_ANNOTATION) {
        let f = field(LLM_METRICS_INTERVAL_ANNOTATION);
        match cx.duration(&f, &Some(text.clone())) {
            Some(d) if d >= Duration::from_millis(10) => llm.interval = d,
            Some(_) => cx.error(&f, "must be at least 10ms"),
            None => {}
        }
    }
    let tuned = annotations.contains_key(LLM_METRICS_PATH_ANNOTATION)
        || annotations.contains_key(LLM_METRICS_INTERVAL_ANNOTATION);
    if tuned && !annotations.contains_key(LLM_LOAD_BALANCER_ANNOTATION) {
        cx.warn(
            &field(if annotations.contains_key(LLM_METRICS_PATH_ANNOTATION) {
                LLM_METRICS_PATH_ANNOTATION
            } else {
                LLM_METRICS_INTERVAL_ANNOTATION
            }),
            format!("has no effect without `{LLM_LOAD_BALANCER_ANNOTATION}: llm-aware`"),
        );
    }
    selected.then_some(llm)
}

fn traffic_policy(
    cx: &mut Cx,
    field: &FieldPath,
    p: Option<&wire::TrafficPolicy>,
) -> TrafficPolicy {
    let Some(p) = p else {
        return TrafficPolicy::default();
    };
    let empty = p.load_balancer.is_none()
        && p.connection_pool.is_none()
        && p.outlier_detection.is_none()
        && p.tls.is_none()
        && p.port_level_settings.is_none()
        && p.tunnel.is_none()
        && p.proxy_protocol.is_none()
        && p.retry_budget.is_none();
    if empty {
        cx.error(field, "trafficPolicy must set at least one field");
    }
    if p.tunnel.is_some() && p.proxy_protocol.is_some() {
        cx.error(field, "tunnel and proxyProtocol cannot both be set");
    }
    if let Some(tls) = &p.tls {
        client_tls(cx, &field.key("tls"), tls);
    }
    if let Some(settings) = &p.port_level_settings {
        port_level_settings(cx, &field.key("portLevelSettings"), settings);
    }
    for (value, key) in [
        (&p.tls, "tls"),
        (&p.port_level_settings, "portLevelSettings"),
        (&p.tunnel, "tunnel"),
        (&p.proxy_protocol, "proxyProtocol"),
        (&p.retry_budget, "retryBudget"),
    ] {
        if value.is_some() {
            cx.unsupported(&field.key(key), key);
        }
    }
    TrafficPolicy {
        load_balancer: p
            .load_balancer
            .as_ref()
            .and_then(|lb| load_balancer(cx, &field.key("loadBalancer"), lb)),
        connection_pool: p
            .connection_pool
            .as_ref()
            .map(|c| connection_pool(cx, &field.key("connectionPool"), c)),
        outlier_detection: p
            .outlier_detection
            .as_ref()
            .map(|o| outlier_detection(cx, &field.key("outlierDetection"), o)),
    }
}

/// What Istio checks of a client TLS section abgate otherwise leaves alone.
fn client_tls(cx: &mut Cx, field: &FieldPath, tls: &serde_json::Value) {
    let text = |key: &str| tls.get(key).and_then(|v| v.as_str()).unwrap_or("");
    let skip_verify = tls.get("insecureSkipVerify").and_then(|v| v.as_bool()) == Some(true);
    if !skip_verify {
        return;
    }
    let sans = tls.get("subjectAltNames").is_some_and(|v| !v.is_null());
    let conflict = match text("mode") {
        "SIMPLE" => {
            !text("caCertificates").is_empty() || !text("credentialName").is_empty() || sans
        }
        "MUTUAL" => !text("caCertificates").is_empty() || sans,
        _ => false,
    };
    if conflict {
        cx.error(
            &field.key("insecureSkipVerify"),
            "insecureSkipVerify cannot be combined with caCertificates, credentialName (SIMPLE) or subjectAltNames: there is nothing to verify against",
        );
    }
}

/// Istio's checks of per-port policies, which abgate does not apply.
fn port_level_settings(cx: &mut Cx, field: &FieldPath, settings: &serde_json::Value) {
    let Some(items) = settings.as_array() else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let f = field.index(i);
        if item.get("port").is_none_or(|p| p.is_null()) {
            cx.error(&f, "a port-level policy needs port.number");
        }
        let sections = ["loadBalancer", "connectionPool", "outlierDetection", "tls"];
        if !sections
            .iter()
            .any(|k| item.get(*k).is_some_and(|v| !v.is_null()))
        {
            cx.error(
                &f,
                "a port-level policy must set loadBalancer, connectionPool, outlierDetection or tls",
            );
        }
    }
}

fn load_balancer(
    cx: &mut Cx,
    field: &FieldPath,
    lb: &wire::LoadBalancerSettings,
) -> Option<LoadBalancer> {
    for (value, key) in [
        (&lb.locality_lb_setting, "localityLbSetting"),
        (&lb.zone_aware_lb_setting, "zoneAwareLbSetting"),
        (&lb.warmup, "warmup"),
    ] {
        if value.is_some() {
            let what = if key == "zoneAwareLbSetting" {
                "zoneAwareLbSetting (added in Istio 1.31)"
            } else {
                key
            };
            cx.unsupported(&field.key(key), what);
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        cx.error(
            field,
            "localityLbSetting and zoneAwareLbSetting cannot both be set",
        );
    }
    if lb.warmup_duration_secs.is_some() {
        cx.unsupported(&field.key("warmupDurationSecs"), "warmupDurationSecs");
        let _ = cx.envoy_duration(&field.key("warmupDurationSecs"), &lb.warmup_duration_secs);
    }
    if let Some(warmup) = &lb.warmup {
        warmup_settings(cx, &field.key("warmup"), warmup);
    }
    match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => {
            cx.error(field, "simple and consistentHash cannot both be set");
            None
        }
        (Some(simple), None) => match simple.as_str() {
            "ROUND_ROBIN" => Some(LoadBalancer::RoundRobin),
            "LEAST_REQUEST" | "UNSPECIFIED" => Some(LoadBalancer::LeastRequest),
            "LEAST_CONN" => {
                cx.warn(
                    &field.key("simple"),
                    "LEAST_CONN is deprecated; it means LEAST_REQUEST",
                );
                Some(LoadBalancer::LeastRequest)
            }
            "RANDOM" => Some(LoadBalancer::Random),
            "PASSTHROUGH" => Some(LoadBalancer::Passthrough),
            other => {
                cx.error(
                    &field.key("simple"),
                    format!("`{other}` is not one of ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH, LEAST_CONN, UNSPECIFIED"),
                );
                None
            }
        },
        (None, Some(ch)) => consistent_hash(cx, &field.key("consistentHash"), ch),
        (None, None) => None,
    }
}

fn consistent_hash(
    cx: &mut Cx,
    field: &FieldPath,
    ch: &wire::ConsistentHash,
) -> Option<LoadBalancer> {
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip == Some(true),
        ch.http_query_parameter_name.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() != 1 {
        cx.error(field, "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName must be set");
        return None;
    }
    let key = if let Some(h) = &ch.http_header_name {
        HashKey::Header(h.to_ascii_lowercase())
    } else if let Some(c) = &ch.http_cookie {
        if c.name.is_empty() {
            cx.error(
                &field.key("httpCookie").key("name"),
                "cookie name is required",
            );
        }
        let mut names = BTreeSet::new();
        for (i, attribute) in c.attributes.iter().enumerate() {
            let f = field.key("httpCookie").key("attributes").index(i);
            let name = attribute.get("name").and_then(|n| n.as_str()).unwrap_or("");
            if name.is_empty() {
                cx.error(&f, "a cookie attribute needs a name");
            } else if !names.insert(name.to_owned()) {
                cx.error(&f, format!("cookie attribute `{name}` is given twice"));
            }
        }
        HashKey::Cookie {
            name: c.name.clone(),
            path: c.path.clone(),
            ttl: cx.duration(&field.key("httpCookie").key("ttl"), &c.ttl),
        }
    } else if let Some(q) = &ch.http_query_parameter_name {
        HashKey::QueryParameter(q.clone())
    } else {
        HashKey::SourceIp
    };
    if ch.minimum_ring_size.is_some() {
        cx.warn(
            &field.key("minimumRingSize"),
            "minimumRingSize is deprecated; use ringHash.minimumRingSize",
        );
        if ch.ring_hash.is_some() || ch.maglev.is_some() {
            cx.error(
                &field.key("minimumRingSize"),
                "minimumRingSize cannot be combined with ringHash or maglev",
            );
        }
    }
    let algorithm = match (&ch.ring_hash, &ch.maglev) {
        (Some(_), Some(_)) => {
            cx.error(field, "ringHash and maglev cannot both be set");
            return None;
        }
        (None, Some(m)) => {
            let table_size = m.table_size.unwrap_or(0);
            if table_size == 0 {
                cx.error(
                    &field.key("maglev").key("tableSize"),
                    "maglev needs tableSize",
                );
            } else if table_size >= 5_000_011 {
                cx.error(
                    &field.key("maglev").key("tableSize"),
                    "maglev tableSize must be below 5000011",
                );
            } else if !is_prime(table_size) {
                cx.error(
                    &field.key("maglev").key("tableSize"),
                    format!("maglev tableSize must be prime, got {table_size}"),
                );
            }
            HashAlgorithm::Maglev { table_size }
        }
        (ring, None) => HashAlgorithm::RingHash {
            minimum_ring_size: ring
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size)
                .unwrap_or(1024),
        },
    };
    Some(LoadBalancer::ConsistentHash(ConsistentHash {
        key,
        algorithm,
    }))
}

/// The CRD's bounds for `warmup`, which abgate does not act on but still checks.
fn warmup_settings(cx: &mut Cx, field: &FieldPath, warmup: &serde_json::Value) {
    match warmup.get("duration").and_then(|d| d.as_str()) {
        Some(d) => {
            let _ = cx.envoy_duration(&field.key("duration"), &Some(d.to_owned()));
        }
        None => cx.error(&field.key("duration"), "warmup needs a duration"),
    }
    if let Some(p) = warmup.get("minimumPercent").and_then(|v| v.as_f64()) {
        if !(0.0..=100.0).contains(&p) {
            cx.error(
                &field.key("minimumPercent"),
                format!("minimumPercent must be between 0 and 100, got {p}"),
            );
        }
    }
    if let Some(a) = warmup.get("aggression").and_then(|v| v.as_f64()) {
        if a < 0.0 {
            cx.error(
                &field.key("aggression"),
                format!("aggression must not be negative, got {a}"),
            );
        }
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn connection_pool(
    cx: &mut Cx,
    field: &FieldPath,
    c: &wire::ConnectionPoolSettings,
) -> ConnectionPool {
    let mut pool = ConnectionPool::default();
    if c.tcp.is_none() && c.http.is_none() {
        cx.error(field, "connectionPool must set tcp, http or both");
    }
    if let Some(tcp) = &c.tcp {
        let f = field.key("tcp");
        pool.max_connections = cx.nonneg_u32(&f.key("maxConnections"), tcp.max_connections);
        pool.connect_timeout = cx.envoy_duration(&f.key("connectTimeout"), &tcp.connect_timeout);
        if let Some(k) = &tcp.tcp_keepalive {
            pool.tcp_keepalive_time =
                cx.envoy_duration(&f.key("tcpKeepalive").key("time"), &k.time);
            pool.tcp_keepalive_interval =
                cx.envoy_duration(&f.key("tcpKeepalive").key("interval"), &k.interval);
            pool.tcp_keepalive_probes = k.probes;
        }
        if tcp.max_connection_duration.is_some() {
            cx.envoy_duration(
                &f.key("maxConnectionDuration"),
                &tcp.max_connection_duration,
            );
            cx.unsupported(&f.key("maxConnectionDuration"), "maxConnectionDuration");
        }
        // `0s` turns the idle timeout off.
        let idle = cx.duration(&f.key("idleTimeout"), &tcp.idle_timeout);
        if idle.is_some_and(|d| !d.is_zero()) {
            pool.idle_timeout = cx.envoy_duration(&f.key("idleTimeout"), &tcp.idle_timeout);
        } else if idle.is_some() {
            pool.idle_timeout = idle;
        }
    }
    if let Some(http) = &c.http {
        let f = field.key("http");
        pool.http1_max_pending_requests = cx.nonneg_u32(
            &f.key("http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        );
        pool.http2_max_requests =
            cx.nonneg_u32(&f.key("http2MaxRequests"), http.http2_max_requests);
        pool.max_requests_per_connection = cx.nonneg_u32(
            &f.key("maxRequestsPerConnection"),
            http.max_requests_per_connection,
        );
        pool.max_retries = cx.nonneg_u32(&f.key("maxRetries"), http.max_retries);
        pool.max_concurrent_streams =
            cx.nonneg_u32(&f.key("maxConcurrentStreams"), http.max_concurrent_streams);
        if let Some(idle) = cx.envoy_duration(&f.key("idleTimeout"), &http.idle_timeout) {
            pool.idle_timeout = Some(idle);
        }
        if let Some(k) = &http.http2_keep_alive {
            let kf = f.key("http2KeepAlive");
            for (key, value) in [("interval", &k.interval), ("timeout", &k.timeout)] {
                if value.is_none() {
                    cx.error(&kf, format!("http2KeepAlive needs {key}"));
                } else {
                    cx.envoy_duration(&kf.key(key), value);
                }
            }
            cx.unsupported(&kf, "http2KeepAlive (added in Istio 1.31)");
        }
        if http.h2_upgrade_policy.as_deref() == Some("UPGRADE")
            && http.use_client_protocol == Some(true)
        {
            cx.error(
                &f.key("useClientProtocol"),
                "useClientProtocol cannot be true when h2UpgradePolicy is UPGRADE",
            );
        }
        match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT" | "DO_NOT_UPGRADE") => {}
            Some("UPGRADE") => pool.h2_upgrade = true,
            Some(policy) => cx.error(
                &f.key("h2UpgradePolicy"),
                format!("`{policy}` is not DEFAULT, DO_NOT_UPGRADE or UPGRADE"),
            ),
        }
        pool.use_client_protocol = http.use_client_protocol.unwrap_or(false);
    }
    pool
}

fn outlier_detection(
    cx: &mut Cx,
    field: &FieldPath,
    o: &wire::OutlierDetection,
) -> OutlierDetection {
    if o.consecutive_errors.is_some() {
        cx.warn(
            &field.key("consecutiveErrors"),
            "consecutiveErrors is deprecated; use consecutive5xxErrors",
        );
    }
    let pct = |cx: &mut Cx, key: &str, v: Option<i64>, default: u32| -> u32 {
        match v {
            None => default,
            Some(p) if (0..=100).contains(&p) => p as u32,
            Some(p) => {
                cx.error(
                    &field.key(key),
                    format!("must be a percentage between 0 and 100, got {p}"),
                );
                default
            }
        }
    };
    if o.consecutive_local_origin_failures.is_some_and(|n| n > 0)
        && o.split_external_local_origin_errors != Some(true)
    {
        cx.error(
            &field.key("consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
        );
    }
    if o.outlier_detection_http_error_codes.is_some() {
        cx.unsupported(
            &field.key("outlierDetectionHttpErrorCodes"),
            "outlierDetectionHttpErrorCodes (added in Istio 1.31)",
        );
    }
    let interval = cx
        .envoy_duration(&field.key("interval"), &o.interval)
        .unwrap_or(Duration::from_secs(10));
    OutlierDetection {
        consecutive_5xx_errors: cx
            .nonneg_u32(&field.key("consecutive5xxErrors"), o.consecutive5xx_errors)
            .unwrap_or(5),
        consecutive_gateway_errors: cx
            .nonneg_u32(
                &field.key("consecutiveGatewayErrors"),
                o.consecutive_gateway_errors.or(o.consecutive_errors),
            )
            .unwrap_or(0),
        interval,
        base_ejection_time: cx
            .envoy_duration(&field.key("baseEjectionTime"), &o.base_ejection_time)
            .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: pct(cx, "maxEjectionPercent", o.max_ejection_percent, 10),
        min_health_percent: pct(cx, "minHealthPercent", o.min_health_percent, 0),
    }
}

// ---------------------------------------------------------------------------------------
// Gateway

fn gateway(cx: &mut Cx, meta: Meta, spec: wire::GatewaySpec) -> Gateway {
    let spec_path = FieldPath::root().key("spec");
    if spec.servers.is_empty() {
        cx.error(&spec_path.key("servers"), "at least one server is required");
    }
    if !syntax::is_dns1123_label(&meta.name) {
        cx.error(
            &FieldPath::parse("metadata.name"),
            format!(
                "`{}` is not a valid Gateway name (a DNS-1123 label, no dots)",
                meta.name
            ),
        );
    }
    let mut names = BTreeSet::new();
    let mut port_names = BTreeSet::new();
    let servers = spec
        .servers
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let f = spec_path.key("servers").index(i);
            if let Some(name) = &s.name {
                if !names.insert(name.clone()) {
                    cx.error(
                        &f.key("name"),
                        format!("server name `{name}` is used twice"),
                    );
                }
            }
            match s.port.name.as_deref() {
                None | Some("") => cx.error(&f.key("port"), "port.name is required"),
                Some(name) if !port_names.insert(name.to_owned()) => cx.error(
                    &f.key("port").key("name"),
                    format!(
                        "port name `{name}` is used by another server; port names must be unique"
                    ),
                ),
                Some(_) => {}
            }
            server(cx, &f, i, s)
        })
        .collect();
    Gateway { meta, servers }
}

fn server(cx: &mut Cx, field: &FieldPath, index: usize, s: &wire::Server) -> Option<GatewayServer> {
    let unix_path = s.bind.as_deref().and_then(|b| b.strip_prefix("unix://"));
    let port = match unix_path {
        // A unix socket has no port: Istio wants 0 there.
        Some(path) => {
            if let Err(reason) = syntax::check_unix_address(path) {
                cx.error(&field.key("bind"), reason);
            }
            if s.port.number != 0 {
                cx.error(
                    &field.key("port").key("number"),
                    "a server bound to a unix socket takes port number 0",
                );
            }
            cx.unsupported(
                &field.key("bind"),
                "a unix socket bind (the server is left out)",
            );
            0
        }
        None => cx.port(&field.key("port").key("number"), s.port.number),
    };
    let protocol = match s.port.protocol.to_ascii_uppercase().as_str() {
        "HTTP" => Protocol::Http,
        "HTTPS" => Protocol::Https,
        "HTTP2" => Protocol::Http2,
        "GRPC" => Protocol::Grpc,
        "TLS" => Protocol::Tls,
        other if syntax::is_known_protocol(other) && !other.is_empty() => Protocol::Tcp,
        other => {
            cx.error(
                &field.key("port").key("protocol"),
                format!(
                    "protocol `{other}` is not one of HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, HTTP_PROXY, TLS, TCP, UDP, MONGO, REDIS, MYSQL"
                ),
            );
            return None;
        }
    };
    if matches!(protocol, Protocol::Tls | Protocol::Tcp) {
        cx.unsupported(
            &field.key("port").key("protocol"),
            &format!("a {} server", s.port.protocol),
        );
    }
    if s.hosts.is_empty() {
        cx.error(&field.key("hosts"), "at least one host is required");
    }
    for (i, host) in s.hosts.iter().enumerate() {
        if let Err(reason) = syntax::check_gateway_host(host) {
            cx.error(&field.key("hosts").index(i), reason);
        }
    }
    if let Some(bind) = s.bind.as_deref().filter(|b| !b.is_empty()) {
        if !bind.starts_with("unix://") && !syntax::is_ip(bind) {
            cx.error(&field.key("bind"), format!("`{bind}` is not an IP address"));
        }
    }
    if s.port.target_port.is_some() {
        cx.error(
            &field.key("port").key("targetPort"),
            "targetPort has no effect on a Gateway",
        );
    }
    let hosts = s
        .hosts
        .iter()
        .map(|h| {
            h.rsplit_once('/')
                .map_or(h.as_str(), |(_, host)| host)
                .to_ascii_lowercase()
        })
        .collect();
    let tls = s
        .tls
        .as_ref()
        .and_then(|t| server_tls(cx, &field.key("tls"), t));
    match (&s.tls, protocol) {
        (None, Protocol::Https | Protocol::Tls) => {
            cx.error(
                field,
                format!("a {} server needs tls settings", s.port.protocol),
            );
        }
        (Some(t), Protocol::Https | Protocol::Tls) if t.mode.is_none() => {
            // Istio's default mode is PASSTHROUGH.
            if t.https_redirect {
                cx.warn(
                    &field.key("tls").key("httpsRedirect"),
                    "httpsRedirect belongs on an HTTP server; this HTTPS server has no tls mode, which Istio reads as PASSTHROUGH",
                );
            }
            cx.unsupported(
                &field.key("tls"),
                "an HTTPS server with no tls mode (PASSTHROUGH)",
            );
        }
        (Some(t), Protocol::Http | Protocol::Http2 | Protocol::Grpc) => {
            let passthrough = matches!(
                t.mode.as_deref(),
                None | Some("PASSTHROUGH" | "AUTO_PASSTHROUGH")
            );
            let files = [&t.ca_certificates, &t.private_key, &t.server_certificate]
                .iter()
                .any(|v| v.as_deref().is_some_and(|s| !s.is_empty()));
            if !passthrough || files {
                cx.error(
                    &field.key("tls"),
                    "a plain-text HTTP server can only have tls.httpsRedirect",
                );
            }
        }
        (Some(_), Protocol::Tcp) => {
            cx.error(&field.key("tls"), "a TCP server cannot have tls settings");
        }
        _ => {}
    }
    if unix_path.is_some() {
        // Not served: abgate listens on TCP only.
        return None;
    }
    Some(GatewayServer {
        index,
        port,
        protocol,
        port_name: s.port.name.clone(),
        bind: s.bind.clone(),
        hosts,
        tls,
    })
}

fn server_tls(cx: &mut Cx, field: &FieldPath, t: &wire::ServerTls) -> Option<ServerTls> {
    let mode = match t.mode.as_deref() {
        None => None,
        Some("SIMPLE") => Some(TlsMode::Simple),
        Some("MUTUAL") => Some(TlsMode::Mutual),
        Some("PASSTHROUGH") => Some(TlsMode::Passthrough),
        Some("OPTIONAL_MUTUAL") => Some(TlsMode::OptionalMutual),
        Some("ISTIO_MUTUAL") => Some(TlsMode::IstioMutual),
        Some("AUTO_PASSTHROUGH") => Some(TlsMode::AutoPassthrough),
        Some(other) => {
            cx.error(&field.key("mode"), format!("`{other}` is not a TLS mode"));
            return None;
        }
    };
    if let Some(m) = mode.filter(|m| *m != TlsMode::Simple) {
        cx.unsupported(&field.key("mode"), &format!("TLS mode {m:?}"));
    }
    let mut bad_name = false;
    let names = t
        .credential_name
        .iter()
        .map(|n| (field.key("credentialName"), n))
        .chain(
            t.credential_names
                .iter()
                .enumerate()
                .map(|(i, n)| (field.key("credentialNames").index(i), n)),
        );
    for (f, name) in names.collect::<Vec<_>>() {
        if let Err(reason) = syntax::check_credential_name(name) {
            cx.error(&f, reason);
            bad_name = true;
        }
    }
    if bad_name {
        return None;
    }
    // proto3: an empty string is an unset field.
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }
    let (certificate, private_key) = (given(&t.server_certificate), given(&t.private_key));
    let ca_certificates = given(&t.ca_certificates);
    let credential_name = given(&t.credential_name);
    let named = credential_name.is_some() || !t.credential_names.is_empty();
    if mode == Some(TlsMode::IstioMutual)
        && (certificate.is_some()
            || private_key.is_some()
            || ca_certificates.is_some()
            || !t.tls_certificates.is_empty()
            || named)
    {
        cx.error(
            field,
            "ISTIO_MUTUAL uses the mesh's certificates; it cannot name credentials or files",
        );
        return None;
    }
    let uses_certificates = certificate.is_some()
        || private_key.is_some()
        || ca_certificates.is_some()
        || given(&t.ca_crl).is_some()
        || !t.tls_certificates.is_empty()
        || named;
    if matches!(mode, Some(TlsMode::Passthrough | TlsMode::AutoPassthrough)) && uses_certificates {
        cx.warn(
            field,
            "PASSTHROUGH does not terminate TLS, so its certificates are ignored",
        );
    }
    let sources = [
        certificate.is_some() && private_key.is_some(),
        credential_name.is_some(),
        !t.credential_names.is_empty(),
        !t.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        cx.error(
            field,
            "give only one of credentialName, credentialNames, serverCertificate/privateKey and tlsCertificates",
        );
        return None;
    }
    let terminates = matches!(
        mode,
        Some(TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual)
    );
    // With a credential, the certificate, key and CA come from the secret.
    if terminates && !named {
        let mutual = mode != Some(TlsMode::Simple);
        let what = if mutual { "MUTUAL TLS" } else { "SIMPLE TLS" };
        if mutual && ca_certificates.is_none() {
            cx.error(
                field,
                "MUTUAL TLS needs caCertificates (or a credentialName holding the CA)",
            );
        }
        if t.tls_certificates.is_empty() {
            if certificate.is_none() {
                cx.error(
                    field,
                    format!("{what} needs serverCertificate (or a credentialName)"),
                );
            }
            if private_key.is_none() {
                cx.error(
                    field,
                    format!("{what} needs privateKey (or a credentialName)"),
                );
            }
        } else {
            if t.tls_certificates.len() > 2 {
                cx.warn(
                    &field.key("tlsCertificates"),
                    format!("{what} takes at most 2 server certificates"),
                );
            }
            for (i, pair) in t.tls_certificates.iter().enumerate() {
                for key in ["serverCertificate", "privateKey"] {
                    if pair
                        .get(key)
                        .and_then(|v| v.as_str())
                        .is_none_or(str::is_empty)
                    {
                        cx.error(
                            &field.key("tlsCertificates").index(i),
                            format!("{what} needs {key} in every tlsCertificates entry"),
                        );
                    }
                }
            }
            cx.unsupported(&field.key("tlsCertificates"), "tlsCertificates");
        }
        if mode == Some(TlsMode::Simple) && given(&t.ca_crl).is_some() {
            cx.error(
                &field.key("caCrl"),
                "SIMPLE TLS does not verify clients, so it cannot take a CRL",
            );
        }
    }
    let credential = if let Some(name) = credential_name {
        Some(Credential::Named(name.to_owned()))
    } else if let Some(name) = t.credential_names.first() {
        Some(Credential::Named(name.clone()))
    } else if let (Some(cert), Some(key)) = (certificate, private_key) {
        Some(Credential::Files {
            certificate: cert.to_owned(),
            private_key: key.to_owned(),
        })
    } else {
        None
    };
    Some(ServerTls {
        https_redirect: t.https_redirect,
        mode,
        credential,
    })
}

// ---------------------------------------------------------------------------------------
// ServiceEntry, WorkloadEntry

/// DYNAMIC_DNS forwards to the host the request names: Istio wants wildcard hosts, no
/// addresses, ports Envoy's dynamic forward proxy serves, and no waypoint when internal.
fn dynamic_dns(cx: &mut Cx, spec_path: &FieldPath, spec: &wire::ServiceEntrySpec, meta: &Meta) {
    for (i, host) in spec.hosts.iter().enumerate() {
        if !host.starts_with('*') {
            cx.error(
                &spec_path.key("hosts").index(i),
                format!("resolution DYNAMIC_DNS needs wildcard hosts; `{host}` is not one"),
            );
        }
    }
    if !spec.addresses.is_empty() {
        cx.error(
            &spec_path.key("addresses"),
            "resolution DYNAMIC_DNS takes no addresses: routes come from the hosts",
        );
    }
    for (i, p) in spec.ports.iter().enumerate() {
        if !matches!(
            p.protocol.to_ascii_uppercase().as_str(),
            "HTTP" | "TLS" | "GRPC" | "HTTP2"
        ) {
            cx.error(
                &spec_path.key("ports").index(i).key("protocol"),
                "resolution DYNAMIC_DNS serves HTTP, HTTP2, GRPC and TLS ports only",
            );
        }
    }
    let waypoint = meta
        .labels
        .get("istio.io/use-waypoint")
        .is_some_and(|w| !w.is_empty() && !w.eq_ignore_ascii_case("none"));
    if spec.location.as_deref() == Some("MESH_INTERNAL") && waypoint {
        cx.error(
            &spec_path.key("location"),
            "location MESH_INTERNAL with resolution DYNAMIC_DNS does not work through a waypoint (label istio.io/use-waypoint)",
        );
    }
}

fn service_entry(cx: &mut Cx, meta: Meta, spec: wire::ServiceEntrySpec) -> ServiceEntry {
    let spec_path = FieldPath::root().key("spec");
    let ns = meta.namespace.clone();
    if spec.hosts.is_empty() {
        cx.error(&spec_path.key("hosts"), "at least one host is required");
    }
    let resolution = spec.resolution.as_deref();
    check_export_to(cx, &spec_path.key("exportTo"), &spec.export_to, &ns, true);
    if let Some(selector) = &spec.workload_selector {
        let f = spec_path.key("workloadSelector").key("labels");
        for (key, value) in &selector.labels {
            if key.is_empty() || key.contains('*') || value.contains('*') {
                cx.error(
                    &f.key(key),
                    format!(
                        "`{key}: {value}`: a selector label needs a key, and takes no wildcard"
                    ),
                );
            }
        }
    }
    if resolution == Some("DYNAMIC_DNS") {
        dynamic_dns(cx, &spec_path, &spec, &meta);
    }
    if resolution != Some("NONE") && resolution.is_some() && spec.hosts.len() > 1 {
        let plain = spec.ports.iter().position(|p| {
            let proto = p.protocol.to_ascii_uppercase();
            !matches!(
                proto.as_str(),
                "HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-WEB" | "HTTPS" | "TLS"
            )
        });
        if let Some(i) = plain {
            cx.error(
                &spec_path.key("ports").index(i).key("protocol"),
                "several hosts share this ServiceEntry, and a port that is not HTTP or TLS carries nothing to tell them apart; use one host, or resolution NONE",
            );
        }
    }
    if let Some(res) = resolution {
        if !matches!(
            res,
            "NONE" | "STATIC" | "DNS" | "DNS_ROUND_ROBIN" | "DYNAMIC_DNS"
        ) {
            cx.error(
                &spec_path.key("resolution"),
                format!("`{res}` is not NONE, STATIC, DNS, DNS_ROUND_ROBIN or DYNAMIC_DNS"),
            );
        }
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let f = spec_path.key("hosts").index(i);
        if host == "*" {
            cx.error(&f, "a ServiceEntry cannot serve every host (`*`)");
            continue;
        }
        if let Err(reason) = syntax::check_wildcard_domain(host) {
            cx.error(&f, reason);
            continue;
        }
        if resolution != Some("DYNAMIC_DNS") {
            if let Err(reason) = syntax::check_no_partial_wildcard(host) {
                cx.warn(&f, reason);
            }
        }
        if !host.contains('.') && !host.starts_with('*') {
            let fqdn = resolve_host(host, &ns);
            cx.diverges(
                &f,
                format!("short host `{host}` is read in this ServiceEntry's namespace as {fqdn}, as `istioctl analyze` reads it; Istio's control plane takes a ServiceEntry host literally, so in a cluster routes to `{host}` would not reach this entry: write `{fqdn}`"),
            );
        }
    }
    if let Some(loc) = &spec.location {
        if !matches!(loc.as_str(), "MESH_EXTERNAL" | "MESH_INTERNAL") {
            cx.error(
                &spec_path.key("location"),
                format!("`{loc}` is not MESH_EXTERNAL or MESH_INTERNAL"),
            );
        }
    }
    for (i, address) in spec.addresses.iter().enumerate() {
        let valid = match address.split_once('/') {
            Some((ip, bits)) => {
                syntax::is_ip(ip)
                    && bits
                        .parse::<u8>()
                        .is_ok_and(|b| b <= if ip.contains(':') { 128 } else { 32 })
            }
            None => syntax::is_ip(address),
        };
        if !valid {
            cx.error(
                &spec_path.key("addresses").index(i),
                format!("`{address}` is not an IP address or CIDR block"),
            );
        } else if address.contains('/') && !matches!(resolution, None | Some("NONE" | "STATIC")) {
            cx.error(
                &spec_path.key("addresses").index(i),
                format!("CIDR block `{address}` needs resolution NONE or STATIC"),
            );
        }
    }
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        cx.error(
            &spec_path.key("workloadSelector"),
            "workloadSelector and endpoints cannot both be set",
        );
    }
    let mut port_names = BTreeSet::new();
    let mut port_numbers = BTreeSet::new();
    let ports = spec
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = spec_path.key("ports").index(i);
            if !port_names.insert(p.name.clone()) {
                cx.error(
                    &f.key("name"),
                    format!("port name `{}` is defined twice", p.name),
                );
            }
            if !port_numbers.insert(p.number) {
                cx.error(
                    &f.key("number"),
                    format!("port {} is defined twice", p.number),
                );
            }
            if !syntax::is_dns1123_label(&p.name) {
                cx.error(
                    &f.key("name"),
                    format!("port name `{}` is not a DNS-1123 label", p.name),
                );
            }
            if !syntax::is_known_protocol(&p.protocol) {
                cx.error(
                    &f.key("protocol"),
                    format!("`{}` is not a protocol Istio knows (HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, HTTP_PROXY, TLS, TCP, UDP, MONGO, REDIS, MYSQL)", p.protocol),
                );
            }
            ServicePort {
                number: cx.port(&f.key("number"), p.number),
                protocol: p.protocol.clone(),
                name: p.name.clone(),
                target_port: p.target_port.map(|t| cx.port(&f.key("targetPort"), t)),
            }
        })
        .collect();
    let endpoints_path = spec_path.key("endpoints");
    match resolution {
        Some("NONE") if !spec.endpoints.is_empty() => cx.error(
            &endpoints_path,
            "resolution NONE takes no endpoints; use STATIC for IP endpoints or DNS for host names",
        ),
        None if !spec.endpoints.is_empty() => cx.diverges(
            &spec_path.key("endpoints"),
            "no resolution is given: abgate takes these endpoints as STATIC, but Istio reads a missing resolution as NONE and rejects endpoints with it; write `resolution: STATIC` (or DNS)",
        ),
        Some("DNS" | "DNS_ROUND_ROBIN") if spec.endpoints.is_empty() => {
            if let Some((i, reason)) = spec
                .hosts
                .iter()
                .enumerate()
                .find_map(|(i, h)| syntax::check_fqdn(h).err().map(|e| (i, e)))
            {
                cx.error(
                    &spec_path.key("hosts").index(i),
                    format!("with resolution {} and no endpoints the hosts are resolved in DNS, so each must be fully qualified without wildcards: {reason}", resolution.unwrap_or_default()),
                );
            }
        }
        Some("DYNAMIC_DNS") if !spec.endpoints.is_empty() => cx.error(
            &endpoints_path,
            "resolution DYNAMIC_DNS takes no endpoints: the destination comes from the request's host",
        ),
        _ => {}
    }
    if resolution == Some("DNS_ROUND_ROBIN") && spec.endpoints.len() > 1 {
        cx.error(
            &endpoints_path,
            "resolution DNS_ROUND_ROBIN takes at most one endpoint",
        );
    }
    let checks_ports = matches!(
        resolution,
        None | Some("STATIC" | "DNS" | "DNS_ROUND_ROBIN")
    );
    for (i, e) in spec.endpoints.iter().enumerate() {
        let f = endpoints_path.index(i);
        let address = e.address.as_str();
        let ip_only = matches!(resolution, None | Some("STATIC"));
        check_labels(cx, &f.key("labels"), &e.labels);
        if let Some(path) = address.strip_prefix("unix://") {
            if !ip_only {
                cx.error(
                    &f.key("address"),
                    format!("`{address}` is a unix socket; resolution {} takes IP addresses or host names", resolution.unwrap_or_default()),
                );
            } else if let Err(reason) = syntax::check_unix_address(path) {
                cx.error(&f.key("address"), reason);
            } else {
                if !e.ports.is_empty() {
                    cx.error(&f.key("ports"), "a unix socket endpoint takes no ports");
                }
                if spec.ports.len() != 1 {
                    cx.error(
                        &f.key("address"),
                        "a unix socket endpoint needs exactly one ServiceEntry port",
                    );
                }
            }
        } else if !address.is_empty() && !syntax::is_ip(address) {
            if ip_only {
                cx.error(
                    &f.key("address"),
                    format!("`{address}` is not an IP address; resolution STATIC needs IP endpoints (use DNS for host names)"),
                );
            } else if let Err(reason) = syntax::check_fqdn(address) {
                cx.error(
                    &f.key("address"),
                    format!("`{address}` is not an IP address or host name: {reason}"),
                );
            }
        }
        if checks_ports {
            for name in e.ports.keys() {
                if !syntax::is_dns1123_label(name) {
                    cx.error(
                        &f.key("ports").key(name),
                        format!("port name `{name}` is not a DNS-1123 label"),
                    );
                } else if !spec.ports.iter().any(|p| &p.name == name) {
                    cx.error(
                        &f.key("ports").key(name),
                        format!("port `{name}` is not one of this ServiceEntry's ports"),
                    );
                }
            }
        }
    }
    let endpoints = spec
        .endpoints
        .into_iter()
        .enumerate()
        .map(|(i, e)| endpoint(cx, &endpoints_path.index(i), e))
        .collect();
    ServiceEntry {
        hosts: spec.hosts.iter().map(|h| resolve_host(h, &ns)).collect(),
        ports,
        endpoints,
        workload_selector: spec.workload_selector.map(|w| w.labels),
        meta,
    }
}

fn endpoint(cx: &mut Cx, field: &FieldPath, e: wire::WorkloadEntrySpec) -> Endpoint {
    if e.address.is_empty() {
        match e.network.as_deref().filter(|n| !n.is_empty()) {
            // Istio reaches it through its network's gateway; abgate cannot.
            Some(network) => cx.warn(
                &field.key("address"),
                format!("no address: this endpoint is on network `{network}`, reached through that network's gateway, which abgate cannot do; it is left out"),
            ),
            None => cx.error(&field.key("address"), "address is required"),
        }
    }
    let ports = e
        .ports
        .iter()
        .map(|(name, number)| {
            (
                name.clone(),
                cx.port(&field.key("ports").key(name), *number),
            )
        })
        .collect();
    Endpoint {
        address: e.address,
        ports,
        labels: e.labels,
        weight: e.weight.unwrap_or(1),
        locality: e.locality,
    }
}

// ---------------------------------------------------------------------------------------
// Experiment

fn experiment(cx: &mut Cx, meta: Meta, spec: wire::ExperimentSpec) -> Experiment {
    let spec_path = FieldPath::root().key("spec");
    let ns = meta.namespace.clone();
    if spec.host.is_empty() {
        cx.error(
            &spec_path.key("host"),
            "host is required: the service whose subsets are compared",
        );
    }
    let variants: Vec<Variant> = match (spec.variants.is_empty(), spec.traffic_split.is_empty()) {
        (false, false) => {
            cx.error(
                &spec_path.key("variants"),
                "set variants or trafficSplit, not both",
            );
            Vec::new()
        }
        (false, true) => spec
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let weight =
                    cx.nonneg_u32(&spec_path.key("variants").index(i).key("weight"), v.weight);
                Variant {
                    name: v.name.clone(),
                    subset: v.subset.clone().unwrap_or_else(|| v.name.clone()),
                    weight: weight.unwrap_or(0),
                }
            })
            .collect(),
        (true, false) => spec
            .traffic_split
            .iter()
            .map(|(name, w)| Variant {
                name: name.clone(),
                subset: name.clone(),
                weight: cx
                    .nonneg_u32(&spec_path.key("trafficSplit").key(name), Some(*w))
                    .unwrap_or(0),
            })
            .collect(),
        (true, true) => {
            cx.error(
                &spec_path.key("variants"),
                "an experiment needs variants (or the seed's trafficSplit)",
            );
            Vec::new()
        }
    };
    if variants.len() == 1 {
        cx.error(
            &spec_path.key("variants"),
            "an experiment needs at least two variants",
        );
    }
    let mut names = BTreeSet::new();
    for v in &variants {
        if !names.insert(v.name.as_str()) {
            cx.error(
                &spec_path.key("variants"),
                format!("variant `{}` is listed twice", v.name),
            );
        }
    }
    if !variants.is_empty() && variants.iter().all(|v| v.weight == 0) {
        cx.error(&spec_path.key("variants"), "total variant weight is 0");
    }
    let baseline = match &spec.baseline {
        Some(b) => variants
            .iter()
            .position(|v| &v.name == b)
            .unwrap_or_else(|| {
                cx.error(
                    &spec_path.key("baseline"),
                    format!("baseline `{b}` is not one of the variants"),
                );
                0
            }),
        // The seed takes the first variant of the split as the baseline.
        None => 0,
    };
    let matches = spec
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| match_block(cx, &spec_path.key("match").index(i), m, &ns))
        .collect();
    let id = spec.id.clone().unwrap_or_else(|| meta.name.clone());
    let stickiness = spec.stickiness.as_ref().and_then(|s| {
        let source = match (&s.header, &s.cookie) {
            (Some(h), None) => KeySource::Header(h.to_ascii_lowercase()),
            (None, Some(c)) => KeySource::Cookie(c.clone()),
            _ => {
                cx.error(
                    &spec_path.key("stickiness"),
                    "stickiness needs exactly one of header or cookie",
                );
                return None;
            }
        };
        Some(StickinessKey {
            source,
            salt: s.salt.clone().unwrap_or_else(|| id.clone()),
        })
    });
    let strategy = match spec.strategy.as_deref().unwrap_or("canary") {
        "canary" => Strategy::Canary,
        "abtest" => Strategy::AbTest,
        "bluegreen" => Strategy::BlueGreen,
        "featureflag" => Strategy::FeatureFlag,
        "mirror" => Strategy::Mirror,
        "bandit" => Strategy::Bandit,
        other => {
            cx.error(
                &spec_path.key("strategy"),
                format!("`{other}` is not one of canary, abtest, bluegreen, featureflag, mirror, bandit"),
            );
            Strategy::Canary
        }
    };
    let policy = match spec.policy.as_deref() {
        None | Some("sequential") => PolicyKind::Sequential,
        Some("classic") => PolicyKind::Classic,
        Some(other) => {
            cx.error(
                &spec_path.key("policy"),
                format!("`{other}` is not sequential or classic"),
            );
            PolicyKind::Sequential
        }
    };
    let mut canary = CanaryPlan::default();
    if let Some(c) = &spec.canary {
        let f = spec_path.key("canary");
        let percent = |cx: &mut Cx, field: FieldPath, v: i64| -> u32 {
            if (0..=100).contains(&v) {
                v as u32
            } else {
                cx.error(&field, format!("must be between 0 and 100, got {v}"));
                0
            }
        };
        if let Some(step) = c.step_weight {
            canary.step_weight = percent(cx, f.key("stepWeight"), step);
            if canary.step_weight == 0 {
                cx.error(&f.key("stepWeight"), "stepWeight must be positive");
            }
        }
        if let Some(max) = c.max_weight {
            canary.max_weight = percent(cx, f.key("maxWeight"), max);
        }
        canary.steps = c
            .steps
            .iter()
            .enumerate()
            .map(|(i, w)| percent(cx, f.key("steps").index(i), *w))
            .collect();
        if canary.steps.windows(2).any(|w| w[1] <= w[0]) {
            cx.error(&f.key("steps"), "steps must increase");
        }
        if c.max_weight.is_none() {
            if let Some(last) = canary.steps.last() {
                canary.max_weight = *last;
            }
        }
    }
    let metric_source = match spec.metrics.as_ref() {
        None => MetricSource::Builtin,
        Some(m) => match (m.source.as_deref(), &m.prometheus) {
            (None | Some("builtin"), _) => MetricSource::Builtin,
            (Some("prometheus"), Some(p)) if !p.address.is_empty() => {
                let mut queries = default_prometheus_queries();
                for (figure, query) in &p.queries {
                    if !queries.contains_key(figure) {
                        cx.error(
                            &spec_path
                                .key("metrics")
                                .key("prometheus")
                                .key("queries")
                                .key(figure),
                            format!(
                                "`{figure}` is not a figure analysis reads; use one of {}",
                                queries.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                    queries.insert(figure.clone(), query.clone());
                }
                MetricSource::Prometheus {
                    address: p.address.trim_end_matches('/').to_owned(),
                    queries,
                }
            }
            (Some("prometheus"), _) => {
                cx.error(
                    &spec_path.key("metrics").key("prometheus").key("address"),
                    "source prometheus needs prometheus.address",
                );
                MetricSource::Builtin
            }
            (Some(other), _) => {
                cx.error(
                    &spec_path.key("metrics").key("source"),
                    format!("`{other}` is not builtin or prometheus"),
                );
                MetricSource::Builtin
            }
        },
    };
    let min_samples = match spec.analysis.as_ref().and_then(|a| a.min_samples) {
        None => 100,
        Some(n) if n >= 0 => n as u64,
        Some(n) => {
            cx.error(
                &spec_path.key("analysis").key("minSamples"),
                format!("minSamples must not be negative, got {n}"),
            );
            100
        }
    };
    let bandit = bandit_plan(cx, &spec_path, &spec, variants.len(), min_samples);
    let progress_deadline =
        cx.duration(&spec_path.key("progressDeadline"), &spec.progress_deadline);
    let failure_limit = cx
        .nonneg_u32(&spec_path.key("failureLimit"), spec.failure_limit)
        .unwrap_or(3)
        .max(1);
    if spec.skip_analysis && strategy != Strategy::BlueGreen {
        cx.warn(
            &spec_path.key("skipAnalysis"),
            "skipAnalysis is read only by `strategy: bluegreen`; this experiment ignores it",
        );
    }
    let gates = spec
        .gates
        .iter()
        .enumerate()
        .filter_map(|(i, g)| {
            let f = spec_path.key("gates").index(i);
            let kind = match g.kind.as_str() {
                "pre-rollout" => GateKind::PreRollout,
                "confirm-promotion" => GateKind::ConfirmPromotion,
                "rollback" => GateKind::Rollback,
                "event" => GateKind::Event,
                other => {
                    cx.error(
                        &f.key("type"),
                        format!(
                            "`{other}` is not pre-rollout, confirm-promotion, rollback or event"
                        ),
                    );
                    return None;
                }
            };
            if !(g.url.starts_with("http://") || g.url.starts_with("https://")) {
                cx.error(&f.key("url"), format!("`{}` is not an http(s) URL", g.url));
                return None;
            }
            Some(Gate {
                name: g.name.clone().unwrap_or_else(|| g.kind.clone()),
                kind,
                url: g.url.clone(),
                timeout: cx
                    .duration(&f.key("timeout"), &g.timeout)
                    .unwrap_or(Duration::from_secs(10)),
            })
        })
        .collect();
    let interval = cx
        .duration(&spec_path.key("interval"), &spec.interval)
        .unwrap_or(Duration::from_secs(300));
    let duration = match (
        cx.duration(&spec_path.key("duration"), &spec.duration),
        spec.duration_hours,
    ) {
        (Some(d), _) => d,
        (None, Some(h)) if h > 0.0 && h.is_finite() => Duration::from_secs_f64(h * 3600.0),
        (None, Some(h)) => {
            cx.error(
                &spec_path.key("durationHours"),
                format!("durationHours must be positive, got {h}"),
            );
            Duration::ZERO
        }
        (None, None) => Duration::from_secs(24 * 3600),
    };
    Experiment {
        id,
        description: spec.description.clone(),
        host: resolve_host(&spec.host, &ns),
        variants,
        baseline,
        matches,
        stickiness,
        strategy,
        interval,
        duration,
        target_metrics: spec.target_metrics,
        success_criteria: spec.success_criteria,
        rollback_criteria: spec.rollback_criteria,
        policy,
        canary,
        bandit,
        min_samples,
        metric_source,
        progress_deadline,
        failure_limit,
        skip_analysis: spec.skip_analysis,
        gates,
        meta,
    }
}

/// A bandit's allocation from `spec.bandit`, with its defaults; checked even when the
/// strategy is not `bandit` (where it is not read, which a warning says).
fn bandit_plan(
    cx: &mut Cx,
    spec_path: &FieldPath,
    spec: &wire::ExperimentSpec,
    variants: usize,
    min_samples: u64,
) -> BanditPlan {
    let mut plan = BanditPlan {
        min_samples,
        ..BanditPlan::default()
    };
    let Some(b) = &spec.bandit else {
        return plan;
    };
    let f = spec_path.key("bandit");
    if spec.strategy.as_deref() != Some("bandit") {
        cx.warn(
            &f,
            "bandit settings are read only by `strategy: bandit`; this experiment ignores them",
        );
    }
    let positive_ms = |cx: &mut Cx, field: FieldPath, v: Option<f64>| -> Option<f64> {
        match v {
            Some(ms) if ms.is_finite() && ms > 0.0 => Some(ms),
            Some(ms) => {
                cx.error(
                    &field,
                    format!("must be a positive number of milliseconds, got {ms}"),
                );
                None
            }
            None => None,
        }
    };
    plan.reward = match b.reward.as_deref().unwrap_or("success") {
        "success" => BanditReward::Success,
        "feedback" => BanditReward::Feedback,
        "goodput" => {
            let slo = b.slo.clone().unwrap_or_default();
            let ttft_ms = positive_ms(cx, f.key("slo").key("ttftMs"), slo.ttft_ms);
            let latency_ms = positive_ms(cx, f.key("slo").key("latencyMs"), slo.latency_ms);
            if ttft_ms.is_none() && latency_ms.is_none() {
                cx.error(
                    &f.key("slo"),
                    "reward goodput needs an SLO: slo.ttftMs, slo.latencyMs or both",
                );
            }
            BanditReward::Goodput {
                ttft_ms,
                latency_ms,
            }
        }
        other => {
            cx.error(
                &f.key("reward"),
                format!("`{other}` is not success, goodput or feedback"),
            );
            BanditReward::Success
        }
    };
    if b.slo.is_some() && !matches!(plan.reward, BanditReward::Goodput { .. }) {
        cx.warn(&f.key("slo"), "slo is read only by reward goodput");
    }
    if let Some(w) = b.min_weight {
        match u32::try_from(w) {
            Ok(w) if variants > 0 && u64::from(w) * variants as u64 >= 100 => cx.error(
                &f.key("minWeight"),
                format!("minWeight {w}% for each of {variants} variants leaves nothing for the bandit to allocate: minWeight × variants must be below 100"),
            ),
            Ok(w) => plan.min_weight = w,
            Err(_) => cx.error(&f.key("minWeight"), format!("must be a percentage, got {w}")),
        }
    }
    if let Some(n) = b.min_samples {
        match u64::try_from(n) {
            Ok(n) => plan.min_samples = n,
            Err(_) => cx.error(
                &f.key("minSamples"),
                format!("minSamples must not be negative, got {n}"),
            ),
        }
    }
    if let Some(p) = b.winner_probability {
        if p.is_finite() && p > 0.5 && p < 1.0 {
            plan.winner_probability = p;
        } else {
            cx.error(
                &f.key("winnerProbability"),
                format!("winnerProbability must be above 0.5 and below 1, got {p}"),
            );
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_namespace_and_dotted_names_stay() {
        assert_eq!(
            resolve_host("reviews", "prod"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("llama-3.1-8b-service", "prod"),
            "llama-3.1-8b-service"
        );
        assert_eq!(resolve_host("*.example.com", "prod"), "*.example.com");
    }

    #[test]
    fn gateway_references_resolve_to_namespace_and_name() {
        assert_eq!(
            resolve_gateway("llm-gateway", "production"),
            "production/llm-gateway"
        );
        assert_eq!(
            resolve_gateway("istio-system/gw", "production"),
            "istio-system/gw"
        );
        assert_eq!(resolve_gateway("mesh", "production"), "mesh");
    }

    #[test]
    fn envoy_group_references_become_regex_crate_ones() {
        assert_eq!(envoy_substitution(r"/v2/\1/x"), "/v2/${1}/x");
        assert_eq!(envoy_substitution("/cost$"), "/cost$$");
    }

    #[test]
    fn suggestions_find_the_near_field() {
        let msg = "unknown field `h2MaxRequests`, expected one of `http1MaxPendingRequests`, `http2MaxRequests`, `maxRetries`";
        assert_eq!(unknown_field_name(msg).as_deref(), Some("h2MaxRequests"));
        assert_eq!(
            suggest("h2MaxRequests", msg).as_deref(),
            Some("http2MaxRequests")
        );
    }
}
