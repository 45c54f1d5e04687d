//! Every diagnostic, from a fixture that provokes it: code, severity, file, line and field.
//! Lines are found from `# MARK` comments in the fixtures so the tests say where, not what number.

use std::collections::BTreeSet;
use std::path::PathBuf;

use abgate_config::model::RouteAction;
use abgate_config::{Diagnostic, Loaded, Severity};

const SERVICE: &str = "base-service.yaml";
const RULE: &str = "base-rule.yaml";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(names: &[&str]) -> Loaded {
    let paths: Vec<PathBuf> = names.iter().map(|n| fixture(n)).collect();
    abgate_config::load(&paths).expect("fixtures are readable")
}

/// The line of the first line of `file` containing `marker`.
fn line_of(file: &str, marker: &str) -> u32 {
    let text = std::fs::read_to_string(fixture(file)).expect("fixture is readable");
    let index = text
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("marker {marker} not in {file}"));
    u32::try_from(index + 1).expect("small file")
}

type Key = (String, Severity, String, u32, String);

fn key(d: &Diagnostic) -> Key {
    let file = d
        .file
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default()
        .to_owned();
    (
        d.code.as_str().to_owned(),
        d.severity,
        file,
        d.line,
        d.field.to_string(),
    )
}

/// `(code, severity, file, marker, field)`
type Expected<'a> = (&'a str, Severity, &'a str, &'a str, &'a str);

fn assert_exactly(loaded: &Loaded, expected: &[Expected<'_>]) {
    let got: BTreeSet<Key> = loaded.diagnostics.iter().map(key).collect();
    let want: BTreeSet<Key> = expected
        .iter()
        .map(|(code, severity, file, marker, field)| {
            (
                (*code).to_owned(),
                *severity,
                (*file).to_owned(),
                line_of(file, marker),
                (*field).to_owned(),
            )
        })
        .collect();
    let messages: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(got, want, "diagnostics were:\n{}", messages.join("\n"));
}

fn message_of<'a>(loaded: &'a Loaded, code: &str) -> &'a str {
    &loaded
        .diagnostics
        .iter()
        .find(|d| d.code.as_str() == code)
        .unwrap_or_else(|| panic!("no {code}"))
        .message
}

use Severity::{Error, Info, Warning};

#[test]
fn clean_configuration_has_no_diagnostics() {
    let loaded = load(&[SERVICE, RULE, "clean.yaml"]);
    assert_exactly(&loaded, &[]);
    assert_eq!(loaded.config.virtual_services.len(), 1);
    assert_eq!(loaded.config.gateways.len(), 1);
}

#[test]
fn yaml_syntax_error_names_its_line_and_keeps_the_other_documents() {
    let loaded = load(&[SERVICE, RULE, "yaml-syntax.yaml"]);
    let syntax: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.code.as_str() == "ABG0001")
        .collect();
    assert_eq!(syntax.len(), 1, "{:?}", loaded.diagnostics);
    assert!((6..=7).contains(&syntax[0].line), "line {}", syntax[0].line);
    assert!(syntax[0].is_error());
    let names: Vec<_> = loaded
        .config
        .virtual_services
        .iter()
        .map(|v| v.meta.name.as_str())
        .collect();
    assert_eq!(names, ["fine"]);
}

#[test]
fn unknown_field_is_an_error_at_the_field() {
    let loaded = load(&[SERVICE, RULE, "unknown-field.yaml"]);
    assert_exactly(
        &loaded,
        &[(
            "IST0106",
            Error,
            "unknown-field.yaml",
            "MARK",
            "spec.http[0].timeuot",
        )],
    );
    assert!(message_of(&loaded, "IST0106").contains("did you mean `timeout`"));
    assert!(
        loaded.config.virtual_services.is_empty(),
        "an invalid resource does not take effect"
    );
}

#[test]
fn malformed_duration() {
    let loaded = load(&[SERVICE, RULE, "bad-duration.yaml"]);
    assert_exactly(
        &loaded,
        &[(
            "IST0106",
            Error,
            "bad-duration.yaml",
            "MARK",
            "spec.http[0].timeout",
        )],
    );
    assert!(message_of(&loaded, "IST0106").contains("malformed duration"));
}

