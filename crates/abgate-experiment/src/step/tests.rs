use super::*;
use crate::observe::VariantObservation;
use crate::testing::{experiment, seed_experiment, variant};

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
/// A start time that is not 0, so that offsets are visible.
const T0: u64 = 1_767_225_600_000;

/// Observations of the current period of `state`, up to `now`.
fn obs(state: &ExperimentState, now: u64, variants: Vec<VariantObservation>) -> Observations {
    Observations {
        variants,
        from: state.period_started_at,
        to: now,
        stats: Vec::new(),
        feedback: Vec::new(),
        estimates: Vec::new(),
    }
}

/// The seed's two variants: the candidate 1000 requests at `p95` with `errors`, the
/// baseline 1000 requests at 600 ms with 5 errors.
fn seed_obs(state: &ExperimentState, now: u64, errors: u64, p95: f64) -> Observations {
    obs(
        state,
        now,
        vec![
            variant("v1-0", 1000, 5, 600.0),
            variant("v1-1", 1000, errors, p95),
        ],
    )
}

/// An improved candidate: 500 ms against 600, success 0.999 against 0.995.
fn improved(state: &ExperimentState, now: u64) -> Observations {
    seed_obs(state, now, 1, 500.0)
}

fn step_and_apply(
    spec: &Experiment,
    state: &mut ExperimentState,
    obs: &Observations,
    now: u64,
) -> Decision {
    let d = step(spec, state, obs, now);
    apply(spec, state, &d, now);
    d
}

#[test]
fn rollback_when_candidate_success_rate_below_threshold() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    // 60 errors in 1000: 0.94 < 0.95.
    let o = seed_obs(&state, now, 60, 500.0);
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert_eq!(d.kind(), "rollback", "{d:?}");
    assert!(
        d.reason().contains("candidate v1-1 success rate 0.94 (60 errors in 1000 requests) < rollback threshold success_rate_drop 0.95"),
        "{}",
        d.reason()
    );
    assert_eq!(state.weights, vec![100, 0]);
    assert_eq!(state.phase, Phase::RolledBack);
}

#[test]
fn rollback_when_candidate_p95_exceeds_baseline_by_degradation() {
    let spec = seed_experiment();
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    let d = step(&spec, &state, &seed_obs(&state, now, 0, 812.0), now);
    assert_eq!(d.kind(), "rollback", "{d:?}");
    assert!(
        d.reason()
            .contains("candidate v1-1 p95 812 ms > baseline v1-0 p95 600 ms × 1.2 = 720 ms"),
        "{}",
        d.reason()
    );
    assert!(
        d.reason().ends_with("all traffic to baseline v1-0"),
        "{}",
        d.reason()
    );
    // Exactly at the limit is not a regression (the seed's `>`).
    let d = step(&spec, &state, &seed_obs(&state, now, 0, 720.0), now);
    assert_eq!(d.kind(), "hold", "{d:?}");
}

#[test]
fn no_data_is_inconclusive_not_rollback() {
    let spec = seed_experiment();
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    // Nothing at all (the seed: success rate 0 → rollback).
    let d = step(&spec, &state, &Observations::empty(&spec, T0, now), now);
    assert_eq!(d.kind(), "hold", "{d:?}");
    assert!(
        d.reason()
            .contains("candidate v1-1 has 0 requests in this period, fewer than minSamples 100"),
        "{}",
        d.reason()
    );
    // The baseline has data, the candidate none (the seed: p95 999999 → rollback).
    let d = step(
        &spec,
        &state,
        &obs(
            &state,
            now,
            vec![
                variant("v1-0", 1000, 0, 600.0),
                VariantObservation::empty("v1-1"),
            ],
        ),
        now,
    );
    assert_eq!(d.kind(), "hold", "{d:?}");
    // Requests but no latency figure (a metric source without the histogram).
    let mut no_p95 = variant("v1-1", 1000, 0, 600.0);
    no_p95.latency_p95_ms = None;
    let d = step(
        &spec,
        &state,
        &obs(&state, now, vec![variant("v1-0", 1000, 0, 600.0), no_p95]),
        now,
    );
    assert_eq!(d.kind(), "hold", "{d:?}");
    assert!(d.reason().contains("no p95 latency"), "{}", d.reason());
}

