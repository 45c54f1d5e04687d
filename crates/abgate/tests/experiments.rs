//! Experiments as operators and scripts run them: the admin API and `abgate experiment`
//! against a real `abgate serve` in front of two `abgate sim` model versions, on
//! 127.0.0.1 with ephemeral ports. The seed's experiment runs unchanged; rollback goes to
//! the declared baseline; mutations need the token; a split that would send traffic
//! nowhere is refused; delete leaves the host as it was; `kill -9` loses nothing; the
//! controller ramps a better candidate and promotes it; `watch` follows one to its end.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_binomial, chat, split2, split_of, start_gateway, start_sim, variant_counts, wait_for,
    write_mesh, Gateway, Processes, HOST,
};
use serde_json::{json, Value};

/// The id of the seed's `run_model_comparison_experiment()`.
const SEED_ID: &str = "llama-3.1-8b-v1-1-comparison";

/// The seed's `Experiment` dataclass as `run_model_comparison_experiment()` filled it
/// in, as JSON (its fields, names and values), with `id` replaced.
fn seed_fields(id: &str) -> String {
    json!({
        "id": id,
        "name": "Llama4 7B v1.1 Performance Test",
        "description": "Compare v1.0 baseline against v1.1 candidate",
        "traffic_split": {"v1-0": 70, "v1-1": 30},
        "target_metrics": {"latency_p95_ms": 2000, "success_rate": 0.99, "tokens_per_second": 150},
        "duration_hours": 24,
        "success_criteria": {"latency_improvement": 0.1, "success_rate_maintained": 0.99},
        "rollback_criteria": {"latency_degradation": 0.2, "success_rate_drop": 0.95}
    })
    .to_string()
}

/// Two simulated model versions, the mesh in a config directory, and `abgate serve` with
/// its state in another directory. Fields drop in order: processes before the directory.
struct Fixture {
    processes: Processes,
    gateway: Gateway,
    config: PathBuf,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

/// Options of a [`Fixture`].
#[derive(Default)]
struct Setup<'a> {
    /// Add subset `v1-2`, whose labels select no endpoint.
    empty_subset: bool,
    /// More YAML documents for the config (Experiments).
    extra: &'a str,
    /// Time to first token of v1-0 and v1-1, ms.
    ttft: Option<(u64, u64)>,
    /// More `abgate serve` arguments.
    serve_args: &'a [&'a str],
}

fn fixture(setup: Setup<'_>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&config).expect("config dir");
    std::fs::create_dir(&state_dir).expect("state dir");
    let mut processes = Processes::new(dir.path());
    let (t0, t1) = setup.ttft.unwrap_or((1, 1));
    let v10 = start_sim(&mut processes, "v1-0", t0);
    let v11 = start_sim(&mut processes, "v1-1", t1);
    write_mesh(&config, v10, v11, setup.empty_subset, setup.extra);
    let state = state_dir.join("state.db");
    let gateway = start_gateway(&mut processes, "gateway", &config, &state, setup.serve_args);
    Fixture {
        processes,
        gateway,
        config,
        state,
        _dir: dir,
    }
}

