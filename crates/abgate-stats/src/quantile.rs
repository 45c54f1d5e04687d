//! Quantiles (p95, p99 latency; TTFT; TPOT) as arm statistics, with the variance of the
//! sample quantile from the order statistics around it.
//!
//! Method: Deng, Knoblich & Yu, "Applying the Delta Method in Metric Analytics" (KDD
//! 2018), the outer confidence interval of a quantile, as GrowthBook implements it in
//! `gbstats/models/statistics.py` (`QuantileStatistic`) and bounds it in
//! `packages/back-end/src/integrations/sql/columns/quantile-bound-values.ts`: with `n`
//! events and level `ν`, the values at levels `ν ± z·sqrt(ν(1−ν)/n)` (z = Φ⁻¹(0.975))
//! bracket the quantile, and `((upper − lower) / 2z)²` is the variance of the sample
//! quantile. The events are taken as independent; when requests nest in users, the
//! cluster adjustment of the same paper is still to be added.

use abgate_telemetry::Sketch;

use crate::dist::normal_quantile;
use crate::error::StatsError;
use crate::summary::ArmStatistic;

/// The two-sided 95% normal quantile GrowthBook fixes for the bounds, whatever the
/// test's alpha.
fn z95() -> f64 {
    normal_quantile(0.975)
}

/// A sample quantile with the values just below and above it that give its variance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantileEstimate {
    n: u64,
    n_star: u64,
    level: f64,
    value: f64,
    lower: f64,
    upper: f64,
}

impl QuantileEstimate {
    /// The `level`-quantile `value` of `n` events, with `lower` and `upper` the values at
    /// the levels [`QuantileEstimate::bound_levels`] gives for `n_star` events (`n_star`
    /// = `n` when the bounds were read at the exact count; GrowthBook's warehouse queries
    /// read them on a grid of `n_star ≤ n` and rescale).
    pub fn new(
        n: u64,
        n_star: u64,
        level: f64,
        value: f64,
        lower: f64,
        upper: f64,
    ) -> Result<Self, StatsError> {
        if !(level > 0.0 && level < 1.0) {
            return Err(StatsError::InvalidInput(format!(
                "quantile level must be in (0, 1), got {level}"
            )));
        }
        if ![value, lower, upper].iter().all(|x| x.is_finite()) {
            return Err(StatsError::InvalidInput(
                "quantile values must be finite".to_owned(),
            ));
        }
        if lower > upper {
            return Err(StatsError::InvalidInput(format!(
                "quantile lower bound {lower} is above the upper bound {upper}"
            )));
        }
        if n_star > n || (n > 0 && n_star == 0) {
            return Err(StatsError::InvalidInput(format!(
                "the bounds' sample size {n_star} must be in 1..={n}"
            )));
        }
        Ok(Self {
            n,
            n_star,
            level,
            value,
            lower,
            upper,
        })
    }

    /// The levels whose values bracket the `level`-quantile of `n` events:
    /// `ν ± z·sqrt(ν(1−ν)/n)`, clamped to `[1e-8, 0.99999999]`.
    ///
    /// Source: GrowthBook `quantile-bound-values.ts`.
    pub fn bound_levels(level: f64, n: u64) -> (f64, f64) {
        let half = z95() * (level * (1.0 - level) / n.max(1) as f64).sqrt();
        ((level - half).max(1e-8), (level + half).min(0.999_999_99))
    }

    /// The fewest events for which the bounds stay inside (0, 1):
    /// `n > z²·max(ν/(1−ν), (1−ν)/ν)`; 73 for p95 and 381 for p99.
    ///
    /// Source: GrowthBook `QuantileStatistic._has_zero_variance`.
    pub fn min_events(level: f64) -> u64 {
        let z2 = z95().powi(2);
        let bound = z2 * (level / (1.0 - level)).max((1.0 - level) / level);
        bound.floor() as u64 + 1
    }

    /// The `level`-quantile of a telemetry sketch, with its bounds read from the same
    /// sketch.
    ///
    /// The bounds are read at the exact count first. The sketch's relative error (1%)
    /// carries into them, and when the true interval is narrower than a bucket both
    /// bounds fall in one bucket and collapse; then, as GrowthBook's warehouse queries do
    /// (`N_STAR_VALUES = 100·2^k` in `experimentQueries/constants.ts`), they are read
    /// for a smaller `n* = 100·2^k < n`, wider bounds whose variance is rescaled by
    /// `n*/n`. If they collapse at every `n*`, the comparison refuses with
    /// [`StatsError::ZeroVariance`].
    pub fn from_sketch(sketch: &Sketch, level: f64) -> Result<Self, StatsError> {
        let n = sketch.count();
        if n == 0 {
            return Err(StatsError::NotEnoughData {
                have: 0,
                need: Self::min_events(level),
            });
        }
        let read = |q: f64| {
            sketch.quantile(q).ok_or_else(|| {
                StatsError::InvalidInput(format!("quantile level must be in (0, 1), got {q}"))
            })
        };
        let value = read(level)?;
        let grid = (0..20)
            .rev()
            .map(|k| 100u64 << k)
            .filter(|&n_star| n_star < n);
        let mut last = None;
        for n_star in std::iter::once(n).chain(grid) {
            let (lo, hi) = Self::bound_levels(level, n_star);
            let estimate = Self::new(n, n_star, level, value, read(lo)?, read(hi)?)?;
            if estimate.upper > estimate.lower {
                return Ok(estimate);
            }
            last = Some(estimate);
        }
        Ok(last.expect("n ≥ 1 gives at least one n*"))
    }