#[test]
fn too_few_samples_hold() {
    let spec = seed_experiment();
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    // 99 requests, half failed: still not evidence enough (minSamples defaults to 100).
    let o = obs(
        &state,
        now,
        vec![
            variant("v1-0", 1000, 0, 600.0),
            variant("v1-1", 99, 50, 5000.0),
        ],
    );
    let d = step(&spec, &state, &o, now);
    assert_eq!(d.kind(), "hold", "{d:?}");
    assert!(
        d.reason()
            .contains("candidate v1-1 has 99 requests in this period, fewer than minSamples 100"),
        "{}",
        d.reason()
    );
    // A baseline short of samples holds too.
    let o = obs(
        &state,
        now,
        vec![
            variant("v1-0", 10, 0, 600.0),
            variant("v1-1", 1000, 500, 5000.0),
        ],
    );
    assert_eq!(step(&spec, &state, &o, now).kind(), "hold");
    // minSamples is the spec's.
    let spec = experiment("analysis: {minSamples: 50}");
    let o = obs(
        &state,
        now,
        vec![
            variant("v1-0", 1000, 0, 600.0),
            variant("v1-1", 99, 50, 5000.0),
        ],
    );
    assert_eq!(step(&spec, &state, &o, now).kind(), "rollback");
}

#[test]
fn ramp_adds_step_weight_up_to_max() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    let mut now = T0;
    let mut splits = vec![state.weights.clone()];
    let mut kinds = Vec::new();
    for _ in 0..4 {
        now += 5 * MINUTE;
        let o = improved(&state, now);
        let d = step_and_apply(&spec, &mut state, &o, now);
        kinds.push(d.kind());
        splits.push(state.weights.clone());
    }
    assert_eq!(kinds, ["set_weights", "set_weights", "promote", "hold"]);
    assert_eq!(
        splits,
        [
            vec![70, 30],
            vec![60, 40],
            vec![50, 50],
            vec![0, 100],
            vec![0, 100]
        ]
    );
    assert_eq!((state.step, state.period), (2, 3));
    assert_eq!(state.winner.as_deref(), Some("v1-1"));
}

#[test]
fn ramp_reason_states_the_numbers() {
    let spec = seed_experiment();
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    let d = step(&spec, &state, &improved(&state, now), now);
    let Decision::SetWeights {
        weights, reason, ..
    } = &d
    else {
        panic!("{d:?}");
    };
    assert_eq!(weights, &vec![60, 40]);
    assert!(
        reason.contains("p95 500 ms vs 600 ms (16.7% better)"),
        "{reason}"
    );
    assert!(
        reason.contains("v1-1 30% → 40% (stepWeight 10, maxWeight 50)"),
        "{reason}"
    );
    assert!(reason.ends_with("new split v1-0 60%, v1-1 40%"), "{reason}");
}

#[test]
fn healthy_but_not_improved_holds() {
    let spec = seed_experiment();
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    // 590 ms against 600: 1.7% better, not > 5%.
    let d = step(&spec, &state, &seed_obs(&state, now, 1, 590.0), now);
    assert_eq!(d.kind(), "hold", "{d:?}");
    assert!(
        d.reason()
            .contains("healthy, not improved (p95 improvement 1.7% ≤ 5%)"),
        "{}",
        d.reason()
    );
    assert!(
        d.reason().contains("holding v1-0 70%, v1-1 30%"),
        "{}",
        d.reason()
    );
}

