//! abgate's metrics as Prometheus sees them: a real `prometheus` server scrapes the
//! admin listener of `abgate serve`, which routes known traffic to two `abgate sim`
//! versions, and PromQL answers are checked against that traffic: exact request and
//! token counts per version, a p95 latency inside bounds derived from the sims' settings,
//! the seed's four queries (`_collect_experiment_metrics` in
//! /work/shared/seed/ab-testing-with-istio.md) with abgate's label values, and the same
//! queries exactly as the seed writes them returning nothing (docs/metrics.md explains
//! why). Every expression of deploy/grafana/abgate.json is also run.
//!
//! The Prometheus binary is `ABGATE_TEST_PROMETHEUS` (scripts/test installs Debian's
//! `prometheus` and sets it), else `prometheus` on PATH; without one the test fails, it
//! never skips. Everything runs on 127.0.0.1 with ephemeral ports; Prometheus gets its
//! own port, configuration and storage in a temporary directory.
//!
//! # Timeline
//!
//! `rate()` needs two samples of a series inside its range, and abgate shows a series
//! only once it has counted a request (a new label set appears already at its first
//! count). So the traffic goes in two halves with the same mix: the first half, a scrape
//! (its samples are the series' first), the second half, another scrape. Each "a scrape"
//! means: the gateway has recorded every request (`abgate_requests_in_flight` is 0) and
//! then Prometheus has taken a sample whose timestamp is later than that moment
//! (`timestamp(up{job="abgate"})`).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Instant, SystemTime};

use common::{
    grafana_dashboard, panels_and_exprs, prometheus_binary, start_gateway, try_http, two_versions,
    value_of, Gateway, Processes, Prometheus, Sim, HOST, MODEL,
};

/// v1.0: 8 tokens, first after 20 ms, then 400 tokens/s (2.5 ms apart).
const V1_TOKENS: u64 = 8;
const V1_TTFT_MS: u64 = 20;
const V1_TOKENS_PER_SECOND: u64 = 400;
/// v1.1: 12 tokens, first after 60 ms, then 100 tokens/s (10 ms apart).
const V2_TOKENS: u64 = 12;
const V2_TTFT_MS: u64 = 60;
const V2_TOKENS_PER_SECOND: u64 = 100;

/// Requests per version and without a route, split over the two halves.
const V1_REQUESTS: usize = 40;
const V2_REQUESTS: usize = 25;
const NR_REQUESTS: usize = 5;

/// The mesh view: one host, two endpoints labelled with version and model, a subset per
/// version, and a VirtualService that sends `x-variant-pin: v1-1` to v1-1 and everything
/// else to v1-0, so the split is known exactly.
fn write_config(dir: &Path, v1: u16, v2: u16) {
    let yaml = format!(
        r#"{mesh}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: llama-3-1-8b
  namespace: default
spec:
  hosts: [{HOST}]
  http:
  - name: pinned
    match:
    - headers:
        x-variant-pin: {{exact: v1-1}}
    route:
    - destination: {{host: {HOST}, subset: v1-1}}
  - name: default
    route:
    - destination: {{host: {HOST}, subset: v1-0}}
"#,
        mesh = two_versions(v1, v2)
    );
    std::fs::write(dir.join("llama.yaml"), yaml).expect("config written");
}

/// Waits until Prometheus has sampled the gateway after every request sent so far was
/// recorded: the gateway shows nothing in flight, then a scrape starts after that.
fn wait_for_scrape_after_traffic(prometheus: &Prometheus, gateway: &Gateway) {
    gateway.metrics_when_idle();
    prometheus.wait_for_scrape_after(SystemTime::now());
}

/// How a request asks: plain JSON, streamed with a final usage chunk, or streamed
/// without one (tokens then counted from content chunks).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Plain,
    StreamUsage,
    StreamCounted,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    V1,
    V2,
    NoRoute,
}

