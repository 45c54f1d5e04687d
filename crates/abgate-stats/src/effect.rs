//! The difference between two arms and its standard error: what every test (fixed
//! horizon or sequential) starts from.

use crate::error::StatsError;
use crate::summary::{ArmStatistic, Proportion};

/// How the candidate is compared with the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Difference {
    /// `mean_b − mean_a`, in the metric's unit.
    Absolute,
    /// `(mean_b − mean_a) / |mean_a|`, a fraction of the baseline (0.1 = 10% more).
    Relative,
}

/// The estimated difference between candidate (B) and baseline (A), with what the tests
/// need to judge it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Effect {
    /// The point estimate.
    pub estimate: f64,
    /// Its standard error.
    pub standard_error: f64,
    /// Units in both arms, `n_a + n_b` (the `N` of the sequential boundary).
    pub units: u64,
    /// Welch–Satterthwaite degrees of freedom, for fixed-horizon t intervals.
    pub dof: f64,
    /// Absolute or relative.
    pub difference: Difference,
}

impl Effect {
    /// The difference of `candidate` from `baseline`.
    ///
    /// - Absolute: `m_b − m_a`, variance `v_b/n_b + v_a/n_a`.
    /// - Relative: `(m_b − m_a)/|m_a|`, variance by the delta method with independent
    ///   arms, `v_b/(n_b·m_a²) + v_a·m_b²/(n_a·m_a⁴)`.
    /// - Degrees of freedom: Welch–Satterthwaite on the per-arm variances.
    ///
    /// Source: GrowthBook `gbstats/utils.py` (`frequentist_diff`,
    /// `frequentist_variance`, `variance_of_ratios`), `gbstats/models/tests.py`
    /// (`EffectMoments`) and `gbstats/frequentist/tests.py` (`TTest.dof`).
    ///
    /// Refuses arms under two units ([`StatsError::NotEnoughData`]), a relative
    /// difference from a zero baseline ([`StatsError::BaselineZero`]) and a zero
    /// variance of the difference ([`StatsError::ZeroVariance`]). Unlike GrowthBook, one
    /// arm with zero variance is accepted while the difference's variance is positive:
    /// a baseline with no errors must not hide a candidate that has many.
    pub fn between<S: ArmStatistic>(
        baseline: &S,
        candidate: &S,
        difference: Difference,
    ) -> Result<Self, StatsError> {
        let (n_a, n_b) = (baseline.units(), candidate.units());
        if n_a.min(n_b) < 2 {
            return Err(StatsError::NotEnoughData {
                have: n_a.min(n_b),
                need: 2,
            });
        }
        baseline.check()?;
        candidate.check()?;
        let (m_a, m_b) = (baseline.mean(), candidate.mean());
        let (v_a, v_b) = (baseline.variance(), candidate.variance());
        if !(v_a >= 0.0 && v_b >= 0.0) {
            return Err(StatsError::ZeroVariance);
        }
        let (nf_a, nf_b) = (n_a as f64, n_b as f64);
        let (estimate, variance) = match difference {
            Difference::Absolute => (m_b - m_a, v_b / nf_b + v_a / nf_a),
            Difference::Relative => {
                if m_a == 0.0 {
                    return Err(StatsError::BaselineZero);
                }
                (
                    (m_b - m_a) / m_a.abs(),
                    v_b / (nf_b * m_a.powi(2)) + v_a * m_b.powi(2) / (nf_a * m_a.powi(4)),
                )
            }
        };
        let usable = variance.is_finite() && variance > 0.0 && estimate.is_finite();
        if !usable {
            return Err(StatsError::ZeroVariance);
        }
        Ok(Self {
            estimate,
            standard_error: variance.sqrt(),
            units: n_a + n_b,
            dof: welch_dof(v_a, n_a, v_b, n_b),
            difference,
        })
    }
}