#[test]
fn canary_steps_follow_the_list() {
    let spec = experiment("canary: {steps: [40, 75, 90]}");
    assert_eq!(spec.canary.max_weight, 90);
    let mut state = ExperimentState::new(&spec, T0);
    let mut now = T0;
    let mut splits = Vec::new();
    for _ in 0..4 {
        now += 5 * MINUTE;
        let o = improved(&state, now);
        let _ = step_and_apply(&spec, &mut state, &o, now);
        splits.push(state.weights.clone());
    }
    assert_eq!(
        splits,
        [vec![60, 40], vec![25, 75], vec![10, 90], vec![0, 100]]
    );
    assert_eq!(state.phase, Phase::Promoted);
}

#[test]
fn canary_starts_a_candidate_with_no_traffic() {
    let spec = experiment("traffic_split: {v1-0: 100, v1-1: 0}");
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    let o = obs(
        &state,
        now,
        vec![
            variant("v1-0", 1000, 0, 600.0),
            VariantObservation::empty("v1-1"),
        ],
    );
    let d = step(&spec, &state, &o, now);
    assert_eq!(
        d,
        Decision::SetWeights { summary: "ramp v1-1 0% → 10%: starting the ramp".to_owned(),
            weights: vec![90, 10],
            reason: "candidate v1-1 has no traffic yet: starting the ramp; v1-1 0% → 10% (stepWeight 10, maxWeight 50); new split v1-0 90%, v1-1 10%".to_owned()
        }
    );
}

#[test]
fn analysis_reads_split_in_force() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    // A step already took the candidate from the spec's 30 to 40.
    state.weights = vec![60, 40];
    state.period = 1;
    state.period_started_at = T0 + 5 * MINUTE;
    let now = T0 + 10 * MINUTE;
    let d = step(&spec, &state, &improved(&state, now), now);
    // The seed read the initial 70/30 and recommended 60/40 again, forever.
    assert!(
        matches!(&d, Decision::SetWeights { weights, .. } if weights == &vec![50, 50]),
        "{d:?}"
    );
    // Relative weights in force are read as percentages.
    state.weights = vec![6, 4];
    let d = step(&spec, &state, &improved(&state, now), now);
    assert!(
        matches!(&d, Decision::SetWeights { weights, .. } if weights == &vec![50, 50]),
        "{d:?}"
    );
}

#[test]
fn observations_from_before_the_period_hold() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    let changed = T0 + 5 * MINUTE;
    apply(
        &spec,
        &mut state,
        &Decision::SetWeights {
            summary: String::new(),
            weights: vec![60, 40],
            reason: "test".into(),
        },
        changed,
    );
    let now = changed + 5 * MINUTE;
    let mut o = improved(&state, now);
    o.from = T0;
    let d = step(&spec, &state, &o, now);
    assert_eq!(d.kind(), "hold", "{d:?}");
    assert!(
        d.reason().contains("before period 1 began"),
        "{}",
        d.reason()
    );
}

#[test]
fn baseline_is_declared_not_first_key() {
    // The candidate is the first key; the baseline is declared.
    let spec = experiment("traffic_split: {v1-1: 30, v1-0: 70}\nbaseline: v1-0");
    assert_eq!(spec.baseline, 1);
    let mut state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    // v1-1 at 1000 ms against v1-0 at 600 ms: a regression of v1-1. Read with the first
    // key as the baseline (the seed) it would be v1-0 improving by 40%, and a ramp.
    let o = obs(
        &state,
        now,
        vec![
            variant("v1-1", 1000, 0, 1000.0),
            variant("v1-0", 1000, 0, 600.0),
        ],
    );
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert_eq!(d.kind(), "rollback", "{d:?}");
    assert!(
        d.reason()
            .contains("candidate v1-1 p95 1000 ms > baseline v1-0 p95 600 ms"),
        "{}",
        d.reason()
    );
    assert_eq!(state.weights, vec![0, 100]);
}

