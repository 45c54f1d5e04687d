//! Rules that span the registry, the series, rendering and the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::*;

fn options(origin: Instant) -> TelemetryOptions {
    TelemetryOptions {
        source_workload_namespace: "gw-ns".to_owned(),
        origin: Some(origin),
        ..TelemetryOptions::default()
    }
}

fn reviews() -> DestinationLabels {
    let mut labels = DestinationLabels::new("reviews.prod.svc.cluster.local", "prod");
    labels.destination_version = "v1".to_owned();
    labels.destination_subset = "can\"ary\\1\nx".to_owned();
    labels
}

fn request(code: u16, ms_micros: u64, req: u64, resp: u64, at: Instant) -> RequestRecord {
    RequestRecord {
        code,
        flags: ResponseFlags::NONE,
        protocol: RequestProtocol::Http,
        duration: Duration::from_micros(ms_micros),
        request_bytes: req,
        response_bytes: resp,
        at,
    }
}

/// The lines of `text` that belong to families whose name starts with `prefix`.
fn family_lines(text: &str, prefix: &str) -> String {
    text.lines()
        .filter(|l| {
            l.starts_with(prefix)
                || l.starts_with(&format!("# HELP {prefix}"))
                || l.starts_with(&format!("# TYPE {prefix}"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

const ISTIO_GOLDEN: &str = r#"# HELP istio_requests_total Requests the gateway sent to a destination, by response code and flags.
# TYPE istio_requests_total counter
istio_requests_total{L} 2
# HELP istio_request_duration_milliseconds Request duration in milliseconds, from the first request byte to the end of the response.
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{L,le="0.5"} 0
istio_request_duration_milliseconds_bucket{L,le="1"} 0
istio_request_duration_milliseconds_bucket{L,le="5"} 0
istio_request_duration_milliseconds_bucket{L,le="10"} 2
istio_request_duration_milliseconds_bucket{L,le="25"} 2
istio_request_duration_milliseconds_bucket{L,le="50"} 2
istio_request_duration_milliseconds_bucket{L,le="100"} 2
istio_request_duration_milliseconds_bucket{L,le="250"} 2
istio_request_duration_milliseconds_bucket{L,le="500"} 2
istio_request_duration_milliseconds_bucket{L,le="1000"} 2
istio_request_duration_milliseconds_bucket{L,le="2500"} 2
istio_request_duration_milliseconds_bucket{L,le="5000"} 2
istio_request_duration_milliseconds_bucket{L,le="10000"} 2
istio_request_duration_milliseconds_bucket{L,le="30000"} 2
istio_request_duration_milliseconds_bucket{L,le="60000"} 2
istio_request_duration_milliseconds_bucket{L,le="300000"} 2
istio_request_duration_milliseconds_bucket{L,le="600000"} 2
istio_request_duration_milliseconds_bucket{L,le="1.8e+06"} 2
istio_request_duration_milliseconds_bucket{L,le="3.6e+06"} 2
istio_request_duration_milliseconds_bucket{L,le="+Inf"} 2
istio_request_duration_milliseconds_sum{L} 14.25
istio_request_duration_milliseconds_count{L} 2
# HELP istio_request_bytes Request body size in bytes.
# TYPE istio_request_bytes histogram
istio_request_bytes_bucket{L,le="1"} 0
istio_request_bytes_bucket{L,le="10"} 0
istio_request_bytes_bucket{L,le="100"} 1
istio_request_bytes_bucket{L,le="1000"} 2
istio_request_bytes_bucket{L,le="10000"} 2
istio_request_bytes_bucket{L,le="100000"} 2
istio_request_bytes_bucket{L,le="1e+06"} 2
istio_request_bytes_bucket{L,le="1e+07"} 2
istio_request_bytes_bucket{L,le="+Inf"} 2
istio_request_bytes_sum{L} 200
istio_request_bytes_count{L} 2
# HELP istio_response_bytes Response body size in bytes.
# TYPE istio_response_bytes histogram
istio_response_bytes_bucket{L,le="1"} 0
istio_response_bytes_bucket{L,le="10"} 0
istio_response_bytes_bucket{L,le="100"} 0
istio_response_bytes_bucket{L,le="1000"} 0
istio_response_bytes_bucket{L,le="10000"} 1
istio_response_bytes_bucket{L,le="100000"} 1
istio_response_bytes_bucket{L,le="1e+06"} 1
istio_response_bytes_bucket{L,le="1e+07"} 1
istio_response_bytes_bucket{L,le="+Inf"} 2
istio_response_bytes_sum{L} 20004096
istio_response_bytes_count{L} 2
"#;

/// The label set of the golden series, as the exposition format escapes it.
const GOLDEN_LABELS: &str = r#"reporter="source",source_workload="abgate",source_workload_namespace="gw-ns",destination_service="reviews.prod.svc.cluster.local",destination_service_name="reviews",destination_service_namespace="prod",destination_version="v1",destination_workload="reviews",destination_workload_namespace="prod",destination_subset="can\"ary\\1\nx",request_protocol="http",response_code="200",response_flags="-""#;

#[test]
fn render_matches_golden_text_for_one_series() {
    let t0 = Instant::now();
    let telemetry = Telemetry::with_options(options(t0));
    let series = telemetry.destination(reviews());
    // 7 ms and 7.25 ms; 80 B and 120 B requests; 4 KiB and 20 MB responses.
    series.record_request(&request(200, 7_000, 120, 4_096, t0));
    series.record_request(&request(200, 7_250, 80, 20_000_000, t0));
    let text = telemetry.render();
    let want = ISTIO_GOLDEN.replace("{L", &format!("{{{GOLDEN_LABELS}"));
    assert_eq!(family_lines(&text, "istio_"), want);
    // No experiment routed: no experiment labels, and no LLM series for it yet.
    assert!(!text.contains("experiment_id"));
    assert!(!text.contains("llm_requests_total{"));
    assert!(text.contains("# TYPE llm_requests_total counter\n"));
}

#[test]
fn gateway_families_render_counters_and_gauges() {
    let telemetry = Telemetry::new();
    let g = telemetry.gateway();
    g.record_config_reload(true);
    g.record_config_reload(true);
    g.record_config_reload(false);
    g.record_endpoint_ejection();
    g.record_pool_overflow();
    g.request_started();
    g.connection_opened();
    g.connection_opened();
    g.record_connection_refused();
    let want = "\
# HELP abgate_config_reloads_total Configuration reloads after startup: applied, or refused with the running configuration kept.
# TYPE abgate_config_reloads_total counter
abgate_config_reloads_total{result=\"applied\"} 2
abgate_config_reloads_total{result=\"refused\"} 1
# HELP abgate_endpoint_ejections_total Endpoints ejected by outlier detection.
# TYPE abgate_endpoint_ejections_total counter
abgate_endpoint_ejections_total 1
# HELP abgate_pool_overflows_total Requests refused because a connection pool was full (UO).
# TYPE abgate_pool_overflows_total counter
abgate_pool_overflows_total 1
# HELP abgate_requests_in_flight Requests being served.
# TYPE abgate_requests_in_flight gauge
abgate_requests_in_flight 1
# HELP abgate_connections_open Downstream connections open.
# TYPE abgate_connections_open gauge
abgate_connections_open 2
# HELP abgate_connections_refused_total Downstream connections refused at accept because --max-connections were open.
# TYPE abgate_connections_refused_total counter
abgate_connections_refused_total 1
";
    assert_eq!(family_lines(&telemetry.render(), "abgate_"), want);
}

#[test]
fn experiment_series_carry_experiment_labels_and_llm_families_in_seconds() {
    let t0 = Instant::now();
    let telemetry = Telemetry::with_options(options(t0));
    let mut labels = DestinationLabels::new("llama-3.1-8b-service", "default");
    labels.destination_version = "v2".to_owned();
    labels.destination_subset = "canary".to_owned();
    labels.model_name = "llama-3.1-8b".to_owned();
    labels.experiment_id = "exp-1".to_owned();
    labels.variant = "canary".to_owned();
    let series = telemetry.destination(labels);
    let mut failed = request(503, 2_000, 10, 10, t0);
    failed.flags = ResponseFlags::URX | ResponseFlags::UF;
    failed.protocol = RequestProtocol::Grpc;
    series.record_request(&failed);
    series.record_llm(&LlmRecord {
        ttft: Some(Duration::from_millis(250)),
        e2e: Duration::from_millis(1_250),
        prompt_tokens: 30,
        completion_tokens: 21,
        success: true,
        at: t0,
    });
    series.record_chunk_gap(Duration::from_millis(50));
    series.record_chunk_gap(Duration::from_micros(1_500));
    let text = telemetry.render();

    assert!(text.contains(
        r#",request_protocol="grpc",response_code="503",response_flags="UF,URX",experiment_id="exp-1",variant="canary"} 1"#
    ));
    let llm = r#"model_name="llama-3.1-8b",version="v2",destination_service_name="llama-3.1-8b-service",destination_subset="canary",experiment_id="exp-1",variant="canary""#;
    for line in [
        format!("llm_tokens_generated_total{{{llm}}} 21"),
        format!("llm_prompt_tokens_total{{{llm}}} 30"),
        format!("llm_requests_total{{{llm},success=\"true\"}} 1"),
        format!("llm_requests_total{{{llm},success=\"false\"}} 0"),
        format!("llm_time_to_first_token_seconds_bucket{{{llm},le=\"0.1\"}} 0"),
        format!("llm_time_to_first_token_seconds_bucket{{{llm},le=\"0.25\"}} 1"),
        format!("llm_time_to_first_token_seconds_sum{{{llm}}} 0.25"),
        // (1.25 s − 0.25 s) / 20 tokens.
        format!("llm_time_per_output_token_seconds_bucket{{{llm},le=\"0.05\"}} 1"),
        format!("llm_time_per_output_token_seconds_sum{{{llm}}} 0.05"),
        format!("llm_e2e_request_latency_seconds_bucket{{{llm},le=\"1.5\"}} 1"),
        format!("llm_e2e_request_latency_seconds_sum{{{llm}}} 1.25"),
        format!("llm_inter_chunk_gap_seconds_bucket{{{llm},le=\"0.0025\"}} 1"),
        format!("llm_inter_chunk_gap_seconds_bucket{{{llm},le=\"0.05\"}} 2"),
        format!("llm_inter_chunk_gap_seconds_sum{{{llm}}} 0.0515"),
        format!("llm_inter_chunk_gap_seconds_count{{{llm}}} 2"),
    ] {
        assert!(text.lines().any(|l| l == line), "missing: {line}\n{text}");
    }
    // And the variant's cell got the same samples.
    let cell = telemetry
        .store()
        .get("exp-1", "canary")
        .expect("made with the series");
    let stats = cell.snapshot(0, 1);
    assert_eq!((stats.count, stats.errors), (1, 1));
    assert_eq!(stats.completion_tokens.sum, 21.0);
}

#[test]
fn every_family_has_one_help_and_type_and_samples_parse() {
    let t0 = Instant::now();
    let telemetry = Telemetry::with_options(options(t0));
    let mut labels = reviews();
    labels.variant = "b".to_owned();
    labels.experiment_id = "e".to_owned();
    let a = telemetry.destination(reviews());
    let b = telemetry.destination(labels);
    for code in [200, 404, 503] {
        a.record_request(&request(code, 1_000, 1, 1, t0));
        b.record_request(&request(code, 1_000, 1, 1, t0));
    }
    b.record_chunk_gap(Duration::from_millis(3));
    let text = telemetry.render();
    let mut families = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().expect("a name");
            assert!(!families.contains(&name.to_owned()), "{name} twice");
            families.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().expect("a name");
        assert!(
            families.iter().any(|f| name.starts_with(f.as_str())),
            "{name} before its TYPE"
        );
    }
    assert_eq!(families.len(), 4 + 7 + 6);
}

#[test]
fn same_labels_return_the_same_series() {
    let telemetry = Telemetry::new();
    let a = telemetry.destination(reviews());
    let b = telemetry.destination(reviews());
    assert!(Arc::ptr_eq(&a, &b));
    let mut other = reviews();
    other.destination_version = "v2".to_owned();
    assert!(!Arc::ptr_eq(&a, &telemetry.destination(other)));
    assert!(a.cell().is_none());
}

#[test]
fn series_of_one_variant_share_its_cell() {
    let t0 = Instant::now();
    let telemetry = Telemetry::with_options(options(t0));
    let mut v1 = DestinationLabels::new("llama", "default");
    v1.experiment_id = "exp".to_owned();
    v1.variant = "canary".to_owned();
    let mut v2 = v1.clone();
    v2.destination_version = "v2".to_owned();
    let a = telemetry.destination(v1);
    let b = telemetry.destination(v2);
    let (ca, cb) = (a.cell().expect("variant"), b.cell().expect("variant"));
    assert!(Arc::ptr_eq(ca, cb));
    a.record_request(&request(200, 1_000, 0, 0, t0));
    b.record_request(&request(200, 1_000, 0, 0, t0));
    assert_eq!(ca.snapshot(0, 1).count, 2);
}

#[test]
fn concurrent_recording_from_four_threads_gives_exact_totals() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 100_000;
    let t0 = Instant::now();
    let telemetry = Telemetry::with_options(options(t0));
    let mut labels = reviews();
    labels.experiment_id = "exp".to_owned();
    labels.variant = "a".to_owned();
    let series = telemetry.destination(labels);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let series = &series;
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    let code = if i.is_multiple_of(10) { 503 } else { 200 };
                    let ms = (i + thread) % 100;
                    series.record_request(&request(code, ms * 1_000, i % 1_000, 1, t0));
                    series.record_llm(&LlmRecord {
                        ttft: Some(Duration::from_millis(ms)),
                        e2e: Duration::from_millis(ms + 100),
                        prompt_tokens: 3,
                        completion_tokens: 2,
                        success: true,
                        at: t0,
                    });
                    series.record_chunk_gap(Duration::from_millis(1));
                }
            });
        }
    });
    let total = THREADS * PER_THREAD;
    // Σ over threads and i of (i + thread) % 100 ms.
    let ms_sum: u64 = (0..THREADS)
        .flat_map(|t| (0..PER_THREAD).map(move |i| (i + t) % 100))
        .sum();
    let ms_sq_sum: u64 = (0..THREADS)
        .flat_map(|t| (0..PER_THREAD).map(move |i| ((i + t) % 100).pow(2)))
        .sum();

    let slots = series.slot_snapshots();
    assert_eq!(slots.len(), 2);
    assert_eq!(slots.iter().map(|s| s.count).sum::<u64>(), total);
    assert_eq!(slots[1].count, total / 10);
    assert_eq!(
        slots.iter().map(|s| s.duration.sum).sum::<u64>(),
        ms_sum * 1_000
    );
    let req_bytes: u64 = (0..PER_THREAD).map(|i| i % 1_000).sum::<u64>() * THREADS;
    assert_eq!(
        slots.iter().map(|s| s.request_bytes.sum).sum::<u64>(),
        req_bytes
    );

    let llm = series.llm_snapshot();
    assert_eq!(llm.succeeded, total);
    assert_eq!(llm.prompt_tokens, 3 * total);
    assert_eq!(llm.completion_tokens, 2 * total);
    assert_eq!(llm.chunk_gap.0, total);
    assert_eq!(llm.e2e.0, total);

    let stats = series.cell().expect("variant").snapshot(0, 1);
    assert_eq!(stats.count, total);
    assert_eq!(stats.errors, total / 10);
    assert_eq!(stats.latency_ms.moments.n, total);
    assert_eq!(stats.latency_ms.moments.sum, ms_sum as f64);
    assert_eq!(stats.latency_ms.moments.sum_sq, ms_sq_sum as f64);
    assert_eq!(stats.latency_ms.sketch.count(), total);
    assert_eq!(stats.ttft_ms.moments.sum, ms_sum as f64);
    assert_eq!(stats.completion_tokens.sum, (2 * total) as f64);
    assert_eq!(series.cell().expect("variant").dropped(), 0);
}