#[test]
fn llm_balancer_annotations() {
    let loaded = load(&[SERVICE, "llm-annotations.yaml"]);
    let file = "llm-annotations.yaml";
    assert_exactly(
        &loaded,
        &[
            (
                "IST0106",
                Error,
                file,
                "MARK-VALUE",
                r#"metadata.annotations["abgate.dev/load-balancer"]"#,
            ),
            (
                "IST0106",
                Error,
                file,
                "MARK-INTERVAL",
                r#"metadata.annotations["abgate.dev/metrics-interval"]"#,
            ),
            (
                "IST0133",
                Warning,
                file,
                "MARK-UNUSED",
                r#"metadata.annotations["abgate.dev/metrics-path"]"#,
            ),
        ],
    );
    assert!(message_of(&loaded, "IST0106").contains("`llm_aware` is not a load balancer"));
}

#[test]
fn invalid_regex() {
    let loaded = load(&[SERVICE, RULE, "bad-regex.yaml"]);
    assert_exactly(
        &loaded,
        &[(
            "IST0106",
            Error,
            "bad-regex.yaml",
            "MARK",
            "spec.http[0].match[0].uri.regex",
        )],
    );
    assert!(message_of(&loaded, "IST0106").contains("invalid regex"));
}

#[test]
fn negative_weight() {
    let loaded = load(&[SERVICE, RULE, "negative-weight.yaml"]);
    assert_exactly(
        &loaded,
        &[(
            "IST0106",
            Error,
            "negative-weight.yaml",
            "MARK",
            "spec.http[0].route[1].weight",
        )],
    );
}

#[test]
fn weights_summing_to_zero_over_several_destinations() {
    let loaded = load(&[SERVICE, RULE, "zero-weights.yaml"]);
    assert_exactly(
        &loaded,
        &[(
            "IST0106",
            Error,
            "zero-weights.yaml",
            "MARK",
            "spec.http[0].route",
        )],
    );
}

#[test]
fn weights_not_summing_to_100_are_relative_with_a_warning() {
    let loaded = load(&[SERVICE, RULE, "weights-not-100.yaml"]);
    assert_exactly(
        &loaded,
        &[(
            "ABG0020",
            Warning,
            "weights-not-100.yaml",
            "MARK",
            "spec.http[0].route",
        )],
    );
    assert!(message_of(&loaded, "ABG0020").contains("75.0% / 25.0%"));
    assert_eq!(
        loaded.config.virtual_services.len(),
        1,
        "a warning does not reject the resource"
    );
}

#[test]
fn route_to_a_subset_no_rule_defines() {
    let loaded = load(&[SERVICE, RULE, "missing-subset.yaml"]);
    assert_exactly(
        &loaded,
        &[(
            "IST0101",
            Error,
            "missing-subset.yaml",
            "MARK",
            "spec.http[0].route[0].destination.subset",
        )],
    );
    assert!(message_of(&loaded, "IST0101").contains("503 NC"));
}

#[test]
fn host_with_no_endpoints() {
    let loaded = load(&[SERVICE, RULE, "missing-host.yaml"]);
    assert_exactly(
        &loaded,
        &[
            (
                "IST0101",
                Error,
                "missing-host.yaml",
                "MARK",
                "spec.http[0].route[0].destination.host",
            ),
            (
                "IST0101",
                Error,
                "missing-host.yaml",
                "MARK2",
                "spec.http[0].route[0].destination.host",
            ),
        ],
    );
}

#[test]
fn unreachable_rules_and_ineffective_matches() {
    let loaded = load(&[SERVICE, RULE, "unreachable.yaml"]);
    assert_exactly(
        &loaded,
        &[
            (
                "IST0131",
                Info,
                "unreachable.yaml",
                "MARK-INEFFECTIVE",
                "spec.http[1].match[1]",
            ),
            (
                "IST0130",
                Warning,
                "unreachable.yaml",
                "MARK-ALL-TAKEN",
                "spec.http[2]",
            ),
            (
                "IST0130",
                Warning,
                "unreachable.yaml",
                "MARK-AFTER-CATCH-ALL",
                "spec.http[4]",
            ),
        ],
    );
}

