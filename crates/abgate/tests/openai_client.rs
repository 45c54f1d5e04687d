//! The gateway as applications see it: the official `openai` Python client talks to
//! `abgate serve`, which routes to two `abgate sim` model versions by an Istio
//! VirtualService (header match, 50/50 split, response header), plain and streaming.
//!
//! Real processes on 127.0.0.1 with ephemeral ports. The Python interpreter is
//! `ABGATE_TEST_PYTHON` (scripts/test makes a virtualenv with `openai` and sets it), else
//! `python3`; without the `openai` package the test fails, it never skips.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const OUTPUT_TOKENS: u64 = 12;
/// Calls of each kind: plain or streaming, with or without the experiment header. The
/// experiment calls (2 × CALLS) all land on one side of a 50/50 split with probability
/// 2 × 2^-(2 × CALLS).
const CALLS: usize = 12;
const HOST: &str = "models.local";

/// Every process the test starts; killed when the test ends, also when it panics (and
/// then their logs go to the test's output).
struct Processes {
    children: Vec<(String, Child)>,
    logs: PathBuf,
}

impl Processes {
    fn new(logs: &Path) -> Self {
        Processes {
            children: Vec::new(),
            logs: logs.to_owned(),
        }
    }

    /// A log file for a child's stderr.
    fn log(&self, name: &str) -> File {
        File::create(self.logs.join(format!("{name}.log"))).expect("log file")
    }

    fn add(&mut self, name: &str, child: Child) -> usize {
        self.children.push((name.to_owned(), child));
        self.children.len() - 1
    }

    fn child(&mut self, index: usize) -> &mut Child {
        &mut self.children[index].1
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if thread::panicking() {
            for (name, _) in &self.children {
                let text = std::fs::read_to_string(self.logs.join(format!("{name}.log")))
                    .unwrap_or_default();
                eprintln!("---- {name} stderr ----\n{text}");
            }
        }
    }
}

/// Waits for a child to exit, at most `limit`.
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 GET: the status and the body, or None when the connection fails.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// Starts `abgate sim` serving `model` on a free port. `abgate sim` does not print the
/// port it binds, so the test picks one; another process may take it in between, so a
/// sim that exits, or a port that answers for another model, means another try.
fn start_sim(processes: &mut Processes, model: &str) -> u16 {
    for attempt in 0..5 {
        let port = free_port();
        let name = format!("sim-{model}-{attempt}");
        let child = Command::new(env!("CARGO_BIN_EXE_abgate"))
            .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--model",
                model,
                "--output-tokens",
                &OUTPUT_TOKENS.to_string(),
            ])
            .args([
                "--tokens-per-second",
                "200",
                "--ttft-ms",
                "5",
                "--seed",
                "1",
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(processes.log(&name))
            .spawn()
            .expect("abgate sim starts");
        let index = processes.add(&name, child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if processes
                .child(index)
                .try_wait()
                .expect("try_wait")
                .is_some()
            {
                break; // could not bind: try another port
            }
            match get(addr, "/v1/models") {
                Some((200, body)) if body.contains(&format!("\"{model}\"")) => return port,
                Some(_) => break, // someone else's server on that port
                None => thread::sleep(Duration::from_millis(20)),
            }
        }
        let child = processes.child(index);
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("abgate sim for {model} did not start in 5 tries");
}

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

/// Starts `abgate serve` on ephemeral ports; returns its index, the gateway address and
/// the admin address, read from the lines it prints.
fn start_gateway(processes: &mut Processes, config: &Path) -> (usize, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_abgate"))
        .arg("serve")
        .arg("-f")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--grace", "5s"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(processes.log("gateway"))
        .spawn()
        .expect("abgate serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let index = processes.add("gateway", child);
    // The reader keeps draining stdout for the gateway's whole life.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut gateway = None;
    let mut admin = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("abgate serve prints `listening admin ADDR` in time");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["listening", "http", addr, ..] if gateway.is_none() => {
                gateway = Some(addr.parse::<SocketAddr>().expect("gateway address"));
            }
            ["listening", "admin", addr] => {
                admin = Some(addr.parse::<SocketAddr>().expect("admin address"));
            }
            _ => {}
        }
    }
    let gateway = gateway.expect("a `listening http ADDR` line before the admin line");
    let admin = admin.expect("admin address");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((200, _)) = get(admin, "/readyz") {
            break;
        }
        assert!(
            processes
                .child(index)
                .try_wait()
                .expect("try_wait")
                .is_none(),
            "abgate serve exited before it was ready"
        );
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer 200 in time"
        );
        thread::sleep(Duration::from_millis(20));
    }
    (index, gateway, admin)
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

/// Runs the Python script against the gateway; its stdout, one JSON object per call.
fn run_client(processes: &mut Processes, python: &str, gateway: SocketAddr) -> Vec<Value> {
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
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(processes.log("python"))
        .spawn()
        .expect("the Python client starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let index = processes.add("python", child);
    let status = wait_for(processes.child(index), Duration::from_secs(180));
    let text = reader.join().expect("reader thread");
    let stderr = std::fs::read_to_string(processes.logs.join("python.log")).unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("the Python client failed ({s}):\n{stderr}\nstdout:\n{text}"),
        None => panic!("the Python client did not finish in 180 s:\n{stderr}\nstdout:\n{text}"),
    }
    text.lines()
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

    let v1 = start_sim(&mut processes, "llama-v1");
    let v2 = start_sim(&mut processes, "llama-v2");
    write_config(&config, v1, v2);
    let (gateway_index, gateway, _admin) = start_gateway(&mut processes, &config);

    let calls = run_client(&mut processes, &python, gateway);
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
    let pid = processes.child(gateway_index).id();
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success(), "kill -TERM {pid}: {kill}");
    let status = wait_for(processes.child(gateway_index), Duration::from_secs(15))
        .expect("abgate serve exits within 15 s of SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "abgate serve after SIGTERM: {status}"
    );
}
