//! An Experiment with `metrics: {source: prometheus}` decided on a real Prometheus's
//! answers: two `abgate sim` versions behind `abgate serve`, the candidate clearly slower
//! (its first token after 150 ms against the baseline's 20 ms), Prometheus scraping the
//! gateway's admin `/metrics` every second, steady traffic in the experiment; the
//! controller, reading the variants through `prometheus_source::observe`, rolls the
//! candidate back. The test checks the rollback's reason and that the observations it was
//! decided on came from Prometheus: counts of at least `minSamples`, no figure the
//! built-in store alone has (mean latency, mean completion tokens), and, in Prometheus's
//! query log, every default query filled in for both variants over the period so far.
//! It then sends each default template, filled in, to the same Prometheus: each is valid
//! PromQL and yields one number.
//!
//! The Prometheus binary is `ABGATE_TEST_PROMETHEUS` (scripts/test installs Debian's
//! `prometheus` and sets it), else `prometheus` on PATH; without one the test fails, it
//! never skips. Everything runs on 127.0.0.1 with ephemeral ports. Prometheus starts
//! first (its address goes into the Experiment) and finds the gateway through a
//! `file_sd` targets file written once the gateway's admin address is known.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const HOST: &str = "llama-3.1-8b-service";
const EXPERIMENT: &str = "prometheus-source-canary";
const MIN_SAMPLES: u64 = 10;

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

/// A GET answered 200 with JSON.
fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = get(addr, path).unwrap_or_else(|| panic!("GET {path}: no answer"));
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.body))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// Starts `abgate sim` serving `model` on a free port (another process may take the port
/// in between: a sim that exits, or a port answering for another model, means another try).
fn start_sim(processes: &mut Processes, model: &str, ttft_ms: u64) -> u16 {
    for attempt in 0..5 {
        let port = free_port();
        let name = format!("sim-{model}-{attempt}");
        let child = Command::new(env!("CARGO_BIN_EXE_abgate"))
            .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--model", model, "--seed", "1"])
            .args(["--output-tokens", "8", "--tokens-per-second", "400"])
            .args(["--ttft-ms", &ttft_ms.to_string()])
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
                break;
            }
            match get(addr, "/v1/models") {
                Some(r) if r.status == 200 && r.body.contains(&format!("\"{model}\"")) => {
                    return port
                }
                Some(_) => break,
                None => thread::sleep(Duration::from_millis(20)),
            }
        }
        processes.stop(index);
    }
    panic!("abgate sim for {model} did not start in 5 tries");
}

/// The host with one endpoint per version, a subset each, a default route to the
/// baseline, and the Experiment: a classic canary at 50/50 analysed every 2 s, its
/// figures read from `prometheus`.
fn write_config(dir: &Path, baseline: u16, candidate: u16, prometheus: SocketAddr) {
    let yaml = format!(
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
    ports: {{http: {baseline}}}
    labels: {{version: v1.0, model: llama-3.1-8b}}
  - address: 127.0.0.1
    ports: {{http: {candidate}}}
    labels: {{version: v1.1, model: llama-3.1-8b}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: llama-3-1-8b, namespace: default}}
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
metadata: {{name: llama-3-1-8b, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - route:
    - destination: {{host: {HOST}, subset: v1-0}}
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: {EXPERIMENT}, namespace: default}}
spec:
  host: {HOST}
  baseline: v1-0
  traffic_split: {{v1-0: 50, v1-1: 50}}
  strategy: canary
  policy: classic
  interval: 2s
  analysis: {{minSamples: {MIN_SAMPLES}}}
  rollback_criteria: {{latency_degradation: 0.2, success_rate_drop: 0.95}}
  match:
  - headers:
      x-experiment-id: {{exact: {EXPERIMENT}}}
  metrics:
    source: prometheus
    prometheus: {{address: "http://{prometheus}"}}
"#
    );
    std::fs::write(dir.join("llama.yaml"), yaml).expect("config written");
}

