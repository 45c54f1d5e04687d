//! Deadlines, limits and webhook gates hold for experiments run by `abgate serve`: a
//! stuck experiment passes its progress deadline and rolls back; a refused pre-rollout
//! gate keeps the candidate dark and rolls back at the failure limit; a rollback gate that
//! answers yes rolls back; a refused promotion holds until the gate agrees; event gates
//! hear every decision.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{chat, start_gateway, start_sim, write_mesh, Gateway, Processes};
use serde_json::Value;

/// A webhook receiver answering every POST with the status it is set to, keeping the
/// JSON bodies it got.
struct Hook {
    url: String,
    status: Arc<AtomicU16>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    fn start(status: u16) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let status = Arc::new(AtomicU16::new(status));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (answer, seen) = (Arc::clone(&status), Arc::clone(&bodies));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                if let Ok(v) = serde_json::from_slice(&body) {
                    seen.lock().expect("lock").push(v);
                }
                let code = answer.load(Ordering::SeqCst);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Hook {
            url,
            status,
            bodies,
        }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().expect("lock").clone()
    }
}

const ID: &str = "gated";

fn experiment(extra: &str) -> String {
    format!(
        r#"---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: {ID}, namespace: production}}
spec:
  host: llama-3.1-8b-service
  baseline: v1-0
  variants: [{{name: v1-0, weight: 50}}, {{name: v1-1, weight: 50}}]
  policy: classic
  interval: 1s
  match: [{{headers: {{x-experiment-id: {{exact: {ID}}}}}}}]
{extra}"#
    )
}

fn setup(
    processes: &mut Processes,
    dir: &std::path::Path,
    extra: &str,
    candidate_ttft: u64,
) -> Gateway {
    let v10 = start_sim(processes, "v1-0", 40);
    let v11 = start_sim(processes, "v1-1", candidate_ttft);
    write_mesh(dir, v10, v11, false, &experiment(extra));
    start_gateway(
        processes,
        "gateway",
        &dir.join("mesh.yaml"),
        &dir.join("state.db"),
        &["--analysis-window", "1s"],
    )
}

/// Polls the experiment until `done` holds for it, for at most `limit`.
fn wait_until(
    gateway: &Gateway,
    limit: Duration,
    mut load: impl FnMut(),
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        load();
        let summary = gateway.experiment(ID);
        if done(&summary) || Instant::now() > deadline {
            return summary;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn last_decision(gateway: &Gateway) -> Value {
    gateway.report(ID)["decisions"]
        .as_array()
        .and_then(|d| d.last().cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn a_stuck_experiment_rolls_back_at_its_progress_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    // No traffic and a huge minimum sample: the policy can only hold.
    let gateway = setup(
        &mut processes,
        dir.path(),
        "  strategy: abtest\n  analysis: {minSamples: 100000}\n  progressDeadline: 2s\n",
        40,
    );
    let started = Instant::now();
    let summary = wait_until(
        &gateway,
        Duration::from_secs(10),
        || {},
        |s| s["phase"] == "rolled_back",
    );
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before the deadline"
    );
    let decision = last_decision(&gateway);
    assert_eq!(decision["kind"], "rollback");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap_or("")
            .contains("progress deadline of 2s"),
        "{decision}"
    );
}

#[test]
fn a_refused_pre_rollout_gate_keeps_the_candidate_dark_and_rolls_back_at_the_failure_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let gate = Hook::start(500);
    let events = Hook::start(200);
    let extra = format!(
        "  failureLimit: 2\n  gates:\n  - {{name: smoke-test, type: pre-rollout, url: {}, timeout: 2s}}\n  - {{name: notify, type: event, url: {}}}\n",
        gate.url, events.url
    );
    let gateway = setup(&mut processes, dir.path(), &extra, 40);
    let summary = gateway.experiment(ID);
    assert_eq!(
        common::split_of(&summary),
        [("v1-0".to_owned(), 100), ("v1-1".to_owned(), 0)]
    );
    let summary = wait_until(
        &gateway,
        Duration::from_secs(10),
        || {
            let reply = chat(gateway.http, Some(ID));
            assert_eq!(
                reply.header("x-variant"),
                Some("v1-0"),
                "the candidate stays dark"
            );
        },
        |s| s["phase"] == "rolled_back",
    );
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    let reason = last_decision(&gateway)["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("failureLimit 2") && reason.contains("gate smoke-test refused"),
        "{reason}"
    );
    assert!(gate.bodies().len() >= 2, "asked at each analysis");
    assert_eq!(gate.bodies()[0]["experiment_id"], ID);
    // The event gate heard the rollback.
    let deadline = Instant::now() + Duration::from_secs(5);
    while events.bodies().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        events
            .bodies()
            .last()
            .map(|b| b["decision"]["kind"].clone()),
        Some(Value::from("rollback"))
    );
}

