//! Always-valid inference: the asymptotic confidence sequence GrowthBook and Eppo use,
//! so that an experiment can be looked at every interval without inflating its error
//! rate.
//!
//! Source: Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit
//! theory and asymptotic confidence sequences" (arXiv 2103.06476v7), equations 9 (the
//! two-sided boundary), 134 (one-sided), 155 (the e-value) and 161 (choosing ρ), as
//! implemented in GrowthBook `gbstats/frequentist/tests.py` (`sequential_rho`,
//! `sequential_interval_halfwidth`, `sequential_interval_halfwidth_one_sided`,
//! `SequentialTwoSidedTTest.p_value`). With `V = se²` and `τ² = ρ²·se²·N` the two-sided
//! boundary is the normal-mixture mSPRT boundary of Johari et al. (KDD 2017), and Eppo's
//! formula is the same with its ρ = 1/ρ²; see `reference/experiment-stats.md` §1.3.

use crate::effect::Effect;
use crate::error::{check_alpha, StatsError};
use crate::inference::{Alternative, Inference, Interval};

/// GrowthBook's default tuning parameter `N*`
/// (`DEFAULT_SEQUENTIAL_TESTING_TUNING_PARAMETER`): the total units of both arms at
/// which a decision is expected. The boundary is tightest around it.
pub const DEFAULT_TUNING: f64 = 5000.0;

/// The mixture parameter ρ tuned so the boundary is tightest at `tuning` units:
/// `ρ = sqrt((−2 ln a + ln(−2 ln a + 1)) / N*)`, with `a = alpha` two-sided and
/// `a = 2·alpha` one-sided.
///
/// Source: arXiv 2103.06476v7 eq. 161; GrowthBook `sequential_rho`.
pub fn mixture_rho(alpha: f64, tuning: f64, alternative: Alternative) -> f64 {
    let a = match alternative {
        Alternative::TwoSided => alpha,
        Alternative::Greater | Alternative::Lesser => 2.0 * alpha,
    };
    let l = -2.0 * a.ln();
    ((l + (l + 1.0).ln()) / tuning).sqrt()
}

/// The boundary's half-width at `units` = N with standard error `se`, for mixture `rho`.
///
/// With `s² = se²·N`:
/// - two-sided: `sqrt(s² · 2(Nρ² + 1)/(Nρ)² · ln(sqrt(Nρ² + 1)/α))` (eq. 9);
/// - one-sided: `sqrt(s² · 2(Nρ² + 1)/(Nρ)² · ln(1 + sqrt(Nρ² + 1)/(2α)))` (eq. 134).
///
/// Source: GrowthBook `sequential_interval_halfwidth` and
/// `sequential_interval_halfwidth_one_sided`.
pub fn sequential_halfwidth(
    se: f64,
    units: u64,
    rho: f64,
    alpha: f64,
    alternative: Alternative,
) -> f64 {
    let n = units as f64;
    let s2 = se * se * n;
    let nr2 = n * rho * rho;
    let scale = 2.0 * (nr2 + 1.0) / (n * rho).powi(2);
    let log_term = match alternative {
        Alternative::TwoSided => ((nr2 + 1.0).sqrt() / alpha).ln(),
        Alternative::Greater | Alternative::Lesser => {
            (1.0 + (nr2 + 1.0).sqrt() / (2.0 * alpha)).ln()
        }
    };
    (s2 * scale * log_term).sqrt()
}

/// The always-valid interval and p-value of `effect` at this look.
///
/// - The interval is `est ± halfwidth` ([`sequential_halfwidth`]) with
///   ρ = [`mixture_rho`]`(alpha, tuning, alternative)`; intervals from every look hold
///   simultaneously with probability `1 − alpha` (asymptotically).
/// - Two-sided p-value: `min(1, 1/e)` with
///   `e = exp(ρ²·t²N / (2(Nρ² + 1))) / sqrt(Nρ² + 1)` and `t = est/se` (eq. 155;
///   GrowthBook `SequentialTwoSidedTTest.p_value`), computed in logs so it does not
///   overflow.
/// - One-sided p-value: the smallest alpha at which the one-sided bound (with this ρ
///   held fixed) excludes 0, in closed form: for `Greater` and `est > 0`,
///   `α* = sqrt(Nρ² + 1) / (2·(exp(est²/(se²·2(Nρ² + 1)/(Nρ²))) − 1))`, and 1 when the
///   estimate points the other way (`Lesser` mirrors it). GrowthBook finds the same
///   root by bisection over [1e-5, 0.4999] and reports the clamp when the root is
///   outside it; the root itself is given here, so `p < alpha` exactly when the
///   interval excludes 0.
///
/// The p-value of one look is not yet always valid: keep the running minimum with a
/// [`SequentialTracker`]. One-sided tests need `alpha < 0.5`.
pub fn sequential(
    effect: &Effect,
    alternative: Alternative,
    alpha: f64,
    tuning: f64,
) -> Result<Inference, StatsError> {
    check_alpha(alpha)?;
    if alternative != Alternative::TwoSided && alpha >= 0.5 {
        return Err(StatsError::InvalidAlpha {
            alpha,
            range: "(0, 0.5)",
        });
    }
    if !(tuning > 0.0 && tuning.is_finite()) {
        return Err(StatsError::InvalidInput(format!(
            "the tuning parameter must be a positive number of units, got {tuning}"
        )));
    }
    let (est, se, units) = (effect.estimate, effect.standard_error, effect.units);
    let rho = mixture_rho(alpha, tuning, alternative);
    let halfwidth = sequential_halfwidth(se, units, rho, alpha, alternative);
    let n = units as f64;
    let nr2p1 = n * rho * rho + 1.0;
    let p_value = match alternative {
        Alternative::TwoSided => {
            let t2n = (est / se).powi(2) * n;
            let log_e = rho * rho * t2n / (2.0 * nr2p1) - 0.5 * nr2p1.ln();
            (-log_e).exp().min(1.0)
        }
        Alternative::Greater | Alternative::Lesser => {
            let toward = if alternative == Alternative::Greater {
                est
            } else {
                -est
            };
            if toward <= 0.0 {
                1.0
            } else {
                let x = toward * toward / (se * se * 2.0 * nr2p1 / (n * rho * rho));
                (nr2p1.sqrt() / (2.0 * x.exp_m1())).min(1.0)
            }
        }
    };
    Ok(Inference {
        estimate: est,
        standard_error: se,
        interval: Interval::around(est, halfwidth, alternative),
        p_value,
        alpha,
        alternative,
    })
}

