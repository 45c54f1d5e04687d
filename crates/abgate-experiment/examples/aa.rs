//! The larger A/A run behind `bench/aa`: seeded null experiments (both variants the
//! same server) through `step` and `advance`, looked at every interval, for the
//! canary, A/B test and bandit strategies under the sequential policy. Prints a
//! Markdown table of false rollback and false promotion (or winner, or improvement
//! claim) rates with Wilson 95% intervals, and which guardrail each false rollback
//! came from, with the smaller arm's share and counts.
//!
//! `cargo run --release -p abgate-experiment --example aa -- [SCALE]`: SCALE (default
//! 1) multiplies the default sizes (20,000 canaries, 20,000 A/B tests, 5,000 bandits).

use abgate_config::model::Experiment;
use abgate_experiment::{
    advance, policy_for, step, Decision, ExperimentState, Observations, Phase,
};
use abgate_telemetry::WindowStats;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{normal, T0};

fn experiment(spec: &str) -> Experiment {
    common::experiment("aa", spec)
}

/// Log-normal latency around 500 ms (σ 0.5), TTFT around 40 ms (σ 0.3), 1% errors.
fn serve(w: &mut WindowStats, rng: &mut SmallRng) {
    let error = rng.random::<f64>() < 0.01;
    let latency = 500.0 * (0.5 * normal(rng)).exp();
    w.count += 1;
    w.errors += u64::from(error);
    w.latency_ms.moments.add(latency);
    w.latency_ms.sketch.add(latency);
    let ttft = 40.0 * (0.3 * normal(rng)).exp();
    w.ttft_ms.moments.add(ttft);
    w.ttft_ms.sketch.add(ttft);
}

struct Outcome {
    /// The rollback's reason and the split it rolled back from.
    rollback: Option<(String, Vec<u32>)>,
    phase: Phase,
    winner: Option<String>,
    claimed_improved: bool,
}

fn run(spec: &Experiment, per_look: u64, looks: u64, rng: &mut SmallRng) -> Outcome {
    let policy = policy_for(spec);
    let mut state = ExperimentState::new(spec, T0);
    let mut windows = vec![WindowStats::default(); 2];
    let mut claimed_improved = false;
    let mut rollback = None;
    for look in 1..=looks {
        let now = T0 + look * 60_000;
        let shares = state.percentages();
        for _ in 0..per_look {
            let v = usize::from(rng.random_range(0..100u32) >= shares[0]);
            serve(&mut windows[v], rng);
        }
        let obs = Observations::from_stats(spec, windows.clone(), state.period_started_at, now);
        claimed_improved |= policy.analyze(spec, &state, &obs).is_improved();
        let d = step(spec, &state, &obs, now);
        if let Decision::Rollback { reason, .. } = &d {
            rollback = Some((reason.clone(), state.percentages()));
        }
        let period = state.period;
        advance(spec, &mut state, &d, &obs, now);
        if state.phase.is_terminal() || matches!(d, Decision::Finish { .. }) {
            break;
        }
        if state.period != period {
            windows = vec![WindowStats::default(); 2];
        }
    }
    Outcome {
        rollback,
        phase: state.phase,
        winner: state.winner,
        claimed_improved,
    }
}

/// The guardrails a rollback's reason names as harmed, in the policy's order.
fn guardrails(reason: &str) -> String {
    let harm = reason
        .split_once("harm shown with confidence: ")
        .map_or(reason, |(_, h)| h);
    let harm = harm.split(" (always-valid").next().unwrap_or(harm);
    let fired: Vec<&str> = harm
        .split("; ")
        .filter_map(|part| {
            ["circuit breaker", "error rate", "p95 latency", "TTFT p95"]
                .into_iter()
                .find(|g| part.starts_with(g))
        })
        .collect();
    if fired.is_empty() {
        "other".to_owned()
    } else {
        fired.join(" + ")
    }
}

/// False rollbacks by guardrail, with the smaller arm's weight and (for the error
/// rate) the errors of the arm with fewer requests.
#[derive(Default)]
struct Causes {
    rows: std::collections::BTreeMap<String, (usize, u32, u32, usize)>,
}

impl Causes {
    fn add(&mut self, reason: &str, split: &[u32]) {
        let small = split.iter().copied().min().unwrap_or(0);
        let zero = usize::from(small_arm_errors(reason) == Some(0));
        let e = self
            .rows
            .entry(guardrails(reason))
            .or_insert((0, u32::MAX, 0, 0));
        e.0 += 1;
        e.1 = e.1.min(small);
        e.2 = e.2.max(small);
        e.3 += zero;
    }

    fn print(&self, strategy: &str) {
        for (guard, (count, lo, hi, zero)) in &self.rows {
            println!("| {strategy} | {guard} | {count} | {lo}–{hi}% | {zero} |");
        }
        if self.rows.is_empty() {
            println!("| {strategy} | none | 0 | | |");
        }
    }
}