#[test]
fn duplicate_and_conflicting_destination_rules() {
    let loaded = load(&[SERVICE, RULE, "duplicate-rules.yaml"]);
    assert_exactly(
        &loaded,
        &[
            (
                "ABG0010",
                Error,
                "duplicate-rules.yaml",
                "MARK-DUP",
                "metadata.name",
            ),
            (
                "ABG0011",
                Error,
                "duplicate-rules.yaml",
                "MARK-CONFLICT",
                "spec.host",
            ),
            // The replacement took subset v2 away from the route that uses it.
            (
                "IST0101",
                Error,
                "duplicate-rules.yaml",
                "subset: v2",
                "spec.http[0].route[0].destination.subset",
            ),
        ],
    );
    let dup = message_of(&loaded, "ABG0010");
    assert!(
        dup.contains("removes subset `v2`") && dup.contains("test/canary"),
        "{dup}"
    );
}

#[test]
fn missing_api_version_kind_or_name() {
    let loaded = load(&["missing-meta.yaml"]);
    let got: Vec<_> = loaded
        .diagnostics
        .iter()
        .map(|d| (d.code.as_str(), d.severity, d.field.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            ("ABG0002", Error, "metadata.name".to_owned()),
            ("ABG0002", Error, "apiVersion".to_owned()),
            ("ABG0002", Error, "kind".to_owned()),
        ]
    );
    assert!(loaded.diagnostics.iter().all(|d| !d.message.is_empty()));
}

#[test]
fn unsupported_kind_is_a_warning_and_unknown_version_an_error() {
    let loaded = load(&["unsupported-kind.yaml"]);
    assert_exactly(
        &loaded,
        &[
            ("ABG0003", Warning, "unsupported-kind.yaml", "MARK", "kind"),
            (
                "ABG0003",
                Error,
                "unsupported-kind.yaml",
                "MARK-VERSION",
                "apiVersion",
            ),
        ],
    );
}

#[test]
fn gateway_references_and_hosts() {
    let loaded = load(&[SERVICE, RULE, "gateway-binding.yaml"]);
    assert_exactly(
        &loaded,
        &[
            (
                "IST0132",
                Warning,
                "gateway-binding.yaml",
                "MARK-HOST",
                "spec.hosts[1]",
            ),
            (
                "IST0101",
                Error,
                "gateway-binding.yaml",
                "MARK-GW",
                "spec.gateways[1]",
            ),
        ],
    );
}

#[test]
fn subsets_selecting_nothing_and_rules_for_unknown_hosts() {
    let loaded = load(&[SERVICE, "subset-selection.yaml"]);
    assert_exactly(
        &loaded,
        &[
            (
                "IST0173",
                Error,
                "subset-selection.yaml",
                "MARK-NONE",
                "spec.subsets[1].labels",
            ),
            (
                "IST0174",
                Warning,
                "subset-selection.yaml",
                "MARK-UNKNOWN",
                "spec.host",
            ),
        ],
    );
}

#[test]
fn identical_split_destinations_and_scattered_stickiness() {
    let loaded = load(&[SERVICE, RULE, "split-defects.yaml"]);
    assert_exactly(
        &loaded,
        &[
            (
                "ABG0022",
                Warning,
                "split-defects.yaml",
                "MARK-SCATTER",
                "spec.http[0].route",
            ),
            (
                "ABG0021",
                Warning,
                "split-defects.yaml",
                "MARK-TWIN",
                "spec.http[1].route[1].destination",
            ),
        ],
    );
    assert!(message_of(&loaded, "ABG0021").contains("80/20"));
    assert!(message_of(&loaded, "ABG0022").contains("x-user-id"));
}

