//! VirtualService match semantics through the gateway, and routing on the request body's
//! `model` (`x-gateway-model-name`).

mod support;

use http::StatusCode;
use support::{chat_body, Backend, Gateway, Mesh};

/// Every rule forwards to the same backend and names itself in the `x-rule` response
/// header, so a reply tells which rule the request took.
const MATCH_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: matching
  namespace: default
spec:
  hosts: [models.local]
  http:
  - name: header-exact
    match:
    - headers: {x-team: {exact: alpha}}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: header-exact}}}
  - name: header-prefix
    match:
    - headers: {x-team: {prefix: be}}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: header-prefix}}}
  - name: header-regex
    match:
    - headers: {x-team: {regex: "g[a-z]+a"}}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: header-regex}}}
  - name: query
    match:
    - queryParams: {variant: {exact: blue}}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: query}}}
  - name: method
    match:
    - method: {exact: PUT}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: method}}}
  - name: uri-exact
    match:
    - uri: {exact: /exact/path}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: uri-exact}}}
  - name: uri-prefix
    match:
    - uri: {prefix: /pre/}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: uri-prefix}}}
  - name: uri-regex
    match:
    - uri: {regex: "/re/[0-9]+"}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: uri-regex}}}
  - name: without-headers
    match:
    - uri: {prefix: /wo/}
      withoutHeaders: {x-block: {exact: "yes"}}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: without-headers}}}
  - name: ignore-case
    match:
    - uri: {exact: /CaseInsensitive}
      ignoreUriCase: true
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: ignore-case}}}
  - name: case-sensitive
    match:
    - uri: {exact: /CaseSensitive}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: case-sensitive}}}
  - name: first
    match:
    - headers: {x-both: {exact: "1"}}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: first}}}
  - name: second
    match:
    - headers: {x-both: {prefix: "1"}}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: second}}}
  - name: any-block
    match:
    - headers: {x-any: {exact: a}}
    - uri: {prefix: /any/}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: any-block}}}
  - name: all-conditions
    match:
    - headers: {x-all: {exact: "1"}}
      uri: {prefix: /all/}
      method: {exact: POST}
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: all-conditions}}}
  - name: default
    route: [{destination: {host: models.backend, subset: v1}}]
    headers: {response: {set: {x-rule: default}}}
"#;

async fn matching_gateway() -> (Gateway, Backend) {
    let backend = Backend::ok("v1").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(backend.port(), "v1")])
        .doc(MATCH_VS)
        .yaml();
    (Gateway::start(&yaml).await, backend)
}

/// A request (method, path, headers) and the rule it must take.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

