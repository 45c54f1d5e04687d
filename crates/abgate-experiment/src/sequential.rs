//! The `sequential` policy: every verdict on evidence, from always-valid confidence
//! sequences over the raw windows of the current period.

use abgate_config::model::{Experiment, Strategy};
use abgate_stats::{
    benjamini_hochberg, holm, mixture_rho, sequential, sequential_halfwidth, srm_chi_squared,
    Alternative, ArmStatistic, Difference, Effect, Proportion, QuantileEstimate, SequentialSrm,
    StatsError, DEFAULT_SRM_ALPHA, DEFAULT_TUNING,
};
use abgate_telemetry::{Sketch, WindowStats};

use crate::fmt::{ms, num, pct, pct2, pval, signed_pct, signed_points, split};
use crate::observe::Observations;
use crate::policy::{candidates, Policy, Verdict};
use crate::score::WinnerPick;
use crate::split::{next_canary_weight, percentages};
use crate::state::ExperimentState;

/// How far apart two sketch reads of equal sample quantiles can be: each read is within
/// [`Sketch::RELATIVE_ACCURACY`] (1%) of its sample quantile, so their ratio is within
/// `γ = 1.01/0.99` of the samples' ratio.
const SKETCH_RATIO: f64 = (1.0 + Sketch::RELATIVE_ACCURACY) / (1.0 - Sketch::RELATIVE_ACCURACY);

/// The `sequential` policy (the default): guardrails watched at every interval with
/// always-valid confidence sequences, a circuit breaker, a sample-ratio-mismatch halt,
/// and a goal metric that names a winner only with confidence. It reads
/// [`Observations::stats`], the raw windows of the current period (counts, moments,
/// quantile sketches); a metric source without them (Prometheus) gets
/// [`Verdict::Inconclusive`] saying so, every time: use `classic` there.
///
/// # The tests
///
/// Every test is the asymptotic confidence sequence of [`abgate_stats::sequential`]
/// (the mixture-SPRT boundary GrowthBook and Eppo use), tuned for
/// [`DEFAULT_TUNING`] = 5,000 units (GrowthBook's default), on the cumulative data of
/// the current period: the period's data only grows between looks, so a look at every
/// interval costs nothing, and the first look whose bound crosses decides.
///
/// Guardrails, each one-sided in the harmful direction, per candidate against the
/// declared baseline:
/// 1. **circuit breaker**, on the candidate alone: its error rate is above the hard
///    limit `1 − rollback_criteria.success_rate_drop` (0.05 without it), whatever the
///    comparison says. The variance is the larger of `p̂(1−p̂)` and the limit's
///    `L(1−L)`, so that a candidate failing every request still has an interval;
/// 2. **error rate**: the candidate's is higher than the baseline's (absolute
///    difference of proportions, harm above 0 points), with the larger of the
///    per-arm and the pooled variance ([`Effect::between_proportions`]): an arm with
///    few requests and no error (a bandit's arm at its floor) would otherwise have a
///    variance of 0, and a candidate at 1% would read as harm against it;
/// 3. **p95 latency** from the sketches (GrowthBook's quantile intervals): the relative
///    difference `(p95_c − p95_b)/p95_b` is above `rollback_criteria.latency_degradation`
///    (0 without it: any slowdown shown with confidence is harm), widened by the
///    sketch's error: harm needs `(1 + tolerance)·γ − 1` with `γ = 1.01/0.99`, so that
///    two reads of equal quantiles, which can differ by one 2% bucket, are never harm
///    however much data there is;
/// 4. **TTFT p95**, the same, when both variants have TTFT samples (not applicable
///    otherwise).
///
/// The family is always 4 tests per candidate (a test that does not apply counts with
/// p = 1), so its size never depends on the data, and Holm's adjustment over it keeps
/// the chance of any false alarm in a period at or under the period's alpha: a false
/// rejection needs some true null's always-valid p-value to fall under `alpha/m₀` at
/// some look, which happens with probability at most `m₀ · alpha/m₀`. Any guardrail
/// rejected → [`Verdict::Regressed`], with the estimate, the bound (printed at the
/// simultaneous level `alpha/m`, so a bound past its limit always means harm), the
/// p-value, the Holm-adjusted p-value and the counts.
///
/// When the baseline serves nothing ([`Policy::check_alone`]: blue-green after the
/// switch, a canary at 100%), the family is 2 per candidate: the circuit breaker, and
/// p95 latency against `target_metrics.latency_p95_ms` when it is set (harm above
/// `(1 + tolerance)·1.01 − 1` of the target).
///
/// # Spending alpha over periods
///
/// A weight change starts a period, and estimates are never pooled across periods. A
/// planned course of K periods (canary: the initial split plus one per step up to
/// `maxWeight`, as [`planned_periods`] counts them; blue-green: 2; a bandit: one per
/// interval of its duration, plus one; the others: 1) gives
/// each period `alpha/K` (Bonferroni over periods), so the chance of a false rollback
/// over the whole planned course is at or under `alpha` = 0.05. A period beyond the plan
/// (a person set the split) gets `alpha/K` too.
///
/// # Sample ratio mismatch
///
/// While the variants with weight do not get the shares of requests the split in force
/// promises — the sequential test of [`SequentialSrm`] (Dirichlet-multinomial Bayes
/// factor, valid however often it is looked at) at p < 0.001, computed on the period's
/// totals — comparisons are biased, so the verdict is [`Verdict::Halted`]: no ramp, no
/// promotion, no winner. A guardrail showing harm still rolls back (the safe direction
/// even on biased data). The one-look chi-squared p-value is printed beside it. Not
/// checked for `mirror` and `featureflag`, whose traffic does not follow the weights.
/// Requests of one sticky user are not independent, so a few very heavy users can make
/// it fire on their own.
///
/// # Minimum sample
///
/// Below `minSamples` requests in the period (at least 2), in the candidate for the
/// circuit breaker and in both variants for the comparisons, a test is not made; a p95
/// also needs the events its interval needs (73). Until every guardrail of a candidate
/// is tested the verdict is [`Verdict::Inconclusive`] ("not enough data"), which holds.
///
/// # Improvement, ramps and promotion
///
/// The goal metric is p95 latency (`success_criteria` is not read, as by `classic`):
/// `Healthy { improved: true }` only when the confidence sequence's upper bound of the
/// relative difference is below `1/γ − 1` (faster with confidence, beyond the sketch's
/// error), one-sided at the period's alpha, Benjamini-Hochberg-adjusted across
/// candidates; `Healthy { improved: false }` when every guardrail is tested and none
/// shows harm.
///
/// A canary steps on *no harm shown* ([`Policy::ready_to_ramp`] is "healthy"), not on
/// improvement, as Flagger and Argo Rollouts do: a candidate that is as good as the
/// baseline is what a canary exists to roll out, and requiring improvement would keep
/// an equivalent version at its first step until the planned end. Promotion at
/// `maxWeight` needs the same. The price: each step decides at the first look with
/// enough data, so a step catches what `minSamples` can show. Large regressions go at
/// once (the demo's regression scenario rolls back at its first look with 73
/// candidate requests); a modest one needs a large `minSamples`. In simulation (the
/// seed's 70/30 → 50 canary, no latency tolerance, 100 runs each), a candidate 10%
/// slower at every quantile was rolled back in 0 runs with `minSamples: 100`, 9 with
/// 1,000 and 51 with 3,000; one failing 3% against 1%, in 0 with 100 and 73 with 1,000.
/// Set `minSamples` to what the smallest harm that matters needs (`tests/simulation.rs`
/// states it for an A/B test watched at every interval: about 9,000 requests per
/// variant for the 10% slowdown, 2,100 for the 2 points of errors).
///
/// # The winner
///
/// At the planned end ([`Policy::winner`]) the goal metric decides: a two-sided
/// confidence sequence at the period's alpha on the relative p95 difference of each
/// candidate (Benjamini-Hochberg across candidates). The winner is the candidate
/// faster with confidence (the fastest if several), else the baseline if every
/// candidate is slower with confidence, else none; the reason gives each effect, its
/// interval and p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sequential {
    /// The chance of a false rollback (and, separately, of a false improvement claim or
    /// winner) over the planned course.
    pub alpha: f64,
    /// The tuning parameter N*: total units at which the boundary is tightest.
    pub tuning: f64,
}

