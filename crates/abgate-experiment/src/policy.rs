//! Analysis policies: how one period's observations become a verdict.

use abgate_config::model::{Experiment, PolicyKind};

use crate::fmt::{ms, num, pct, rate, signed_pct};
use crate::observe::{Observations, VariantObservation};
use crate::score::{pick_winner, WinnerPick};
use crate::sequential::Sequential;
use crate::state::ExperimentState;

/// What a policy concluded about a candidate (or, folded, about the experiment). Each
/// carries its reason in full, with every number behind it, and a `summary`: the same
/// conclusion in a few words and the one or two numbers that decided it
/// (`no harm shown; p95 -34% (upper bound -30%); n 111/412`), for one-line decisions.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough evidence either way (too few samples, a missing figure). Never a
    /// reason to roll back.
    Inconclusive {
        /// Why, with the numbers.
        reason: String,
        /// Why, in a few words.
        summary: String,
    },
    /// Worse than the rollback criteria allow.
    Regressed {
        /// Why, with the numbers.
        reason: String,
        /// Why, in a few words.
        summary: String,
    },
    /// The data cannot be trusted for a comparison (a sample ratio mismatch): no ramp,
    /// no promotion, no winner while it lasts. Never a reason to roll back by itself.
    Halted {
        /// Why, with the numbers.
        reason: String,
        /// Why, in a few words.
        summary: String,
    },
    /// Within the rollback criteria; `improved` when also better than the baseline by
    /// the policy's standard (the classic one: the seed's ramp condition).
    Healthy {
        /// Whether the candidate beat the baseline.
        improved: bool,
        /// Why, with the numbers.
        reason: String,
        /// Why, in a few words.
        summary: String,
    },
}

impl Verdict {
    /// [`Verdict::Inconclusive`].
    pub fn inconclusive(summary: impl Into<String>, reason: impl Into<String>) -> Self {
        Verdict::Inconclusive {
            reason: reason.into(),
            summary: summary.into(),
        }
    }

    /// [`Verdict::Regressed`].
    pub fn regressed(summary: impl Into<String>, reason: impl Into<String>) -> Self {
        Verdict::Regressed {
            reason: reason.into(),
            summary: summary.into(),
        }
    }

    /// [`Verdict::Halted`].
    pub fn halted(summary: impl Into<String>, reason: impl Into<String>) -> Self {
        Verdict::Halted {
            reason: reason.into(),
            summary: summary.into(),
        }
    }

    /// [`Verdict::Healthy`].
    pub fn healthy(improved: bool, summary: impl Into<String>, reason: impl Into<String>) -> Self {
        Verdict::Healthy {
            improved,
            reason: reason.into(),
            summary: summary.into(),
        }
    }

    /// The reason, whatever the verdict.
    pub fn reason(&self) -> &str {
        match self {
            Verdict::Inconclusive { reason, .. }
            | Verdict::Regressed { reason, .. }
            | Verdict::Halted { reason, .. }
            | Verdict::Healthy { reason, .. } => reason,
        }
    }

    /// The summary, whatever the verdict.
    pub fn summary(&self) -> &str {
        match self {
            Verdict::Inconclusive { summary, .. }
            | Verdict::Regressed { summary, .. }
            | Verdict::Halted { summary, .. }
            | Verdict::Healthy { summary, .. } => summary,
        }
    }

    /// Whether this is [`Verdict::Regressed`].
    pub fn is_regressed(&self) -> bool {
        matches!(self, Verdict::Regressed { .. })
    }

    /// Whether this is [`Verdict::Halted`].
    pub fn is_halted(&self) -> bool {
        matches!(self, Verdict::Halted { .. })
    }

    /// Whether this is [`Verdict::Healthy`], improved or not.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Verdict::Healthy { .. })
    }

    /// Whether this is `Healthy { improved: true }`.
    pub fn is_improved(&self) -> bool {
        matches!(self, Verdict::Healthy { improved: true, .. })
    }
}