/// From `error rate 1.25% (23/1843) vs 0% (0/157)`: the errors of the arm with fewer
/// requests.
fn small_arm_errors(reason: &str) -> Option<u64> {
    let rest = reason
        .split("harm shown with confidence: ")
        .nth(1)?
        .split("; ")
        .find_map(|part| part.strip_prefix("error rate "))?;
    let counts: Vec<(u64, u64)> = rest
        .split('(')
        .skip(1)
        .take(2)
        .filter_map(|c| {
            let (e, n) = c.split(')').next()?.split_once('/')?;
            Some((e.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    counts.iter().min_by_key(|(_, n)| *n).map(|(e, _)| *e)
}

/// Wilson score interval at 95% for `k` of `n`.
fn wilson(k: usize, n: usize) -> (f64, f64) {
    let (k, n, z) = (k as f64, n as f64, 1.959_963_984_540_054_f64);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn row(strategy: &str, what: &str, k: usize, n: usize, looks: &str) {
    let (lo, hi) = wilson(k, n);
    println!(
        "| {strategy} | {what} | {n} | {looks} | {k} | {:.2}% | {:.2}% – {:.2}% | {} |",
        100.0 * k as f64 / n as f64,
        100.0 * lo,
        100.0 * hi,
        if hi <= 0.05 {
            "≤ α with 95% confidence"
        } else if k as f64 / n as f64 <= 0.05 {
            "≤ α (point estimate)"
        } else {
            "above α"
        }
    );
}

fn main() {
    let scale: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let started = std::time::Instant::now();
    println!("| Strategy | Event | Experiments | Looks each | Count | Rate | Wilson 95% interval | Against α = 0.05 |");
    println!("|---|---|--:|---|--:|--:|---|---|");

    // Canary: the seed's 70/30, +10 to 50; 200 requests a minute, up to 120 looks.
    let spec = experiment("traffic_split: {v1-0: 70, v1-1: 30}\nstrategy: canary\ninterval: 1m\nduration: 2h\nrollback_criteria: {success_rate_drop: 0.95}\nanalysis: {minSamples: 100}");
    let n = 20_000 * scale;
    let (mut rb, mut improved) = (0, 0);
    let mut causes = vec![("canary", Causes::default())];
    for i in 0..n as u64 {
        // Each experiment its own seed: a change in one run's course does not shift
        // the draws of the others, so two versions compare run by run.
        let mut rng = SmallRng::seed_from_u64(0xAACA_0001 ^ (i << 20));
        let o = run(&spec, 200, 120, &mut rng);
        rb += usize::from(o.phase == Phase::RolledBack);
        if let Some((reason, split)) = &o.rollback {
            causes[0].1.add(reason, split);
        }
        improved += usize::from(o.claimed_improved);
    }
    row("canary", "false rollback", rb, n, "until promoted (≤ 120)");
    row(
        "canary",
        "false improvement claim",
        improved,
        n,
        "until promoted (≤ 120)",
    );

    // A/B test: 50/50, 200 requests a minute, 40 looks, then the verdict.
    let spec = experiment("traffic_split: {v1-0: 50, v1-1: 50}\nstrategy: abtest\ninterval: 1m\nduration: 40m\nrollback_criteria: {success_rate_drop: 0.95}\nanalysis: {minSamples: 100}");
    let n = 20_000 * scale;
    let (mut rb, mut winners) = (0, 0);
    causes.push(("abtest", Causes::default()));
    for i in 0..n as u64 {
        // Each experiment its own seed: a change in one run's course does not shift
        // the draws of the others, so two versions compare run by run.
        let mut rng = SmallRng::seed_from_u64(0xAAAB_0001 ^ (i << 20));
        let o = run(&spec, 200, 40, &mut rng);
        rb += usize::from(o.phase == Phase::RolledBack);
        if let Some((reason, split)) = &o.rollback {
            causes[1].1.add(reason, split);
        }
        winners += usize::from(o.phase == Phase::Finished && o.winner.is_some());
    }
    row("abtest", "false rollback", rb, n, "40");
    row("abtest", "false winner", winners, n, "40");

    // Bandit: 50/50 start, reward success, 400 requests a minute, 60 looks.
    let spec = experiment("traffic_split: {v1-0: 50, v1-1: 50}\nstrategy: bandit\ninterval: 1m\nduration: 1h\nrollback_criteria: {success_rate_drop: 0.95}\nanalysis: {minSamples: 150}\nbandit: {reward: success}");
    let n = 5_000 * scale;
    let (mut rb, mut promoted) = (0, 0);
    causes.push(("bandit", Causes::default()));
    for i in 0..n as u64 {
        // Each experiment its own seed: a change in one run's course does not shift
        // the draws of the others, so two versions compare run by run.
        let mut rng = SmallRng::seed_from_u64(0xAABA_0001 ^ (i << 20));
        let o = run(&spec, 400, 60, &mut rng);
        rb += usize::from(o.phase == Phase::RolledBack);
        if let Some((reason, split)) = &o.rollback {
            causes[2].1.add(reason, split);
        }
        promoted += usize::from(o.phase == Phase::Promoted);
    }
    row("bandit", "false rollback", rb, n, "60");
    row("bandit", "false promotion (winner)", promoted, n, "60");
    println!();
    println!(
        "False rollbacks by the guardrail that fired (Holm over the family; \"smaller arm\" is"
    );
    println!("the lower weight in force at the rollback; \"0 errors\" counts error-rate rollbacks");
    println!("where the arm with fewer requests had no error):");
    println!();
    println!(
        "| Strategy | Guardrail | Rollbacks | Smaller arm's weight | Smaller arm with 0 errors |"
    );
    println!("|---|---|--:|---|--:|");
    for (strategy, c) in &causes {
        c.print(strategy);
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
}
