//! `abprobe`: the measuring client of `bench/run`.
//!
//! Two modes, both over HTTP/1.1 keep-alive connections with TCP_NODELAY, on a
//! single-threaded runtime (so the probe stays on the core it is pinned to):
//!
//! - `split`: sends N non-streaming chat completions and counts the responses by their
//!   `model` field (each simulated backend answers with its own model name), or by the
//!   value of a response header (`--count-header NAME`, for a proxy that rewrites `model`,
//!   such as LiteLLM), to check a weighted split before anything is timed.
//! - `stream`: runs N streaming chat completions and timestamps every SSE token event as it
//!   arrives: time to first token (request sent → first token event) and the gaps between
//!   consecutive token events. A token event is an SSE `data:` event whose first choice's
//!   `delta.content` is a non-empty string, however the proxy orders or spaces the JSON.
//!
//! `--url` may be repeated: each URL then gets its own N requests at its own concurrency,
//! all at the same time, and its figures are printed with a `uI.` prefix (I from 0 in the
//! order given). Measuring direct and through the gateway side by side this way exposes both
//! to the same moments of machine noise, so their difference is the gateway's.
//!
//! ```text
//! cargo run --release -p abgate --example abprobe -- split  --url http://127.0.0.1:8080/v1/chat/completions --host models.local -n 1000 [-H 'x-experiment-id: exp1']
//! cargo run --release -p abgate --example abprobe -- stream --url http://127.0.0.1:8080/v1/chat/completions --host models.local -n 200 -c 16
//! cargo run --release -p abgate --example abprobe -- stream --url http://127.0.0.1:8001/v1/chat/completions --url http://127.0.0.1:8080/v1/chat/completions --host models.local
//! ```
//!
//! Output is `key=value` lines, easy to read and to parse from a shell script.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Sender = http1::SendRequest<Full<Bytes>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Split,
    Stream,
}

struct Target {
    addr: SocketAddr,
    path: String,
}

struct Opts {
    mode: Mode,
    targets: Vec<Target>,
    host: String,
    requests: usize,
    concurrency: usize,
    headers: Vec<(String, String)>,
    timeout: Duration,
    /// Worker start times are spread over this span (see [`start_offset`]).
    stagger: Duration,
    /// Split mode: count responses by this response header instead of the body's `model`.
    count_header: Option<String>,
}

