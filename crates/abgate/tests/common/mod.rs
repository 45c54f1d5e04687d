//! What the tests of the `abgate` binary share: real `abgate sim` and `abgate serve`
//! processes on 127.0.0.1, a minimal HTTP/1.1 client, the admin API and the `abgate
//! experiment` CLI, a real Prometheus, and the Grafana dashboard's queries.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The host of the seed's 8B model, as its VirtualService and DestinationRule name it.
pub const HOST: &str = "llama-3.1-8b-service";

/// Every process a test starts; killed when the test ends, also when it panics (and then
/// their logs go to the test's output).
pub struct Processes {
    children: Vec<(String, Child)>,
    pub logs: PathBuf,
}

impl Processes {
    pub fn new(logs: &Path) -> Self {
        Processes {
            children: Vec::new(),
            logs: logs.to_owned(),
        }
    }

    /// A log file for a child's stderr.
    pub fn log(&self, name: &str) -> File {
        File::create(self.logs.join(format!("{name}.log"))).expect("log file")
    }

    pub fn add(&mut self, name: &str, child: Child) -> usize {
        self.children.push((name.to_owned(), child));
        self.children.len() - 1
    }

    pub fn child(&mut self, index: usize) -> &mut Child {
        &mut self.children[index].1
    }

    /// Whether the child has exited.
    pub fn exited(&mut self, index: usize) -> bool {
        self.child(index).try_wait().expect("try_wait").is_some()
    }

    /// Kills the child and waits for it.
    pub fn stop(&mut self, index: usize) {
        let child = self.child(index);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// How many lines of each child's log a failing test shows, the last ones.
const LOG_TAIL: usize = 200;

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
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
                let of = if tail.len() < lines.len() {
                    format!(" (last {} of {} lines)", tail.len(), lines.len())
                } else {
                    String::new()
                };
                eprintln!("---- {name} log{of} ----\n{}", tail.join("\n"));
            }
        }
    }
}

/// Waits for a child to exit, at most `limit`.
pub fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
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

/// A response: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A chunked body's data (what arrived of it, when it is cut short).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&raw[..end]);
        let size =
            usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let rest = &raw[end + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        raw = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// One HTTP/1.1 exchange on a new connection (`Connection: close`). `headers` may set
/// `Host`; otherwise it is the address.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            let text = String::from_utf8_lossy(&raw);
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no head: {text}"))
        })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// [`try_http`], failing the test when the exchange fails.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    try_http(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// The model name the simulated server of `variant` answers with.
pub fn model_of(variant: &str) -> String {
    format!("model-{variant}")
}

/// Starts `abgate sim` for `variant` (model `model-<variant>`, 4 tokens at 2000 tokens/s)
/// on a free port, with a time to first token of `ttft_ms`; its port.
pub fn start_sim(processes: &mut Processes, variant: &str, ttft_ms: u64) -> u16 {
    let sim = Sim {
        output_tokens: 4,
        ttft_ms,
        tokens_per_second: 2000,
    };
    sim.start(processes, &model_of(variant))
}

/// How a simulated model server, `abgate sim --seed 1`, answers.
#[derive(Clone, Copy, Debug)]
pub struct Sim {
    pub output_tokens: u64,
    pub ttft_ms: u64,
    pub tokens_per_second: u64,
}

