//! Seeded simulations of the `sequential` policy through `step` and `apply`, the way
//! the controller runs it: at every interval the current period's raw windows
//! (`WindowStats` built by recording samples into moments and sketches) are judged, the
//! decision is applied, and a changed split starts a new period with empty windows.
//!
//! Margins. A check counts events (false rollbacks, false winners) among `n`
//! independent simulated experiments. If the true rate is `q`, the count is
//! Binomial(n, q), with standard deviation `sqrt(n·q(1−q))`. A check allows `n·α` plus
//! three standard deviations at `q = α`, so a policy that keeps its promise fails it
//! with probability about 0.13%; the seeds are fixed, so the outcome is the same every
//! run. Power checks allow the stated power minus three standard deviations.
//!
//! `ABGATE_SIM_SCALE=10 cargo test --release -p abgate-experiment --test simulation --
//! --nocapture` runs ten times as many experiments and prints the figures.

use abgate_config::model::Experiment;
use abgate_experiment::{
    apply, step, Decision, ExperimentState, Observations, Phase, Policy, Sequential,
};
use abgate_stats::{mixture_rho, sequential_halfwidth, Alternative};
use abgate_telemetry::WindowStats;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod common;

use common::{experiment, normal, T0};

const ALPHA: f64 = 0.05;
/// How many times the default sizes to run (`ABGATE_SIM_SCALE`, 1 by default).
fn scale() -> usize {
    std::env::var("ABGATE_SIM_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// The largest count allowed among `n` trials when the rate should be ≤ `rate`.
fn upper_bound(n: usize, rate: f64) -> usize {
    let n_f = n as f64;
    (n_f * rate + 3.0 * (n_f * rate * (1.0 - rate)).sqrt()).floor() as usize
}

/// The smallest count allowed among `n` trials when the rate should be ≥ `rate`.
fn lower_bound(n: usize, rate: f64) -> usize {
    let n_f = n as f64;
    (n_f * rate - 3.0 * (n_f * rate * (1.0 - rate)).sqrt())
        .ceil()
        .max(0.0) as usize
}

/// One request: failed or not, its latency, its TTFT (if it produced a first token).
struct Sample {
    error: bool,
    latency_ms: f64,
    ttft_ms: Option<f64>,
}

/// How a variant serves requests.
type Server = Box<dyn Fn(&mut SmallRng) -> Sample>;

/// A log-normal model server: latency around `median` ms (σ 0.5), TTFT around
/// `ttft` ms (σ 0.3), failing with probability `error_rate`.
fn lognormal(median: f64, ttft: f64, error_rate: f64) -> Server {
    Box::new(move |rng| Sample {
        error: rng.random::<f64>() < error_rate,
        latency_ms: median * (0.5 * normal(rng)).exp(),
        ttft_ms: Some(ttft * (0.3 * normal(rng)).exp()),
    })
}

/// The demo's simulated server (`abgate demo`, `abgate-sim`): an injected error
/// answers at once; otherwise TTFT and 16 tokens at `tokens_per_second`, every delay
/// scaled by one factor drawn from U(0.7, 1.3), plus about a millisecond of gateway.
fn demo_server(ttft: f64, tokens_per_second: f64, error_rate: f64) -> Server {
    Box::new(move |rng| {
        if rng.random::<f64>() < error_rate {
            return Sample {
                error: true,
                latency_ms: 1.0,
                ttft_ms: None,
            };
        }
        let f = rng.random_range(0.7..=1.3);
        let first = ttft * f;
        Sample {
            error: false,
            latency_ms: first + 16.0 / tokens_per_second * 1000.0 * f + 1.0,
            ttft_ms: Some(first + 1.0),
        }
    })
}

fn record(w: &mut WindowStats, s: &Sample) {
    w.count += 1;
    w.errors += u64::from(s.error);
    w.latency_ms.moments.add(s.latency_ms);
    w.latency_ms.sketch.add(s.latency_ms);
    if let Some(t) = s.ttft_ms {
        w.ttft_ms.moments.add(t);
        w.ttft_ms.sketch.add(t);
    }
}

/// Traffic: `per_look` requests between looks, `first_look` in a period's first (the
/// controller skips the window the split changed in).
struct Traffic {
    per_look: u64,
    first_look: u64,
    interval_ms: u64,
    max_looks: u64,
}

/// How one simulated experiment ended.
#[derive(Debug)]
struct Run {
    phase: Phase,
    winner: Option<String>,
    looks: u64,
    /// Requests each variant served in the period the experiment ended in.
    last_period: Vec<u64>,
    /// Whether any look's verdict claimed the candidate improved.
    claimed_improved: bool,
    /// Whether any look was halted by a sample ratio mismatch.
    halted: bool,
    last_reason: String,
}

fn run(spec: &Experiment, servers: &[Server], traffic: &Traffic, rng: &mut SmallRng) -> Run {
    let policy = Sequential::default();
    let mut state = ExperimentState::new(spec, T0);
    let mut windows = vec![WindowStats::default(); servers.len()];
    let mut in_period = 0;
    let mut claimed_improved = false;
    let mut halted = false;
    let mut last_reason = String::new();
    for look in 1..=traffic.max_looks {
        let now = T0 + look * traffic.interval_ms;
        let shares = state.percentages();
        let n = if in_period == 0 {
            traffic.first_look
        } else {
            traffic.per_look
        };
        for _ in 0..n {
            let mut u = rng.random_range(0..100u32);
            let v = shares
                .iter()
                .position(|&w| {
                    if u < w {
                        true
                    } else {
                        u -= w;
                        false
                    }
                })
                .expect("shares sum to 100");
            let s = servers[v](rng);
            record(&mut windows[v], &s);
        }
        in_period += 1;
        let obs = Observations::from_stats(spec, windows.clone(), state.period_started_at, now);
        let verdict = policy.analyze(spec, &state, &obs);
        claimed_improved |= verdict.is_improved();
        halted |= verdict.is_halted();
        let d = step(spec, &state, &obs, now);
        last_reason = d.reason().to_owned();
        let period = state.period;
        apply(spec, &mut state, &d, now);
        if state.phase.is_terminal() || matches!(d, Decision::Finish { .. }) {
            return Run {
                phase: state.phase,
                winner: state.winner,
                looks: look,
                last_period: windows.iter().map(|w| w.count).collect(),
                claimed_improved,
                halted,
                last_reason,
            };
        }
        if state.period != period {
            windows = vec![WindowStats::default(); servers.len()];
            in_period = 0;
        }
    }
    Run {
        phase: state.phase,
        winner: state.winner,
        looks: traffic.max_looks,
        last_period: windows.iter().map(|w| w.count).collect(),
        claimed_improved,
        halted,
        last_reason,
    }
}

/// A/A canary: the seed's canary (70/30, +10 up to 50) with the strictest rollback
/// criteria (no latency tolerance), 1% errors on both sides, 200 requests per interval.
/// Stepping on "no harm shown", an equal candidate is promoted; what must stay under
/// alpha over the whole course (3 planned periods, α/3 each) is a false rollback, and,
/// separately, a false claim that the candidate improved.
#[test]
fn aa_canary_rolls_back_and_claims_improvement_at_most_alpha() {
    let experiments = 4000 * scale();
    let spec = experiment(
        "sim",
        "traffic_split: {v1-0: 70, v1-1: 30}\nstrategy: canary\ninterval: 1m\nduration: 2h\nrollback_criteria: {success_rate_drop: 0.95}\nanalysis: {minSamples: 100}",
    );
    let servers = [lognormal(500.0, 40.0, 0.01), lognormal(500.0, 40.0, 0.01)];
    let traffic = Traffic {
        per_look: 200,
        first_look: 200,
        interval_ms: 60_000,
        max_looks: 120,
    };
    let mut rng = SmallRng::seed_from_u64(0xAA_CA);
    let (mut rolled_back, mut promoted, mut improved, mut halted, mut looks) = (0, 0, 0, 0, 0);
    let mut example = None;
    for _ in 0..experiments {
        let r = run(&spec, &servers, &traffic, &mut rng);
        looks += r.looks;
        match r.phase {
            Phase::RolledBack => {
                rolled_back += 1;
                example.get_or_insert(r.last_reason.clone());
            }
            Phase::Promoted => promoted += 1,
            _ => {}
        }
        improved += usize::from(r.claimed_improved);
        halted += usize::from(r.halted);
    }
    let hi = upper_bound(experiments, ALPHA);
    eprintln!(
        "A/A canary, {experiments} experiments ({} looks on average): false rollbacks {rolled_back} ({:.2}%), \
         false improvement claims {improved} ({:.2}%), allowed ≤ {hi} each; promoted {promoted}; \
         ever halted by SRM {halted}",
        looks as f64 / experiments as f64,
        100.0 * rolled_back as f64 / experiments as f64,
        100.0 * improved as f64 / experiments as f64,
    );
    if let Some(e) = example {
        eprintln!("  a false rollback: {e}");
    }
    assert!(rolled_back <= hi, "{rolled_back} false rollbacks");
    assert!(improved <= hi, "{improved} false improvement claims");
    // Everything else steps through and is promoted (an equal candidate is what a
    // canary rolls out).
    assert_eq!(promoted + rolled_back, experiments);
}

/// A/A A/B test: 50/50, 200 requests per interval, looked at 40 times, then the verdict.
/// False rollbacks (any look) and false winners (either variant named at the end) each
/// at most alpha.
#[test]
fn aa_abtest_rolls_back_and_names_a_winner_at_most_alpha() {
    let experiments = 3000 * scale();
    let spec = experiment(
        "sim",
        "traffic_split: {v1-0: 50, v1-1: 50}\nstrategy: abtest\ninterval: 1m\nduration: 40m\nrollback_criteria: {success_rate_drop: 0.95}\nanalysis: {minSamples: 100}",
    );
    let servers = [lognormal(500.0, 40.0, 0.01), lognormal(500.0, 40.0, 0.01)];
    let traffic = Traffic {
        per_look: 200,
        first_look: 200,
        interval_ms: 60_000,
        max_looks: 40,
    };
    let mut rng = SmallRng::seed_from_u64(0xAA_AB);
    let (mut rolled_back, mut winners, mut candidate_won, mut halted, mut finished) =
        (0, 0, 0, 0, 0);
    for _ in 0..experiments {
        let r = run(&spec, &servers, &traffic, &mut rng);
        match r.phase {
            Phase::RolledBack => rolled_back += 1,
            Phase::Finished => {
                finished += 1;
                winners += usize::from(r.winner.is_some());
                candidate_won += usize::from(r.winner.as_deref() == Some("v1-1"));
            }
            _ => {}
        }
        halted += usize::from(r.halted);
    }
    let hi = upper_bound(experiments, ALPHA);
    eprintln!(
        "A/A A/B test, {experiments} experiments × 40 looks: false rollbacks {rolled_back} ({:.2}%), \
         false winners {winners} ({:.2}%; the candidate {candidate_won}), allowed ≤ {hi} each; \
         finished {finished}; ever halted by SRM {halted}",
        100.0 * rolled_back as f64 / experiments as f64,
        100.0 * winners as f64 / experiments as f64,
    );
    assert!(rolled_back <= hi, "{rolled_back} false rollbacks");
    assert!(winners <= hi, "{winners} false winners");
    assert_eq!(finished + rolled_back, experiments);
}

/// The standard deviation of a sample p95 of a log-normal (σ) over its value, times
/// √n: `sqrt(ν(1−ν))·σ/φ(z_ν)` (the asymptotic variance of a sample quantile,
/// `ν(1−ν)/(n·f(q)²)`, with `f(q) = φ(z)/(qσ)`).
fn p95_relative_sd(sigma: f64) -> f64 {
    let z = 1.644_853_626_951_472_2_f64;
    let phi = (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (0.95_f64 * 0.05).sqrt() * sigma / phi
}

/// The fewest units per arm (on a grid of `step`) at which an effect `effect` with
/// standard error `se(n)` clears `limit` by the always-valid bound of the A/B test's
/// guardrail family (α 0.05, 4 guardrails, tuning 5,000) with probability ≥ 90% at that
/// look alone: `effect − z₀.₉·se − halfwidth > limit`. Looking earlier only adds chances.
fn units_for_power(effect: f64, se: impl Fn(u64) -> f64, limit: f64, step: u64) -> u64 {
    let rho = mixture_rho(ALPHA, abgate_stats::DEFAULT_TUNING, Alternative::Greater);
    let z90 = 1.281_551_565_545;
    (1..)
        .map(|k| k * step)
        .find(|&n| {
            let s = se(n);
            let hw = sequential_halfwidth(s, 2 * n, rho, ALPHA / 4.0, Alternative::Greater);
            effect - z90 * s - hw > limit
        })
        .expect("some n")
}

/// Runs `experiments` A/B tests of `servers` (50/50, 200 requests per look, until
/// rollback or 30,000 requests) and returns each run's candidate requests at rollback
/// (`None` when it did not roll back).
fn time_to_rollback(servers: &[Server], experiments: usize, seed: u64) -> Vec<Option<u64>> {
    let spec = experiment(
        "sim",
        "traffic_split: {v1-0: 50, v1-1: 50}\nstrategy: abtest\ninterval: 1m\nduration: 1000m\nrollback_criteria: {success_rate_drop: 0.95}\nanalysis: {minSamples: 100}",
    );
    let traffic = Traffic {
        per_look: 200,
        first_look: 200,
        interval_ms: 60_000,
        max_looks: 150,
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..experiments)
        .map(|_| {
            let r = run(&spec, servers, &traffic, &mut rng);
            (r.phase == Phase::RolledBack).then_some(r.last_period[1])
        })
        .collect()
}

fn summarize(name: &str, at: &[Option<u64>], stated: u64) -> usize {
    let mut rolled: Vec<u64> = at.iter().flatten().copied().collect();
    rolled.sort_unstable();
    let within = rolled.iter().filter(|&&n| n <= stated).count();
    let median = rolled.get(rolled.len() / 2).copied().unwrap_or(0);
    let p90 = rolled
        .get((rolled.len() * 9 / 10).min(rolled.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    eprintln!(
        "{name}: {} of {} rolled back, {within} within the stated {stated} candidate requests; \
         candidate requests at rollback: median {median}, 90th percentile {p90}",
        rolled.len(),
        at.len()
    );
    within
}

/// Power: a candidate 10% slower at every quantile (p95 included), with no latency
/// tolerance, rolls back within the stated number of requests per variant in 90% of
/// runs (less three binomial standard deviations).
#[test]
fn a_candidate_ten_percent_slower_at_p95_is_rolled_back() {
    let experiments = 200 * scale();
    // σ 0.5: sd(p̂95)/p95 = c/√n per arm; the ratio 1.1 scales the candidate's.
    let c = p95_relative_sd(0.5);
    let se = |n: u64| 1.1 * c * (2.0 / n as f64).sqrt();
    // Harm needs the bound above γ − 1 (the sketch's error), γ = 1.01/0.99.
    let limit = 1.01 / 0.99 - 1.0;
    let stated = units_for_power(0.10, se, limit, 100);
    let servers = [lognormal(500.0, 40.0, 0.01), lognormal(550.0, 40.0, 0.01)];
    let at = time_to_rollback(&servers, experiments, 0x510_3E5);
    let within = summarize("10% slower at p95", &at, stated);
    eprintln!("  stated: {stated} requests per variant (analytic, 90% power at that look)");
    assert!(
        within >= lower_bound(experiments, 0.9),
        "{within} of {experiments}"
    );
}

/// Power: a candidate failing 3% of requests against the baseline's 1% rolls back
/// within the stated number of requests per variant in 90% of runs (less three
/// binomial standard deviations). The circuit breaker (5%) is not what catches it.
#[test]
fn a_candidate_with_two_points_more_errors_is_rolled_back() {
    let experiments = 200 * scale();
    let se = |n: u64| ((0.01 * 0.99 + 0.03 * 0.97) / n as f64).sqrt();
    let stated = units_for_power(0.02, se, 0.0, 100);
    let servers = [lognormal(500.0, 40.0, 0.01), lognormal(500.0, 40.0, 0.03)];
    let at = time_to_rollback(&servers, experiments, 0xE_4404);
    let within = summarize("2 points more errors", &at, stated);
    eprintln!("  stated: {stated} requests per variant (analytic, 90% power at that look)");
    assert!(
        within >= lower_bound(experiments, 0.9),
        "{within} of {experiments}"
    );
}

/// The demo's canary (`abgate demo`: 90/10, +10 up to 50, minSamples 40, every 3 s,
/// 100 s), about 100 requests a second, under the sequential policy.
fn demo(servers: &[Server], seed: u64) -> Run {
    let spec = experiment("sim", "variants: [{name: v1-0, weight: 90}, {name: v1-1, weight: 10}]\nstrategy: canary\ninterval: 3s\nduration: 100s\ncanary: {stepWeight: 10, maxWeight: 50}\nanalysis: {minSamples: 40}\nrollback_criteria: {latency_degradation: 0.2, success_rate_drop: 0.95}",
    );
    let traffic = Traffic {
        per_look: 300,
        first_look: 200,
        interval_ms: 3_000,
        max_looks: 34,
    };
    run(&spec, servers, &traffic, &mut SmallRng::seed_from_u64(seed))
}

/// `abgate demo --scenario improvement`: the candidate's TTFT is 25 ms against 40, its
/// tokens 600/s against 400, no errors: it ramps and is promoted before the planned end.
#[test]
fn the_demos_improvement_ramps_and_promotes() {
    let runs = 50;
    let mut seconds = Vec::new();
    for seed in 0..runs {
        let servers = [demo_server(40.0, 400.0, 0.0), demo_server(25.0, 600.0, 0.0)];
        let r = demo(&servers, seed);
        assert_eq!(r.phase, Phase::Promoted, "seed {seed}: {r:?}");
        assert_eq!(r.winner.as_deref(), Some("v1-1"));
        assert!(r.claimed_improved, "seed {seed}");
        seconds.push(r.looks * 3);
    }
    seconds.sort_unstable();
    eprintln!(
        "demo improvement: {runs} of {runs} promoted, after {}–{} s (median {} s)",
        seconds[0],
        seconds[runs as usize - 1],
        seconds[runs as usize / 2]
    );
}

/// `abgate demo --scenario regression`: TTFT 70 ms, 250 tokens/s, 8% errors: rolled
/// back, at its first look with enough data.
#[test]
fn the_demos_regression_rolls_back() {
    let runs = 50;
    let mut seconds = Vec::new();
    let mut example = String::new();
    for seed in 0..runs {
        let servers = [
            demo_server(40.0, 400.0, 0.0),
            demo_server(70.0, 250.0, 0.08),
        ];
        let r = demo(&servers, seed);
        assert_eq!(r.phase, Phase::RolledBack, "seed {seed}: {r:?}");
        assert!(
            r.last_reason.contains("harm shown with confidence"),
            "{}",
            r.last_reason
        );
        seconds.push(r.looks * 3);
        if seed == 0 {
            example = r.last_reason;
        }
    }
    seconds.sort_unstable();
    eprintln!(
        "demo regression: {runs} of {runs} rolled back, after {}–{} s (median {} s); e.g. {example}",
        seconds[0],
        seconds[runs as usize - 1],
        seconds[runs as usize / 2]
    );
}
