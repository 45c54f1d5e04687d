//! What a rule does besides forwarding, and how it forwards: redirects, direct responses,
//! rewrites, CORS, and the DestinationRule's load balancer across a subset's endpoints.

mod support;

use std::collections::HashSet;

use http::StatusCode;
use support::{chat_body, Backend, Gateway, Mesh};

const ACTIONS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: actions, namespace: default}
spec:
  hosts: [models.local]
  http:
  - match: [{uri: {prefix: /old/}}]
    redirect: {prefixRewrite: /v1/, authority: api.example.com, scheme: https, redirectCode: 308}
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 203, body: {string: "served by the gateway"}}
  - match: [{uri: {prefix: /legacy/}}]
    rewrite: {uri: /v1/, authority: backend.internal}
    route: [{destination: {host: models.backend, subset: v1}}]
  - match: [{uri: {regex: "/models/[^/]+/chat"}}]
    rewrite: {uriRegexRewrite: {match: "^/models/([^/]+)/chat$", rewrite: "/v1/\\1/chat/completions"}}
    route: [{destination: {host: models.backend, subset: v1}}]
  - corsPolicy:
      allowOrigins: [{exact: "https://app.example.com"}]
      allowMethods: [POST, GET]
      allowHeaders: [content-type, authorization]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: models.backend, subset: v1}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_direct_responses_rewrites_and_cors() {
    let backend = Backend::ok("v1").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(backend.port(), "v1")])
        .doc(ACTIONS)
        .yaml();
    let gw = Gateway::start(&yaml).await;

    // Redirect: the matched prefix is replaced, the query kept, the code as configured.
    let reply = gw
        .http
        .send(gw.http.req("GET", "/old/models?limit=2"), "")
        .await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.header("location"),
        Some("https://api.example.com/v1/models?limit=2")
    );
    assert_eq!(backend.count(), 0);

    // Direct response.
    let reply = gw.http.send(gw.http.req("GET", "/health"), "").await;
    assert_eq!(reply.status.as_u16(), 203);
    assert_eq!(reply.text(), "served by the gateway");

    // Prefix rewrite with a new authority.
    let reply = gw
        .http
        .send(
            gw.http.req("POST", "/legacy/chat/completions?x=1"),
            chat_body("m", false),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = backend.last();
    assert_eq!(seen.path, "/v1/chat/completions?x=1");
    assert_eq!(seen.host(), Some("backend.internal"));

    // Regex rewrite with a capture group.
    gw.http
        .send(
            gw.http.req("POST", "/models/llama/chat"),
            chat_body("m", false),
        )
        .await;
    assert_eq!(backend.last().path, "/v1/llama/chat/completions");

    // CORS: an allowed preflight is answered by the gateway; a simple request gets the
    // headers; an origin not allowed gets none.
    let preflight = gw
        .http
        .req("OPTIONS", "/v1/chat/completions")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST");
    let before = backend.count();
    let reply = gw.http.send(preflight, "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("POST,GET")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("86400"));
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(backend.count(), before, "the preflight is not forwarded");
    let simple = gw
        .http
        .req("POST", "/v1/chat/completions")
        .header("origin", "https://app.example.com");
    let reply = gw.http.send(simple, chat_body("m", false)).await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let other = gw
        .http
        .req("POST", "/v1/chat/completions")
        .header("origin", "https://evil.example.com");
    let reply = gw.http.send(other, chat_body("m", false)).await;
    assert_eq!(reply.header("access-control-allow-origin"), None);
    gw.stop().await;
}

fn balanced(policy: &str, a: u16, b: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pool, namespace: default}}
spec:
  hosts: [pool.local]
  ports: [{{number: 8000, name: http}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {a}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {b}}}, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pool, namespace: default}}
spec:
  host: pool.local
  trafficPolicy:
    loadBalancer: {policy}
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pool, namespace: default}}
spec:
  hosts: [models.local]
  http:
  - route: [{{destination: {{host: pool.local, subset: v1}}}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_and_consistent_hash_keeps_a_user_on_one_endpoint() {
    let a = Backend::ok("a").await;
    let b = Backend::ok("b").await;

    let gw = Gateway::start(&balanced("{simple: ROUND_ROBIN}", a.port(), b.port())).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let reply = gw
            .http
            .send(
                gw.http.req("POST", "/v1/chat/completions"),
                chat_body("m", false),
            )
            .await;
        order.push(reply.header("x-backend").unwrap_or("?").to_owned());
    }
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    gw.stop().await;

    for algorithm in [
        "ringHash: {minimumRingSize: 1024}",
        "maglev: {tableSize: 65537}",
    ] {
        let policy = format!("{{consistentHash: {{httpHeaderName: x-user-id, {algorithm}}}}}");
        let gw = Gateway::start(&balanced(&policy, a.port(), b.port())).await;
        let mut endpoints_used = HashSet::new();
        for user in 0..40 {
            let mut seen = HashSet::new();
            for _ in 0..5 {
                let req = gw
                    .http
                    .req("POST", "/v1/chat/completions")
                    .header("x-user-id", format!("user-{user}"));
                let reply = gw.http.send(req, chat_body("m", false)).await;
                seen.insert(reply.header("x-backend").unwrap_or("?").to_owned());
            }
            assert_eq!(seen.len(), 1, "{algorithm}: user-{user} moved: {seen:?}");
            endpoints_used.extend(seen);
        }
        assert_eq!(
            endpoints_used.len(),
            2,
            "{algorithm}: 40 users spread over both endpoints"
        );
        gw.stop().await;
    }
}
