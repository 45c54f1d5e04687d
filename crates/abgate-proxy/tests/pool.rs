//! DestinationRule `connectionPool`: circuit breakers (`http2MaxRequests`,
//! `maxConnections` with `http1MaxPendingRequests`, `maxRetries`), connect timeout, idle
//! timeout and requests per connection, counted at real backends.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{fill, Backend, Blackhole, Gateway, Mesh, Reply};

const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rule, namespace: default}
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend}
{{EXTRA}}
"#;

/// One backend behind `models.backend`, a DestinationRule with `policy` (YAML under
/// `trafficPolicy`, indented by four spaces) and a rule carrying `extra`.
fn config(port: u16, policy: &str, extra: &str) -> String {
    let dr = format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: DestinationRule\n\
         metadata: {{name: dr, namespace: default}}\n\
         spec:\n  host: models.backend\n  trafficPolicy:\n{policy}\n"
    );
    Mesh::new()
        .service("models.backend", &[(port, "v1")])
        .doc(&dr)
        .doc(&fill(VS, &[("EXTRA", extra.to_owned())]))
        .yaml()
}

/// Sends `n` chat requests at once and returns the replies.
async fn concurrently(gw: &Gateway, n: usize) -> Vec<Reply> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let http = gw.http.clone();
        set.spawn(async move { http.chat(&[]).await });
    }
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        replies.push(r.expect("request task"));
    }
    replies
}

