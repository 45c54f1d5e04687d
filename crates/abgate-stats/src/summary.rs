//! Per-arm sufficient statistics: counts and sums that merge by adding, and what a
//! comparison reads from them (units, mean, per-unit variance).
//!
//! The definitions follow GrowthBook's `gbstats/models/statistics.py`
//! (`SampleMeanStatistic`, `ProportionStatistic`, `RatioStatistic`): the variance of an
//! arm's mean is `variance() / units()`.

use abgate_telemetry::Moments;

use crate::error::StatsError;

/// What a comparison needs from one arm.
pub trait ArmStatistic {
    /// The number of independent units behind the mean (users or requests; events for
    /// quantiles).
    fn units(&self) -> u64;
    /// The arm's point estimate: a mean, a proportion, a ratio of means or a quantile.
    fn mean(&self) -> f64;
    /// The per-unit variance, so that the variance of [`ArmStatistic::mean`] is
    /// `variance() / units()`.
    fn variance(&self) -> f64;
    /// Refuses data the method cannot use yet (too few events for a quantile, collapsed
    /// bounds). Every statistic needs at least two units; this adds the method's own
    /// conditions.
    fn check(&self) -> Result<(), StatsError> {
        Ok(())
    }
}

fn finite(name: &str, x: f64) -> Result<f64, StatsError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(StatsError::InvalidInput(format!(
            "{name} must be finite, got {x}"
        )))
    }
}

/// `n`, `Σx`, `Σx²` of a metric in one arm.
///
/// Source: GrowthBook `gbstats/models/statistics.py`, `SampleMeanStatistic`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SampleMean {
    n: u64,
    sum: f64,
    sum_sq: f64,
}

impl SampleMean {
    /// The statistic of `n` values summing to `sum`, with squares summing to `sum_sq`.
    ///
    /// Refuses non-finite sums and a negative `sum_sq`. Sums no real values can have
    /// (`sum² > n·sum_sq`) are accepted, as GrowthBook accepts them (its own test data
    /// has some): they give a negative variance, which a comparison refuses with
    /// [`StatsError::ZeroVariance`].
    pub fn new(n: u64, sum: f64, sum_sq: f64) -> Result<Self, StatsError> {
        finite("sum", sum)?;
        finite("sum of squares", sum_sq)?;
        if sum_sq < 0.0 {
            return Err(StatsError::InvalidInput(format!(
                "sum of squares must not be negative, got {sum_sq}"
            )));
        }
        Ok(Self { n, sum, sum_sq })
    }

    /// The statistic of the values the telemetry store recorded.
    pub fn from_moments(m: &Moments) -> Result<Self, StatsError> {
        Self::new(m.n, m.sum, m.sum_sq)
    }

    /// How many values.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Σx.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Σx².
    pub fn sum_sq(&self) -> f64 {
        self.sum_sq
    }

    /// Adds `other`'s values to these (another window or replica of the same period).
    pub fn merge(&mut self, other: &SampleMean) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }
}

impl ArmStatistic for SampleMean {
    fn units(&self) -> u64 {
        self.n
    }

    /// `Σx / n`, 0 without values.
    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// The sample variance `(Σx² − (Σx)²/n) / (n − 1)`, 0 under two values.
    fn variance(&self) -> f64 {
        if self.n <= 1 {
            return 0.0;
        }
        let n = self.n as f64;
        (self.sum_sq - self.sum * self.sum / n) / (n - 1.0)
    }
}

/// Successes out of `n` trials: success rate, error rate, goodput against an SLO.
///
/// Source: GrowthBook `gbstats/models/statistics.py`, `ProportionStatistic`: the
/// per-unit variance is `p(1 − p)` (no `n/(n−1)` correction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Proportion {
    n: u64,
    successes: u64,
}

impl Proportion {
    /// `successes` out of `n`; refuses `successes > n`.
    pub fn new(n: u64, successes: u64) -> Result<Self, StatsError> {
        if successes > n {
            return Err(StatsError::InvalidInput(format!(
                "{successes} successes out of {n} trials"
            )));
        }
        Ok(Self { n, successes })
    }

    /// Trials.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Successes.
    pub fn successes(&self) -> u64 {
        self.successes
    }

    /// Adds `other`'s trials to these.
    pub fn merge(&mut self, other: &Proportion) {
        self.n += other.n;
        self.successes += other.successes;
    }
}

impl ArmStatistic for Proportion {
    fn units(&self) -> u64 {
        self.n
    }

    /// `successes / n`, 0 without trials.
    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.successes as f64 / self.n as f64
        }
    }

    /// `p(1 − p)`.
    fn variance(&self) -> f64 {
        let p = self.mean();
        p * (1.0 - p)
    }
}

/// A ratio of two per-unit sums, such as tokens per second (Σtokens / Σseconds) or cost
/// per request when the unit is the user: numerator and denominator moments over the
/// same `n` units, and `Σxy`, their sum of products.
///
/// Source: GrowthBook `gbstats/models/statistics.py`, `RatioStatistic` and
/// `compute_covariance`; `gbstats/utils.py`, `variance_of_ratios` (the delta method).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ratio {
    numerator: SampleMean,
    denominator: SampleMean,
    sum_products: f64,
}

impl Ratio {
    /// The ratio of `numerator` to `denominator`, both over the same units, whose
    /// per-unit products sum to `sum_products`.
    pub fn new(
        numerator: SampleMean,
        denominator: SampleMean,
        sum_products: f64,
    ) -> Result<Self, StatsError> {
        if numerator.n != denominator.n {
            return Err(StatsError::InvalidInput(format!(
                "numerator has {} units and denominator {}",
                numerator.n, denominator.n
            )));
        }
        finite("sum of products", sum_products)?;
        Ok(Self {
            numerator,
            denominator,
            sum_products,
        })
    }

