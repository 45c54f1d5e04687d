//! Hostile clients and careless configurations, over real TCP: nothing a client sends can
//! count against an upstream or an experiment's variant, connections and bodies are
//! bounded in time and number, and a request that would loop is refused.

mod support;

use std::time::{Duration, Instant};

use abgate_proxy::Limits;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use support::{chat_body, load, raw, status_line, Backend, ClosedPort, Gateway, Http, Mesh, Sim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Both subsets of `models.backend`, with outlier detection that ejects an endpoint on its
/// first failure (so any failure wrongly blamed on it shows), and an experiment that
/// takes requests carrying `x-experiment-id: exp`.
fn guarded(v1: u16, v2: u16) -> String {
    Mesh::new()
        .service("models.backend", &[(v1, "v1"), (v2, "v2")])
        .doc(
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: default}
spec:
  host: models.backend
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      consecutiveGatewayErrors: 1
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rule, namespace: default}
spec:
  hosts: [models.local]
  http:
  - match:
    - uri: {prefix: /v1/slow}
    timeout: 300ms
    route:
    - destination: {host: models.backend, subset: v1}
  - match:
    - method: {exact: TRACE}
      uri: {prefix: /trace}
    route:
    - destination: {host: models.backend, subset: v1}
  - match:
    - headers:
        x-gateway-model-name: {exact: big-model}
    route:
    - destination: {host: models.backend, subset: v2}
  - route:
    - destination: {host: models.backend, subset: v1}
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {name: exp, namespace: default}
spec:
  host: models.backend
  baseline: baseline
  variants:
  - {name: baseline, subset: v1, weight: 50}
  - {name: candidate, subset: v2, weight: 50}
  match:
  - headers:
      x-experiment-id: {exact: exp}
"#,
        )
        .yaml()
}

/// The rule of `guarded` that routes on the body's `model`.
const MODEL_RULE: &str = "  - match:\n    - headers:\n        x-gateway-model-name: {exact: big-model}\n    route:\n    - destination: {host: models.backend, subset: v2}\n";

/// The experiment's evidence so far: (requests, errors) of each variant.
fn evidence(gw: &Gateway) -> [(u64, u64); 2] {
    let store = gw.running().telemetry().store();
    let now = store.window_of(Instant::now()) + 1;
    ["baseline", "candidate"].map(|variant| {
        let stats = store.cell("exp", variant).snapshot(0, now);
        (stats.count, stats.errors)
    })
}

async fn metrics(gw: &Gateway) -> String {
    Http::new(gw.running().admin)
        .get("/metrics", &[])
        .await
        .text()
}

/// `istio_requests_total` samples for `models.backend`.
async fn upstream_samples(gw: &Gateway) -> Vec<String> {
    metrics(gw)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("destination_service=\"models.backend\"")
        })
        .map(str::to_owned)
        .collect()
}

/// Every endpoint of every cluster still in rotation, never ejected, nothing in flight.
async fn assert_untouched(gw: &Gateway) {
    let json = gw.endpoints().await;
    for cluster in json["clusters"].as_array().expect("clusters") {
        for e in cluster["endpoints"].as_array().expect("endpoints") {
            assert_eq!(e["health"], "healthy", "{e}");
            assert_eq!(e["ejections"], 0, "{e}");
            assert_eq!(e["consecutive5xx"], 0, "{e}");
            assert_eq!(e["consecutiveGatewayErrors"], 0, "{e}");
            assert_eq!(e["activeRequests"], 0, "{e}");
        }
    }
}

/// A POST head for the experiment's route, with `extra` header lines.
fn head(extra: &str) -> String {
    head_to(
        "/v1/chat/completions",
        &format!("x-experiment-id: exp\r\n{extra}"),
    )
}

