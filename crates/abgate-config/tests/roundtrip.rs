//! Generated resources that Istio's validation accepts load without an error: whatever
//! names, hosts, weights, durations and header values they combine.

use std::path::Path;
use std::sync::Arc;

use abgate_config::SourceFile;
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn fqdn() -> impl Strategy<Value = String> {
    (label(), label(), "[a-z]{2,6}").prop_map(|(a, b, tld)| format!("{a}.{b}.{tld}"))
}

/// A duration in whole milliseconds, in one of the units Istio takes.
fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u64..100_000).prop_map(|ms| format!("{ms}ms")),
        (1u64..3600).prop_map(|s| format!("{s}s")),
        (1u64..60).prop_map(|m| format!("{m}m")),
    ]
}

/// Header values Envoy takes: literal text, `%%`, and `%VARIABLE%`.
fn header_value() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "[a-zA-Z0-9 ._/-]{1,8}".prop_map(|s| s),
            Just("%%".to_owned()),
            Just("%HOSTNAME%".to_owned()),
            Just("%REQ(x-request-id)%".to_owned()),
        ],
        1..4,
    )
    .prop_map(|parts| parts.concat())
}

#[derive(Debug, Clone)]
struct Generated {
    namespace: String,
    host: String,
    gateway_host: String,
    subsets: Vec<(String, u32)>,
    timeout: String,
    per_try: String,
    backoff: String,
    attempts: u32,
    header: (String, String),
    connect_timeout: String,
    interval: String,
    ejection: String,
    max_age_s: u64,
    short_host: bool,
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        (label(), fqdn(), fqdn()),
        prop::collection::btree_map(label(), 0u32..100, 1..4),
        (duration(), duration(), duration(), 1u32..5),
        ("x-[a-z]{1,8}", header_value()),
        (
            duration(),
            duration(),
            duration(),
            1u64..86_400,
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (namespace, host, gateway_host),
                subsets,
                (timeout, per_try, backoff, attempts),
                header,
                (connect_timeout, interval, ejection, max_age_s, short_host),
            )| {
                let mut subsets: Vec<(String, u32)> = subsets.into_iter().collect();
                if subsets.iter().all(|(_, w)| *w == 0) {
                    subsets[0].1 = 1;
                }
                Generated {
                    namespace,
                    host,
                    gateway_host,
                    subsets,
                    timeout,
                    per_try,
                    backoff,
                    attempts,
                    header,
                    connect_timeout,
                    interval,
                    ejection,
                    max_age_s,
                    short_host,
                }
            },
        )
}

fn render(g: &Generated) -> String {
    let ns = &g.namespace;
    // A short host is written short everywhere, as a user in one namespace would.
    let host = if g.short_host {
        "models".to_owned()
    } else {
        g.host.clone()
    };
    let endpoints: String = g
        .subsets
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            format!(
                "  - {{address: 10.0.0.{}, ports: {{http: {}}}, labels: {{version: {name}}}}}\n",
                i + 1,
                9000 + i
            )
        })
        .collect();
    let subsets: String = g
        .subsets
        .iter()
        .map(|(name, _)| format!("  - {{name: {name}, labels: {{version: {name}}}}}\n"))
        .collect();
    let routes: String = g
        .subsets
        .iter()
        .map(|(name, weight)| {
            format!("    - destination: {{host: {host}, subset: {name}}}\n      weight: {weight}\n")
        })
        .collect();
    let (header_name, header_value) = &g.header;
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: models, namespace: {ns}}}
spec:
  hosts: [{host}]
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: models, namespace: {ns}}}
spec:
  host: {host}
  trafficPolicy:
    connectionPool:
      tcp: {{connectTimeout: {connect}}}
    outlierDetection: {{interval: {interval}, baseEjectionTime: {ejection}}}
  subsets:
{subsets}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {ns}}}
spec:
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["{gateway_host}"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routes, namespace: {ns}}}
spec:
  hosts: ["{gateway_host}"]
  gateways: [edge]
  http:
  - timeout: {timeout}
    retries: {{attempts: {attempts}, perTryTimeout: {per_try}, backoff: {backoff}, retryOn: "5xx,reset"}}
    headers:
      request:
        set: {{"{header_name}": "{header_value}"}}
    corsPolicy:
      allowOrigins: [{{exact: "https://{gateway_host}"}}]
      allowMethods: [GET, POST]
      allowHeaders: [content-type]
      maxAge: {max_age}s
    route:
{routes}"#,
        connect = g.connect_timeout,
        interval = g.interval,
        ejection = g.ejection,
        gateway_host = g.gateway_host,
        timeout = g.timeout,
        attempts = g.attempts,
        per_try = g.per_try,
        backoff = g.backoff,
        max_age = g.max_age_s,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn valid_resources_load_without_errors(g in generated()) {
        let yaml = render(&g);
        let loaded = abgate_config::load_sources(&[SourceFile {
            path: Arc::from(Path::new("generated.yaml")),
            text: yaml.clone(),
        }]);
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        prop_assert!(errors.is_empty(), "{}\n{}", errors.join("\n"), yaml);
        prop_assert_eq!(loaded.config.virtual_services.len(), 1);
        prop_assert_eq!(loaded.config.destination_rules.len(), 1);
        prop_assert_eq!(loaded.config.service_entries.len(), 1);
        prop_assert_eq!(loaded.config.gateways.len(), 1);
    }
}
