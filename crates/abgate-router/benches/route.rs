//! What finding a request's rule costs: `VirtualHost::route` over a host with 10, 100 and
//! 1,000 rules (each matching an exact header and a URI prefix, then a catch-all), for a
//! request taken by the first rule, by the last matching rule, and by the catch-all after
//! every other rule was tried; plus the whole lookup from the listener (host, gateway,
//! virtual host, rule) as the proxy does it.
//!
//! `cargo bench -p abgate-router --bench route`

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use abgate_config::SourceFile;
use abgate_router::{host_of, BuildOptions, RequestView, RouteTable};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};

const PORT: u16 = 8080;
const HOST: &str = "models.local";

/// A host with `rules` rules: `rules - 1` that each match `x-tenant: tenant-<i>` on
/// `/v1/` and split 70/30, then a catch-all with the same split.
fn config(rules: usize) -> String {
    let mut yaml = String::from(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: models, namespace: bench}
spec:
  hosts: [models.local]
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9001}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: 9002}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: models, namespace: bench}
spec:
  host: models.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: models, namespace: bench}
spec:
  hosts: [models.local]
  http:
"#,
    );
    let split = "    route:\n    - {destination: {host: models.local, subset: v1}, weight: 70}\n    - {destination: {host: models.local, subset: v2}, weight: 30}\n";
    for i in 0..rules - 1 {
        write!(
            yaml,
            "  - name: tenant-{i}\n    match:\n    - headers: {{x-tenant: {{exact: tenant-{i}}}}}\n      uri: {{prefix: /v1/}}\n{split}"
        )
        .expect("writing to a String cannot fail");
    }
    write!(yaml, "  - name: default\n{split}").expect("writing to a String cannot fail");
    yaml
}

fn table(rules: usize) -> RouteTable {
    let loaded = abgate_config::load_sources(&[SourceFile {
        path: Arc::from(Path::new("bench.yaml")),
        text: config(rules),
    }]);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    RouteTable::build(
        &loaded.config,
        &BuildOptions {
            plain_http_port: Some(PORT),
            ..BuildOptions::default()
        },
        None,
    )
}

fn headers(tenant: Option<&str>) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("content-type", HeaderValue::from_static("application/json"));
    map.insert("x-request-id", HeaderValue::from_static("7f1c0de2-bench"));
    if let Some(t) = tenant {
        map.insert("x-tenant", HeaderValue::from_str(t).expect("a valid value"));
    }
    map
}

fn request<'a>(headers: &'a HeaderMap, gateway: &'a str) -> RequestView<'a> {
    RequestView {
        method: "POST",
        scheme: "http",
        authority: HOST,
        path: "/v1/chat/completions",
        query: None,
        headers,
        port: PORT,
        gateway,
    }
}

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("VirtualHost::route");
    let mut whole = Vec::new();
    for rules in [10usize, 100, 1_000] {
        let table = table(rules);
        let listener = table.listener(PORT).expect("the mesh listener");
        let server = listener.gateway_for(HOST).expect("a server for the host");
        let gateway = server.gateway.clone();
        let host = Arc::clone(listener.virtual_host(&gateway, HOST).expect("the host"));
        assert_eq!(host.routes.len(), rules);
        let cases = [
            ("first", Some("tenant-0".to_owned()), "tenant-0".to_owned()),
            (
                "last-match",
                Some(format!("tenant-{}", rules - 2)),
                format!("tenant-{}", rules - 2),
            ),
            ("catch-all", None, "default".to_owned()),
        ];
        for (case, tenant, expected) in cases {
            let map = headers(tenant.as_deref());
            let req = request(&map, &gateway);
            let (route, _) = host.route(&req).expect("a rule matches");
            assert!(route.name.ends_with(&expected), "{} for {case}", route.name);
            group.bench_with_input(BenchmarkId::new(case, rules), &req, |b, req| {
                b.iter(|| host.route(black_box(req)).map(|(r, i)| (Arc::as_ptr(r), i)));
            });
        }
        whole.push((rules, table, gateway));
    }
    group.finish();

    // From the listener, as the proxy routes: host name, gateway's server, virtual host,
    // then the rules (the catch-all case, every rule tried).
    let mut group = c.benchmark_group("Listener::route");
    for (rules, table, gateway) in &whole {
        let listener = table.listener(PORT).expect("the mesh listener");
        let map = headers(None);
        let req = request(&map, gateway);
        group.bench_with_input(BenchmarkId::new("catch-all", rules), &req, |b, req| {
            b.iter(|| {
                let host = host_of(black_box(HOST));
                listener.route(&host, black_box(req)).is_ok()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, route_match);
criterion_main!(benches);
