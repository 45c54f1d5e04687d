//! An experiment's observations read from Prometheus (`metrics: {source: prometheus}`).
//!
//! Each figure analysis reads (`requests`, `errors`, `latency_p95_ms`, `ttft_p95_ms`,
//! `tokens_per_second`) has a PromQL template (the defaults are
//! [`abgate_config::default_prometheus_queries`]); for every variant the template is filled
//! in and run as an instant query at `now` over the current period, so only traffic served
//! under the split in force is compared. A query must yield one number: an empty result
//! (or NaN, ±Inf) means nothing measured it; several series, or a refusal by Prometheus,
//! is an error naming the query.

use std::collections::BTreeMap;
use std::time::Duration;

use abgate_config::model::{self, Experiment, Variant};
use abgate_experiment::{ExperimentState, Observations, VariantObservation};
use abgate_outbound::Client;
use anyhow::{anyhow, Context as _};
use serde_json::Value;
use tokio::task::JoinSet;

use super::{MetricSource, Observing};

/// How long one query may take, sending to body received.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read from Prometheus (a figure is one sample; this is generous).
const MAX_BODY: usize = 4 << 20;

/// The figures read, in the order [`VariantObservation`] has them.
const FIGURES: [&str; 5] = [
    "requests",
    "errors",
    "latency_p95_ms",
    "ttft_p95_ms",
    "tokens_per_second",
];

/// Prometheus at the address each experiment names (`metrics.address`), with its query
/// templates.
#[derive(Clone)]
pub struct Prometheus {
    client: Client,
}

impl Prometheus {
    /// Queries through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl MetricSource for Prometheus {
    fn observe<'a>(
        &'a self,
        spec: &'a Experiment,
        state: &'a ExperimentState,
        now_ms: u64,
    ) -> Observing<'a> {
        Box::pin(async move {
            let model::MetricSource::Prometheus { address, queries } = &spec.metric_source else {
                anyhow::bail!("experiment {} does not read Prometheus", spec.id);
            };
            observe(&self.client, spec, state, address, queries, now_ms).await
        })
    }
}

/// Observations of an experiment's variants from Prometheus, over the current period.
///
/// `queries` maps figure names to templates (see [`fill`]); a figure without a template
/// is not measured. Every query runs at once, each within [`QUERY_TIMEOUT`]. An HTTP error,
/// a timeout, a query Prometheus refuses, or one that yields more than one series is an
/// `Err` naming the query: the analysis failed, it did not observe nothing.
async fn observe(
    client: &Client,
    experiment: &Experiment,
    state: &ExperimentState,
    address: &str,
    queries: &BTreeMap<String, String>,
    now_ms: u64,
) -> anyhow::Result<Observations> {
    let window = window(state.period_started_at, now_ms);
    let mut tasks = JoinSet::new();
    for (i, variant) in experiment.variants.iter().enumerate() {
        let values = placeholders(experiment, variant, &window);
        for (f, figure) in FIGURES.iter().enumerate() {
            let Some(template) = queries.get(*figure) else {
                continue;
            };
            let query = fill(template, &values);
            let url = query_url(address, &query, now_ms);
            let client = client.clone();
            tasks.spawn(async move {
                let value = instant_query(&client, &url)
                    .await
                    .with_context(|| format!("Prometheus query `{query}` at {url}"));
                (i, f, value)
            });
        }
    }
    let mut figures = vec![[None::<f64>; FIGURES.len()]; experiment.variants.len()];
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (i, f, value) = joined.context("a Prometheus query task failed")?;
        match value {
            Ok(v) => figures[i][f] = v,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let variants = experiment
        .variants
        .iter()
        .zip(&figures)
        .map(
            |(variant, [requests, errors, p95, ttft_p95, tps])| VariantObservation {
                variant: variant.name.clone(),
                requests: count(*requests),
                errors: count(*errors),
                latency_p95_ms: *p95,
                latency_mean_ms: None,
                ttft_p95_ms: *ttft_p95,
                tokens_per_second: *tps,
                completion_tokens_mean: None,
            },
        )
        .collect();
    Ok(Observations {
        variants,
        from: state.period_started_at,
        to: now_ms,
        // Prometheus has summaries, not the raw windows a statistical policy merges.
        stats: Vec::new(),
        feedback: Vec::new(),
        estimates: Vec::new(),
    })
}

/// A counter's increase as a whole count: rounded (`increase()` extrapolates), none as 0.
fn count(value: Option<f64>) -> u64 {
    // `as` saturates: a negative value is 0.
    value.map_or(0, |v| v.round() as u64)
}

/// The period so far as a PromQL duration in whole seconds, at least `1s`.
fn window(period_started_at_ms: u64, now_ms: u64) -> String {
    format!(
        "{}s",
        (now_ms.saturating_sub(period_started_at_ms) / 1000).max(1)
    )
}

/// The placeholder values for one variant.
fn placeholders<'a>(
    experiment: &'a Experiment,
    variant: &'a Variant,
    window: &'a str,
) -> [(&'static str, &'a str); 6] {
    [
        ("host", experiment.host.as_str()),
        (
            "service",
            abgate_telemetry::service_name_of(&experiment.host),
        ),
        ("subset", variant.subset.as_str()),
        ("variant", variant.name.as_str()),
        ("experiment", experiment.id.as_str()),
        ("window", window),
    ]
}

