//! Seeded simulations of the `bandit` strategy through `step` and `advance`, the way the
//! controller runs it (record, then apply; a changed split starts a new period with
//! empty windows), and the HTML report rendered from such a recorded history.
//!
//! The bound on false winners and false rollbacks under equal arms. The winner rule
//! needs, besides P(best) ≥ 0.95, the best arm's always-valid two-sided confidence
//! sequence against every other arm to exclude 0 at α = 1 − 0.95 (shared over the
//! pairs); the guardrails spend α = 0.05 over the planned periods. Under equal arms a
//! confidence sequence at level α excludes the true difference at any look with
//! probability at most α (time-uniform coverage), so each run names a false winner
//! (or rolls back) with probability q ≤ 0.05, and the count among `n` independent runs
//! is Binomial(n, q), stochastically at most Binomial(n, 0.05). The check allows the
//! smallest k with P(Binomial(n, 0.05) > k) ≤ 1% (exact tail, [`binomial_upper`]): a
//! rule keeping its promise fails it with probability at most 1%. The seeds are fixed,
//! so the outcome is the same every run.
//!
//! At 200 runs the check cannot tell 5% from a few points more (the false-rollback
//! defect it once had, 7.4% in bench/aa, would fail it only one time in six):
//! `bench/aa` measures the rates on 5,000 runs, and the cause has its own unit test
//! (`sequential::tests::a_small_baseline_without_errors_is_not_harm_by_itself`).

use abgate_config::model::Experiment;
use abgate_experiment::{
    advance, step, Decision, DecisionRecord, ExperimentState, Observations, Phase, Report,
    RewardTotals,
};
use abgate_telemetry::WindowStats;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod common;

use common::{normal, T0};

const MINUTE: u64 = 60_000;

/// A bandit Experiment on the seed's host under the sequential policy, with `spec`
/// lines added.
fn experiment(spec: &str) -> Experiment {
    common::experiment("bandit", &format!("strategy: bandit\ninterval: 1m\n{spec}"))
}

/// The smallest `k` with `P(Binomial(n, rate) > k) ≤ level`, from the exact
/// probabilities (`pmf(k+1) = pmf(k)·(n−k)/(k+1)·rate/(1−rate)`).
fn binomial_upper(n: usize, rate: f64, level: f64) -> usize {
    let mut pmf = (1.0 - rate).powi(i32::try_from(n).expect("small n"));
    let mut below = 0.0;
    for k in 0..=n {
        below += pmf;
        if 1.0 - below <= level {
            return k;
        }
        pmf *= (n - k) as f64 / (k + 1) as f64 * rate / (1.0 - rate);
    }
    n
}

#[test]
fn binomial_upper_is_the_exact_tail_quantile() {
    // P(Bin(200, 0.05) > 18) = 0.0058 and P(> 17) = 0.0121.
    assert_eq!(binomial_upper(200, 0.05, 0.01), 18);
    assert_eq!(binomial_upper(20, 0.5, 0.5), 10);
    assert_eq!(binomial_upper(10, 0.0, 0.01), 0);
}

/// An arm: its chance of failing a request, and of a thumbs-up when it does not.
#[derive(Clone, Copy)]
struct Arm {
    error_rate: f64,
    thumbs_up: f64,
}

/// How one simulated bandit ended.
struct Run {
    phase: Phase,
    winner: Option<String>,
    /// Requests served over the whole run.
    requests: u64,
    /// The last split the bandit set, percent.
    last_split: Vec<u32>,
    spec: Experiment,
    state: ExperimentState,
    log: Vec<DecisionRecord>,
}