impl Default for Sequential {
    fn default() -> Self {
        Self {
            alpha: Self::ALPHA,
            tuning: DEFAULT_TUNING,
        }
    }
}

impl Sequential {
    /// The default alpha.
    pub const ALPHA: f64 = 0.05;
    /// The quantile of latency and TTFT the guardrails and the goal compare.
    pub const QUANTILE: f64 = 0.95;
    /// The circuit breaker's error-rate limit without `rollback_criteria.success_rate_drop`
    /// (the seed's default drop, 0.95, read as a limit).
    pub const DEFAULT_ERROR_LIMIT: f64 = 0.05;
    /// The p95 tolerance without `rollback_criteria.latency_degradation`: none.
    pub const DEFAULT_LATENCY_TOLERANCE: f64 = 0.0;
    /// The sample-ratio-mismatch threshold (GrowthBook's and Eppo's).
    pub const SRM_ALPHA: f64 = DEFAULT_SRM_ALPHA;
    /// Guardrails per candidate when compared with the baseline: circuit breaker, error
    /// rate, p95 latency, TTFT p95.
    pub const COMPARED_GUARDRAILS: usize = 4;
    /// Guardrails per candidate judged alone: circuit breaker, p95 against the target.
    pub const ALONE_GUARDRAILS: usize = 2;

    /// The alpha of one period of `spec`: `alpha / planned_periods(spec)`.
    pub fn period_alpha(&self, spec: &Experiment) -> f64 {
        self.alpha / f64::from(planned_periods(spec))
    }

    /// The circuit breaker's hard limit on a candidate's error rate:
    /// `1 − rollback_criteria.success_rate_drop`, else [`Self::DEFAULT_ERROR_LIMIT`].
    pub fn error_limit(spec: &Experiment) -> f64 {
        spec.rollback_criteria
            .get("success_rate_drop")
            .copied()
            .filter(|d| d.is_finite())
            .map_or(Self::DEFAULT_ERROR_LIMIT, |d| (1.0 - d).clamp(0.0, 1.0))
    }

    /// How much slower (relative) a p95 may be before it is harm:
    /// `rollback_criteria.latency_degradation`, else [`Self::DEFAULT_LATENCY_TOLERANCE`].
    pub fn latency_tolerance(spec: &Experiment) -> f64 {
        spec.rollback_criteria
            .get("latency_degradation")
            .copied()
            .filter(|t| t.is_finite())
            .map_or(Self::DEFAULT_LATENCY_TOLERANCE, |t| t.max(0.0))
    }

    /// The always-valid p-value of "effect ≤ limit" against "greater", and the lower
    /// bound at `alpha/size` (the mixture tuned for `alpha`, so that `p < alpha/size`
    /// exactly when the bound is above the limit).
    fn greater(&self, alpha: f64, size: usize, test: Test) -> (f64, f64) {
        let shifted = Effect {
            estimate: test.estimate - test.limit,
            standard_error: test.se,
            units: test.units,
            dof: f64::INFINITY,
            difference: Difference::Absolute,
        };
        let p = sequential(&shifted, Alternative::Greater, alpha, self.tuning)
            .map_or(1.0, |r| r.p_value);
        let rho = mixture_rho(alpha, self.tuning, Alternative::Greater);
        let hw = sequential_halfwidth(
            test.se,
            test.units,
            rho,
            alpha / size.max(1) as f64,
            Alternative::Greater,
        );
        (if p.is_nan() { 1.0 } else { p }, test.estimate - hw)
    }

