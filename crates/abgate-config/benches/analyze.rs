//! How long `abgate analyze` takes over a directory of 1,000 resources.
//!
//! `cargo bench -p abgate-config --bench analyze`

use std::fmt::Write as _;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};

/// 250 services, each with a ServiceEntry, a DestinationRule with two subsets, and two
/// VirtualServices (one with a header-matched canary rule, one with a weighted split):
/// 1,000 resources in 250 files.
fn write_resources(dir: &std::path::Path) {
    for i in 0..250 {
        let mut text = String::new();
        write!(
            text,
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}, namespace: bench}}
spec:
  hosts: [svc-{i}.bench.local]
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: 9000}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: 9001}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-{i}, namespace: bench}}
spec:
  host: svc-{i}.bench.local
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 100}}, http: {{http1MaxPendingRequests: 50}}}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: canary-{i}, namespace: bench}}
spec:
  hosts: [canary-{i}.example.com]
  http:
  - match:
    - headers: {{x-canary: {{exact: "true"}}}}
      uri: {{regex: "/v1/(chat/)?completions"}}
    route:
    - destination: {{host: svc-{i}.bench.local, subset: v2}}
    timeout: 30s
    retries: {{attempts: 3, perTryTimeout: 10s, retryOn: "5xx,connect-failure"}}
  - route:
    - destination: {{host: svc-{i}.bench.local, subset: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: split-{i}, namespace: bench}}
spec:
  hosts: [split-{i}.example.com]
  http:
  - route:
    - destination: {{host: svc-{i}.bench.local, subset: v1}}
      weight: 70
    - destination: {{host: svc-{i}.bench.local, subset: v2}}
      weight: 30
"#
        )
        .expect("writing to a String cannot fail");
        std::fs::write(dir.join(format!("svc-{i}.yaml")), text).expect("temp dir is writable");
    }
}

fn analyze_directory(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    write_resources(dir.path());
    let paths = vec![PathBuf::from(dir.path())];
    let loaded = abgate_config::load(&paths).expect("readable");
    assert_eq!(loaded.config.virtual_services.len(), 500);
    assert!(
        loaded.diagnostics.is_empty(),
        "{:?}",
        loaded.diagnostics.first()
    );
    c.bench_function("analyze 1,000 resources in 250 files", |b| {
        b.iter(|| abgate_config::load(&paths).expect("readable"))
    });
}

criterion_group!(benches, analyze_directory);
criterion_main!(benches);
