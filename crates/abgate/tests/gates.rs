//! Deadlines, limits and webhook gates hold for experiments run by `abgate serve`: a
//! stuck experiment passes its progress deadline and rolls back; a refused pre-rollout
//! gate keeps the candidate dark and rolls back at the failure limit; a rollback gate that
//! answers yes rolls back; a refused promotion holds until the gate agrees; event gates
//! hear every decision. Gates are called over HTTPS too, within a total deadline and a
//! body limit, each experiment's apart from the others', and only where `--gate-allow`
//! lets them.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{chat, start_gateway, start_sim, write_mesh, Gateway, Processes};
use serde_json::Value;

/// How a test webhook answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// The status it is set to, with an empty body.
    Status,
    /// 200 and its head at once, then a body of 10,000 bytes (under the gateway's limit)
    /// at one byte every 100 ms.
    Drip,
    /// 200 and a chunked body of this many bytes, written as fast as it is taken.
    Huge(usize),
}

/// A webhook receiver on 127.0.0.1, one thread per connection, keeping the JSON bodies
/// it got.
struct Hook {
    url: String,
    status: Arc<AtomicU16>,
    bodies: Arc<Mutex<Vec<Value>>>,
    /// Body bytes written by `Drip` and `Huge` answers.
    written: Arc<AtomicUsize>,
    /// An answer was cut off by the gateway before it was all written.
    cut: Arc<AtomicBool>,
}

impl Hook {
    fn start(status: u16) -> Hook {
        Hook::serve(Answer::Status, status, None)
    }

    fn answering(answer: Answer) -> Hook {
        Hook::serve(answer, 200, None)
    }

    /// Over TLS with `config` (its certificate names 127.0.0.1).
    fn start_tls(status: u16, config: Arc<rustls::ServerConfig>) -> Hook {
        Hook::serve(Answer::Status, status, Some(config))
    }

    fn serve(answer: Answer, status: u16, tls: Option<Arc<rustls::ServerConfig>>) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/hook", listener.local_addr().expect("addr"));
        let hook = Hook {
            url,
            status: Arc::new(AtomicU16::new(status)),
            bodies: Arc::new(Mutex::new(Vec::new())),
            written: Arc::new(AtomicUsize::new(0)),
            cut: Arc::new(AtomicBool::new(false)),
        };
        let shared = hook.shared();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                let tls = tls.clone();
                thread::spawn(move || match tls {
                    Some(config) => {
                        let connection = rustls::ServerConnection::new(config).expect("tls");
                        shared.exchange(rustls::StreamOwned::new(connection, stream), answer);
                    }
                    None => shared.exchange(stream, answer),
                });
            }
        });
        hook
    }

    fn shared(&self) -> HookState {
        HookState {
            status: Arc::clone(&self.status),
            bodies: Arc::clone(&self.bodies),
            written: Arc::clone(&self.written),
            cut: Arc::clone(&self.cut),
        }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().expect("lock").clone()
    }

    /// Waits until the hook has received `n` requests, at most `limit`; whether it has.
    fn wait_for_requests(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.bodies().len() < n {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// What the connection threads of a [`Hook`] share with it.
#[derive(Clone)]
struct HookState {
    status: Arc<AtomicU16>,
    bodies: Arc<Mutex<Vec<Value>>>,
    written: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
}

impl HookState {
    /// Reads one request and answers it as `answer` says.
    fn exchange(&self, mut stream: impl Read + Write, answer: Answer) {
        let Some(body) = read_request(&mut stream) else {
            return;
        };
        if let Ok(v) = serde_json::from_slice(&body) {
            self.bodies.lock().expect("lock").push(v);
        }
        let finished = match answer {
            Answer::Status => {
                let code = self.status.load(Ordering::SeqCst);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.flush();
                return;
            }
            Answer::Drip => self.drip(&mut stream),
            Answer::Huge(size) => self.huge(&mut stream, size),
        };
        if !finished {
            self.cut.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the whole dripped body went out.
    fn drip(&self, stream: &mut impl Write) -> bool {
        let length = 10_000;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
        if stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.flush())
            .is_err()
        {
            return false;
        }
        for _ in 0..length {
            thread::sleep(Duration::from_millis(100));
            if stream
                .write_all(b"x")
                .and_then(|()| stream.flush())
                .is_err()
            {
                return false;
            }
            self.written.fetch_add(1, Ordering::SeqCst);
        }
        true
    }

    /// Whether the whole huge body went out.
    fn huge(&self, stream: &mut impl Write, size: usize) -> bool {
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return false;
        }
        let chunk = vec![b'x'; 64 << 10];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            let framed = [format!("{n:x}\r\n").as_bytes(), &chunk[..n], b"\r\n"].concat();
            if stream.write_all(&framed).is_err() {
                return false;
            }
            self.written.fetch_add(n, Ordering::SeqCst);
            left -= n;
        }
        stream
            .write_all(b"0\r\n\r\n")
            .and_then(|()| stream.flush())
            .is_ok()
    }
}

/// Reads a request's head and its `content-length` body; `None` if the peer goes away.
fn read_request(stream: &mut impl Read) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buffer).ok().filter(|&n| n > 0)?;
        raw.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = stream.read(&mut buffer).ok().filter(|&n| n > 0)?;
        raw.extend_from_slice(&buffer[..n]);
    }
    Some(raw[head_end..head_end + length].to_vec())
}

