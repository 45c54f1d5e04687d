//! The `bandit` strategy's arithmetic: each arm's reward, Thompson-sampling weights with
//! a floor, and the winner rule. [`crate::step`] composes it with the guardrails.
//!
//! The posterior is over every period (the sums of completed periods are carried in
//! [`ExperimentState::rewards`], the current one's come from the observations), so
//! the reward rates are assumed not to drift while the weights move; the guardrails
//! still judge each period on its own, as for every strategy.

use abgate_config::model::{BanditReward, Experiment};
use abgate_stats::{
    sequential, thompson_allocation, Alternative, BetaArm, Difference, Effect, Proportion,
    SampleMean, StatsError, ThompsonConfig, DEFAULT_TUNING,
};
use abgate_telemetry::{Sketch, WindowStats};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::fmt::{num, pval, signed_points};
use crate::observe::{Observations, RewardTotals};
use crate::state::ExperimentState;

/// Posterior draws behind each probability of being best (GrowthBook's count): the
/// Monte Carlo error of a probability near 0.95 is about 0.002.
pub const DRAWS: usize = 10_000;

/// The most periods a bandit's planned course counts (see [`planned_periods`]).
const MAX_PLANNED_PERIODS: u64 = 100_000;

/// How many periods a bandit's course may have: one per interval of its duration plus
/// the first (the split can change at most once per analysis). The sequential policy
/// divides its alpha by this, so that guardrails looked at in every period keep the
/// whole course's false-rollback rate at or under alpha.
pub(crate) fn planned_periods(spec: &Experiment) -> u32 {
    let interval = spec.interval.as_millis().max(1);
    let looks = (spec.duration.as_millis() / interval) as u64;
    u32::try_from(1 + looks.min(MAX_PLANNED_PERIODS)).unwrap_or(u32::MAX)
}

/// The reward's name as the reasons print it.
pub(crate) fn reward_name(reward: &BanditReward) -> String {
    match reward {
        BanditReward::Success => "success".to_owned(),
        BanditReward::Feedback => "feedback score".to_owned(),
        BanditReward::Goodput {
            ttft_ms,
            latency_ms,
        } => {
            let mut slo = Vec::new();
            if let Some(t) = ttft_ms {
                slo.push(format!("TTFT ≤ {} ms", num(*t, 1)));
            }
            if let Some(l) = latency_ms {
                slo.push(format!("latency ≤ {} ms", num(*l, 1)));
            }
            format!("goodput (success with {})", slo.join(" and "))
        }
    }
}

/// Each variant's reward over the range `obs` covers: successes of requests
/// (`success`), successes within the SLO (`goodput`, from the raw windows' sketches),
/// or the feedback scores posted. `Err` says why there is none (no raw windows for
/// goodput).
pub fn period_rewards(spec: &Experiment, obs: &Observations) -> Result<Vec<RewardTotals>, String> {
    let k = spec.variants.len();
    match &spec.bandit.reward {
        BanditReward::Success => Ok(obs
            .variants
            .iter()
            .map(|v| RewardTotals::binary(v.requests, v.requests.saturating_sub(v.errors)))
            .collect()),
        BanditReward::Feedback => {
            let mut f = obs.feedback.clone();
            f.resize(k, RewardTotals::default());
            Ok(f)
        }
        BanditReward::Goodput {
            ttft_ms,
            latency_ms,
        } => {
            if obs.stats.len() != k {
                return Err(
                    "reward goodput needs the raw windows (latency and TTFT sketches) that the built-in metric store gives; this metric source gave none"
                        .to_owned(),
                );
            }
            Ok(obs
                .stats
                .iter()
                .map(|s| RewardTotals::binary(s.count, good(s, *ttft_ms, *latency_ms)))
                .collect())
        }
    }
}

/// Requests that succeeded within the SLO: the requests, less the errors, less those
/// slower than each limit. The store keeps each figure's distribution apart, so a
/// request that both failed and was slow counts twice against it: the figure is a
/// lower bound, exact when at most one of the three conditions can fail a request
/// (errors answer fast, or only one limit is set and errors are rare). Thresholds are
/// read from the sketches, within their 1% relative error.
fn good(s: &WindowStats, ttft_ms: Option<f64>, latency_ms: Option<f64>) -> u64 {
    let slow = |sketch: &Sketch, limit: Option<f64>| {
        limit.map_or(0, |l| sketch.count() - count_at_most(sketch, l))
    };
    s.count
        .saturating_sub(s.errors)
        .saturating_sub(slow(&s.latency_ms.sketch, latency_ms))
        .saturating_sub(slow(&s.ttft_ms.sketch, ttft_ms))
}