#[test]
fn rollback_sends_everything_to_declared_baseline_whatever_its_name() {
    // The variant called `baseline` is the candidate; the declared baseline is called
    // `candidate` (the seed's rollback named `baseline` and `candidate` and did
    // nothing when they did not exist; ours reads the index).
    let spec = experiment(
        "variants:\n- {name: baseline, subset: v1-1, weight: 30}\n- {name: candidate, subset: v1-0, weight: 60}\n- {name: third, subset: v1-2, weight: 10}\nbaseline: candidate",
    );
    assert_eq!(spec.baseline, 1);
    assert_eq!(all_to(&spec, spec.baseline), vec![0, 100, 0]);
    for reason in ["automatic", "manual"] {
        let mut state = ExperimentState::new(&spec, T0);
        state.weights = vec![45, 45, 10];
        apply(
            &spec,
            &mut state,
            &Decision::Rollback {
                summary: String::new(),
                reason: reason.into(),
            },
            T0 + 1,
        );
        assert_eq!(state.weights, vec![0, 100, 0]);
        assert_eq!(state.phase, Phase::RolledBack);
        assert_eq!((state.period, state.period_started_at), (1, T0 + 1));
    }
    // And for the seed's names, whichever index the baseline has.
    for (yaml, want) in [
        ("", vec![100, 0]),
        (
            "traffic_split: {v1-1: 30, v1-0: 70}\nbaseline: v1-0",
            vec![0, 100],
        ),
    ] {
        let spec = experiment(yaml);
        let mut state = ExperimentState::new(&spec, T0);
        apply(
            &spec,
            &mut state,
            &Decision::Rollback {
                summary: String::new(),
                reason: "r".into(),
            },
            T0 + 1,
        );
        assert_eq!(state.weights, want, "{yaml}");
    }
}

#[test]
fn canary_promotes_at_max_weight() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    state.weights = vec![50, 50];
    state.period = 2;
    state.step = 2;
    state.period_started_at = T0 + 10 * MINUTE;
    let now = T0 + 15 * MINUTE;
    // Healthy but not improved is enough once the candidate holds maxWeight.
    let o = seed_obs(&state, now, 1, 590.0);
    let d = step_and_apply(&spec, &mut state, &o, now);
    let Decision::Promote {
        variant, reason, ..
    } = &d
    else {
        panic!("{d:?}");
    };
    assert_eq!(variant, "v1-1");
    assert!(
        reason.starts_with(
            "candidate v1-1 held 50% (maxWeight 50) through period 2 and stayed healthy"
        ),
        "{reason}"
    );
    assert_eq!(state.weights, vec![0, 100]);
    assert_eq!(
        (state.phase, state.winner.as_deref()),
        (Phase::Promoted, Some("v1-1"))
    );
    assert_eq!(state.period, 3);
}

#[test]
fn canary_at_max_weight_without_evidence_holds() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    state.weights = vec![50, 50];
    let now = T0 + 5 * MINUTE;
    let o = obs(
        &state,
        now,
        vec![
            variant("v1-0", 1000, 0, 600.0),
            variant("v1-1", 20, 0, 500.0),
        ],
    );
    assert_eq!(step(&spec, &state, &o, now).kind(), "hold");
}

#[test]
fn canary_finishes_at_the_planned_end_without_promoting() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    let now = T0 + 24 * HOUR;
    // Improved, but the time is up: a verdict, not a step.
    let o = improved(&state, now);
    let d = step_and_apply(&spec, &mut state, &o, now);
    let Decision::Finish { winner, reason, .. } = &d else {
        panic!("{d:?}");
    };
    assert_eq!(winner.as_deref(), Some("v1-1"));
    assert!(
        reason.starts_with("planned duration 24h00m00s reached: winner v1-1 by score"),
        "{reason}"
    );
    assert_eq!(state.weights, vec![70, 30]);
    assert_eq!(state.phase, Phase::Finished);
}