impl Effect {
    /// The absolute difference of two proportions (`p_b − p_a`) with a standard error
    /// that stays honest when an arm has few events: the larger of the unpooled
    /// variance `p_a(1−p_a)/n_a + p_b(1−p_b)/n_b` (what [`Effect::between`] gives) and
    /// the pooled one `p̄(1−p̄)(1/n_a + 1/n_b)`, `p̄` the rate of both arms together.
    ///
    /// Why both. Each is consistent for the variance under "no difference", and each
    /// fails in one tail of a small count. The unpooled one collapses when the smaller
    /// arm has no events (its term is `0·1/n`): an arm with 160 requests and 0 errors
    /// against one with 2,000 and 1% looks like a 1-point gap with the standard error of
    /// the large arm alone, 4.5 standard errors, where the chance of 0 errors
    /// among 160 at 1% is 20%. The pooled one (the score test's) understates the upper
    /// tail of a small arm's count: 6 errors where 1.5 are expected read as 3.7 standard
    /// errors (normal tail 1e-4) where the Poisson tail is 5e-3. The unpooled variance
    /// grows with the small arm's count, so it is the conservative one in that tail;
    /// the pooled one keeps the null's rate in the small arm, so it is the
    /// conservative one when that arm has few or no events. The larger of the two is
    /// conservative in both, and changes nothing when both arms have many events (they
    /// agree).
    ///
    /// Refuses arms under two units and two arms both at 0 or both at 1
    /// ([`StatsError::ZeroVariance`]: nothing to test).
    pub fn between_proportions(
        baseline: &Proportion,
        candidate: &Proportion,
    ) -> Result<Self, StatsError> {
        let unpooled = Self::between(baseline, candidate, Difference::Absolute)?;
        let (n_a, n_b) = (baseline.units() as f64, candidate.units() as f64);
        let pooled_rate = (baseline.successes() + candidate.successes()) as f64 / (n_a + n_b);
        let pooled = pooled_rate * (1.0 - pooled_rate) * (1.0 / n_a + 1.0 / n_b);
        let variance = unpooled.standard_error.powi(2).max(pooled);
        Ok(Self {
            standard_error: variance.sqrt(),
            ..unpooled
        })
    }
}

/// Refuses a comparison while either arm has fewer than `min_units` units: below it the
/// answer is "not enough data", whatever the interval says. GrowthBook's default is 150
/// (`DEFAULT_MIN_SAMPLE_SIZE`), its bandits' 100; quantiles add their own minimum
/// ([`QuantileEstimate::min_events`](crate::QuantileEstimate::min_events)).
pub fn require_units<S: ArmStatistic>(
    baseline: &S,
    candidate: &S,
    min_units: u64,
) -> Result<(), StatsError> {
    let have = baseline.units().min(candidate.units());
    if have < min_units {
        return Err(StatsError::NotEnoughData {
            have,
            need: min_units,
        });
    }
    Ok(())
}