/// Runs `spec` with `arms`, `per_look` requests per interval, for at most `looks`.
fn run(spec: &Experiment, arms: &[Arm], per_look: u64, looks: u64, seed: u64) -> Run {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut state = ExperimentState::new(spec, T0);
    let k = arms.len();
    let mut windows = vec![WindowStats::default(); k];
    let mut feedback = vec![RewardTotals::default(); k];
    let mut log = Vec::new();
    let mut requests = 0;
    let mut last_split = state.percentages();
    for look in 1..=looks {
        let now = T0 + look * MINUTE;
        let shares = state.percentages();
        for _ in 0..per_look {
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
            let w = &mut windows[v];
            let error = rng.random::<f64>() < arms[v].error_rate;
            let latency = 500.0 * (0.5 * normal(&mut rng)).exp();
            w.count += 1;
            w.errors += u64::from(error);
            w.latency_ms.moments.add(latency);
            w.latency_ms.sketch.add(latency);
            if !error {
                let ttft = 40.0 * (0.3 * normal(&mut rng)).exp();
                w.ttft_ms.moments.add(ttft);
                w.ttft_ms.sketch.add(ttft);
                let up = rng.random::<f64>() < arms[v].thumbs_up;
                feedback[v].add(if up { 1.0 } else { 0.0 });
            }
            requests += 1;
        }
        let obs = Observations::from_stats(spec, windows.clone(), state.period_started_at, now)
            .with_feedback(feedback.clone());
        let d = step(spec, &state, &obs, now);
        log.push(DecisionRecord::new(spec, &state, &d, obs.clone(), now));
        let period = state.period;
        advance(spec, &mut state, &d, &obs, now);
        if let Decision::SetWeights { weights, .. } = &d {
            last_split = weights.clone();
        }
        if state.phase.is_terminal() {
            break;
        }
        if state.period != period {
            windows = vec![WindowStats::default(); k];
            feedback = vec![RewardTotals::default(); k];
        }
    }
    Run {
        phase: state.phase,
        winner: state.winner.clone(),
        requests,
        last_split,
        spec: spec.clone(),
        state,
        log,
    }
}

/// The best of three arms by success (errors 10%, 10%, 7%; the error limit raised to
/// 20% so that the circuit breaker does not stand in for the bandit) draws traffic and
/// is declared the winner and promoted within 120,000 requests (at 600 requests per
/// interval, 200 intervals) in at least 18 of 20 seeded runs; no other arm is ever
/// named, and in every run the bandit had moved traffic to the best arm. (The floor
/// keeps the losing arms small, so the interval against them, which the winner rule
/// needs, narrows slowly: a bandit spends its samples on the best arm, not on proof.)
#[test]
fn the_best_arm_draws_traffic_and_is_promoted_within_the_stated_samples() {
    let spec = experiment(
        "variants: [{name: v1-0, weight: 34}, {name: v1-1, weight: 33}, {name: v1-2, weight: 33}]\nduration: 4h\nrollback_criteria: {success_rate_drop: 0.8}\nanalysis: {minSamples: 150}\nbandit: {reward: success, minWeight: 5, winnerProbability: 0.95}",
    );
    let arms = [
        Arm {
            error_rate: 0.10,
            thumbs_up: 0.5,
        },
        Arm {
            error_rate: 0.10,
            thumbs_up: 0.5,
        },
        Arm {
            error_rate: 0.07,
            thumbs_up: 0.5,
        },
    ];
    let budget = 120_000;
    let mut used = Vec::new();
    for seed in 0..20 {
        let r = run(&spec, &arms, 600, budget / 600, 0xB40000 + seed);
        assert_ne!(r.phase, Phase::RolledBack, "seed {seed}");
        assert!(
            r.winner.is_none() || r.winner.as_deref() == Some("v1-2"),
            "seed {seed}: {:?}",
            r.winner
        );
        assert!(r.requests <= budget);
        // Before promotion the bandit had moved traffic to the best arm.
        assert!(
            r.last_split[2] > 34 && r.last_split[2] > r.last_split[0],
            "seed {seed}: last split {:?}",
            r.last_split
        );
        if r.phase == Phase::Promoted {
            let promote = r.log.last().expect("decisions");
            for words in ["P(best)", "v1-2 reward", "always-valid interval", "weight"] {
                assert!(promote.reason.contains(words), "{}", promote.reason);
            }
            used.push(r.requests);
        }
    }
    used.sort_unstable();
    eprintln!(
        "best of three promoted in {} of 20 runs, after a median of {} requests (max {})",
        used.len(),
        used.get(used.len() / 2).copied().unwrap_or(0),
        used.last().copied().unwrap_or(0)
    );
    assert!(
        used.len() >= 18,
        "promoted in only {} of 20 runs",
        used.len()
    );
}