    /// One-sided p-value and bound of `effect` against `limit` in the direction
    /// `alternative` (Lesser: upper bound; Greater: lower bound), at `alpha`.
    fn bound(
        &self,
        effect: &Effect,
        limit: f64,
        alternative: Alternative,
        alpha: f64,
    ) -> (f64, f64) {
        let shifted = Effect {
            estimate: effect.estimate - limit,
            ..*effect
        };
        match sequential(&shifted, alternative, alpha, self.tuning) {
            Ok(r) => {
                let bound = match alternative {
                    Alternative::Lesser => r.interval.upper,
                    _ => r.interval.lower,
                };
                (
                    if r.p_value.is_nan() { 1.0 } else { r.p_value },
                    bound + limit,
                )
            }
            Err(_) => (1.0, f64::NAN),
        }
    }

    // ------------------------------------------------------------------------------
    // Guardrails

    fn breaker(
        &self,
        spec: &Experiment,
        alpha: f64,
        size: usize,
        v: usize,
        s: &WindowStats,
    ) -> Outcome {
        let name = &spec.variants[v].name;
        let need = min_samples(spec);
        if s.count < need {
            return Outcome::NotEnoughData(format!(
                "circuit breaker: {name} has {} requests, fewer than minSamples {need}",
                s.count
            ));
        }
        let n = s.count;
        let errors = s.errors.min(n);
        let rate = errors as f64 / n as f64;
        let limit = Self::error_limit(spec);
        let variance = (rate * (1.0 - rate)).max(limit * (1.0 - limit));
        let test = Test {
            estimate: rate,
            se: (variance / n as f64).sqrt(),
            units: n,
            limit,
        };
        let (p, bound) = self.greater(alpha, size, test);
        Outcome::Tested(Evidence {
            label: "error rate",
            figures: format!(
                "circuit breaker: {name} error rate {} ({errors}/{n}) against the hard limit {} (1 - success_rate_drop)",
                pct2(rate),
                pct2(limit)
            ),
            estimate: rate,
            bound,
            limit,
            unit: Unit::Rate,
            counts: format!("n {n}"),
            p,
            adjusted: p,
        })
    }

