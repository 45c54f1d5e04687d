//! `abgate demo`: the whole product on one machine with nothing installed. Simulated model
//! versions stand in for the seed's endpoints, the gateway serves the seed's
//! configuration, a load generator plays users, and a canary experiment ramps the
//! candidate up or rolls it back while the progress shows; then the report.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abgate_config::{SourceFile, Summary as DiagnosticSummary};
use abgate_proxy::ServeOptions;
use abgate_sim::SimArgs;
use abgate_state::Store;
use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::watch;

use abgate_control::Controller;

/// Arguments of `abgate demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// `improvement`: the candidate is faster and ends promoted; `regression`: it is
    /// slower and fails more, and ends rolled back.
    #[arg(long, value_enum, default_value_t = Scenario::Improvement)]
    scenario: Scenario,
    /// Concurrent simulated users.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Give up after this long if the experiment has not ended.
    #[arg(long, default_value = "110s", value_parser = parse_duration)]
    max_duration: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    abgate_config::duration::parse(text)
}

/// How the candidate behaves.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Improvement,
    Regression,
}

const EXPERIMENT_ID: &str = "demo-canary";

/// The canary the demo runs: the seed's v1-0 against v1-1, ramped by the seed's rules.
const EXPERIMENT: &str = r#"
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {name: demo-canary, namespace: production}
spec:
  description: Canary of llama-3.1-8b v1.1 against v1.0 (abgate demo)
  host: llama-3.1-8b-service
  baseline: v1-0
  variants: [{name: v1-0, weight: 90}, {name: v1-1, weight: 10}]
  strategy: canary
  interval: 3s
  duration: 100s
  canary: {stepWeight: 10, maxWeight: 50}
  analysis: {minSamples: 40}
  match: [{headers: {x-experiment-id: {exact: demo-canary}}}]
  stickiness: {header: x-user-id}
  rollback_criteria: {latency_degradation: 0.2, success_rate_drop: 0.95}
"#;

