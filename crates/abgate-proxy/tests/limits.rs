//! Hostile and broken input: oversized heads and bodies, slow clients, malformed
//! requests, too many HTTP/2 streams, and an upstream that does not speak HTTP.

mod support;

use std::time::{Duration, Instant};

use abgate_proxy::Limits;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{chat_body, load, raw, status_line, Backend, Gateway, Mesh, HOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rule, namespace: default}
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
"#;

async fn gateway(port: u16, limits: Limits) -> Gateway {
    let yaml = Mesh::new()
        .backend("models.backend", &[(port, "v1")])
        .doc(VS)
        .yaml();
    Gateway::start_limited(&load(&yaml), &limits).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_or_too_many_headers_get_431() {
    let backend = Backend::ok("v1").await;
    let gw = gateway(
        backend.port(),
        Limits {
            max_header_bytes: 8192,
            max_headers: 20,
            ..Limits::default()
        },
    )
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nhost: {HOST}\r\nx-big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let (answer, _) = raw(gw.addr, big.as_bytes(), false).await;
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let mut many = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n");
    for i in 0..30 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (answer, _) = raw(gw.addr, many.as_bytes(), false).await;
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Within the limits all is well.
    let fine = format!(
        "GET / HTTP/1.1\r\nhost: {HOST}\r\nx-ok: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(4000)
    );
    let (answer, _) = raw(gw.addr, fine.as_bytes(), false).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
    assert_eq!(backend.count(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_gets_413_declared_or_streamed() {
    let backend = Backend::ok("v1").await;
    let gw = gateway(
        backend.port(),
        Limits {
            max_request_body: 1000,
            ..Limits::default()
        },
    )
    .await;
    // Declared too large: refused before reading it, never forwarded.
    let reply = gw
        .http
        .send(
            gw.http.req("POST", "/v1/chat/completions"),
            vec![b'x'; 2000],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.flags(), "DPE");
    assert_eq!(reply.openai_error()["code"], "request_too_large");
    assert_eq!(backend.count(), 0);

    // Chunked, so only known while streaming it.
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {HOST}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..5 {
        request.extend_from_slice(format!("{:x}\r\n{}\r\n", 400, "y".repeat(400)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (answer, _) = raw(gw.addr, &request, false).await;
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 413 Payload Too Large",
        "{answer}"
    );
    assert!(answer.contains("request_too_large"), "{answer}");

    // A chunked body within the limit goes through.
    let small = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {HOST}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        900,
        "z".repeat(900)
    );
    let (answer, _) = raw(gw.addr, small.as_bytes(), false).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    assert_eq!(backend.last().body.len(), 900);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_408_at_the_header_read_timeout() {
    let backend = Backend::ok("v1").await;
    let gw = gateway(
        backend.port(),
        Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    )
    .await;
    // Half a head, then silence; and a connection that sends nothing at all: each gets
    // a 408 with an OpenAI-style error, then the connection closes.
    for sent in [format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n"), String::new()] {
        let (answer, open) = raw(gw.addr, sent.as_bytes(), false).await;
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 408 Request Timeout",
            "{sent:?}"
        );
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let error: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(error["error"]["code"], "request_timeout", "{body}");
        assert!(
            open >= Duration::from_millis(250) && open < Duration::from_secs(2),
            "closed after {open:?}"
        );
    }

    // A kept-alive connection idle for longer than the timeout is closed, silently: a
    // 408 there could be read as the answer to a request the client sends meanwhile.
    // Bytes of a next request after the response, though, are a request under way.
    for next in ["", "GET / HTTP/1.1\r\n"] {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream
            .write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let started = Instant::now();
        let mut out = vec![0; 4096];
        let n = stream.read(&mut out).await.expect("read");
        let first = String::from_utf8_lossy(&out[..n]).into_owned();
        assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
        stream.write_all(next.as_bytes()).await.expect("write");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest);
        if next.is_empty() {
            assert_eq!(rest, "", "an idle connection is closed without an answer");
        } else {
            assert_eq!(status_line(&rest), "HTTP/1.1 408 Request Timeout", "{rest}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "closed once idle: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(backend.count(), 2);
    gw.stop().await;

    // The timeout is for reading a head: a response slower than it is not cut.
    let slow = Backend::slow("v1", Duration::from_millis(900)).await;
    let gw = gateway(
        slow.port(),
        Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    )
    .await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.elapsed >= Duration::from_millis(900));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let backend = Backend::ok("v1").await;
    let gw = gateway(backend.port(), Limits::default()).await;
    for request in [
        format!("GET / HTTP/1.1\r\nhost {HOST}\r\n\r\n"),
        "\u{1}\u{2}\u{3} nonsense\r\n\r\n".to_owned(),
        format!(
            "GET / HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello"
        ),
        format!("GET / HTTP/9.9\r\nhost: {HOST}\r\n\r\n"),
    ] {
        let (answer, _) = raw(gw.addr, request.as_bytes(), false).await;
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 400 Bad Request",
            "{request:?} → {answer:?}"
        );
    }
    assert_eq!(backend.count(), 0);
    gw.stop().await;
}

/// Opens an h2c connection and sends six slow requests at once on it, after `settle`
/// (time for the server's SETTINGS to arrive); returns each outcome.
async fn six_streams(gw: &Gateway, settle: Duration) -> Vec<Result<StatusCode, String>> {
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    tokio::time::sleep(settle).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let mut sender = sender.clone();
        set.spawn(async move {
            let response = sender
                .send_request(
                    Request::post(format!("http://{HOST}/v1/chat/completions?i={i}"))
                        .body(Full::new(Bytes::from(chat_body("m", false))))
                        .expect("request"),
                )
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = response.status();
            let _ = response.into_body().collect().await;
            Ok(status)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = set.join_next().await {
        outcomes.push(outcome.expect("task"));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_gets_at_most_max_concurrent_streams_at_once() {
    let backend = Backend::slow("v1", Duration::from_millis(300)).await;
    let gw = gateway(
        backend.port(),
        Limits {
            max_concurrent_streams: 2,
            ..Limits::default()
        },
    )
    .await;
    // Streams opened before the client knows the limit: the server refuses those past
    // it with RST_STREAM(REFUSED_STREAM) (safe to retry: never processed).
    let outcomes = six_streams(&gw, Duration::ZERO).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Ok(StatusCode::OK))
            || o.as_ref().is_err_and(|e| e.contains("REFUSED_STREAM"))),
        "{outcomes:?}"
    );
    assert!(backend.peak() <= 2, "peak {}", backend.peak());

    // A client that knows the limit queues its streams: all succeed, two at a time.
    let before = backend.count();
    let started = Instant::now();
    let outcomes = six_streams(&gw, Duration::from_millis(200)).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Ok(StatusCode::OK))),
        "{outcomes:?}"
    );
    assert_eq!(backend.count() - before, 6);
    assert_eq!(backend.peak(), 2, "two streams at a time");
    assert!(started.elapsed() >= Duration::from_millis(200 + 850));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_garbage_gets_502_upe() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let gw = gateway(port, Limits::default()).await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.flags(), "UPE");
    let error = reply.openai_error();
    assert_eq!(error["code"], "upstream_protocol_error", "{error}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_header_list_over_the_limit_gets_431() {
    let backend = Backend::ok("v1").await;
    let gw = gateway(
        backend.port(),
        Limits {
            max_header_bytes: 8192,
            ..Limits::default()
        },
    )
    .await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    // Let the server's SETTINGS arrive first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = sender
        .send_request(
            Request::get(format!("http://{HOST}/"))
                .header("x-big", "a".repeat(20_000))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await;
    // The h2 server answers 431 itself for a header list beyond the advertised
    // SETTINGS_MAX_HEADER_LIST_SIZE.
    assert_eq!(
        r.expect("a response").status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(backend.count(), 0);
    gw.stop().await;
}
