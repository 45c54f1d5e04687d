//! An Experiment with `metrics: {source: prometheus}` decided on a real Prometheus's
//! answers: two `abgate sim` versions behind `abgate serve`, the candidate clearly slower
//! (its first token after 150 ms against the baseline's 20 ms), Prometheus scraping the
//! gateway's admin `/metrics` every second, steady traffic in the experiment; the
//! controller, reading the variants through `prometheus_source::observe`, rolls the
//! candidate back. The test checks the rollback's reason and that the observations it was
//! decided on came from Prometheus: counts of at least `minSamples`, no figure the
//! built-in store alone has (mean latency, mean completion tokens), and, in Prometheus's
//! query log, every default query filled in for both variants over the period so far.
//! It then sends each default template, filled in, to the same Prometheus: each is valid
//! PromQL and yields one number.
//!
//! The Prometheus binary is `ABGATE_TEST_PROMETHEUS` (scripts/test installs Debian's
//! `prometheus` and sets it), else `prometheus` on PATH; without one the test fails, it
//! never skips. Everything runs on 127.0.0.1 with ephemeral ports. Prometheus starts
//! first (its address goes into the Experiment) and finds the gateway through a
//! `file_sd` targets file written once the gateway's admin address is known.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    prometheus_binary, start_gateway, try_http, two_versions, Processes, Prometheus, Sim, HOST,
};
use serde_json::Value;

const EXPERIMENT: &str = "prometheus-source-canary";
const MIN_SAMPLES: u64 = 10;

/// The host with one endpoint per version, a subset each, a default route to the
/// baseline, and the Experiment: a classic canary at 50/50 analysed every 2 s, its
/// figures read from `prometheus`.
fn write_config(dir: &Path, baseline: u16, candidate: u16, prometheus: SocketAddr) {
    let yaml = format!(
        r#"{mesh}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: llama-3-1-8b, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - route:
    - destination: {{host: {HOST}, subset: v1-0}}
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: {EXPERIMENT}, namespace: default}}
spec:
  host: {HOST}
  baseline: v1-0
  traffic_split: {{v1-0: 50, v1-1: 50}}
  strategy: canary
  policy: classic
  interval: 2s
  analysis: {{minSamples: {MIN_SAMPLES}}}
  rollback_criteria: {{latency_degradation: 0.2, success_rate_drop: 0.95}}
  match:
  - headers:
      x-experiment-id: {{exact: {EXPERIMENT}}}
  metrics:
    source: prometheus
    prometheus: {{address: "http://{prometheus}"}}
"#,
        mesh = two_versions(baseline, candidate)
    );
    std::fs::write(dir.join("llama.yaml"), yaml).expect("config written");
}

