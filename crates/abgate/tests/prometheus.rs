//! abgate's metrics as Prometheus sees them: a real `prometheus` server scrapes the
//! admin listener of `abgate serve`, which routes known traffic to two `abgate sim`
//! versions, and PromQL answers are checked against that traffic: exact request and
//! token counts per version, a p95 latency inside bounds derived from the sims' settings,
//! the seed's four queries (`_collect_experiment_metrics` in
//! /work/shared/seed/ab-testing-with-istio.md) with abgate's label values, and the same
//! queries exactly as the seed writes them returning nothing (docs/metrics.md explains
//! why). Every expression of deploy/grafana/abgate.json is also run.
//!
//! The Prometheus binary is `ABGATE_TEST_PROMETHEUS` (scripts/test installs Debian's
//! `prometheus` and sets it), else `prometheus` on PATH; without one the test fails, it
//! never skips. Everything runs on 127.0.0.1 with ephemeral ports; Prometheus gets its
//! own port, configuration and storage in a temporary directory.
//!
//! # Timeline
//!
//! `rate()` needs two samples of a series inside its range, and abgate shows a series
//! only once it has counted a request (a new label set appears already at its first
//! count). So the traffic goes in two halves with the same mix: the first half, a scrape
//! (its samples are the series' first), the second half, another scrape. Each "a scrape"
//! means: the gateway has recorded every request (`abgate_requests_in_flight` is 0) and
//! then Prometheus has taken a sample whose timestamp is later than that moment
//! (`timestamp(up{job="abgate"})`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const HOST: &str = "llama-3.1-8b-service";
/// The `model` label of both endpoints: what the seed's `model_name` selector names.
const MODEL: &str = "llama-3.1-8b";

/// v1.0: 8 tokens, first after 20 ms, then 400 tokens/s (2.5 ms apart).
const V1_TOKENS: u64 = 8;
const V1_TTFT_MS: u64 = 20;
const V1_TOKENS_PER_SECOND: u64 = 400;
/// v1.1: 12 tokens, first after 60 ms, then 100 tokens/s (10 ms apart).
const V2_TOKENS: u64 = 12;
const V2_TTFT_MS: u64 = 60;
const V2_TOKENS_PER_SECOND: u64 = 100;

/// Requests per version and without a route, split over the two halves.
const V1_REQUESTS: usize = 40;
const V2_REQUESTS: usize = 25;
const NR_REQUESTS: usize = 5;

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

    fn log(&self, name: &str) -> File {
        File::create(self.logs.join(format!("{name}.log"))).expect("log file")
    }

    fn add(&mut self, name: &str, child: Child) -> usize {
        self.children.push((name.to_owned(), child));
        self.children.len() - 1
    }

    fn exited(&mut self, index: usize) -> bool {
        self.children[index]
            .1
            .try_wait()
            .expect("try_wait")
            .is_some()
    }

    fn stop(&mut self, index: usize) {
        let child = &mut self.children[index].1;
        let _ = child.kill();
        let _ = child.wait();
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
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                eprintln!("---- {name} log (last 40 lines) ----\n{}", tail.join("\n"));
            }
        }
    }
}