    /// Events.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// The quantile level ν.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// The sample quantile.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The per-event variance before GrowthBook's floor:
    /// `(n*/n)·(n − 1)·((upper − lower) / 2z)²`.
    fn variance_init(&self) -> f64 {
        if self.n <= 1 {
            return 0.0;
        }
        let width = (self.upper - self.lower) / (2.0 * z95());
        (self.n_star as f64 / self.n as f64) * (self.n - 1) as f64 * width * width
    }
}

impl ArmStatistic for QuantileEstimate {
    fn units(&self) -> u64 {
        self.n
    }

    fn mean(&self) -> f64 {
        self.value
    }

    /// The per-event variance, floored at 1e-5 from 100 events on (GrowthBook).
    fn variance(&self) -> f64 {
        let v = self.variance_init();
        if self.n < 100 {
            v
        } else {
            v.max(1e-5)
        }
    }

    /// Needs [`QuantileEstimate::min_events`] events and bounds that did not collapse.
    fn check(&self) -> Result<(), StatsError> {
        let need = Self::min_events(self.level);
        if self.n < need {
            return Err(StatsError::NotEnoughData { have: self.n, need });
        }
        if self.variance_init() <= 0.0 {
            return Err(StatsError::ZeroVariance);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_levels_match_growthbook_grid_examples() {
        // reference/experiment-stats.md §1.6 (GrowthBook quantile-bound-values.ts):
        // ν = 0.95, n* = 100 → [0.9072836, 0.9927164]; n* = 1600 → [0.9393209, 0.9606791].
        let (lo, hi) = QuantileEstimate::bound_levels(0.95, 100);
        assert!((lo - 0.907_283_6).abs() < 1e-7 && (hi - 0.992_716_4).abs() < 1e-7);
        let (lo, hi) = QuantileEstimate::bound_levels(0.95, 1600);
        assert!((lo - 0.939_320_9).abs() < 1e-7 && (hi - 0.960_679_1).abs() < 1e-7);
    }

    #[test]
    fn p95_needs_73_events_and_p99_381() {
        assert_eq!(QuantileEstimate::min_events(0.95), 73);
        assert_eq!(QuantileEstimate::min_events(0.99), 381);
        let few = QuantileEstimate::new(72, 72, 0.95, 1.0, 0.9, 1.1).expect("valid");
        assert_eq!(
            few.check(),
            Err(StatsError::NotEnoughData { have: 72, need: 73 })
        );
    }

    #[test]
    fn collapsed_bounds_refuse_inference() {
        // GrowthBook tests/test_shared_models.py TestQuantileStatisticZeroVariance.
        let q = QuantileEstimate::new(60_000_000, 60_000_000, 0.9, 5.0, 5.0, 5.0).expect("valid");
        assert_eq!(q.check(), Err(StatsError::ZeroVariance));
        let q = QuantileEstimate::new(60_000_000, 60_000_000, 0.9, 5.0, 4.99, 5.01).expect("valid");
        assert_eq!(q.check(), Ok(()));
    }

    #[test]
    fn narrow_bounds_fall_back_to_a_coarser_grid() {
        // 2,000,000 events uniform on 100..200: at the exact count the p95's bounds are
        // ±0.03 apart and share a 1% bucket; at a smaller n* they do not.
        let values = (0..2_000_000).map(|i| 100.0 + f64::from(i % 1000) * 0.1);
        let sketch = Sketch::of(values);
        let q = QuantileEstimate::from_sketch(&sketch, 0.95).expect("enough data");
        assert!(q.n_star < q.n, "n* = {}", q.n_star);
        assert_eq!(q.check(), Ok(()));
        let exact =
            QuantileEstimate::new(q.n, q.n, 0.95, q.value, q.value, q.value).expect("valid");
        assert_eq!(exact.check(), Err(StatsError::ZeroVariance));
    }

    #[test]
    fn sketch_quantile_brackets_the_value() {
        let sketch = Sketch::of((1..=10_000).map(f64::from));
        let q = QuantileEstimate::from_sketch(&sketch, 0.95).expect("enough data");
        assert!((q.value() - 9500.0).abs() / 9500.0 < 0.011);
        assert!(q.lower <= q.value && q.value <= q.upper);
        assert_eq!(q.check(), Ok(()));
        assert_eq!(q.n_star, q.n);
        assert!(matches!(
            QuantileEstimate::from_sketch(&Sketch::new(), 0.95),
            Err(StatsError::NotEnoughData { have: 0, .. })
        ));
    }
}
