use abgate_telemetry::{Distribution, Moments};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::step::{apply, step, Decision};
use crate::testing::experiment;

const T0: u64 = 1_767_225_600_000;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;

/// The seed's experiment (70/30 canary, 24 h, its rollback criteria) under `sequential`.
fn spec(extra: &str) -> Experiment {
    experiment(&format!("policy: sequential\n{extra}"))
}

fn normal(rng: &mut SmallRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `n` requests, the first `errors` failed; latency log-normal around `median` ms
/// (σ 0.4), TTFT log-normal around `ttft` ms (σ 0.3) when given.
fn arm(rng: &mut SmallRng, n: u64, errors: u64, median: f64, ttft: Option<f64>) -> WindowStats {
    let mut s = WindowStats {
        count: n,
        errors,
        ..WindowStats::default()
    };
    for _ in 0..n {
        let x = median * (0.4 * normal(rng)).exp();
        s.latency_ms.moments.add(x);
        s.latency_ms.sketch.add(x);
        if let Some(t) = ttft {
            let y = t * (0.3 * normal(rng)).exp();
            s.ttft_ms.moments.add(y);
            s.ttft_ms.sketch.add(y);
        }
    }
    s
}

/// Observations of the current period of `state` made of `stats`.
fn observe(spec: &Experiment, state: &ExperimentState, stats: Vec<WindowStats>) -> Observations {
    Observations::from_stats(
        spec,
        stats,
        state.period_started_at,
        state.period_started_at + MINUTE,
    )
}

/// Baseline and candidate: `(n, errors, median latency, TTFT)` each, seeded.
fn pair(
    spec: &Experiment,
    state: &ExperimentState,
    seed: u64,
    b: (u64, u64, f64, Option<f64>),
    c: (u64, u64, f64, Option<f64>),
) -> Observations {
    let mut rng = SmallRng::seed_from_u64(seed);
    let bs = arm(&mut rng, b.0, b.1, b.2, b.3);
    let cs = arm(&mut rng, c.0, c.1, c.2, c.3);
    observe(spec, state, vec![bs, cs])
}

/// The verdict on the candidate, with a split in force that the observed counts fit
/// (so that no sample ratio mismatch gets in the way).
fn judge(spec: &Experiment, obs: &Observations) -> Verdict {
    let mut state = ExperimentState::new(spec, T0);
    state.weights = obs
        .stats
        .iter()
        .map(|s| u32::try_from(s.count).expect("small"))
        .collect();
    Sequential::default().judge(spec, &state, obs, 1)
}

#[test]
fn without_raw_windows_nothing_is_judged() {
    let spec = spec("");
    let state = ExperimentState::new(&spec, T0);
    let obs = crate::testing::observed(
        &spec,
        vec![
            crate::testing::variant("v1-0", 1000, 0, 600.0),
            crate::testing::variant("v1-1", 1000, 500, 5000.0),
        ],
    );
    let v = Sequential::default().judge(&spec, &state, &obs, 1);
    assert!(matches!(v, Verdict::Inconclusive { .. }), "{v:?}");
    assert!(
        v.reason()
            .contains("needs the raw windows of every variant")
            && v.reason().contains("gave 0 of 2")
            && v.reason().contains("use `policy: classic`"),
        "{}",
        v.reason()
    );
    let d = step(&spec, &state, &obs, T0 + 5 * MINUTE);
    assert_eq!(d.kind(), "hold", "{d:?}");
    let pick = Sequential::default().winner(&spec, &state, &obs);
    assert_eq!(pick.winner, None);
    assert!(
        pick.reason
            .starts_with("no winner: the sequential policy needs"),
        "{}",
        pick.reason
    );
}

#[test]
fn below_min_samples_is_not_enough_data_even_for_a_bad_candidate() {
    let spec = spec("");
    let state = ExperimentState::new(&spec, T0);
    // Half the candidate's 99 requests failed: still no verdict (minSamples is 100).
    let obs = pair(
        &spec,
        &state,
        1,
        (1000, 0, 600.0, None),
        (99, 50, 3000.0, None),
    );
    let v = judge(&spec, &obs);
    assert!(matches!(v, Verdict::Inconclusive { .. }), "{v:?}");
    assert_eq!(
        v.reason(),
        "not enough data: candidate v1-1 has 99 requests in this period, baseline v1-0 1000; minSamples is 100 each"
    );
    assert_eq!(v.summary(), "not enough data (v1-1 99/100 requests)");
    // With the split the counts came in (no sample ratio mismatch), the step holds.
    let mut shared = state.clone();
    shared.weights = vec![91, 9];
    let d = step(&spec, &shared, &obs, T0 + MINUTE);
    assert_eq!(d.summary(), "hold: not enough data (v1-1 99/100 requests)");
    // At minSamples the circuit breaker sees it.
    let obs = pair(
        &spec,
        &state,
        1,
        (1000, 0, 600.0, None),
        (100, 50, 600.0, None),
    );
    assert!(judge(&spec, &obs).is_regressed());
}

#[test]
fn a_p95_needs_its_own_minimum_of_events() {
    // minSamples 40 (the demo's): the requests are enough, a p95 interval needs 73.
    let spec = spec("analysis: {minSamples: 40}");
    let state = ExperimentState::new(&spec, T0);
    let obs = pair(
        &spec,
        &state,
        2,
        (500, 0, 600.0, None),
        (60, 0, 600.0, None),
    );
    let v = judge(&spec, &obs);
    assert!(matches!(v, Verdict::Inconclusive { .. }), "{v:?}");
    assert!(
        v.reason().contains(
            "p95 latency: an interval for a p95 needs 73 events per variant, and there are 60 and 500"
        ),
        "{}",
        v.reason()
    );
}

#[test]
fn a_higher_error_rate_shown_with_confidence_rolls_back() {
    // A limit of 10% keeps the circuit breaker out of it: the comparison decides.
    let spec = spec("rollback_criteria: {success_rate_drop: 0.9}");
    let state = ExperimentState::new(&spec, T0);
    let obs = pair(
        &spec,
        &state,
        3,
        (3000, 30, 600.0, None),
        (3000, 120, 600.0, None),
    );
    let v = judge(&spec, &obs);
    assert!(v.is_regressed(), "{v:?}");
    let r = v.reason();
    assert!(
        r.starts_with("candidate v1-1 vs baseline v1-0: harm shown with confidence: error rate 4% (120/3000) vs 1% (30/3000): +3 points, lower bound +"),
        "{r}"
    );
    assert!(r.contains("> 0 points (p "), "{r}");
    assert!(r.contains("Holm-adjusted"), "{r}");
    assert!(
        r.contains("always-valid one-sided bounds at α 0.0167/4; α 0.0167 this period (0.05 over 3 planned periods), Holm over 4 guardrails"),
        "{r}"
    );
    assert!(!r.contains("circuit breaker"), "{r}");
    let brief = v.summary();
    assert!(
        brief.starts_with("error rate +3 points (lower bound +")
            && brief.ends_with("); n 3000 vs 3000"),
        "{brief}"
    );
    let d = step(&spec, &state, &obs, T0 + MINUTE);
    assert_eq!(d.summary(), format!("roll back: {brief}"));
    assert!(d.reason().starts_with(r), "{}", d.reason());
    // The same rates with a tenth of the data show nothing yet.
    let obs = pair(
        &spec,
        &state,
        3,
        (300, 3, 600.0, None),
        (300, 12, 600.0, None),
    );
    let v = judge(&spec, &obs);
    assert!(v.is_healthy(), "{v:?}");
    assert!(
        v.reason()
            .contains("error rate 4% (12/300) vs 1% (3/300): +3 points, lower bound -"),
        "{}",
        v.reason()
    );
}

/// The cause of the A/A bandit's false rollbacks (bench/aa: 368 of 369, all with the
/// smaller arm at 0 errors): a baseline near the bandit's floor with no error in 160
/// requests against a candidate at 1% of 2,000. The per-arm (Wald) variance gives the
/// baseline's term 0, and the 1-point gap read as 4.5 standard errors of the
/// candidate alone; yet 0 errors in 160 at 1% happen one time in five. The pooled
/// variance keeps the baseline's term, so this is no harm; a candidate failing 10%
/// against the same baseline still is.
#[test]
fn a_small_baseline_without_errors_is_not_harm_by_itself() {
    // A limit of 20% keeps the circuit breaker out of it: the comparison decides.
    let spec = spec("rollback_criteria: {success_rate_drop: 0.8}");
    let state = ExperimentState::new(&spec, T0);
    let obs = pair(
        &spec,
        &state,
        5,
        (160, 0, 600.0, None),
        (2000, 20, 600.0, None),
    );
    let v = judge(&spec, &obs);
    assert!(!v.is_regressed(), "{v:?}");
    assert!(
        v.reason()
            .contains("error rate 1% (20/2000) vs 0% (0/160): +1 points, lower bound -"),
        "{}",
        v.reason()
    );
    let obs = pair(
        &spec,
        &state,
        5,
        (160, 0, 600.0, None),
        (2000, 200, 600.0, None),
    );
    let v = judge(&spec, &obs);
    assert!(v.is_regressed(), "{v:?}");
    assert!(
        v.reason()
            .contains("error rate 10% (200/2000) vs 0% (0/160)"),
        "{}",
        v.reason()
    );
}

#[test]
fn the_circuit_breaker_fires_whatever_the_comparison_says() {
    // Both variants fail 12%: no difference, but the candidate is past the hard limit
    // of 5% (1 − success_rate_drop 0.95).
    let spec = spec("");
    let state = ExperimentState::new(&spec, T0);
    let obs = pair(
        &spec,
        &state,
        4,
        (2000, 240, 600.0, None),
        (2000, 240, 600.0, None),
    );
    let v = judge(&spec, &obs);
    assert!(v.is_regressed(), "{v:?}");
    let r = v.reason();
    assert!(
        r.contains("circuit breaker: v1-1 error rate 12% (240/2000) against the hard limit 5% (1 - success_rate_drop): lower bound "),
        "{r}"
    );
    assert!(!r.contains("error rate 12% (240/2000) vs"), "{r}");
    // The limit is the spec's.
    let lenient = self::spec("rollback_criteria: {success_rate_drop: 0.8}");
    assert_eq!(Sequential::error_limit(&lenient), 0.19999999999999996);
    assert!(!judge(&lenient, &obs).is_regressed());
    // A candidate failing everything has an interval too.
    let obs = pair(
        &spec,
        &state,
        4,
        (2000, 0, 600.0, None),
        (100, 100, 600.0, None),
    );
    let v = judge(&spec, &obs);
    assert!(
        v.reason()
            .contains("circuit breaker: v1-1 error rate 100% (100/100)"),
        "{}",
        v.reason()
    );
}

#[test]
fn a_slower_p95_rolls_back_beyond_the_tolerance_only() {
    // No latency_degradation: any slowdown shown with confidence (past the sketch's
    // error) is harm.
    let strict = spec("rollback_criteria: {success_rate_drop: 0.95}");
    assert_eq!(Sequential::latency_tolerance(&strict), 0.0);
    let state = ExperimentState::new(&strict, T0);
    let obs = pair(
        &strict,
        &state,
        5,
        (3000, 0, 600.0, None),
        (3000, 0, 780.0, None),
    );
    let v = judge(&strict, &obs);
    assert!(v.is_regressed(), "{v:?}");
    let r = v.reason();
    assert!(
        r.contains("harm shown with confidence: p95 latency "),
        "{r}"
    );
    assert!(
        r.contains("> +2% (tolerance 0% and the sketch's 1% error)"),
        "{r}"
    );
    assert!(r.contains("n 3000 vs 3000"), "{r}");
    // The seed's latency_degradation 0.2 tolerates 30% slower (not with confidence
    // past 22.4% on this much data), not 60% slower.
    let seed = spec("");
    assert_eq!(Sequential::latency_tolerance(&seed), 0.2);
    assert!(!judge(&seed, &obs).is_regressed());
    let much = pair(
        &seed,
        &state,
        5,
        (3000, 0, 600.0, None),
        (3000, 0, 960.0, None),
    );
    assert!(judge(&seed, &much).is_regressed());
    // 0.5 tolerates it.
    let lenient = spec("rollback_criteria: {latency_degradation: 0.5}");
    let v = judge(&lenient, &obs);
    assert!(v.is_healthy(), "{v:?}");
    assert!(
        v.reason()
            .contains("≤ +53% (tolerance 50% and the sketch's 1% error)"),
        "{}",
        v.reason()
    );
}

#[test]
fn ttft_is_a_guardrail_when_both_variants_have_it() {
    let spec = spec("rollback_criteria: {success_rate_drop: 0.95}");
    let state = ExperimentState::new(&spec, T0);
    // Same end-to-end latency, first tokens 50% later.
    let obs = pair(
        &spec,
        &state,
        6,
        (3000, 0, 600.0, Some(40.0)),
        (3000, 0, 600.0, Some(60.0)),
    );
    let v = judge(&spec, &obs);
    assert!(v.is_regressed(), "{v:?}");
    assert!(
        v.reason().contains("harm shown with confidence: TTFT p95 "),
        "{}",
        v.reason()
    );
    assert!(!v.reason().contains("p95 latency"), "{}", v.reason());
    // Without TTFT samples it does not apply, and holds nothing up.
    let obs = pair(
        &spec,
        &state,
        6,
        (3000, 0, 600.0, None),
        (3000, 0, 600.0, None),
    );
    let v = judge(&spec, &obs);
    assert!(v.is_healthy(), "{v:?}");
    assert!(
        v.reason()
            .contains("TTFT p95: not compared (v1-1 and v1-0 without TTFT samples)"),
        "{}",
        v.reason()
    );
}

#[test]
fn improved_only_when_faster_with_confidence() {
    let spec = spec("");
    let state = ExperimentState::new(&spec, T0);
    let faster = pair(
        &spec,
        &state,
        7,
        (2000, 2, 600.0, Some(40.0)),
        (2000, 1, 420.0, Some(25.0)),
    );
    let v = judge(&spec, &faster);
    assert!(v.is_improved(), "{v:?}");
    let r = v.reason();
    assert!(r.starts_with("candidate v1-1 vs baseline v1-0: no harm shown (circuit breaker: v1-1 error rate 0.05% (1/2000)"), "{r}");
    assert!(r.contains("goal p95 latency "), "{r}");
    assert!(r.contains("< -2% (the sketch's 1% error)"), "{r}");
    assert!(r.ends_with(": improved"), "{r}");
    assert!(r.contains("no sample ratio mismatch (requests v1-0 2000, v1-1 2000 where the split v1-0 50%, v1-1 50% expects 2000, 2000 (sequential SRM p 1, chi-squared 0 p 1))"), "{r}");
    let same = pair(
        &spec,
        &state,
        8,
        (2000, 2, 600.0, None),
        (2000, 2, 600.0, None),
    );
    let v = judge(&spec, &same);
    assert!(v.is_healthy() && !v.is_improved(), "{v:?}");
    assert!(v.reason().ends_with(": not improved"), "{}", v.reason());
}

#[test]
fn a_sample_ratio_mismatch_halts_ramps_and_promotion_but_not_rollback() {
    let spec = spec("");
    let mut state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    // 70/30 in force, 1000/1000 observed.
    let obs = pair(
        &spec,
        &state,
        9,
        (1000, 0, 600.0, None),
        (1000, 0, 420.0, None),
    );
    let v = Sequential::default().judge(&spec, &state, &obs, 1);
    assert!(v.is_halted(), "{v:?}");
    assert!(
        v.reason().starts_with("sample ratio mismatch: requests v1-0 1000, v1-1 1000 where the split v1-0 70%, v1-1 30% expects 1400, 600 (sequential SRM p "),
        "{}",
        v.reason()
    );
    assert!(
        v.reason()
            .contains("halting (no ramp, no promotion, no winner)"),
        "{}",
        v.reason()
    );
    let d = step(&spec, &state, &obs, now);
    assert_eq!(d.kind(), "hold", "{d:?}");
    assert!(
        d.reason().contains("holding v1-0 70%, v1-1 30%"),
        "{}",
        d.reason()
    );
    // At maxWeight it does not promote either.
    state.weights = vec![50, 50];
    let skewed = pair(
        &spec,
        &state,
        9,
        (1400, 0, 600.0, None),
        (600, 0, 600.0, None),
    );
    assert_eq!(step(&spec, &state, &skewed, now).kind(), "hold");
    // No winner at the planned end.
    let d = step(&spec, &state, &skewed, T0 + 24 * HOUR);
    assert!(matches!(&d, Decision::Finish { winner: None, .. }), "{d:?}");
    assert!(
        d.reason().contains("no winner: sample ratio mismatch"),
        "{}",
        d.reason()
    );
    // Harm still rolls back.
    let harmful = pair(
        &spec,
        &state,
        9,
        (1400, 0, 600.0, None),
        (600, 200, 600.0, None),
    );
    let d = step(&spec, &state, &harmful, now);
    assert_eq!(d.kind(), "rollback", "{d:?}");
    // The right shares do not fire.
    state.weights = vec![70, 30];
    let fine = pair(
        &spec,
        &state,
        9,
        (1400, 0, 600.0, None),
        (600, 0, 600.0, None),
    );
    let v = Sequential::default().judge(&spec, &state, &fine, 1);
    assert!(v.is_healthy(), "{v:?}");
    apply(&spec, &mut state, &d, now);
    assert_eq!(state.phase, crate::state::Phase::RolledBack);
}

#[test]
fn no_srm_for_mirrors_and_feature_flags() {
    for strategy in ["mirror", "featureflag"] {
        let spec = spec(&format!("strategy: {strategy}"));
        let mut state = ExperimentState::new(&spec, T0);
        state.weights = vec![70, 30];
        let obs = pair(
            &spec,
            &state,
            10,
            (1000, 0, 600.0, None),
            (1000, 0, 600.0, None),
        );
        assert!(
            Sequential::default().srm(&spec, &state, &obs).is_none(),
            "{strategy}"
        );
    }
}

#[test]
fn the_canary_steps_on_no_harm_and_promotes_at_max_weight() {
    let spec = spec("");
    let mut state = ExperimentState::new(&spec, T0);
    let mut now = T0;
    let mut kinds = Vec::new();
    while !state.phase.is_terminal() && kinds.len() < 10 {
        now += 5 * MINUTE;
        // As good as the baseline, in the split's shares: healthy, not improved.
        let shares = state.percentages();
        let obs = pair(
            &spec,
            &state,
            now,
            (u64::from(shares[0]) * 20, 2, 600.0, Some(40.0)),
            (u64::from(shares[1]) * 20, 1, 600.0, Some(40.0)),
        );
        let d = step(&spec, &state, &obs, now);
        if let Decision::SetWeights {
            reason, summary, ..
        } = &d
        {
            assert!(reason.contains("no harm shown"), "{reason}");
            assert!(reason.contains("not improved"), "{reason}");
            // `ramp v1-1 30% → 40%: no harm shown; p95 +0% (upper bound +4%); n 600/1400`.
            let (from, to) = (shares[1], shares[1] + 10);
            assert!(
                summary.starts_with(&format!("ramp v1-1 {from}% → {to}%: no harm shown; p95 ")),
                "{summary}"
            );
            assert!(summary.contains("(upper bound "), "{summary}");
            assert!(
                summary.ends_with(&format!(
                    "; n {}/{}",
                    u64::from(shares[1]) * 20,
                    u64::from(shares[0]) * 20
                )),
                "{summary}"
            );
            assert!(!summary.contains('\n') && summary.len() < reason.len() / 3);
        }
        kinds.push(d.kind());
        apply(&spec, &mut state, &d, now);
    }
    assert_eq!(kinds, ["set_weights", "set_weights", "promote"]);
    assert_eq!(state.phase, crate::state::Phase::Promoted);
}

#[test]
fn planned_periods_follow_the_plan() {
    assert_eq!(planned_periods(&spec("")), 3); // 30 → 40 → 50
    assert_eq!(
        planned_periods(&spec("traffic_split: {v1-0: 90, v1-1: 10}")),
        5
    );
    assert_eq!(
        planned_periods(&spec("traffic_split: {v1-0: 100, v1-1: 0}")),
        6
    );
    assert_eq!(planned_periods(&spec("canary: {steps: [40, 75, 90]}")), 4);
    assert_eq!(
        planned_periods(&spec("traffic_split: {v1-0: 60, v1-1: 20, v1-2: 20}")),
        1 + 3 + 3
    );
    for (strategy, k) in [
        ("abtest", 1),
        ("bluegreen", 2),
        ("mirror", 1),
        // 24 hours of 5-minute intervals, plus the first period.
        ("bandit", 1 + 288),
    ] {
        assert_eq!(
            planned_periods(&spec(&format!("strategy: {strategy}"))),
            k,
            "{strategy}"
        );
    }
    let s = spec("strategy: abtest");
    assert_eq!(Sequential::default().period_alpha(&s), 0.05);
    assert!((Sequential::default().period_alpha(&spec("")) - 0.05 / 3.0).abs() < 1e-15);
}

fn evidence(p: f64) -> Outcome {
    Outcome::Tested(Evidence {
        label: "x",
        figures: "x".into(),
        estimate: 0.0,
        bound: 0.0,
        limit: 0.0,
        unit: Unit::Points,
        counts: "n".into(),
        p,
        adjusted: p,
    })
}

#[test]
fn holm_adjusts_over_the_whole_family() {
    // p = 0.01 and 0.02 among four: 0.01 × 4 = 0.04 < 0.05 is harm; then
    // max(0.04, 0.02 × 3 = 0.06) is not. An inapplicable test counts as p = 1.
    let family = Family::new(
        0.05,
        0.05,
        1,
        4,
        vec![
            (1, evidence(0.02)),
            (1, evidence(0.01)),
            (1, Outcome::NotApplicable("n/a".into())),
            (1, evidence(0.5)),
        ],
    );
    let adjusted: Vec<f64> = family
        .of(1)
        .filter_map(|o| match o {
            Outcome::Tested(e) => Some(e.adjusted),
            _ => None,
        })
        .collect();
    assert!((adjusted[0] - 0.06).abs() < 1e-12 && (adjusted[1] - 0.04).abs() < 1e-12);
    assert_eq!(adjusted[2], 1.0);
    let harm = family.harm(1).expect("one harmed");
    assert_eq!(harm.matches("Holm-adjusted").count(), 1, "{harm}");
    assert!(harm.contains("p 0.01, Holm-adjusted 0.04"), "{harm}");
}

#[test]
fn the_printed_bound_crosses_exactly_when_p_is_under_alpha_over_m() {
    let policy = Sequential::default();
    for estimate in [0.0, 0.01, 0.02, 0.03, 0.05, 0.08] {
        for units in [200_u64, 2000, 20_000] {
            let test = Test {
                estimate,
                se: 0.4 / (units as f64).sqrt(),
                units,
                limit: 0.02,
            };
            let (p, bound) = policy.greater(0.05, 4, test);
            assert_eq!(
                p < 0.05 / 4.0,
                bound > 0.02,
                "{estimate} {units}: p {p}, bound {bound}"
            );
        }
    }
}

#[test]
fn the_winner_at_the_planned_end_is_decided_by_the_goal_metric() {
    let spec = spec("strategy: abtest");
    let state = ExperimentState::new(&spec, T0);
    let end = T0 + 24 * HOUR;
    let faster = pair(
        &spec,
        &state,
        11,
        (3000, 3, 600.0, None),
        (1300, 1, 480.0, None),
    );
    let d = step(&spec, &state, &faster, end);
    let Decision::Finish { winner, reason, .. } = &d else {
        panic!("{d:?}");
    };
    assert_eq!(winner.as_deref(), Some("v1-1"));
    assert!(reason.starts_with("planned duration 24h00m00s reached: winner v1-1 by p95 latency (the goal metric), faster than baseline v1-0 with confidence (v1-1 vs v1-0 p95 latency "), "{reason}");
    assert!(reason.contains("(always-valid 95% interval -"), "{reason}");
    assert!(reason.contains("Benjamini-Hochberg"), "{reason}");
    // As fast: no winner.
    let same = pair(
        &spec,
        &state,
        12,
        (3000, 3, 600.0, None),
        (1300, 1, 600.0, None),
    );
    let d = step(&spec, &state, &same, end);
    assert!(matches!(&d, Decision::Finish { winner: None, .. }), "{d:?}");
    assert!(
        d.reason()
            .contains("no winner: no p95 latency differs from the baseline's with confidence"),
        "{}",
        d.reason()
    );
    // Slower within the tolerance: the baseline wins.
    let lenient = self::spec("strategy: abtest\nrollback_criteria: {latency_degradation: 0.5}");
    let slower = pair(
        &lenient,
        &state,
        13,
        (3000, 3, 600.0, None),
        (1300, 1, 720.0, None),
    );
    let d = step(&lenient, &state, &slower, end);
    assert!(
        matches!(&d, Decision::Finish { winner: Some(w), .. } if w == "v1-0"),
        "{d:?}"
    );
    assert!(
        d.reason()
            .contains("every candidate's p95 latency is higher with confidence"),
        "{}",
        d.reason()
    );
}

#[test]
fn alone_a_variant_is_held_to_the_target_and_the_breaker() {
    let spec = spec("strategy: bluegreen\ntarget_metrics: {latency_p95_ms: 1000}");
    let mut state = ExperimentState::new(&spec, T0);
    state.weights = vec![0, 100];
    let policy = Sequential::default();
    // Green's p95 is about 600 × e^(0.4 × 1.645) ≈ 1160 ms: past 1000 × 1.2.
    let slow = pair(&spec, &state, 14, (0, 0, 1.0, None), (3000, 0, 800.0, None));
    let v = policy.judge(&spec, &state, &slow, 1);
    assert!(v.is_regressed(), "{v:?}");
    assert!(
        v.reason().starts_with("v1-1 on its own (the baseline serves nothing this period): harm shown with confidence: p95 latency of v1-1 "),
        "{}",
        v.reason()
    );
    assert!(
        v.reason().contains("against target latency_p95_ms 1000 ms"),
        "{}",
        v.reason()
    );
    let fine = pair(&spec, &state, 14, (0, 0, 1.0, None), (3000, 0, 500.0, None));
    let v = policy.judge(&spec, &state, &fine, 1);
    assert!(v.is_healthy() && !v.is_improved(), "{v:?}");
    let failing = pair(
        &spec,
        &state,
        14,
        (0, 0, 1.0, None),
        (3000, 300, 500.0, None),
    );
    let v = policy.judge(&spec, &state, &failing, 1);
    assert!(
        v.is_regressed() && v.reason().contains("circuit breaker"),
        "{v:?}"
    );
    // Blue-green switches back on it.
    let d = step(&spec, &state, &failing, T0 + HOUR);
    assert_eq!(d.kind(), "rollback", "{d:?}");
}

#[test]
fn every_verdict_states_its_numbers() {
    let spec = spec("");
    let state = ExperimentState::new(&spec, T0);
    let obs = pair(
        &spec,
        &state,
        15,
        (2100, 5, 600.0, Some(40.0)),
        (900, 3, 610.0, Some(41.0)),
    );
    let v = judge(&spec, &obs);
    assert!(v.is_healthy(), "{v:?}");
    let r = v.reason();
    for part in [
        "circuit breaker: v1-1 error rate 0.33% (3/900) against the hard limit 5%",
        "error rate 0.33% (3/900) vs 0.24% (5/2100): +0.1 points, lower bound ",
        "p95 latency ",
        "TTFT p95 ",
        "n 900 vs 2100",
        "Holm-adjusted",
        "sequential SRM p ",
        "goal p95 latency ",
    ] {
        assert!(r.contains(part), "{part}: {r}");
    }
}

#[test]
fn weights_in_force_are_what_srm_checks() {
    // Moments alone (no sketch) are not enough for a p95: not enough data, not a crash.
    let spec = spec("");
    let state = ExperimentState::new(&spec, T0);
    let bare = |n| WindowStats {
        count: n,
        latency_ms: Distribution {
            moments: Moments::of((0..n).map(|i| i as f64)),
            sketch: Sketch::new(),
        },
        ..WindowStats::default()
    };
    let obs = observe(&spec, &state, vec![bare(700), bare(300)]);
    let v = judge(&spec, &obs);
    assert!(matches!(v, Verdict::Inconclusive { .. }), "{v:?}");
    assert!(
        v.reason()
            .contains("needs 73 events per variant, and there are 0 and 0"),
        "{}",
        v.reason()
    );
}
