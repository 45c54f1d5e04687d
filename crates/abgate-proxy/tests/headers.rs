//! Header operations at route and destination level, and the seed configuration served
//! end to end (its `x-model-version` response header and its routes).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abgate_config::SourceFile;
use abgate_proxy::ServeOptions;
use http::StatusCode;
use support::{Backend, Gateway, Mesh, Sim};

const HEADERS_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: headers
  namespace: default
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
      headers:
        request:
          set: {x-dest-set: dest}
          add: {x-dest-add: dest}
          remove: [x-dest-remove]
        response:
          set: {x-dest-response: dest}
          remove: [x-backend]
    headers:
      request:
        set: {x-route-set: route, x-overwritten: route}
        add: {x-route-add: route}
        remove: [x-route-remove]
      response:
        set: {x-route-response: route}
        add: {x-route-response-add: route}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_destination_header_operations_apply_both_ways() {
    let backend = Backend::ok("v1").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(backend.port(), "v1")])
        .doc(HEADERS_VS)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let req = gw
        .http
        .req("GET", "/h")
        .header("x-overwritten", "client")
        .header("x-route-add", "client")
        .header("x-dest-add", "client")
        .header("x-route-remove", "gone")
        .header("x-dest-remove", "gone")
        .header("x-kept", "kept");
    let reply = gw.http.send(req, bytes::Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);

    let seen = backend.last();
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect()
    };
    assert_eq!(all("x-route-set"), ["route"]);
    assert_eq!(
        all("x-overwritten"),
        ["route"],
        "set replaces the client's value"
    );
    assert_eq!(all("x-route-add"), ["client", "route"], "add appends");
    assert_eq!(all("x-dest-set"), ["dest"]);
    assert_eq!(all("x-dest-add"), ["client", "dest"]);
    assert!(all("x-route-remove").is_empty(), "route-level remove");
    assert!(all("x-dest-remove").is_empty(), "destination-level remove");
    assert_eq!(all("x-kept"), ["kept"]);
    // What the gateway adds for every forwarded request.
    assert!(seen.header("x-request-id").is_some_and(|v| !v.is_empty()));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.host(), Some("models.local"));

    assert_eq!(reply.header("x-route-response"), Some("route"));
    assert_eq!(reply.header("x-route-response-add"), Some("route"));
    assert_eq!(reply.header("x-dest-response"), Some("dest"));
    assert_eq!(
        reply.header("x-backend"),
        None,
        "destination-level response remove"
    );
    assert_eq!(
        reply.header("x-request-id"),
        seen.header("x-request-id"),
        "the response carries the request id sent upstream"
    );
    gw.stop().await;
}

/// The seed's model servers: (port in service-entries.yaml, model name of its sim).
const SEED_ENDPOINTS: [(u16, &str); 6] = [
    (18001, "llama-3.1-8b-stable"),
    (18002, "llama-3.1-8b-v1-0"),
    (18003, "llama-3.1-8b-v1-1"),
    (18004, "llama-3.1-8b-long-context"),
    (18011, "llama-3.1-70b-production"),
    (18012, "llama-3.1-70b-canary"),
];

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_config_routes_experiment_canary_and_default_and_sets_model_version() {
    // One sim per seed endpoint; the seed's fixed ports are replaced by the sims' ports in
    // the ServiceEntry text only. The Gateway, VirtualService and DestinationRules are the
    // seed's files unchanged.
    let mut sims = Vec::new();
    let mut entries =
        std::fs::read_to_string(seed_dir().join("service-entries.yaml")).expect("seed SEs");
    for (port, model) in SEED_ENDPOINTS {
        let sim = Sim::model(model).await;
        let fixed = format!("{{http: {port}}}");
        assert!(entries.contains(&fixed), "service-entries.yaml has {fixed}");
        entries = entries.replace(&fixed, &format!("{{http: {}}}", sim.port()));
        sims.push(sim);
    }
    let mut files = Vec::new();
    for name in ["llm-gateway.yaml", "destination-rules.yaml"] {
        let path = seed_dir().join(name);
        let text = std::fs::read_to_string(&path).expect("seed file");
        files.push(SourceFile {
            path: Arc::from(path.as_path()),
            text,
        });
    }
    files.push(SourceFile {
        path: Arc::from(seed_dir().join("service-entries.yaml").as_path()),
        text: entries,
    });
    let loaded = abgate_config::load_sources(&files);
    assert!(!loaded.config.gateways.is_empty() && !loaded.config.virtual_services.is_empty());

    // The seed's HTTPS server names a credential; with no --certs it is skipped, and the
    // gateway still starts.
    let running = abgate_proxy::start(
        &loaded.config,
        &ServeOptions {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            listen_tls: None,
            admin: "127.0.0.1:0".parse().expect("addr"),
            certs: None,
            access_log: None,
            otlp_endpoint: None,
            analysis_window: None,
        },
    )
    .await
    .expect("the seed starts without certificates");
    assert!(running.https_addr().is_none(), "{:?}", running.listeners);
    assert!(
        running.listeners.iter().all(|(_, _, tls)| !tls),
        "{:?}",
        running.listeners
    );
    let gw = Gateway::from_running(running);
    let seed_host = "api.llm-platform.com";
    let chat = |headers: Vec<(&'static str, &'static str)>| {
        let http = gw.http.clone();
        async move {
            let mut req = http
                .req_for(seed_host, "POST", "/v1/chat/completions")
                .header("content-type", "application/json");
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let reply = http.send(req, support::chat_body("any", false)).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let model = reply.json()["model"].as_str().expect("model").to_owned();
            (model, reply.header("x-model-version").map(str::to_owned))
        }
    };

    // A/B route: 50/50 across subsets v1-0 and v1-1, x-model-version set. (The rule's
    // 0.1% 5s delay fault may slow one request; it cannot fail it.)
    let mut ab: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (model, version) = chat(vec![("x-experiment-id", "model-comparison-v1")]).await;
        assert_eq!(version.as_deref(), Some("ab-test-v1"));
        *ab.entry(model).or_default() += 1;
    }
    assert_eq!(
        ab.keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        ["llama-3.1-8b-v1-0", "llama-3.1-8b-v1-1"].into(),
        "A/B traffic reaches exactly both subsets: {ab:?}"
    );

    // Canary route: the 70b canary (the duplicate DestinationRule is refused, so the first
    // one's canary subset stands).
    for _ in 0..5 {
        let (model, version) = chat(vec![("x-canary-user", "true")]).await;
        assert_eq!(model, "llama-3.1-70b-canary");
        assert_eq!(version, None);
    }
    // Default route: the 8b stable subset.
    for _ in 0..5 {
        let (model, version) = chat(vec![]).await;
        assert_eq!(model, "llama-3.1-8b-stable");
        assert_eq!(version, None);
    }
    // Long-context feature flag.
    let (model, _) = chat(vec![("x-feature-long-context", "enabled")]).await;
    assert_eq!(model, "llama-3.1-8b-long-context");

    // A host the seed's Gateway does not serve.
    let req = gw.http.req_for("other.example.com", "GET", "/v1/models");
    let reply = gw.http.send(req, bytes::Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.flags(), "NR");
    gw.stop().await;
    drop(sims);
}
