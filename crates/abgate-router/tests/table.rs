//! Route tables compiled from real configuration: which rule, which target, which endpoint.

use std::path::Path;
use std::sync::Arc;

use abgate_config::SourceFile;
use abgate_router::{host_of, Action, BuildOptions, NoRoute, RequestView, RouteTable, Unavailable};
use http::{HeaderMap, HeaderValue};

fn table(yaml: &str, options: BuildOptions) -> RouteTable {
    let loaded = abgate_config::load_sources(&[SourceFile {
        path: Arc::from(Path::new("t.yaml")),
        text: yaml.to_owned(),
    }]);
    // Cross-resource findings (a subset with no endpoint) are the point of some tests;
    // every resource itself must be valid.
    assert!(
        loaded
            .diagnostics
            .iter()
            .all(|d| d.code.as_str() != "IST0106"),
        "{:?}",
        loaded.diagnostics
    );
    RouteTable::build(&loaded.config, &options, None)
}

fn seed() -> RouteTable {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
    let loaded = abgate_config::load(&[root]).expect("seed readable");
    RouteTable::build(
        &loaded.config,
        &BuildOptions {
            plain_http_port: Some(8080),
            ..BuildOptions::default()
        },
        None,
    )
}

/// The rule name and the subset chosen (with a fixed draw) for a request.
fn route(
    table: &RouteTable,
    port: u16,
    host: &str,
    headers: &[(&'static str, &str)],
    path: &str,
) -> Result<(String, Vec<String>), NoRoute> {
    let listener = table.listener(port).expect("listener");
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, HeaderValue::from_str(v).expect("value"));
    }
    let h = host_of(host);
    let server = listener.gateway_for(&h).ok_or(NoRoute::NoServer)?;
    let req = RequestView {
        method: "POST",
        scheme: "http",
        authority: host,
        path,
        query: None,
        headers: &map,
        port: server.port,
        gateway: &server.gateway,
    };
    let routed = listener.route(&h, &req)?;
    let subsets = match &routed.route.action {
        Action::Forward(split) => split.targets.iter().map(|t| t.cluster.name()).collect(),
        _ => Vec::new(),
    };
    Ok((routed.route.name.to_string(), subsets))
}

#[test]
fn seed_rules_apply_in_order_on_the_gateway() {
    let t = seed();
    assert_eq!(
        t.listeners
            .iter()
            .map(|l| (l.port, l.tls))
            .collect::<Vec<_>>(),
        [(8080, false), (443, true)]
    );
    let host = "api.llm-platform.com";
    let (name, subsets) = route(
        &t,
        8080,
        host,
        &[("x-experiment-id", "model-comparison-v1")],
        "/v1/chat/completions",
    )
    .expect("route");
    assert_eq!(name, "production/llm-routing http[0]");
    assert_eq!(
        subsets,
        ["llama-3.1-8b-service/v1-0", "llama-3.1-8b-service/v1-1"]
    );
    let (name, _) = route(
        &t,
        8080,
        "API.llm-platform.com:8080",
        &[("x-canary-user", "true")],
        "/",
    )
    .expect("route");
    assert_eq!(name, "production/llm-routing http[1]");
    let (name, subsets) = route(&t, 8080, host, &[], "/v1/chat/completions").expect("route");
    assert_eq!(
        (name.as_str(), subsets),
        (
            "production/llm-routing http[4]",
            vec!["llama-3.1-8b-service/stable".to_owned()]
        )
    );
    assert_eq!(
        route(&t, 8080, "other.example.com", &[], "/").unwrap_err(),
        NoRoute::NoServer
    );
}

#[test]
fn seed_clusters_resolve_endpoints_by_subset_labels() {
    let t = seed();
    let listener = t.listener(8080).expect("listener");
    let vhost = listener
        .virtual_host("production/llm-gateway", "api.llm-platform.com")
        .expect("vhost");
    let Action::Forward(split) = &vhost.routes[0].action else {
        panic!("forward")
    };
    let authorities: Vec<_> = split
        .targets
        .iter()
        .map(|t| t.cluster.endpoints[0].authority.clone())
        .collect();
    assert_eq!(authorities, ["127.0.0.1:18002", "127.0.0.1:18003"]);
    // The valid 70b rule keeps `canary`.
    let Action::Forward(canary) = &vhost.routes[1].action else {
        panic!("forward")
    };
    assert_eq!(canary.targets[0].cluster.endpoints.len(), 1);
}

const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: models, namespace: t}
spec:
  hosts: [models.local]
  ports: [{number: 8000, name: http}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9001}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: 9002}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: models, namespace: t}
spec:
  host: models.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

#[test]
fn mesh_view_serves_every_virtual_service_and_first_match_wins() {
    let yaml = format!(
        "{BASE}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: chat, namespace: t}}
spec:
  hosts: [models.local]
  http:
  - match: [{{uri: {{prefix: /v1/}}}}]
    route: [{{destination: {{host: models.local, subset: v2}}}}]
  - match: [{{uri: {{exact: /v1/chat/completions}}}}]
    route: [{{destination: {{host: models.local, subset: v1}}}}]
  - route: [{{destination: {{host: models.local, subset: v3}}}}]
"
    );
    let t = table(
        &yaml,
        BuildOptions {
            plain_http_port: Some(9999),
            ..BuildOptions::default()
        },
    );
    let (name, subsets) =
        route(&t, 9999, "models.local", &[], "/v1/chat/completions").expect("route");
    assert_eq!(
        (name.as_str(), subsets[0].as_str()),
        ("t/chat http[0]", "models.local/v2")
    );
    let listener = t.listener(9999).expect("listener");
    let vhost = listener
        .virtual_host("mesh", "models.local")
        .expect("vhost");
    let Action::Forward(split) = &vhost.routes[2].action else {
        panic!("forward")
    };
    assert_eq!(
        split.targets[0].cluster.unavailable,
        Some(Unavailable::NoEndpoints)
    );
}