/// Fills `{name}` placeholders in one pass (a value containing `{window}` stays as it
/// is); anything else in braces, such as a label selector, is left alone.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = values.iter().find(|(name, _)| {
            after
                .strip_prefix(name)
                .is_some_and(|tail| tail.starts_with('}'))
        });
        match hit {
            Some((name, value)) => {
                out.push_str(value);
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Percent-encodes a query-string value: everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    out
}

/// `{address}/api/v1/query?query=...&time=<now, seconds with ms>`.
fn query_url(address: &str, query: &str, now_ms: u64) -> String {
    format!(
        "{}/api/v1/query?query={}&time={}.{:03}",
        address.trim_end_matches('/'),
        percent_encode(query),
        now_ms / 1000,
        now_ms % 1000
    )
}

/// Runs one instant query: its one value, `None` when it yields nothing (or NaN, ±Inf).
async fn instant_query(client: &Client, url: &str) -> anyhow::Result<Option<f64>> {
    let answer = client
        .get(url, "application/json", MAX_BODY, QUERY_TIMEOUT)
        .await?;
    let status = answer.status;
    match parse_response(&answer.body) {
        Ok(value) if status.is_success() => Ok(value),
        Ok(_) => Err(anyhow!("HTTP {status}")),
        Err(e) if status.is_success() => Err(anyhow!(e)),
        Err(e) => Err(anyhow!("HTTP {status}: {e}")),
    }
}

/// The value of an instant query's answer (`/api/v1/query`): `None` for an empty vector
/// or a value that is not finite; an error for Prometheus's `status: error`, a body that
/// is not its JSON, several series, or a range result.
fn parse_response(body: &[u8]) -> Result<Option<f64>, String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("not Prometheus's JSON ({e}): {text:?}")
    })?;
    match json["status"].as_str() {
        Some("success") => {}
        Some("error") => {
            return Err(format!(
                "{}: {}",
                json["errorType"].as_str().unwrap_or("error"),
                json["error"].as_str().unwrap_or("(no message)")
            ))
        }
        _ => return Err(format!("no status in the answer: {json}")),
    }
    let data = &json["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => {
            let result = data["result"]
                .as_array()
                .ok_or_else(|| format!("a vector without a result array: {data}"))?;
            match result.as_slice() {
                [] => return Ok(None),
                [one] => &one["value"],
                many => {
                    return Err(format!(
                        "{} series where one number is needed: aggregate the query \
                         (sum, or histogram_quantile over sum by (le))",
                        many.len()
                    ))
                }
            }
        }
        Some("scalar") => &data["result"],
        other => {
            return Err(format!(
                "result type {} where an instant vector or scalar is needed",
                other.unwrap_or("(none)")
            ))
        }
    };
    let text = sample[1]
        .as_str()
        .ok_or_else(|| format!("a sample without a [time, \"value\"] pair: {sample}"))?;
    // Rust parses Prometheus's `NaN`, `+Inf` and `-Inf`.
    let value: f64 = text
        .parse()
        .map_err(|_| format!("the sample value {text:?} is not a number"))?;
    Ok(value.is_finite().then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(window: &str) -> [(&'static str, &str); 6] {
        [
            ("host", "llama.prod.svc.cluster.local"),
            ("service", "llama"),
            ("subset", "v1-1"),
            ("variant", "candidate"),
            ("experiment", "exp-1"),
            ("window", window),
        ]
    }

    #[test]
    fn fill_replaces_every_placeholder_and_leaves_selectors_alone() {
        let template = r#"sum(increase(istio_requests_total{destination_service_name="{service}",destination_subset="{subset}",variant="{variant}",experiment_id="{experiment}",destination_service="{host}"}[{window}])) + {unknown} + {window}"#;
        assert_eq!(
            fill(template, &values("37s")),
            r#"sum(increase(istio_requests_total{destination_service_name="llama",destination_subset="v1-1",variant="candidate",experiment_id="exp-1",destination_service="llama.prod.svc.cluster.local"}[37s])) + {unknown} + 37s"#
        );
        // One pass: a value that looks like a placeholder is not filled again.
        assert_eq!(
            fill("{subset}", &[("subset", "{window}"), ("window", "5s")]),
            "{window}"
        );
        assert_eq!(fill("{", &values("1s")), "{");
        assert_eq!(fill("{window", &values("1s")), "{window");
        assert_eq!(fill("", &values("1s")), "");
    }

    #[test]
    fn default_templates_fill_completely() {
        let defaults = abgate_config::default_prometheus_queries();
        for figure in FIGURES {
            let template = defaults.get(figure).expect("a default for every figure");
            let filled = fill(template, &values("12s"));
            for name in [
                "host",
                "service",
                "subset",
                "variant",
                "experiment",
                "window",
            ] {
                assert!(!filled.contains(&format!("{{{name}}}")), "{filled}");
            }
            assert!(filled.contains(r#"destination_subset="v1-1""#), "{filled}");
            assert!(filled.contains("[12s]"), "{filled}");
        }
        // And nothing figure-like outside the figures analysis reads.
        assert!(defaults.keys().all(|k| FIGURES.contains(&k.as_str())));
    }

    #[test]
    fn window_is_whole_seconds_and_at_least_one() {
        assert_eq!(window(1_000, 38_999), "37s");
        assert_eq!(window(1_000, 1_500), "1s");
        assert_eq!(window(5_000, 1_000), "1s"); // a clock step back
        assert_eq!(window(0, 3_600_000), "3600s");
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved() {
        assert_eq!(percent_encode("abcXYZ019-._~"), "abcXYZ019-._~");
        assert_eq!(
            percent_encode(r#"sum(x{a="b",c=~"5.*"}[3s]) / 2 + 1&q=#"#),
            "sum%28x%7Ba%3D%22b%22%2Cc%3D~%225.%2A%22%7D%5B3s%5D%29%20%2F%202%20%2B%201%26q%3D%23"
        );
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn query_url_has_the_time_in_seconds() {
        assert_eq!(
            query_url("http://127.0.0.1:9090/", "up == 1", 1_700_000_000_042),
            "http://127.0.0.1:9090/api/v1/query?query=up%20%3D%3D%201&time=1700000000.042"
        );
        let uri: http::Uri = query_url("http://p:9090/prom", r#"a{b="c"}"#, 5)
            .parse()
            .expect("a valid URI");
        assert_eq!(uri.path(), "/prom/api/v1/query");
        assert_eq!(uri.query(), Some("query=a%7Bb%3D%22c%22%7D&time=0.005"));
    }

    #[test]
    fn parses_one_sample() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.5,"123.25"]}]}}"#;
        assert_eq!(parse_response(body), Ok(Some(123.25)));
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"7"]}}"#;
        assert_eq!(parse_response(scalar), Ok(Some(7.0)));
    }

    #[test]
    fn empty_and_non_finite_are_nothing_measured() {
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_response(empty), Ok(None));
        for v in ["NaN", "+Inf", "-Inf"] {
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1,"{v}"]}}]}}}}"#
            );
            assert_eq!(parse_response(body.as_bytes()), Ok(None), "{v}");
        }
    }

    #[test]
    fn errors_carry_prometheus_text() {
        let refused = br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected \"}\""}"#;
        let e = parse_response(refused).expect_err("an error");
        assert!(e.starts_with("bad_data: invalid parameter"), "{e}");
        assert!(e.contains("parse error"), "{e}");

        let e = parse_response(b"502 Bad Gateway").expect_err("not JSON");
        assert!(
            e.contains("not Prometheus's JSON") && e.contains("502 Bad Gateway"),
            "{e}"
        );

        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}}"#;
        let e = parse_response(two).expect_err("two series");
        assert!(e.starts_with("2 series"), "{e}");

        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_response(matrix).is_err());
        let bad =
            br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"x"]}]}}"#;
        assert!(parse_response(bad).is_err());
    }

    #[test]
    fn counts_round_and_never_go_negative() {
        assert_eq!(count(Some(41.6)), 42);
        assert_eq!(count(Some(-0.4)), 0);
        assert_eq!(count(None), 0);
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_an_error_naming_the_query() {
        // A port nobody listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port();
        let spec = abgate_config_test_experiment();
        let state = ExperimentState::new(&spec, 1_000);
        let e = observe(
            &client(),
            &spec,
            &state,
            &format!("http://127.0.0.1:{port}"),
            &abgate_config::default_prometheus_queries(),
            5_000,
        )
        .await
        .expect_err("nothing listens");
        let text = format!("{e:#}");
        assert!(text.contains("Prometheus query `"), "{text}");
        assert!(text.contains("[4s]"), "{text}");
    }

    #[tokio::test]
    async fn no_templates_observe_nothing() {
        let spec = abgate_config_test_experiment();
        let state = ExperimentState::new(&spec, 1_000);
        let obs = observe(
            &client(),
            &spec,
            &state,
            "http://127.0.0.1:1",
            &BTreeMap::new(),
            9_000,
        )
        .await
        .expect("no query, no error");
        assert_eq!((obs.from, obs.to), (1_000, 9_000));
        assert_eq!(obs.variants.len(), spec.variants.len());
        assert!(obs
            .variants
            .iter()
            .all(|v| v.requests == 0 && v.latency_p95_ms.is_none()));
        assert!(obs.stats.is_empty());
    }

    /// A server answering every request with HTTP `status` and `body`; its base URL.
    async fn canned(status: u16, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn every_figure_of_every_variant_comes_from_its_query() {
        let address = canned(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"41.6"]}]}}"#,
        )
        .await;
        let spec = abgate_config_test_experiment();
        let state = ExperimentState::new(&spec, 1_000);
        let obs = observe(
            &client(),
            &spec,
            &state,
            &address,
            &abgate_config::default_prometheus_queries(),
            31_000,
        )
        .await
        .expect("observed");
        assert_eq!((obs.from, obs.to), (1_000, 31_000));
        let names: Vec<&str> = obs.variants.iter().map(|v| v.variant.as_str()).collect();
        assert_eq!(names, ["v1-0", "v1-1"]);
        for v in &obs.variants {
            assert_eq!((v.requests, v.errors), (42, 42));
            assert_eq!(v.latency_p95_ms, Some(41.6));
            assert_eq!(v.ttft_p95_ms, Some(41.6));
            assert_eq!(v.tokens_per_second, Some(41.6));
            assert_eq!((v.latency_mean_ms, v.completion_tokens_mean), (None, None));
        }
        assert!(obs.stats.is_empty());
    }

    #[tokio::test]
    async fn http_and_prometheus_errors_are_errors_with_the_query_and_the_text() {
        let refused = canned(
            400,
            r#"{"status":"error","errorType":"bad_data","error":"1:14: parse error: unexpected right brace"}"#,
        )
        .await;
        let spec = abgate_config_test_experiment();
        let state = ExperimentState::new(&spec, 1_000);
        let queries: BTreeMap<String, String> = [(
            "requests".to_owned(),
            "sum(x{subset=\"{subset}\"}})".to_owned(),
        )]
        .into();
        let e = observe(&client(), &spec, &state, &refused, &queries, 2_000)
            .await
            .expect_err("refused");
        let text = format!("{e:#}");
        assert!(
            text.contains("Prometheus query `sum(x{subset=\"v1-"),
            "{text}"
        );
        assert!(
            text.contains("HTTP 400 Bad Request: bad_data: 1:14: parse error"),
            "{text}"
        );

        let broken = canned(503, "upstream unavailable").await;
        let e = observe(&client(), &spec, &state, &broken, &queries, 2_000)
            .await
            .expect_err("not Prometheus");
        let text = format!("{e:#}");
        assert!(
            text.contains("HTTP 503") && text.contains("upstream unavailable"),
            "{text}"
        );

        let e = observe(
            &client(),
            &spec,
            &state,
            "ftp://127.0.0.1:1",
            &queries,
            2_000,
        )
        .await
        .expect_err("ftp");
        assert!(format!("{e:#}").contains("not an http(s) URL"), "{e:#}");
    }

    fn client() -> Client {
        Client::unrestricted()
    }

    /// An experiment loaded the way `abgate serve` loads one.
    fn abgate_config_test_experiment() -> Experiment {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: m, namespace: default}
spec:
  hosts: [llama-3.1-8b-service]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 18001}, labels: {version: a}}
  - {address: 127.0.0.1, ports: {http: 18002}, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: m, namespace: default}
spec:
  host: llama-3.1-8b-service
  subsets:
  - {name: v1-0, labels: {version: a}}
  - {name: v1-1, labels: {version: b}}
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {name: e, namespace: default}
spec:
  host: llama-3.1-8b-service
  baseline: v1-0
  traffic_split: {v1-0: 50, v1-1: 50}
  policy: classic
"#;
        let loaded = abgate_config::load_sources(&[abgate_config::SourceFile {
            path: std::sync::Arc::from(std::path::Path::new("e.yaml")),
            text: yaml.to_owned(),
        }]);
        assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
        loaded
            .config
            .experiments
            .into_iter()
            .next()
            .expect("the experiment")
    }
}