/// Folds per-candidate verdicts into the experiment's: regressed if any candidate
/// regressed (the seed stopped at the first and rolled back), else halted if any is,
/// else inconclusive if any is, else healthy, improved only when every candidate
/// improved. Reasons are joined with `; `, the deciding ones only, each once.
pub fn fold(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let verdicts: Vec<Verdict> = verdicts.into_iter().collect();
    let join = |pick: &dyn Fn(&Verdict) -> bool, text: fn(&Verdict) -> &str| {
        let mut parts: Vec<&str> = Vec::new();
        for r in verdicts.iter().filter(|v| pick(v)).map(text) {
            if !parts.contains(&r) {
                parts.push(r);
            }
        }
        parts.join("; ")
    };
    let both = |pick: &dyn Fn(&Verdict) -> bool| {
        (join(pick, Verdict::summary), join(pick, Verdict::reason))
    };
    if verdicts.is_empty() {
        return Verdict::inconclusive("no candidate", "no candidate to compare");
    }
    if verdicts.iter().any(Verdict::is_regressed) {
        let (summary, reason) = both(&Verdict::is_regressed);
        return Verdict::regressed(summary, reason);
    }
    if verdicts.iter().any(Verdict::is_halted) {
        let (summary, reason) = both(&Verdict::is_halted);
        return Verdict::halted(summary, reason);
    }
    let inconclusive = |v: &Verdict| matches!(v, Verdict::Inconclusive { .. });
    if verdicts.iter().any(inconclusive) {
        let (summary, reason) = both(&inconclusive);
        return Verdict::inconclusive(summary, reason);
    }
    let (summary, reason) = both(&|_| true);
    Verdict::healthy(verdicts.iter().all(Verdict::is_improved), summary, reason)
}

/// An analysis policy: judges candidates against the declared baseline from the
/// observations of the current period.
///
/// Policies are pure and stateless between calls; what they may read:
/// - `obs.variants`: summaries (counts, p95s, means), from any metric source;
/// - `obs.stats`: the raw windows (moments n/Σx/Σx² and quantile sketches), when the
///   source has them: what a sequential policy's confidence sequences are computed from;
/// - `state`: the split in force (`weights`, for a sample-ratio-mismatch check against
///   observed counts), `period` and `period_started_at` (per-period comparisons, so
///   ramps cannot bias results), `step`.
///
/// A policy that needs evidence carried across periods would get it from a field added
/// to [`ExperimentState`]; none does yet ([`Sequential`] spends its error rate over
/// the planned periods instead, each judged on its own data).
pub trait Policy: Send + Sync {
    /// The policy's name, as reports print it (`classic`).
    fn name(&self) -> &'static str;

    /// Compares candidate `candidate` (an index of `spec.variants`, not the baseline)
    /// with the declared baseline `spec.baseline`.
    fn compare(
        &self,
        spec: &Experiment,
        state: &ExperimentState,
        obs: &Observations,
        candidate: usize,
    ) -> Verdict;

    /// Judges `variant` on its own, for when the baseline serves nothing in this period
    /// (blue-green after the switch, a canary at 100%): absolute criteria only. Never
    /// `improved`.
    fn check_alone(
        &self,
        spec: &Experiment,
        state: &ExperimentState,
        obs: &Observations,
        variant: usize,
    ) -> Verdict;

    /// Judges one candidate: [`Policy::compare`] while the baseline has weight in force,
    /// [`Policy::check_alone`] once it has none.
    fn judge(
        &self,
        spec: &Experiment,
        state: &ExperimentState,
        obs: &Observations,
        candidate: usize,
    ) -> Verdict {
        if state.weights.get(spec.baseline).copied().unwrap_or(0) == 0 {
            self.check_alone(spec, state, obs, candidate)
        } else {
            self.compare(spec, state, obs, candidate)
        }
    }