const USAGE: &str = "usage: abprobe (split|stream) --url http://IP:PORT/PATH... [--host HOST] \
[-n REQUESTS] [-c CONCURRENCY] [-H 'name: value']... [--stagger-ms MS] [--timeout-s SECONDS] \
[--count-header NAME]";

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("split") => Mode::Split,
        Some("stream") => Mode::Stream,
        _ => return Err(USAGE.into()),
    };
    let mut urls = Vec::new();
    let mut host = None;
    let mut requests = if mode == Mode::Split { 1000 } else { 200 };
    let mut concurrency = if mode == Mode::Split { 4 } else { 16 };
    let mut headers = Vec::new();
    let mut timeout = Duration::from_secs(60);
    let mut stagger_ms: Option<u64> = None;
    let mut count_header = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => urls.push(value()?),
            "--host" => host = Some(value()?),
            "--count-header" => count_header = Some(value()?.to_ascii_lowercase()),
            "-n" => requests = value()?.parse().map_err(|e| format!("-n: {e}"))?,
            "-c" => concurrency = value()?.parse().map_err(|e| format!("-c: {e}"))?,
            "--stagger-ms" => {
                stagger_ms = Some(value()?.parse().map_err(|e| format!("--stagger-ms: {e}"))?)
            }
            "--timeout-s" => {
                timeout =
                    Duration::from_secs(value()?.parse().map_err(|e| format!("--timeout-s: {e}"))?)
            }
            "-H" => {
                let h = value()?;
                let (name, val) = h.split_once(':').ok_or_else(|| format!("-H {h}: no ':'"))?;
                headers.push((name.trim().to_string(), val.trim().to_string()));
            }
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if urls.is_empty() {
        return Err(format!("--url is required\n{USAGE}"));
    }
    let mut targets = Vec::new();
    for url in &urls {
        let rest = url
            .strip_prefix("http://")
            .ok_or("--url must start with http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let addr: SocketAddr = authority
            .parse()
            .map_err(|e| format!("--url: {authority} is not IP:PORT ({e})"))?;
        targets.push(Target { addr, path });
    }
    Ok(Opts {
        mode,
        host: host.unwrap_or_else(|| targets[0].addr.to_string()),
        targets,
        requests,
        concurrency: concurrency.max(1),
        headers,
        timeout,
        // Streams all started at once stay in step (each lasts the same time), so every
        // chunk of every stream would arrive in one burst: spread them by default.
        stagger: Duration::from_millis(stagger_ms.unwrap_or(if mode == Mode::Stream {
            1000
        } else {
            0
        })),
        count_header,
    })
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("abprobe: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    let local = tokio::task::LocalSet::new();
    let timeout = opts.timeout;
    let result = local.block_on(&runtime, async move {
        match tokio::time::timeout(timeout, run(opts)).await {
            Ok(r) => r,
            Err(_) => Err(format!("did not finish within {timeout:?}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("abprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the workers gather, shared on one thread.
#[derive(Default)]
struct Tally {
    /// Responses per `model` (split mode).
    models: BTreeMap<String, u64>,
    /// Non-200 responses and transport errors.
    errors: u64,
    first_error: Option<String>,
    /// Time to first token per stream, µs.
    ttft_us: Vec<f64>,
    /// Gaps between consecutive token events, µs.
    gap_us: Vec<f64>,
    /// Token events seen in all streams.
    tokens: u64,
    streams: u64,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

async fn run(opts: Opts) -> Result<(), String> {
    let opts = Rc::new(opts);
    let tallies: Vec<Rc<RefCell<Tally>>> = opts
        .targets
        .iter()
        .map(|_| Rc::new(RefCell::new(Tally::default())))
        .collect();
    // Connect everything first, so no measured request pays for a handshake.
    let mut senders = Vec::new();
    for (index, target) in opts.targets.iter().enumerate() {
        for _ in 0..opts.concurrency.min(opts.requests.max(1)) {
            senders.push((index, connect(target.addr).await?));
        }
    }
    let remaining: Vec<Rc<Cell<usize>>> = opts
        .targets
        .iter()
        .map(|_| Rc::new(Cell::new(opts.requests)))
        .collect();
    let started = Instant::now();
    let mut workers = Vec::new();
    let workers_total = senders.len();
    for (n, (index, sender)) in senders.into_iter().enumerate() {
        let job = Job {
            opts: opts.clone(),
            index,
            offset: start_offset(n, workers_total, opts.stagger),
            remaining: remaining[index].clone(),
            tally: tallies[index].clone(),
        };
        workers.push(tokio::task::spawn_local(worker(job, sender)));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed();
    println!("elapsed_s={:.3}", elapsed.as_secs_f64());
    let mut errors = 0;
    for (index, tally) in tallies.iter().enumerate() {
        let prefix = if opts.targets.len() > 1 {
            format!("u{index}.")
        } else {
            String::new()
        };
        let tally = tally.take();
        errors += tally.errors;
        report(&opts, &prefix, tally);
    }
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    Ok(())
}

fn report(opts: &Opts, prefix: &str, tally: Tally) {
    println!("{prefix}requests={}", opts.requests);
    println!("{prefix}errors={}", tally.errors);
    if let Some(e) = &tally.first_error {
        println!("{prefix}first_error={e}");
    }
    match opts.mode {
        Mode::Split => {
            for (model, n) in &tally.models {
                println!("{prefix}model {model} {n}");
            }
        }
        Mode::Stream => {
            let mut ttft = tally.ttft_us;
            let mut gap = tally.gap_us;
            println!("{prefix}streams={}", tally.streams);
            println!("{prefix}tokens={}", tally.tokens);
            println!("{prefix}gaps={}", gap.len());
            for (name, samples) in [("ttft", &mut ttft), ("gap", &mut gap)] {
                samples.sort_by(f64::total_cmp);
                for (label, q) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)] {
                    println!("{prefix}{name}_{label}_us={:.1}", percentile(samples, q));
                }
                println!(
                    "{prefix}{name}_max_us={:.1}",
                    samples.last().copied().unwrap_or(f64::NAN)
                );
            }
        }
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(opts: &Opts, target: &Target) -> Request<Full<Bytes>> {
    let stream = opts.mode == Mode::Stream;
    let body = format!(
        r#"{{"model":"bench","messages":[{{"role":"user","content":"Say hello."}}],"stream":{stream}}}"#
    );
    let mut builder = Request::post(target.path.as_str())
        .header("host", opts.host.as_str())
        .header("content-type", "application/json");
    for (name, value) in &opts.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request")
}

/// What one worker does: requests to one target, counted in that target's tally.
struct Job {
    opts: Rc<Opts>,
    index: usize,
    /// When this worker sends its first request, after the start.
    offset: Duration,
    remaining: Rc<Cell<usize>>,
    tally: Rc<RefCell<Tally>>,
}

/// Worker `n` of `total` starts at an even share of `span`, taken in a scrambled order so
/// that the workers of one target are spread over the whole span, not bunched in one part.
fn start_offset(n: usize, total: usize, span: Duration) -> Duration {
    if total == 0 || span.is_zero() {
        return Duration::ZERO;
    }
    // Golden-ratio sequence: n * 0.618... mod 1 fills [0, 1) evenly for every prefix.
    let fraction = (n as f64 * 0.618_033_988_749_895).fract();
    span.mul_f64(fraction)
}

async fn worker(job: Job, mut sender: Sender) {
    let opts = &*job.opts;
    let target = &opts.targets[job.index];
    tokio::time::sleep(job.offset).await;
    loop {
        let left = job.remaining.get();
        if left == 0 {
            return;
        }
        job.remaining.set(left - 1);
        if sender.ready().await.is_err() {
            // The server closed the connection: open another one.
            match connect(target.addr).await {
                Ok(s) => sender = s,
                Err(e) => {
                    job.tally.borrow_mut().error(e);
                    continue;
                }
            }
        }
        let request = request(opts, target);
        let result = match opts.mode {
            Mode::Split => {
                one_split(
                    request,
                    &mut sender,
                    opts.count_header.as_deref(),
                    &job.tally,
                )
                .await
            }
            Mode::Stream => one_stream(request, &mut sender, &job.tally).await,
        };
        if let Err(e) = result {
            job.tally.borrow_mut().error(e);
        }
    }
}

async fn one_split(
    request: Request<Full<Bytes>>,
    sender: &mut Sender,
    count_header: Option<&str>,
    tally: &RefCell<Tally>,
) -> Result<(), String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let by_header = count_header.map(|name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
            .to_string()
    });
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("response is not JSON: {e}"))?;
    let model = by_header.unwrap_or_else(|| {
        value
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or("<none>")
            .to_string()
    });
    *tally.borrow_mut().models.entry(model).or_default() += 1;
    Ok(())
}

/// Whether an SSE event carries a token: a `data:` line whose JSON has a non-empty
/// `choices[0].delta.content` (the role chunk and the closing chunk have none, and
/// `data: [DONE]` is not JSON). Parsed rather than matched as bytes, because proxies that
/// re-serialize chunks (LiteLLM) order and space the fields their own way.
fn is_token_event(event: &[u8]) -> bool {
    event
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .any(|data| {
            serde_json::from_slice::<serde_json::Value>(data.trim_ascii()).is_ok_and(|v| {
                v.pointer("/choices/0/delta/content")
                    .and_then(|c| c.as_str())
                    .is_some_and(|c| !c.is_empty())
            })
        })
}

async fn one_stream(
    request: Request<Full<Bytes>>,
    sender: &mut Sender,
    tally: &RefCell<Tally>,
) -> Result<(), String> {
    let sent = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    if status != hyper::StatusCode::OK {
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ));
    }
    // Bytes of an event not yet complete.
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut token_times: Vec<Instant> = Vec::with_capacity(256);
    while let Some(frame) = body.frame().await {
        let now = Instant::now();
        let frame = frame.map_err(|e| format!("stream: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        // Every complete event in what has arrived was completed by this frame.
        let mut start = 0;
        while let Some(end) = find(&pending[start..], b"\n\n") {
            let event = &pending[start..start + end];
            if is_token_event(event) {
                token_times.push(now);
            }
            start += end + 2;
        }
        pending.drain(..start);
    }
    let mut t = tally.borrow_mut();
    t.streams += 1;
    t.tokens += token_times.len() as u64;
    let Some(first) = token_times.first() else {
        return Err("a stream without a token".into());
    };
    t.ttft_us
        .push(first.duration_since(sent).as_secs_f64() * 1e6);
    for pair in token_times.windows(2) {
        t.gap_us
            .push(pair[1].duration_since(pair[0]).as_secs_f64() * 1e6);
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
