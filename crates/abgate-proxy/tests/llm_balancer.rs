//! The LLM-aware load balancer (`abgate.dev/load-balancer: llm-aware` on a
//! DestinationRule): endpoints' own queue and KV-cache figures, read from their
//! `/metrics`, steer traffic; when they cannot be read, least request does.

mod support;

use std::time::{Duration, Instant};

use abgate_sim::SimArgs;
use http::StatusCode;
use support::{chat_body, Gateway, Http, Mesh, Sim};

/// Three model servers that serve two requests at a time and queue the rest, each
/// answering in about 100 ms under its own model name.
async fn servers() -> [Sim; 3] {
    let sim = |model: &str| {
        Sim::spawn(SimArgs {
            model: model.into(),
            ttft_ms: 100,
            output_tokens: 2,
            max_concurrency: 2,
            queue: true,
            ..SimArgs::default()
        })
    };
    [sim("a").await, sim("b").await, sim("c").await]
}

fn config(sims: &[Sim; 3], annotations: &str) -> String {
    let endpoints: Vec<(u16, &str)> = sims.iter().map(|s| (s.port(), "v1")).collect();
    Mesh::new()
        .service("models.backend", &endpoints)
        .doc(&format!(
            "apiVersion: networking.istio.io/v1\n\
             kind: DestinationRule\n\
             metadata:\n  name: dr\n  namespace: default\n  annotations:\n{annotations}\n\
             spec:\n  host: models.backend\n  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n"
        ))
        .doc(
            "apiVersion: networking.istio.io/v1\n\
             kind: VirtualService\n\
             metadata: {name: rule, namespace: default}\n\
             spec:\n  hosts: [models.local]\n  http:\n  - route:\n    - destination: {host: models.backend}\n",
        )
        .yaml()
}

/// How `/endpoints` lists the server on `port`.
async fn listed(gw: &Gateway, port: u16) -> serde_json::Value {
    gw.endpoint("models.backend", port).await
}

/// Polls the listing of `port` until `ok` holds of it, or panics after 5 s.
async fn wait_listed(gw: &Gateway, port: u16, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let endpoint = listed(gw, port).await;
        if ok(&endpoint) {
            return;
        }
        assert!(Instant::now() < deadline, "never came true: {endpoint}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` chats at once through the gateway; the model of each answer.
async fn models_answering(gw: &Gateway, n: usize) -> Vec<String> {
    let sends: Vec<_> = (0..n)
        .map(|_| {
            let http = gw.http.clone();
            tokio::spawn(async move { http.chat(&[]).await })
        })
        .collect();
    let mut models = Vec::new();
    for send in sends {
        let reply = send.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        models.push(reply.json()["model"].as_str().unwrap().to_owned());
    }
    models
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_queueing_other_clients_work_gets_none_of_the_gateways() {
    let sims = servers().await;
    let gw = Gateway::start(&config(
        &sims,
        "    abgate.dev/load-balancer: llm-aware\n    abgate.dev/metrics-interval: 50ms",
    ))
    .await;
    let json = Http::new(gw.running().admin)
        .get("/endpoints", &[])
        .await
        .json();
    assert_eq!(
        json["clusters"][0]["loadBalancer"]["llmAware"]["interval"], "50ms",
        "{json}"
    );
    // Another client (a second gateway, a batch job) fills `a`'s queue: twelve requests,
    // two served at a time for 100 ms each, so `a` queues for about half a second.
    let direct = Http::new(sims[0].addr);
    let other_client: Vec<_> = (0..12)
        .map(|_| {
            let direct = direct.clone();
            tokio::spawn(async move {
                let req = direct.req("POST", "/v1/chat/completions");
                direct.send(req, chat_body("m", false)).await.status
            })
        })
        .collect();
    wait_listed(&gw, sims[0].port(), |e| {
        e["load"]["requestsWaiting"].as_u64() >= Some(6)
    })
    .await;
    for sim in &sims[1..] {
        wait_listed(&gw, sim.port(), |e| e["load"]["requestsWaiting"] == 0).await;
    }
    // The gateway itself has nothing in flight anywhere, so least request or round robin
    // would give `a` a third; its own queue says it would make them wait.
    let models = models_answering(&gw, 6).await;
    assert!(
        models.iter().all(|m| m != "a"),
        "the queueing server was chosen: {models:?}"
    );
    // Both others share the load (each holds up to three before it costs as much).
    assert!(models.iter().any(|m| m == "b") && models.iter().any(|m| m == "c"));
    for request in other_client {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    // Once `a`'s queue is empty again it is back in rotation.
    wait_listed(&gw, sims[0].port(), |e| e["load"]["requestsWaiting"] == 0).await;
    let mut seen_a = false;
    for _ in 0..30 {
        seen_a |= models_answering(&gw, 3).await.iter().any(|m| m == "a");
    }
    assert!(seen_a, "a never came back");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_metrics_fall_back_to_least_request() {
    let sims = servers().await;
    let gw = Gateway::start(&config(
        &sims,
        "    abgate.dev/load-balancer: llm-aware\n    abgate.dev/metrics-interval: 50ms\n    abgate.dev/metrics-path: /no-such-page",
    ))
    .await;
    // Reads fail (404): no endpoint has a load report, and traffic still flows to all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for sim in &sims {
        assert!(listed(&gw, sim.port()).await["load"].is_null());
    }
    let mut models = Vec::new();
    for _ in 0..10 {
        models.extend(models_answering(&gw, 3).await);
    }
    // Least request among two random choices with nothing in flight picks uniformly: the
    // chance that one of three endpoints gets none of 30 requests is 3 (2/3)^30 < 1e-5.
    for name in ["a", "b", "c"] {
        assert!(
            models.iter().any(|m| m == name),
            "{name} got none: {models:?}"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_without_the_annotation_stops_reading_the_servers() {
    let sims = servers().await;
    let annotated = config(
        &sims,
        "    abgate.dev/load-balancer: llm-aware\n    abgate.dev/metrics-interval: 50ms",
    );
    let gw = Gateway::start(&annotated).await;
    wait_listed(&gw, sims[0].port(), |e| {
        e["load"]["ageMs"].as_u64().is_some_and(|age| age < 500)
    })
    .await;
    gw.reload(&config(&sims, "    note: plain round robin"));
    // The last reading only ages from now on.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let endpoint = listed(&gw, sims[0].port()).await;
    assert!(
        endpoint["load"]["ageMs"]
            .as_u64()
            .is_some_and(|age| age >= 600),
        "the last reading is kept and ages: {endpoint}"
    );
    let json = Http::new(gw.running().admin)
        .get("/endpoints", &[])
        .await
        .json();
    assert_eq!(json["clusters"][0]["loadBalancer"], "ROUND_ROBIN");
    // And back: reading resumes.
    gw.reload(&annotated);
    wait_listed(&gw, sims[0].port(), |e| {
        e["load"]["ageMs"].as_u64().is_some_and(|age| age < 200)
    })
    .await;
    gw.stop().await;
}