/// Keeps what an always-valid test must carry from look to look: the running minimum
/// of the p-values (`p_t = min(p_{t−1}, p(look_t))`) and the running intersection of the
/// intervals. Both stay valid because the confidence sequence holds at every look at
/// once; GrowthBook reports each look's p-value alone, which can rise back above alpha
/// after it fell below.
///
/// Feed it the results of one test (same metric, alternative, alpha and tuning) over
/// one period of fixed weights; a weight change starts a new tracker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SequentialTracker {
    looks: u64,
    p_value: f64,
    interval: Interval,
}

impl Default for SequentialTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl SequentialTracker {
    /// A tracker before the first look: p = 1, the interval is the whole line.
    pub fn new() -> Self {
        Self {
            looks: 0,
            p_value: 1.0,
            interval: Interval::UNBOUNDED,
        }
    }

    /// Takes one look's result; returns the running p-value.
    pub fn observe(&mut self, look: &Inference) -> f64 {
        self.looks += 1;
        if look.p_value < self.p_value {
            self.p_value = look.p_value;
        }
        self.interval = self.interval.intersect(&look.interval);
        self.p_value
    }

    /// The always-valid p-value: the smallest seen so far.
    pub fn p_value(&self) -> f64 {
        self.p_value
    }

    /// The intersection of every look's interval. When it is empty (`lower > upper`)
    /// the data contradicts a constant effect, which is itself worth reporting.
    pub fn interval(&self) -> Interval {
        self.interval
    }

    /// How many looks were taken.
    pub fn looks(&self) -> u64 {
        self.looks
    }

    /// Whether any look so far rejected δ = 0 at `alpha`.
    pub fn rejects(&self, alpha: f64) -> bool {
        self.p_value < alpha
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effect::Difference;

    fn effect(estimate: f64, standard_error: f64, units: u64) -> Effect {
        Effect {
            estimate,
            standard_error,
            units,
            dof: f64::INFINITY,
            difference: Difference::Absolute,
        }
    }

    #[test]
    fn rho_matches_reference_value() {
        // reference/experiment-stats.md §6.3: ρ = 0.0890850975 at α = 0.05, N* = 1000.
        let rho = mixture_rho(0.05, 1000.0, Alternative::TwoSided);
        assert!((rho - 0.089_085_097_5).abs() < 1e-10);
    }

    #[test]
    fn two_sided_halfwidth_equals_mixture_sprt_boundary() {
        // halfwidth² = V(V+τ²)/τ² · (−2 ln α + ln((V+τ²)/V)), V = se², τ² = ρ²se²N
        // (Johari et al.; reference/experiment-stats.md §1.3).
        let (se, n, alpha) = (0.3, 6461_u64, 0.05);
        let rho = mixture_rho(alpha, 1000.0, Alternative::TwoSided);
        let v = se * se;
        let tau2 = rho * rho * v * n as f64;
        let msprt = (v * (v + tau2) / tau2 * (-2.0 * alpha.ln() + ((v + tau2) / v).ln())).sqrt();
        let hw = sequential_halfwidth(se, n, rho, alpha, Alternative::TwoSided);
        assert!((hw - msprt).abs() < 1e-12, "{hw} vs {msprt}");
    }

    #[test]
    fn p_value_below_alpha_exactly_when_interval_excludes_zero() {
        for est in [-0.5, -0.2, -0.05, 0.0, 0.05, 0.2, 0.5] {
            for alt in [
                Alternative::TwoSided,
                Alternative::Greater,
                Alternative::Lesser,
            ] {
                let r = sequential(&effect(est, 0.1, 2000), alt, 0.05, 5000.0).expect("valid");
                assert_eq!(
                    r.p_value < 0.05,
                    r.significant(),
                    "est {est} {alt:?}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn tracker_keeps_running_minimum() {
        let mut t = SequentialTracker::new();
        let look = |est| sequential(&effect(est, 0.1, 2000), Alternative::TwoSided, 0.05, 5000.0);
        let first = look(0.5).expect("valid");
        t.observe(&first);
        let later = look(0.0).expect("valid");
        assert_eq!(later.p_value, 1.0);
        assert_eq!(t.observe(&later), first.p_value);
        assert!(t.rejects(0.05));
        assert_eq!(t.looks(), 2);
        assert!(t.interval().upper <= later.interval.upper);
    }

    #[test]
    fn one_sided_needs_alpha_below_half() {
        let e = effect(0.1, 0.1, 100);
        assert!(matches!(
            sequential(&e, Alternative::Greater, 0.5, 5000.0),
            Err(StatsError::InvalidAlpha { .. })
        ));
        assert!(sequential(&e, Alternative::TwoSided, 0.5, 5000.0).is_ok());
        assert!(sequential(&e, Alternative::TwoSided, 0.05, 0.0).is_err());
    }
}