/// Starts `abgate serve`; the gateway and admin addresses, read from the lines it
/// prints, once `/readyz` answers 200.
fn start_gateway(
    processes: &mut Processes,
    config: &Path,
    state: &Path,
) -> (SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_abgate"))
        .arg("serve")
        .arg("-f")
        .arg(config)
        .arg("--state")
        .arg(state)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--grace", "1s", "--analysis-window", "1s"])
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

/// Starts Prometheus on a free port, scraping every second whatever `targets.json` in
/// `dir` lists (nothing yet), logging every query to `query.log`; its address once it is
/// ready.
fn start_prometheus(processes: &mut Processes, binary: &Path, dir: &Path) -> SocketAddr {
    let targets = dir.join("targets.json");
    std::fs::write(&targets, "[]").expect("targets.json written");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n  \
             query_log_file: {}\n\
             scrape_configs:\n- job_name: abgate\n  metrics_path: /metrics\n  \
             file_sd_configs:\n  - files: ['{}']\n    refresh_interval: 1s\n",
            dir.join("query.log").display(),
            targets.display()
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
            // Ours once it is ready and reports our storage directory; one that could
            // not bind the port exits.
            let ours = get(addr, "/-/ready").is_some_and(|r| r.status == 200)
                && get(addr, "/api/v1/status/flags")
                    .is_some_and(|r| r.body.contains(&storage.display().to_string()));
            if ours {
                return addr;
            }
            thread::sleep(Duration::from_millis(50));
        }
        processes.stop(index);
    }
    panic!("Prometheus ({}) did not start in 5 tries", binary.display());
}

