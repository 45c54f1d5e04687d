//! The Grafana dashboard (deploy/grafana/abgate.json) asks only for what abgate exports:
//! every PromQL expression's metric names are families a running `abgate serve` shows at
//! `/metrics` (a histogram as `_bucket`, `_sum`, `_count`), and every label it selects or
//! groups by is one those series carry.
//!
//! The exported names come from the real thing: two `abgate sim` versions behind
//! `abgate serve` with an Experiment (so `experiment_id` and `variant` labels appear),
//! one plain and one streamed completion through it (so every LLM family has samples),
//! then `/metrics`. Real processes on 127.0.0.1 with ephemeral ports, killed at the end.
//! crates/abgate/tests/prometheus.rs runs the same expressions in a real Prometheus.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{
    grafana_dashboard, http, panels_and_exprs, start_gateway, two_versions, Processes, Sim, HOST,
};
use serde_json::Value;

/// Two versions of one host, their subsets, a default route, and an Experiment between
/// the subsets for requests with `x-experiment-id: exp-dash`.
fn write_config(dir: &Path, v1: u16, v2: u16) {
    let yaml = format!(
        r#"{mesh}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: llama, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - route:
    - destination: {{host: {HOST}, subset: v1-0}}
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: exp-dash, namespace: default}}
spec:
  host: {HOST}
  baseline: baseline
  variants:
  - {{name: baseline, subset: v1-0, weight: 50}}
  - {{name: candidate, subset: v1-1, weight: 50}}
  match:
  - headers:
      x-experiment-id: {{exact: exp-dash}}
"#,
        mesh = two_versions(v1, v2)
    );
    std::fs::write(dir.join("llama.yaml"), yaml).expect("config written");
}

/// What `/metrics` exports: each sample name with the label names its samples carry.
/// Histogram families appear as `_bucket`, `_sum` and `_count`; a family with no samples
/// yet appears by the names its `# TYPE` line implies, with no labels.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                panic!("a malformed TYPE line: {line}");
            };
            let names: Vec<String> = match kind {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect(),
                "summary" => vec![
                    name.to_owned(),
                    format!("{name}_sum"),
                    format!("{name}_count"),
                ],
                _ => vec![name.to_owned()],
            };
            for n in names {
                out.entry(n).or_default();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = out.entry(name.to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let close = line.rfind('}').expect("a closing brace");
            for (label, _, _) in matchers(&line[name_end + 1..close]) {
                labels.insert(label);
            }
        }
    }
    out
}

/// The `label op "value"` pairs of a selector's or a sample's braces.
fn matchers(inside: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = inside.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < chars.len() && "=!~".contains(chars[i]) {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        assert!(
            !label.is_empty() && !op.is_empty() && i < chars.len(),
            "cannot read the matchers {{{inside}}}"
        );
        let quote = chars[i];
        assert!("\"'`".contains(quote), "an unquoted value in {{{inside}}}");
        i += 1;
        let mut value = String::new();
        while i < chars.len() && chars[i] != quote {
            if chars[i] == '\\' && quote != '`' {
                i += 1;
            }
            if let Some(&c) = chars.get(i) {
                value.push(c);
            }
            i += 1;
        }
        i += 1;
        out.push((label, op, value));
    }
    out
}

/// PromQL words that are not metric names: aggregation operators, binary operators and
/// modifiers, literals.
const KEYWORDS: [&str; 27] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names.
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// What an expression uses: metric names with the labels each selector matches on, and
/// the labels its grouping clauses (`by`, `without`, `on`, `ignoring`, `group_left`,
/// `group_right`) name.
#[derive(Debug, Default, PartialEq)]
struct Uses {
    metrics: BTreeMap<String, BTreeSet<String>>,
    grouping: BTreeSet<String>,
}