    /// The experiment's verdict: every candidate judged, then [`fold`]ed.
    fn analyze(&self, spec: &Experiment, state: &ExperimentState, obs: &Observations) -> Verdict {
        fold(candidates(spec).map(|c| self.judge(spec, state, obs, c)))
    }

    /// Whether a canary candidate with this verdict takes its next step. Classic: only
    /// when improved (the seed's ramp condition).
    fn ready_to_ramp(&self, verdict: &Verdict) -> bool {
        verdict.is_improved()
    }

    /// The winner named at the planned end ([`crate::Decision::Finish`]). Classic: the
    /// seed's score ([`pick_winner`]).
    fn winner(
        &self,
        spec: &Experiment,
        _state: &ExperimentState,
        obs: &Observations,
    ) -> WinnerPick {
        pick_winner(spec, obs)
    }
}

/// The indexes of every variant but the declared baseline, in spec order.
pub(crate) fn candidates(spec: &Experiment) -> impl Iterator<Item = usize> + '_ {
    (0..spec.variants.len()).filter(move |&i| i != spec.baseline)
}

/// The policy `spec` asks for: [`Sequential`] (the default) or [`Classic`].
pub fn policy_for(spec: &Experiment) -> Box<dyn Policy> {
    match spec.policy {
        PolicyKind::Sequential => Box::new(Sequential::default()),
        PolicyKind::Classic => Box::new(Classic),
    }
}

/// The seed's `_analyze_performance`, thresholds exactly, defects fixed:
///
/// - **rollback** when the candidate's success rate < `rollback_criteria.success_rate_drop`
///   (default 0.95), or its p95 > the baseline's p95 × (1 + `latency_degradation`
///   (default 0.2)), checked in that order;
/// - **improved** (the seed's condition to ramp) when (baseline p95 − candidate p95) /
///   baseline p95 > 0.05, the candidate's success rate ≥ the baseline's, and > 0.98.
///
/// Fixed: a variant with fewer than `min_samples` requests (or none, or no p95) in the
/// period is inconclusive, never a regression (the seed read missing figures as a 0
/// success rate and a 999999 ms p95); the baseline is the declared one, not the first
/// key of the split; the split is read from the state, and only the current period's
/// observations are passed in. `success_criteria` and `target_metrics` are not read by
/// the comparison (the seed's were not either); `target_metrics.latency_p95_ms` is the
/// latency bar of [`Policy::check_alone`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Classic;

impl Classic {
    /// The seed's default for `rollback_criteria.success_rate_drop`.
    pub const DEFAULT_SUCCESS_RATE_DROP: f64 = 0.95;
    /// The seed's default for `rollback_criteria.latency_degradation`.
    pub const DEFAULT_LATENCY_DEGRADATION: f64 = 0.2;
    /// p95 improvement over the baseline a ramp needs (more than this).
    pub const RAMP_LATENCY_IMPROVEMENT: f64 = 0.05;
    /// Success rate a ramp needs (more than this).
    pub const RAMP_MIN_SUCCESS_RATE: f64 = 0.98;

    fn success_rate_drop(spec: &Experiment) -> f64 {
        spec.rollback_criteria
            .get("success_rate_drop")
            .copied()
            .unwrap_or(Self::DEFAULT_SUCCESS_RATE_DROP)
    }

    fn latency_degradation(spec: &Experiment) -> f64 {
        spec.rollback_criteria
            .get("latency_degradation")
            .copied()
            .unwrap_or(Self::DEFAULT_LATENCY_DEGRADATION)
    }
}

/// Why a variant cannot be judged: (in a few words, in full).
type Unjudgeable = (String, String);

