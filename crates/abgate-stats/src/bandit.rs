//! Thompson sampling over Beta posteriors: traffic weights for a bandit whose reward is
//! a success (a good response, goodput within the SLO, a thumbs-up).
//!
//! Method: Thompson (1933); batched allocation by probability of being best as in
//! GrowthBook `gbstats/bayesian/bandits.py` and Statsig Autotune, with GrowthBook's
//! additive floor `p_i = f + (1 − k·f)·P(best)_i` and its rule of re-weighting only once
//! every arm has a minimum sample (`reference/experiment-stats.md` §4). GrowthBook uses
//! Gaussian posteriors; with a binary reward the Beta–Bernoulli model is exact.
//!
//! The random source is an argument, so a seeded generator makes every allocation
//! reproducible.

use rand::Rng;

use crate::error::StatsError;

/// Successes and failures of one arm's reward. Fractional counts are allowed: a reward
/// `r` in [0, 1] (a feedback score) adds `r` successes and `1 − r` failures, the
/// fractional Beta update for bounded rewards.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BetaArm {
    /// Rewarded units.
    pub successes: f64,
    /// Unrewarded units.
    pub failures: f64,
}

impl BetaArm {
    /// `successes` of `units`, both whole counts.
    pub fn of(successes: u64, units: u64) -> Self {
        Self {
            successes: successes.min(units) as f64,
            failures: units.saturating_sub(successes) as f64,
        }
    }

    /// Units seen.
    pub fn units(&self) -> f64 {
        self.successes + self.failures
    }
}

/// How the bandit allocates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThompsonConfig {
    /// The least weight any arm keeps (GrowthBook's `min_variation_weight`, 0.01).
    pub floor: f64,
    /// Posterior draws used to estimate the probability of being best.
    pub draws: usize,
    /// Units every arm needs before weights move off an equal split (GrowthBook: 100).
    pub min_units: f64,
    /// The probability of being best at which an arm is declared the winner (0.95).
    pub winner_probability: f64,
    /// The Beta prior's pseudo-successes (1 for a uniform prior).
    pub prior_successes: f64,
    /// The Beta prior's pseudo-failures (1 for a uniform prior).
    pub prior_failures: f64,
}

impl Default for ThompsonConfig {
    fn default() -> Self {
        Self {
            floor: 0.01,
            draws: 10_000,
            min_units: 100.0,
            winner_probability: 0.95,
            prior_successes: 1.0,
            prior_failures: 1.0,
        }
    }
}

/// The bandit's answer for one update.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// The traffic weights, summing to 1.
    pub weights: Vec<f64>,
    /// Each arm's estimated probability of having the highest reward rate.
    pub probability_best: Vec<f64>,
    /// Whether some arm is still below `min_units`, so the weights are an equal split.
    pub exploring: bool,
    /// The arm whose probability of being best reached `winner_probability`, once no
    /// arm is exploring.
    pub winner: Option<usize>,
}

/// Thompson-sampling weights for `arms`.
///
/// `P(best)_i` is the share of `config.draws` joint posterior draws (each arm from
/// `Beta(prior_successes + successes, prior_failures + failures)`) in which arm `i` is
/// highest. Weights are `f + (1 − k·f)·P(best)_i`, or an equal split when `k·f ≥ 1` or
/// while any arm has fewer than `min_units` units.
pub fn thompson_allocation<R: Rng + ?Sized>(
    arms: &[BetaArm],
    config: &ThompsonConfig,
    rng: &mut R,
) -> Result<Allocation, StatsError> {
    let k = arms.len();
    if k < 2 {
        return Err(StatsError::InvalidInput(
            "a bandit needs two or more arms".to_owned(),
        ));
    }
    if config.draws == 0
        || !(config.floor >= 0.0 && config.floor.is_finite())
        || !(config.prior_successes > 0.0 && config.prior_failures > 0.0)
        || !(config.winner_probability > 0.0 && config.winner_probability <= 1.0)
    {
        return Err(StatsError::InvalidInput(format!(
            "invalid bandit configuration {config:?}"
        )));
    }
    let posteriors: Vec<(f64, f64)> = arms
        .iter()
        .map(|a| {
            (
                config.prior_successes + a.successes.max(0.0),
                config.prior_failures + a.failures.max(0.0),
            )
        })
        .collect();
    let mut wins = vec![0u64; k];
    for _ in 0..config.draws {
        let mut best = (0, f64::NEG_INFINITY);
        for (i, &(a, b)) in posteriors.iter().enumerate() {
            let x = sample_beta(rng, a, b);
            if x > best.1 {
                best = (i, x);
            }
        }
        wins[best.0] += 1;
    }
    let probability_best: Vec<f64> = wins
        .iter()
        .map(|w| *w as f64 / config.draws as f64)
        .collect();
    let exploring = arms.iter().any(|a| a.units() < config.min_units);
    let equal = vec![1.0 / k as f64; k];
    let floor_total = config.floor * k as f64;
    let weights = if exploring || floor_total >= 1.0 {
        equal
    } else {
        probability_best
            .iter()
            .map(|p| config.floor + (1.0 - floor_total) * p)
            .collect()
    };
    let winner = if exploring {
        None
    } else {
        probability_best
            .iter()
            .position(|p| *p >= config.winner_probability)
    };
    Ok(Allocation {
        weights,
        probability_best,
        exploring,
        winner,
    })
}

