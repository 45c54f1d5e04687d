//! Sample ratio mismatch: did each arm get the share of traffic its weight promised?
//! A mismatch means the comparison is biased (an arm's requests were lost, retried or
//! rerouted), so while it fires no promotion or ramp should happen.

use crate::dist::{chi_squared_sf, ln_gamma};
use crate::error::StatsError;

/// GrowthBook's and Eppo's SRM threshold (`DEFAULT_SRM_THRESHOLD`).
pub const DEFAULT_SRM_ALPHA: f64 = 0.001;

/// Pearson's chi-squared test of the observed counts against the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ChiSquaredSrm {
    /// `Σ (o − e)² / e` over the arms with a positive weight.
    pub chi_squared: f64,
    /// Degrees of freedom: arms with a positive weight, minus one (0 when under two).
    pub df: u32,
    /// The count each arm should have had, `w_i/Σw · Σo` (0 for zero-weight arms).
    pub expected: Vec<f64>,
    /// `P(χ²_df > chi_squared)`; 1 with under two weighted arms or no units.
    pub p_value: f64,
}

fn check_weights(weights: &[f64]) -> Result<(), StatsError> {
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(StatsError::InvalidInput(format!(
            "weights must be finite and not negative, got {w}"
        )));
    }
    Ok(())
}

/// The chi-squared SRM check.
///
/// Arms with weight 0 are left out (their units are not counted), as GrowthBook does;
/// with fewer than two weighted arms, or no units, the p-value is 1. Weights need not
/// sum to 1. One look only: checking it repeatedly inflates its error rate, for which
/// see [`SequentialSrm`].
///
/// Source: GrowthBook `packages/back-end/src/util/stats.ts` (`checkSrm`) and
/// `gbstats/utils.py` (`check_srm`).
pub fn srm_chi_squared(observed: &[u64], weights: &[f64]) -> Result<ChiSquaredSrm, StatsError> {
    if observed.len() != weights.len() {
        return Err(StatsError::InvalidInput(format!(
            "{} observed counts for {} weights",
            observed.len(),
            weights.len()
        )));
    }
    check_weights(weights)?;
    let weighted = || observed.iter().zip(weights).filter(|(_, w)| **w > 0.0);
    let arms = weighted().count();
    let total: f64 = weighted().map(|(o, _)| *o as f64).sum();
    let total_weight: f64 = weighted().map(|(_, w)| *w).sum();
    let expected: Vec<f64> = weights
        .iter()
        .map(|w| {
            if *w > 0.0 {
                w / total_weight * total
            } else {
                0.0
            }
        })
        .collect();
    if arms < 2 || total == 0.0 {
        return Ok(ChiSquaredSrm {
            chi_squared: 0.0,
            df: arms.saturating_sub(1) as u32,
            expected,
            p_value: 1.0,
        });
    }
    let chi_squared: f64 = observed
        .iter()
        .zip(&expected)
        .filter(|(_, e)| **e > 0.0)
        .map(|(o, e)| (*o as f64 - e).powi(2) / e)
        .sum();
    let df = (arms - 1) as u32;
    Ok(ChiSquaredSrm {
        chi_squared,
        df,
        expected,
        p_value: chi_squared_sf(chi_squared, df),
    })
}

/// The sequential SRM test: a Dirichlet-multinomial Bayes factor against the weights,
/// valid however often it is checked.
///
/// `BF_n = [B(a + x)/B(a)] / Π θ_i^{x_i}`, with `x` the cumulative counts, `θ` the
/// weights normalised, `a` the Dirichlet prior and `B` the multivariate Beta function
/// (the multinomial coefficients cancel, so the factor depends on the totals only, not
/// on how they were batched). Under the null `BF_n` is a nonnegative martingale, so by
/// Ville's inequality `P(∃n: BF_n ≥ 1/α) ≤ α`; the p-value is the running minimum of
/// `1/BF_n`.
///
/// Source: Lindon & Malek, "Anytime-Valid Inference for Multinomial Count Data"
/// (NeurIPS 2022, arXiv 2011.03567), as implemented in Optimizely's `ssrm_test`
/// (`sequential_posteriors`, `accumulator`). The prior is the weights times a
/// concentration ([`SequentialSrm::DEFAULT_CONCENTRATION`], `ssrm_test`'s default): a
/// larger concentration detects small mismatches sooner and large ones later.
///
/// The weights are fixed for the test's life: a weight change starts a new test.
#[derive(Clone, Debug, PartialEq)]
pub struct SequentialSrm {
    null: Vec<f64>,
    prior: Vec<f64>,
    counts: Vec<u64>,
    log_bayes_factor: f64,
    p_value: f64,
}