impl Sim {
    /// Starts one serving `model` on a free port; its port. `abgate sim` does not print
    /// the port it binds, so the test picks one; another process may take it in between,
    /// so a sim that exits, or a port that answers for another model, means another try.
    pub fn start(&self, processes: &mut Processes, model: &str) -> u16 {
        for attempt in 0..5 {
            let port = free_port();
            let name = format!("sim-{model}-{attempt}-{port}");
            let child = Command::new(env!("CARGO_BIN_EXE_abgate"))
                .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--model", model, "--seed", "1"])
                .args(["--output-tokens", &self.output_tokens.to_string()])
                .args(["--ttft-ms", &self.ttft_ms.to_string()])
                .args(["--tokens-per-second", &self.tokens_per_second.to_string()])
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
                if processes.exited(index) {
                    break; // could not bind: try another port
                }
                match try_http(addr, "GET", "/v1/models", &[], "") {
                    Ok(r) if r.status == 200 && r.body.contains(&format!("\"{model}\"")) => {
                        return port
                    }
                    Ok(_) => break, // someone else's server on that port
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
            processes.stop(index);
        }
        panic!("abgate sim for {model} did not start in 5 tries");
    }
}

/// The mesh of the seed's 8B model on one machine: a ServiceEntry whose endpoints carry
/// `version: v1.0` (port `v10`) and `version: v1.1` (port `v11`), a DestinationRule with
/// subsets `v1-0` and `v1-1` (and, with `empty_subset`, `v1-2`, whose labels select no
/// endpoint), and a VirtualService whose default route goes to `v1-0`. `extra` documents
/// (Experiments) are appended.
pub fn write_mesh(dir: &Path, v10: u16, v11: u16, empty_subset: bool, extra: &str) {
    let v12 = if empty_subset {
        "\n  - {name: v1-2, labels: {version: v1.2}}"
    } else {
        ""
    };
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {HOST}, namespace: production}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v10}}}, labels: {{version: v1.0}}}}
  - {{address: 127.0.0.1, ports: {{http: {v11}}}, labels: {{version: v1.1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: llama-3.1-8b-destinations, namespace: production}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1-0, labels: {{version: v1.0}}}}
  - {{name: v1-1, labels: {{version: v1.1}}}}{v12}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: llama-3.1-8b-routes, namespace: production}}
spec:
  hosts: [{HOST}]
  http:
  - name: default
    route:
    - destination: {{host: {HOST}, subset: v1-0}}
{extra}"#
    );
    std::fs::write(dir.join("mesh.yaml"), yaml).expect("config written");
}

/// The `model` label of both endpoints of [`two_versions`]: what the seed's `model_name`
/// selector names.
pub const MODEL: &str = "llama-3.1-8b";

/// The seed's 8B model in namespace `default`, as the metric tests run it: a ServiceEntry
/// for [`HOST`] whose endpoints carry `model: llama-3.1-8b` and `version: v1.0` (port
/// `v10`) or `version: v1.1` (port `v11`), and a DestinationRule with subsets `v1-0` and
/// `v1-1`. YAML documents; the caller adds its VirtualService (and Experiment) after `---`.
pub fn two_versions(v10: u16, v11: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: llama-3-1-8b, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8000, name: http, protocol: HTTP}}
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {v10}}}
    labels: {{version: v1.0, model: {MODEL}}}
  - address: 127.0.0.1
    ports: {{http: {v11}}}
    labels: {{version: v1.1, model: {MODEL}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: llama-3-1-8b, namespace: default}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1-0, labels: {{version: v1.0}}}}
  - {{name: v1-1, labels: {{version: v1.1}}}}
"#
    )
}

/// A running `abgate serve`.
pub struct Gateway {
    pub index: usize,
    pub pid: u32,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Where it wrote the admin token (beside the state file).
    pub token_file: PathBuf,
}

impl Gateway {
    /// The admin token it generated.
    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file)
            .expect("admin.token written")
            .trim()
            .to_owned()
    }

    /// An admin API call; `token` goes in `Authorization: Bearer`. The status and the
    /// body as JSON.
    pub fn api_as(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth));
        }
        let reply = http(self.admin, method, path, &headers, body);
        (reply.status, reply.json())
    }

    /// A GET on the admin API, without a token.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.api_as("GET", path, None, "")
    }

    /// A POST on the admin API with the token.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.api_as("POST", path, Some(&self.token()), body)
    }

    /// One experiment's summary, which must exist.
    pub fn experiment(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/experiments/{id}"));
        assert_eq!(status, 200, "GET experiment {id}: {body}");
        body
    }

    /// One experiment's JSON report, which must exist.
    pub fn report(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/experiments/{id}/report"));
        assert_eq!(status, 200, "GET report of {id}: {body}");
        body
    }

    /// `/metrics` once the gateway has finished with every request it was sent
    /// (`abgate_requests_in_flight 0`); fails the test after 10 s.
    pub fn metrics_when_idle(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = http(self.admin, "GET", "/metrics", &[], "");
            assert_eq!(reply.status, 200, "GET /metrics: {}", reply.body);
            if reply
                .body
                .lines()
                .any(|l| l == "abgate_requests_in_flight 0")
            {
                return reply.body;
            }
            assert!(Instant::now() < deadline, "requests stayed in flight");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `abgate experiment --admin http://ADMIN --token-file FILE ARGS...`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let mut command = Command::new(env!("CARGO_BIN_EXE_abgate"));
        command
            .arg("experiment")
            .args(["--admin", &format!("http://{}", self.admin)])
            .arg("--token-file")
            .arg(&self.token_file)
            .args(args);
        run(command, Duration::from_secs(30))
    }
}