#[test]
fn abtest_finishes_with_score_winner() {
    let spec = experiment("strategy: abtest");
    let mut state = ExperimentState::new(&spec, T0);
    // Before the end: the split is fixed, even for a better candidate.
    let now = T0 + HOUR;
    let o = improved(&state, now);
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert_eq!(d.kind(), "hold", "{d:?}");
    assert!(
        d.reason()
            .contains("fixed split v1-0 70%, v1-1 30%; planned end in 23h00m00s"),
        "{}",
        d.reason()
    );
    let now = T0 + 24 * HOUR;
    let o = improved(&state, now);
    let d = step_and_apply(&spec, &mut state, &o, now);
    let Decision::Finish { winner, reason, .. } = &d else {
        panic!("{d:?}");
    };
    assert_eq!(winner.as_deref(), Some("v1-1"));
    // 0.999 × 0.6 + 1000/500 × 0.4 = 1.3994 against 0.995 × 0.6 + 1000/600 × 0.4 = 1.2637.
    assert!(
        reason.contains("v1-0 1.2637 = 0.995 × 0.6 + 1000 / 600 ms × 0.4"),
        "{reason}"
    );
    assert!(
        reason.contains("v1-1 1.3994 = 0.999 × 0.6 + 1000 / 500 ms × 0.4"),
        "{reason}"
    );
    assert_eq!(state.weights, vec![70, 30]);
    assert_eq!(
        (state.phase, state.winner.as_deref()),
        (Phase::Finished, Some("v1-1"))
    );
}

#[test]
fn abtest_without_enough_data_finishes_without_winner() {
    let spec = experiment("strategy: abtest");
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + 24 * HOUR;
    let d = step(&spec, &state, &Observations::empty(&spec, T0, now), now);
    assert!(matches!(&d, Decision::Finish { winner: None, .. }), "{d:?}");
}

#[test]
fn abtest_rolls_back_a_regression_before_the_end() {
    for strategy in ["abtest", "featureflag", "bandit"] {
        let spec = experiment(&format!("strategy: {strategy}"));
        let state = ExperimentState::new(&spec, T0);
        let now = T0 + HOUR;
        let d = step(&spec, &state, &seed_obs(&state, now, 0, 900.0), now);
        assert_eq!(d.kind(), "rollback", "{strategy}: {d:?}");
    }
}

#[test]
fn bluegreen_switches_all_at_once_and_back() {
    let spec = experiment("strategy: bluegreen");
    let mut state = ExperimentState::new(&spec, T0);
    assert_eq!(state.weights, vec![100, 0]);
    // Blue serves everything; green's mirrored copy shows it better: switch at once.
    let now = T0 + 5 * MINUTE;
    let o = improved(&state, now);
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert_eq!(d.kind(), "set_weights", "{d:?}");
    assert!(
        d.reason()
            .contains("switching all traffic from blue v1-0 to green v1-1 at once"),
        "{}",
        d.reason()
    );
    assert!(
        d.summary()
            .starts_with("switch to green v1-1: improved; p95 -16.7%"),
        "{}",
        d.summary()
    );
    assert_eq!(state.weights, vec![0, 100]);
    // Green alone, failing: switch back instantly.
    let now = now + 5 * MINUTE;
    let o = obs(
        &state,
        now,
        vec![
            VariantObservation::empty("v1-0"),
            variant("v1-1", 1000, 80, 500.0),
        ],
    );
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert_eq!(d.kind(), "rollback", "{d:?}");
    assert!(
        d.reason()
            .contains("v1-1 success rate 0.92 (80 errors in 1000 requests)"),
        "{}",
        d.reason()
    );
    assert!(
        d.reason()
            .ends_with("switching back: all traffic to blue v1-0"),
        "{}",
        d.reason()
    );
    assert_eq!(state.weights, vec![100, 0]);
    assert_eq!(state.phase, Phase::RolledBack);
}

#[test]
fn bluegreen_pre_switch_check_stops_a_bad_green() {
    let spec = experiment("strategy: bluegreen");
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    // Green has samples (test traffic): it is checked before the switch.
    let d = step(&spec, &state, &seed_obs(&state, now, 0, 900.0), now);
    assert_eq!(d.kind(), "rollback", "{d:?}");
    assert!(
        d.reason().starts_with("pre-switch check of green v1-1"),
        "{}",
        d.reason()
    );
    let d = step(&spec, &state, &improved(&state, now), now);
    assert_eq!(d.kind(), "set_weights", "{d:?}");
    assert_eq!(d, step(&spec, &state, &improved(&state, now), now));
    assert!(
        d.reason()
            .starts_with("pre-switch check of green v1-1 passed"),
        "{}",
        d.reason()
    );
}