impl Fixture {
    /// Writes `text` to a file beside the config directory (not in it: it is watched).
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.config.parent().expect("parent").join(name);
        std::fs::write(&path, text).expect("file written");
        path
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// The report's decision log as `(kind, weights_before, weights_after, reason)`.
fn decisions(report: &Value) -> Vec<(String, Vec<u64>, Vec<u64>, String)> {
    let weights = |v: &Value| -> Vec<u64> {
        v.as_array()
            .expect("weights")
            .iter()
            .map(|w| w.as_u64().expect("a weight"))
            .collect()
    };
    report["decisions"]
        .as_array()
        .unwrap_or_else(|| panic!("decisions in {report}"))
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().expect("kind").to_owned(),
                weights(&d["weights_before"]),
                weights(&d["weights_after"]),
                d["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect()
}

#[test]
fn seed_experiment_json_runs_unchanged_through_the_api() {
    let f = fixture(Setup::default());
    let gw = &f.gateway;

    // Before the experiment, its header changes nothing: the VirtualService's rule.
    let before = variant_counts(gw.http, Some(SEED_ID), 20);
    assert_eq!(before.get("-"), Some(&20), "{before:?}");

    let (status, created) = gw.post("/api/v1/experiments", &seed_fields(SEED_ID));
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["id"], SEED_ID, "{created}");
    assert_eq!(created["host"], HOST, "the host is inferred: {created}");
    assert_eq!(created["baseline"], "v1-0", "{created}");
    assert_eq!(created["phase"], "running", "{created}");
    assert_eq!(split_of(&created), split2(70, 30), "{created}");

    // Requests carrying the experiment's id are split 70/30 and say so.
    let n = 400;
    let counts = variant_counts(gw.http, Some(SEED_ID), n);
    assert!(
        counts.keys().all(|k| k == "v1-0" || k == "v1-1"),
        "every experiment request carries x-variant v1-0 or v1-1: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), n);
    let candidate = counts.get("v1-1").copied().unwrap_or(0);
    assert_binomial(candidate, n, 0.3, "requests on v1-1 under the seed's 70/30");

    // Requests without the header go by the VirtualService and never get x-variant.
    let plain = variant_counts(gw.http, None, 100);
    assert_eq!(plain.get("-"), Some(&100), "{plain:?}");
    let reply = chat(gw.http, None);
    assert_eq!(reply.header("x-experiment-id"), None, "{reply:#?}");

    // The same experiment again is a conflict; the one in force is untouched.
    let (status, body) = gw.post("/api/v1/experiments", &seed_fields(SEED_ID));
    assert_eq!(status, 409, "{body}");
    let (status, list) = gw.get("/api/v1/experiments");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(split_of(&list[0]), split2(70, 30), "{list}");
}

#[test]
fn rollback_goes_to_the_declared_baseline_on_the_next_request() {
    let f = fixture(Setup::default());
    let gw = &f.gateway;
    let seed = f.file("seed.json", &seed_fields(SEED_ID));
    let out = gw.cli(&["create", "-f", path_str(&seed)]);
    assert_eq!(out.code, Some(0), "{out:#?}");

    // The seed's rollback set {"baseline": 100, "candidate": 0}: variants that do not
    // exist. Refused, naming the real ones; the split in force stays.
    let out = gw.cli(&["set-split", SEED_ID, "baseline=100", "candidate=0"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("no variant baseline")
            && out.stderr.contains("v1-0")
            && out.stderr.contains("v1-1"),
        "the message names the real variants: {out:#?}"
    );
    assert_eq!(split_of(&gw.experiment(SEED_ID)), split2(70, 30));
    assert!(decisions(&gw.report(SEED_ID)).is_empty());
    let n = 200;
    let counts = variant_counts(gw.http, Some(SEED_ID), n);
    assert_binomial(
        counts.get("v1-1").copied().unwrap_or(0),
        n,
        0.3,
        "v1-1 after the refused split",
    );

    let out = gw.cli(&["rollback", SEED_ID]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("rolled_back"), "{out:#?}");
    // The very next request, and every one after, goes to the declared baseline.
    let next = chat(gw.http, Some(SEED_ID));
    assert_eq!(next.header("x-variant"), Some("v1-0"), "{next:#?}");
    let after = variant_counts(gw.http, Some(SEED_ID), 150);
    assert_eq!(after.get("v1-0"), Some(&150), "{after:?}");

    let summary = gw.experiment(SEED_ID);
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    assert_eq!(split_of(&summary), split2(100, 0), "{summary}");
    assert_eq!(summary["winner"], Value::Null, "{summary}");
    let log = decisions(&gw.report(SEED_ID));
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].0.as_str(), &log[0].1, &log[0].2),
        ("rollback", &vec![70, 30], &vec![100, 0])
    );