    fn error_rate(
        &self,
        spec: &Experiment,
        alpha: f64,
        size: usize,
        c: usize,
        cs: &WindowStats,
        bs: &WindowStats,
    ) -> Outcome {
        let (cn, bn) = (&spec.variants[c].name, &spec.variants[spec.baseline].name);
        let need = min_samples(spec);
        if cs.count < need || bs.count < need {
            return Outcome::NotEnoughData(format!(
                "error rate: {cn} has {} requests, {bn} {}, fewer than minSamples {need} each",
                cs.count, bs.count
            ));
        }
        let (ec, eb) = (cs.errors.min(cs.count), bs.errors.min(bs.count));
        let (rc, rb) = (ec as f64 / cs.count as f64, eb as f64 / bs.count as f64);
        let figures = format!(
            "error rate {} ({ec}/{}) vs {} ({eb}/{})",
            pct2(rc),
            cs.count,
            pct2(rb),
            bs.count
        );
        let (Ok(pc), Ok(pb)) = (Proportion::new(cs.count, ec), Proportion::new(bs.count, eb))
        else {
            return Outcome::NotApplicable(format!("{figures}: not proportions"));
        };
        match Effect::between_proportions(&pb, &pc) {
            Ok(e) => {
                let test = Test {
                    estimate: e.estimate,
                    se: e.standard_error,
                    units: e.units,
                    limit: 0.0,
                };
                let (p, bound) = self.greater(alpha, size, test);
                Outcome::Tested(Evidence {
                    label: "error rate",
                    figures,
                    estimate: e.estimate,
                    bound,
                    limit: 0.0,
                    unit: Unit::Points,
                    counts: format!("n {} vs {}", cs.count, bs.count),
                    p,
                    adjusted: p,
                })
            }
            // Both at 0% (or both at 100%, which the circuit breaker catches).
            Err(_) => Outcome::NotApplicable(format!("{figures}: no difference to test")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn quantile(
        &self,
        spec: &Experiment,
        alpha: f64,
        size: usize,
        guard: Guard,
        c: usize,
        cs: &WindowStats,
        bs: &WindowStats,
    ) -> Outcome {
        let (cn, bn) = (&spec.variants[c].name, &spec.variants[spec.baseline].name);
        let (label, dc, db) = match guard {
            Guard::TtftP95 => ("TTFT p95", &cs.ttft_ms.sketch, &bs.ttft_ms.sketch),
            _ => ("p95 latency", &cs.latency_ms.sketch, &bs.latency_ms.sketch),
        };
        let need = min_samples(spec);
        if cs.count < need || bs.count < need {
            return Outcome::NotEnoughData(format!(
                "{label}: {cn} has {} requests, {bn} {}, fewer than minSamples {need} each",
                cs.count, bs.count
            ));
        }
        if guard == Guard::TtftP95 && (dc.is_empty() || db.is_empty()) {
            let none: Vec<&str> = [(cn, dc), (bn, db)]
                .iter()
                .filter(|(_, d)| d.is_empty())
                .map(|(n, _)| n.as_str())
                .collect();
            return Outcome::NotApplicable(format!(
                "TTFT p95: not compared ({} without TTFT samples)",
                none.join(" and ")
            ));
        }
        let tolerance = Self::latency_tolerance(spec);
        let limit = (1.0 + tolerance) * SKETCH_RATIO - 1.0;
        match quantile_effect(db, dc) {
            Ok((qb, qc, e)) => {
                let test = Test {
                    estimate: e.estimate,
                    se: e.standard_error,
                    units: e.units,
                    limit,
                };
                let (p, bound) = self.greater(alpha, size, test);
                Outcome::Tested(Evidence {
                    label,
                    figures: format!("{label} {} vs {}", ms(qc), ms(qb)),
                    estimate: e.estimate,
                    bound,
                    limit,
                    unit: Unit::Relative { tolerance },
                    counts: format!("n {} vs {}", dc.count(), db.count()),
                    p,
                    adjusted: p,
                })
            }
            Err(why) => Outcome::NotEnoughData(format!("{label}: {why}")),
        }
    }

    fn target(
        &self,
        spec: &Experiment,
        alpha: f64,
        size: usize,
        v: usize,
        s: &WindowStats,
    ) -> Outcome {
        let name = &spec.variants[v].name;
        let Some(target) = spec
            .target_metrics
            .get("latency_p95_ms")
            .copied()
            .filter(|t| t.is_finite() && *t > 0.0)
        else {
            return Outcome::NotApplicable(format!(
                "p95 latency of {name}: no target_metrics.latency_p95_ms to hold it to"
            ));
        };
        let need = min_samples(spec);
        if s.count < need {
            return Outcome::NotEnoughData(format!(
                "p95 latency: {name} has {} requests, fewer than minSamples {need}",
                s.count
            ));
        }
        let sketch = &s.latency_ms.sketch;
        let q = match QuantileEstimate::from_sketch(sketch, Self::QUANTILE) {
            Ok(q) => q,
            Err(e) => {
                return Outcome::NotEnoughData(format!(
                    "p95 latency: {}",
                    quantile_trouble(&e, &[sketch])
                ))
            }
        };
        if let Err(e) = q.check() {
            return Outcome::NotEnoughData(format!(
                "p95 latency: {}",
                quantile_trouble(&e, &[sketch])
            ));
        }
        let tolerance = Self::latency_tolerance(spec);
        let limit = (1.0 + tolerance) * (1.0 + Sketch::RELATIVE_ACCURACY) - 1.0;
        let n = q.units();
        let estimate = (q.value() - target) / target;
        let test = Test {
            estimate,
            se: (q.variance() / n as f64).sqrt() / target,
            units: n,
            limit,
        };
        let (p, bound) = self.greater(alpha, size, test);
        Outcome::Tested(Evidence {
            label: "p95 vs target",
            figures: format!(
                "p95 latency of {name} {} against target latency_p95_ms {}",
                ms(q.value()),
                ms(target)
            ),
            estimate,
            bound,
            limit,
            unit: Unit::Relative { tolerance },
            counts: format!("n {n}"),
            p,
            adjusted: p,
        })
    }

    /// The guardrails of every candidate against the baseline, Holm-adjusted together.
    fn compared(&self, spec: &Experiment, obs: &Observations) -> Family {
        let alpha = self.period_alpha(spec);
        let cands: Vec<usize> = candidates(spec).collect();
        let size = Self::COMPARED_GUARDRAILS * cands.len();
        let bs = &obs.stats[spec.baseline];
        let mut tests = Vec::with_capacity(size);
        for &c in &cands {
            let cs = &obs.stats[c];
            tests.push((c, self.breaker(spec, alpha, size, c, cs)));
            tests.push((c, self.error_rate(spec, alpha, size, c, cs, bs)));
            tests.push((
                c,
                self.quantile(spec, alpha, size, Guard::LatencyP95, c, cs, bs),
            ));
            tests.push((
                c,
                self.quantile(spec, alpha, size, Guard::TtftP95, c, cs, bs),
            ));
        }
        Family::new(self.alpha, alpha, planned_periods(spec), size, tests)
    }

    /// The guardrails of every candidate (and `variant`) on its own, Holm-adjusted.
    fn alone(&self, spec: &Experiment, obs: &Observations, variant: usize) -> Family {
        let alpha = self.period_alpha(spec);
        let mut judged: Vec<usize> = candidates(spec).collect();
        if !judged.contains(&variant) {
            judged.push(variant);
        }
        let size = Self::ALONE_GUARDRAILS * judged.len();
        let mut tests = Vec::with_capacity(size);
        for &v in &judged {
            let s = &obs.stats[v];
            tests.push((v, self.breaker(spec, alpha, size, v, s)));
            tests.push((v, self.target(spec, alpha, size, v, s)));
        }
        Family::new(self.alpha, alpha, planned_periods(spec), size, tests)
    }

    // ------------------------------------------------------------------------------
    // The goal metric

    /// Whether each candidate's p95 latency is lower than the baseline's with
    /// confidence (one-sided, Benjamini-Hochberg across candidates).
    fn improvements(
        &self,
        spec: &Experiment,
        obs: &Observations,
        alpha: f64,
    ) -> Vec<(usize, Result<Goal, String>)> {
        let limit = 1.0 / SKETCH_RATIO - 1.0;
        let mut goals: Vec<(usize, Result<Goal, String>)> = candidates(spec)
            .map(|c| {
                let goal = self.goal_effect(spec, obs, c).map(|(qb, qc, e)| {
                    let (p, upper) = self.bound(&e, limit, Alternative::Lesser, alpha);
                    Goal {
                        qb,
                        qc,
                        estimate: e.estimate,
                        lower: f64::NEG_INFINITY,
                        upper,
                        limit,
                        p,
                        adjusted: p,
                        faster: true,
                        counts: counts_of(obs, c, spec.baseline),
                    }
                });
                (c, goal)
            })
            .collect();
        adjust_goals(&mut goals);
        goals
    }

    /// Each candidate's p95 latency compared with the baseline's, two-sided: faster
    /// with confidence (upper bound below `1/γ − 1`), slower (lower bound above `γ − 1`)
    /// or neither; Benjamini-Hochberg across candidates.
    fn differences(
        &self,
        spec: &Experiment,
        obs: &Observations,
        alpha: f64,
    ) -> Vec<(usize, Result<Goal, String>)> {
        let (faster_limit, slower_limit) = (1.0 / SKETCH_RATIO - 1.0, SKETCH_RATIO - 1.0);
        let mut goals: Vec<(usize, Result<Goal, String>)> = candidates(spec)
            .map(|c| {
                let goal = self.goal_effect(spec, obs, c).map(|(qb, qc, e)| {
                    // Two one-sided sequences at alpha/2 make the two-sided one at alpha.
                    let (p_faster, upper) =
                        self.bound(&e, faster_limit, Alternative::Lesser, alpha / 2.0);
                    let (p_slower, lower) =
                        self.bound(&e, slower_limit, Alternative::Greater, alpha / 2.0);
                    let p = (2.0 * p_faster.min(p_slower)).min(1.0);
                    Goal {
                        qb,
                        qc,
                        estimate: e.estimate,
                        lower,
                        upper,
                        limit: faster_limit,
                        p,
                        adjusted: p,
                        faster: p_faster <= p_slower,
                        counts: counts_of(obs, c, spec.baseline),
                    }
                });
                (c, goal)
            })
            .collect();
        adjust_goals(&mut goals);
        goals
    }

    fn goal_effect(
        &self,
        spec: &Experiment,
        obs: &Observations,
        c: usize,
    ) -> Result<(f64, f64, Effect), String> {
        let (cs, bs) = (&obs.stats[c], &obs.stats[spec.baseline]);
        let need = min_samples(spec);
        if cs.count < need || bs.count < need {
            return Err(format!(
                "{} has {} requests, {} {}, fewer than minSamples {need} each",
                spec.variants[c].name, cs.count, spec.variants[spec.baseline].name, bs.count
            ));
        }
        quantile_effect(&bs.latency_ms.sketch, &cs.latency_ms.sketch)
    }

    // ------------------------------------------------------------------------------
    // Sample ratio mismatch

    /// The SRM check of the split in force, when it applies: two or more variants with
    /// weight, a strategy whose traffic follows the weights, some requests.
    fn srm(&self, spec: &Experiment, state: &ExperimentState, obs: &Observations) -> Option<Srm> {
        if matches!(spec.strategy, Strategy::Mirror | Strategy::FeatureFlag) {
            return None;
        }
        let shares = state.percentages();
        let arms: Vec<usize> = (0..spec.variants.len())
            .filter(|&i| shares.get(i).copied().unwrap_or(0) > 0)
            .collect();
        if arms.len() < 2 {
            return None;
        }
        let counts: Vec<u64> = arms.iter().map(|&i| obs.stats[i].count).collect();
        if counts.iter().sum::<u64>() == 0 {
            return None;
        }
        let weights: Vec<f64> = arms.iter().map(|&i| f64::from(shares[i])).collect();
        let mut test = SequentialSrm::new(&weights, SequentialSrm::DEFAULT_CONCENTRATION).ok()?;
        let p = test.update(&counts).ok()?;
        let chi = srm_chi_squared(&counts, &weights).ok()?;
        let names: Vec<&str> = arms
            .iter()
            .map(|&i| spec.variants[i].name.as_str())
            .collect();
        let observed: Vec<String> = names
            .iter()
            .zip(&counts)
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        let expected: Vec<String> = chi.expected.iter().map(|e| num(*e, 1)).collect();
        let in_force: Vec<u32> = arms.iter().map(|&i| shares[i]).collect();
        Some(Srm {
            fires: p < Self::SRM_ALPHA,
            p,
            text: format!(
                "requests {} where the split {} expects {} (sequential SRM p {}, chi-squared {} p {})",
                observed.join(", "),
                split(&names, &in_force),
                expected.join(", "),
                pval(p),
                num(chi.chi_squared, 2),
                pval(chi.p_value)
            ),
        })
    }
}

impl Policy for Sequential {
    fn name(&self) -> &'static str {
        "sequential"
    }

    fn compare(
        &self,
        spec: &Experiment,
        state: &ExperimentState,
        obs: &Observations,
        candidate: usize,
    ) -> Verdict {
        if let Err(reason) = raw_windows(spec, obs) {
            return Verdict::inconclusive("no raw windows from the metric source", reason);
        }
        let (cn, bn) = (
            &spec.variants[candidate].name,
            &spec.variants[spec.baseline].name,
        );
        let family = self.compared(spec, obs);
        let head = format!("candidate {cn} vs baseline {bn}");
        if let Some(harm) = family.harm(candidate) {
            return Verdict::regressed(
                family.harm_brief(candidate),
                format!("{head}: harm shown with confidence: {harm}"),
            );
        }
        let srm = self.srm(spec, state, obs);
        if let Some(srm) = srm.as_ref().filter(|s| s.fires) {
            return Verdict::halted(
                format!("sample ratio mismatch (p {})", pval(srm.p)),
                srm.halting(),
            );
        }
        let (cs, bs) = (&obs.stats[candidate], &obs.stats[spec.baseline]);
        let need = min_samples(spec);
        if cs.count < need || bs.count < need {
            let short: Vec<String> = [(cn, cs.count), (bn, bs.count)]
                .iter()
                .filter(|(_, n)| *n < need)
                .map(|(name, n)| format!("{name} {n}/{need}"))
                .collect();
            return Verdict::inconclusive(
                format!("not enough data ({} requests)", short.join(", ")),
                format!(
                    "not enough data: candidate {cn} has {} requests in this period, baseline {bn} {}; minSamples is {need} each",
                    cs.count, bs.count
                ),
            );
        }
        if let Some(missing) = family.missing(candidate) {
            return Verdict::inconclusive(
                format!(
                    "not enough data ({} guardrail(s) of {cn} untested)",
                    family.untested(candidate)
                ),
                format!("not enough data for {head}: {missing}"),
            );
        }
        let alpha = family.alpha;
        let goal = self
            .improvements(spec, obs, alpha)
            .into_iter()
            .find(|(c, _)| *c == candidate)
            .map(|(_, g)| g);
        let (improved, goal, brief) = match goal {
            Some(Ok(g)) => (g.adjusted < alpha, g.improvement(alpha), g.brief()),
            Some(Err(why)) => (
                false,
                format!("goal p95 latency not judged: {why}"),
                "p95 not judged yet".to_owned(),
            ),
            None => (false, String::new(), String::new()),
        };
        let srm = srm.map_or(String::new(), |s| {
            format!("; no sample ratio mismatch ({})", s.text)
        });
        let n = format!("n {}/{}", cs.count, bs.count);
        Verdict::healthy(
            improved,
            format!(
                "{}; {brief}; {n}",
                if improved {
                    "no harm shown, faster"
                } else {
                    "no harm shown"
                }
            ),
            format!(
                "{head}: no harm shown ({}){srm}; {goal}",
                family.summary(candidate)
            ),
        )
    }

    fn check_alone(
        &self,
        spec: &Experiment,
        _state: &ExperimentState,
        obs: &Observations,
        variant: usize,
    ) -> Verdict {
        if let Err(reason) = raw_windows(spec, obs) {
            return Verdict::inconclusive("no raw windows from the metric source", reason);
        }
        let name = &spec.variants[variant].name;
        let head = format!("{name} on its own (the baseline serves nothing this period)");
        let family = self.alone(spec, obs, variant);
        if let Some(harm) = family.harm(variant) {
            return Verdict::regressed(
                family.harm_brief(variant),
                format!("{head}: harm shown with confidence: {harm}"),
            );
        }
        let need = min_samples(spec);
        let have = obs.stats[variant].count;
        if have < need {
            return Verdict::inconclusive(
                format!("not enough data ({name} {have}/{need} requests)"),
                format!(
                    "not enough data: {name} has {have} requests in this period, fewer than minSamples {need}"
                ),
            );
        }
        if let Some(missing) = family.missing(variant) {
            return Verdict::inconclusive(
                format!(
                    "not enough data ({} guardrail(s) of {name} untested)",
                    family.untested(variant)
                ),
                format!("not enough data for {head}: {missing}"),
            );
        }
        Verdict::healthy(
            false,
            format!("no harm shown on its own; n {have}"),
            format!("{head}: no harm shown ({})", family.summary(variant)),
        )
    }

    /// Healthy: no guardrail shows harm once every one is tested (see the type's docs).
    fn ready_to_ramp(&self, verdict: &Verdict) -> bool {
        verdict.is_healthy()
    }

    fn winner(&self, spec: &Experiment, state: &ExperimentState, obs: &Observations) -> WinnerPick {
        let none = |reason: String| WinnerPick {
            winner: None,
            reason,
        };
        if let Err(why) = raw_windows(spec, obs) {
            return none(format!("no winner: {why}"));
        }
        if let Some(srm) = self.srm(spec, state, obs).filter(|s| s.fires) {
            return none(format!("no winner: {}", srm.halting()));
        }
        let alpha = self.period_alpha(spec);
        let goals = self.differences(spec, obs, alpha);
        let parts: Vec<String> = goals
            .iter()
            .map(|(c, g)| {
                let head = format!(
                    "{} vs {}",
                    spec.variants[*c].name, spec.variants[spec.baseline].name
                );
                match g {
                    Ok(g) => format!("{head} {}", g.difference(alpha)),
                    Err(why) => format!("{head}: not judged ({why})"),
                }
            })
            .collect();
        let significant = |g: &Goal| g.adjusted < alpha;
        let faster = goals
            .iter()
            .filter_map(|(c, g)| g.as_ref().ok().map(|g| (*c, g)))
            .filter(|(_, g)| significant(g) && g.faster)
            .min_by(|a, b| a.1.estimate.total_cmp(&b.1.estimate));
        let all_slower = !goals.is_empty()
            && goals
                .iter()
                .all(|(_, g)| g.as_ref().is_ok_and(|g| significant(g) && !g.faster));
        let (winner, head) = if let Some((c, _)) = faster {
            (
                Some(c),
                format!(
                    "winner {} by p95 latency (the goal metric), faster than baseline {} with confidence",
                    spec.variants[c].name, spec.variants[spec.baseline].name
                ),
            )
        } else if all_slower {
            (
                Some(spec.baseline),
                format!(
                    "winner {} (the baseline): every candidate's p95 latency is higher with confidence",
                    spec.variants[spec.baseline].name
                ),
            )
        } else {
            (
                None,
                "no winner: no p95 latency differs from the baseline's with confidence".to_owned(),
            )
        };
        WinnerPick {
            winner,
            reason: format!(
                "{head} ({}; always-valid two-sided intervals at α {}: {} over {} planned periods, Benjamini-Hochberg across candidates)",
                parts.join("; "),
                num(alpha, 4),
                num(self.alpha, 4),
                planned_periods(spec)
            ),
        }
    }
}

/// How many periods the planned course of `spec` has: a canary's initial split plus
/// one per step each candidate takes up to `maxWeight` (from its initial weight, by
/// `steps` or `stepWeight`); blue-green's two (before and after the switch); a
/// bandit's one per interval of its duration plus one (it may re-weight at every
/// analysis); one for every other strategy. [`Sequential`] gives each period `alpha` divided by this.
pub fn planned_periods(spec: &Experiment) -> u32 {
    match spec.strategy {
        Strategy::Canary => {
            let initial: Vec<u32> = spec.variants.iter().map(|v| v.weight).collect();
            let initial = percentages(&initial);
            let steps: u32 = candidates(spec)
                .map(|c| {
                    let mut weight = initial.get(c).copied().unwrap_or(0);
                    let mut steps = 0u32;
                    while let Some(next) = next_canary_weight(&spec.canary, weight) {
                        steps += 1;
                        weight = next;
                    }
                    steps
                })
                .sum();
            1 + steps
        }
        Strategy::BlueGreen => 2,
        Strategy::Bandit => crate::bandit::planned_periods(spec),
        Strategy::AbTest | Strategy::FeatureFlag | Strategy::Mirror => 1,
    }
}

/// What each variant needs before a test is made: `minSamples`, and at least 2.
fn min_samples(spec: &Experiment) -> u64 {
    spec.min_samples.max(2)
}

/// Whether `obs` has the raw windows of every variant.
fn raw_windows(spec: &Experiment, obs: &Observations) -> Result<(), String> {
    if obs.stats.len() == spec.variants.len() {
        Ok(())
    } else {
        Err(format!(
            "the sequential policy needs the raw windows of every variant (counts, moments and quantile sketches, which the built-in metric store gives) and this metric source gave {} of {} (Prometheus gives only summaries); nothing is judged: use `policy: classic` with it",
            obs.stats.len(),
            spec.variants.len()
        ))
    }
}

/// The relative difference of the p95s of two sketches, baseline first: the p95 values
/// and the effect, or why there is none yet.
fn quantile_effect(baseline: &Sketch, candidate: &Sketch) -> Result<(f64, f64, Effect), String> {
    let read = |s: &Sketch| QuantileEstimate::from_sketch(s, Sequential::QUANTILE);
    let (qb, qc) = match (read(baseline), read(candidate)) {
        (Ok(b), Ok(c)) => (b, c),
        (Err(e), _) | (_, Err(e)) => return Err(quantile_trouble(&e, &[candidate, baseline])),
    };
    Effect::between(&qb, &qc, Difference::Relative)
        .map(|e| (qb.value(), qc.value(), e))
        .map_err(|e| quantile_trouble(&e, &[candidate, baseline]))
}

/// Why a p95 interval cannot be had from `sketches` (candidate first).
fn quantile_trouble(e: &StatsError, sketches: &[&Sketch]) -> String {
    let events: Vec<String> = sketches.iter().map(|s| s.count().to_string()).collect();
    match e {
        StatsError::NotEnoughData { need, .. } => format!(
            "an interval for a p95 needs {need} events per variant, and there are {}",
            events.join(" and ")
        ),
        StatsError::ZeroVariance => format!(
            "the sketch cannot bound the p95 ({} events): the values around it fall in one 2% bucket",
            events.join(" and ")
        ),
        other => other.to_string(),
    }
}

fn counts_of(obs: &Observations, c: usize, b: usize) -> String {
    format!(
        "n {} vs {}",
        obs.stats[c].latency_ms.sketch.count(),
        obs.stats[b].latency_ms.sketch.count()
    )
}

/// Benjamini-Hochberg over the candidates that have a goal figure.
fn adjust_goals(goals: &mut [(usize, Result<Goal, String>)]) {
    let ps: Vec<f64> = goals
        .iter()
        .filter_map(|(_, g)| g.as_ref().ok().map(|g| g.p))
        .collect();
    let adjusted = benjamini_hochberg(&ps);
    for (g, a) in goals
        .iter_mut()
        .filter_map(|(_, g)| g.as_mut().ok())
        .zip(adjusted)
    {
        g.adjusted = a;
    }
}

/// A guardrail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    LatencyP95,
    TtftP95,
}

/// What one test compares: `estimate` against `limit`, with its standard error over
/// `units` units.
#[derive(Debug, Clone, Copy)]
struct Test {
    estimate: f64,
    se: f64,
    units: u64,
    limit: f64,
}

/// How a guardrail came out.
#[derive(Debug, Clone)]
enum Outcome {
    /// Not tested, and not needed: TTFT when a variant has none, a target not set, no
    /// errors on either side.
    NotApplicable(String),
    /// Not tested yet, and needed before a healthy verdict.
    NotEnoughData(String),
    /// Tested.
    Tested(Evidence),
}

/// The numbers of one tested guardrail.
#[derive(Debug, Clone)]
struct Evidence {
    /// The guardrail, as a summary names it: `error rate`.
    label: &'static str,
    /// What was compared: `error rate 8% (40/500) vs 0.2% (9/4500)`.
    figures: String,
    estimate: f64,
    /// The lower bound at the family's simultaneous level.
    bound: f64,
    /// Harm is above this.
    limit: f64,
    unit: Unit,
    /// `n 500 vs 4500`.
    counts: String,
    /// Always-valid p-value of "no harm".
    p: f64,
    /// Holm-adjusted over the family.
    adjusted: f64,
}

#[derive(Debug, Clone, Copy)]
enum Unit {
    /// A rate against an absolute limit (the circuit breaker).
    Rate,
    /// A difference of rates.
    Points,
    /// A relative difference, harm above `tolerance` widened by the sketch's error.
    Relative { tolerance: f64 },
}

impl Unit {
    fn show(self, x: f64) -> String {
        match self {
            Unit::Rate => pct2(x),
            Unit::Points => signed_points(x),
            Unit::Relative { .. } => signed_pct(x),
        }
    }
}

impl Evidence {
    /// `error rate +13.2 points (lower bound +5.1 points); n 91 vs 592`.
    fn brief(&self) -> String {
        let estimate = self.unit.show(self.estimate);
        format!(
            "{} {estimate} (lower bound {}); {}",
            self.label,
            self.unit.show(self.bound),
            self.counts
        )
    }