/// A variant's success rate and p95, or why they cannot be judged.
fn judgeable(
    spec: &Experiment,
    role: &str,
    v: &VariantObservation,
) -> Result<(f64, f64), Unjudgeable> {
    let needed = spec.min_samples.max(1);
    if v.requests < needed {
        return Err((
            format!("{} {}/{needed} requests", v.variant, v.requests),
            format!(
                "{role} {} has {} requests in this period, fewer than minSamples {needed}",
                v.variant, v.requests
            ),
        ));
    }
    let Some(sr) = v.success_rate() else {
        return Err((
            format!("{} no success rate", v.variant),
            format!("{role} {} has no success rate", v.variant),
        ));
    };
    let Some(p95) = v.latency_p95_ms.filter(|p| p.is_finite() && *p > 0.0) else {
        return Err((
            format!("{} no p95", v.variant),
            format!(
                "{role} {} has {} requests but no p95 latency",
                v.variant, v.requests
            ),
        ));
    };
    Ok((sr, p95))
}

/// An inconclusive verdict from what could not be judged.
fn not_enough_data(why: impl IntoIterator<Item = Unjudgeable>) -> Verdict {
    let (summaries, reasons): (Vec<String>, Vec<String>) = why.into_iter().unzip();
    Verdict::inconclusive(
        format!("not enough data ({})", summaries.join(", ")),
        reasons.join("; "),
    )
}

fn rate_with_counts(v: &VariantObservation, sr: f64) -> String {
    let errors = if v.errors == 1 { "error" } else { "errors" };
    format!(
        "{} ({} {errors} in {} requests)",
        rate(sr),
        v.errors,
        v.requests
    )
}

