//! DestinationRule `outlierDetection`: ejection on consecutive errors with Envoy's rules,
//! the admin listing of endpoint states, and the reliability test: one of three endpoints
//! killed under steady load, then brought back.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{Answer, Backend, Gateway, Mesh};

/// `models.backend` on `ports` (one `version: v1` workload each), a DestinationRule with
/// `policy` under `trafficPolicy` (indented four spaces), and one rule with `extra`.
fn config(ports: &[u16], policy: &str, extra: &str) -> String {
    let endpoints: Vec<(u16, &str)> = ports.iter().map(|p| (*p, "v1")).collect();
    let dr = format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: DestinationRule\n\
         metadata: {{name: dr, namespace: default}}\n\
         spec:\n  host: models.backend\n  trafficPolicy:\n{policy}\n"
    );
    let vs = format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: VirtualService\n\
         metadata: {{name: rule, namespace: default}}\n\
         spec:\n  hosts: [models.local]\n  http:\n  - route:\n    - destination: {{host: models.backend}}\n{extra}\n"
    );
    Mesh::new()
        .service("models.backend", &endpoints)
        .doc(&dr)
        .doc(&vs)
        .yaml()
}

/// The listed state of the endpoint on `port` of cluster `models.backend`.
async fn endpoint(gw: &Gateway, port: u16) -> serde_json::Value {
    gw.endpoint("models.backend", port).await
}

fn ejections(gw: &Gateway) -> u64 {
    gw.running().telemetry().gateway().endpoint_ejections()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_an_endpoint_which_is_counted_and_listed() {
    let good = Backend::ok("good").await;
    let bad = Backend::spawn("bad", |_, _| Answer::Status(500, "broken".into())).await;
    let gw = Gateway::start(&config(
        &[good.port(), bad.port()],
        "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection:\n      consecutive5xxErrors: 3\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 50",
        "    retries: {attempts: 0}",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(gw.http.chat(&[]).await.status.as_u16());
    }
    assert_eq!(bad.count(), 3, "ejected after its third 500: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 3);
    assert_eq!(ejections(&gw), 1);
    assert!(gw
        .running()
        .telemetry()
        .render()
        .contains("abgate_endpoint_ejections_total 1"));

    let listed = endpoint(&gw, bad.port()).await;
    assert_eq!(listed["health"], "ejected", "{listed}");
    assert_eq!(listed["ejections"], 1);
    assert_eq!(
        listed["consecutive5xx"], 0,
        "reset by the ejection: {listed}"
    );
    let left = listed["ejectedForMs"].as_u64().expect("ms left");
    assert!((28_000..=31_000).contains(&left), "{listed}");
    assert!(listed["ejectedUntil"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let healthy = endpoint(&gw, good.port()).await;
    assert_eq!(healthy["health"], "healthy", "{healthy}");
    assert_eq!(healthy["ejectedUntil"], serde_json::Value::Null);
    assert_eq!(healthy["activeRequests"], 0);

    let json = gw.endpoints().await;
    let cluster = &json["clusters"][0];
    assert_eq!(cluster["outlierDetection"]["consecutive5xxErrors"], 3);
    assert_eq!(cluster["outlierDetection"]["maxEjectionPercent"], 50);
    assert_eq!(
        cluster["circuitBreakers"]["http2MaxRequests"],
        serde_json::Value::Null
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_max_ejection_percent_ejects_nothing_from_three_endpoints() {
    // Envoy ≥ 1.27 (as Istio ships it) checks (ejected + 1) / endpoints ≤ 10%: with
    // fewer than ten endpoints no ejection is allowed.
    let good = [Backend::ok("a").await, Backend::ok("b").await];
    let bad = Backend::spawn("bad", |_, _| Answer::Status(503, "down".into())).await;
    let gw = Gateway::start(&config(
        &[good[0].port(), good[1].port(), bad.port()],
        "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection:\n      consecutiveGatewayErrors: 1",
        "    retries: {attempts: 0}",
    ))
    .await;
    for _ in 0..30 {
        gw.http.chat(&[]).await;
    }
    assert_eq!(bad.count(), 10, "still in rotation");
    assert_eq!(ejections(&gw), 0);
    assert_eq!(endpoint(&gw, bad.port()).await["health"], "healthy");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_is_ejected_within_an_interval_and_returns_after_its_ejection() {
    let a = Backend::ok("a").await;
    let b = Backend::ok("b").await;
    let victim = Backend::ok("victim").await;
    let victim_addr = victim.addr;
    let gw = Gateway::start(&config(
        &[a.port(), b.port(), victim.port()],
        "    outlierDetection:\n      consecutiveGatewayErrors: 2\n      interval: 1s\n      baseEjectionTime: 2s\n      maxEjectionPercent: 50",
        "    retries:\n      attempts: 2\n      retryOn: connect-failure,5xx\n      perTryTimeout: 2s\n    timeout: 5s",
    ))
    .await;

    // Steady load: 8 clients back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, stop, ok, failed) = (
            gw.http.clone(),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http
                    .try_send(
                        http.req("POST", "/v1/chat/completions")
                            .header("content-type", "application/json"),
                        support::chat_body("m", false),
                    )
                    .await
                {
                    Ok(r) if r.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed.lock().expect("lock").push(format!(
                        "{} {} {}",
                        r.status,
                        r.flags(),
                        r.text()
                    )),
                    Err(e) => failed.lock().expect("lock").push(e),
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(victim.count() > 0, "the victim took its share first");

    // Kill it: its listener and its open connections go at once.
    drop(victim);
    let killed = Instant::now();
    let ejected_after = loop {
        let state = endpoint(&gw, victim_addr.port()).await;
        if state["health"] == "ejected" {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "not ejected: {state}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        ejected_after <= Duration::from_secs(1),
        "ejected {ejected_after:?} after the kill, more than one interval"
    );
    assert_eq!(ejections(&gw), 1);

    // Bring it back on the same port while it is still ejected.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revived = Backend::spawn_at(victim_addr, "victim", |_, _| {
        Answer::Status(200, r#"{"backend":"victim"}"#.into())
    })
    .await;
    let state = endpoint(&gw, victim_addr.port()).await;
    assert_eq!(state["health"], "ejected", "{state}");
    let due = Duration::from_millis(state["ejectedForMs"].as_u64().expect("ms left"));
    // 2 s × 1, returned at the next 1 s interval sweep.
    assert!(
        ejected_after + Duration::from_millis(300) + due <= Duration::from_millis(3_200),
        "{state}"
    );
    tokio::time::sleep(due.saturating_sub(Duration::from_millis(100))).await;
    assert_eq!(
        revived.count(),
        0,
        "no traffic while ejected (ignoring a request in the last 100 ms)"
    );
    let returned = Instant::now();
    while revived.count() < 50 {
        assert!(
            returned.elapsed() < Duration::from_secs(3),
            "back in rotation: {} requests",
            revived.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(endpoint(&gw, victim_addr.port()).await["health"], "healthy");

    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.lock().expect("lock").clone();
    let total = ok + failed.len();
    eprintln!(
        "{ok} of {total} succeeded; ejected {ejected_after:?} after the kill; failures: {failed:?}"
    );
    assert!(total > 1_000, "steady load: {total} requests");
    assert!(
        ok as f64 >= 0.999 * total as f64,
        "{ok} of {total} succeeded; failures: {failed:?}"
    );
    gw.stop().await;
}