    // An ended experiment takes no further split.
    let out = gw.cli(&["set-split", SEED_ID, "v1-0=50", "v1-1=50"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("has ended"), "{out:#?}");
    assert_eq!(
        variant_counts(gw.http, Some(SEED_ID), 40).get("v1-0"),
        Some(&40)
    );
}

#[test]
fn mutations_need_the_token() {
    let f = fixture(Setup::default());
    let gw = &f.gateway;
    let token = gw.token();
    assert!(token.len() >= 16, "a generated token: {token:?}");
    let wrong = "0".repeat(token.len());
    let body = seed_fields(SEED_ID);

    for auth in [None, Some(wrong.as_str()), Some("")] {
        let (status, reply) = gw.api_as("POST", "/api/v1/experiments", auth, &body);
        assert_eq!(status, 401, "create with {auth:?}: {reply}");
    }
    // Another scheme carrying the right token is not a bearer token.
    let reply = common::http(
        gw.admin,
        "POST",
        "/api/v1/experiments",
        &[("Authorization", &format!("Basic {token}"))],
        &body,
    );
    assert_eq!(reply.status, 401, "{reply:#?}");
    let (status, list) = gw.get("/api/v1/experiments");
    assert_eq!(
        (status, list.clone()),
        (200, json!([])),
        "nothing was created"
    );
    assert_eq!(
        variant_counts(gw.http, Some(SEED_ID), 20).get("-"),
        Some(&20)
    );

    let (status, created) = gw.post("/api/v1/experiments", &body);
    assert_eq!(status, 200, "{created}");
    let id = SEED_ID;
    let split = json!({"weights": {"v1-0": 0, "v1-1": 100}}).to_string();
    for (method, path, body) in [
        (
            "POST",
            format!("/api/v1/experiments/{id}/split"),
            split.as_str(),
        ),
        ("POST", format!("/api/v1/experiments/{id}/promote"), "{}"),
        ("POST", format!("/api/v1/experiments/{id}/rollback"), ""),
        ("POST", format!("/api/v1/experiments/{id}/pause"), ""),
        ("DELETE", format!("/api/v1/experiments/{id}"), ""),
    ] {
        for auth in [None, Some(wrong.as_str())] {
            let (status, reply) = gw.api_as(method, &path, auth, body);
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {reply}");
        }
    }
    // The CLI with a wrong token file is refused too.
    let bad = f.file("bad.token", &wrong);
    let out = common::run(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_abgate"));
            c.args(["experiment", "--admin", &format!("http://{}", gw.admin)])
                .args(["--token-file", path_str(&bad), "rollback", id]);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("401"), "{out:#?}");

    // Nothing changed, and reading needs no token.
    let summary = gw.experiment(id);
    assert_eq!(summary["phase"], "running", "{summary}");
    assert_eq!(split_of(&summary), split2(70, 30), "{summary}");
    assert!(decisions(&gw.report(id)).is_empty());
    let (status, _) = gw.get("/api/v1/openapi.json");
    assert_eq!(status, 200);
    let counts = variant_counts(gw.http, Some(id), 100);
    assert_eq!(counts.get("-"), None, "{counts:?}");
    assert!(counts.get("v1-1").copied().unwrap_or(0) > 0, "{counts:?}");
}

#[test]
fn a_split_to_a_subset_without_endpoints_is_refused() {
    let f = fixture(Setup {
        empty_subset: true,
        ..Setup::default()
    });
    let gw = &f.gateway;

    // Creating an experiment that puts weight on v1-2 (no endpoint) is refused.
    let nowhere = json!({"id": "to-nowhere", "traffic_split": {"v1-0": 50, "v1-2": 50}});
    let (status, reply) = gw.post("/api/v1/experiments", &nowhere.to_string());
    assert_eq!(status, 400, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("v1-2") && message.contains("no endpoint"),
        "{reply}"
    );
    assert_eq!(gw.get("/api/v1/experiments").1, json!([]));
    assert_eq!(
        variant_counts(gw.http, Some("to-nowhere"), 20).get("-"),
        Some(&20)
    );

    // v1-2 may be a variant without weight; a split giving it weight is refused.
    let id = "three-way";
    let three = json!({"id": id, "traffic_split": {"v1-0": 70, "v1-1": 30, "v1-2": 0}});
    let (status, created) = gw.post("/api/v1/experiments", &three.to_string());
    assert_eq!(status, 200, "{created}");
    let out = gw.cli(&["set-split", id, "v1-2=50"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("400")
            && out
                .stderr
                .contains("v1-2 of llama-3.1-8b-service has no endpoint"),
        "{out:#?}"
    );

    // The previous split stays: in the API, in the traffic, and in the record.
    let expect = |a, b, c| {
        vec![
            ("v1-0".to_owned(), a),
            ("v1-1".to_owned(), b),
            ("v1-2".to_owned(), c),
        ]
    };
    assert_eq!(split_of(&gw.experiment(id)), expect(70, 30, 0));
    let n = 300;
    let counts = variant_counts(gw.http, Some(id), n);
    assert_eq!(counts.get("v1-2"), None, "{counts:?}");
    assert_eq!(counts.get("-"), None, "{counts:?}");
    assert_binomial(
        counts.get("v1-1").copied().unwrap_or(0),
        n,
        0.3,
        "v1-1 after the refused split",
    );
    assert!(
        decisions(&gw.report(id)).is_empty(),
        "a refused split is not in the decision log: {}",
        gw.report(id)["decisions"]
    );

    // And the experiment is not wedged by the refusal: a valid split goes through.
    let out = gw.cli(&["set-split", id, "v1-0=50", "v1-1=50"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(split_of(&gw.experiment(id)), expect(50, 50, 0));
    let report = gw.report(id);
    let log = decisions(&report);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].0.as_str(), &log[0].2),
        ("set_weights", &vec![50, 50, 0])
    );
    // The traffic history: the start and the valid split, and v1-2 never in it.
    let traffic: Vec<(&str, &Value)> = report["traffic"]
        .as_array()
        .expect("traffic")
        .iter()
        .map(|p| (p["cause"].as_str().expect("a cause"), &p["weights"]))
        .collect();
    assert_eq!(
        traffic,
        [
            ("start", &json!([70, 30, 0])),
            ("set_weights", &json!([50, 50, 0]))
        ],
        "{}",
        report["traffic"]
    );
}

#[test]
fn delete_leaves_the_host_as_it_was() {
    let f = fixture(Setup::default());
    let gw = &f.gateway;
    let (status, created) = gw.post("/api/v1/experiments", &seed_fields(SEED_ID));
    assert_eq!(status, 200, "{created}");
    let out = gw.cli(&["set-split", SEED_ID, "v1-0=50", "v1-1=50"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let during = variant_counts(gw.http, Some(SEED_ID), 60);
    assert_eq!(during.get("-"), None, "{during:?}");
    assert!(during.get("v1-1").copied().unwrap_or(0) > 0, "{during:?}");

    let out = gw.cli(&["delete", SEED_ID]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stdout.starts_with("ID ")
            && out.stdout.contains(SEED_ID)
            && out.stdout.contains("deleted"),
        "{out:#?}"
    );

    // The experiment's requests go by the VirtualService's own rule again.
    let after = variant_counts(gw.http, Some(SEED_ID), 100);
    assert_eq!(after.get("-"), Some(&100), "{after:?}");
    let reply = chat(gw.http, Some(SEED_ID));
    assert_eq!(reply.header("x-experiment-id"), None, "{reply:#?}");

    // Gone from list and get; its report goes with it (404: the API serves reports of
    // experiments it runs); deleting again is a 404 too.
    let out = gw.cli(&["list", "-o", "json"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let list: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(list, json!([]), "{out:#?}");
    let out = gw.cli(&["list"]);
    assert!(!out.stdout.contains(SEED_ID), "{out:#?}");
    for args in [
        vec!["get", SEED_ID],
        vec!["report", SEED_ID],
        vec!["report", SEED_ID, "-o", "json"],
        vec!["delete", SEED_ID],
    ] {
        let out = gw.cli(&args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:#?}");
        assert!(
            out.stderr.contains("404") && out.stderr.contains(&format!("no experiment {SEED_ID}")),
            "{args:?}: {out:#?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out:#?}");
    }

    // The id can be used again, and the new experiment starts from scratch: the spec's
    // split, no decision of the deleted one in its report.
    let (status, again) = gw.post("/api/v1/experiments", &seed_fields(SEED_ID));
    assert_eq!(status, 200, "{again}");
    assert_eq!(split_of(&again), split2(70, 30), "{again}");
    let report = gw.report(SEED_ID);
    assert!(
        decisions(&report).is_empty(),
        "the deleted experiment's decisions are not the new one's: {}",
        report["decisions"]
    );
    assert_eq!(
        report["traffic"].as_array().map(Vec::len),
        Some(1),
        "only the start: {}",
        report["traffic"]
    );
    assert_eq!(report["traffic"][0]["weights"], json!([70, 30]));
}

#[test]
fn kill_9_resumes_every_experiment_where_it_was() {
    // One experiment from the files, one created through the API.
    let file_experiment = r#"---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {name: second-comparison, namespace: production}
spec:
  host: llama-3.1-8b-service
  variants: [{name: v1-0, weight: 50}, {name: v1-1, weight: 50}]
  strategy: abtest
  match: [{headers: {x-experiment-id: {exact: second-comparison}}}]
"#;
    let mut f = fixture(Setup {
        extra: file_experiment,
        ..Setup::default()
    });
    let (a, b) = (SEED_ID, "second-comparison");
    let (status, created) = f.gateway.post("/api/v1/experiments", &seed_fields(a));
    assert_eq!(status, 200, "{created}");
    for args in [
        vec!["set-split", a, "v1-0=40", "v1-1=60"],
        vec!["set-split", b, "v1-0=90", "v1-1=10"],
        vec!["pause", b],
    ] {
        let out = f.gateway.cli(&args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:#?}");
    }
    assert_eq!(f.gateway.experiment(b)["phase"], "paused");
    let reports_before = [f.gateway.report(a), f.gateway.report(b)];

    // SIGKILL: no chance to flush or drain.
    let pid = f.gateway.pid;
    let kill = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success(), "kill -KILL {pid}: {kill}");
    let status = wait_for(f.processes.child(f.gateway.index), Duration::from_secs(10))
        .expect("the gateway dies");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "{status}");

    let gw = start_gateway(&mut f.processes, "gateway-2", &f.config, &f.state, &[]);
    let (status, list) = gw.get("/api/v1/experiments");
    assert_eq!(status, 200, "{list}");
    let mut ids: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![a, b], "{list}");
    let sa = gw.experiment(a);
    assert_eq!(
        (sa["phase"].as_str(), split_of(&sa)),
        (Some("running"), split2(40, 60)),
        "{sa}"
    );
    let sb = gw.experiment(b);
    assert_eq!(
        (sb["phase"].as_str(), split_of(&sb)),
        (Some("paused"), split2(90, 10)),
        "{sb}"
    );

    // The traffic follows the resumed split, not the created one (70/30).
    let n = 400;
    let counts = variant_counts(gw.http, Some(a), n);
    assert_eq!(counts.get("-"), None, "{counts:?}");
    assert_binomial(
        counts.get("v1-1").copied().unwrap_or(0),
        n,
        0.6,
        "v1-1 after the restart",
    );

    // Each decision is in the log exactly once: none lost, none replayed.
    for (id, before) in [a, b].iter().zip(&reports_before) {
        let after = gw.report(id);
        assert_eq!(after["decisions"], before["decisions"], "{id}");
        let log = decisions(&after);
        let splits: Vec<&Vec<u64>> = log
            .iter()
            .filter(|d| d.0 == "set_weights")
            .map(|d| &d.2)
            .collect();
        let expected = if *id == a { vec![40, 60] } else { vec![90, 10] };
        assert_eq!(splits, vec![&expected], "{id}: {log:?}");
    }

    // The resumed experiments take new decisions (their revisions were kept).
    let out = gw.cli(&["resume", b]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(gw.experiment(b)["phase"], "running");
}

#[test]
fn cli_outputs_json_for_scripts() {
    let f = fixture(Setup::default());
    let gw = &f.gateway;
    // The seed's experiment as a resource (YAML), and the seed's fields (JSON).
    let resource =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed/experiment.yaml");
    let out = gw.cli(&["create", "-f", path_str(&resource), "-o", "json"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let created: Value = serde_json::from_str(&out.stdout).expect("create -o json is JSON");
    assert_eq!(created["id"], SEED_ID, "{created}");
    let fields = f.file("other.json", &seed_fields("other-comparison"));
    let out = gw.cli(&["create", "-f", path_str(&fields)]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let out = gw.cli(&[
        "set-split",
        "other-comparison",
        "v1-0=25",
        "v1-1=75",
        "-o",
        "json",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let set: Value = serde_json::from_str(&out.stdout).expect("set-split -o json is JSON");
    assert_eq!(split_of(&set), split2(25, 75), "{set}");

    let out = gw.cli(&["list", "-o", "json"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let list: Value = serde_json::from_str(&out.stdout).expect("list -o json is JSON");
    let items = list.as_array().expect("a JSON array");
    assert_eq!(items.len(), 2, "{list}");
    for item in items {
        assert!(item["id"].is_string(), "{item}");
        assert_eq!(item["phase"], "running", "{item}");
        let split = item["split"].as_array().expect("split");
        assert_eq!(split.len(), 2, "{item}");
        assert!(
            split
                .iter()
                .all(|p| p[0].is_string() && p[1].is_u64() && p.as_array().unwrap().len() == 2),
            "{item}"
        );
        let total: u64 = split.iter().map(|p| p[1].as_u64().unwrap()).sum();
        assert_eq!(total, 100, "{item}");
    }
    let by_id = |id: &str| {
        items
            .iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {list}"))
    };
    assert_eq!(split_of(by_id(SEED_ID)), split2(70, 30));
    assert_eq!(split_of(by_id("other-comparison")), split2(25, 75));

    let out = gw.cli(&["get", SEED_ID, "-o", "json"]);
    let one: Value = serde_json::from_str(&out.stdout).expect("get -o json is JSON");
    assert_eq!(one["id"], SEED_ID, "{one}");
    let out = gw.cli(&["report", "other-comparison", "-o", "json"]);
    let report: Value = serde_json::from_str(&out.stdout).expect("report -o json is JSON");
    assert_eq!(report["experiment_id"], "other-comparison", "{report}");
    assert_eq!(decisions(&report).len(), 1, "{report}");

    // Tables for people; Markdown reports.
    let out = gw.cli(&["list"]);
    assert!(out.stdout.starts_with("ID "), "{out:#?}");
    assert!(
        out.stdout.contains(SEED_ID) && out.stdout.contains("v1-1 75%"),
        "{out:#?}"
    );
    let out = gw.cli(&["get", "other-comparison"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stdout.starts_with("experiment  other-comparison")
            && out.stdout.contains("v1-1 75%")
            && out.stdout.contains("DECISIONS")
            && out.stdout.contains("set_weights"),
        "{out:#?}"
    );
    let out = gw.cli(&["report", "other-comparison"]);
    assert!(
        out.stdout.contains("# Experiment `other-comparison`")
            && out.stdout.contains("## Decision log"),
        "{out:#?}"
    );

    // A refusal is exit 1 with nothing on stdout, so a script never parses it as data.
    let out = gw.cli(&["get", "no-such-experiment", "-o", "json"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    // An unreachable gateway is exit 2.
    let closed = common::free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_abgate"));
    command.args([
        "experiment",
        "--admin",
        &format!("http://127.0.0.1:{closed}"),
        "list",
        "-o",
        "json",
    ]);
    let out = common::run(command, Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{closed}")) && out.stderr.contains("--admin"),
        "{out:#?}"
    );
}

/// Clients sending chat completions with an experiment's header until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(gateway: std::net::SocketAddr, experiment: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, sent, failures) =
                    (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failures));
                let experiment = experiment.to_owned();
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let reply = common::try_http(
                            gateway,
                            "POST",
                            "/v1/chat/completions",
                            &[
                                ("Host", HOST),
                                ("Content-Type", "application/json"),
                                ("x-experiment-id", &experiment),
                            ],
                            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#,
                        );
                        sent.fetch_add(1, Ordering::Relaxed);
                        match reply {
                            Ok(r) if r.status == 200 => {}
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.body)),
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failures,
            threads,
        }
    }

    /// Stops the clients; how many requests they sent and the failures.
    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn the_controller_ramps_a_faster_candidate_20_40_60_then_promotes() {
    let id = "canary-v1-1";
    let experiment = format!(
        r#"---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: {id}, namespace: production}}
spec:
  host: llama-3.1-8b-service
  baseline: v1-0
  variants: [{{name: v1-0, weight: 80}}, {{name: v1-1, weight: 20}}]
  strategy: canary
  policy: classic
  interval: 1s
  duration: 10m
  canary: {{stepWeight: 20, maxWeight: 60}}
  analysis: {{minSamples: 20}}
  match: [{{headers: {{x-experiment-id: {{exact: {id}}}}}}}]
"#
    );
    // The candidate answers its first token after 10 ms, the baseline after 60 ms.
    let f = fixture(Setup {
        extra: &experiment,
        ttft: Some((60, 10)),
        serve_args: &["--analysis-window", "1s"],
        ..Setup::default()
    });
    let gw = &f.gateway;
    assert_eq!(split_of(&gw.experiment(id)), split2(80, 20));

    let started = Instant::now();
    let load = Load::start(gw.http, id, 4);
    let deadline = started + Duration::from_secs(25);
    let mut seen = Vec::new();
    let summary = loop {
        let summary = gw.experiment(id);
        let split = split_of(&summary);
        if seen.last() != Some(&split) {
            seen.push(split);
        }
        match summary["phase"].as_str() {
            Some("running") if Instant::now() < deadline => {}
            _ => break summary,
        }
        thread::sleep(Duration::from_millis(200));
    };
    let (sent, failures) = load.stop();
    let report = gw.report(id);
    assert_eq!(
        summary["phase"],
        "promoted",
        "after {:?} and {sent} requests: {summary}\nsplits seen: {seen:?}\n{report:#}",
        started.elapsed()
    );
    assert_eq!(summary["winner"], "v1-1", "{summary}");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // All traffic reaches the candidate.
    let after = variant_counts(gw.http, Some(id), 60);
    assert_eq!(after.get("v1-1"), Some(&60), "{after:?}");

    // The decision log: the ramp 20 → 40 → 60, then the promotion, each with its numbers.
    let log = decisions(&report);
    let steps: Vec<(&str, &[u64], &[u64])> = log
        .iter()
        .map(|(k, b, a, _)| (k.as_str(), b.as_slice(), a.as_slice()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("set_weights", &[80, 20][..], &[60, 40][..]),
            ("set_weights", &[60, 40][..], &[40, 60][..]),
            ("promote", &[40, 60][..], &[0, 100][..]),
        ],
        "{report:#}"
    );
    for (kind, _, _, reason) in &log {
        assert!(
            reason.contains("p95") && reason.contains(" ms") && reason.contains("better"),
            "{kind}: {reason}"
        );
    }
    assert!(log[0].3.contains("20% → 40%"), "{}", log[0].3);
    assert!(log[1].3.contains("40% → 60%"), "{}", log[1].3);
    assert!(log[2].3.contains("held 60% (maxWeight 60)"), "{}", log[2].3);
    let traffic: Vec<&Value> = report["traffic"]
        .as_array()
        .expect("traffic")
        .iter()
        .map(|p| &p["weights"][1])
        .collect();
    assert_eq!(
        traffic,
        vec![&json!(20), &json!(40), &json!(60), &json!(100)]
    );
    assert_eq!(report["winner"], "v1-1");
}

#[test]
fn feedback_is_posted_with_the_token_and_the_html_report_is_served() {
    let f = fixture(Setup::default());
    let gw = &f.gateway;
    let id = "bandit-feedback";
    let body = json!({
        "id": id,
        "traffic_split": {"v1-0": 50, "v1-1": 50},
        "strategy": "bandit",
        "bandit": {"reward": "feedback", "minWeight": 10, "winnerProbability": 0.99},
        "description": "<script>alert(1)</script>",
        "duration_hours": 1
    })
    .to_string();
    let (status, created) = gw.post("/api/v1/experiments", &body);
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["strategy"], "bandit", "{created}");

    // Scores need the token, a known variant and a score in [0, 1].
    let score = json!({"variant": "v1-1", "score": 0.8, "request_id": "r-1"}).to_string();
    let path = format!("/api/v1/experiments/{id}/feedback");
    let (status, _) = gw.api_as("POST", &path, None, &score);
    assert_eq!(status, 401);
    let (status, recorded) = gw.post(&path, &score);
    assert_eq!(status, 200, "{recorded}");
    assert_eq!(recorded["variant"], "v1-1", "{recorded}");
    assert_eq!(recorded["rewards_bandit"], true, "{recorded}");
    let (status, refused) = gw.post(&path, &json!({"variant": "v1-1", "score": 1.5}).to_string());
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = gw.post(&path, &json!({"variant": "v9", "score": 0.5}).to_string());
    assert_eq!(status, 400, "{refused}");
    let (status, _) = gw.post(
        "/api/v1/experiments/nope/feedback",
        &json!({"variant": "v1-1", "score": 0.5}).to_string(),
    );
    assert_eq!(status, 404);

    // The OpenAPI document describes it.
    let (_, openapi) = gw.get("/api/v1/openapi.json");
    assert!(
        openapi["paths"]["/api/v1/experiments/{id}/feedback"]["post"].is_object(),
        "{openapi}"
    );

    // The HTML report: text/html, self-contained, the description escaped.
    let _ = variant_counts(gw.http, Some(id), 40);
    let reply = common::http(
        gw.admin,
        "GET",
        &format!("/api/v1/experiments/{id}/report?format=html"),
        &[],
        "",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = reply.body.clone();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<svg"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    assert!(
        !html.contains("http:") && !html.contains("https:"),
        "{html}"
    );

    // The CLI gives the same page with -o html.
    let out = gw.cli(&["report", id, "-o", "html"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("<!DOCTYPE html>"), "{out:?}");
}

#[test]
fn watch_follows_an_experiment_until_it_is_rolled_back() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let f = fixture(Setup::default());
    let gw = &f.gateway;
    let seed = f.file("seed.json", &seed_fields(SEED_ID));
    assert_eq!(gw.cli(&["create", "-f", path_str(&seed)]).code, Some(0));

    // Piped, as in a script or CI: plain lines, no escape codes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_abgate"))
        .arg("experiment")
        .args(["--admin", &format!("http://{}", gw.admin)])
        .args(["watch", SEED_ID])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // The first refresh shows the experiment running at its split.
    let first = lines_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a progress line");
    assert!(
        first.contains(SEED_ID)
            && first.contains("v1-0  70% | v1-1  30%")
            && first.contains("requests")
            && first.ends_with("running"),
        "{first}"
    );

    let (status, body) = gw.post(&format!("/api/v1/experiments/{SEED_ID}/rollback"), "");
    assert_eq!(status, 200, "{body}");
    let code = wait_for(&mut child, Duration::from_secs(20));
    if code.is_none() {
        // Fails below; the reader ends with the process.
        let _ = child.kill();
        let _ = child.wait();
    }
    reader.join().expect("reader");
    let mut out = vec![first];
    out.extend(lines_rx.try_iter());
    let out = out.join("\n");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert_eq!(
        code.and_then(|c| c.code()),
        Some(0),
        "{out}\nstderr: {stderr}"
    );
    assert!(!out.contains('\x1b'), "no escape codes when piped: {out:?}");
    assert_eq!(
        out.lines().last(),
        Some(
            format!(
                "outcome: {SEED_ID} rolled back to v1-0 (the baseline): roll back: by an operator"
            )
            .as_str()
        ),
        "{out}"
    );

    // The summary is in the API and in `get`, beside the full reason.
    let summary = gw.experiment(SEED_ID);
    assert_eq!(
        summary["last_summary"], "roll back: by an operator",
        "{summary}"
    );
    assert_eq!(
        summary["last_reason"], "rolled back by an operator",
        "{summary}"
    );
    let report = gw.report(SEED_ID);
    assert_eq!(
        report["decisions"][0]["summary"], "roll back: by an operator",
        "{report}"
    );
    let got = gw.cli(&["get", SEED_ID]);
    assert!(
        got.stdout.contains(
            "last decision: roll back: by an operator\n  why: rolled back by an operator"
        ),
        "{got:#?}"
    );

    // Nothing left running: watching them all ends at once; an unknown id is refused.
    let all = gw.cli(&["watch"]);
    assert_eq!(all.code, Some(0), "{all:#?}");
    assert_eq!(
        all.stdout.trim(),
        "no running experiment to watch",
        "{all:#?}"
    );
    let unknown = gw.cli(&["watch", "no-such-experiment"]);
    assert_eq!(unknown.code, Some(1), "{unknown:#?}");
    assert!(unknown.stdout.is_empty(), "{unknown:#?}");
}
