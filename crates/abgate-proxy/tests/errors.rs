//! Failure statuses, Envoy response flags and OpenAI-shaped error bodies.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{fill, Backend, ClosedPort, Gateway, Mesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: errors
  namespace: default
spec:
  hosts: [models.local]
  http:
  - match:
    - headers: {x-case: {exact: ok}}
    route: [{destination: {host: models.backend, subset: v1}}]
  - match:
    - headers: {x-case: {exact: undefined-subset}}
    route: [{destination: {host: models.backend, subset: v9}}]
  - match:
    - headers: {x-case: {exact: empty-subset}}
    route: [{destination: {host: models.backend, subset: empty}}]
  - match:
    - headers: {x-case: {exact: dead-no-retries}}
    route: [{destination: {host: dead.backend, subset: v1}}]
    retries: {attempts: 0}
  - match:
    - headers: {x-case: {exact: dead-retries}}
    route: [{destination: {host: dead.backend, subset: v1}}]
    retries: {attempts: 2, retryOn: connect-failure}
  - match:
    - headers: {x-case: {exact: dead-default}}
    route: [{destination: {host: dead.backend, subset: v1}}]
"#;

/// The gateway, the backend of subset v1, and the two closed ports of `dead.backend`.
async fn errors_gateway() -> (Gateway, Backend, [ClosedPort; 2]) {
    let backend = Backend::ok("v1").await;
    let dead = [ClosedPort::new(), ClosedPort::new()];
    let yaml = Mesh::new()
        .service("models.backend", &[(backend.port(), "v1")])
        .subsets("models.backend", &["v1", "empty"])
        .backend(
            "dead.backend",
            &[(dead[0].port, "v1"), (dead[1].port, "v1")],
        )
        .doc(&fill(VS, &[]))
        .yaml();
    (Gateway::start(&yaml).await, backend, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_rule_or_host_is_404_nr() {
    let (gw, backend, _dead) = errors_gateway().await;
    // Sanity: the configured route works.
    let reply = gw.http.get("/", &[("x-case", "ok")]).await;
    assert_eq!(reply.status, StatusCode::OK);

    let reply = gw.http.get("/v1/models", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.flags(), "NR");
    let error = reply.openai_error();
    assert_eq!(error["code"], "no_route");
    assert_eq!(error["type"], "invalid_request_error");

    // A host no VirtualService serves.
    let req = gw
        .http
        .req_for("unknown.local", "GET", "/")
        .header("x-case", "ok");
    let reply = gw.http.send(req, bytes::Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.flags(), "NR");
    reply.openai_error();
    assert_eq!(backend.count(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_subset_is_503_nc_naming_host_and_subset() {
    let (gw, _b, _dead) = errors_gateway().await;
    let reply = gw.http.get("/", &[("x-case", "undefined-subset")]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.flags(), "NC");
    let error = reply.openai_error();
    assert_eq!(error["code"], "no_cluster");
    assert_eq!(error["type"], "server_error");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("models.backend") && message.contains("v9"),
        "{message}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_without_endpoints_is_503_uh() {
    let (gw, _b, _dead) = errors_gateway().await;
    let reply = gw.http.get("/", &[("x-case", "empty-subset")]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.flags(), "UH");
    let error = reply.openai_error();
    assert_eq!(error["code"], "no_healthy_upstream");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("models.backend/empty")),
        "{error}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_503_uf_and_urx_after_retries() {
    let (gw, _b, _dead) = errors_gateway().await;

    let reply = gw.http.get("/", &[("x-case", "dead-no-retries")]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.flags(), "UF", "no retries configured");
    assert_eq!(reply.openai_error()["code"], "upstream_connect_failure");

    for case in ["dead-retries", "dead-default"] {
        let reply = gw.http.get("/", &[("x-case", case)]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{case}");
        let flags = reply.flag_list();
        assert!(
            flags.contains(&"UF") && flags.contains(&"URX"),
            "{case}: flags {flags:?}"
        );
        reply.openai_error();
        assert!(
            reply.elapsed < Duration::from_secs(2),
            "{case}: {:?}",
            reply.elapsed
        );
    }
    gw.stop().await;
}

/// Writes raw bytes to the gateway and reads until the gateway closes the connection.
async fn raw_exchange(gw: &Gateway, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // Stop once the whole body announced by content-length is in.
                    let text = String::from_utf8_lossy(&out);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        });
                        if len.is_some_and(|len| body.len() >= len) {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no complete answer: {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_host_is_400() {
    let (gw, backend, _dead) = errors_gateway().await;
    for request in [
        &b"GET /v1/models HTTP/1.1\r\nx-case: ok\r\nconnection: close\r\n\r\n"[..],
        &b"GET /v1/models HTTP/1.0\r\nx-case: ok\r\n\r\n"[..],
    ] {
        let answer = raw_exchange(&gw, request).await;
        let status_line = answer.lines().next().unwrap_or_default();
        assert!(
            status_line.contains(" 400 "),
            "{:?}: {answer}",
            String::from_utf8_lossy(request)
        );
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON error body");
        assert_eq!(json["error"]["type"], "invalid_request_error", "{json}");
        for key in ["message", "param", "code"] {
            assert!(json["error"].get(key).is_some(), "{json}");
        }
    }
    assert_eq!(backend.count(), 0);
    gw.stop().await;
}