#[test]
fn bluegreen_does_not_switch_without_evidence() {
    let spec = experiment("strategy: bluegreen");
    let mut state = ExperimentState::new(&spec, T0);
    let no_green = |state: &ExperimentState, now| {
        obs(
            state,
            now,
            vec![
                variant("v1-0", 1000, 0, 600.0),
                VariantObservation::empty("v1-1"),
            ],
        )
    };
    // Green has no samples yet; then too few; then healthy but not better (the classic
    // policy's canary steps only on improvement): blue keeps everything each time.
    let now = T0 + 5 * MINUTE;
    let few = obs(
        &state,
        now,
        vec![
            variant("v1-0", 1000, 0, 600.0),
            variant("v1-1", 23, 0, 500.0),
        ],
    );
    let cases = [
        (
            no_green(&state, now),
            "hold blue: not enough data (v1-1 0/100 requests)",
        ),
        (few, "hold blue: not enough data (v1-1 23/100 requests)"),
        (
            seed_obs(&state, now, 0, 600.0),
            "hold blue: healthy, not improved; p95 0%, success rate 1; n 1000/1000",
        ),
    ];
    for (o, summary) in cases {
        let d = step_and_apply(&spec, &mut state, &o, now);
        assert_eq!((d.kind(), d.summary()), ("hold", summary), "{d:?}");
        assert!(
            d.reason()
                .contains("no switch without the evidence a canary step needs"),
            "{}",
            d.reason()
        );
        assert_eq!(state.weights, vec![100, 0]);
    }
    // The planned end without evidence: finished, never switched, blue keeps it all.
    let end = T0 + 24 * HOUR;
    let o = no_green(&state, end);
    let d = step_and_apply(&spec, &mut state, &o, end);
    assert_eq!(d.kind(), "finish", "{d:?}");
    assert!(d.summary().starts_with("finish: never switched"), "{d:?}");
    assert_eq!(
        (state.phase, state.weights.clone(), state.winner.clone()),
        (Phase::Finished, vec![100, 0], None)
    );
}

#[test]
fn bluegreen_with_skip_analysis_switches_at_the_first_step() {
    let spec = experiment("strategy: bluegreen\nskipAnalysis: true");
    assert!(spec.skip_analysis);
    let mut state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    // Nothing observed on green, even a bad-looking one: switched unchecked.
    for o in [
        obs(
            &state,
            now,
            vec![
                variant("v1-0", 1000, 0, 600.0),
                VariantObservation::empty("v1-1"),
            ],
        ),
        seed_obs(&state, now, 0, 900.0),
    ] {
        let d = step(&spec, &state, &o, now);
        assert_eq!(d.kind(), "set_weights", "{d:?}");
        assert_eq!(d.summary(), "switch to green v1-1: skipAnalysis");
    }
    let o = seed_obs(&state, now, 0, 900.0);
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert_eq!(d.kind(), "set_weights", "{d:?}");
    assert_eq!(state.weights, vec![0, 100]);
    // After the switch green is still judged on its own: failing, it switches back.
    let now = now + 5 * MINUTE;
    let o = obs(
        &state,
        now,
        vec![
            VariantObservation::empty("v1-0"),
            variant("v1-1", 1000, 80, 500.0),
        ],
    );
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert_eq!(d.kind(), "rollback", "{d:?}");
    assert!(d.summary().starts_with("switch back to blue: "), "{d:?}");
}