fn head_to(path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: models.local\r\n\
         content-type: application/json\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_broken_body_is_a_400_and_no_evidence_against_anyone() {
    let (v1, v2) = (Backend::ok("v1").await, Backend::ok("v2").await);
    let gw = Gateway::start(&guarded(v1.port(), v2.port())).await;
    let chunked = head("transfer-encoding: chunked\r\n");
    let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(40_000));
    // (what, request, flag): a body the client ended early is its going away (DC).
    let broken: Vec<(&str, String, &str)> = vec![
        (
            "bad chunk size",
            format!("{chunked}zz\r\nhello\r\n0\r\n\r\n"),
            "DPE",
        ),
        (
            "oversized extension",
            format!("{chunked}{long_extension}"),
            "DPE",
        ),
        ("chunk cut short", format!("{chunked}ff\r\nhello"), "DC"),
        (
            "body short of its length",
            format!("{}{{\"model\"", head("content-length: 500\r\n")),
            "DC",
        ),
    ];
    // Ten of each: far past the one failure that ejects an endpoint here.
    for (what, request, flag) in &broken {
        for _ in 0..10 {
            let (answer, _) = raw(gw.addr, request.as_bytes(), true).await;
            assert_eq!(
                status_line(&answer),
                "HTTP/1.1 400 Bad Request",
                "{what}: {answer}"
            );
            assert!(
                answer.contains(&format!("x-abgate-response-flags: {flag}\r\n")),
                "{what}: {answer}"
            );
            assert!(answer.contains("invalid_request_error"), "{what}: {answer}");
        }
    }
    assert_untouched(&gw).await;
    assert_eq!(evidence(&gw), [(0, 0), (0, 0)]);
    assert!(upstream_samples(&gw).await.is_empty());
    // The client errors are counted, under no destination.
    let text = metrics(&gw).await;
    for flag in ["DPE", "DC"] {
        assert!(
            text.lines().any(|l| l.starts_with("istio_requests_total{")
                && l.contains("destination_service=\"unknown\"")
                && l.contains("response_code=\"400\"")
                && l.contains(&format!("response_flags=\"{flag}\""))
                && l.ends_with(" 20")),
            "{text}"
        );
    }
    // And the upstreams serve on.
    for _ in 0..4 {
        let reply = gw.http.chat(&[("x-experiment-id", "exp")]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let [(base, base_errors), (cand, cand_errors)] = evidence(&gw);
    assert_eq!((base + cand, base_errors + cand_errors), (4, 0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_and_frees_its_upstream() {
    let (v1, v2) = (Backend::ok("v1").await, Backend::ok("v2").await);
    let limits = Limits {
        body_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let gw = Gateway::start_limited(&load(&guarded(v1.port(), v2.port())), &limits).await;
    let slow_limits = Limits {
        body_read_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    // Without routing on the model, whose body is read whole before the route is known.
    let slow_yaml = guarded(v1.port(), v2.port()).replace(MODEL_RULE, "");
    let slow_gw = Gateway::start_limited(&load(&slow_yaml), &slow_limits).await;
    for (path, extra) in [
        ("/v1/chat/completions", "transfer-encoding: chunked\r\n"),
        // Buffered (it fits), read before anything is sent upstream.
        ("/v1/chat/completions", "content-length: 100\r\n"),
        // The route's 300 ms pass while the client is still sending (under a 60 s body
        // read timeout): the client's delay, not the upstream's.
        ("/v1/slow", "transfer-encoding: chunked\r\n"),
    ] {
        // The slow route is the host's own (the experiment's rule would come first).
        let (addr, experiment) = match path {
            "/v1/slow" => (slow_gw.addr, ""),
            _ => (gw.addr, "x-experiment-id: exp\r\n"),
        };
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        let first = match extra.starts_with("transfer") {
            true => "5\r\nhello\r\n",
            false => "{\"model\":",
        };
        stream
            .write_all(
                format!("{}{first}", head_to(path, &format!("{experiment}{extra}"))).as_bytes(),
            )
            .await
            .expect("write");
        // The connection stays open: only the timer ends the wait.
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
                    break;
                }
            }
        })
        .await;
        let answer = String::from_utf8_lossy(&out);
        assert!(read.is_ok(), "{path}: an answer within 5 s: {answer}");
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 408 Request Timeout",
            "{extra}: {answer}"
        );
        assert!(answer.contains("x-abgate-response-flags: SI"), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    for gw in [gw, slow_gw] {
        assert_untouched(&gw).await;
        assert_eq!(evidence(&gw), [(0, 0), (0, 0)]);
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_is_a_cancel_not_a_failure_of_its_variant() {
    let sims = [
        Sim::spawn(support::long_stream()).await,
        Sim::spawn(support::long_stream()).await,
    ];
    let gw = Gateway::start(&guarded(sims[0].port(), sims[1].port())).await;
    for _ in 0..4 {
        let mut response = gw
            .http
            .stream(
                gw.http
                    .req("POST", "/v1/chat/completions")
                    .header("x-experiment-id", "exp")
                    .header("content-type", "application/json"),
                chat_body("long", true),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let first = tokio::time::timeout(Duration::from_secs(5), response.frame())
            .await
            .expect("a first chunk");
        assert!(first.is_some());
        drop(response);
    }
    // Wait for the cancels to be recorded (the gateway sees each on its next write).
    let cancels = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains("destination_service=\"models.backend\"")
                    && l.contains("response_flags=\"DC\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let text = metrics_until(&gw, "four DC requests", |text| cancels(text) >= 4.0).await;
    let cancels = cancels(&text);
    assert_eq!(
        cancels, 4.0,
        "each cancel is in Istio's metrics, flagged DC"
    );
    assert_eq!(evidence(&gw), [(0, 0), (0, 0)], "and none is a failure");
    assert_untouched(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_routing_reads_the_whole_body_and_refuses_an_ambiguous_model() {
    let (v1, v2) = (Backend::ok("v1").await, Backend::ok("v2").await);
    let gw = Gateway::start(&guarded(v1.port(), v2.port())).await;
    let send = |body: String| {
        gw.http.send(
            gw.http
                .req("POST", "/v1/chat/completions")
                .header("content-type", "application/json"),
            body,
        )
    };
    // A 2 MB prompt, its model last: read whole, routed by it.
    let prompt = "x".repeat(2 << 20);
    let big =
        format!(r#"{{"messages":[{{"role":"user","content":"{prompt}"}}],"model":"big-model"}}"#);
    let sent = big.len();
    let reply = send(big).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!((v1.count(), v2.count()), (0, 1));
    assert_eq!(v2.last().body.len(), sent);

    // Named twice, the backend might read the other one: refused.
    for body in [
        r#"{"model":"small","messages":[],"model":"big-model"}"#.to_owned(),
        r#"{"model":"big-model","mod\u0065l":"small"}"#.to_owned(),
        format!(r#"{{"model":"{}"}}"#, "m".repeat(2000)),
    ] {
        let reply = send(body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
        assert_eq!(reply.flags(), "DPE");
    }
    assert_eq!((v1.count(), v2.count()), (0, 1), "none of them forwarded");
    assert_untouched(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_only_pings_is_closed_when_idle() {
    let (v1, v2) = (Backend::ok("v1").await, Backend::ok("v2").await);
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let gw = Gateway::start_limited(&load(&guarded(v1.port(), v2.port())), &limits).await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    // The preface and an empty SETTINGS frame, then a PING every 50 ms.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.expect("preface");
    let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let started = Instant::now();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        // The client's own pace, not a wait for the gateway: a PING every 50 ms.
        let mut pings = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                },
                _ = pings.tick() => {
                    if stream.write_all(&ping).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "closed although it pinged");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(has_goaway(&received), "a GOAWAY before the close");
    gw.stop().await;
}

/// Whether the HTTP/2 frames in `bytes` include a GOAWAY.
fn has_goaway(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes[3] == 7 {
            return true;
        }
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_and_the_admin_listener_answers() {
    let (v1, v2) = (Backend::ok("v1").await, Backend::ok("v2").await);
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let gw = Gateway::start_limited(&load(&guarded(v1.port(), v2.port())), &limits).await;
    let held = [
        TcpStream::connect(gw.addr).await.expect("connect"),
        TcpStream::connect(gw.addr).await.expect("connect"),
    ];
    wait_for_metric(&gw, "abgate_connections_open 2").await;
    // The third is closed at once, with nothing said.
    let (answer, open) = raw(gw.addr, head("content-length: 0\r\n").as_bytes(), false).await;
    assert_eq!(answer, "");
    assert!(open < Duration::from_secs(2), "{open:?}");
    wait_for_metric(&gw, "abgate_connections_refused_total 1").await;
    let health = Http::new(gw.running().admin).get("/healthz", &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    // A place freed is a place for the next.
    drop(held);
    wait_for_metric(&gw, "abgate_connections_open 0").await;
    assert_eq!(gw.http.chat(&[]).await.status, StatusCode::OK);
    gw.stop().await;
}

async fn wait_for_metric(gw: &Gateway, line: &str) {
    metrics_until(gw, &format!("`{line}`"), |text| {
        text.lines().any(|l| l == line)
    })
    .await;
}

/// The gateway's `/metrics` once `done` holds of it; metrics can only be polled, so this
/// asks again every 20 ms, for at most 10 s.
async fn metrics_until(gw: &Gateway, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(gw).await;
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {what} in {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_would_loop_is_refused() {
    let (v1, v2) = (Backend::ok("v1").await, Backend::ok("v2").await);
    let gw = Gateway::start(&guarded(v1.port(), v2.port())).await;
    // What is forwarded says it passed through abgate.
    assert_eq!(gw.http.chat(&[]).await.status, StatusCode::OK);
    assert_eq!(v1.last().header("via"), Some("1.1 abgate"));
    // A request that went round the gateway too many times.
    let looped = vec![("via", "1.1 abgate"); 8];
    let reply = gw.http.chat(&looped).await;
    assert_eq!(reply.status, StatusCode::LOOP_DETECTED);
    assert_eq!(reply.flags(), "DPE");
    // An endpoint that is the gateway's own listener: refused before any hop.
    gw.reload(&guarded(gw.addr.port(), v2.port()));
    let started = Instant::now();
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::LOOP_DETECTED, "{}", reply.text());
    assert_eq!(reply.flags(), "NC");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(v1.count(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_expect_continue_trace_and_what_error_bodies_say() {
    let (v1, v2) = (Backend::ok("v1").await, Backend::ok("v2").await);
    let gw = Gateway::start(&guarded(v1.port(), v2.port())).await;

    let two_hosts = "GET /v1/models HTTP/1.1\r\nhost: models.local\r\nhost: other.local\r\n\r\n";
    let (answer, _) = raw(gw.addr, two_hosts.as_bytes(), false).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request", "{answer}");
    assert_eq!(v1.count(), 0);

    // `Expect: 100-continue`: one `100 Continue`, the gateway's; the backend is not asked.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let body = chat_body("m", false);
    stream
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: models.local\r\n\
                 expect: 100-continue\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("head");
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
        .await
        .expect("a 100 Continue")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).await.expect("body");
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut rest))
        .await
        .expect("the answer")
        .expect("read");
    assert_eq!(status_line(&rest), "HTTP/1.1 200 OK", "{rest}");
    assert!(!rest.contains("100 Continue"), "{rest}");
    assert_eq!(v1.last().header("expect"), None);
    assert_eq!(v1.last().body, Bytes::from(body));

    // TRACE only where a rule asks for it by name.
    let reply = gw.http.send(gw.http.req("TRACE", "/v1/models"), "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(v1.count(), 1);
    let reply = gw.http.send(gw.http.req("TRACE", "/trace"), "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(v1.count(), 2);

    // A dead upstream: the client is told what happened, not where.
    let closed = ClosedPort::new();
    gw.reload(&guarded(closed.port, v2.port()));
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = reply.text();
    assert!(text.contains("upstream connect error"), "{text}");
    assert!(!text.contains(&closed.port.to_string()), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    assert!(!text.to_lowercase().contains("tcp connect"), "{text}");
    gw.stop().await;
}

/// An API that answers 200 to whatever it is given whole.
struct Accept;

impl abgate_proxy::AdminApi for Accept {
    fn call(&self, _: abgate_proxy::ApiRequest) -> abgate_proxy::ApiFuture {
        Box::pin(async { http::Response::new(abgate_proxy::ProxyBody::empty()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_the_data_listeners_limits() {
    let (v1, v2) = (Backend::ok("v1").await, Backend::ok("v2").await);
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let gw = Gateway::start_limited(&load(&guarded(v1.port(), v2.port())), &limits).await;
    gw.running().install_api(Box::new(Accept));
    let admin = gw.running().admin;
    // A head that never completes: 408, then closed.
    let (answer, open) = raw(admin, b"GET /metrics HTTP/1.1\r\nhost: x\r\n", false).await;
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 408 Request Timeout",
        "{answer}"
    );
    assert!(open < Duration::from_secs(3), "{open:?}");
    // An API body that stops arriving: 408 too.
    let (answer, _) = raw(
        admin,
        b"POST /api/v1/experiments HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{",
        false,
    )
    .await;
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 408 Request Timeout",
        "{answer}"
    );
    gw.stop().await;
}