/// Sends each case and checks the rule it took.
async fn expect_rules(gw: &Gateway, cases: &[Case<'_>]) {
    let mut wrong = Vec::new();
    for (method, path, headers, rule) in cases {
        let mut req = gw.http.req(method, path);
        for (k, v) in *headers {
            req = req.header(*k, *v);
        }
        let reply = gw.http.send(req, bytes::Bytes::new()).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{method} {path}: {}",
            reply.text()
        );
        let got = reply.header("x-rule").unwrap_or("<none>");
        if got != *rule {
            wrong.push(format!(
                "{method} {path} {headers:?}: took {got}, expected {rule}"
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong rules:\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_exact_prefix_and_regex_matches() {
    let (gw, _b) = matching_gateway().await;
    expect_rules(
        &gw,
        &[
            ("GET", "/", &[("x-team", "alpha")], "header-exact"),
            ("GET", "/", &[("x-team", "alphabet")], "default"),
            ("GET", "/", &[("x-team", "Alpha")], "default"),
            ("GET", "/", &[("x-team", "beta")], "header-prefix"),
            ("GET", "/", &[("x-team", "be")], "header-prefix"),
            ("GET", "/", &[("x-team", "abe")], "default"),
            ("GET", "/", &[("x-team", "gamma")], "header-regex"),
            // Regex matches are whole-value (RE2 full match), not substring.
            ("GET", "/", &[("x-team", "gammax")], "default"),
            ("GET", "/", &[("x-team", "xgamma")], "default"),
            ("GET", "/", &[], "default"),
        ],
    )
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_param_and_method_matches() {
    let (gw, _b) = matching_gateway().await;
    expect_rules(
        &gw,
        &[
            ("GET", "/q?variant=blue", &[], "query"),
            ("GET", "/q?a=1&variant=blue&b=2", &[], "query"),
            ("GET", "/q?variant=bluegreen", &[], "default"),
            ("GET", "/q?notvariant=blue", &[], "default"),
            ("PUT", "/m", &[], "method"),
            ("POST", "/m", &[], "default"),
        ],
    )
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_exact_prefix_regex_and_ignore_uri_case() {
    let (gw, backend) = matching_gateway().await;
    expect_rules(
        &gw,
        &[
            ("GET", "/exact/path", &[], "uri-exact"),
            ("GET", "/exact/path/more", &[], "default"),
            // The query string is not part of the path a uri match sees.
            ("GET", "/exact/path?x=1", &[], "uri-exact"),
            ("GET", "/pre/anything", &[], "uri-prefix"),
            ("GET", "/pre", &[], "default"),
            ("GET", "/re/123", &[], "uri-regex"),
            ("GET", "/re/12a", &[], "default"),
            ("GET", "/x/re/1", &[], "default"),
            ("GET", "/caseinsensitive", &[], "ignore-case"),
            ("GET", "/CASEINSENSITIVE", &[], "ignore-case"),
            ("GET", "/CaseSensitive", &[], "case-sensitive"),
            ("GET", "/casesensitive", &[], "default"),
        ],
    )
    .await;
    // The path is forwarded as the client sent it.
    assert!(
        backend
            .requests()
            .iter()
            .any(|s| s.path == "/exact/path?x=1"),
        "{:?}",
        backend
            .requests()
            .iter()
            .map(|s| s.path.clone())
            .collect::<Vec<_>>()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_headers_excludes_matching_requests() {
    let (gw, _b) = matching_gateway().await;
    expect_rules(
        &gw,
        &[
            ("GET", "/wo/x", &[], "without-headers"),
            ("GET", "/wo/x", &[("x-block", "no")], "without-headers"),
            ("GET", "/wo/x", &[("x-block", "yes")], "default"),
        ],
    )
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_matching_rule_wins_and_any_match_block_suffices() {
    let (gw, _b) = matching_gateway().await;
    expect_rules(
        &gw,
        &[
            // Both `first` and `second` match "1"; the earlier rule takes it.
            ("GET", "/", &[("x-both", "1")], "first"),
            ("GET", "/", &[("x-both", "12")], "second"),
            // Either block of `any-block` is enough.
            ("GET", "/", &[("x-any", "a")], "any-block"),
            ("GET", "/any/thing", &[], "any-block"),
            ("GET", "/other", &[("x-any", "b")], "default"),
            // Within one block every condition must hold.
            ("POST", "/all/x", &[("x-all", "1")], "all-conditions"),
            ("GET", "/all/x", &[("x-all", "1")], "default"),
            ("POST", "/all/x", &[], "default"),
            ("POST", "/nope", &[("x-all", "1")], "default"),
        ],
    )
    .await;
    gw.stop().await;
}

const MODEL_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: models
  namespace: default
spec:
  hosts: [models.local]
  http:
  - name: by-model
    match:
    - headers: {x-gateway-model-name: {exact: llama-big}}
    route:
    - destination: {host: models.backend, subset: v2}
      headers:
        request:
          set: {x-gateway-model-name: served-big}
  - name: default
    route:
    - destination: {host: models.backend, subset: v1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_model_routes_through_model_header_and_destination_rewrites_it() {
    let v1 = Backend::ok("v1").await;
    let v2 = Backend::ok("v2").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(v1.port(), "v1"), (v2.port(), "v2")])
        .doc(MODEL_VS)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let post = |model: &str| {
        let req = gw
            .http
            .req("POST", "/v1/chat/completions")
            .header("content-type", "application/json");
        (req, chat_body(model, false))
    };

    // The body's `model` picks the rule; the destination serves it under another name.
    let (req, body) = post("llama-big");
    let reply = gw.http.send(req, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-backend"), Some("v2"));
    let seen = v2.last();
    let forwarded: serde_json::Value = serde_json::from_slice(&seen.body).expect("JSON body");
    assert_eq!(
        forwarded["model"], "served-big",
        "forwarded body: {forwarded}"
    );
    // The rest of the body is kept.
    assert_eq!(forwarded["messages"][0]["content"], "say something");
    assert_eq!(forwarded["temperature"], 0.5);
    // The content length describes the rewritten body.
    if let Some(len) = seen.header("content-length") {
        assert_eq!(len.parse::<usize>().ok(), Some(seen.body.len()));
    }

    // Another model takes the default rule, with its body untouched.
    let (req, body) = post("llama-small");
    let reply = gw.http.send(req, body.clone()).await;
    assert_eq!(reply.header("x-backend"), Some("v1"));
    assert_eq!(v1.last().body, bytes::Bytes::from(body));
    assert_eq!(v2.count(), 1);

    // A client cannot claim a model its body does not name.
    let (req, _) = post("unused");
    let body = r#"{"messages":[{"role":"user","content":"hi"}]}"#.to_owned();
    let reply = gw
        .http
        .send(req.header("x-gateway-model-name", "llama-big"), body)
        .await;
    assert_eq!(reply.header("x-backend"), Some("v1"));
    assert_eq!(v2.count(), 1);
    gw.stop().await;
}

/// A destination that sets `x-gateway-model-name` rewrites the body even when no rule
/// matches on the model (the body is then read only for the rewrite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_model_header_rewrites_forwarded_body_model() {
    let v1 = Backend::ok("v1").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(v1.port(), "v1")])
        .doc(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: rewrite
  namespace: default
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
      headers:
        request:
          set: {x-gateway-model-name: other-name}
"#,
        )
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let forwarded: serde_json::Value = serde_json::from_slice(&v1.last().body).expect("JSON");
    assert_eq!(forwarded["model"], "other-name");
    gw.stop().await;
}