fn overflows(gw: &Gateway) -> u64 {
    gw.running().telemetry().gateway().pool_overflows()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_n_with_n_plus_k_slow_requests_gives_exactly_k_fast_503_uo() {
    let (n, k) = (3, 4);
    let backend = Backend::slow("v1", Duration::from_millis(1500)).await;
    let gw = Gateway::start(&config(
        backend.port(),
        "    connectionPool:\n      http: {http2MaxRequests: 3}",
        "",
    ))
    .await;
    let replies = concurrently(&gw, n + k).await;
    let refused: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let served = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!((served, refused.len()), (n, k), "{replies:?}");
    for r in &refused {
        assert_eq!(r.flags(), "UO");
        assert!(
            r.elapsed < Duration::from_millis(500),
            "refused at once, not queued: {:?}",
            r.elapsed
        );
        let error = r.openai_error();
        assert_eq!(error["code"], "upstream_overflow", "{error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("models.backend")),
            "{error}"
        );
    }
    assert_eq!(backend.count(), n, "the refused never reached the backend");
    assert_eq!(overflows(&gw), k as u64);
    assert!(gw
        .running()
        .telemetry()
        .render()
        .contains(&format!("abgate_pool_overflows_total {k}")));
    // The places are free again once the responses ended.
    assert_eq!(gw.http.chat(&[]).await.status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_requests_queue_up_to_http1_max_pending_then_overflow() {
    let backend = Backend::slow("v1", Duration::from_millis(600)).await;
    let gw = Gateway::start(&config(
        backend.port(),
        "    connectionPool:\n      tcp: {maxConnections: 2}\n      http: {http1MaxPendingRequests: 2}",
        "",
    ))
    .await;
    let replies = concurrently(&gw, 6).await;
    let mut served: Vec<Duration> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .map(|r| r.elapsed)
        .collect();
    served.sort();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.flags() == "UO").collect();
    assert_eq!((served.len(), refused.len()), (4, 2), "{replies:?}");
    assert!(refused
        .iter()
        .all(|r| r.elapsed < Duration::from_millis(400)));
    // Two went at once, two waited for a connection to free.
    assert!(served[1] < Duration::from_millis(1100), "{served:?}");
    assert!(served[2] >= Duration::from_millis(1150), "{served:?}");
    assert_eq!(backend.peak(), 2, "never more than 2 connections busy");
    assert_eq!(overflows(&gw), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_waits_no_longer_than_the_route_timeout() {
    let backend = Backend::slow("v1", Duration::from_millis(1500)).await;
    let gw = Gateway::start(&config(
        backend.port(),
        "    connectionPool:\n      tcp: {maxConnections: 1}",
        "    timeout: 400ms",
    ))
    .await;
    let replies = concurrently(&gw, 2).await;
    let statuses: Vec<(StatusCode, String)> = replies
        .iter()
        .map(|r| (r.status, r.flags().to_owned()))
        .collect();
    // The first is cut by the route timeout too (1.5 s backend); the second never left
    // the queue.
    assert!(
        statuses
            .iter()
            .all(|(s, f)| *s == StatusCode::GATEWAY_TIMEOUT && f == "UT"),
        "{statuses:?}"
    );
    // Neither waited for the backend's 1.5 s: the queued one gave up at its own deadline
    // (it may have been sent once the first freed the connection, if it started later).
    assert!(
        replies
            .iter()
            .all(|r| r.elapsed < Duration::from_millis(1200)),
        "{replies:?}"
    );
    assert!(backend.count() >= 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_bounds_the_retries_outstanding_across_the_cluster() {
    let backend = Backend::spawn("v1", |_, _| {
        support::Answer::After(Duration::from_millis(300), 503, "down".into())
    })
    .await;
    let gw = Gateway::start(&config(
        backend.port(),
        "    connectionPool:\n      http: {maxRetries: 1}",
        "    retries: {attempts: 2, retryOn: 5xx}",
    ))
    .await;
    let replies = concurrently(&gw, 2).await;
    let mut flags: Vec<String> = replies.iter().map(|r| r.flags().to_owned()).collect();
    flags.sort();
    assert!(replies
        .iter()
        .all(|r| r.status == StatusCode::SERVICE_UNAVAILABLE));
    // One request had the retry budget and used both its retries (URX); the other was
    // answered with its first 503, flagged UO.
    assert_eq!(flags, ["UO", "URX"], "{replies:?}");
    assert_eq!(backend.count(), 4);
    assert_eq!(overflows(&gw), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_the_clusters_own() {
    let hole = Blackhole::new().await;
    let gw = Gateway::start(&config(
        hole.port,
        "    connectionPool:\n      tcp: {connectTimeout: 250ms}",
        "    retries: {attempts: 1, retryOn: connect-failure}",
    ))
    .await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.flag_list(), ["UF", "URX"]);
    // Two tries of 250 ms (and a backoff), far below the 10 s default.
    assert!(
        reply.elapsed >= Duration::from_millis(500) && reply.elapsed < Duration::from_secs(2),
        "{:?}",
        reply.elapsed
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_retires_connections() {
    let backend = Backend::ok("v1").await;
    let gw = Gateway::start(&config(
        backend.port(),
        "    connectionPool:\n      http: {maxRequestsPerConnection: 2}",
        "",
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(gw.http.chat(&[]).await.status, StatusCode::OK);
    }
    assert_eq!(backend.connections(), 3, "two requests per connection");
    gw.stop().await;

    let backend = Backend::ok("v1").await;
    let gw = Gateway::start(&config(
        backend.port(),
        "    loadBalancer: {simple: ROUND_ROBIN}",
        "",
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(gw.http.chat(&[]).await.status, StatusCode::OK);
    }
    assert_eq!(backend.connections(), 1, "kept alive without a limit");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_pooled_connections() {
    let backend = Backend::ok("v1").await;
    let gw = Gateway::start(&config(
        backend.port(),
        "    connectionPool:\n      http: {idleTimeout: 200ms}",
        "",
    ))
    .await;
    assert_eq!(gw.http.chat(&[]).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(gw.http.chat(&[]).await.status, StatusCode::OK);
    assert_eq!(backend.connections(), 2, "the idle connection was closed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_their_counters_survive_a_reload() {
    let backend = Backend::slow("v1", Duration::from_millis(1500)).await;
    let yaml = config(
        backend.port(),
        "    connectionPool:\n      http: {http2MaxRequests: 2}",
        "",
    );
    let gw = Gateway::start(&yaml).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let http = gw.http.clone();
        set.spawn(async move { http.chat(&[]).await });
    }
    assert_eq!(backend.wait_for(2, Duration::from_secs(2)).await, 2);
    gw.reload(&yaml);
    let refused = gw.http.chat(&[]).await;
    assert_eq!(
        (refused.status, refused.flags()),
        (StatusCode::SERVICE_UNAVAILABLE, "UO")
    );
    while let Some(r) = set.join_next().await {
        assert_eq!(r.expect("task").status, StatusCode::OK);
    }
    gw.stop().await;
}