/// Feedback as the reward: thumbs-up 55% against 45%, errors equal. The better-rated
/// arm is promoted within 80,000 requests in at least 9 of 10 seeded runs, and the
/// worse one never.
#[test]
fn feedback_scores_drive_the_bandit() {
    let spec = experiment(
        "traffic_split: {v1-0: 50, v1-1: 50}\nduration: 4h\nanalysis: {minSamples: 150}\nbandit: {reward: feedback, minSamples: 100}",
    );
    let arms = [
        Arm {
            error_rate: 0.01,
            thumbs_up: 0.45,
        },
        Arm {
            error_rate: 0.01,
            thumbs_up: 0.55,
        },
    ];
    let mut promoted = 0;
    for seed in 0..10 {
        let r = run(&spec, &arms, 400, 200, 0xFEED + seed);
        assert_ne!(r.winner.as_deref(), Some("v1-0"), "seed {seed}");
        promoted += usize::from(r.phase == Phase::Promoted);
        assert!(
            !r.state.rewards.is_empty(),
            "rewards carried across periods"
        );
    }
    assert!(promoted >= 9, "promoted in {promoted} of 10");
}

/// Equal arms, looked at every interval for 60 intervals: false winners (promotions)
/// and false rollbacks each within the bound of the module's docs (18 of 200).
#[test]
fn equal_arms_name_no_winner_beyond_the_bound() {
    let n = 200;
    let spec = experiment(
        "traffic_split: {v1-0: 50, v1-1: 50}\nduration: 1h\nanalysis: {minSamples: 150}\nbandit: {reward: success}",
    );
    let arms = [Arm {
        error_rate: 0.02,
        thumbs_up: 0.5,
    }; 2];
    let (mut winners, mut rollbacks, mut moved) = (0, 0, 0);
    for seed in 0..n as u64 {
        let r = run(&spec, &arms, 400, 60, 0xAA000 + seed);
        winners += usize::from(r.phase == Phase::Promoted);
        rollbacks += usize::from(r.phase == Phase::RolledBack);
        moved += usize::from(r.state.period > 0);
    }
    let hi = binomial_upper(n, 0.05, 0.01);
    eprintln!(
        "equal arms, {n} runs × 60 looks: false winners {winners}, false rollbacks {rollbacks}, allowed ≤ {hi} each; weights moved in {moved}"
    );
    assert!(winners <= hi, "{winners} false winners of {n}");
    assert!(rollbacks <= hi, "{rollbacks} false rollbacks of {n}");
    // The bandit did re-weight (Thompson sampling explores), it just never crowned.
    assert!(moved > n / 2, "weights moved in only {moved} runs");
}

/// A guardrail still applies: a candidate failing 30% of requests against 2% is rolled
/// back (all traffic to the baseline), not merely given less traffic.
#[test]
fn a_harmful_arm_is_rolled_back_by_the_guardrails() {
    let spec = experiment(
        "traffic_split: {v1-0: 50, v1-1: 50}\nduration: 4h\nanalysis: {minSamples: 100}\nbandit: {reward: success}",
    );
    let arms = [
        Arm {
            error_rate: 0.02,
            thumbs_up: 0.5,
        },
        Arm {
            error_rate: 0.30,
            thumbs_up: 0.5,
        },
    ];
    let r = run(&spec, &arms, 400, 30, 7);
    assert_eq!(r.phase, Phase::RolledBack, "{:?}", r.log.last());
    assert_eq!(r.state.weights, vec![100, 0]);
    let reason = &r.log.last().expect("decisions").reason;
    assert!(reason.contains("harm shown with confidence"), "{reason}");
}

