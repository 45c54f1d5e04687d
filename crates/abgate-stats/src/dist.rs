//! The few distribution functions the engine needs, on top of `statrs`.
//!
//! `statrs` computes Student's t quantile by inverting the regularized incomplete beta
//! function, which is accurate to a few digits only for large degrees of freedom; the
//! quantile here refines it with Newton steps on the (accurate) CDF so that intervals
//! agree with SciPy's `t.ppf` to about 1e-12.

use statrs::distribution::{ChiSquared, Continuous, ContinuousCDF, Normal, StudentsT};

/// Beyond this many degrees of freedom Student's t is the normal distribution to well
/// under 1e-9 in the quantiles used here (|t| < 40).
const NORMAL_DOF: f64 = 1e12;

fn standard_normal() -> Normal {
    Normal::new(0.0, 1.0).expect("N(0, 1) has valid parameters")
}

/// Φ⁻¹(p), the standard normal quantile.
pub(crate) fn normal_quantile(p: f64) -> f64 {
    standard_normal().inverse_cdf(p)
}

fn students_t(dof: f64) -> Option<StudentsT> {
    if dof.is_finite() && dof > 0.0 && dof < NORMAL_DOF {
        StudentsT::new(0.0, 1.0, dof).ok()
    } else {
        None
    }
}

/// P(T ≤ t) for Student's t with `dof` degrees of freedom (normal for huge or
/// non-finite `dof`).
pub(crate) fn t_cdf(t: f64, dof: f64) -> f64 {
    match students_t(dof) {
        Some(d) => d.cdf(t),
        None => standard_normal().cdf(t),
    }
}

/// P(T > t) for Student's t with `dof` degrees of freedom.
pub(crate) fn t_sf(t: f64, dof: f64) -> f64 {
    match students_t(dof) {
        Some(d) => d.sf(t),
        None => standard_normal().sf(t),
    }
}

/// The `p`-quantile of Student's t with `dof` degrees of freedom, for 0 < p < 1.
pub(crate) fn t_quantile(p: f64, dof: f64) -> f64 {
    let Some(d) = students_t(dof) else {
        return normal_quantile(p);
    };
    // Work in the upper tail, where the CDF is computed as 1 - sf without cancellation
    // for the probabilities used here (p ≥ 0.5 after reflection).
    let (q, sign) = if p < 0.5 { (1.0 - p, -1.0) } else { (p, 1.0) };
    let mut x = d.inverse_cdf(q);
    if !x.is_finite() {
        x = normal_quantile(q);
    }
    for _ in 0..8 {
        let density = d.pdf(x);
        if density <= 0.0 || !density.is_finite() {
            break;
        }
        // Newton on sf(x) = 1 - q, which keeps precision in the tail.
        let step = (d.sf(x) - (1.0 - q)) / density;
        x += step;
        if step.abs() <= 1e-14 * x.abs().max(1.0) {
            break;
        }
    }
    sign * x
}

/// P(X > x) for a chi-squared X with `df` degrees of freedom; 1 for `df = 0`.
pub(crate) fn chi_squared_sf(x: f64, df: u32) -> f64 {
    if df == 0 {
        return 1.0;
    }
    match ChiSquared::new(f64::from(df)) {
        Ok(d) => d.sf(x),
        Err(_) => 1.0,
    }
}

/// ln Γ(x) for x > 0.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    statrs::function::gamma::ln_gamma(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantile_matches_scipy() {
        // scipy.stats.t.ppf(p, df), SciPy 1.17.1.
        let cases = [
            (0.975, 5.0, 2.570_581_835_636_314_6),
            (0.975, 30.0, 2.042_272_456_301_237_8),
            (0.95, 10.0, 1.812_461_122_811_675_6),
            (0.975, 5841.7, 1.960_370_159_877_560_2),
        ];
        for (p, dof, want) in cases {
            let got = t_quantile(p, dof);
            assert!((got - want).abs() < 1e-9, "t({dof}) q{p}: {got} vs {want}");
            let mirrored = t_quantile(1.0 - p, dof);
            assert!((mirrored + want).abs() < 1e-9);
        }
    }

    #[test]
    fn normal_quantile_is_the_usual_constant() {
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
    }

    #[test]
    fn chi_squared_sf_of_zero_df_is_one() {
        assert_eq!(chi_squared_sf(3.0, 0), 1.0);
        assert!((chi_squared_sf(3.841_458_820_694_124, 1) - 0.05).abs() < 1e-12);
    }
}