impl SequentialSrm {
    /// Optimizely `ssrm_test`'s default Dirichlet concentration.
    pub const DEFAULT_CONCENTRATION: f64 = 10_000.0;

    /// A test of `weights` (all positive; normalised here) with the Dirichlet prior
    /// centred on them, `a_i = concentration · w_i / Σw`.
    pub fn new(weights: &[f64], concentration: f64) -> Result<Self, StatsError> {
        if !(concentration > 0.0 && concentration.is_finite()) {
            return Err(StatsError::InvalidInput(format!(
                "the Dirichlet concentration must be positive, got {concentration}"
            )));
        }
        let null = Self::normalise(weights)?;
        let prior = null.iter().map(|p| p * concentration).collect();
        Self::with_prior(&null, prior)
    }

    /// A test of `weights` with an explicit Dirichlet prior `prior` (all positive, one
    /// per arm).
    pub fn with_prior(weights: &[f64], prior: Vec<f64>) -> Result<Self, StatsError> {
        let null = Self::normalise(weights)?;
        if prior.len() != null.len() || prior.iter().any(|a| !(*a > 0.0 && a.is_finite())) {
            return Err(StatsError::InvalidInput(
                "the Dirichlet prior needs one positive parameter per arm".to_owned(),
            ));
        }
        Ok(Self {
            counts: vec![0; null.len()],
            null,
            prior,
            log_bayes_factor: 0.0,
            p_value: 1.0,
        })
    }

    fn normalise(weights: &[f64]) -> Result<Vec<f64>, StatsError> {
        check_weights(weights)?;
        if weights.len() < 2 || weights.iter().any(|w| *w <= 0.0) {
            return Err(StatsError::InvalidInput(
                "a sequential SRM test needs two or more arms, all with positive weight".to_owned(),
            ));
        }
        let total: f64 = weights.iter().sum();
        Ok(weights.iter().map(|w| w / total).collect())
    }

    /// Moves to the cumulative counts `totals` (one per arm, never below the previous
    /// ones) and returns the running p-value.
    pub fn update(&mut self, totals: &[u64]) -> Result<f64, StatsError> {
        if totals.len() != self.counts.len() {
            return Err(StatsError::InvalidInput(format!(
                "{} counts for {} arms",
                totals.len(),
                self.counts.len()
            )));
        }
        if totals.iter().zip(&self.counts).any(|(new, old)| new < old) {
            return Err(StatsError::InvalidInput(
                "cumulative counts went down: a new period needs a new test".to_owned(),
            ));
        }
        self.counts.copy_from_slice(totals);
        self.log_bayes_factor = log_bayes_factor(&self.counts, &self.null, &self.prior);
        self.p_value = self.p_value.min((-self.log_bayes_factor).exp());
        Ok(self.p_value)
    }

    /// Adds a batch of new counts (one per arm) and returns the running p-value.
    pub fn add(&mut self, batch: &[u64]) -> Result<f64, StatsError> {
        if batch.len() != self.counts.len() {
            return Err(StatsError::InvalidInput(format!(
                "{} counts for {} arms",
                batch.len(),
                self.counts.len()
            )));
        }
        let totals: Vec<u64> = self.counts.iter().zip(batch).map(|(c, b)| c + b).collect();
        self.update(&totals)
    }

    /// ln BF at the current counts.
    pub fn log_bayes_factor(&self) -> f64 {
        self.log_bayes_factor
    }

    /// The running minimum of `1/BF`: always valid.
    pub fn p_value(&self) -> f64 {
        self.p_value
    }