/// The HTML report rendered from a recorded bandit history: weights and every metric
/// per variant as SVG series with bands, the decisions on the timeline, the config's
/// strings escaped, and nothing fetched from anywhere.
#[test]
fn html_report_from_a_recorded_history_is_self_contained() {
    let spec = experiment(
        "description: \"<script>alert('x')</script> & <b>bold</b>\"\nvariants: [{name: v1-0, weight: 34}, {name: v1-1, weight: 33}, {name: v1-2, weight: 33}]\nduration: 4h\nrollback_criteria: {success_rate_drop: 0.8}\nanalysis: {minSamples: 150}\nbandit: {reward: success}",
    );
    let arms = [
        Arm {
            error_rate: 0.10,
            thumbs_up: 0.5,
        },
        Arm {
            error_rate: 0.10,
            thumbs_up: 0.5,
        },
        Arm {
            error_rate: 0.07,
            thumbs_up: 0.5,
        },
    ];
    let r = run(&spec, &arms, 600, 100, 0xB40000);
    assert_eq!(r.phase, Phase::Promoted);
    // As the controller stores it: decisions in the log, holds as analyses.
    let (decisions, holds): (Vec<DecisionRecord>, Vec<DecisionRecord>) =
        r.log.into_iter().partition(|d| d.kind != "hold");
    let analyses: Vec<(u64, Observations)> =
        holds.into_iter().map(|d| (d.at, d.observations)).collect();
    let report = Report::new(&r.spec, &r.state, &decisions, &[]).with_analyses(&analyses);
    assert!(
        report.timeline.len() > decisions.len(),
        "analyses in the timeline"
    );

    let html = report.to_html();
    for v in ["v1-0", "v1-1", "v1-2"] {
        for series in ["weight", "success_rate", "latency_p95_ms", "ttft_p95_ms"] {
            assert!(
                html.contains(&format!("data-series=\"{series}:{v}\"")),
                "no {series} series for {v}"
            );
        }
        assert!(html.contains(&format!("data-band=\"success_rate:{v}\"")));
    }
    let set_weights = decisions.iter().filter(|d| d.kind == "set_weights").count();
    assert!(set_weights > 0);
    // One mark per chart: weights and each metric with data (no tokens/s here).
    let charts = html.matches("<svg").count();
    assert_eq!(charts, 5);
    assert_eq!(
        html.matches("data-decision=\"set_weights\"").count(),
        set_weights * charts,
    );
    assert_eq!(html.matches("data-decision=\"promote\"").count(), charts);
    assert!(html.contains("<svg"), "inline SVG");
    // Escaped, never live markup.
    assert!(html
        .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"));
    assert!(!html.contains("<script"), "no script at all");
    assert!(!html.contains("<b>"));
    // Nothing external: no URL, no linked resource, no import.
    for external in [
        "http:", "https:", "//", "src=", "href=", "url(", "@import", "<link", "<img", "<iframe",
    ] {
        assert!(!html.contains(external), "the page references {external}");
    }

    // The comparisons: per metric and candidate, estimate, interval, p-value, effects.
    let json = serde_json::to_value(&report).expect("serializes");
    let comparisons = json["comparisons"].as_array().expect("comparisons");
    let sr = comparisons
        .iter()
        .find(|c| c["metric"] == "success_rate" && c["candidate"] == "v1-1")
        .expect("success rate of v1-1 compared");
    for field in [
        "absolute",
        "relative",
        "p_value",
        "absolute_interval",
        "relative_interval",
    ] {
        assert!(!sr[field].is_null(), "{field} in {sr}");
    }
    assert!(sr["candidate_value"]["se"].as_f64().expect("se") > 0.0);
    let md = report.to_markdown();
    assert!(md.contains("## Metrics, last period"), "{md}");
    assert!(md.contains("| Success rate | v1-1 |"), "{md}");
}