impl Policy for Classic {
    fn name(&self) -> &'static str {
        "classic"
    }

    fn compare(
        &self,
        spec: &Experiment,
        _state: &ExperimentState,
        obs: &Observations,
        candidate: usize,
    ) -> Verdict {
        let (Some(b), Some(c)) = (obs.variants.get(spec.baseline), obs.variants.get(candidate))
        else {
            return Verdict::inconclusive(
                "no observations",
                format!("no observations for variant #{candidate} or the baseline"),
            );
        };
        let bj = judgeable(spec, "baseline", b);
        let cj = judgeable(spec, "candidate", c);
        let ((sr_b, p95_b), (sr_c, p95_c)) = match (bj, cj) {
            (Ok(b), Ok(c)) => (b, c),
            (b, c) => return not_enough_data([b.err(), c.err()].into_iter().flatten()),
        };
        let drop = Self::success_rate_drop(spec);
        let n = format!("n {}/{}", c.requests, b.requests);
        if sr_c < drop {
            return Verdict::regressed(
                format!("success rate {} < {}; {n}", rate(sr_c), rate(drop)),
                format!(
                    "candidate {} success rate {} < rollback threshold success_rate_drop {}",
                    c.variant,
                    rate_with_counts(c, sr_c),
                    rate(drop)
                ),
            );
        }
        let degradation = Self::latency_degradation(spec);
        let limit = p95_b * (1.0 + degradation);
        if p95_c > limit {
            return Verdict::regressed(
                format!(
                    "p95 {} vs {} ({}), limit {}; {n}",
                    ms(p95_c),
                    ms(p95_b),
                    signed_pct(p95_c / p95_b - 1.0),
                    signed_pct(degradation)
                ),
                format!(
                    "candidate {} p95 {} > baseline {} p95 {} × {} = {} (latency_degradation {})",
                    c.variant,
                    ms(p95_c),
                    b.variant,
                    ms(p95_b),
                    num(1.0 + degradation, 3),
                    ms(limit),
                    num(degradation, 3)
                ),
            );
        }
        let improvement = (p95_b - p95_c) / p95_b;
        let mut missing = Vec::new();
        if improvement <= Self::RAMP_LATENCY_IMPROVEMENT {
            missing.push(format!(
                "p95 improvement {} ≤ {}",
                pct(improvement),
                pct(Self::RAMP_LATENCY_IMPROVEMENT)
            ));
        }
        if sr_c < sr_b {
            missing.push(format!(
                "success rate {} < baseline's {}",
                rate(sr_c),
                rate(sr_b)
            ));
        }
        if sr_c <= Self::RAMP_MIN_SUCCESS_RATE {
            missing.push(format!(
                "success rate {} ≤ {}",
                rate(sr_c),
                rate(Self::RAMP_MIN_SUCCESS_RATE)
            ));
        }
        let facts = format!(
            "candidate {} vs baseline {}: p95 {} vs {} ({} better), success rate {} vs {}",
            c.variant,
            b.variant,
            ms(p95_c),
            ms(p95_b),
            pct(improvement),
            rate_with_counts(c, sr_c),
            rate_with_counts(b, sr_b)
        );
        let brief = format!(
            "p95 {}, success rate {}; {n}",
            signed_pct(p95_c / p95_b - 1.0),
            rate(sr_c)
        );
        if missing.is_empty() {
            Verdict::healthy(
                true,
                format!("improved; {brief}"),
                format!(
                    "{facts}: improved (p95 better by > {}, success rate ≥ baseline and > {})",
                    pct(Self::RAMP_LATENCY_IMPROVEMENT),
                    rate(Self::RAMP_MIN_SUCCESS_RATE)
                ),
            )
        } else {
            Verdict::healthy(
                false,
                format!("healthy, not improved; {brief}"),
                format!("{facts}: healthy, not improved ({})", missing.join(", ")),
            )
        }
    }

    fn check_alone(
        &self,
        spec: &Experiment,
        _state: &ExperimentState,
        obs: &Observations,
        variant: usize,
    ) -> Verdict {
        let Some(v) = obs.variants.get(variant) else {
            return Verdict::inconclusive(
                "no observations",
                format!("no observations for variant #{variant}"),
            );
        };
        let (sr, p95) = match judgeable(spec, "variant", v) {
            Ok(j) => j,
            Err(why) => return not_enough_data([why]),
        };
        let n = format!("n {}", v.requests);
        let drop = Self::success_rate_drop(spec);
        if sr < drop {
            return Verdict::regressed(
                format!("success rate {} < {}; {n}", rate(sr), rate(drop)),
                format!(
                    "{} success rate {} < rollback threshold success_rate_drop {}",
                    v.variant,
                    rate_with_counts(v, sr),
                    rate(drop)
                ),
            );
        }
        let degradation = Self::latency_degradation(spec);
        let target = spec.target_metrics.get("latency_p95_ms").copied();
        if let Some(target) = target {
            let limit = target * (1.0 + degradation);
            if p95 > limit {
                return Verdict::regressed(
                    format!("p95 {} > target {} + {}; {n}", ms(p95), ms(target), pct(degradation)),
                    format!(
                        "{} p95 {} > target latency_p95_ms {} × {} = {} (the baseline serves nothing to compare with)",
                        v.variant,
                        ms(p95),
                        ms(target),
                        num(1.0 + degradation, 3),
                        ms(limit)
                    ),
                );
            }
        }
        let latency = match target {
            Some(t) => format!(
                "p95 {} ≤ target {} × {}",
                ms(p95),
                ms(t),
                num(1.0 + degradation, 3)
            ),
            None => format!(
                "p95 {} (no target_metrics.latency_p95_ms to hold it to)",
                ms(p95)
            ),
        };
        Verdict::healthy(
            false,
            format!("healthy alone; success rate {}, p95 {}; {n}", rate(sr), ms(p95)),
            format!(
                "{} on its own (the baseline serves nothing this period): success rate {} ≥ {}, {latency}",
                v.variant,
                rate_with_counts(v, sr),
                rate(drop)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{experiment, observed, seed_experiment, variant};

    fn compare(spec: &Experiment, obs: &Observations) -> Verdict {
        let state = ExperimentState::new(spec, 0);
        Classic.compare(spec, &state, obs, 1)
    }

    #[test]
    fn classic_regresses_on_success_rate_first() {
        let spec = seed_experiment();
        // Both criteria broken: the seed checks success rate first.
        let obs = observed(
            &spec,
            vec![
                variant("v1-0", 1000, 0, 600.0),
                variant("v1-1", 1000, 100, 900.0),
            ],
        );
        let v = compare(&spec, &obs);
        assert!(v.is_regressed(), "{v:?}");
        assert!(v.reason().contains("success rate 0.9 (100 errors in 1000 requests) < rollback threshold success_rate_drop 0.95"), "{}", v.reason());
    }

    #[test]
    fn classic_improved_needs_all_three_conditions() {
        let spec = seed_experiment();
        let cases = [
            // (candidate p95, candidate errors, baseline errors, improved)
            (560.0, 0, 0, true),
            (580.0, 0, 0, false),   // 3.3% better: not > 5%
            (560.0, 5, 0, false),   // success rate below the baseline's
            (560.0, 25, 30, false), // 0.975 ≥ baseline 0.97 but not > 0.98
        ];
        for (p95, errs, base_errs, improved) in cases {
            let obs = observed(
                &spec,
                vec![
                    variant("v1-0", 1000, base_errs, 600.0),
                    variant("v1-1", 1000, errs, p95),
                ],
            );
            let v = compare(&spec, &obs);
            assert!(v.is_healthy(), "{v:?}");
            assert_eq!(v.is_improved(), improved, "{p95} {errs} {base_errs}: {v:?}");
        }
    }

    #[test]
    fn rollback_criteria_come_from_the_spec() {
        let spec =
            experiment("rollback_criteria: {latency_degradation: 0.5, success_rate_drop: 0.8}");
        let obs = observed(
            &spec,
            vec![
                variant("v1-0", 1000, 0, 600.0),
                variant("v1-1", 1000, 150, 850.0),
            ],
        );
        // 0.85 ≥ 0.8 and 850 ≤ 600 × 1.5.
        assert!(compare(&spec, &obs).is_healthy());
    }

    #[test]
    fn check_alone_holds_a_variant_to_the_target() {
        let spec = experiment("target_metrics: {latency_p95_ms: 1000}");
        let mut state = ExperimentState::new(&spec, 0);
        state.weights = vec![0, 100];
        let slow = observed(
            &spec,
            vec![variant("v1-0", 0, 0, 0.0), variant("v1-1", 1000, 0, 1300.0)],
        );
        let v = Classic.judge(&spec, &state, &slow, 1);
        assert!(v.is_regressed(), "{v:?}");
        assert!(
            v.reason()
                .contains("1300 ms > target latency_p95_ms 1000 ms × 1.2 = 1200 ms"),
            "{}",
            v.reason()
        );
        let fine = observed(
            &spec,
            vec![variant("v1-0", 0, 0, 0.0), variant("v1-1", 1000, 0, 900.0)],
        );
        let v = Classic.judge(&spec, &state, &fine, 1);
        assert!(v.is_healthy() && !v.is_improved(), "{v:?}");
    }

    #[test]
    fn fold_prefers_regression_then_inconclusive() {
        let r = Verdict::regressed("r", "r");
        let i = Verdict::inconclusive("i", "i");
        let h = Verdict::healthy(true, "h", "h");
        assert!(fold([h.clone(), i.clone(), r]).is_regressed());
        assert_eq!(fold([h.clone(), i.clone()]), i);
        assert!(fold([h.clone(), h]).is_improved());
        assert!(matches!(fold([]), Verdict::Inconclusive { .. }));
    }

    #[test]
    fn policy_for_follows_the_spec() {
        assert_eq!(
            policy_for(&experiment("policy: sequential")).name(),
            "sequential"
        );
        assert_eq!(policy_for(&experiment("policy: classic")).name(), "classic");
    }

    #[test]
    fn fold_puts_halted_between_regressed_and_inconclusive() {
        let r = Verdict::regressed("r", "r");
        let s = Verdict::halted("s", "s");
        let i = Verdict::inconclusive("i", "i");
        assert!(fold([i.clone(), s.clone(), r]).is_regressed());
        // The same reason twice (one SRM for every candidate) is given once.
        assert_eq!(fold([i, s.clone(), s.clone()]), s);
    }
}