    /// The numerator's moments.
    pub fn numerator(&self) -> &SampleMean {
        &self.numerator
    }

    /// The denominator's moments.
    pub fn denominator(&self) -> &SampleMean {
        &self.denominator
    }

    /// The sample covariance of numerator and denominator,
    /// `(Σxy − ΣxΣy/n) / (n − 1)`, 0 under two units.
    pub fn covariance(&self) -> f64 {
        if self.numerator.n <= 1 {
            return 0.0;
        }
        let n = self.numerator.n as f64;
        (self.sum_products - self.numerator.sum * self.denominator.sum / n) / (n - 1.0)
    }

    /// Adds `other`'s units to these.
    pub fn merge(&mut self, other: &Ratio) {
        self.numerator.merge(&other.numerator);
        self.denominator.merge(&other.denominator);
        self.sum_products += other.sum_products;
    }
}

/// The delta-method variance of `M / D`:
/// `var_m/μ_d² + var_d·μ_m²/μ_d⁴ − 2·cov·μ_m/μ_d³`, 0 when `μ_d = 0`.
///
/// Source: GrowthBook `gbstats/utils.py`, `variance_of_ratios`.
pub fn variance_of_ratio(mean_m: f64, var_m: f64, mean_d: f64, var_d: f64, cov: f64) -> f64 {
    if mean_d == 0.0 {
        return 0.0;
    }
    var_m / mean_d.powi(2) + var_d * mean_m.powi(2) / mean_d.powi(4)
        - 2.0 * cov * mean_m / mean_d.powi(3)
}

impl ArmStatistic for Ratio {
    fn units(&self) -> u64 {
        self.numerator.n
    }

    /// `Σnumerator / Σdenominator`, 0 when the denominator sums to 0.
    fn mean(&self) -> f64 {
        if self.denominator.sum == 0.0 {
            0.0
        } else {
            self.numerator.sum / self.denominator.sum
        }
    }

    /// The delta-method per-unit variance of the ratio ([`variance_of_ratio`]).
    fn variance(&self) -> f64 {
        if self.denominator.mean() == 0.0 || self.numerator.n <= 1 {
            return 0.0;
        }
        variance_of_ratio(
            self.numerator.mean(),
            self.numerator.variance(),
            self.denominator.mean(),
            self.denominator.variance(),
            self.covariance(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_mean_matches_definitions() {
        // Values 0.3, 0.5, 0.9, 22 (GrowthBook tests/test_shared_models.py METRIC_1).
        let xs = [0.3, 0.5, 0.9, 22.0];
        let s = SampleMean::new(4, xs.iter().sum(), xs.iter().map(|x| x * x).sum()).expect("valid");
        let mean = xs.iter().sum::<f64>() / 4.0;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0;
        assert!((s.mean() - mean).abs() < 1e-12);
        assert!((s.variance() - var).abs() < 1e-9);
        assert_eq!(SampleMean::new(1, 2.0, 4.0).expect("valid").variance(), 0.0);
    }

    #[test]
    fn invalid_sums_are_refused() {
        assert!(SampleMean::new(2, f64::NAN, 1.0).is_err());
        assert!(SampleMean::new(2, 1.0, -1.0).is_err());
        assert!(Proportion::new(3, 4).is_err());
    }

    #[test]
    fn proportion_variance_is_p_times_one_minus_p() {
        let p = Proportion::new(4, 3).expect("valid");
        assert_eq!(p.mean(), 0.75);
        assert_eq!(p.variance(), 0.75 * 0.25);
    }

    #[test]
    fn ratio_covariance_matches_raw_data() {
        // GrowthBook tests/test_shared_models.py: METRIC_1 over METRIC_3.
        let m = [0.3, 0.5, 0.9, 22.0];
        let d = [2.0, 1.0, 5.0, 3.0];
        let moments = |xs: &[f64]| {
            SampleMean::new(4, xs.iter().sum(), xs.iter().map(|x| x * x).sum()).expect("valid")
        };
        let sxy: f64 = m.iter().zip(&d).map(|(x, y)| x * y).sum();
        let r = Ratio::new(moments(&m), moments(&d), sxy).expect("valid");
        let (mx, my) = (m.iter().sum::<f64>() / 4.0, d.iter().sum::<f64>() / 4.0);
        let cov = m
            .iter()
            .zip(&d)
            .map(|(x, y)| (x - mx) * (y - my))
            .sum::<f64>()
            / 3.0;
        assert!((r.covariance() - cov).abs() < 1e-9);
        assert!((r.mean() - m.iter().sum::<f64>() / d.iter().sum::<f64>()).abs() < 1e-12);
    }

    #[test]
    fn ratio_with_zero_denominator_has_zero_variance() {
        let m = SampleMean::new(4, 23.7, 484.15).expect("valid");
        let d = SampleMean::new(4, 0.0, 39.0).expect("valid");
        let r = Ratio::new(m, d, 10.0).expect("valid");
        assert_eq!(r.variance(), 0.0);
        assert_eq!(r.mean(), 0.0);
    }

    #[test]
    fn moments_convert() {
        let m = Moments::of([1.0, 2.0, 3.0]);
        let s = SampleMean::from_moments(&m).expect("valid");
        assert_eq!(s.mean(), 2.0);
        assert_eq!(s.variance(), 1.0);
    }
}