/// Runs the demo; exits 0 when the experiment reached an outcome.
pub fn run(args: DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("abgate demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("abgate demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A simulated model server for one of the seed's endpoints.
fn sim_for(port: u16, scenario: Scenario) -> SimArgs {
    let model = match port {
        18011 | 18012 => "llama-3.1-70b",
        _ => "llama-3.1-8b",
    };
    let mut args = SimArgs {
        model: format!("{model}-{port}"),
        ttft_ms: 40,
        tokens_per_second: 400.0,
        output_tokens: 16,
        latency_jitter: 0.3,
        seed: Some(u64::from(port)),
        ..SimArgs::default()
    };
    // 18003 is the seed's v1-1 (candidate) endpoint.
    if port == 18003 {
        match scenario {
            Scenario::Improvement => {
                args.ttft_ms = 25;
                args.tokens_per_second = 600.0;
            }
            Scenario::Regression => {
                args.ttft_ms = 70;
                args.tokens_per_second = 250.0;
                args.error_rate = 0.08;
            }
        }
    }
    args
}

async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let (stop_tx, stop) = watch::channel(false);
    println!("abgate demo: scenario {:?}", args.scenario);

    // Simulated model servers in place of the seed's endpoints.
    let mut ports = Vec::new();
    for seed_port in [18001u16, 18002, 18003, 18004, 18011, 18012] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mut stopped = stop.clone();
        tokio::spawn(abgate_sim::serve(
            listener,
            sim_for(seed_port, args.scenario),
            async move {
                let _ = stopped.changed().await;
            },
        ));
        ports.push((seed_port, port));
    }
    let describe = |scenario| match scenario {
        Scenario::Improvement => "faster (TTFT 25 ms, 600 tokens/s)",
        Scenario::Regression => "slower (TTFT 70 ms, 250 tokens/s) and failing 8% of requests",
    };
    println!(
        "  model servers: 6 simulated (baseline v1-0: TTFT 40 ms, 400 tokens/s; candidate v1-1: {})",
        describe(args.scenario)
    );

    // The seed's configuration, its endpoints pointed at the simulated servers.
    let mut service_entries =
        include_str!("../../../examples/seed/service-entries.yaml").to_owned();
    for (seed_port, port) in &ports {
        service_entries = service_entries.replace(
            &format!("{{http: {seed_port}}}"),
            &format!("{{http: {port}}}"),
        );
    }
    let files = [
        (
            "examples/seed/llm-gateway.yaml",
            include_str!("../../../examples/seed/llm-gateway.yaml").to_owned(),
        ),
        (
            "examples/seed/destination-rules.yaml",
            include_str!("../../../examples/seed/destination-rules.yaml").to_owned(),
        ),
        ("examples/seed/service-entries.yaml", service_entries),
        ("demo/experiment.yaml", EXPERIMENT.to_owned()),
    ];
    let sources: Vec<SourceFile> = files
        .into_iter()
        .map(|(path, text)| SourceFile {
            path: Arc::from(std::path::Path::new(path)),
            text,
        })
        .collect();
    let loaded = abgate_config::load_sources(&sources);
    println!(
        "  configuration: the seed's Gateway, VirtualService and DestinationRules ({}; `abgate analyze -f examples/seed` explains them; what Istio would refuse is left out)",
        DiagnosticSummary::of(&loaded.diagnostics)
    );

    let running = abgate_proxy::start(
        &loaded.config,
        &ServeOptions {
            listen: Some("127.0.0.1:0".parse().expect("a valid address")),
            listen_tls: None,
            admin: "127.0.0.1:0".parse().expect("a valid address"),
            certs: None,
            access_log: None,
            otlp_endpoint: None,
            analysis_window: Some(Duration::from_secs(1)),
        },
    )
    .await?;
    let gateway = running
        .http_addr()
        .context("the gateway has no HTTP listener")?;
    println!(
        "  gateway: http://{gateway} (admin http://{})",
        running.admin
    );

    let state_dir = std::env::temp_dir().join(format!("abgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir)?;
    let store = Store::open(&state_dir.join("state.db"))?;
    let controller = crate::actuator::start_controller(
        running.control(),
        store,
        abgate_outbound::Client::unrestricted(),
    )?;
    tokio::spawn(Arc::clone(&controller).run(stop.clone()));
    println!(
        "  experiment: {EXPERIMENT_ID}, canary of v1-1 from 10%, +10 points per healthy analysis up to 50%, then promotion; analysed every 3 s by the sequential policy (always-valid confidence sequences on errors, p95 latency and TTFT)"
    );
    println!();

    let load = Load::start(gateway, args.concurrency, stop.clone());
    let outcome = watch_progress(&controller, &load, started, args.max_duration).await;
    let _ = stop_tx.send(true);

    println!();
    let report = controller.report(EXPERIMENT_ID).await?;
    println!("{}", report.to_markdown());
    running.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    let summary = controller.summary(EXPERIMENT_ID)?;
    let line = match summary.phase {
        abgate_experiment::Phase::Promoted => format!(
            "outcome: promoted {} (the candidate) after {:.0} s",
            summary.winner.as_deref().unwrap_or("?"),
            started.elapsed().as_secs_f64()
        ),
        abgate_experiment::Phase::RolledBack => format!(
            "outcome: rolled back to {} (the baseline) after {:.0} s",
            summary.baseline,
            started.elapsed().as_secs_f64()
        ),
        phase => format!(
            "outcome: {phase} after {:.0} s",
            started.elapsed().as_secs_f64()
        ),
    };
    println!("{line}");
    Ok(outcome)
}

/// Prints a progress line a second until the experiment ends or time runs out. Returns
/// whether it ended.
async fn watch_progress(
    controller: &Controller,
    load: &Load,
    started: Instant,
    limit: Duration,
) -> bool {
    let mut last_reason = String::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(summary) = controller.summary(EXPERIMENT_ID) else {
            return false;
        };
        let split: Vec<(&str, u64)> = summary
            .split
            .iter()
            .map(|(v, w)| (v.as_str(), u64::from(*w)))
            .collect();
        let split_bar = crate::watch::split_bar(&split, &summary.baseline);
        let (sent, failed) = load.counts();
        println!(
            "[{:>3} s] {split_bar}  requests {sent:>6} (failed {:.1}%)  {}",
            started.elapsed().as_secs(),
            if sent > 0 {
                100.0 * failed as f64 / sent as f64
            } else {
                0.0
            },
            summary.phase
        );
        // A new decision (or analysis) prints its summary; the report keeps the reasons.
        if summary.last_reason != last_reason && !summary.last_reason.is_empty() {
            println!("        decision: {}", summary.last_summary);
            last_reason = summary.last_reason.clone();
        }
        if summary.phase.is_terminal() {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
    }
}

/// Simulated users sending chat completions through the gateway, in the experiment.
struct Load {
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Load {
    fn start(gateway: SocketAddr, workers: usize, stop: watch::Receiver<bool>) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        for worker in 0..workers {
            let (client, sent, failed, mut stop) = (
                client.clone(),
                Arc::clone(&sent),
                Arc::clone(&failed),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut n: u64 = worker as u64;
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let user = (n >> 33) % 5000;
                    let body = Bytes::from_static(br#"{"model":"llama-3.1-8b","messages":[{"role":"user","content":"Summarise the release notes"}],"max_tokens":16}"#);
                    let request =
                        http::Request::post(format!("http://{gateway}/v1/chat/completions"))
                            .header("host", "api.llm-platform.com")
                            .header("content-type", "application/json")
                            .header("x-experiment-id", EXPERIMENT_ID)
                            .header("x-user-id", format!("user-{user}"))
                            .body(Full::new(body));
                    let Ok(request) = request else { return };
                    let ok = tokio::select! {
                        r = client.request(request) => match r {
                            Ok(response) => {
                                let status = response.status();
                                response.into_body().collect().await.is_ok() && status.is_success()
                            }
                            Err(_) => false,
                        },
                        _ = stop.changed() => return,
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        Self { sent, failed }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
