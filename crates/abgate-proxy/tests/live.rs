//! Runtime changes to experiments: a new split (a rollback above all) takes effect on the
//! very next request, a split to a subset with no endpoint is refused, and deleting an
//! experiment leaves its host as it was.

mod support;

use abgate_proxy::LiveError;
use support::{Gateway, Mesh, Sim};

const EXPERIMENT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: models, namespace: default}
spec:
  hosts: [models.local]
  http:
  - route: [{destination: {host: models.backend, subset: v1}}]
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {name: exp1, namespace: default}
spec:
  host: models.backend
  baseline: base
  variants:
  - {name: cand, subset: v2, weight: 100}
  - {name: base, subset: v1, weight: 0}
  - {name: empty, subset: v3, weight: 0}
"#;

async fn variant(gw: &Gateway) -> String {
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.header("x-variant").unwrap_or("none").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_takes_effect_on_the_very_next_request() {
    let v1 = Sim::model("v1").await;
    let v2 = Sim::model("v2").await;
    let yaml = Mesh::new()
        .service("models.backend", &[(v1.port(), "v1"), (v2.port(), "v2")])
        .subsets("models.backend", &["v1", "v2", "v3"])
        .doc(EXPERIMENT)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let running = gw.running();
    assert_eq!(variant(&gw).await, "cand");

    // Roll back: everything to the declared baseline, whatever the variants are called.
    running.set_weights("exp1", &[0, 100, 0]).expect("rollback");
    for _ in 0..20 {
        assert_eq!(variant(&gw).await, "base");
    }

    // A split that would send traffic to a subset with no endpoint is refused, and the
    // split in force stays.
    let refused = running.set_weights("exp1", &[0, 50, 50]);
    assert!(
        matches!(refused, Err(LiveError::NoEndpoints { ref subset, .. }) if subset == "v3"),
        "{refused:?}"
    );
    assert!(matches!(
        running.set_weights("nope", &[1]),
        Err(LiveError::NoSuchExperiment(_))
    ));
    assert!(matches!(
        running.set_weights("exp1", &[1, 1]),
        Err(LiveError::Invalid(_))
    ));
    assert_eq!(variant(&gw).await, "base");
    assert_eq!(running.experiments()[0].variants[1].weight, 100);

    // Deleting the experiment leaves the host's own rule.
    assert!(running.remove_experiment("exp1"));
    let reply = gw.http.chat(&[]).await;
    assert_eq!(reply.header("x-variant"), None);
    assert_eq!(reply.json()["model"], "v1");
    assert!(running.experiments().is_empty());
    gw.stop().await;
}

const MIRROR_EXPERIMENT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: models, namespace: default}
spec:
  hosts: [models.local]
  http:
  - route: [{destination: {host: models.backend, subset: v1}}]
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {name: shadow, namespace: default}
spec:
  host: models.backend
  baseline: base
  strategy: mirror
  variants:
  - {name: base, subset: v1, weight: 100}
  - {name: cand, subset: v2, weight: 0}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_experiment_shadows_every_request_to_the_candidate_and_measures_it() {
    let base = Sim::model("base-model").await;
    let cand = support::Backend::spawn("cand", |_, _| {
        support::Answer::Status(
            200,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}"#
                .into(),
        )
    })
    .await;
    let yaml = Mesh::new()
        .service(
            "models.backend",
            &[(base.port(), "v1"), (cand.port(), "v2")],
        )
        .subsets("models.backend", &["v1", "v2"])
        .doc(MIRROR_EXPERIMENT)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    for _ in 0..10 {
        let reply = gw.http.chat(&[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("x-variant"),
            Some("base"),
            "users only see the baseline"
        );
        assert_eq!(reply.json()["model"], "base-model");
    }
    assert_eq!(
        cand.wait_for(10, std::time::Duration::from_secs(5)).await,
        10
    );
    assert!(cand
        .requests()
        .iter()
        .all(|r| r.host() == Some("models.local-shadow")));

    // The shadow answers are counted under the candidate's variant.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let count = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("llm_tokens_generated_total{") && l.contains("variant=\"cand\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut text = gw.running().telemetry().render();
    while count(&text) < 70.0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        text = gw.running().telemetry().render();
    }
    assert_eq!(count(&text), 70.0, "10 shadow answers of 7 tokens: {text}");
    gw.stop().await;
}

const BLUEGREEN_EXPERIMENT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: models, namespace: default}
spec:
  hosts: [models.local]
  http:
  - route: [{destination: {host: models.backend, subset: v1}}]
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {name: switch, namespace: default}
spec:
  host: models.backend
  baseline: blue
  strategy: bluegreen
  variants:
  - {name: blue, subset: v1, weight: 100}
  - {name: green, subset: v2, weight: 0}
"#;

/// Green gets a mirrored copy of blue's traffic before the switch (the evidence the
/// switch waits for), and none once it serves users itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bluegreen_mirrors_to_green_until_the_switch() {
    let blue = Sim::model("blue-model").await;
    let green = support::Backend::spawn("green", |_, _| {
        support::Answer::Status(
            200,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}"#
                .into(),
        )
    })
    .await;
    let yaml = Mesh::new()
        .service(
            "models.backend",
            &[(blue.port(), "v1"), (green.port(), "v2")],
        )
        .subsets("models.backend", &["v1", "v2"])
        .doc(BLUEGREEN_EXPERIMENT)
        .yaml();
    let gw = Gateway::start(&yaml).await;
    for _ in 0..5 {
        assert_eq!(variant(&gw).await, "blue");
    }
    assert_eq!(
        green.wait_for(5, std::time::Duration::from_secs(5)).await,
        5
    );
    assert!(green
        .requests()
        .iter()
        .all(|r| r.host() == Some("models.local-shadow")));

    // Switched: green serves users, and gets each request once, not a shadow as well.
    gw.running()
        .set_weights("switch", &[0, 100])
        .expect("switch");
    for _ in 0..5 {
        assert_eq!(variant(&gw).await, "green");
    }
    assert_eq!(
        green.wait_for(10, std::time::Duration::from_secs(5)).await,
        10
    );
    let shadows = green
        .requests()
        .iter()
        .filter(|r| r.host() == Some("models.local-shadow"))
        .count();
    assert_eq!(shadows, 5);
    gw.stop().await;
}
