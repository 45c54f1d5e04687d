//! Traces and the access log: W3C and B3 contexts continue through the gateway, spans
//! reach an OTLP/HTTP collector with parent and child linked, and each request leaves one
//! JSON line with Envoy's fields and the LLM ones.

mod support;

use std::time::Duration;

use abgate_proxy::{AccessLogTarget, ServeOptions};
use support::{chat_body, load, Backend, Gateway, Mesh, Sim};

const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: models, namespace: default}
spec:
  hosts: [models.local]
  http:
  - name: recorded
    match: [{headers: {x-to: {exact: recorder}}}]
    route: [{destination: {host: models.backend, subset: v2}}]
  - name: sim
    route: [{destination: {host: models.backend, subset: v1}}]
"#;

fn spans_of(collector: &Backend) -> Vec<serde_json::Value> {
    collector
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/traces")
        .flat_map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).expect("OTLP JSON");
            body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_through_the_gateway_and_spans_link_parent_and_child() {
    let sim = Sim::model("served-model").await;
    let recorder = Backend::ok("recorder").await;
    let collector = Backend::ok("collector").await;
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log_path = log_dir.path().join("access.log");
    let yaml = Mesh::new()
        .backend(
            "models.backend",
            &[(sim.port(), "v1"), (recorder.port(), "v2")],
        )
        .doc(VS)
        .yaml();
    let running = abgate_proxy::start(
        &load(&yaml),
        &ServeOptions {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            listen_tls: None,
            admin: "127.0.0.1:0".parse().expect("addr"),
            certs: None,
            access_log: Some(AccessLogTarget::File(log_path.clone())),
            otlp_endpoint: Some(format!("http://{}", collector.addr)),
            analysis_window: None,
        },
    )
    .await
    .expect("start");
    let gw = Gateway::from_running(running);

    // W3C: the upstream sees the caller's trace with the gateway's span as parent.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let req = gw
        .http
        .req("POST", "/v1/chat/completions")
        .header("x-to", "recorder")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"));
    let reply = gw.http.send(req, chat_body("m", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = recorder.last();
    let upstream_tp = seen
        .header("traceparent")
        .expect("traceparent propagated")
        .to_owned();
    let parts: Vec<&str> = upstream_tp.split('-').collect();
    assert_eq!(parts[1], caller_trace);
    assert_ne!(
        parts[2], caller_span,
        "the upstream's parent is the gateway's attempt span"
    );

    // B3: continued and propagated as B3.
    let req = gw
        .http
        .req("POST", "/v1/chat/completions")
        .header("x-to", "recorder")
        .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
        .header("x-b3-spanid", "e457b5a2e4d86bd1")
        .header("x-b3-sampled", "1");
    let reply = gw.http.send(req, chat_body("m", false)).await;
    assert_eq!(reply.status, 200);
    let seen = recorder.last();
    assert_eq!(
        seen.header("x-b3-traceid"),
        Some("80f198ee56343ba864fe8b2a57d3eff7")
    );
    assert!(seen.header("x-b3-parentspanid").is_some());

    // A completion through the sim, for the access log's LLM fields.
    let req = gw
        .http
        .req("POST", "/v1/chat/completions")
        .header("content-type", "application/json");
    let reply = gw.http.send(req, chat_body("m", false)).await;
    assert_eq!(reply.status, 200);
    let request_id = reply
        .header("x-request-id")
        .expect("x-request-id")
        .to_owned();

    // Spans arrive at the collector (batched within a fraction of a second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut spans = spans_of(&collector);
    while spans.len() < 6 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        spans = spans_of(&collector);
    }
    let of_trace: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["traceId"] == caller_trace)
        .collect();
    let server = of_trace
        .iter()
        .find(|s| s["kind"] == 2)
        .expect("a server span");
    let client = of_trace
        .iter()
        .find(|s| s["kind"] == 3)
        .expect("a client span");
    assert_eq!(
        server["parentSpanId"], caller_span,
        "the server span's parent is the caller's span"
    );
    assert_eq!(
        client["parentSpanId"], server["spanId"],
        "the attempt's parent is the server span"
    );
    assert_eq!(
        client["spanId"], parts[2],
        "the upstream's traceparent names the attempt span"
    );

    // The access log has one line per request, with the LLM fields on the completion.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut lines = Vec::new();
    while lines.len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    let entry: serde_json::Value = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .find(|e| e["request_id"] == request_id.as_str())
        .expect("the completion's line");
    assert_eq!(entry["response_code"], 200);
    assert_eq!(entry["response_flags"], "-");
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["path"], "/v1/chat/completions");
    assert_eq!(entry["route_name"], "default/models sim");
    assert_eq!(entry["upstream_host"], format!("127.0.0.1:{}", sim.port()));
    assert_eq!(entry["upstream_cluster"], "models.backend/v1");
    assert_eq!(entry["completion_tokens"], 2);
    assert!(entry["prompt_tokens"].as_u64().is_some_and(|n| n >= 1));
    assert!(entry["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    gw.stop().await;
}
