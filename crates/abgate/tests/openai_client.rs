//! The gateway as applications see it: the official `openai` Python client talks to
//! `abgate serve`, which routes to two `abgate sim` model versions by an Istio
//! VirtualService (header match, 50/50 split, response header), plain and streaming.
//!
//! Real processes on 127.0.0.1 with ephemeral ports. The Python interpreter is
//! `ABGATE_TEST_PYTHON` (scripts/test makes a virtualenv with `openai` and sets it), else
//! `python3`; without the `openai` package the test fails, it never skips.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{start_gateway, wait_for, Processes, Sim};
use serde_json::Value;

const OUTPUT_TOKENS: u64 = 12;
/// Calls of each kind: plain or streaming, with or without the experiment header. The
/// experiment calls (2 × CALLS) all land on one side of a 50/50 split with probability
/// 2 × 2^-(2 × CALLS).
const CALLS: usize = 12;
const HOST: &str = "models.local";

fn write_config(dir: &Path, v1: u16, v2: u16) {
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: models
  namespace: default
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {v1}}}
    labels: {{version: v1}}
  - address: 127.0.0.1
    ports: {{http: {v2}}}
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: models
  namespace: default
spec:
  host: {HOST}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: models
  namespace: default
spec:
  hosts: [{HOST}]
  http:
  - name: experiment
    match:
    - headers:
        x-experiment-id: {{exact: exp-1}}
    route:
    - destination: {{host: {HOST}, subset: v1}}
      weight: 50
    - destination: {{host: {HOST}, subset: v2}}
      weight: 50
    headers:
      response:
        set: {{x-model-version: ab-test}}
  - name: default
    route:
    - destination: {{host: {HOST}, subset: v1}}
"#
    );
    std::fs::write(dir.join("models.yaml"), yaml).expect("config written");
}

/// The interpreter for the Python side: it must import `openai`, or the test fails with
/// what to do.
fn python() -> String {
    let python = std::env::var("ABGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let check = Command::new(&python)
        .args(["-c", "import openai"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output();
    match check {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "`{python}` cannot import the `openai` package: run scripts/test (it makes a \
             virtualenv with it and sets ABGATE_TEST_PYTHON), or set ABGATE_TEST_PYTHON to a \
             Python that has it (pip install openai).\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "cannot run `{python}` ({e}): run scripts/test, or set ABGATE_TEST_PYTHON to a \
             Python with the `openai` package"
        ),
    }
}

/// Runs the Python script against the gateway (at most 180 s); its stdout, one JSON
/// object per call.
fn run_client(python: &str, gateway: SocketAddr) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_calls.py");
    let mut command = Command::new(python);
    command
        .arg(&script)
        .arg(gateway.to_string())
        .arg(HOST)
        .arg(CALLS.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        command.env_remove(var).env_remove(var.to_lowercase());
    }
    let out = common::run(command, Duration::from_secs(180));
    assert_eq!(
        out.code,
        Some(0),
        "the Python client failed:\n{}\nstdout:\n{}",
        out.stderr,
        out.stdout
    );
    out.stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn openai_client_plain_and_streaming_through_an_ab_split() {
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let mut processes = Processes::new(dir.path());

    let sim = Sim {
        output_tokens: OUTPUT_TOKENS,
        ttft_ms: 5,
        tokens_per_second: 200,
    };
    let v1 = sim.start(&mut processes, "llama-v1");
    let v2 = sim.start(&mut processes, "llama-v2");
    write_config(&config, v1, v2);
    let state = dir.path().join("state.db");
    let gateway = start_gateway(
        &mut processes,
        "gateway",
        &config,
        &state,
        &["--grace", "5s"],
    );

    let calls = run_client(&python, gateway.http);
    assert_eq!(calls.len(), 4 * CALLS, "one line per call: {calls:#?}");

    let mut experiment_models = std::collections::BTreeMap::<String, usize>::new();
    for call in &calls {
        let stream = call["stream"].as_bool().expect("stream");
        let experiment = call["experiment"].as_bool().expect("experiment");
        let model = call["model"].as_str().expect("model");
        let content = call["content"].as_str().expect("content");
        // Every token arrived: the words the client saw, the usage the model reported and
        // the sim's configured length agree.
        assert_eq!(
            content.split_whitespace().count() as u64,
            OUTPUT_TOKENS,
            "{call}"
        );
        assert_eq!(
            call["completion_tokens"].as_u64(),
            Some(OUTPUT_TOKENS),
            "{call}"
        );
        if stream {
            // One chunk per token at least, plus the usage chunk.
            let chunks = call["chunks"].as_u64().expect("chunks");
            assert!(chunks > OUTPUT_TOKENS, "{call}");
        }
        if experiment {
            assert!(["llama-v1", "llama-v2"].contains(&model), "{call}");
            assert_eq!(call["x_model_version"], "ab-test", "{call}");
            *experiment_models.entry(model.to_owned()).or_default() += 1;
        } else {
            assert_eq!(model, "llama-v1", "the default route goes to v1: {call}");
            assert!(call["x_model_version"].is_null(), "{call}");
        }
    }
    assert_eq!(
        experiment_models.len(),
        2,
        "the 50/50 split reached both versions over {} calls: {experiment_models:?}",
        2 * CALLS
    );

    // SIGTERM drains and exits 0.
    let pid = gateway.pid;
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success(), "kill -TERM {pid}: {kill}");
    let status = wait_for(processes.child(gateway.index), Duration::from_secs(15))
        .expect("abgate serve exits within 15 s of SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "abgate serve after SIGTERM: {status}"
    );
}
