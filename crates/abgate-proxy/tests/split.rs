//! Weighted splits, sticky assignment and reloads, end to end over real TCP.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use support::{fill, run_many, within_binomial, Backend, Gateway, Mesh, Sim};

const SPLIT_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: split
  namespace: default
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
      weight: {{W1}}
    - destination: {host: models.backend, subset: v2}
      weight: {{W2}}
"#;

/// Sends `n` chat requests and counts the `model` each answer names.
async fn models_seen(gw: &Gateway, n: usize) -> HashMap<String, usize> {
    let http = gw.http.clone();
    let models = run_many(n, 4, move |_| {
        let http = http.clone();
        async move {
            let reply = http.chat(&[]).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            reply.json()["model"].as_str().expect("model").to_owned()
        }
    })
    .await;
    let mut counts = HashMap::new();
    for m in models {
        *counts.entry(m).or_insert(0) += 1;
    }
    counts
}

async fn split_mesh(w1: u32, w2: u32) -> (Sim, Sim, String) {
    let v1 = Sim::model("model-v1").await;
    let v2 = Sim::model("model-v2").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(v1.port(), "v1"), (v2.port(), "v2")])
        .doc(&fill(
            SPLIT_VS,
            &[("W1", w1.to_string()), ("W2", w2.to_string())],
        ))
        .yaml();
    (v1, v2, yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_70_30_follows_weights() {
    let (_v1, _v2, yaml) = split_mesh(70, 30).await;
    let gw = Gateway::start(&yaml).await;
    let n = 2000;
    let counts = models_seen(&gw, n).await;
    let v1 = counts.get("model-v1").copied().unwrap_or(0);
    let v2 = counts.get("model-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "every answer comes from v1 or v2: {counts:?}");
    // Each request picks v1 independently with p = 0.7, so the v1 count is
    // Binomial(2000, 0.7): mean 1400, sd = sqrt(n p (1 - p)) ≈ 20.5. A correct gateway falls
    // outside 5 sd (±102) with probability below 1e-6; a 50/50 or 100/0 split cannot pass.
    let (ok, msg) = within_binomial(v1, n, 0.7, 5.0);
    assert!(ok, "v1 share: {msg}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_weights_3_to_1_are_normalised() {
    let (_v1, _v2, yaml) = split_mesh(3, 1).await;
    let gw = Gateway::start(&yaml).await;
    let n = 2000;
    let counts = models_seen(&gw, n).await;
    let v1 = counts.get("model-v1").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<usize>(), n, "{counts:?}");
    // Weights 3 and 1 are relative: p(v1) = 3 / 4. Binomial(2000, 0.75): sd ≈ 19.4; 5 sd.
    let (ok, msg) = within_binomial(v1, n, 0.75, 5.0);
    assert!(ok, "v1 share: {msg}");
    gw.stop().await;
}

const EXPERIMENT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: models
  namespace: default
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata:
  name: sticky-test
  namespace: default
spec:
  host: models.backend
  baseline: baseline
  variants:
  - {name: baseline, subset: v1, weight: {{BASE}}}
  - {name: candidate, subset: v2, weight: {{CAND}}}
  match:
  - headers:
      x-experiment-id: {exact: sticky-test}
  stickiness: {header: x-user-id}
"#;

/// For each user, the set of `x-variant` values seen over `repeats` requests (in random
/// order across users), with the backend each request reached checked against the variant.
async fn variants_by_user(
    gw: &Gateway,
    users: usize,
    repeats: usize,
) -> HashMap<usize, Vec<String>> {
    let http = gw.http.clone();
    let results = run_many(users * repeats, 6, move |i| {
        let http = http.clone();
        // Interleave users so that one user's requests are spread over the run.
        let user = i % users;
        async move {
            let id = format!("user-{user}");
            let reply = http
                .get(
                    "/v1/models",
                    &[("x-experiment-id", "sticky-test"), ("x-user-id", &id)],
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let variant = reply.header("x-variant").expect("x-variant").to_owned();
            let backend = reply.header("x-backend").expect("x-backend").to_owned();
            let expected = if variant == "baseline" { "v1" } else { "v2" };
            assert_eq!(backend, expected, "variant {variant} reached {backend}");
            assert_eq!(reply.header("x-experiment-id"), Some("sticky-test"));
            (user, variant)
        }
    })
    .await;
    let mut by_user: HashMap<usize, Vec<String>> = HashMap::new();
    for (user, variant) in results {
        let seen = by_user.entry(user).or_default();
        if !seen.contains(&variant) {
            seen.push(variant);
        }
    }
    by_user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_stickiness_keeps_users_and_ramp_never_moves_candidates_back() {
    let v1 = Backend::ok("v1").await;
    let v2 = Backend::ok("v2").await;
    let mesh = Mesh::new().backend("models.backend", &[(v1.port(), "v1"), (v2.port(), "v2")]);
    let config = |base: u32, cand: u32| {
        mesh.clone()
            .doc(&fill(
                EXPERIMENT,
                &[("BASE", base.to_string()), ("CAND", cand.to_string())],
            ))
            .yaml()
    };
    let gw = Gateway::start(&config(90, 10)).await;

    let users = 1000;
    let before = variants_by_user(&gw, users, 20).await;
    assert_eq!(before.len(), users);
    let split: Vec<&usize> = before.keys().filter(|u| before[u].len() != 1).collect();
    assert!(
        split.is_empty(),
        "users that saw more than one variant: {:?}",
        split
            .iter()
            .take(5)
            .map(|u| (u, &before[u]))
            .collect::<Vec<_>>()
    );
    let on_candidate = |m: &HashMap<usize, Vec<String>>| -> Vec<usize> {
        let mut v: Vec<usize> = m
            .iter()
            .filter(|(_, v)| v[0] == "candidate")
            .map(|(u, _)| *u)
            .collect();
        v.sort_unstable();
        v
    };
    let candidates_before = on_candidate(&before);
    // The hash spreads ids like independent draws: Binomial(1000, 0.1), sd ≈ 9.5; 5 sd.
    let (ok, msg) = within_binomial(candidates_before.len(), users, 0.1, 5.0);
    assert!(ok, "candidate share at 10%: {msg}");

    // Ramp the candidate from 10 to 50.
    gw.reload(&config(50, 50));
    let after = variants_by_user(&gw, users, 2).await;
    let split: Vec<&usize> = after.keys().filter(|u| after[u].len() != 1).collect();
    assert!(split.is_empty(), "users split after the reload: {split:?}");
    let candidates_after = on_candidate(&after);
    let moved_back: Vec<&usize> = candidates_before
        .iter()
        .filter(|u| !candidates_after.contains(u))
        .collect();
    assert!(
        moved_back.is_empty(),
        "{} users moved from the candidate back to the baseline: {:?}",
        moved_back.len(),
        moved_back.iter().take(10).collect::<Vec<_>>()
    );
    // Binomial(1000, 0.5): sd ≈ 15.8; 5 sd.
    let (ok, msg) = within_binomial(candidates_after.len(), users, 0.5, 5.0);
    assert!(ok, "candidate share at 50%: {msg}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_service_stickiness_annotation_keeps_a_user_on_one_subset() {
    let v1 = Backend::ok("v1").await;
    let v2 = Backend::ok("v2").await;
    let yaml = Mesh::new()
        .backend("models.backend", &[(v1.port(), "v1"), (v2.port(), "v2")])
        .doc(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: sticky
  namespace: default
  annotations:
    abgate.dev/stickiness: "header:x-user-id"
spec:
  hosts: [models.local]
  http:
  - route:
    - destination: {host: models.backend, subset: v1}
      weight: 50
    - destination: {host: models.backend, subset: v2}
      weight: 50
"#,
        )
        .yaml();
    let gw = Gateway::start(&yaml).await;
    let users = 200;
    let http = gw.http.clone();
    let seen = run_many(users * 10, 4, move |i| {
        let http = http.clone();
        async move {
            let user = format!("u{}", i % users);
            let reply = http.get("/", &[("x-user-id", &user)]).await;
            assert_eq!(reply.status, StatusCode::OK);
            (
                i % users,
                reply.header("x-backend").expect("x-backend").to_owned(),
            )
        }
    })
    .await;
    let mut by_user: HashMap<usize, Vec<String>> = HashMap::new();
    for (u, b) in seen {
        let v = by_user.entry(u).or_default();
        if !v.contains(&b) {
            v.push(b);
        }
    }
    let split = by_user.values().filter(|v| v.len() > 1).count();
    assert_eq!(split, 0, "users that reached both subsets");
    let on_v2 = by_user.values().filter(|v| v[0] == "v2").count();
    // Binomial(200, 0.5): sd ≈ 7.1; 5 sd.
    let (ok, msg) = within_binomial(on_v2, users, 0.5, 5.0);
    assert!(ok, "v2 share: {msg}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let v1 = Backend::ok("v1").await;
    let v2 = Backend::ok("v2").await;
    let mesh = Mesh::new().backend("models.backend", &[(v1.port(), "v1"), (v2.port(), "v2")]);
    let config = |w1: u32, w2: u32| {
        mesh.clone()
            .doc(&fill(
                SPLIT_VS,
                &[("W1", w1.to_string()), ("W2", w2.to_string())],
            ))
            .yaml()
    };
    // All traffic to v1, then flip to v2 and back, 50 times.
    let gw = Gateway::start(&config(100, 0)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let http = gw.http.clone();
        let stop = Arc::clone(&stop);
        let sent = Arc::clone(&sent);
        clients.spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http
                    .try_send(http.req("GET", "/"), bytes::Bytes::new())
                    .await
                {
                    Ok(r) if r.status == StatusCode::OK => {}
                    Ok(r) => failures.push(format!("{} {} {}", r.status, r.flags(), r.text())),
                    Err(e) => failures.push(e),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        });
    }
    let configs = [config(0, 100), config(100, 0)];
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        gw.reload(&configs[i % 2]);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    while let Some(part) = clients.join_next().await {
        failures.extend(part.expect("client task"));
    }
    let total = sent.load(Ordering::Relaxed);
    assert!(
        total >= 100,
        "too little load to mean anything: {total} requests"
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during reloads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // The reloads took effect: both sides served traffic.
    assert!(
        v1.count() > 0 && v2.count() > 0,
        "v1 {} v2 {}",
        v1.count(),
        v2.count()
    );
    gw.stop().await;
}