/// Reads a PromQL expression (Grafana variables such as `$x`, `${x}` and
/// `$__rate_interval` allowed): identifiers followed by `{` or `[` or used bare are metric
/// names, unless followed by `(` (a function) or a PromQL keyword.
fn uses(expr: &str) -> Uses {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Uses::default();
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // The index just past the bracket that closes the one at `open`, skipping strings.
    let close_of = |open: usize, close: char| {
        let mut i = open + 1;
        while i < chars.len() && chars[i] != close {
            if "\"'`".contains(chars[i]) {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        assert!(i < chars.len(), "unbalanced {close} in {expr}");
        i + 1
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if "\"'`".contains(c) {
            // A string literal outside braces (e.g. label_replace's arguments).
            let quote = c;
            i += 1;
            while i < chars.len() && chars[i] != quote {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = close_of(i, '}');
            } else {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c == '[' {
            i = close_of(i, ']');
        } else if c == '{' {
            // Matchers with no metric name before them: the name is the `__name__`
            // matcher's, and the other labels are matched on like any selector's.
            let end = close_of(i, '}');
            let inside: String = chars[i + 1..end - 1].iter().collect();
            let matched = matchers(&inside);
            let name = matched
                .iter()
                .find(|(label, op, _)| label == "__name__" && op == "=")
                .map(|(_, _, value)| value.clone())
                .unwrap_or_else(|| {
                    panic!("a selector names its metric with __name__=\"...\": {{{inside}}}")
                });
            out.metrics.entry(name).or_default().extend(
                matched
                    .into_iter()
                    .filter(|(label, _, _)| label != "__name__")
                    .map(|(label, _, _)| label),
            );
            i = end;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`0.95`, `1e3`, `5m`).
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(i);
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    let end = close_of(next, ')');
                    let list: String = chars[next + 1..end - 1].iter().collect();
                    out.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                    i = end;
                }
            } else if KEYWORDS.contains(&lower.as_str()) || chars.get(next) == Some(&'(') {
                // An operator, a keyword or a function.
            } else {
                let labels = out.metrics.entry(word).or_default();
                if chars.get(next) == Some(&'{') {
                    let end = close_of(next, '}');
                    let inside: String = chars[next + 1..end - 1].iter().collect();
                    labels.extend(matchers(&inside).into_iter().map(|(l, _, _)| l));
                    i = end;
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_extractor_reads_promql() {
    let u = uses(
        r#"histogram_quantile(0.95, sum by (variant, le) (rate(istio_request_duration_milliseconds_bucket{destination_service_name="$destination_service_name",experiment_id=~"a|b}"}[$__rate_interval])))"#,
    );
    assert_eq!(
        u.metrics.keys().collect::<Vec<_>>(),
        ["istio_request_duration_milliseconds_bucket"]
    );
    assert_eq!(
        u.metrics["istio_request_duration_milliseconds_bucket"],
        BTreeSet::from([
            "destination_service_name".to_owned(),
            "experiment_id".to_owned()
        ])
    );
    assert_eq!(
        u.grouping,
        BTreeSet::from(["variant".to_owned(), "le".to_owned()])
    );

    let u = uses(
        "sum by (variant) (rate(a_total{x=\"1\"}[1m])) / ignoring(variant) group_left sum(rate(b_total[5m] offset 1h)) > bool 0.5 or up",
    );
    assert_eq!(
        u.metrics.keys().collect::<Vec<_>>(),
        ["a_total", "b_total", "up"]
    );
    assert_eq!(u.grouping, BTreeSet::from(["variant".to_owned()]));

    let u = uses("sum(abgate_requests_in_flight) + count(x:recorded:rate5m) * 1e3");
    assert_eq!(
        u.metrics.keys().collect::<Vec<_>>(),
        ["abgate_requests_in_flight", "x:recorded:rate5m"]
    );

    // A selector that names its metric among its matchers.
    let u = uses(r#"sum(rate({__name__="istio_requests_total", variant!="", reporter="x"}[5m]))"#);
    assert_eq!(
        u.metrics,
        BTreeMap::from([(
            "istio_requests_total".to_owned(),
            BTreeSet::from(["variant".to_owned(), "reporter".to_owned()])
        )])
    );
}

#[test]
fn every_dashboard_query_uses_metrics_and_labels_abgate_exports() {
    let dashboard = grafana_dashboard();

    // The dashboard's shape.
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    let variables: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().expect("a variable name"), v))
        .collect();
    for name in ["datasource", "destination_service_name", "experiment_id"] {
        assert!(
            variables.contains_key(name),
            "a `{name}` variable: {variables:?}"
        );
    }
    assert_eq!(variables["datasource"]["query"], "prometheus");
    let (panels, exprs) = panels_and_exprs(&dashboard);
    let graphs: Vec<&Value> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(
        graphs.len() >= 6,
        "at least 6 panels, found {}",
        graphs.len()
    );
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "every panel has its own id");
    for panel in &graphs {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} reads the chosen data source",
            panel["title"]
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has queries",
            panel["title"]
        );
    }
    let titles: Vec<&str> = graphs.iter().filter_map(|p| p["title"].as_str()).collect();
    for title in [
        "Request rate by variant",
        "Success rate by variant",
        "p95 latency by variant",
        "TTFT p95 by variant",
        "Tokens/s by variant",
        "Traffic share by variant (observed)",
    ] {
        assert!(titles.contains(&title), "a panel {title:?}: {titles:?}");
    }

    // What abgate exports, from a running gateway that has served a plain and a streamed
    // completion through an experiment.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let mut processes = Processes::new(dir.path());
    let sim = Sim {
        output_tokens: 6,
        ttft_ms: 5,
        tokens_per_second: 500,
    };
    let v1 = sim.start(&mut processes, "llama-v1");
    let v2 = sim.start(&mut processes, "llama-v2");
    write_config(&config, v1, v2);
    let state = dir.path().join("state.db");
    let gateway = start_gateway(&mut processes, "gateway", &config, &state, &[]);
    for body in [
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
    ] {
        let reply = http(
            gateway.http,
            "POST",
            "/v1/chat/completions",
            &[
                ("Host", HOST),
                ("Content-Type", "application/json"),
                ("x-experiment-id", "exp-dash"),
            ],
            body,
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // The stream is recorded when its end has been forwarded; wait for it.
    let metrics = gateway.metrics_when_idle();
    let exported = exported(&metrics);
    for family in [
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
        "llm_tokens_generated_total",
        "llm_time_to_first_token_seconds_bucket",
    ] {
        let labels = exported.get(family).expect(family);
        for label in ["experiment_id", "variant"] {
            assert!(
                labels.contains(label),
                "{family} has samples with `{label}` after the experiment's requests"
            );
        }
    }

    let mut problems = Vec::new();
    assert!(!exprs.is_empty(), "the dashboard has queries");
    for (title, expr) in &exprs {
        let used = uses(expr);
        if used.metrics.is_empty() {
            problems.push(format!("{title:?}: no metric in `{expr}`"));
        }
        let mut available = BTreeSet::new();
        for (metric, labels) in &used.metrics {
            let Some(known) = exported.get(metric) else {
                problems.push(format!(
                    "{title:?}: `{metric}` is not a metric abgate exports (`{expr}`)"
                ));
                continue;
            };
            available.extend(known.iter().cloned());
            for label in labels {
                if !known.contains(label) {
                    problems.push(format!(
                        "{title:?}: `{metric}` has no label `{label}` (it has {known:?})"
                    ));
                }
            }
        }
        for label in &used.grouping {
            if !available.contains(label) {
                problems.push(format!(
                    "{title:?}: grouping by `{label}`, which none of {:?} carries",
                    used.metrics.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard queries that do not fit abgate's metrics:\n{}\n\nexported: {:#?}",
        problems.join("\n"),
        exported.keys().collect::<Vec<_>>()
    );
}