#[test]
fn subset_policy_replaces_the_host_section_whole() {
    let loaded = load(&[SERVICE, "subset-policy.yaml"]);
    // v2 repeats every host setting, so only v1 loses something.
    assert_exactly(
        &loaded,
        &[(
            "ABG0023",
            Warning,
            "subset-policy.yaml",
            "MARK",
            "spec.subsets[0].trafficPolicy.connectionPool",
        )],
    );
    assert!(message_of(&loaded, "ABG0023").contains("tcp.maxConnections=100"));
    let rule = loaded
        .config
        .destination_rule("models.local")
        .expect("rule");
    let pool = rule.policy_for(Some("v1")).connection_pool.expect("pool");
    assert_eq!(
        (pool.max_connections, pool.http1_max_pending_requests),
        (None, Some(20))
    );
}

#[test]
fn experiment_variants_must_be_subsets() {
    let loaded = load(&[SERVICE, RULE, "experiment.yaml"]);
    assert_exactly(
        &loaded,
        &[("ABG0030", Error, "experiment.yaml", "MARK", "spec.variants")],
    );
    assert!(message_of(&loaded, "ABG0030").contains("`v9`"));
    let seed_style = &loaded.config.experiments[0];
    assert_eq!(seed_style.id, "seed-style");
    let split: Vec<_> = seed_style
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.weight))
        .collect();
    assert_eq!(
        split,
        [("v1", 70), ("v2", 30)],
        "the seed's split keeps its order: first is baseline"
    );
    assert_eq!(seed_style.baseline, 0);
    assert_eq!(
        seed_style.duration,
        std::time::Duration::from_secs(24 * 3600)
    );
}

#[test]
fn deprecated_spellings_load_with_warnings_and_unsupported_fields_are_named() {
    let loaded = load(&[SERVICE, RULE, "deprecated.yaml"]);
    assert_exactly(
        &loaded,
        &[
            (
                "IST0133",
                Warning,
                "deprecated.yaml",
                "MARK-MIRROR",
                "spec.http[0].mirrorPercent",
            ),
            (
                "IST0133",
                Warning,
                "deprecated.yaml",
                "MARK-FAULT",
                "spec.http[0].fault.abort.percent",
            ),
            ("ABG0004", Info, "deprecated.yaml", "MARK-TCP", "spec.tcp"),
        ],
    );
    let route = &loaded.config.virtual_services[0].http[0];
    assert_eq!(route.mirrors[0].percentage, 5.0);
    let abort = route
        .fault
        .as_ref()
        .and_then(|f| f.abort.clone())
        .expect("abort");
    assert_eq!(abort.1, 1.0);
    assert_eq!(
        route.retries.attempts, 0,
        "a rule with a fault gets no retries"
    );
}

#[test]
fn every_diagnostic_names_file_line_kind_and_field_in_text() {
    let loaded = load(&[SERVICE, RULE, "negative-weight.yaml"]);
    let line = loaded.diagnostics[0].to_string();
    let expected_prefix = format!(
        "{}:{}: error[IST0106] VirtualService/neg spec.http[0].route[1].weight: ",
        fixture("negative-weight.yaml").display(),
        line_of("negative-weight.yaml", "MARK")
    );
    assert!(line.starts_with(&expected_prefix), "{line}");
}

#[test]
fn short_service_entry_hosts_resolve_in_their_namespace() {
    let loaded = load(&["se-short-host.yaml"]);
    assert_exactly(
        &loaded,
        &[(
            "ABG0005",
            Warning,
            "se-short-host.yaml",
            "MARK",
            "spec.hosts[0]",
        )],
    );
    let warning = message_of(&loaded, "ABG0005");
    assert!(
        warning.contains("chat-model.default.svc.cluster.local"),
        "names the fully qualified form: {warning}"
    );
    let endpoints = loaded
        .config
        .subset_endpoints("chat-model.default.svc.cluster.local", None)
        .expect("the short host is served under its full name");
    assert_eq!(endpoints.len(), 1);
}

#[test]
fn credential_names_are_secret_references() {
    let loaded = load(&["credential-name.yaml"]);
    let file = "credential-name.yaml";
    assert_exactly(
        &loaded,
        &[
            (
                "IST0106",
                Error,
                file,
                "MARK-DOTDOT",
                "spec.servers[0].tls.credentialName",
            ),
            (
                "IST0106",
                Error,
                file,
                "MARK-CHARS",
                "spec.servers[0].tls.credentialNames[0]",
            ),
        ],
    );
    let names: Vec<_> = loaded
        .config
        .gateways
        .iter()
        .map(|g| g.meta.name.as_str())
        .collect();
    assert_eq!(names, ["fine"], "only the valid reference takes effect");
}

