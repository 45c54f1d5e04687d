//! What the metrics count: requests abandoned before their response, injected faults
//! against the destination they stood in for, and model errors as failed LLM responses.

mod support;

use std::time::Duration;

use support::{chat_body, Backend, Gateway, Mesh};

fn sample(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: models, namespace: default}
spec:
  hosts: [models.local]
  http:
  - match: [{headers: {x-fault: {exact: "1"}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: models.backend, subset: v1}}]
  - route: [{destination: {host: models.backend, subset: v1}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_and_faults_are_counted_against_their_destination() {
    let backend = Backend::hang("slow").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(backend.port(), "v1")])
        .doc(ROUTES)
        .yaml();
    let gw = Gateway::start(&yaml).await;

    // A client that gives up while the backend has not answered.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        gw.http.send(
            gw.http.req("POST", "/v1/chat/completions"),
            chat_body("m", false),
        ),
    )
    .await;
    assert!(abandoned.is_err(), "the backend never answers");
    assert_eq!(backend.wait_for(1, Duration::from_secs(2)).await, 1);

    // An injected abort.
    let reply = gw
        .http
        .send(
            gw.http
                .req("POST", "/v1/chat/completions")
                .header("x-fault", "1"),
            chat_body("m", false),
        )
        .await;
    assert_eq!(reply.status, 503);

    let telemetry = gw.running().telemetry().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut text = telemetry.render();
    while sample(&text, "istio_requests_total", &["response_flags=\"DC\""]).is_none()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = telemetry.render();
    }
    let at_backend = "destination_service_name=\"models.backend\"";
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[at_backend, "response_code=\"0\"", "response_flags=\"DC\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[at_backend, "response_code=\"503\"", "response_flags=\"FI\""]
        ),
        Some(1.0),
        "{text}"
    );
    // The abort's JSON error is a failed LLM response of that destination too (the
    // abandoned request had no response to read).
    assert_eq!(
        sample(
            &text,
            "llm_requests_total",
            &[
                "destination_service_name=\"models.backend\"",
                "version=\"unknown\"",
                "success=\"false\""
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "abgate_requests_in_flight", &[]).or_else(|| {
            text.lines()
                .find(|l| l.starts_with("abgate_requests_in_flight "))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        }),
        Some(0.0)
    );
    gw.stop().await;
}