    fn describe(&self) -> String {
        let estimate = match self.unit {
            Unit::Rate => String::new(),
            u => format!("{}, ", u.show(self.estimate)),
        };
        let limit = match self.unit {
            Unit::Relative { tolerance } => format!(
                "{} (tolerance {} and the sketch's 1% error)",
                self.unit.show(self.limit),
                pct(tolerance)
            ),
            u => u.show(self.limit),
        };
        format!(
            "{}: {estimate}lower bound {} {} {limit} (p {}, Holm-adjusted {}; {})",
            self.figures,
            self.unit.show(self.bound),
            if self.bound > self.limit { ">" } else { "≤" },
            pval(self.p),
            pval(self.adjusted),
            self.counts
        )
    }
}

/// The guardrails of one look, Holm-adjusted together.
struct Family {
    /// The policy's alpha over the planned course.
    total_alpha: f64,
    /// This period's alpha.
    alpha: f64,
    planned: u32,
    size: usize,
    tests: Vec<(usize, Outcome)>,
}

impl Family {
    fn new(
        total_alpha: f64,
        alpha: f64,
        planned: u32,
        size: usize,
        mut tests: Vec<(usize, Outcome)>,
    ) -> Self {
        let ps: Vec<f64> = tests
            .iter()
            .map(|(_, o)| match o {
                Outcome::Tested(e) => e.p,
                _ => 1.0,
            })
            .collect();
        for ((_, o), a) in tests.iter_mut().zip(holm(&ps)) {
            if let Outcome::Tested(e) = o {
                e.adjusted = a;
            }
        }
        Self {
            total_alpha,
            alpha,
            planned,
            size,
            tests,
        }
    }