/// Sends the requests from 4 threads; checks each answer.
fn send(gateway: SocketAddr, requests: Vec<(Target, Kind)>) {
    let queue = Arc::new(Mutex::new(requests));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let queue = Arc::clone(&queue);
            thread::spawn(move || loop {
                let Some((target, kind)) = queue.lock().expect("queue").pop() else {
                    return;
                };
                one_request(gateway, target, kind);
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a request failed");
    }
}

fn one_request(gateway: SocketAddr, target: Target, kind: Kind) {
    let body = match kind {
        Kind::Plain => r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#,
        Kind::StreamUsage => {
            r#"{"model":"llama","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#
        }
        Kind::StreamCounted => {
            r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
        }
    };
    let (host, headers, model, tokens): (&str, &[(&str, &str)], &str, u64) = match target {
        Target::V1 => (HOST, &[], "llama-3.1-8b-v1", V1_TOKENS),
        Target::V2 => (
            HOST,
            &[("x-variant-pin", "v1-1")],
            "llama-3.1-8b-v2",
            V2_TOKENS,
        ),
        Target::NoRoute => ("nowhere.invalid", &[], "", 0),
    };
    let mut all = vec![("Host", host), ("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let r = try_http(gateway, "POST", "/v1/chat/completions", &all, body)
        .unwrap_or_else(|e| panic!("{target:?} {kind:?}: no HTTP answer: {e}"));
    if let Target::NoRoute = target {
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(r.header("x-abgate-response-flags"), Some("NR"));
        return;
    }
    assert_eq!(r.status, 200, "{target:?} {kind:?}: {}", r.body);
    assert!(
        r.body.contains(&format!("\"model\":\"{model}\"")),
        "{target:?} went to {model}: {}",
        r.body
    );
    match kind {
        Kind::Plain => assert!(
            r.body.contains(&format!("\"completion_tokens\":{tokens}")),
            "{}",
            r.body
        ),
        Kind::StreamUsage => assert!(
            r.body.contains(&format!("\"completion_tokens\":{tokens}"))
                && r.body.contains("data: [DONE]"),
            "{}",
            r.body
        ),
        Kind::StreamCounted => assert!(
            !r.body.contains("\"usage\":{") && r.body.contains("data: [DONE]"),
            "{}",
            r.body
        ),
    }
}

/// `v1` requests to v1.0, `v2` to v1.1 (each cycling through the three kinds) and `nr`
/// without a route.
fn traffic(v1: usize, v2: usize, nr: usize) -> Vec<(Target, Kind)> {
    let kinds = [Kind::Plain, Kind::StreamUsage, Kind::StreamCounted];
    let mut out = Vec::new();
    out.extend((0..v1).map(|i| (Target::V1, kinds[i % 3])));
    out.extend((0..v2).map(|i| (Target::V2, kinds[i % 3])));
    out.extend((0..nr).map(|_| (Target::NoRoute, Kind::Plain)));
    out
}

/// The seed's four queries for one variant, as `_collect_experiment_metrics` writes them
/// (`{variant}` put in both `destination_version` and `version`).
fn seed_queries(variant: &str) -> [(&'static str, String); 4] {
    [
        (
            "latency_p95",
            format!(
                r#"histogram_quantile(0.95,
                rate(istio_request_duration_milliseconds_bucket{{
                    destination_service_name="llama-3.1-8b-service",
                    destination_version="{variant}"
                }}[5m])
            )"#
            ),
        ),
        (
            "success_rate",
            format!(
                r#"rate(istio_requests_total{{
                destination_service_name="llama-3.1-8b-service",
                destination_version="{variant}",
                response_code!~"5.*"
            }}[5m]) /
            rate(istio_requests_total{{
                destination_service_name="llama-3.1-8b-service",
                destination_version="{variant}"
            }}[5m])"#
            ),
        ),
        (
            "request_rate",
            format!(
                r#"rate(istio_requests_total{{
                destination_service_name="llama-3.1-8b-service",
                destination_version="{variant}"
            }}[5m])"#
            ),
        ),
        (
            "tokens_per_second",
            format!(
                r#"rate(llm_tokens_generated_total{{
                model_name="llama-3.1-8b",
                version="{variant}"
            }}[5m])"#
            ),
        ),
    ]
}