#[test]
fn a_short_service_entry_host_serves_the_short_destination_in_its_namespace() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: chat-model, namespace: default}
spec:
  hosts: [chat-model]
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9101}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: chat, namespace: default}
spec:
  hosts: [chat.example.com]
  http:
  - route: [{destination: {host: chat-model}}]
"#;
    let t = table(
        yaml,
        BuildOptions {
            plain_http_port: Some(9999),
            ..BuildOptions::default()
        },
    );
    let listener = t.listener(9999).expect("listener");
    let vhost = listener
        .virtual_host("mesh", "chat.example.com")
        .expect("vhost");
    let Action::Forward(split) = &vhost.routes[0].action else {
        panic!("forward")
    };
    let cluster = &split.targets[0].cluster;
    assert_eq!(cluster.unavailable, None, "the cluster has its endpoint");
    let authorities: Vec<_> = cluster
        .endpoints
        .iter()
        .map(|e| e.authority.clone())
        .collect();
    assert_eq!(authorities, ["127.0.0.1:9101"]);
}

#[test]
fn experiments_go_ahead_of_the_host_rules_with_their_headers() {
    let yaml = format!(
        "{BASE}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: chat, namespace: t}}
spec:
  hosts: [api.example.com]
  http:
  - route: [{{destination: {{host: models.local, subset: v1}}}}]
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: exp1, namespace: t}}
spec:
  host: models.local
  baseline: v1
  variants: [{{name: v1, weight: 90}}, {{name: v2, weight: 10}}]
  match: [{{headers: {{x-experiment-id: {{exact: exp1}}}}}}]
  stickiness: {{header: x-user-id}}
"
    );
    let t = table(
        &yaml,
        BuildOptions {
            plain_http_port: Some(8080),
            ..BuildOptions::default()
        },
    );
    let (name, subsets) = route(
        &t,
        8080,
        "api.example.com",
        &[("x-experiment-id", "exp1")],
        "/",
    )
    .expect("route");
    assert_eq!(name, "experiment-exp1");
    assert_eq!(subsets, ["models.local/v1", "models.local/v2"]);
    let (name, _) = route(&t, 8080, "api.example.com", &[], "/").expect("route");
    assert_eq!(name, "t/chat http[0]");
    let listener = t.listener(8080).expect("listener");
    let vhost = listener
        .virtual_host("mesh", "api.example.com")
        .expect("vhost");
    let route = &vhost.routes[0];
    assert_eq!(route.retries.attempts, 3);
    let Action::Forward(split) = &route.action else {
        panic!("forward")
    };
    assert!(split.stickiness.is_some());
    assert_eq!(
        split.targets[1].headers.response.set[1],
        ("x-variant".to_owned(), "v2".to_owned())
    );
}

#[test]
fn endpoints_keep_their_counters_across_rebuilds() {
    let yaml = format!(
        "{BASE}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: chat, namespace: t}}
spec:
  hosts: [models.local]
  http:
  - route: [{{destination: {{host: models.local, subset: v1}}}}]
"
    );
    let options = BuildOptions {
        plain_http_port: Some(8080),
        ..BuildOptions::default()
    };
    let first = table(&yaml, options.clone());
    let endpoint = {
        let vhost = first
            .listener(8080)
            .and_then(|l| l.virtual_host("mesh", "models.local"))
            .expect("vhost");
        let Action::Forward(split) = &vhost.routes[0].action else {
            panic!("forward")
        };
        Arc::clone(&split.targets[0].cluster.endpoints[0])
    };
    let _in_flight = endpoint.start();
    let loaded = abgate_config::load_sources(&[SourceFile {
        path: Arc::from(Path::new("t.yaml")),
        text: yaml.clone(),
    }]);
    let second = RouteTable::build(&loaded.config, &options, Some(&first));
    let vhost = second
        .listener(8080)
        .and_then(|l| l.virtual_host("mesh", "models.local"))
        .expect("vhost");
    let Action::Forward(split) = &vhost.routes[0].action else {
        panic!("forward")
    };
    assert_eq!(split.targets[0].cluster.endpoints[0].active(), 1);
}

#[test]
fn clusters_keep_their_circuit_breaker_counters_across_rebuilds() {
    let yaml = format!(
        "{BASE}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: chat, namespace: t}}
spec:
  hosts: [models.local]
  http:
  - route: [{{destination: {{host: models.local, subset: v1}}}}]
"
    );
    let options = BuildOptions {
        plain_http_port: Some(8080),
        ..BuildOptions::default()
    };
    let first = table(&yaml, options.clone());
    let cluster = Arc::clone(&first.clusters[0]);
    let abgate_router::Admission::Now(_slot) = cluster.admit(true) else {
        panic!("admitted")
    };
    let loaded = abgate_config::load_sources(&[SourceFile {
        path: Arc::from(Path::new("t.yaml")),
        text: yaml.clone(),
    }]);
    let second = RouteTable::build(&loaded.config, &options, Some(&first));
    let again = second
        .clusters
        .iter()
        .find(|c| c.key() == cluster.key())
        .expect("same cluster");
    assert!(Arc::ptr_eq(&again.state, &cluster.state));
    assert_eq!(again.state.stats().active, 1);
}
