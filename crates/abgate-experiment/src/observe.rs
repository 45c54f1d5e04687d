//! What was observed of each variant over one period: the input of analysis.

use abgate_config::model::Experiment;
use abgate_telemetry::WindowStats;
use serde::{Deserialize, Serialize};

use crate::estimate::VariantEstimates;

/// One variant's figures over an observation range, as the seed's controller collected
/// them (p95 latency, success rate, token rate), plus what the report shows.
///
/// A figure is `None` when nothing measured it; analysis never replaces a missing
/// figure with a number (the seed read a missing success rate as 0 and a missing
/// latency as 999999, so an idle candidate was "rolled back").
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VariantObservation {
    /// The variant's name.
    pub variant: String,
    /// Finished requests.
    pub requests: u64,
    /// Of those, failed ones (a 5xx or a response flag other than `DI`).
    pub errors: u64,
    /// 95th percentile of request duration, ms.
    pub latency_p95_ms: Option<f64>,
    /// Mean request duration, ms.
    pub latency_mean_ms: Option<f64>,
    /// 95th percentile of time to first token, ms.
    pub ttft_p95_ms: Option<f64>,
    /// Mean completion tokens per second of end-to-end time, per response. (The seed's
    /// `rate(llm_tokens_generated_total[5m])` is a throughput that grows with the
    /// variant's share of traffic, so it cannot compare variants on a split; this does.)
    pub tokens_per_second: Option<f64>,
    /// Mean completion tokens per response (output length; what a mirror compares).
    pub completion_tokens_mean: Option<f64>,
}

impl VariantObservation {
    /// An observation with nothing measured.
    pub fn empty(variant: &str) -> Self {
        Self {
            variant: variant.to_owned(),
            ..Self::default()
        }
    }

    /// The figures of `stats` (one variant's merged windows) for `variant`.
    pub fn from_stats(variant: &str, stats: &WindowStats) -> Self {
        Self {
            variant: variant.to_owned(),
            requests: stats.count,
            errors: stats.errors,
            latency_p95_ms: stats.latency_ms.sketch.quantile(0.95),
            latency_mean_ms: stats.latency_ms.moments.mean(),
            ttft_p95_ms: stats.ttft_ms.sketch.quantile(0.95),
            tokens_per_second: stats.tokens_per_second.mean(),
            completion_tokens_mean: stats.completion_tokens.mean(),
        }
    }

    /// 1 − errors / requests; `None` without requests (no data is not a 0% success).
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0)
            .then(|| 1.0 - self.errors.min(self.requests) as f64 / self.requests as f64)
    }
}

/// Every variant's figures over one observation range, `[from, to)` in unix ms.
///
/// The range must lie within the experiment's current period (`from ≥
/// ExperimentState::period_started_at`): only traffic served under the split in force
/// is compared. [`crate::step`] holds when it does not.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Observations {
    /// One per variant, indexed like `Experiment::variants`.
    pub variants: Vec<VariantObservation>,
    /// Start of the range, unix ms.
    pub from: u64,
    /// End of the range, unix ms.
    pub to: u64,
    /// The raw windows behind `variants`, indexed the same way, when the metric source
    /// has them (the built-in store does; Prometheus does not): counts, moments (n, Σx,
    /// Σx²) and quantile sketches, which merge exactly. A statistical policy needs these
    /// (means and variances for confidence sequences; sketches to merge periods); the
    /// classic policy reads only `variants`. Not serialized: a sketch is up to 1,101
    /// buckets per metric, and decision records keep the summaries. Empty when absent,
    /// so a policy that needs them must treat their absence as inconclusive.
    #[serde(skip)]
    pub stats: Vec<WindowStats>,
    /// Feedback scores posted for each variant in the range (indexed like `variants`),
    /// for a bandit rewarded by feedback; empty when none were read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback: Vec<RewardTotals>,
    /// Each variant's estimates with their standard errors (indexed like `variants`),
    /// computed from the raw windows when there are any, so that records keep them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub estimates: Vec<VariantEstimates>,
}

/// Sums of one arm's reward: `n` units, Σr and Σr², with every reward r in [0, 1] (a
/// success counts 1, a failure 0; a feedback score its value).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardTotals {
    /// Units rewarded or not (requests, or scores).
    pub n: u64,
    /// Σ reward.
    pub sum: f64,
    /// Σ reward².
    pub sum_sq: f64,
}

impl RewardTotals {
    /// `successes` of `n` binary rewards.
    pub fn binary(n: u64, successes: u64) -> Self {
        let s = successes.min(n) as f64;
        Self {
            n,
            sum: s,
            sum_sq: s,
        }
    }

    /// One more reward `r` (clamped to [0, 1]).
    pub fn add(&mut self, r: f64) {
        let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        self.n += 1;
        self.sum += r;
        self.sum_sq += r * r;
    }