/// Points Prometheus at the gateway's admin listener (written aside, then renamed, so
/// Prometheus never reads half a file) and waits until it reports the target up.
fn scrape(prometheus: SocketAddr, dir: &Path, admin: SocketAddr) {
    let aside = dir.join("targets.json.new");
    std::fs::write(&aside, format!(r#"[{{"targets": ["{admin}"]}}]"#)).expect("targets");
    std::fs::rename(&aside, dir.join("targets.json")).expect("targets renamed");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let targets: Value = get(prometheus, "/api/v1/targets")
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or(Value::Null);
        let up = targets["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| {
                t["health"] == "up"
                    && t["scrapeUrl"]
                        .as_str()
                        .is_some_and(|u| u.contains(&format!("{admin}/metrics")))
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

/// Runs an instant query; the whole answer, asserting Prometheus accepted it.
fn query(prometheus: SocketAddr, expr: &str) -> Value {
    let response = get(prometheus, &format!("/api/v1/query?query={}", encode(expr)))
        .expect("Prometheus answers");
    let json: Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {} for {expr}", response.body));
    assert_eq!(
        json["status"], "success",
        "Prometheus refused `{expr}`: {json}"
    );
    json
}

/// Steady traffic in the experiment from `threads` clients until `stop`; counts answers
/// by the `x-variant` the gateway reported, and anything that is not a 200.
struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(gateway: SocketAddr, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let workers = (0..threads)
            .map(|i| {
                let stop = Arc::clone(&stop);
                let counts = Arc::clone(&counts);
                thread::spawn(move || {
                    let mut stream = i % 2 == 1;
                    while !stop.load(Ordering::Relaxed) {
                        // Plain answers and streams (TTFT is recorded for streams).
                        let body = if !stream {
                            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
                        } else {
                            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
                        };
                        stream = !stream;
                        let r = http(
                            gateway,
                            "POST",
                            "/v1/chat/completions",
                            HOST,
                            &[("x-experiment-id", EXPERIMENT)],
                            body,
                        );
                        let slot = match r {
                            Some(r) if r.status == 200 => {
                                match r.headers.get("x-variant").map(String::as_str) {
                                    Some("v1-0") => 0,
                                    Some("v1-1") => 1,
                                    _ => 2,
                                }
                            }
                            _ => 2,
                        };
                        counts[slot].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            workers,
        }
    }

    fn counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.counts[i].load(Ordering::Relaxed))
    }

    fn finish(self) -> [u64; 3] {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.join().expect("a load thread panicked");
        }
        [0, 1, 2].map(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// Whether `logged` is `template` with `{window}` filled by a whole number of seconds
/// (and the other placeholders already filled in `template`).
fn matches_with_window(template: &str, logged: &str) -> bool {
    let Some((before, after)) = template.split_once("{window}") else {
        return template == logged;
    };
    let Some(middle) = logged
        .strip_prefix(before)
        .and_then(|rest| rest.strip_suffix(after))
    else {
        return false;
    };
    middle
        .strip_suffix('s')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The defaults with `{host}`, `{service}`, `{subset}`, `{variant}` and `{experiment}`
/// filled for `subset` (here the variant is named after its subset); `{window}` stays.
fn defaults_for(subset: &str) -> BTreeMap<String, String> {
    abgate_config::default_prometheus_queries()
        .into_iter()
        .map(|(figure, template)| {
            let filled = template
                .replace("{host}", HOST)
                .replace("{service}", HOST)
                .replace("{subset}", subset)
                .replace("{variant}", subset)
                .replace("{experiment}", EXPERIMENT);
            (figure, filled)
        })
        .collect()
}

#[test]
fn an_experiment_reading_prometheus_rolls_back_a_slower_candidate() {
    let begun = Instant::now();
    let prometheus_bin = prometheus_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let mut processes = Processes::new(dir.path());

    let baseline = start_sim(&mut processes, "llama-3.1-8b-v1", 20);
    let candidate = start_sim(&mut processes, "llama-3.1-8b-v2", 150);
    let prometheus = start_prometheus(&mut processes, &prometheus_bin, dir.path());
    write_config(&config, baseline, candidate, prometheus);
    let (gateway, admin) = start_gateway(&mut processes, &config, &dir.path().join("state.db"));
    scrape(prometheus, dir.path(), admin);
    let path = format!("/api/v1/experiments/{EXPERIMENT}");
    let summary = get_json(admin, &path);
    assert_eq!(summary["phase"], "running", "{summary:#}");
    let setup = begun.elapsed();

    // Steady load until the controller rolls the candidate back.
    let load = Load::start(gateway, 3);
    let deadline = Instant::now() + Duration::from_secs(40);
    let summary = loop {
        let summary = get_json(admin, &path);
        if summary["phase"] != "running" {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "no decision within 40 s of steady load (answers by variant v1-0, v1-1, failed: \
             {:?}); the controller last said: {}",
            load.counts(),
            summary["last_reason"]
        );
        thread::sleep(Duration::from_millis(250));
    };
    let decided = begun.elapsed();
    let sent = load.finish();
    assert_eq!(
        summary["phase"], "rolled_back",
        "the slower candidate is rolled back: {summary:#}"
    );
    assert_eq!(
        sent[2], 0,
        "every request answered 200 with a variant: {sent:?}"
    );

    // The rollback, its reason and what it was decided on.
    let report = get_json(admin, &format!("{path}/report"));
    let decisions = report["decisions"].as_array().expect("decisions");
    let rollback = decisions
        .iter()
        .find(|d| d["kind"] == "rollback")
        .unwrap_or_else(|| panic!("a rollback decision: {report:#}"));
    let reason = rollback["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("candidate v1-1 p95") && reason.contains("baseline v1-0"),
        "the rollback names the candidate's latency against the baseline's: {reason}"
    );
    let obs = &rollback["observations"];
    let variants = obs["variants"].as_array().expect("observed variants");
    let names: Vec<&str> = variants
        .iter()
        .filter_map(|v| v["variant"].as_str())
        .collect();
    assert_eq!(names, ["v1-0", "v1-1"], "{obs:#}");
    let figure = |v: &Value, name: &str| v[name].as_f64();
    for v in variants {
        let requests = v["requests"].as_u64().expect("a request count");
        assert!(
            requests >= MIN_SAMPLES,
            "{} was judged on {requests} requests (minSamples {MIN_SAMPLES}): {v:#}",
            v["variant"]
        );
        // `increase()` extrapolates a little; it never finds many more than were sent.
        let answered = sent[0] + sent[1];
        assert!(requests <= answered, "{requests} > {answered} sent: {v:#}");
        assert_eq!(v["errors"], 0, "{v:#}");
        // Prometheus has no mean latency nor mean completion tokens; the built-in store
        // fills both for any variant with requests: these figures came from Prometheus.
        assert!(
            v["latency_mean_ms"].is_null() && v["completion_tokens_mean"].is_null(),
            "observations from Prometheus have no means: {v:#}"
        );
        assert!(
            figure(v, "tokens_per_second").is_some_and(|t| t > 0.0),
            "{v:#}"
        );
    }
    let (b, c) = (&variants[0], &variants[1]);
    let p95 = |v: &Value| figure(v, "latency_p95_ms").expect("a p95 latency");
    assert!(p95(c) > 1.2 * p95(b), "p95 {} vs {}", p95(c), p95(b));
    // Every candidate first token takes over 150 ms: above the 0.1 s bucket bound, so
    // the p95 is at least 100 + 150 × 0.95 ms; the baseline's (20 ms) is far below.
    let ttft = |v: &Value| figure(v, "ttft_p95_ms").expect("a TTFT p95");
    assert!(
        (242.0..=1000.0).contains(&ttft(c)) && ttft(b) < ttft(c),
        "TTFT p95 {} vs {}",
        ttft(c),
        ttft(b)
    );
    // Over the period the split was in force: here the first, from the start.
    assert_eq!(
        rollback["period"], 0,
        "no weight change before the rollback"
    );
    assert_eq!(
        obs["from"], report["started_at"],
        "the period's start: {obs:#}"
    );
    assert_eq!(obs["to"], rollback["at"], "{obs:#}");

    // Prometheus logged the gateway's queries: every default figure for both variants,
    // filled in, over a whole number of seconds.
    let log = std::fs::read_to_string(dir.path().join("query.log")).expect("query.log");
    let logged: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["params"]["query"].as_str().map(str::to_owned))
        .collect();
    for subset in ["v1-0", "v1-1"] {
        for (figure, filled) in defaults_for(subset) {
            assert!(
                logged.iter().any(|q| matches_with_window(&filled, q)),
                "Prometheus never ran the gateway's {figure} query for {subset}, `{filled}`; \
                 it ran: {logged:#?}"
            );
        }
    }

    // Each default template, filled in, is valid PromQL yielding one number.
    let window = format!("{}s", (decided.as_secs() + 5).max(1));
    for subset in ["v1-0", "v1-1"] {
        for (figure, filled) in defaults_for(subset) {
            let expr = filled.replace("{window}", &window);
            let answer = query(prometheus, &expr);
            let result = answer["data"]["result"].as_array().expect("a vector");
            if figure == "errors" && result.is_empty() {
                continue; // no 5xx series at all: nothing failed
            }
            assert_eq!(result.len(), 1, "{figure} for {subset}: `{expr}`: {answer}");
            let value: f64 = result[0]["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("a number");
            match figure.as_str() {
                "errors" => assert_eq!(value, 0.0, "`{expr}`"),
                _ => assert!(
                    value.is_finite() && value > 0.0,
                    "{figure}: {value} `{expr}`"
                ),
            }
        }
    }

    eprintln!(
        "setup {:.1} s, rolled back after {:.1} s of load ({} + {} requests), total {:.1} s; \
         judged on {} + {} requests, p95 {:.1} vs {:.1} ms, TTFT p95 {:.1} vs {:.1} ms; {reason}",
        setup.as_secs_f64(),
        (decided - setup).as_secs_f64(),
        sent[0],
        sent[1],
        begun.elapsed().as_secs_f64(),
        b["requests"],
        c["requests"],
        p95(b),
        p95(c),
        ttft(b),
        ttft(c),
    );
}