/// How many of the sketch's values are at most `limit` (within the sketch's relative
/// error): the largest rank whose reported value is ≤ `limit`, plus one, by bisection
/// over ranks.
pub(crate) fn count_at_most(sketch: &Sketch, limit: f64) -> u64 {
    let n = sketch.count();
    if n == 0 {
        return 0;
    }
    // The value of 0-based rank r: `quantile` reads rank ⌊q·(n−1)⌋.
    let at = |r: u64| {
        let q = if n == 1 {
            0.0
        } else {
            ((r as f64 + 0.5) / (n - 1) as f64).min(1.0)
        };
        sketch.quantile(q).unwrap_or(f64::INFINITY)
    };
    if at(0) > limit {
        return 0;
    }
    let (mut lo, mut hi) = (0u64, n - 1);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if at(mid) <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo + 1
}

/// Whole percentages `f + (100 − k·f)·p_i` summing to 100, by largest remainder: every
/// arm keeps at least the floor `f`.
pub(crate) fn floored_weights(probability_best: &[f64], floor: u32) -> Vec<u32> {
    let k = probability_best.len() as u32;
    let floor = if floor.saturating_mul(k) >= 100 {
        0
    } else {
        floor
    };
    let rest = 100 - floor * k;
    let total: f64 = probability_best.iter().map(|p| p.max(0.0)).sum();
    if total <= 0.0 {
        return crate::split::percentages(&vec![1; k as usize]);
    }
    let shares: Vec<f64> = probability_best
        .iter()
        .map(|p| p.max(0.0) / total * f64::from(rest))
        .collect();
    let mut out: Vec<u32> = shares.iter().map(|s| s.floor() as u32).collect();
    let given: u32 = out.iter().sum();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (shares[a] - shares[a].floor(), shares[b] - shares[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().take(rest.saturating_sub(given) as usize) {
        out[i] += 1;
    }
    out.iter().map(|w| w + floor).collect()
}

/// A 64-bit FNV-1a hash: the seed of one look's posterior draws.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One look of the bandit: sums, probabilities of being best, proposed weights and
/// the winner, if the rule names one.
#[derive(Debug, Clone)]
pub(crate) struct Look {
    /// Every completed period plus this one, per arm.
    pub totals: Vec<RewardTotals>,
    /// This period's, per arm.
    pub period: Vec<RewardTotals>,
    /// Each arm's probability of having the highest mean reward.
    pub probability_best: Vec<f64>,
    /// Thompson-sampling weights with the floor, percent.
    pub weights: Vec<u32>,
    /// The arm the winner rule names.
    pub winner: Option<usize>,
    /// The winner rule's numbers, in words.
    pub rule: String,
}

/// The reward sums of every completed period plus `period`.
pub(crate) fn totals(state: &ExperimentState, period: &[RewardTotals]) -> Vec<RewardTotals> {
    period
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut t = state.rewards.get(i).copied().unwrap_or_default();
            t.merge(p);
            t
        })
        .collect()
}

/// Thompson sampling over the totals (seeded by the experiment, the period and the
/// units seen, so that the same inputs always give the same look), and the winner
/// rule: the arm whose probability of being best reaches `winnerProbability`, provided
/// its always-valid two-sided confidence sequence against every other arm excludes
/// equality at `α = 1 − winnerProbability` shared over the pairs of arms (Bonferroni).
/// The second condition is what keeps looking at every interval honest: a posterior
/// probability crosses any fixed level sooner or later under equal arms, while the
/// confidence sequence does so with probability at most α over the whole course.
pub(crate) fn look(
    spec: &Experiment,
    state: &ExperimentState,
    period: Vec<RewardTotals>,
) -> Result<Look, String> {
    let plan = &spec.bandit;
    let totals = totals(state, &period);
    let arms: Vec<BetaArm> = totals
        .iter()
        .map(|t| BetaArm {
            successes: t.sum,
            failures: (t.n as f64 - t.sum).max(0.0),
        })
        .collect();
    let units: u64 = totals.iter().map(|t| t.n).sum();
    let seed = fnv(&[
        spec.id.as_bytes(),
        &state.period.to_le_bytes(),
        &units.to_le_bytes(),
    ]);
    let mut rng = SmallRng::seed_from_u64(seed);
    let config = ThompsonConfig {
        floor: f64::from(plan.min_weight) / 100.0,
        draws: DRAWS,
        min_units: 0.0,
        winner_probability: plan.winner_probability,
        ..ThompsonConfig::default()
    };
    let allocation = thompson_allocation(&arms, &config, &mut rng).map_err(|e| e.to_string())?;
    let p = allocation.probability_best;
    let weights = floored_weights(&p, plan.min_weight);
    let best = (0..p.len())
        .max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)))
        .unwrap_or(0);
    let k = totals.len();
    let pairs = (k * (k - 1) / 2).max(1);
    let alpha = (1.0 - plan.winner_probability) / pairs as f64;
    let name = |i: usize| spec.variants[i].name.as_str();
    let binary = !matches!(plan.reward, BanditReward::Feedback);
    let mut excluded = true;
    let mut parts = Vec::new();
    for j in (0..k).filter(|&j| j != best) {
        let diff = difference(&totals[j], &totals[best], binary)
            .and_then(|e| sequential(&e, Alternative::TwoSided, alpha, DEFAULT_TUNING));
        match diff {
            Ok(r) => {
                excluded &= r.interval.lower > 0.0;
                parts.push(format!(
                    "{} − {} {} (always-valid interval {} to {}, p {})",
                    name(best),
                    name(j),
                    signed_points(r.estimate),
                    signed_points(r.interval.lower),
                    signed_points(r.interval.upper),
                    pval(r.p_value)
                ));
            }
            Err(e) => {
                excluded = false;
                parts.push(format!("{} − {}: no interval ({e})", name(best), name(j)));
            }
        }
    }
    let reached = p[best] >= plan.winner_probability;
    let winner = (reached && excluded).then_some(best);
    let rule = format!(
        "winner rule: P(best) ≥ {} and every difference's always-valid interval at α {} above 0: {} P(best) {} ({}); {}",
        num(plan.winner_probability, 4),
        num(alpha, 4),
        name(best),
        num(p[best], 4),
        if reached { "reached" } else { "not reached" },
        parts.join("; ")
    );
    Ok(Look {
        totals,
        period,
        probability_best: p,
        weights,
        winner,
        rule,
    })
}