    /// Adds `other`'s sums to these.
    pub fn merge(&mut self, other: &RewardTotals) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    /// The mean reward, `None` without units.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

impl Observations {
    /// Observations of `spec`'s variants from their merged windows (`stats` indexed like
    /// `spec.variants`; a missing entry counts as nothing observed). Keeps `stats`.
    pub fn from_stats(spec: &Experiment, stats: Vec<WindowStats>, from: u64, to: u64) -> Self {
        let mut stats = stats;
        stats.resize_with(spec.variants.len(), WindowStats::default);
        let variants = spec
            .variants
            .iter()
            .zip(&stats)
            .map(|(v, s)| VariantObservation::from_stats(&v.name, s))
            .collect();
        let estimates = stats.iter().map(VariantEstimates::from_stats).collect();
        Self {
            variants,
            from,
            to,
            stats,
            feedback: Vec::new(),
            estimates,
        }
    }

    /// Observations of nothing, for every variant of `spec`.
    pub fn empty(spec: &Experiment, from: u64, to: u64) -> Self {
        Self {
            variants: spec
                .variants
                .iter()
                .map(|v| VariantObservation::empty(&v.name))
                .collect(),
            from,
            to,
            stats: Vec::new(),
            feedback: Vec::new(),
            estimates: Vec::new(),
        }
    }

    /// Each variant's estimates: those kept, else the success rate from the counts.
    pub fn estimates_or_counts(&self) -> Vec<VariantEstimates> {
        if self.estimates.len() == self.variants.len() {
            return self.estimates.clone();
        }
        self.variants
            .iter()
            .map(|v| VariantEstimates::from_counts(v.requests, v.errors))
            .collect()
    }

    /// These observations with the feedback scores posted for each variant (indexed
    /// like the variants).
    pub fn with_feedback(mut self, feedback: Vec<RewardTotals>) -> Self {
        self.feedback = feedback;
        self
    }

    /// The raw windows of variant `i`, when the source provided them.
    pub fn stats_of(&self, i: usize) -> Option<&WindowStats> {
        self.stats.get(i)
    }

    /// Why these observations cannot be analysed against `spec`, if they cannot: a
    /// different number of variants, or names in another order.
    pub(crate) fn mismatch(&self, spec: &Experiment) -> Option<String> {
        let ours: Vec<&str> = self.variants.iter().map(|v| v.variant.as_str()).collect();
        let theirs: Vec<&str> = spec.variants.iter().map(|v| v.name.as_str()).collect();
        (ours != theirs).then(|| {
            format!(
                "observations are for variants [{}] but the experiment's are [{}]",
                ours.join(", "),
                theirs.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use abgate_telemetry::{Distribution, Moments, Sketch};

    use super::*;
    use crate::testing::seed_experiment;

    fn latencies() -> Vec<f64> {
        (1..=100).map(f64::from).collect()
    }

    #[test]
    fn from_stats_reads_p95_means_and_counts() {
        let stats = WindowStats {
            count: 100,
            errors: 3,
            latency_ms: Distribution {
                moments: Moments::of(latencies()),
                sketch: Sketch::of(latencies()),
            },
            tokens_per_second: Moments::of([40.0, 60.0]),
            completion_tokens: Moments::of([100.0, 300.0]),
            ..WindowStats::default()
        };
        let o = VariantObservation::from_stats("v1-1", &stats);
        assert_eq!((o.requests, o.errors), (100, 3));
        let p95 = o.latency_p95_ms.expect("latency recorded");
        // Rank ⌊0.95·99⌋ = 94, the value 95, within the sketch's 1%.
        assert!(
            (p95 - 95.0).abs() <= 95.0 * Sketch::RELATIVE_ACCURACY,
            "{p95}"
        );
        assert_eq!(o.latency_mean_ms, Some(50.5));
        assert_eq!(o.tokens_per_second, Some(50.0));
        assert_eq!(o.completion_tokens_mean, Some(200.0));
        assert_eq!(o.ttft_p95_ms, None);
        assert_eq!(o.success_rate(), Some(0.97));
    }

    #[test]
    fn no_requests_has_no_success_rate() {
        let o = VariantObservation::from_stats("v", &WindowStats::default());
        assert_eq!(o.success_rate(), None);
        assert_eq!(o.latency_p95_ms, None);
    }

    #[test]
    fn observations_keep_raw_stats_but_do_not_serialize_them() {
        let spec = seed_experiment();
        let stats = vec![WindowStats {
            count: 5,
            ..WindowStats::default()
        }];
        let obs = Observations::from_stats(&spec, stats, 10, 20);
        assert_eq!(obs.variants.len(), 2);
        assert_eq!(obs.variants[1].variant, "v1-1");
        assert_eq!(obs.stats_of(0).map(|s| s.count), Some(5));
        assert_eq!(obs.stats_of(1).map(|s| s.count), Some(0));
        let json = serde_json::to_value(&obs).expect("serializes");
        assert!(json.get("stats").is_none());
        let back: Observations = serde_json::from_value(json).expect("deserializes");
        assert!(back.stats.is_empty());
        assert_eq!(back.variants, obs.variants);
    }
}
