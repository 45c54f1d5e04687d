//! Fixed-horizon tests: valid when the data is looked at once, at the planned end.

use crate::dist::{t_cdf, t_quantile, t_sf};
use crate::effect::Effect;
use crate::error::{check_alpha, StatsError};
use crate::inference::{Alternative, Inference, Interval};

/// Welch's t-test of δ = 0 and its `1 − alpha` interval.
///
/// - Two-sided: `est ± t_{1−α/2, dof}·se`, `p = 2·P(T > |est/se|)`.
/// - Greater: `[est − t_{1−α, dof}·se, ∞)`, `p = P(T > est/se)`.
/// - Lesser: `(−∞, est + t_{1−α, dof}·se]`, `p = P(T < est/se)`.
///
/// `dof` is the effect's Welch–Satterthwaite value. Source: GrowthBook
/// `gbstats/frequentist/tests.py` (`TwoSidedTTest`, `OneSidedTreatmentGreaterTTest`,
/// `OneSidedTreatmentLesserTTest`).
///
/// Looking at this test repeatedly inflates its false-positive rate; use
/// [`sequential`](crate::sequential) for continuous monitoring.
pub fn fixed_horizon(
    effect: &Effect,
    alternative: Alternative,
    alpha: f64,
) -> Result<Inference, StatsError> {
    check_alpha(alpha)?;
    let (est, se, dof) = (effect.estimate, effect.standard_error, effect.dof);
    let z = est / se;
    let (halfwidth, p_value) = match alternative {
        Alternative::TwoSided => (
            t_quantile(1.0 - alpha / 2.0, dof) * se,
            (2.0 * t_sf(z.abs(), dof)).min(1.0),
        ),
        Alternative::Greater => (t_quantile(1.0 - alpha, dof) * se, t_sf(z, dof)),
        Alternative::Lesser => (t_quantile(1.0 - alpha, dof) * se, t_cdf(z, dof)),
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
