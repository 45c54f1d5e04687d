//! `abload`: an open-loop load generator for `bench/balancer`.
//!
//! Requests arrive as a Poisson process at `--rate` per second for `--duration`, whatever
//! the answers' latency (a closed loop would slow down with the server and hide its
//! queue). Each is a non-streaming chat completion; the end-to-end latency of every
//! answer is kept, and answers are counted by their `model` field (each simulated
//! backend answers with its own name).
//!
//! ```text
//! cargo run --release -p abgate --example abload -- --url http://127.0.0.1:8080/v1/chat/completions \
//!     --host models.local --rate 80 --duration 20s --seed 1
//! ```
//!
//! Output is `key=value` lines: `sent`, `ok`, `errors`, `p50_ms`, `p90_ms`, `p99_ms`,
//! `p999_ms`, `max_ms`, and `model.NAME=count`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};

struct Args {
    url: hyper::Uri,
    host: Option<String>,
    rate: f64,
    duration: Duration,
    seed: u64,
    max_tokens: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut host = None;
    let mut rate: f64 = 50.0;
    let mut duration = Duration::from_secs(10);
    let mut seed = 1;
    let mut max_tokens = 16;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?.parse().map_err(|e| format!("--url: {e}"))?),
            "--host" => host = Some(value()?),
            "--rate" => rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--duration" => {
                duration =
                    humantime::parse_duration(&value()?).map_err(|e| format!("--duration: {e}"))?
            }
            "--seed" => seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--max-tokens" => {
                max_tokens = value()?.parse().map_err(|e| format!("--max-tokens: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !(rate > 0.0 && rate.is_finite()) {
        return Err("--rate must be a positive number".into());
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        host,
        rate,
        duration,
        seed,
        max_tokens,
    })
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
    models: BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("abload: {e}");
            return ExitCode::from(2);
        }
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build_http();
    let body = Bytes::from(format!(
        r#"{{"model":"m","max_tokens":{},"messages":[{{"role":"user","content":"hello"}}]}}"#,
        args.max_tokens
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let start = Instant::now();
    let mut next = Duration::ZERO;
    let mut requests = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while next < args.duration {
        tokio::time::sleep_until((start + next).into()).await;
        let mut request =
            hyper::Request::post(args.url.clone()).header("content-type", "application/json");
        if let Some(host) = &args.host {
            request = request.header("host", host.as_str());
        }
        let request = request
            .body(Full::new(body.clone()))
            .expect("a valid request");
        let client = client.clone();
        let tally = Arc::clone(&tally);
        sent += 1;
        requests.spawn(async move {
            let began = Instant::now();
            let answer = match client.request(request).await {
                Ok(response) if response.status().is_success() => response
                    .into_body()
                    .collect()
                    .await
                    .ok()
                    .map(|b| b.to_bytes()),
                _ => None,
            };
            let elapsed = began.elapsed();
            let mut tally = tally.lock().expect("not poisoned");
            let model = answer.as_ref().and_then(|b| {
                serde_json::from_slice::<serde_json::Value>(b)
                    .ok()
                    .and_then(|v| v["model"].as_str().map(str::to_owned))
            });
            match model {
                Some(model) => {
                    tally.latencies.push(elapsed);
                    *tally.models.entry(model).or_default() += 1;
                }
                None => tally.errors += 1,
            }
        });
        // Exponential gaps: a Poisson process at `rate`.
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        next += Duration::from_secs_f64(-u.ln() / args.rate);
    }
    while requests.join_next().await.is_some() {}
    let mut tally = tally.lock().expect("not poisoned");
    tally.latencies.sort();
    let quantile = |q: f64| {
        let n = tally.latencies.len();
        if n == 0 {
            return f64::NAN;
        }
        let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        tally.latencies[i].as_secs_f64() * 1e3
    };
    println!("sent={sent}");
    println!("ok={}", tally.latencies.len());
    println!("errors={}", tally.errors);
    for (name, q) in [
        ("p50", 0.5),
        ("p90", 0.9),
        ("p99", 0.99),
        ("p999", 0.999),
        ("max", 1.0),
    ] {
        println!("{name}_ms={:.1}", quantile(q));
    }
    for (model, count) in &tally.models {
        println!("model.{model}={count}");
    }
    ExitCode::SUCCESS
}
