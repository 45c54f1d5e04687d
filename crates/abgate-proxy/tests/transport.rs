//! Downstream protocols (HTTPS with SNI and ALPN, h2c), streaming responses, and
//! cancellation of upstream requests when the client goes away.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use abgate_proxy::ServeOptions;
use abgate_sim::SimArgs;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{chat_body, Backend, Gateway, Mesh, Sim, HOST};
use tokio::net::TcpStream;

const ROUTE_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: models
  namespace: default
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
"#;

// ---------------------------------------------------------------------------------------
// TLS

const TLS_CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: default
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [api.example.com]
    tls: {mode: SIMPLE, credentialName: example-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: edge-routes
  namespace: default
spec:
  hosts: [api.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
"#;

async fn tls_connect(
    addr: std::net::SocketAddr,
    trusted: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(trusted.clone())
        .expect("trust the test certificate");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("api.example.com").expect("name");
    connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with SNI api.example.com")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_gateway_terminates_tls_by_sni_for_http1_and_h2() {
    let backend = Backend::ok("v1").await;
    let certified =
        rcgen::generate_simple_self_signed(vec!["api.example.com".to_owned()]).expect("cert");
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path().join("example-cert");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("tls.crt"), certified.cert.pem()).expect("write cert");
    std::fs::write(dir.join("tls.key"), certified.signing_key.serialize_pem()).expect("key");

    let yaml = Mesh::new()
        .backend("models.backend", &[(backend.port(), "v1")])
        .doc(TLS_CONFIG)
        .yaml();
    let running = abgate_proxy::start(
        &support::load(&yaml),
        &ServeOptions {
            listen: None,
            listen_tls: Some("127.0.0.1:0".parse().expect("addr")),
            admin: "127.0.0.1:0".parse().expect("addr"),
            certs: Some(certs.path().to_path_buf()),
            access_log: None,
            otlp_endpoint: None,
            analysis_window: None,
        },
    )
    .await
    .expect("start");
    let addr = running.https_addr().expect("an HTTPS listener");
    let trusted = certified.cert.der().clone();

    // HTTP/1.1 over TLS.
    let tls = tls_connect(addr, &trusted, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("/v1/models")
                .header("host", "api.example.com")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(
        response.headers().get("x-backend").map(|v| v.as_bytes()),
        Some(&b"v1"[..])
    );
    let seen = backend.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.host(), Some("api.example.com"));

    // HTTP/2 negotiated by ALPN.
    let tls = tls_connect(addr, &trusted, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::post("https://api.example.com/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(chat_body("m", false))))
                .expect("request"),
        )
        .await
        .expect("h2 response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(backend.count(), 2);
    assert_eq!(backend.last().body, Bytes::from(chat_body("m", false)));

    running.shutdown(Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------------------
// h2c and streaming

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_client_is_served() {
    let backend = Backend::ok("v1").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(backend.port(), "v1")])
        .doc(ROUTE_VS)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    for i in 0..3 {
        let response = sender
            .send_request(
                Request::post(format!("http://{HOST}/v1/chat/completions?i={i}"))
                    .body(Full::new(Bytes::from(chat_body("m", false))))
                    .expect("request"),
            )
            .await
            .expect("h2c response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_2);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body, Bytes::from(r#"{"backend":"v1"}"#));
    }
    assert_eq!(backend.count(), 3);
    assert_eq!(backend.last().host(), Some(HOST));
    gw.stop().await;
}

async fn sim_gateway(args: SimArgs) -> (Sim, Gateway) {
    let sim = Sim::spawn(args).await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(sim.port(), "v1")])
        .doc(ROUTE_VS)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    (sim, gw)
}

fn stream_request(gw: &Gateway) -> http::request::Builder {
    gw.http
        .req("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_is_forwarded_chunk_by_chunk() {
    let (_sim, gw) = sim_gateway(SimArgs {
        model: "streamer".into(),
        ttft_ms: 100,
        tokens_per_second: 20.0,
        output_tokens: 10,
        ..SimArgs::default()
    })
    .await;
    let started = Instant::now();
    let response = gw
        .http
        .stream(stream_request(&gw), chat_body("streamer", true))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
        "{:?}",
        response.headers()
    );
    let mut body = response.into_body();
    let mut chunks: Vec<(Duration, Bytes)> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Ok(data) = frame.into_data() {
            chunks.push((started.elapsed(), data));
        }
    }
    let text: String = chunks
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the stream ends with [DONE]: {text}"
    );
    let events = text.matches("data: ").count();
    assert!(events >= 11, "10 tokens and [DONE]: {events} events");
    // Ten tokens at 20/s after a 100ms first token: ~450ms between the first token and
    // the last. A gateway that buffers the body delivers everything at once (one chunk,
    // first == last).
    let first = chunks.first().expect("a chunk").0;
    let last = chunks.last().expect("a chunk").0;
    assert!(
        chunks.len() >= 5,
        "chunks arrive separately, not coalesced: {} chunks",
        chunks.len()
    );
    assert!(
        last - first >= Duration::from_millis(300),
        "first chunk at {first:?}, last at {last:?}"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Cancellation

/// Response headers within 5s, or the test fails (a gateway that buffers the stream
/// would otherwise hold the test for the whole stream).
async fn timely<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("response headers within 5s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_stream_cancels_the_upstream_request() {
    let (sim, gw) = sim_gateway(support::long_stream()).await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let response = timely(
        sender.send_request(
            Request::post("/v1/chat/completions")
                .header("host", HOST)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(chat_body("long", true))))
                .expect("request"),
        ),
    )
    .await
    .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a first chunk");
    assert!(first.is_some());
    assert_eq!(sim.running().await, 1, "the stream is running upstream");

    // The client goes away: body, sender and connection dropped (the socket closes).
    drop(body);
    drop(sender);
    conn.abort();
    let left = sim.wait_running(0, Duration::from_secs(3)).await;
    assert_eq!(
        left, 0,
        "the upstream stream still runs after the client left"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_before_the_first_byte_cancels_the_upstream_request() {
    let (sim, gw) = sim_gateway(SimArgs {
        model: "slow".into(),
        ttft_ms: 20_000,
        ..SimArgs::default()
    })
    .await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let waiting = tokio::spawn(async move {
        sender
            .send_request(
                Request::post("/v1/chat/completions")
                    .header("host", HOST)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(chat_body("slow", false))))
                    .expect("request"),
            )
            .await
    });
    assert_eq!(
        sim.wait_running(1, Duration::from_secs(3)).await,
        1,
        "the request reached the sim"
    );
    waiting.abort();
    conn.abort();
    let left = sim.wait_running(0, Duration::from_secs(3)).await;
    assert_eq!(
        left, 0,
        "the upstream request still runs after the client left"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_reset_cancels_the_upstream_request() {
    let (sim, gw) = sim_gateway(support::long_stream()).await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let response = timely(
        sender.send_request(
            Request::post(format!("http://{HOST}/v1/chat/completions"))
                .body(Full::new(Bytes::from(chat_body("long", true))))
                .expect("request"),
        ),
    )
    .await
    .expect("response");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a first chunk");
    assert!(first.is_some());
    assert_eq!(sim.running().await, 1);
    // Dropping the body resets the stream; the connection itself stays open.
    drop(body);
    let left = sim.wait_running(0, Duration::from_secs(3)).await;
    assert_eq!(left, 0, "the upstream stream still runs after the reset");
    // The connection still serves.
    let response = sender
        .send_request(
            Request::get(format!("http://{HOST}/v1/models"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Upstream protocol and admin

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upgrade_policy_speaks_h2c_to_the_endpoints() {
    let backend = Backend::ok("v1").await;
    let yaml = Mesh::new()
        .service("models.backend", &[(backend.port(), "v1")])
        .doc(
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: upgrade
  namespace: default
spec:
  host: models.backend
  trafficPolicy:
    connectionPool:
      http: {h2UpgradePolicy: UPGRADE}
  subsets:
  - name: v1
    labels: {version: v1}
"#,
        )
        .doc(ROUTE_VS)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(backend.last().version, Version::HTTP_2);
    assert_eq!(backend.last().host(), Some(HOST), "authority upstream");
    gw.stop().await;

    // Without the policy the gateway speaks HTTP/1.1 upstream, whatever the client speaks.
    let backend = Backend::ok("v1").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(backend.port(), "v1")])
        .doc(ROUTE_VS)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.last().version, Version::HTTP_11);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_answers_health_and_readiness() {
    let backend = Backend::ok("v1").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(backend.port(), "v1")])
        .doc(ROUTE_VS)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let admin = support::Http::new(gw.running().admin);
    assert_eq!(admin.get("/healthz", &[]).await.status, StatusCode::OK);
    assert_eq!(admin.get("/readyz", &[]).await.status, StatusCode::OK);
    assert_eq!(admin.get("/nope", &[]).await.status, StatusCode::NOT_FOUND);
    assert_ne!(gw.running().admin, gw.addr);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_during_a_stream_resets_the_response_and_the_upstream() {
    let sim = Sim::spawn(support::long_stream()).await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(sim.port(), "v1")])
        .doc(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: models
  namespace: default
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
    timeout: 500ms
"#,
        )
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let started = Instant::now();
    let response = gw
        .http
        .stream(stream_request(&gw), chat_body("long", true))
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "headers come before the deadline"
    );
    let mut body = response.into_body();
    let mut data = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(frame)) => {
                    if let Ok(d) = frame.into_data() {
                        data.extend_from_slice(&d);
                    }
                }
            }
        }
    })
    .await
    .expect("the stream ends soon after the route timeout");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert!(!data.is_empty(), "some chunks came before the deadline");
    assert!(!String::from_utf8_lossy(&data).contains("[DONE]"));
    // As in Envoy, a route timeout after the response started resets the stream: the
    // client must be able to tell a cut stream from a complete one.
    assert!(
        end.is_err(),
        "the cut stream ended cleanly, indistinguishable from a complete response"
    );
    assert_eq!(sim.wait_running(0, Duration::from_secs(3)).await, 0);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_streams_still_open_after_the_grace_period() {
    let (sim, gw) = sim_gateway(support::long_stream()).await;
    let http = gw.http.clone();
    let admin = support::Http::new(gw.running().admin);
    let response = http
        .stream(stream_request(&gw), chat_body("long", true))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert!(body.frame().await.is_some());
    assert_eq!(sim.running().await, 1);

    let started = Instant::now();
    gw.stop_within(Duration::from_millis(300)).await;
    let stopped_after = started.elapsed();
    assert!(
        stopped_after >= Duration::from_millis(300) && stopped_after < Duration::from_secs(2),
        "shutdown waits for the grace period, then returns: {stopped_after:?}"
    );
    // After the grace period the stream is closed, not left running.
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the client's stream still runs after shutdown"
    );
    assert_eq!(
        sim.wait_running(0, Duration::from_secs(2)).await,
        0,
        "the upstream stream still runs after shutdown"
    );
    // Nothing listens any more.
    assert!(http
        .try_send(http.req("GET", "/"), Bytes::new())
        .await
        .is_err());
    assert!(admin
        .try_send(admin.req("GET", "/healthz"), Bytes::new())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish_within_the_grace_period() {
    let (sim, gw) = sim_gateway(SimArgs {
        model: "slowish".into(),
        ttft_ms: 300,
        output_tokens: 2,
        ..SimArgs::default()
    })
    .await;
    let http = gw.http.clone();
    let in_flight = tokio::spawn(async move { http.chat(&[]).await });
    assert_eq!(sim.wait_running(1, Duration::from_secs(3)).await, 1);
    let started = Instant::now();
    gw.stop_within(Duration::from_secs(5)).await;
    let took = started.elapsed();
    let reply = in_flight.await.expect("client task");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["model"], "slowish");
    assert!(
        took < Duration::from_secs(2),
        "shutdown returns once the last request is done, not at the end of the grace: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_100_open_streams_lets_every_stream_complete() {
    let (sim, gw) = sim_gateway(SimArgs {
        model: "streamer".into(),
        tokens_per_second: 20.0,
        output_tokens: 60,
        max_concurrency: 200,
        ..SimArgs::default()
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..100 {
        let response = gw
            .http
            .stream(stream_request(&gw), chat_body("streamer", true))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(tokio::spawn(async move {
            response.into_body().collect().await.map(|b| b.to_bytes())
        }));
    }
    // Each stream lasts 3 s; the last opened a moment ago, so all are mid-stream.
    assert!(sim.running().await > 90, "the streams are open");
    // The grace period covers them: shutdown waits for every one.
    let started = Instant::now();
    gw.stop_within(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "returns once the streams are done"
    );
    for stream in streams {
        let body = stream
            .await
            .expect("client task")
            .expect("a complete stream");
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.trim_end().ends_with("data: [DONE]"),
            "cut short: {text}"
        );
        assert!(
            text.matches("\"content\":\"").count() >= 20,
            "every token: {text}"
        );
    }
}