const ID: &str = "gated";

fn experiment(extra: &str) -> String {
    experiment_named(ID, extra)
}

fn experiment_named(id: &str, extra: &str) -> String {
    format!(
        r#"---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: {id}, namespace: production}}
spec:
  host: llama-3.1-8b-service
  baseline: v1-0
  variants: [{{name: v1-0, weight: 50}}, {{name: v1-1, weight: 50}}]
  policy: classic
  interval: 1s
  match: [{{headers: {{x-experiment-id: {{exact: {id}}}}}}}]
{extra}"#
    )
}

fn setup(
    processes: &mut Processes,
    dir: &std::path::Path,
    extra: &str,
    candidate_ttft: u64,
) -> Gateway {
    setup_with(processes, dir, &experiment(extra), candidate_ttft, &[])
}

/// The mesh with `experiments` (YAML documents), and `abgate serve` with `serve_args`.
fn setup_with(
    processes: &mut Processes,
    dir: &std::path::Path,
    experiments: &str,
    candidate_ttft: u64,
    serve_args: &[&str],
) -> Gateway {
    let v10 = start_sim(processes, "v1-0", 40);
    let v11 = start_sim(processes, "v1-1", candidate_ttft);
    write_mesh(dir, v10, v11, false, experiments);
    let mut args = vec!["--analysis-window", "1s"];
    args.extend_from_slice(serve_args);
    start_gateway(
        processes,
        "gateway",
        &dir.join("mesh.yaml"),
        &dir.join("state.db"),
        &args,
    )
}

/// Polls the experiment until `done` holds for it, for at most `limit`.
fn wait_until(
    gateway: &Gateway,
    limit: Duration,
    load: impl FnMut(),
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_until_for(gateway, ID, limit, load, done)
}