/// What a finished command printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to the end (at most `limit`, then it is killed and the test fails).
pub fn run(mut command: Command, limit: Duration) -> CliOutput {
    let mut child = command
        .env("NO_COLOR", "1")
        .env_remove("ABGATE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_for(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let output = CliOutput {
        code: status.and_then(|s| s.code()),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    assert!(
        status.is_some(),
        "{command:?} did not finish in {limit:?}: {output:#?}"
    );
    output
}

/// Starts `abgate serve -f CONFIG --state STATE` on ephemeral ports with `--grace 1s`
/// (unless `extra` sets `--grace`) and the `extra` arguments; returns it, its addresses
/// read from the `listening ...` lines it prints, once `/readyz` answers 200. `name` names
/// its log.
pub fn start_gateway(
    processes: &mut Processes,
    name: &str,
    config: &Path,
    state: &Path,
    extra: &[&str],
) -> Gateway {
    let grace: &[&str] = if extra.contains(&"--grace") {
        &[]
    } else {
        &["--grace", "1s"]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_abgate"))
        .arg("serve")
        .arg("-f")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--state")
        .arg(state)
        .args(grace)
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("ABGATE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(processes.log(name))
        .spawn()
        .expect("abgate serve starts");
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped stdout");
    let index = processes.add(name, child);
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
        let Ok(line) = rx.recv_timeout(left) else {
            panic!("abgate serve ({name}) did not print `listening admin ADDR` in time");
        };
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
    let http_addr = gateway.expect("a `listening http ADDR` line before the admin line");
    let admin = admin.expect("admin address");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if matches!(try_http(admin, "GET", "/readyz", &[], ""), Ok(r) if r.status == 200) {
            break;
        }
        assert!(
            processes
                .child(index)
                .try_wait()
                .expect("try_wait")
                .is_none(),
            "abgate serve ({name}) exited before it was ready"
        );
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer 200 in time"
        );
        thread::sleep(Duration::from_millis(20));
    }
    Gateway {
        index,
        pid,
        http: http_addr,
        admin,
        token_file: state.with_file_name("admin.token"),
    }
}

/// One chat completion through the gateway for the seed's 8B host, with
/// `x-experiment-id: <experiment>` when given. Fails the test unless it is answered 200
/// by the model of the variant the response names in `x-variant` (or of `v1-0`, the
/// VirtualService's default, without one).
pub fn chat(gateway: SocketAddr, experiment: Option<&str>) -> Reply {
    let mut headers = vec![("Host", HOST), ("Content-Type", "application/json")];
    if let Some(id) = experiment {
        headers.push(("x-experiment-id", id));
    }
    let reply = http(
        gateway,
        "POST",
        "/v1/chat/completions",
        &headers,
        r#"{"model":"llama-3.1-8b","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#,
    );
    assert_eq!(reply.status, 200, "{reply:#?}");
    let answered = reply.json()["model"].as_str().unwrap_or("").to_owned();
    let expected = model_of(reply.header("x-variant").unwrap_or("v1-0"));
    assert_eq!(
        answered, expected,
        "the model that answered is the one x-variant names: {reply:#?}"
    );
    reply
}

/// `n` chat completions on 4 connections at a time; how many came back with each
/// `x-variant` (`-` for none). With an experiment id, each must carry `x-experiment-id`
/// with it; without, none may carry `x-variant`.
pub fn variant_counts(
    gateway: SocketAddr,
    experiment: Option<&str>,
    n: usize,
) -> BTreeMap<String, usize> {
    let workers = 4;
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let experiment = experiment.map(str::to_owned);
            thread::spawn(move || {
                let mut counts = BTreeMap::<String, usize>::new();
                for _ in (w..n).step_by(workers) {
                    let reply = chat(gateway, experiment.as_deref());
                    let variant = reply.header("x-variant").unwrap_or("-").to_owned();
                    match &experiment {
                        Some(id) if variant != "-" => assert_eq!(
                            reply.header("x-experiment-id"),
                            Some(id.as_str()),
                            "{reply:#?}"
                        ),
                        _ => {}
                    }
                    *counts.entry(variant).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for h in handles {
        for (k, v) in h.join().expect("a request thread") {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

/// Asserts that `count` successes in `n` trials fit probability `p` within 5 standard
/// deviations.
pub fn assert_binomial(count: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let (low, high) = (mean - 5.0 * sd, mean + 5.0 * sd);
    assert!(
        (low..=high).contains(&(count as f64)),
        "{what}: {count} of {n}, expected {mean:.0} ± {:.1} (5 sd of p = {p})",
        5.0 * sd
    );
}

/// An experiment's split from its summary, as `[(variant, percent)]`.
pub fn split_of(summary: &Value) -> Vec<(String, u64)> {
    summary["split"]
        .as_array()
        .unwrap_or_else(|| panic!("a split in {summary}"))
        .iter()
        .map(|p| {
            (
                p[0].as_str().expect("variant name").to_owned(),
                p[1].as_u64().expect("percent"),
            )
        })
        .collect()
}

/// `[("v1-0", a), ("v1-1", b)]`.
pub fn split2(a: u64, b: u64) -> Vec<(String, u64)> {
    vec![("v1-0".to_owned(), a), ("v1-1".to_owned(), b)]
}

/// The Grafana dashboard, deploy/grafana/abgate.json.
pub fn grafana_dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/abgate.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel of a dashboard (rows' nested panels included), and every `targets[].expr`
/// with its panel's title; a target without `expr` fails the test.
pub fn panels_and_exprs(dashboard: &Value) -> (Vec<Value>, Vec<(String, String)>) {
    fn walk(panels: &Value, all: &mut Vec<Value>, exprs: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            all.push(panel.clone());
            let title = panel["title"].as_str().unwrap_or("").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                exprs.push((title.clone(), expr.to_owned()));
            }
            walk(&panel["panels"], all, exprs);
        }
    }
    let mut all = Vec::new();
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut all, &mut exprs);
    (all, exprs)
}

/// The Prometheus binary: `ABGATE_TEST_PROMETHEUS`, else `prometheus` on PATH. Fails
/// (never skips) without one.
pub fn prometheus_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ABGATE_TEST_PROMETHEUS") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ABGATE_TEST_PROMETHEUS={} is not a file: run scripts/test (it installs \
             Prometheus and sets it), or point it at a prometheus binary",
            path.display()
        );
        return path;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Prometheus: ABGATE_TEST_PROMETHEUS is unset and there is no `prometheus` on \
             PATH. Run scripts/test (it installs Debian's `prometheus` package and sets \
             ABGATE_TEST_PROMETHEUS), or install Prometheus (apt-get install prometheus) and \
             set ABGATE_TEST_PROMETHEUS=/usr/bin/prometheus"
        )
    })
}

/// A Prometheus server of the test's own, on a free port, with its configuration,
/// storage and query log in a directory of the test's. It scrapes every second, as job
/// `abgate`, whatever [`Prometheus::scrape`] last pointed it at (a `file_sd` targets
/// file), and logs every query it runs.
pub struct Prometheus {
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `binary` with everything in `dir`/prometheus, scraping nothing yet; returns
    /// once it is ready.
    pub fn start(processes: &mut Processes, binary: &Path, dir: &Path) -> Self {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir).expect("the Prometheus directory");
        let targets = dir.join("targets.json");
        std::fs::write(&targets, "[]").expect("targets.json written");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  \
                 evaluation_interval: 1s\n  query_log_file: {}\n\
                 scrape_configs:\n- job_name: abgate\n  metrics_path: /metrics\n  \
                 file_sd_configs:\n  - files: ['{}']\n    refresh_interval: 1s\n",
                dir.join("query.log").display(),
                targets.display()
            ),
        )
        .expect("prometheus.yml written");
        for attempt in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let storage = dir.join(format!("tsdb-{attempt}"));
            let name = format!("prometheus-{attempt}");
            let child = Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", storage.display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(processes.log(&name))
                .spawn()
                .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
            let index = processes.add(&name, child);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && !processes.exited(index) {
                // Ours once it is ready and reports our storage directory; one that could
                // not bind the port exits.
                let ours = try_http(addr, "GET", "/-/ready", &[], "")
                    .is_ok_and(|r| r.status == 200)
                    && try_http(addr, "GET", "/api/v1/status/flags", &[], "")
                        .is_ok_and(|r| r.body.contains(&storage.display().to_string()));
                if ours {
                    return Prometheus { addr, dir };
                }
                thread::sleep(Duration::from_millis(50));
            }
            processes.stop(index);
        }
        panic!("Prometheus ({}) did not start in 5 tries", binary.display());
    }

    /// Points it at `target`'s `/metrics` (the targets file written aside, then renamed,
    /// so Prometheus never reads half a file) and waits until it reports the target up.
    pub fn scrape(&self, target: SocketAddr) {
        let aside = self.dir.join("targets.json.new");
        std::fs::write(&aside, format!(r#"[{{"targets": ["{target}"]}}]"#)).expect("targets");
        std::fs::rename(&aside, self.dir.join("targets.json")).expect("targets renamed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let targets = try_http(self.addr, "GET", "/api/v1/targets", &[], "")
                .map_or(Value::Null, |r| r.json());
            let up = targets["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| {
                    t["health"] == "up"
                        && t["scrapeUrl"]
                            .as_str()
                            .is_some_and(|u| u.contains(&format!("{target}/metrics")))
                });
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not report the gateway's target up: {targets}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs an instant query; the whole answer, asserting Prometheus accepted it.
    pub fn query(&self, expr: &str) -> Value {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let reply = http(self.addr, "GET", &path, &[], "");
        let json: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("{e}: {} for {expr}", reply.body));
        assert_eq!(
            json["status"], "success",
            "Prometheus refused `{expr}`: {json}"
        );
        json
    }

    /// Runs an instant query that must yield an instant vector; its samples.
    pub fn vector(&self, expr: &str) -> Vec<Value> {
        let json = self.query(expr);
        assert_eq!(json["data"]["resultType"], "vector", "{expr}: {json}");
        json["data"]["result"]
            .as_array()
            .expect("a result array")
            .clone()
    }

    /// The one value of a query that yields exactly one sample.
    pub fn single(&self, expr: &str) -> f64 {
        let result = self.vector(expr);
        assert_eq!(result.len(), 1, "`{expr}` yields one sample: {result:#?}");
        value_of(&result[0])
    }

    /// Waits until it has scraped its target successfully with a scrape that started
    /// after `since`; fails the test after 15 s.
    pub fn wait_for_scrape_after(&self, since: SystemTime) {
        let since = since
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // `timestamp()` of a bare selector is the time of the sample (the scrape's
            // start); of any other expression, such as `up == 1`, it is the evaluation time.
            let result = self.vector(r#"timestamp(up{job="abgate"})"#);
            if result.first().map(value_of).is_some_and(|t| t > since) {
                let up = self.single(r#"up{job="abgate"}"#);
                assert_eq!(
                    up, 1.0,
                    "the scrape of the gateway after the traffic failed"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no successful scrape of the gateway within 15 s after the traffic: {result:?}; \
                 targets: {}",
                try_http(self.addr, "GET", "/api/v1/targets", &[], "")
                    .map_or(String::new(), |r| r.body)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every query it has run so far, from its query log.
    pub fn logged_queries(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("query.log")).expect("query.log");
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|e| e["params"]["query"].as_str().map(str::to_owned))
            .collect()
    }
}

/// The value of a sample of a query result.
pub fn value_of(sample: &Value) -> f64 {
    let text = sample["value"][1].as_str().expect("a sample value");
    match text {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        t => t.parse().expect("a number"),
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