/// An HTTP/1.1 response: status, lower-cased headers, body (de-chunked).
struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`); None when the
/// connection fails or the answer is not HTTP.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_text = String::from_utf8_lossy(&rest[..end]);
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        String::from_utf8_lossy(&out).into_owned()
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn get(addr: SocketAddr, path: &str) -> Option<Response> {
    http(addr, "GET", path, &addr.to_string(), &[], "")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Starts `abgate sim` serving `model` on a free port. `abgate sim` does not print the
/// port it binds, so the test picks one; another process may take it in between, so a
/// sim that exits, or a port that answers for another model, means another try.
fn start_sim(
    processes: &mut Processes,
    model: &str,
    tokens: u64,
    ttft_ms: u64,
    tokens_per_second: u64,
) -> u16 {
    for attempt in 0..5 {
        let port = free_port();
        let name = format!("sim-{model}-{attempt}");
        let child = Command::new(env!("CARGO_BIN_EXE_abgate"))
            .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--model", model, "--seed", "1"])
            .args(["--output-tokens", &tokens.to_string()])
            .args(["--ttft-ms", &ttft_ms.to_string()])
            .args(["--tokens-per-second", &tokens_per_second.to_string()])
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
            match get(addr, "/v1/models") {
                Some(r) if r.status == 200 && r.body.contains(&format!("\"{model}\"")) => {
                    return port
                }
                Some(_) => break, // someone else's server on that port
                None => thread::sleep(Duration::from_millis(20)),
            }
        }
        processes.stop(index);
    }
    panic!("abgate sim for {model} did not start in 5 tries");
}

/// The mesh view: one host, two endpoints labelled with version and model, a subset per
/// version, and a VirtualService that sends `x-variant-pin: v1-1` to v1-1 and everything
/// else to v1-0, so the split is known exactly.
fn write_config(dir: &Path, v1: u16, v2: u16) {
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: llama-3-1-8b
  namespace: default
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8000, name: http, protocol: HTTP}}
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {v1}}}
    labels: {{version: v1.0, model: {MODEL}}}
  - address: 127.0.0.1
    ports: {{http: {v2}}}
    labels: {{version: v1.1, model: {MODEL}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: llama-3-1-8b
  namespace: default
spec:
  host: {HOST}
  subsets:
  - name: v1-0
    labels: {{version: v1.0}}
  - name: v1-1
    labels: {{version: v1.1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: llama-3-1-8b
  namespace: default
spec:
  hosts: [{HOST}]
  http:
  - name: pinned
    match:
    - headers:
        x-variant-pin: {{exact: v1-1}}
    route:
    - destination: {{host: {HOST}, subset: v1-1}}
  - name: default
    route:
    - destination: {{host: {HOST}, subset: v1-0}}
"#
    );
    std::fs::write(dir.join("llama.yaml"), yaml).expect("config written");
}

/// Starts `abgate serve` on ephemeral ports; returns the gateway and admin addresses,
/// read from the lines it prints, once `/readyz` answers 200.
fn start_gateway(processes: &mut Processes, config: &Path) -> (SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_abgate"))
        .arg("serve")
        .arg("-f")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--grace", "1s"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(processes.log("gateway"))
        .spawn()
        .expect("abgate serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let index = processes.add("gateway", child);
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
        if get(admin, "/readyz").is_some_and(|r| r.status == 200) {
            return (gateway, admin);
        }
        assert!(
            !processes.exited(index),
            "abgate serve exited before it was ready"
        );
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer 200 in time"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The Prometheus binary: `ABGATE_TEST_PROMETHEUS`, else `prometheus` on PATH. Fails
/// (never skips) without one.
fn prometheus_binary() -> PathBuf {
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

/// Starts Prometheus on a free port, scraping `admin` every second, with its storage in
/// `dir`; returns its address once it is ready.
fn start_prometheus(
    processes: &mut Processes,
    binary: &Path,
    dir: &Path,
    admin: SocketAddr,
) -> SocketAddr {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n- job_name: abgate\n  metrics_path: /metrics\n  \
             static_configs:\n  - targets: ['{admin}']\n"
        ),
    )
    .expect("prometheus.yml written");
    for attempt in 0..5 {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let storage = dir.join(format!("tsdb-{attempt}"));
        let name = format!("prometheus-{attempt}");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(processes.log(&name))
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        let index = processes.add(&name, child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !processes.exited(index) {
            // Ours once it lists our gateway as a target (discovery takes a moment after
            // it is ready); one that could not bind the port exits.
            let ours = get(addr, "/-/ready").is_some_and(|r| r.status == 200)
                && get(addr, "/api/v1/targets")
                    .is_some_and(|r| r.body.contains(&admin.to_string()));
            if ours {
                return addr;
            }
            thread::sleep(Duration::from_millis(50));
        }
        processes.stop(index);
    }
    panic!("Prometheus ({}) did not start in 5 tries", binary.display());
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

/// Runs an instant query; the result vector. Panics when Prometheus refuses the query.
fn query(prometheus: SocketAddr, expr: &str) -> Vec<Value> {
    let path = format!("/api/v1/query?query={}", encode(expr));
    let response = get(prometheus, &path).expect("Prometheus answers");
    let json: Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {} for {expr}", response.body));
    assert_eq!(
        json["status"], "success",
        "Prometheus refused `{expr}`: {json}"
    );
    assert_eq!(json["data"]["resultType"], "vector", "{expr}: {json}");
    json["data"]["result"]
        .as_array()
        .expect("a result array")
        .clone()
}

/// The value of a sample of a query result.
fn value_of(sample: &Value) -> f64 {
    let text = sample["value"][1].as_str().expect("a sample value");
    match text {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        t => t.parse().expect("a number"),
    }
}

/// The one value of a query that yields exactly one sample.
fn single(prometheus: SocketAddr, expr: &str) -> f64 {
    let result = query(prometheus, expr);
    assert_eq!(result.len(), 1, "`{expr}` yields one sample: {result:#?}");
    value_of(&result[0])
}

/// Waits until Prometheus has sampled the gateway after every request sent so far was
/// recorded: the gateway shows nothing in flight, then a scrape starts after that.
fn wait_for_scrape_after_traffic(prometheus: SocketAddr, admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(admin, "/metrics").expect("/metrics answers").body;
        if metrics.lines().any(|l| l == "abgate_requests_in_flight 0") {
            break;
        }
        assert!(Instant::now() < deadline, "requests stayed in flight");
        thread::sleep(Duration::from_millis(20));
    }
    let recorded = unix_now();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // `timestamp()` of a bare selector is the time of the sample (the scrape's
        // start); of any other expression, such as `up == 1`, it is the evaluation time.
        let result = query(prometheus, r#"timestamp(up{job="abgate"})"#);
        if result.first().map(value_of).is_some_and(|t| t > recorded) {
            let up = single(prometheus, r#"up{job="abgate"}"#);
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
            get(prometheus, "/api/v1/targets").map_or(String::new(), |r| r.body)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// How a request asks: plain JSON, streamed with a final usage chunk, or streamed
/// without one (tokens then counted from content chunks).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Plain,
    StreamUsage,
    StreamCounted,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    V1,
    V2,
    NoRoute,
}

/// Sends the requests from 4 threads; checks each answer.
fn send(gateway: SocketAddr, requests: Vec<(Target, Kind)>) {
    let queue = Arc::new(Mutex::new(requests));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let queue = Arc::clone(&queue);
            thread::spawn(move || loop {
                let Some((target, kind)) = queue.lock().expect("queue").pop() else {
                    return;
                };
                one_request(gateway, target, kind);
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a request failed");
    }
}

fn one_request(gateway: SocketAddr, target: Target, kind: Kind) {
    let body = match kind {
        Kind::Plain => r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#,
        Kind::StreamUsage => {
            r#"{"model":"llama","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#
        }
        Kind::StreamCounted => {
            r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
        }
    };
    let (host, headers, model, tokens): (&str, &[(&str, &str)], &str, u64) = match target {
        Target::V1 => (HOST, &[], "llama-3.1-8b-v1", V1_TOKENS),
        Target::V2 => (
            HOST,
            &[("x-variant-pin", "v1-1")],
            "llama-3.1-8b-v2",
            V2_TOKENS,
        ),
        Target::NoRoute => ("nowhere.invalid", &[], "", 0),
    };
    let r = http(gateway, "POST", "/v1/chat/completions", host, headers, body)
        .unwrap_or_else(|| panic!("{target:?} {kind:?}: no HTTP answer"));
    if let Target::NoRoute = target {
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(
            r.headers.get("x-abgate-response-flags").map(String::as_str),
            Some("NR")
        );
        return;
    }
    assert_eq!(r.status, 200, "{target:?} {kind:?}: {}", r.body);
    assert!(
        r.body.contains(&format!("\"model\":\"{model}\"")),
        "{target:?} went to {model}: {}",
        r.body
    );
    match kind {
        Kind::Plain => assert!(
            r.body.contains(&format!("\"completion_tokens\":{tokens}")),
            "{}",
            r.body
        ),
        Kind::StreamUsage => assert!(
            r.body.contains(&format!("\"completion_tokens\":{tokens}"))
                && r.body.contains("data: [DONE]"),
            "{}",
            r.body
        ),
        Kind::StreamCounted => assert!(
            !r.body.contains("\"usage\":{") && r.body.contains("data: [DONE]"),
            "{}",
            r.body
        ),
    }
}

/// `v1` requests to v1.0, `v2` to v1.1 (each cycling through the three kinds) and `nr`
/// without a route.
fn traffic(v1: usize, v2: usize, nr: usize) -> Vec<(Target, Kind)> {
    let kinds = [Kind::Plain, Kind::StreamUsage, Kind::StreamCounted];
    let mut out = Vec::new();
    out.extend((0..v1).map(|i| (Target::V1, kinds[i % 3])));
    out.extend((0..v2).map(|i| (Target::V2, kinds[i % 3])));
    out.extend((0..nr).map(|_| (Target::NoRoute, Kind::Plain)));
    out
}

/// The seed's four queries for one variant, as `_collect_experiment_metrics` writes them
/// (`{variant}` put in both `destination_version` and `version`).
fn seed_queries(variant: &str) -> [(&'static str, String); 4] {
    [
        (
            "latency_p95",
            format!(
                r#"histogram_quantile(0.95,
                rate(istio_request_duration_milliseconds_bucket{{
                    destination_service_name="llama-3.1-8b-service",
                    destination_version="{variant}"
                }}[5m])
            )"#
            ),
        ),
        (
            "success_rate",
            format!(
                r#"rate(istio_requests_total{{
                destination_service_name="llama-3.1-8b-service",
                destination_version="{variant}",
                response_code!~"5.*"
            }}[5m]) /
            rate(istio_requests_total{{
                destination_service_name="llama-3.1-8b-service",
                destination_version="{variant}"
            }}[5m])"#
            ),
        ),
        (
            "request_rate",
            format!(
                r#"rate(istio_requests_total{{
                destination_service_name="llama-3.1-8b-service",
                destination_version="{variant}"
            }}[5m])"#
            ),
        ),
        (
            "tokens_per_second",
            format!(
                r#"rate(llm_tokens_generated_total{{
                model_name="llama-3.1-8b",
                version="{variant}"
            }}[5m])"#
            ),
        ),
    ]
}

/// Every `targets[].expr` of the dashboard, with the panel title, rows' panels included.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/abgate.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&json["panels"], &mut out);
    out
}

#[test]
fn prometheus_scrapes_abgate_and_the_seeds_queries_work_with_abgates_labels() {
    let begun = Instant::now();
    // First, so that a machine without Prometheus fails at once.
    let prometheus_bin = prometheus_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let mut processes = Processes::new(dir.path());

    let v1 = start_sim(
        &mut processes,
        "llama-3.1-8b-v1",
        V1_TOKENS,
        V1_TTFT_MS,
        V1_TOKENS_PER_SECOND,
    );
    let v2 = start_sim(
        &mut processes,
        "llama-3.1-8b-v2",
        V2_TOKENS,
        V2_TTFT_MS,
        V2_TOKENS_PER_SECOND,
    );
    write_config(&config, v1, v2);
    let (gateway, admin) = start_gateway(&mut processes, &config);
    let prometheus = start_prometheus(&mut processes, &prometheus_bin, dir.path(), admin);

    // The target is up before any traffic.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let targets: Value = get(prometheus, "/api/v1/targets")
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or(Value::Null);
        let active = targets["data"]["activeTargets"].as_array().cloned();
        let up = active.iter().flatten().any(|t| {
            t["health"] == "up"
                && t["scrapeUrl"]
                    .as_str()
                    .is_some_and(|u| u.contains(&format!("{admin}/metrics")))
        });
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not report the gateway's target up: {targets}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let setup = begun.elapsed();

    // Two halves with the same mix, a scrape after each (see the module's docs).
    let first = (
        V1_REQUESTS / 2,
        V2_REQUESTS.div_ceil(2),
        NR_REQUESTS.div_ceil(2),
    );
    send(gateway, traffic(first.0, first.1, first.2));
    wait_for_scrape_after_traffic(prometheus, admin);
    send(
        gateway,
        traffic(
            V1_REQUESTS - first.0,
            V2_REQUESTS - first.1,
            NR_REQUESTS - first.2,
        ),
    );
    wait_for_scrape_after_traffic(prometheus, admin);
    let traffic_done = begun.elapsed();

    // Exact request counts per version (the endpoint's `version` label), and per subset.
    let count = |selector: &str| {
        single(
            prometheus,
            &format!("sum(istio_requests_total{{{selector}}})"),
        )
    };
    let svc = format!(r#"destination_service_name="{HOST}""#);
    assert_eq!(
        count(&format!(r#"{svc},destination_version="v1.0""#)),
        V1_REQUESTS as f64
    );
    assert_eq!(
        count(&format!(r#"{svc},destination_version="v1.1""#)),
        V2_REQUESTS as f64
    );
    assert_eq!(
        count(r#"response_code="404",response_flags="NR""#),
        NR_REQUESTS as f64
    );
    assert_eq!(
        count(&format!(r#"{svc},destination_subset="v1-0""#)),
        V1_REQUESTS as f64
    );
    assert_eq!(
        count(&format!(r#"{svc},destination_subset="v1-1""#)),
        V2_REQUESTS as f64
    );

    // p95 of v1.1's request duration. Every v1.1 request sleeps in the sim for at least
    // ttft + (tokens − 1)/rate = 60 + 11 × 10 = 170 ms (streamed; plain answers wait
    // ttft + tokens/rate = 180 ms), so no sample is at or below Istio's 100 ms bound and
    // the 0.95 rank lies in (100, 250] or higher. Within (100, 250] Prometheus
    // interpolates linearly: 100 + 150 × (rank within the bucket / bucket count) ≥
    // 100 + 150 × 0.95 = 242.5 ms, reached when every sample is ≤ 250 ms (the unloaded
    // case; floating point may land a hair below, 242.49999999999997). The upper bound
    // allows the slowest v1.1 requests to take up to 1 s (bucket (500, 1000]) on a busy
    // machine. The rate covers the second half: the samples after each half span it.
    let p95 = |version: &str| {
        single(
            prometheus,
            &format!(
                r#"histogram_quantile(0.95, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{destination_version="{version}"}}[1m])))"#
            ),
        )
    };
    let p95_v2 = p95("v1.1");
    assert!(
        (242.5 - 1e-9..=1000.0).contains(&p95_v2),
        "p95 of v1.1 is {p95_v2} ms; its requests take ≥ 170 ms, so it is in [242.5, 1000]"
    );
    // v1.0's requests sleep 20 + 8 × 2.5 = 40 ms at most: faster than every v1.1 request.
    let p95_v1 = p95("v1.0");
    assert!(
        p95_v1 < p95_v2,
        "p95 of v1.0 ({p95_v1} ms) is below v1.1's ({p95_v2} ms)"
    );
    // TTFT of v1.1's streams: the first token leaves the sim after 60 ms, so no sample is
    // at or below the 0.06 s bound and the quantile is at least 0.06 + 0.02 × 0.95.
    let ttft_v2 = single(
        prometheus,
        r#"histogram_quantile(0.95, sum by (le) (rate(llm_time_to_first_token_seconds_bucket{version="v1.1"}[1m])))"#,
    );
    assert!(
        (0.079 - 1e-9..=1.0).contains(&ttft_v2),
        "TTFT p95 of v1.1 is {ttft_v2} s; every first token takes > 60 ms"
    );

    // Tokens: usage of plain answers and of streams with include_usage, content chunks
    // counted for streams without it; all three kinds add up exactly.
    let tokens = |version: &str| {
        single(
            prometheus,
            &format!(
                r#"sum(llm_tokens_generated_total{{model_name="{MODEL}",version="{version}"}})"#
            ),
        )
    };
    assert_eq!(tokens("v1.0"), (V1_REQUESTS as u64 * V1_TOKENS) as f64);
    assert_eq!(tokens("v1.1"), (V2_REQUESTS as u64 * V2_TOKENS) as f64);
    assert_eq!(
        single(
            prometheus,
            r#"sum(llm_requests_total{version="v1.0",success="true"})"#
        ),
        V1_REQUESTS as f64
    );
    assert_eq!(
        single(prometheus, r#"sum(llm_requests_total{success="false"})"#),
        0.0
    );

    // The seed's queries with abgate's label values return samples; exactly as the seed
    // writes them (the subset name where the version label is compared) they return none.
    for (subset, version) in [("v1-0", "v1.0"), ("v1-1", "v1.1")] {
        for (name, expr) in seed_queries(version) {
            let result = query(prometheus, &expr);
            assert!(
                !result.is_empty(),
                "the seed's {name} query with version=\"{version}\" returns samples: {expr}"
            );
            assert!(
                result
                    .iter()
                    .map(value_of)
                    .all(|v| v.is_finite() && v > 0.0),
                "{name} for {version}: {result:#?}"
            );
        }
        for (name, expr) in seed_queries(subset) {
            let result = query(prometheus, &expr);
            assert!(
                result.is_empty(),
                "the seed's {name} query as written (\"{subset}\", a subset name, compared \
                 with the version label) matches nothing: {result:#?}"
            );
        }
    }

    // Every expression of the Grafana dashboard is valid PromQL and finds samples, with
    // the dashboard's variables set to this traffic: the service, and no experiment (an
    // absent `experiment_id` label equals the empty string).
    let exprs = dashboard_exprs();
    assert!(!exprs.is_empty(), "the dashboard has expressions");
    for (title, expr) in &exprs {
        let concrete = expr
            .replace("$destination_service_name", HOST)
            .replace("${destination_service_name}", HOST)
            .replace("$experiment_id", "")
            .replace("${experiment_id}", "")
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m");
        let result = query(prometheus, &concrete);
        assert!(
            !result.is_empty(),
            "dashboard panel {title:?}: `{concrete}` finds samples"
        );
    }

    // The example scrape configuration is one Prometheus accepts.
    let promtool = prometheus_bin.with_file_name("promtool");
    if promtool.is_file() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/prometheus.yml");
        let out = Command::new(&promtool)
            .args(["check", "config"])
            .arg(&example)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool check config {}:\n{}{}",
            example.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!(
            "note: no promtool next to {}; deploy/prometheus/prometheus.yml not checked",
            prometheus_bin.display()
        );
    }

    eprintln!(
        "setup {:.1} s, traffic and scrapes {:.1} s, total {:.1} s; p95 v1.0 {p95_v1} ms, \
         v1.1 {p95_v2} ms, TTFT p95 v1.1 {ttft_v2} s",
        setup.as_secs_f64(),
        (traffic_done - setup).as_secs_f64(),
        begun.elapsed().as_secs_f64()
    );
}