    fn of(&self, v: usize) -> impl Iterator<Item = &Outcome> {
        self.tests
            .iter()
            .filter(move |(w, _)| *w == v)
            .map(|(_, o)| o)
    }

    /// How the bounds and the adjustment were made.
    fn footer(&self) -> String {
        format!(
            "always-valid one-sided bounds at α {}/{}; α {} this period ({} over {} planned periods), Holm over {} guardrails",
            num(self.alpha, 4),
            self.size,
            num(self.alpha, 4),
            num(self.total_alpha, 4),
            self.planned,
            self.size
        )
    }

    /// The guardrails of `v` that show harm, described, if any does.
    fn harm(&self, v: usize) -> Option<String> {
        let harmed: Vec<String> = self
            .of(v)
            .filter_map(|o| match o {
                Outcome::Tested(e) if e.adjusted < self.alpha => Some(e.describe()),
                _ => None,
            })
            .collect();
        (!harmed.is_empty()).then(|| format!("{} ({})", harmed.join("; "), self.footer()))
    }

    /// [`Family::harm`] in a few words.
    fn harm_brief(&self, v: usize) -> String {
        let harmed: Vec<String> = self
            .of(v)
            .filter_map(|o| match o {
                Outcome::Tested(e) if e.adjusted < self.alpha => Some(e.brief()),
                _ => None,
            })
            .collect();
        harmed.join("; ")
    }