/// Welch–Satterthwaite degrees of freedom:
/// `(v_a/n_a + v_b/n_b)² / (v_a²/(n_a²(n_a−1)) + v_b²/(n_b²(n_b−1)))`.
///
/// Source: GrowthBook `gbstats/frequentist/tests.py`, `TTest.dof`.
pub fn welch_dof(v_a: f64, n_a: u64, v_b: f64, n_b: u64) -> f64 {
    let (n_a, n_b) = (n_a as f64, n_b as f64);
    let num = (v_a / n_a + v_b / n_b).powi(2);
    let den = v_a.powi(2) / (n_a.powi(2) * (n_a - 1.0)) + v_b.powi(2) / (n_b.powi(2) * (n_b - 1.0));
    if den > 0.0 {
        num / den
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{Proportion, SampleMean};

    #[test]
    fn swapping_arms_negates_absolute_difference() {
        let a = SampleMean::new(100, 270.0, 848.79).expect("valid");
        let b = SampleMean::new(120, 300.0, 869.0).expect("valid");
        let ab = Effect::between(&a, &b, Difference::Absolute).expect("effect");
        let ba = Effect::between(&b, &a, Difference::Absolute).expect("effect");
        assert!((ab.estimate + ba.estimate).abs() < 1e-12);
        assert!((ab.standard_error - ba.standard_error).abs() < 1e-12);
        assert_eq!(ab.units, 220);
    }

    #[test]
    fn zero_baseline_has_no_relative_difference() {
        let a = SampleMean::new(10, 0.0, 10.0).expect("valid");
        let b = SampleMean::new(10, 5.0, 10.0).expect("valid");
        assert_eq!(
            Effect::between(&a, &b, Difference::Relative),
            Err(StatsError::BaselineZero)
        );
        assert!(Effect::between(&a, &b, Difference::Absolute).is_ok());
    }

    #[test]
    fn baseline_without_errors_still_compares() {
        let a = Proportion::new(1000, 0).expect("valid");
        let b = Proportion::new(1000, 50).expect("valid");
        let e = Effect::between(&a, &b, Difference::Absolute).expect("effect");
        assert!((e.estimate - 0.05).abs() < 1e-12);
        let none = Proportion::new(1000, 0).expect("valid");
        assert_eq!(
            Effect::between(&a, &none, Difference::Absolute),
            Err(StatsError::ZeroVariance)
        );
    }

    #[test]
    fn a_small_arm_without_errors_keeps_the_pooled_variance() {
        // The A/A bandit's false rollbacks: the baseline near the floor with no errors
        // (Wald z 4.5, pooled z 1.3).
        let a = Proportion::new(160, 0).expect("valid");
        let b = Proportion::new(2000, 20).expect("valid");
        let wald = Effect::between(&a, &b, Difference::Absolute).expect("effect");
        let e = Effect::between_proportions(&a, &b).expect("effect");
        assert!((e.estimate - 0.01).abs() < 1e-12);
        assert!(wald.estimate / wald.standard_error > 4.0);
        let pooled: f64 = (20.0 / 2160.0) * (1.0 - 20.0 / 2160.0) * (1.0 / 160.0 + 1.0 / 2000.0);
        assert!((e.standard_error - pooled.sqrt()).abs() < 1e-12);
        assert!(e.estimate / e.standard_error < 1.3);
    }

    #[test]
    fn a_small_arm_with_many_errors_keeps_its_own_variance() {
        // Upper tail of a small count: the unpooled variance is the larger.
        let a = Proportion::new(2000, 20).expect("valid");
        let b = Proportion::new(150, 6).expect("valid");
        let wald = Effect::between(&a, &b, Difference::Absolute).expect("effect");
        let e = Effect::between_proportions(&a, &b).expect("effect");
        assert_eq!(e, wald);
    }

    #[test]
    fn large_balanced_arms_barely_change() {
        let a = Proportion::new(5000, 50).expect("valid");
        let b = Proportion::new(5000, 95).expect("valid");
        let wald = Effect::between(&a, &b, Difference::Absolute).expect("effect");
        let e = Effect::between_proportions(&a, &b).expect("effect");
        assert!(e.standard_error >= wald.standard_error);
        assert!(e.standard_error / wald.standard_error < 1.001);
        assert_eq!(
            Effect::between_proportions(&a, &Proportion::new(10, 0).expect("valid"))
                .map(|e| e.units),
            Ok(5010)
        );
        let none = Proportion::new(1000, 0).expect("valid");
        assert_eq!(
            Effect::between_proportions(&none, &none),
            Err(StatsError::ZeroVariance)
        );
    }

    #[test]
    fn impossible_sums_give_zero_variance() {
        // Σx² < (Σx)²/n: no real values have these sums.
        let a = SampleMean::new(2, 10.0, 1.0).expect("finite");
        let b = SampleMean::new(10, 5.0, 10.0).expect("valid");
        assert_eq!(
            Effect::between(&a, &b, Difference::Absolute),
            Err(StatsError::ZeroVariance)
        );
    }

    #[test]
    fn below_minimum_units_is_not_enough_data() {
        let a = Proportion::new(149, 3).expect("valid");
        let b = Proportion::new(500, 9).expect("valid");
        assert_eq!(
            require_units(&a, &b, 150),
            Err(StatsError::NotEnoughData {
                have: 149,
                need: 150
            })
        );
        assert_eq!(require_units(&b, &b, 150), Ok(()));
    }

    #[test]
    fn one_unit_is_not_enough() {
        let a = SampleMean::new(1, 1.0, 1.0).expect("valid");
        let b = SampleMean::new(10, 5.0, 10.0).expect("valid");
        assert_eq!(
            Effect::between(&a, &b, Difference::Absolute),
            Err(StatsError::NotEnoughData { have: 1, need: 2 })
        );
    }
}