#[test]
fn bluegreen_promotes_green_healthy_at_the_end() {
    let spec = experiment("strategy: bluegreen");
    let mut state = ExperimentState::new(&spec, T0);
    apply(
        &spec,
        &mut state,
        &Decision::SetWeights {
            summary: String::new(),
            weights: vec![0, 100],
            reason: "switch".into(),
        },
        T0 + MINUTE,
    );
    let alone = |state: &ExperimentState, now| {
        obs(
            state,
            now,
            vec![
                VariantObservation::empty("v1-0"),
                variant("v1-1", 1000, 0, 700.0),
            ],
        )
    };
    let now = T0 + HOUR;
    let d = step(&spec, &state, &alone(&state, now), now);
    assert_eq!(d.kind(), "hold", "{d:?}");
    let now = T0 + 24 * HOUR;
    let o = alone(&state, now);
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert_eq!(d.kind(), "promote", "{d:?}");
    assert_eq!(
        (state.phase, state.weights.clone()),
        (Phase::Promoted, vec![0, 100])
    );
}

#[test]
fn mirror_compares_but_never_promotes_or_rolls_back() {
    let spec = experiment("strategy: mirror");
    let mut state = ExperimentState::new(&spec, T0);
    assert_eq!(state.weights, vec![100, 0]);
    let now = T0 + HOUR;
    // The shadow is far worse: reported, not acted on.
    let o = seed_obs(&state, now, 200, 2000.0);
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert_eq!(d.kind(), "hold", "{d:?}");
    assert!(
        d.reason().contains("no user saw it, so no rollback"),
        "{}",
        d.reason()
    );
    assert!(
        d.reason()
            .contains("mean output tokens: v1-0 200, v1-1 200"),
        "{}",
        d.reason()
    );
    // Better at the end: a verdict, not a promotion.
    let now = T0 + 24 * HOUR;
    let o = improved(&state, now);
    let d = step_and_apply(&spec, &mut state, &o, now);
    assert!(
        matches!(&d, Decision::Finish { winner: Some(w), .. } if w == "v1-1"),
        "{d:?}"
    );
    assert!(
        d.reason().contains("not promoted automatically"),
        "{}",
        d.reason()
    );
    assert_eq!(state.weights, vec![100, 0]);
}

#[test]
fn mirror_keeps_users_on_the_baseline() {
    let spec = experiment("strategy: mirror");
    let mut state = ExperimentState::new(&spec, T0);
    state.weights = vec![70, 30];
    let now = T0 + MINUTE;
    let d = step(&spec, &state, &Observations::empty(&spec, T0, now), now);
    assert!(
        matches!(&d, Decision::SetWeights { weights, .. } if weights == &vec![100, 0]),
        "{d:?}"
    );
}

#[test]
fn terminal_phase_ignores_decisions() {
    let spec = seed_experiment();
    for phase in [Phase::Promoted, Phase::RolledBack, Phase::Finished] {
        let mut state = ExperimentState::new(&spec, T0);
        state.phase = phase;
        let before = state.clone();
        let now = T0 + 5 * MINUTE;
        let d = step(&spec, &state, &seed_obs(&state, now, 500, 5000.0), now);
        assert_eq!(d.kind(), "hold", "{d:?}");
        assert!(d.reason().contains("has ended"), "{}", d.reason());
        for d in [
            Decision::Rollback {
                summary: String::new(),
                reason: "r".into(),
            },
            Decision::Promote {
                summary: String::new(),
                variant: "v1-1".into(),
                reason: "p".into(),
            },
            Decision::SetWeights {
                summary: String::new(),
                weights: vec![50, 50],
                reason: "s".into(),
            },
            Decision::Finish {
                summary: String::new(),
                winner: None,
                reason: "f".into(),
            },
            Decision::Hold {
                summary: String::new(),
                reason: "h".into(),
            },
        ] {
            apply(&spec, &mut state, &d, now);
            assert_eq!(state, before, "{phase}: {d:?}");
        }
    }
}

#[test]
fn paused_holds_but_people_can_still_roll_back() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    assert!(state.pause(T0 + 1));
    let now = T0 + 5 * MINUTE;
    let d = step(&spec, &state, &seed_obs(&state, now, 500, 5000.0), now);
    assert_eq!(d.kind(), "hold");
    assert_eq!(
        d.reason(),
        "paused; the split v1-0 70%, v1-1 30% stays in force"
    );
    apply(
        &spec,
        &mut state,
        &Decision::Rollback {
            summary: String::new(),
            reason: "operator".into(),
        },
        now,
    );
    assert_eq!(
        (state.phase, state.weights.clone()),
        (Phase::RolledBack, vec![100, 0])
    );
}