/// [`wait_until`] for experiment `id`.
fn wait_until_for(
    gateway: &Gateway,
    id: &str,
    limit: Duration,
    mut load: impl FnMut(),
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        load();
        let summary = gateway.experiment(id);
        if done(&summary) || Instant::now() > deadline {
            return summary;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn last_decision(gateway: &Gateway) -> Value {
    last_decision_of(gateway, ID)
}

fn last_decision_of(gateway: &Gateway, id: &str) -> Value {
    gateway.report(id)["decisions"]
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
fn a_rollback_gate_that_cannot_answer_fails_analyses_and_rolls_back_at_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    // Nothing listens there: no answer, which is not a "no".
    let url = format!("http://127.0.0.1:{}/hook", common::free_port());
    let extra = format!(
        "  failureLimit: 2\n  gates:\n  - {{name: pager, type: rollback, url: {url}, timeout: 1s}}\n"
    );
    let gateway = setup(&mut processes, dir.path(), &extra, 40);
    let summary = wait_until(
        &gateway,
        Duration::from_secs(15),
        || {},
        |s| s["phase"] != "running",
    );
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    let reason = last_decision(&gateway)["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("failureLimit 2") && reason.contains("rollback gate pager failed"),
        "{reason}"
    );
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

/// A certificate authority made for the test, and a server configuration whose
/// certificate for 127.0.0.1 it signed; the CA certificate is written to `ca_file`.
fn test_ca(ca_file: &Path) -> Arc<rustls::ServerConfig> {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "abgate gate test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    std::fs::write(ca_file, ca.pem()).expect("CA file written");

    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let certificate = params.signed_by(&key, &ca).expect("server certificate");
    let chain = vec![certificate.der().clone()];
    let private = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .expect("server config");
    Arc::new(config)
}

#[test]
fn an_https_confirm_promotion_gate_signed_by_a_given_ca_lets_the_promotion_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let ca_file = dir.path().join("gate-ca.pem");
    let gate = Hook::start_tls(200, test_ca(&ca_file));
    assert!(gate.url.starts_with("https://127.0.0.1:"), "{}", gate.url);
    let extra = format!(
        "  canary: {{stepWeight: 50, maxWeight: 50}}\n  analysis: {{minSamples: 5}}\n  failureLimit: 2\n  gates:\n  - {{name: release-manager, type: confirm-promotion, url: {}, timeout: 5s}}\n",
        gate.url
    );
    let ca = ca_file.to_str().expect("UTF-8 path");
    // The allow-list holds the gate's address: it is called.
    let gateway = setup_with(
        &mut processes,
        dir.path(),
        &experiment(&extra),
        5,
        &["--gate-ca-file", ca, "--gate-allow", "127.0.0.0/8"],
    );
    let load = || {
        for _ in 0..4 {
            chat(gateway.http, Some(ID));
        }
    };
    let summary = wait_until(&gateway, Duration::from_secs(20), load, |s| {
        s["phase"] != "running"
    });
    assert_eq!(summary["phase"], "promoted", "{summary}");
    assert_eq!(summary["winner"], "v1-1");
    let asked = gate.bodies();
    assert!(!asked.is_empty(), "the gate was asked over TLS");
    assert_eq!(asked[0]["decision"]["kind"], "promote", "{}", asked[0]);
}

#[test]
fn a_gate_that_drips_its_body_fails_at_its_deadline_and_delays_no_other_experiment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let slow = Hook::answering(Answer::Drip);
    let healthy = Hook::start(404);
    // `a-slow` comes first in every ordering of ids: it cannot hide behind the other.
    let experiments = [
        experiment_named(
            "a-slow",
            &format!(
                "  failureLimit: 1\n  gates:\n  - {{name: smoke-test, type: pre-rollout, url: {}, timeout: 8s}}\n",
                slow.url
            ),
        ),
        experiment_named(
            "b-healthy",
            &format!(
                "  gates:\n  - {{name: pager, type: rollback, url: {}, timeout: 2s}}\n",
                healthy.url
            ),
        ),
    ]
    .concat();
    let gateway = setup_with(&mut processes, dir.path(), &experiments, 40, &[]);

    assert!(
        slow.wait_for_requests(1, Duration::from_secs(10)),
        "the slow gate was asked"
    );
    let asked_at = Instant::now();
    let before = healthy.bodies().len();
    // While the slow gate drips, the other experiment is analysed at every interval.
    assert!(
        healthy.wait_for_requests(before + 2, Duration::from_secs(5)),
        "the healthy experiment's gate was asked {} times after the slow gate's call began",
        healthy.bodies().len() - before
    );
    assert!(
        !slow.cut.load(Ordering::SeqCst) && asked_at.elapsed() < Duration::from_secs(8),
        "the healthy experiment went on while the slow gate was still dripping"
    );
    assert_eq!(gateway.experiment("b-healthy")["phase"], "running");

    let summary = wait_until_for(
        &gateway,
        "a-slow",
        Duration::from_secs(20),
        || {},
        |s| s["phase"] == "rolled_back",
    );
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    let reason = last_decision_of(&gateway, "a-slow")["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("failureLimit 1")
            && reason.contains("pre-rollout gate smoke-test failed: no complete answer within 8s"),
        "{reason}"
    );
    assert!(
        asked_at.elapsed() >= Duration::from_secs(7),
        "not before the deadline"
    );
    // The gateway hung up on the drip at the deadline: its connection ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !slow.cut.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slow.cut.load(Ordering::SeqCst),
        "the dripping answer was cut off"
    );
}

#[test]
fn a_gate_answering_a_huge_body_is_cut_at_64_kib_and_fails_the_analysis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let offered = 50 << 20;
    let gate = Hook::answering(Answer::Huge(offered));
    let extra = format!(
        "  failureLimit: 1\n  gates:\n  - {{name: smoke-test, type: pre-rollout, url: {}, timeout: 20s}}\n",
        gate.url
    );
    let gateway = setup(&mut processes, dir.path(), &extra, 40);
    let summary = wait_until(
        &gateway,
        Duration::from_secs(20),
        || {},
        |s| s["phase"] != "running",
    );
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    let reason = last_decision(&gateway)["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("gate smoke-test failed: the answer's body is larger than 64 KiB"),
        "{reason}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gate.cut.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(gate.cut.load(Ordering::SeqCst), "the gateway hung up");
    // What was written before the hang-up is the 64 KiB read and what the sockets'
    // buffers held, far from the body offered.
    let written = gate.written.load(Ordering::SeqCst);
    assert!(written < offered / 4, "{written} of {offered} bytes taken");
}

#[test]
fn gate_allow_refuses_a_gate_outside_its_networks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let gate = Hook::start(200);
    let extra = format!(
        "  failureLimit: 1\n  gates:\n  - {{name: smoke-test, type: pre-rollout, url: {}, timeout: 5s}}\n",
        gate.url
    );
    let gateway = setup_with(
        &mut processes,
        dir.path(),
        &experiment(&extra),
        40,
        &["--gate-allow", "10.0.0.0/8,192.168.0.0/16"],
    );
    let summary = wait_until(
        &gateway,
        Duration::from_secs(15),
        || {},
        |s| s["phase"] != "running",
    );
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    let reason = last_decision(&gateway)["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains(
            "gate smoke-test failed: 127.0.0.1 resolves to 127.0.0.1, outside --gate-allow"
        ),
        "{reason}"
    );
    assert!(gate.bodies().is_empty(), "the gate was never called");
}