/// The difference `b − a` of two arms' mean rewards. Binary rewards (success,
/// goodput) are proportions, compared with [`Effect::between_proportions`]: an arm
/// with no failures (a small arm at the floor, or a service that rarely fails) keeps
/// a variance, where the per-arm one would be 0 and the interval would rest on the
/// other arm alone. Feedback scores are means (Welch).
fn difference(a: &RewardTotals, b: &RewardTotals, binary: bool) -> Result<Effect, StatsError> {
    if binary {
        let proportion = |t: &RewardTotals| Proportion::new(t.n, t.sum.round().max(0.0) as u64);
        return Effect::between_proportions(&proportion(a)?, &proportion(b)?);
    }
    let a = SampleMean::new(a.n, a.sum, a.sum_sq)?;
    let b = SampleMean::new(b.n, b.sum, b.sum_sq)?;
    Effect::between(&a, &b, Difference::Absolute)
}

/// One arm's reward sums as the reasons print them: `0.9012 (4506/5000; 451/500 this
/// period)`.
pub(crate) fn describe_reward(total: &RewardTotals, period: &RewardTotals) -> String {
    let mean = total.mean().map_or_else(|| "—".to_owned(), |m| num(m, 4));
    format!(
        "{mean} ({}/{}; {}/{} this period)",
        num(total.sum, 2),
        total.n,
        num(period.sum, 2),
        period.n
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floored_weights_keep_the_floor_and_sum_to_100() {
        assert_eq!(floored_weights(&[0.0, 1.0], 5), vec![5, 95]);
        assert_eq!(floored_weights(&[0.5, 0.5], 5), vec![50, 50]);
        assert_eq!(floored_weights(&[0.2, 0.3, 0.5], 10), vec![24, 31, 45]);
        assert_eq!(floored_weights(&[0.0, 0.0, 1.0], 0), vec![0, 0, 100]);
        // A floor that leaves nothing to allocate is dropped rather than broken.
        assert_eq!(floored_weights(&[0.1, 0.9], 50), vec![10, 90]);
        for p in [
            [0.333, 0.333, 0.334],
            [0.01, 0.02, 0.97],
            [0.9999, 0.0001, 0.0],
        ] {
            let w = floored_weights(&p, 3);
            assert_eq!(w.iter().sum::<u32>(), 100, "{w:?}");
            assert!(w.iter().all(|&x| x >= 3), "{w:?}");
        }
    }

    #[test]
    fn count_at_most_reads_ranks_from_the_sketch() {
        let s = Sketch::of((1..=1000).map(f64::from));
        let c = count_at_most(&s, 500.0);
        // Within the sketch's 1%: 495..=505 of the values are at most 500.
        assert!((490..=510).contains(&c), "{c}");
        assert_eq!(count_at_most(&s, 0.5), 0);
        assert_eq!(count_at_most(&s, 5000.0), 1000);
        assert_eq!(count_at_most(&Sketch::of([7.0]), 10.0), 1);
        assert_eq!(count_at_most(&Sketch::new(), 10.0), 0);
    }

    #[test]
    fn goodput_discounts_errors_and_slow_requests() {
        let mut s = WindowStats {
            count: 100,
            errors: 10,
            ..WindowStats::default()
        };
        for i in 0..100 {
            s.latency_ms.sketch.add(if i < 20 { 3000.0 } else { 500.0 });
        }
        for _ in 0..90 {
            s.ttft_ms.sketch.add(50.0);
        }
        assert_eq!(good(&s, None, Some(2000.0)), 70);
        assert_eq!(good(&s, Some(100.0), None), 90);
        assert_eq!(good(&s, Some(10.0), None), 0);
    }

    #[test]
    fn planned_periods_count_every_interval() {
        let spec = crate::testing::experiment("strategy: bandit\ninterval: 5m\nduration: 1h");
        assert_eq!(planned_periods(&spec), 13);
    }
}