/// A uniform draw in (0, 1].
fn open_unit<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    1.0 - rng.random::<f64>()
}

/// A standard normal draw (Box–Muller).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let (u1, u2) = (open_unit(rng), rng.random::<f64>());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(shape, 1) draw: Marsaglia & Tsang, "A Simple Method for Generating Gamma
/// Variables" (ACM TOMS 2000), with `Gamma(a) = Gamma(a + 1)·U^{1/a}` below shape 1.
fn sample_gamma<R: Rng + ?Sized>(rng: &mut R, shape: f64) -> f64 {
    if shape < 1.0 {
        return sample_gamma(rng, shape + 1.0) * open_unit(rng).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = open_unit(rng);
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// A Beta(a, b) draw as `X/(X + Y)` with `X ~ Gamma(a)`, `Y ~ Gamma(b)`.
fn sample_beta<R: Rng + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    let x = sample_gamma(rng, a);
    let y = sample_gamma(rng, b);
    x / (x + y)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    fn arm(successes: u64, units: u64) -> BetaArm {
        BetaArm::of(successes, units)
    }

    #[test]
    fn beta_draws_have_the_right_mean_and_variance() {
        let mut rng = SmallRng::seed_from_u64(7);
        let (a, b) = (3.0, 7.0);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| sample_beta(&mut rng, a, b)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Beta(3, 7): mean 0.3, variance ab/((a+b)²(a+b+1)) = 21/1100.
        assert!((mean - 0.3).abs() < 0.002, "{mean}");
        assert!((var - 21.0 / 1100.0).abs() < 0.0005, "{var}");
        let small: f64 = (0..n).map(|_| sample_beta(&mut rng, 0.5, 0.5)).sum::<f64>() / n as f64;
        assert!((small - 0.5).abs() < 0.005, "{small}");
    }

    #[test]
    fn clearly_better_arm_wins_and_floor_holds() {
        let mut rng = SmallRng::seed_from_u64(42);
        let arms = [arm(500, 2000), arm(600, 2000), arm(480, 2000)];
        let alloc =
            thompson_allocation(&arms, &ThompsonConfig::default(), &mut rng).expect("valid");
        assert!(!alloc.exploring);
        assert_eq!(alloc.winner, Some(1));
        assert!((alloc.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(alloc.weights.iter().all(|w| *w >= 0.01 - 1e-12));
    }

    #[test]
    fn arms_below_minimum_sample_keep_an_equal_split() {
        let mut rng = SmallRng::seed_from_u64(1);
        let arms = [arm(90, 99), arm(10, 1000)];
        let alloc =
            thompson_allocation(&arms, &ThompsonConfig::default(), &mut rng).expect("valid");
        assert!(alloc.exploring);
        assert_eq!(alloc.weights, vec![0.5, 0.5]);
        assert_eq!(alloc.winner, None);
        assert!(alloc.probability_best[0] > 0.99);
    }

    #[test]
    fn same_seed_same_allocation() {
        let arms = [arm(50, 200), arm(55, 200)];
        let run = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            thompson_allocation(&arms, &ThompsonConfig::default(), &mut rng).expect("valid")
        };
        assert_eq!(run(3), run(3));
    }

    #[test]
    fn fractional_rewards_update_like_their_sums() {
        // Scores 0.9 on 200 units: 180 successes, 20 failures, the same posterior as
        // 180 thumbs-up of 200.
        let scored = BetaArm {
            successes: 0.9 * 200.0,
            failures: 0.1 * 200.0,
        };
        let counted = arm(180, 200);
        assert!((scored.successes - counted.successes).abs() < 1e-9);
        assert!((scored.units() - 200.0).abs() < 1e-9);
        let run = |a: BetaArm| {
            let mut rng = SmallRng::seed_from_u64(9);
            thompson_allocation(&[a, arm(100, 200)], &ThompsonConfig::default(), &mut rng)
                .expect("valid")
                .probability_best
        };
        let (p, q) = (run(scored), run(counted));
        assert!((p[0] - q[0]).abs() < 0.01, "{p:?} {q:?}");
        assert!(p[0] > 0.99, "{p:?}");
    }

    #[test]
    fn floor_too_large_falls_back_to_equal_split() {
        let mut rng = SmallRng::seed_from_u64(2);
        let config = ThompsonConfig {
            floor: 0.6,
            ..ThompsonConfig::default()
        };
        let alloc =
            thompson_allocation(&[arm(100, 200), arm(150, 200)], &config, &mut rng).expect("valid");
        assert_eq!(alloc.weights, vec![0.5, 0.5]);
    }
}