#[test]
fn a_rollback_gate_that_answers_yes_rolls_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let gate = Hook::start(200);
    let extra = format!(
        "  gates:\n  - {{name: pager, type: rollback, url: {}}}\n",
        gate.url
    );
    let gateway = setup(&mut processes, dir.path(), &extra, 40);
    let summary = wait_until(
        &gateway,
        Duration::from_secs(10),
        || {},
        |s| s["phase"] == "rolled_back",
    );
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    assert!(last_decision(&gateway)["reason"]
        .as_str()
        .unwrap_or("")
        .contains("gate pager"));
}

#[test]
fn a_refused_promotion_holds_until_the_gate_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let gate = Hook::start(503);
    let extra = format!(
        "  canary: {{stepWeight: 50, maxWeight: 50}}\n  analysis: {{minSamples: 5}}\n  gates:\n  - {{name: release-manager, type: confirm-promotion, url: {}}}\n",
        gate.url
    );
    // The candidate is far faster: the canary wants to promote at its first analysis.
    let gateway = setup(&mut processes, dir.path(), &extra, 5);
    let load = || {
        for _ in 0..4 {
            chat(gateway.http, Some(ID));
        }
    };
    let held = wait_until(&gateway, Duration::from_secs(15), load, |s| {
        s["last_reason"]
            .as_str()
            .unwrap_or("")
            .contains("confirm-promotion")
    });
    assert_eq!(held["phase"], "running", "{held}");
    assert!(
        held["last_reason"]
            .as_str()
            .unwrap_or("")
            .contains("gate release-manager refused"),
        "{held}"
    );
    assert!(!gate.bodies().is_empty());

    gate.status.store(200, Ordering::SeqCst);
    let promoted = wait_until(&gateway, Duration::from_secs(15), load, |s| {
        s["phase"] == "promoted"
    });
    assert_eq!(promoted["phase"], "promoted", "{promoted}");
    assert_eq!(promoted["winner"], "v1-1");
}

#[test]
fn an_unreachable_confirm_promotion_gate_fails_analyses_and_rolls_back_at_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    // Nothing listens there: the gate cannot answer, which is a failure, not a refusal.
    let url = format!("http://127.0.0.1:{}/hook", common::free_port());
    let extra = format!(
        "  canary: {{stepWeight: 50, maxWeight: 50}}\n  analysis: {{minSamples: 5}}\n  failureLimit: 2\n  gates:\n  - {{name: release-manager, type: confirm-promotion, url: {url}, timeout: 1s}}\n"
    );
    let gateway = setup(&mut processes, dir.path(), &extra, 5);
    let load = || {
        for _ in 0..4 {
            chat(gateway.http, Some(ID));
        }
    };
    let summary = wait_until(&gateway, Duration::from_secs(20), load, |s| {
        s["phase"] == "rolled_back"
    });
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    let reason = last_decision(&gateway)["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("failureLimit 2")
            && reason.contains("confirm-promotion gate release-manager failed"),
        "{reason}"
    );
}