#[test]
fn endpoints_on_the_gateways_own_listener() {
    let loaded = load(&["own-listener.yaml"]);
    let file = "own-listener.yaml";
    assert_exactly(
        &loaded,
        &[
            (
                "ABG0032",
                Warning,
                file,
                "MARK-SE",
                "spec.endpoints[0].address",
            ),
            ("ABG0032", Warning, file, "MARK-WE", "spec.address"),
        ],
    );
    assert!(message_of(&loaded, "ABG0032").contains("127.0.0.1:8080"));
}

#[test]
fn configurations_istio_accepts_load() {
    let loaded = load(&[SERVICE, "istio-accepts.yaml"]);
    let file = "istio-accepts.yaml";
    assert_exactly(
        &loaded,
        &[
            ("ABG0005", Warning, file, "MARK-STAR", "spec.hosts[0]"),
            (
                "ABG0004",
                Info,
                file,
                "MARK-KEEPALIVE",
                "spec.trafficPolicy.connectionPool.http.http2KeepAlive",
            ),
            (
                "IST0133",
                Warning,
                file,
                "MARK-REDIRECT",
                "spec.servers[0].tls.httpsRedirect",
            ),
            ("ABG0004", Info, file, "MARK-NOMODE", "spec.servers[0].tls"),
        ],
    );
    assert!(message_of(&loaded, "ABG0004").contains("Istio 1.31"));
    let config = &loaded.config;
    assert_eq!(config.virtual_services.len(), 3);
    let authority = &config.virtual_services[0].http[0];
    assert_eq!(
        authority.headers.request.authority.as_deref(),
        Some("upstream.example.com")
    );
    let RouteAction::Forward(dests) = &authority.action else {
        panic!("a forward rule");
    };
    assert_eq!(
        dests[0].headers.request.authority.as_deref(),
        Some("v1.example.com")
    );
}

#[test]
fn virtual_service_values_istio_rejects() {
    let loaded = load(&[SERVICE, "vs-invalid.yaml"]);
    let file = "vs-invalid.yaml";
    let e = |marker, field| ("IST0106", Error, file, marker, field);
    assert_exactly(
        &loaded,
        &[
            e("MARK-DUP", "spec.hosts[1]"),
            e("MARK-HOST", "spec.hosts[0]"),
            e("MARK-GW0", "spec.gateways[0]"),
            e("MARK-GW1", "spec.gateways[1]"),
            e("MARK-GW2", "spec.gateways[2]"),
            e("MARK-PCT", "spec.http[0].headers.response.set.x-share"),
            e("MARK-METHOD", "spec.http[0].corsPolicy.allowMethods[0]"),
            e(
                "MARK-CORS-HEADER",
                "spec.http[0].corsPolicy.allowHeaders[0]",
            ),
            e("MARK-MAXAGE", "spec.http[0].corsPolicy.maxAge"),
            e("MARK-GRPC", "spec.http[0].fault.abort.grpcStatus"),
            e("MARK-DELAY", "spec.http[0].fault.delay"),
            e("MARK-MIRROR-VALUE", "spec.http[0].mirrorPercentage.value"),
            (
                "IST0133",
                Warning,
                file,
                "MARK-MIRROR",
                "spec.http[0].mirrorPercentage",
            ),
            e("MARK-ATTEMPTS", "spec.http[0].retries.attempts"),
            e("MARK-BACKOFF", "spec.http[1].retries.backoff"),
            e("MARK-REDIRECT", "spec.http[0].redirect"),
            e(
                "MARK-AUTHORITY",
                "spec.http[0].headers.request.set.:authority",
            ),
        ],
    );
    assert!(
        loaded.config.virtual_services.is_empty(),
        "every one is refused"
    );
}

