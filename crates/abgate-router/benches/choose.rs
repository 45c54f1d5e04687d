//! What the per-request choices cost once the rule is known: the split's target (weighted
//! random over 2 and 4 destinations, and sticky by a user key: GrowthBook's hash over
//! cumulative weights) and the endpoint within the chosen subset by each load balancer
//! (8 endpoints; consistent hashing includes hashing the key, as the proxy does).
//!
//! `cargo bench -p abgate-router --bench choose`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use abgate_config::SourceFile;
use abgate_router::{hash64, now_ms, Action, BuildOptions, Cluster, RouteTable, Split};
use criterion::{criterion_group, criterion_main, Criterion};

const CONFIG: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: models, namespace: bench}
spec:
  hosts: [models.local]
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9001}, labels: {version: v1, pool: a}}
  - {address: 127.0.0.1, ports: {http: 9002}, labels: {version: v2, pool: a}}
  - {address: 127.0.0.1, ports: {http: 9003}, labels: {version: v3, pool: a}}
  - {address: 127.0.0.1, ports: {http: 9004}, labels: {version: v4, pool: a}}
  - {address: 127.0.0.1, ports: {http: 9005}, labels: {version: v1, pool: a}}
  - {address: 127.0.0.1, ports: {http: 9006}, labels: {version: v2, pool: a}}
  - {address: 127.0.0.1, ports: {http: 9007}, labels: {version: v3, pool: a}}
  - {address: 127.0.0.1, ports: {http: 9008}, labels: {version: v4, pool: a}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: models, namespace: bench}
spec:
  host: models.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
  - {name: v4, labels: {version: v4}}
  - name: round-robin
    labels: {pool: a}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  - name: least-request
    labels: {pool: a}
    trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
  - name: random
    labels: {pool: a}
    trafficPolicy: {loadBalancer: {simple: RANDOM}}
  - name: ring-hash
    labels: {pool: a}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: x-user-id, ringHash: {minimumRingSize: 1024}}}
  - name: maglev
    labels: {pool: a}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: x-user-id, maglev: {tableSize: 65537}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: models, namespace: bench}
spec:
  hosts: [models.local]
  http:
  - name: round-robin
    match: [{headers: {x-lb: {exact: round-robin}}}]
    route: [{destination: {host: models.local, subset: round-robin}}]
  - name: least-request
    match: [{headers: {x-lb: {exact: least-request}}}]
    route: [{destination: {host: models.local, subset: least-request}}]
  - name: random
    match: [{headers: {x-lb: {exact: random}}}]
    route: [{destination: {host: models.local, subset: random}}]
  - name: ring-hash
    match: [{headers: {x-lb: {exact: ring-hash}}}]
    route: [{destination: {host: models.local, subset: ring-hash}}]
  - name: maglev
    match: [{headers: {x-lb: {exact: maglev}}}]
    route: [{destination: {host: models.local, subset: maglev}}]
  - name: two-way
    match: [{headers: {x-split: {exact: two}}}]
    route:
    - {destination: {host: models.local, subset: v1}, weight: 70}
    - {destination: {host: models.local, subset: v2}, weight: 30}
  - name: four-way
    route:
    - {destination: {host: models.local, subset: v1}, weight: 40}
    - {destination: {host: models.local, subset: v2}, weight: 30}
    - {destination: {host: models.local, subset: v3}, weight: 20}
    - {destination: {host: models.local, subset: v4}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: sticky
  namespace: bench
  annotations: {abgate.dev/stickiness: "header:x-user-id"}
spec:
  hosts: [sticky.local]
  http:
  - name: sticky
    route:
    - {destination: {host: models.local, subset: v1}, weight: 70}
    - {destination: {host: models.local, subset: v2}, weight: 30}
"#;

fn table() -> RouteTable {
    let loaded = abgate_config::load_sources(&[SourceFile {
        path: Arc::from(Path::new("bench.yaml")),
        text: CONFIG.to_owned(),
    }]);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    RouteTable::build(
        &loaded.config,
        &BuildOptions {
            plain_http_port: Some(8080),
            ..BuildOptions::default()
        },
        None,
    )
}

/// The split of the rule named `rule` on `host`.
fn split<'t>(table: &'t RouteTable, host: &str, rule: &str) -> &'t Split {
    let listener = table.listener(8080).expect("the mesh listener");
    let server = listener.gateway_for(host).expect("a server for the host");
    let vhost = listener
        .virtual_host(&server.gateway, host)
        .expect("the host");
    let route = vhost
        .routes
        .iter()
        .find(|r| r.name.ends_with(rule))
        .expect("the rule");
    match &route.action {
        Action::Forward(split) => split,
        _ => panic!("{rule} forwards"),
    }
}

fn cluster<'t>(table: &'t RouteTable, subset: &str) -> &'t Cluster {
    table
        .clusters
        .iter()
        .find(|c| c.subset.as_deref() == Some(subset))
        .map(|c| &**c)
        .expect("the subset's cluster")
}

/// splitmix64: a cheap, seeded source of draws, as the proxy's per-thread generator.
fn draws(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn user_keys() -> Vec<String> {
    (0..1024).map(|i| format!("user-{i:06}")).collect()
}

fn split_choice(c: &mut Criterion) {
    let table = table();
    let two = split(&table, "models.local", "two-way");
    let four = split(&table, "models.local", "four-way");
    let sticky = split(&table, "sticky.local", "sticky");
    assert!(
        sticky.stickiness.is_some(),
        "the annotation makes it sticky"
    );
    let keys = user_keys();

    let mut group = c.benchmark_group("Split::choose");
    let mut random = draws(1);
    group.bench_function("weighted/2", |b| {
        b.iter(|| black_box(two.choose(None, &mut random)).weight)
    });
    group.bench_function("weighted/4", |b| {
        b.iter(|| black_box(four.choose(None, &mut random)).weight)
    });
    let mut i = 0usize;
    group.bench_function("sticky/2", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(sticky.choose(Some(black_box(&keys[i])), &mut random)).weight
        })
    });
    group.finish();
}

fn balancer_pick(c: &mut Criterion) {
    let table = table();
    let keys = user_keys();
    let now = now_ms();
    let mut group = c.benchmark_group("Cluster::pick (8 endpoints)");
    for subset in ["round-robin", "least-request", "random"] {
        let cluster = cluster(&table, subset);
        assert_eq!(cluster.endpoints.len(), 8);
        let mut random = draws(2);
        group.bench_function(subset, |b| {
            b.iter(|| cluster.pick(None, &mut random, black_box(now)))
        });
    }
    for subset in ["ring-hash", "maglev"] {
        let cluster = cluster(&table, subset);
        assert_eq!(cluster.endpoints.len(), 8);
        let mut random = draws(3);
        let mut i = 0usize;
        group.bench_function(format!("{subset} (with hash64 of the key)"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                let hash = hash64(black_box(keys[i].as_bytes()));
                cluster.pick(Some(hash), &mut random, black_box(now))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, split_choice, balancer_pick);
criterion_main!(benches);