#[test]
fn prometheus_scrapes_abgate_and_the_seeds_queries_work_with_abgates_labels() {
    let begun = Instant::now();
    // First, so that a machine without Prometheus fails at once.
    let prometheus_bin = prometheus_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let mut processes = Processes::new(dir.path());

    let v1 = Sim {
        output_tokens: V1_TOKENS,
        ttft_ms: V1_TTFT_MS,
        tokens_per_second: V1_TOKENS_PER_SECOND,
    }
    .start(&mut processes, "llama-3.1-8b-v1");
    let v2 = Sim {
        output_tokens: V2_TOKENS,
        ttft_ms: V2_TTFT_MS,
        tokens_per_second: V2_TOKENS_PER_SECOND,
    }
    .start(&mut processes, "llama-3.1-8b-v2");
    write_config(&config, v1, v2);
    let state = dir.path().join("state.db");
    let gateway = start_gateway(&mut processes, "gateway", &config, &state, &[]);
    let prometheus = Prometheus::start(&mut processes, &prometheus_bin, dir.path());

    // The target is up before any traffic.
    prometheus.scrape(gateway.admin);
    let setup = begun.elapsed();

    // Two halves with the same mix, a scrape after each (see the module's docs).
    let first = (
        V1_REQUESTS / 2,
        V2_REQUESTS.div_ceil(2),
        NR_REQUESTS.div_ceil(2),
    );
    send(gateway.http, traffic(first.0, first.1, first.2));
    wait_for_scrape_after_traffic(&prometheus, &gateway);
    send(
        gateway.http,
        traffic(
            V1_REQUESTS - first.0,
            V2_REQUESTS - first.1,
            NR_REQUESTS - first.2,
        ),
    );
    wait_for_scrape_after_traffic(&prometheus, &gateway);
    let traffic_done = begun.elapsed();

    // Exact request counts per version (the endpoint's `version` label), and per subset.
    let count =
        |selector: &str| prometheus.single(&format!("sum(istio_requests_total{{{selector}}})"));
    let svc = format!(r#"destination_service_name="{HOST}""#);
    assert_eq!(
        count(&format!(r#"{svc},destination_version="v1.0""#)),
        V1_REQUESTS as f64
    );
    assert_eq!(
        count(&format!(r#"{svc},destination_version="v1.1""#)),
        V2_REQUESTS as f64
    );
    assert_eq!(
        count(r#"response_code="404",response_flags="NR""#),
        NR_REQUESTS as f64
    );
    assert_eq!(
        count(&format!(r#"{svc},destination_subset="v1-0""#)),
        V1_REQUESTS as f64
    );
    assert_eq!(
        count(&format!(r#"{svc},destination_subset="v1-1""#)),
        V2_REQUESTS as f64
    );

    // p95 of v1.1's request duration. Every v1.1 request sleeps in the sim for at least
    // ttft + (tokens − 1)/rate = 60 + 11 × 10 = 170 ms (streamed; plain answers wait
    // ttft + tokens/rate = 180 ms), so no sample is at or below Istio's 100 ms bound and
    // the 0.95 rank lies in (100, 250] or higher. Within (100, 250] Prometheus
    // interpolates linearly: 100 + 150 × (rank within the bucket / bucket count) ≥
    // 100 + 150 × 0.95 = 242.5 ms, reached when every sample is ≤ 250 ms (the unloaded
    // case; floating point may land a hair below, 242.49999999999997). The upper bound
    // allows the slowest v1.1 requests to take up to 1 s (bucket (500, 1000]) on a busy
    // machine. The rate covers the second half: the samples after each half span it.
    let p95 = |version: &str| {
        prometheus.single(&format!(
            r#"histogram_quantile(0.95, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{destination_version="{version}"}}[1m])))"#
        ))
    };
    let p95_v2 = p95("v1.1");
    assert!(
        (242.5 - 1e-9..=1000.0).contains(&p95_v2),
        "p95 of v1.1 is {p95_v2} ms; its requests take ≥ 170 ms, so it is in [242.5, 1000]"
    );
    // v1.0's requests sleep 20 + 8 × 2.5 = 40 ms at most: faster than every v1.1 request.
    let p95_v1 = p95("v1.0");
    assert!(
        p95_v1 < p95_v2,
        "p95 of v1.0 ({p95_v1} ms) is below v1.1's ({p95_v2} ms)"
    );
    // TTFT of v1.1's streams: the first token leaves the sim after 60 ms, so no sample is
    // at or below the 0.06 s bound and the quantile is at least 0.06 + 0.02 × 0.95.
    let ttft_v2 = prometheus.single(
        r#"histogram_quantile(0.95, sum by (le) (rate(llm_time_to_first_token_seconds_bucket{version="v1.1"}[1m])))"#,
    );
    assert!(
        (0.079 - 1e-9..=1.0).contains(&ttft_v2),
        "TTFT p95 of v1.1 is {ttft_v2} s; every first token takes > 60 ms"
    );

    // Tokens: usage of plain answers and of streams with include_usage, content chunks
    // counted for streams without it; all three kinds add up exactly.
    let tokens = |version: &str| {
        prometheus.single(&format!(
            r#"sum(llm_tokens_generated_total{{model_name="{MODEL}",version="{version}"}})"#
        ))
    };
    assert_eq!(tokens("v1.0"), (V1_REQUESTS as u64 * V1_TOKENS) as f64);
    assert_eq!(tokens("v1.1"), (V2_REQUESTS as u64 * V2_TOKENS) as f64);
    assert_eq!(
        prometheus.single(r#"sum(llm_requests_total{version="v1.0",success="true"})"#),
        V1_REQUESTS as f64
    );
    // No model response failed; the no-route requests' JSON errors are failed LLM
    // responses of the catch-all `unknown` destination, not of the model service.
    assert_eq!(
        prometheus.single(
            r#"sum(llm_requests_total{destination_service_name="llama-3.1-8b-service",success="false"})"#
        ),
        0.0
    );
    assert_eq!(
        prometheus.single(
            r#"sum(llm_requests_total{destination_service_name="unknown",success="false"})"#
        ),
        NR_REQUESTS as f64
    );

    // The seed's queries with abgate's label values return samples; exactly as the seed
    // writes them (the subset name where the version label is compared) they return none.
    for (subset, version) in [("v1-0", "v1.0"), ("v1-1", "v1.1")] {
        for (name, expr) in seed_queries(version) {
            let result = prometheus.vector(&expr);
            assert!(
                !result.is_empty(),
                "the seed's {name} query with version=\"{version}\" returns samples: {expr}"
            );
            assert!(
                result
                    .iter()
                    .map(value_of)
                    .all(|v| v.is_finite() && v > 0.0),
                "{name} for {version}: {result:#?}"
            );
        }
        for (name, expr) in seed_queries(subset) {
            let result = prometheus.vector(&expr);
            assert!(
                result.is_empty(),
                "the seed's {name} query as written (\"{subset}\", a subset name, compared \
                 with the version label) matches nothing: {result:#?}"
            );
        }
    }

    // Every expression of the Grafana dashboard is valid PromQL and finds samples, with
    // the dashboard's variables set to this traffic: the service, and no experiment (an
    // absent `experiment_id` label equals the empty string).
    let (_, exprs) = panels_and_exprs(&grafana_dashboard());
    assert!(!exprs.is_empty(), "the dashboard has expressions");
    for (title, expr) in &exprs {
        let concrete = expr
            .replace("$destination_service_name", HOST)
            .replace("${destination_service_name}", HOST)
            .replace("$experiment_id", "")
            .replace("${experiment_id}", "")
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m");
        let result = prometheus.vector(&concrete);
        assert!(
            !result.is_empty(),
            "dashboard panel {title:?}: `{concrete}` finds samples"
        );
    }

    // The example scrape configuration is one Prometheus accepts.
    let promtool = prometheus_bin.with_file_name("promtool");
    if promtool.is_file() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/prometheus.yml");
        let out = Command::new(&promtool)
            .args(["check", "config"])
            .arg(&example)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool check config {}:\n{}{}",
            example.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!(
            "note: no promtool next to {}; deploy/prometheus/prometheus.yml not checked",
            prometheus_bin.display()
        );
    }

    eprintln!(
        "setup {:.1} s, traffic and scrapes {:.1} s, total {:.1} s; p95 v1.0 {p95_v1} ms, \
         v1.1 {p95_v2} ms, TTFT p95 v1.1 {ttft_v2} s",
        setup.as_secs_f64(),
        (traffic_done - setup).as_secs_f64(),
        begun.elapsed().as_secs_f64()
    );
}