#[test]
fn destination_rule_values_istio_rejects() {
    let loaded = load(&[SERVICE, "dr-invalid.yaml"]);
    let file = "dr-invalid.yaml";
    let e = |marker, field| ("IST0106", Error, file, marker, field);
    assert_exactly(
        &loaded,
        &[
            e(
                "MARK-CONNECT",
                "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            ),
            e(
                "MARK-EJECT",
                "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            ),
            e("MARK-POOL", "spec.trafficPolicy.connectionPool"),
            e("MARK-POLICY", "spec.subsets[0].trafficPolicy"),
            e("MARK-PORTLESS", "spec.trafficPolicy.portLevelSettings[0]"),
            (
                "ABG0004",
                Info,
                file,
                "MARK-PLS-FIELD",
                "spec.trafficPolicy.portLevelSettings",
            ),
            e(
                "MARK-UPGRADE",
                "spec.trafficPolicy.connectionPool.http.useClientProtocol",
            ),
            e(
                "MARK-COOKIE",
                "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[1]",
            ),
            e("MARK-LB", "spec.trafficPolicy.loadBalancer"),
            (
                "ABG0004",
                Info,
                file,
                "MARK-LOCALITY",
                "spec.trafficPolicy.loadBalancer.localityLbSetting",
            ),
            (
                "ABG0004",
                Info,
                file,
                "MARK-ZONE",
                "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting",
            ),
            e(
                "MARK-LOCAL-ORIGIN",
                "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            ),
            e("MARK-SKIP", "spec.trafficPolicy.tls.insecureSkipVerify"),
            ("ABG0004", Info, file, "MARK-TLS", "spec.trafficPolicy.tls"),
        ],
    );
    assert!(loaded.config.destination_rules.is_empty());
}

#[test]
fn gateway_values_istio_rejects() {
    let loaded = load(&["gateway-invalid.yaml"]);
    let file = "gateway-invalid.yaml";
    let e = |marker, field| ("IST0106", Error, file, marker, field);
    assert_exactly(
        &loaded,
        &[
            e("MARK-PORT", "spec.servers[1].port.name"),
            e("MARK-MIDDLE", "spec.servers[0].hosts[0]"),
            e("MARK-PARTIAL", "spec.servers[0].hosts[1]"),
            e("MARK-SHORT", "spec.servers[0].hosts[2]"),
            e("MARK-NS", "spec.servers[0].hosts[3]"),
        ],
    );
}

#[test]
fn service_entry_values_istio_rejects() {
    let loaded = load(&["se-invalid.yaml"]);
    let file = "se-invalid.yaml";
    let e = |marker, field| ("IST0106", Error, file, marker, field);
    assert_exactly(
        &loaded,
        &[
            e("MARK-STAR", "spec.hosts[0]"),
            e("MARK-PORT", "spec.endpoints[0].ports.grpc"),
            e("MARK-DNS", "spec.hosts[0]"),
            e("MARK-NONE", "spec.endpoints"),
            e("MARK-STATIC", "spec.endpoints[0].address"),
            e("MARK-RR", "spec.endpoints"),
        ],
    );
    assert!(loaded.config.service_entries.is_empty());
}

#[test]
fn destination_syntax_export_to_and_l4_routes() {
    let loaded = load(&[SERVICE, RULE, "vs-destinations.yaml"]);
    let file = "vs-destinations.yaml";
    assert_exactly(
        &loaded,
        &[
            (
                "IST0106",
                Error,
                file,
                "MARK-STAR",
                "spec.http[0].route[0].destination.host",
            ),
            (
                "IST0106",
                Error,
                file,
                "MARK-TRAILING",
                "spec.http[0].route[0].destination.host",
            ),
            (
                "IST0106",
                Error,
                file,
                "MARK-SUBSET",
                "spec.http[0].route[0].destination.subset",
            ),
            ("IST0106", Error, file, "MARK-EXPORT", "spec.exportTo[1]"),
            ("ABG0004", Info, file, "MARK-TCP-INFO", "spec.tcp"),
            ("IST0106", Error, file, "MARK-NO-ROUTE", "spec.tcp[0].route"),
            ("ABG0004", Info, file, "MARK-TLS-INFO", "spec.tls"),
            (
                "IST0106",
                Error,
                file,
                "MARK-SNI",
                "spec.tls[0].match[0].sniHosts[0]",
            ),
        ],
    );
    assert!(message_of(&loaded, "IST0106").contains("cannot be `*`"));
    assert!(
        loaded.config.virtual_services.is_empty(),
        "each of these is refused"
    );
}

#[test]
fn destination_rule_names_labels_export_to_and_warmup() {
    let loaded = load(&[SERVICE, RULE, "dr-syntax.yaml"]);
    let file = "dr-syntax.yaml";
    assert_exactly(
        &loaded,
        &[
            ("IST0106", Error, file, "MARK-NAME", "spec.subsets[0].name"),
            (
                "IST0106",
                Error,
                file,
                "MARK-LABEL",
                "spec.subsets[0].labels.version",
            ),
            (
                "ABG0004",
                Info,
                file,
                "MARK-SELECTOR",
                "spec.workloadSelector",
            ),
            ("IST0106", Error, file, "MARK-EXPORT", "spec.exportTo[0]"),
            (
                "ABG0004",
                Info,
                file,
                "MARK-WARMUP",
                "spec.trafficPolicy.loadBalancer.warmup",
            ),
            (
                "IST0106",
                Error,
                file,
                "MARK-PERCENT",
                "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
            ),
        ],
    );
}

#[test]
fn gateway_tls_sources_and_unix_binds() {
    let loaded = load(&[SERVICE, RULE, "gateway-tls.yaml"]);
    let file = "gateway-tls.yaml";
    assert_exactly(
        &loaded,
        &[
            ("IST0106", Error, file, "MARK-NO-KEY", "spec.servers[0].tls"),
            (
                "IST0106",
                Error,
                file,
                "MARK-TWO-SOURCES",
                "spec.servers[0].tls",
            ),
            (
                "ABG0004",
                Info,
                file,
                "MARK-TLS-INFO",
                "spec.servers[0].port.protocol",
            ),
            (
                "ABG0004",
                Info,
                file,
                "MARK-MODE-INFO",
                "spec.servers[0].tls.mode",
            ),
            (
                "IST0133",
                Warning,
                file,
                "MARK-PASSTHROUGH",
                "spec.servers[0].tls",
            ),
            (
                "IST0106",
                Error,
                file,
                "MARK-UNIX-PORT",
                "spec.servers[0].port.number",
            ),
            (
                "ABG0004",
                Info,
                file,
                "MARK-UNIX-INFO",
                "spec.servers[0].bind",
            ),
        ],
    );
    assert!(message_of(&loaded, "IST0106").contains("needs privateKey"));
    assert!(message_of(&loaded, "IST0133").contains("certificates are ignored"));
}

#[test]
fn service_entry_ports_addresses_and_endpoints() {
    let loaded = load(&[SERVICE, RULE, "se-syntax.yaml"]);
    let file = "se-syntax.yaml";
    assert_exactly(
        &loaded,
        &[
            (
                "IST0106",
                Error,
                file,
                "MARK-PORT-NAME",
                "spec.ports[0].name",
            ),
            (
                "IST0106",
                Error,
                file,
                "MARK-PROTOCOL",
                "spec.ports[0].protocol",
            ),
            ("IST0106", Error, file, "MARK-CIDR", "spec.addresses[0]"),
            (
                "IST0106",
                Error,
                file,
                "MARK-UNIX",
                "spec.endpoints[0].address",
            ),
            ("IST0106", Error, file, "MARK-DYNAMIC", "spec.hosts[0]"),
            (
                "IST0133",
                Warning,
                file,
                "MARK-NETWORK",
                "spec.endpoints[0].address",
            ),
            (
                "IST0106",
                Error,
                file,
                "MARK-SELECTOR",
                "spec.workloadSelector.labels.app",
            ),
        ],
    );
    let network_only = loaded
        .config
        .service("f.example.com")
        .expect("the entry with a network-only endpoint loads");
    assert!(
        network_only.endpoints.is_empty(),
        "an endpoint with no address is left out"
    );
}
