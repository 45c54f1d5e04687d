//! Fault injection, retries, timeouts and mirroring, counted at real backends.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::{fill, run_many, within_binomial, Backend, ClosedPort, Gateway, Mesh};

/// A VirtualService with one rule to `models.backend` subset v1, and `{{EXTRA}}` added to
/// the rule (indented by four spaces).
const ONE_RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: rule
  namespace: default
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
{{EXTRA}}
"#;

/// Mesh with one backend as subset v1 and a rule carrying `extra`.
fn one_rule(port: u16, extra: &str) -> String {
    Mesh::new()
        .backend("models.backend", &[(port, "v1")])
        .doc(&fill(ONE_RULE, &[("EXTRA", extra.to_owned())]))
        .yaml()
}

// ---------------------------------------------------------------------------------------
// Faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_at_100_percent_answers_with_status_flag_fi_and_openai_error() {
    let backend = Backend::ok("v1").await;
    let gw = Gateway::start(&one_rule(
        backend.port(),
        "    fault:\n      abort:\n        httpStatus: 418\n        percentage: {value: 100}",
    ))
    .await;
    for _ in 0..5 {
        let reply = gw.http.chat(&[]).await;
        assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
        assert_eq!(reply.flags(), "FI");
        let error = reply.openai_error();
        assert_eq!(error["code"], "fault_injected", "{error}");
    }
    assert_eq!(
        backend.count(),
        0,
        "aborted requests never reach the backend"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_at_50_percent_aborts_about_half() {
    let backend = Backend::ok("v1").await;
    let gw = Gateway::start(&one_rule(
        backend.port(),
        "    fault:\n      abort:\n        httpStatus: 503\n        percentage: {value: 50}",
    ))
    .await;
    let n = 400;
    let http = gw.http.clone();
    let statuses = run_many(n, 4, move |_| {
        let http = http.clone();
        async move {
            let r = http.get("/", &[]).await;
            (r.status, r.flags().to_owned())
        }
    })
    .await;
    let aborted = statuses
        .iter()
        .filter(|(s, f)| *s == StatusCode::SERVICE_UNAVAILABLE && f == "FI")
        .count();
    let passed = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .count();
    assert_eq!(
        aborted + passed,
        n,
        "only aborts and successes: {statuses:?}"
    );
    assert_eq!(
        backend.count(),
        passed,
        "every request not aborted was forwarded"
    );
    // Each request is aborted independently with p = 0.5: Binomial(400, 0.5), sd = 10;
    // 5 sd = ±50.
    let (ok, msg) = within_binomial(aborted, n, 0.5, 5.0);
    assert!(ok, "aborted: {msg}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay_holds_the_request_and_sets_flag_di() {
    let backend = Backend::ok("v1").await;
    let gw = Gateway::start(&one_rule(
        backend.port(),
        "    fault:\n      delay:\n        fixedDelay: 200ms\n        percentage: {value: 100}",
    ))
    .await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.elapsed >= Duration::from_millis(200),
        "took {:?}",
        reply.elapsed
    );
    assert_eq!(reply.flags(), "DI");
    assert_eq!(reply.header("x-backend"), Some("v1"));
    assert_eq!(backend.count(), 1);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_5xx_until_success_counted_at_backend() {
    let backend = Backend::failing_then_ok("v1", 503, 2).await;
    let gw = Gateway::start(&one_rule(
        backend.port(),
        "    retries:\n      attempts: 3\n      retryOn: 5xx",
    ))
    .await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "ok");
    assert_eq!(backend.count(), 3, "two failures and one success");
    assert!(!reply.flag_list().contains(&"URX"), "{}", reply.flags());
    // Every try carried the whole body.
    let bodies: Vec<_> = backend.requests().into_iter().map(|s| s.body).collect();
    assert!(bodies.iter().all(|b| b == &bodies[0] && !b.is_empty()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_gateway_error_does_not_retry_500() {
    let backend = Backend::failing_then_ok("v1", 500, 1).await;
    let gw = Gateway::start(&one_rule(
        backend.port(),
        "    retries:\n      attempts: 3\n      retryOn: gateway-error",
    ))
    .await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.text(), "failure 1", "the backend's own answer");
    assert_eq!(backend.count(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_gateway_error_retries_502_503_504() {
    for status in [502u16, 503, 504] {
        let backend = Backend::failing_then_ok("v1", status, 1).await;
        let gw = Gateway::start(&one_rule(
            backend.port(),
            "    retries:\n      attempts: 2\n      retryOn: gateway-error",
        ))
        .await;
        let reply = gw.http.chat(&[]).await;
        assert_eq!(reply.status, StatusCode::OK, "after a {status}");
        assert_eq!(backend.count(), 2, "after a {status}");
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_default_retries_do_not_retry_a_503_response() {
    let backend = Backend::failing_then_ok("v1", 503, 1).await;
    let gw = Gateway::start(&one_rule(backend.port(), "")).await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), "failure 1");
    assert_eq!(backend.count(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_default_retries_retry_a_connect_failure_on_another_endpoint() {
    let alive = Backend::ok("alive").await;
    let dead = ClosedPort::new();
    let yaml = Mesh::new()
        .backend("models.backend", &[(dead.port, "v1"), (alive.port(), "v1")])
        .doc(&fill(ONE_RULE, &[("EXTRA", String::new())]))
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let n = 40;
    let mut failed = Vec::new();
    for _ in 0..n {
        let reply = gw.http.chat(&[]).await;
        if reply.status != StatusCode::OK {
            failed.push(format!(
                "{} {} {}",
                reply.status,
                reply.flags(),
                reply.text()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(alive.count(), n);
    gw.stop().await;
}

/// Envoy's `reset-before-request` retries a request that never reached the upstream, which
/// a refused connection is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_reset_before_request_retries_a_connect_failure() {
    let alive = Backend::ok("alive").await;
    let dead = ClosedPort::new();
    let yaml = Mesh::new()
        .backend("models.backend", &[(dead.port, "v1"), (alive.port(), "v1")])
        .doc(&fill(
            ONE_RULE,
            &[(
                "EXTRA",
                "    retries:\n      attempts: 2\n      retryOn: reset-before-request".into(),
            )],
        ))
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let n = 20;
    let mut failed = Vec::new();
    for _ in 0..n {
        let reply = gw.http.chat(&[]).await;
        if reply.status != StatusCode::OK {
            failed.push(format!("{} {}", reply.status, reply.flags()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {failed:?}",
        failed.len()
    );
    assert_eq!(alive.count(), n);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_return_the_last_response_with_flag_urx() {
    let backend = Backend::failing_then_ok("v1", 503, usize::MAX).await;
    let gw = Gateway::start(&one_rule(
        backend.port(),
        "    retries:\n      attempts: 2\n      retryOn: 5xx",
    ))
    .await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), "failure 3", "the last try's own response");
    assert_eq!(reply.header("x-backend"), Some("v1"));
    assert!(
        reply.flag_list().contains(&"URX"),
        "flags {:?}",
        reply.flags()
    );
    assert_eq!(backend.count(), 3, "one try and two retries");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_answers_504_ut_when_the_backend_never_answers() {
    let backend = Backend::hang("v1").await;
    let gw = Gateway::start(&one_rule(backend.port(), "    timeout: 300ms")).await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.flags(), "UT");
    assert_eq!(reply.openai_error()["code"], "upstream_timeout");
    assert!(
        reply.elapsed >= Duration::from_millis(300) && reply.elapsed < Duration::from_millis(1500),
        "took {:?}",
        reply.elapsed
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_retries_a_hung_try() {
    // The first try hangs; the retry after its 150ms per-try timeout succeeds.
    let backend = Backend::hang_first("v1", 1).await;
    let gw = Gateway::start(&one_rule(
        backend.port(),
        "    timeout: 3s\n    retries:\n      attempts: 2\n      perTryTimeout: 150ms\n      retryOn: 5xx",
    ))
    .await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(backend.count(), 2);
    assert!(
        reply.elapsed >= Duration::from_millis(150) && reply.elapsed < Duration::from_millis(1500),
        "took {:?}",
        reply.elapsed
    );
    gw.stop().await;
}

/// Envoy's `reset` covers an upstream that does not respond at all, a per-try timeout
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_is_retried_on_reset() {
    let backend = Backend::hang_first("v1", 1).await;
    let gw = Gateway::start(&one_rule(
        backend.port(),
        "    timeout: 3s\n    retries:\n      attempts: 2\n      perTryTimeout: 150ms\n      retryOn: reset",
    ))
    .await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{} {}",
        reply.flags(),
        reply.text()
    );
    assert_eq!(backend.count(), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_exhausting_attempts_answer_504_ut() {
    let backend = Backend::hang("v1").await;
    let gw = Gateway::start(&one_rule(
        backend.port(),
        "    timeout: 5s\n    retries:\n      attempts: 2\n      perTryTimeout: 100ms\n      retryOn: 5xx",
    ))
    .await;
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(reply.flag_list().contains(&"UT"), "flags {}", reply.flags());
    assert_eq!(backend.count(), 3, "three tries of 100ms each");
    assert!(
        reply.elapsed >= Duration::from_millis(300) && reply.elapsed < Duration::from_secs(2),
        "took {:?}",
        reply.elapsed
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Mirrors

const MIRROR_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: mirrored
  namespace: default
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
    mirror: {host: shadow.backend}
    mirrorPercentage: {value: 100}
"#;

fn mirror_mesh(main: u16, shadow: u16) -> String {
    Mesh::new()
        .backend("models.backend", &[(main, "v1")])
        .service("shadow.backend", &[(shadow, "v1")])
        .doc(MIRROR_VS)
        .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_copy_with_shadow_host() {
    let main = Backend::ok("main").await;
    let shadow = Backend::ok("shadow").await;
    let gw = Gateway::start(&mirror_mesh(main.port(), shadow.port())).await;
    let n = 20;
    for i in 0..n {
        let req = gw
            .http
            .req("POST", &format!("/v1/chat/completions?i={i}"))
            .header("content-type", "application/json");
        let reply = gw.http.send(req, format!("{{\"i\":{i}}}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-backend"), Some("main"));
    }
    assert_eq!(
        shadow.wait_for(n, Duration::from_secs(3)).await,
        n,
        "every request mirrored"
    );
    for seen in shadow.requests() {
        assert_eq!(seen.host(), Some("models.local-shadow"));
        let i: String = seen.path.rsplit('=').next().expect("i").to_owned();
        assert_eq!(
            seen.body,
            format!("{{\"i\":{i}}}"),
            "the mirror gets the body"
        );
    }
    assert!(main
        .requests()
        .iter()
        .all(|s| s.host() == Some("models.local")));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_to_a_closed_port_changes_nothing_for_the_client() {
    let main = Backend::ok("main").await;
    let closed = ClosedPort::new();
    let gw = Gateway::start(&mirror_mesh(main.port(), closed.port)).await;
    for _ in 0..10 {
        let reply = gw.http.chat(&[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.flags(), "");
        assert!(
            reply.elapsed < Duration::from_millis(500),
            "{:?}",
            reply.elapsed
        );
    }
    assert_eq!(main.count(), 10);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_that_hangs_changes_nothing_for_the_client() {
    let main = Backend::ok("main").await;
    let shadow = Backend::hang("shadow").await;
    let gw = Gateway::start(&mirror_mesh(main.port(), shadow.port())).await;
    let started = Instant::now();
    for _ in 0..10 {
        let reply = gw.http.chat(&[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.elapsed < Duration::from_millis(500),
            "{:?}",
            reply.elapsed
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(shadow.wait_for(10, Duration::from_secs(2)).await, 10);
    gw.stop().await;
}