/// Steady traffic in the experiment from `threads` clients until `stop`; counts answers
/// by the `x-variant` the gateway reported, and anything that is not a 200.
struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(gateway: SocketAddr, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let workers = (0..threads)
            .map(|i| {
                let stop = Arc::clone(&stop);
                let counts = Arc::clone(&counts);
                thread::spawn(move || {
                    let mut stream = i % 2 == 1;
                    while !stop.load(Ordering::Relaxed) {
                        // Plain answers and streams (TTFT is recorded for streams).
                        let body = if !stream {
                            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
                        } else {
                            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
                        };
                        stream = !stream;
                        let r = try_http(
                            gateway,
                            "POST",
                            "/v1/chat/completions",
                            &[
                                ("Host", HOST),
                                ("Content-Type", "application/json"),
                                ("x-experiment-id", EXPERIMENT),
                            ],
                            body,
                        );
                        let slot = match r {
                            Ok(r) if r.status == 200 => match r.header("x-variant") {
                                Some("v1-0") => 0,
                                Some("v1-1") => 1,
                                _ => 2,
                            },
                            _ => 2,
                        };
                        counts[slot].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            workers,
        }
    }

    fn counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.counts[i].load(Ordering::Relaxed))
    }

    fn finish(self) -> [u64; 3] {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.join().expect("a load thread panicked");
        }
        [0, 1, 2].map(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// Whether `logged` is `template` with `{window}` filled by a whole number of seconds
/// (and the other placeholders already filled in `template`).
fn matches_with_window(template: &str, logged: &str) -> bool {
    let Some((before, after)) = template.split_once("{window}") else {
        return template == logged;
    };
    let Some(middle) = logged
        .strip_prefix(before)
        .and_then(|rest| rest.strip_suffix(after))
    else {
        return false;
    };
    middle
        .strip_suffix('s')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The defaults with `{host}`, `{service}`, `{subset}`, `{variant}` and `{experiment}`
/// filled for `subset` (here the variant is named after its subset); `{window}` stays.
fn defaults_for(subset: &str) -> BTreeMap<String, String> {
    abgate_config::default_prometheus_queries()
        .into_iter()
        .map(|(figure, template)| {
            let filled = template
                .replace("{host}", HOST)
                .replace("{service}", HOST)
                .replace("{subset}", subset)
                .replace("{variant}", subset)
                .replace("{experiment}", EXPERIMENT);
            (figure, filled)
        })
        .collect()
}

#[test]
fn an_experiment_reading_prometheus_rolls_back_a_slower_candidate() {
    let begun = Instant::now();
    let prometheus_bin = prometheus_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let mut processes = Processes::new(dir.path());

    // 8 tokens at 400 tokens/s; the candidate's first token after 150 ms, the baseline's
    // after 20 ms.
    let sim = |ttft_ms| Sim {
        output_tokens: 8,
        ttft_ms,
        tokens_per_second: 400,
    };
    let baseline = sim(20).start(&mut processes, "llama-3.1-8b-v1");
    let candidate = sim(150).start(&mut processes, "llama-3.1-8b-v2");
    let prometheus = Prometheus::start(&mut processes, &prometheus_bin, dir.path());
    write_config(&config, baseline, candidate, prometheus.addr);
    let state = dir.path().join("state.db");
    let gateway = start_gateway(
        &mut processes,
        "gateway",
        &config,
        &state,
        &["--analysis-window", "1s"],
    );
    prometheus.scrape(gateway.admin);
    let summary = gateway.experiment(EXPERIMENT);
    assert_eq!(summary["phase"], "running", "{summary:#}");
    let setup = begun.elapsed();

    // Steady load until the controller rolls the candidate back.
    let load = Load::start(gateway.http, 3);
    let deadline = Instant::now() + Duration::from_secs(40);
    let summary = loop {
        let summary = gateway.experiment(EXPERIMENT);
        if summary["phase"] != "running" {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "no decision within 40 s of steady load (answers by variant v1-0, v1-1, failed: \
             {:?}); the controller last said: {}",
            load.counts(),
            summary["last_reason"]
        );
        thread::sleep(Duration::from_millis(250));
    };
    let decided = begun.elapsed();
    let sent = load.finish();
    assert_eq!(
        summary["phase"], "rolled_back",
        "the slower candidate is rolled back: {summary:#}"
    );
    assert_eq!(
        sent[2], 0,
        "every request answered 200 with a variant: {sent:?}"
    );

    // The rollback, its reason and what it was decided on.
    let report = gateway.report(EXPERIMENT);
    let decisions = report["decisions"].as_array().expect("decisions");
    let rollback = decisions
        .iter()
        .find(|d| d["kind"] == "rollback")
        .unwrap_or_else(|| panic!("a rollback decision: {report:#}"));
    let reason = rollback["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("candidate v1-1 p95") && reason.contains("baseline v1-0"),
        "the rollback names the candidate's latency against the baseline's: {reason}"
    );
    let obs = &rollback["observations"];
    let variants = obs["variants"].as_array().expect("observed variants");
    let names: Vec<&str> = variants
        .iter()
        .filter_map(|v| v["variant"].as_str())
        .collect();
    assert_eq!(names, ["v1-0", "v1-1"], "{obs:#}");
    let figure = |v: &Value, name: &str| v[name].as_f64();
    for v in variants {
        let requests = v["requests"].as_u64().expect("a request count");
        assert!(
            requests >= MIN_SAMPLES,
            "{} was judged on {requests} requests (minSamples {MIN_SAMPLES}): {v:#}",
            v["variant"]
        );
        // `increase()` extrapolates a little; it never finds many more than were sent.
        let answered = sent[0] + sent[1];
        assert!(requests <= answered, "{requests} > {answered} sent: {v:#}");
        assert_eq!(v["errors"], 0, "{v:#}");
        // Prometheus has no mean latency nor mean completion tokens; the built-in store
        // fills both for any variant with requests: these figures came from Prometheus.
        assert!(
            v["latency_mean_ms"].is_null() && v["completion_tokens_mean"].is_null(),
            "observations from Prometheus have no means: {v:#}"
        );
        assert!(
            figure(v, "tokens_per_second").is_some_and(|t| t > 0.0),
            "{v:#}"
        );
    }
    let (b, c) = (&variants[0], &variants[1]);
    let p95 = |v: &Value| figure(v, "latency_p95_ms").expect("a p95 latency");
    assert!(p95(c) > 1.2 * p95(b), "p95 {} vs {}", p95(c), p95(b));
    // Every candidate first token takes over 150 ms: above the 0.1 s bucket bound, so
    // the p95 is at least 100 + 150 × 0.95 ms; the baseline's (20 ms) is far below.
    let ttft = |v: &Value| figure(v, "ttft_p95_ms").expect("a TTFT p95");
    assert!(
        (242.0..=1000.0).contains(&ttft(c)) && ttft(b) < ttft(c),
        "TTFT p95 {} vs {}",
        ttft(c),
        ttft(b)
    );
    // Over the period the split was in force: here the first, from the start.
    assert_eq!(
        rollback["period"], 0,
        "no weight change before the rollback"
    );
    assert_eq!(
        obs["from"], report["started_at"],
        "the period's start: {obs:#}"
    );
    assert_eq!(obs["to"], rollback["at"], "{obs:#}");

    // Prometheus logged the gateway's queries: every default figure for both variants,
    // filled in, over a whole number of seconds.
    let logged = prometheus.logged_queries();
    for subset in ["v1-0", "v1-1"] {
        for (figure, filled) in defaults_for(subset) {
            assert!(
                logged.iter().any(|q| matches_with_window(&filled, q)),
                "Prometheus never ran the gateway's {figure} query for {subset}, `{filled}`; \
                 it ran: {logged:#?}"
            );
        }
    }

    // Each default template, filled in, is valid PromQL yielding one number.
    let window = format!("{}s", (decided.as_secs() + 5).max(1));
    for subset in ["v1-0", "v1-1"] {
        for (figure, filled) in defaults_for(subset) {
            let expr = filled.replace("{window}", &window);
            let answer = prometheus.query(&expr);
            let result = answer["data"]["result"].as_array().expect("a vector");
            if figure == "errors" && result.is_empty() {
                continue; // no 5xx series at all: nothing failed
            }
            assert_eq!(result.len(), 1, "{figure} for {subset}: `{expr}`: {answer}");
            let value: f64 = result[0]["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("a number");
            match figure.as_str() {
                "errors" => assert_eq!(value, 0.0, "`{expr}`"),
                _ => assert!(
                    value.is_finite() && value > 0.0,
                    "{figure}: {value} `{expr}`"
                ),
            }
        }
    }

    eprintln!(
        "setup {:.1} s, rolled back after {:.1} s of load ({} + {} requests), total {:.1} s; \
         judged on {} + {} requests, p95 {:.1} vs {:.1} ms, TTFT p95 {:.1} vs {:.1} ms; {reason}",
        setup.as_secs_f64(),
        (decided - setup).as_secs_f64(),
        sent[0],
        sent[1],
        begun.elapsed().as_secs_f64(),
        b["requests"],
        c["requests"],
        p95(b),
        p95(c),
        ttft(b),
        ttft(c),
    );
}