    /// How many of `v`'s guardrails are not tested yet for want of data.
    fn untested(&self, v: usize) -> usize {
        self.of(v)
            .filter(|o| matches!(o, Outcome::NotEnoughData(_)))
            .count()
    }

    /// What `v` still lacks before every guardrail is tested, if anything.
    fn missing(&self, v: usize) -> Option<String> {
        let missing: Vec<&str> = self
            .of(v)
            .filter_map(|o| match o {
                Outcome::NotEnoughData(why) => Some(why.as_str()),
                _ => None,
            })
            .collect();
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// Every guardrail of `v`, as the reasons print them.
    fn summary(&self, v: usize) -> String {
        let parts: Vec<String> = self
            .of(v)
            .map(|o| match o {
                Outcome::Tested(e) => e.describe(),
                Outcome::NotApplicable(why) | Outcome::NotEnoughData(why) => why.clone(),
            })
            .collect();
        format!("{}; {}", parts.join("; "), self.footer())
    }
}

/// The goal metric of one candidate.
#[derive(Debug, Clone)]
struct Goal {
    qb: f64,
    qc: f64,
    estimate: f64,
    lower: f64,
    upper: f64,
    /// Faster is below this.
    limit: f64,
    p: f64,
    /// Benjamini-Hochberg-adjusted across candidates.
    adjusted: f64,
    /// Which side the evidence points to (two-sided).
    faster: bool,
    counts: String,
}

impl Goal {
    /// `p95 -34% (upper bound -30%)`.
    fn brief(&self) -> String {
        format!(
            "p95 {} (upper bound {})",
            signed_pct(self.estimate),
            signed_pct(self.upper)
        )
    }