    /// Whether a mismatch has been shown at `alpha` (ever, since the test began).
    pub fn fires(&self, alpha: f64) -> bool {
        self.p_value < alpha
    }

    /// The cumulative counts.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
}

/// `ln B(a + x) − ln B(a) − Σ x_i ln θ_i`, with `ln B(a) = Σ ln Γ(a_i) − ln Γ(Σ a_i)`.
fn log_bayes_factor(counts: &[u64], null: &[f64], prior: &[f64]) -> f64 {
    let ln_beta = |a: &mut dyn Iterator<Item = f64>| {
        let (mut sum, mut total) = (0.0, 0.0);
        for x in a {
            sum += ln_gamma(x);
            total += x;
        }
        sum - ln_gamma(total)
    };
    let posterior = ln_beta(&mut counts.iter().zip(prior).map(|(x, a)| *x as f64 + a));
    let prior_b = ln_beta(&mut prior.iter().copied());
    let null_ll: f64 = counts
        .iter()
        .zip(null)
        .filter(|(x, _)| **x > 0)
        .map(|(x, p)| *x as f64 * p.ln())
        .sum();
    posterior - prior_b - null_ll
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_lengths_are_bad_input() {
        assert!(srm_chi_squared(&[1000], &[0.5, 0.5]).is_err());
        assert!(srm_chi_squared(&[1, 2], &[0.5, f64::NAN]).is_err());
    }

    #[test]
    fn zero_weight_arm_is_left_out() {
        let r = srm_chi_squared(&[1000, 1200, 900], &[0.5, 0.5, 0.0]).expect("valid");
        assert_eq!(r.df, 1);
        assert_eq!(r.expected, vec![1100.0, 1100.0, 0.0]);
    }

    #[test]
    fn sequential_srm_depends_on_totals_not_batches() {
        let mut batched = SequentialSrm::new(&[0.5, 0.5], 100.0).expect("valid");
        for batch in [[10, 20], [30, 5], [0, 7]] {
            batched.add(&batch).expect("valid");
        }
        let mut once = SequentialSrm::new(&[0.5, 0.5], 100.0).expect("valid");
        once.update(&[40, 32]).expect("valid");
        assert!((batched.log_bayes_factor() - once.log_bayes_factor()).abs() < 1e-9);
    }

    #[test]
    fn sequential_srm_refuses_decreasing_counts_and_zero_weights() {
        let mut t = SequentialSrm::new(&[0.5, 0.5], 100.0).expect("valid");
        t.update(&[10, 10]).expect("valid");
        assert!(t.update(&[9, 12]).is_err());
        assert!(SequentialSrm::new(&[1.0, 0.0], 100.0).is_err());
    }

    #[test]
    fn bayes_factors_match_reference_values() {
        // reference/experiment-stats.md §6.5 (self-computed there, a_i = k·θ0_i):
        // [1000, 1200] → BF 239.05, [135, 115] → 0.175, [500, 500, 600] → 2.184.
        let cases: [(&[u64], &[f64], f64); 3] = [
            (&[1000, 1200], &[0.5, 0.5], 239.05),
            (&[135, 115], &[0.5, 0.5], 0.175),
            (&[500, 500, 600], &[0.34, 0.33, 0.33], 2.184),
        ];
        for (counts, weights, bf) in cases {
            let mut t = SequentialSrm::new(weights, counts.len() as f64).expect("valid");
            let p = t.update(counts).expect("valid");
            let got = t.log_bayes_factor().exp();
            assert!((got - bf).abs() / bf < 0.003, "{counts:?}: {got}");
            assert!((p - (1.0 / bf).min(1.0)).abs() < 0.003);
        }
    }

    #[test]
    fn gross_mismatch_fires_and_stays_fired() {
        let mut t =
            SequentialSrm::new(&[0.5, 0.5], SequentialSrm::DEFAULT_CONCENTRATION).expect("valid");
        t.update(&[5000, 6000]).expect("valid");
        assert!(t.fires(DEFAULT_SRM_ALPHA), "p = {}", t.p_value());
        let fired = t.p_value();
        t.update(&[10_000, 10_000]).expect("valid");
        assert_eq!(t.p_value(), fired);
    }
}