#[test]
fn invalid_decisions_are_refused_and_ignored() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    let before = state.clone();
    let bad = [
        (
            Decision::SetWeights {
                summary: String::new(),
                weights: vec![100],
                reason: "x".into(),
            },
            InvalidDecision::WeightCount {
                weights: 1,
                variants: 2,
            },
        ),
        (
            Decision::SetWeights {
                summary: String::new(),
                weights: vec![0, 0],
                reason: "x".into(),
            },
            InvalidDecision::NoWeight,
        ),
        (
            Decision::Promote {
                summary: String::new(),
                variant: "candidate".into(),
                reason: "x".into(),
            },
            InvalidDecision::UnknownVariant("candidate".into()),
        ),
    ];
    for (d, err) in bad {
        assert_eq!(d.validate(&spec), Err(err));
        apply(&spec, &mut state, &d, T0 + 1);
        assert_eq!(state, before);
    }
}

#[test]
fn unchanged_weights_do_not_start_a_period() {
    let spec = seed_experiment();
    let mut state = ExperimentState::new(&spec, T0);
    apply(
        &spec,
        &mut state,
        &Decision::SetWeights {
            summary: String::new(),
            weights: vec![70, 30],
            reason: "same".into(),
        },
        T0 + 1,
    );
    assert_eq!(
        (state.period, state.step, state.period_started_at),
        (0, 0, T0)
    );
    assert_eq!(state.updated_at, T0 + 1);
}

#[test]
fn observations_for_other_variants_hold() {
    let spec = seed_experiment();
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + MINUTE;
    let o = obs(
        &state,
        now,
        vec![
            variant("baseline", 1000, 0, 600.0),
            variant("candidate", 1000, 500, 900.0),
        ],
    );
    let d = step(&spec, &state, &o, now);
    assert_eq!(d.kind(), "hold");
    assert!(d.reason().contains("observations are for variants [baseline, candidate] but the experiment's are [v1-0, v1-1]"), "{}", d.reason());
}

#[test]
fn decision_serializes_with_its_kind() {
    let d = Decision::SetWeights {
        summary: String::new(),
        weights: vec![60, 40],
        reason: "r".into(),
    };
    let json = serde_json::to_value(&d).expect("serializes");
    assert_eq!(json["kind"], "set_weights");
    assert_eq!(json["kind"], d.kind());
    let back: Decision = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back, d);
}

#[test]
fn canary_ramps_each_improved_candidate_on_its_own() {
    let spec = experiment("traffic_split: {v1-0: 60, v1-1: 20, v1-2: 20}");
    let state = ExperimentState::new(&spec, T0);
    let now = T0 + 5 * MINUTE;
    // v1-1 improved; v1-2 short of samples: only v1-1 steps, the baseline pays for it.
    let o = obs(
        &state,
        now,
        vec![
            variant("v1-0", 1000, 5, 600.0),
            variant("v1-1", 1000, 1, 500.0),
            variant("v1-2", 40, 0, 500.0),
        ],
    );
    let d = step(&spec, &state, &o, now);
    assert!(
        matches!(&d, Decision::SetWeights { weights, .. } if weights == &vec![50, 30, 20]),
        "{d:?}"
    );
    // Any candidate regressed rolls the whole experiment back, as the seed did.
    let o = obs(
        &state,
        now,
        vec![
            variant("v1-0", 1000, 5, 600.0),
            variant("v1-1", 1000, 1, 500.0),
            variant("v1-2", 1000, 0, 900.0),
        ],
    );
    let d = step(&spec, &state, &o, now);
    assert_eq!(d.kind(), "rollback", "{d:?}");
    assert!(
        d.reason().starts_with("candidate v1-2 p95 900 ms"),
        "{}",
        d.reason()
    );
}