    /// As the healthy verdict prints it: the one-sided improvement test.
    fn improvement(&self, alpha: f64) -> String {
        let improved = self.adjusted < alpha;
        format!(
            "goal p95 latency {} vs {}: {}, upper bound {} {} {} (the sketch's 1% error) (p {}, BH-adjusted {}; {}; α {}): {}",
            ms(self.qc),
            ms(self.qb),
            signed_pct(self.estimate),
            signed_pct(self.upper),
            if self.upper < self.limit { "<" } else { "≥" },
            signed_pct(self.limit),
            pval(self.p),
            pval(self.adjusted),
            self.counts,
            num(alpha, 4),
            if improved {
                "improved"
            } else {
                "not improved"
            }
        )
    }

    /// As the winner's reason prints it: the two-sided comparison.
    fn difference(&self, alpha: f64) -> String {
        format!(
            "p95 latency {} vs {}: {} (always-valid {} interval {} to {}; p {}, BH-adjusted {}; {})",
            ms(self.qc),
            ms(self.qb),
            signed_pct(self.estimate),
            pct(1.0 - alpha),
            signed_pct(self.lower),
            signed_pct(self.upper),
            pval(self.p),
            pval(self.adjusted),
            self.counts
        )
    }
}

/// A sample-ratio-mismatch check of one look.
struct Srm {
    fires: bool,
    p: f64,
    text: String,
}

impl Srm {
    fn halting(&self) -> String {
        format!(
            "sample ratio mismatch: {}; p {} < {}: the variants do not get the shares the split sends them, so any comparison would be biased; halting (no ramp, no promotion, no winner) while it lasts",
            self.text,
            pval(self.p),
            num(Sequential::SRM_ALPHA, 4)
        )
    }
}

#[cfg(test)]
mod tests;
