//! Per-variant estimates with their standard errors, and per-candidate comparisons
//! (effect, interval, p-value), as reports show them.
//!
//! Estimates are computed from the raw windows when observations are made
//! ([`crate::Observations::from_stats`]) and kept with them (the windows themselves are
//! not serialized), so that every recorded decision and analysis carries them and a
//! finished experiment's report can still compare its variants.

use abgate_stats::{
    sequential, Alternative, ArmStatistic, Difference, Effect, QuantileEstimate, DEFAULT_TUNING,
};
use abgate_telemetry::{Moments, Sketch, WindowStats};
use serde::{Deserialize, Serialize};

use crate::observe::Observations;

/// The z of a two-sided 95% interval: the per-variant bands are fixed-horizon (a
/// picture of the period so far, not a test).
const Z95: f64 = 1.959_963_984_540_054;

/// The level of the comparisons' always-valid intervals.
pub const REPORT_ALPHA: f64 = 0.05;

/// One variant's estimate of one metric: the value, its standard error and units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Its standard error.
    pub se: f64,
    /// Units behind it (requests, or events of the metric).
    pub n: u64,
}

impl Estimate {
    /// The lower end of the 95% interval.
    pub fn lower(&self) -> f64 {
        self.value - Z95 * self.se
    }

    /// The upper end of the 95% interval.
    pub fn upper(&self) -> f64 {
        self.value + Z95 * self.se
    }
}

/// A metric the report estimates and compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// 1 − errors/requests.
    SuccessRate,
    /// p95 of request duration, ms (Deng-Knoblich-Yu interval from the sketch).
    LatencyP95Ms,
    /// p95 of time to first token, ms.
    TtftP95Ms,
    /// Mean request duration, ms.
    LatencyMeanMs,
    /// Mean completion tokens per second, per response.
    TokensPerSecond,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 5] = [
        Metric::SuccessRate,
        Metric::LatencyP95Ms,
        Metric::TtftP95Ms,
        Metric::LatencyMeanMs,
        Metric::TokensPerSecond,
    ];

    /// The name as serialized.
    pub fn key(self) -> &'static str {
        match self {
            Metric::SuccessRate => "success_rate",
            Metric::LatencyP95Ms => "latency_p95_ms",
            Metric::TtftP95Ms => "ttft_p95_ms",
            Metric::LatencyMeanMs => "latency_mean_ms",
            Metric::TokensPerSecond => "tokens_per_second",
        }
    }

    /// The name for people.
    pub fn label(self) -> &'static str {
        match self {
            Metric::SuccessRate => "Success rate",
            Metric::LatencyP95Ms => "p95 latency (ms)",
            Metric::TtftP95Ms => "TTFT p95 (ms)",
            Metric::LatencyMeanMs => "Mean latency (ms)",
            Metric::TokensPerSecond => "Tokens/s",
        }
    }

    /// Whether a higher value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::SuccessRate | Metric::TokensPerSecond)
    }
}

/// One variant's estimates over an observation range; a metric without data is absent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VariantEstimates {
    /// Success rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<Estimate>,
    /// p95 latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<Estimate>,
    /// TTFT p95, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95_ms: Option<Estimate>,
    /// Mean latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_mean_ms: Option<Estimate>,
    /// Mean tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<Estimate>,
}

impl VariantEstimates {
    /// The estimates of one variant's merged windows.
    pub fn from_stats(s: &WindowStats) -> Self {
        Self {
            success_rate: proportion(s.count, s.count.saturating_sub(s.errors)),
            latency_p95_ms: quantile(&s.latency_ms.sketch),
            ttft_p95_ms: quantile(&s.ttft_ms.sketch),
            latency_mean_ms: mean(&s.latency_ms.moments),
            tokens_per_second: mean(&s.tokens_per_second),
        }
    }

    /// The success rate from counts alone (a metric source without raw windows).
    pub fn from_counts(requests: u64, errors: u64) -> Self {
        Self {
            success_rate: proportion(requests, requests.saturating_sub(errors)),
            ..Self::default()
        }
    }

    /// The estimate of `metric`.
    pub fn get(&self, metric: Metric) -> Option<&Estimate> {
        match metric {
            Metric::SuccessRate => self.success_rate.as_ref(),
            Metric::LatencyP95Ms => self.latency_p95_ms.as_ref(),
            Metric::TtftP95Ms => self.ttft_p95_ms.as_ref(),
            Metric::LatencyMeanMs => self.latency_mean_ms.as_ref(),
            Metric::TokensPerSecond => self.tokens_per_second.as_ref(),
        }
    }
}

fn proportion(n: u64, successes: u64) -> Option<Estimate> {
    (n > 0).then(|| {
        let p = successes.min(n) as f64 / n as f64;
        Estimate {
            value: p,
            se: (p * (1.0 - p) / n as f64).sqrt(),
            n,
        }
    })
}

fn mean(m: &Moments) -> Option<Estimate> {
    (m.n >= 2).then(|| Estimate {
        value: m.mean().unwrap_or(0.0),
        se: (m.variance().unwrap_or(0.0) / m.n as f64).sqrt(),
        n: m.n,
    })
}

fn quantile(sketch: &Sketch) -> Option<Estimate> {
    let q = QuantileEstimate::from_sketch(sketch, 0.95).ok()?;
    q.check().ok()?;
    let n = q.units();
    Some(Estimate {
        value: q.value(),
        se: (q.variance() / n as f64).sqrt(),
        n,
    })
}

/// A candidate against the baseline on one metric, over one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The metric (`success_rate`, `latency_p95_ms`, ...).
    pub metric: Metric,
    /// The candidate.
    pub candidate: String,
    /// The baseline.
    pub baseline: String,
    /// The candidate's estimate and its 95% interval.
    pub candidate_value: Estimate,
    /// The baseline's estimate.
    pub baseline_value: Estimate,
    /// Effect, absolute: candidate − baseline.
    pub absolute: f64,
    /// The absolute effect's always-valid two-sided interval at [`REPORT_ALPHA`].
    pub absolute_interval: [f64; 2],
    /// Effect, relative: (candidate − baseline) / baseline.
    pub relative: f64,
    /// The relative effect's always-valid interval (delta method).
    pub relative_interval: [f64; 2],
    /// The always-valid p-value of "no difference" (relative).
    pub p_value: f64,
    /// Whether the candidate is better with confidence (`better`), worse (`worse`), or
    /// neither (`inconclusive`).
    pub verdict: String,
}

/// Every candidate compared with `baseline` on every metric both have in `obs`:
/// always-valid two-sided intervals (GrowthBook's asymptotic confidence sequence, tuned
/// for 5,000 units) at [`REPORT_ALPHA`], per comparison (not adjusted for the number
/// of comparisons: the decisions' own tests are; these are for reading).
pub fn compare(names: &[String], baseline: usize, obs: &Observations) -> Vec<Comparison> {
    let mut out = Vec::new();
    let estimates = obs.estimates_or_counts();
    let Some(b) = estimates.get(baseline) else {
        return out;
    };
    for metric in Metric::ALL {
        for (c, est) in estimates.iter().enumerate() {
            if c == baseline {
                continue;
            }
            let (Some(ce), Some(be)) = (est.get(metric), b.get(metric)) else {
                continue;
            };
            if let Some(cmp) = comparison(metric, &names[c], &names[baseline], ce, be) {
                out.push(cmp);
            }
        }
    }
    out
}

fn comparison(
    metric: Metric,
    candidate: &str,
    baseline: &str,
    c: &Estimate,
    b: &Estimate,
) -> Option<Comparison> {
    let absolute = c.value - b.value;
    let se_abs = (c.se * c.se + b.se * b.se).sqrt();
    let units = c.n + b.n;
    let test = |estimate: f64, se: f64, difference| {
        if !(se > 0.0 && se.is_finite()) {
            return None;
        }
        let e = Effect {
            estimate,
            standard_error: se,
            units,
            dof: f64::INFINITY,
            difference,
        };
        sequential(&e, Alternative::TwoSided, REPORT_ALPHA, DEFAULT_TUNING).ok()
    };
    let abs = test(absolute, se_abs, Difference::Absolute)?;
    let (relative, rel) = if b.value != 0.0 {
        let r = absolute / b.value.abs();
        let se = (c.se * c.se / (b.value * b.value)
            + c.value * c.value * b.se * b.se / b.value.powi(4))
        .sqrt();
        (r, test(r, se, Difference::Relative))
    } else {
        (f64::NAN, None)
    };
    let (rel_interval, p) = match &rel {
        Some(r) => ([r.interval.lower, r.interval.upper], r.p_value),
        None => ([f64::NAN, f64::NAN], abs.p_value),
    };
    let significant = abs.interval.lower > 0.0 || abs.interval.upper < 0.0;
    let verdict = if !significant {
        "inconclusive"
    } else if (absolute > 0.0) == metric.higher_is_better() {
        "better"
    } else {
        "worse"
    };
    Some(Comparison {
        metric,
        candidate: candidate.to_owned(),
        baseline: baseline.to_owned(),
        candidate_value: *c,
        baseline_value: *b,
        absolute,
        absolute_interval: [abs.interval.lower, abs.interval.upper],
        relative,
        relative_interval: rel_interval,
        p_value: if p.is_nan() { 1.0 } else { p.min(1.0) },
        verdict: verdict.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::seed_experiment;

    fn stats(n: u64, errors: u64, latency: f64) -> WindowStats {
        let mut s = WindowStats {
            count: n,
            errors,
            ..WindowStats::default()
        };
        for i in 0..n {
            let x = latency * (0.5 + (i % 100) as f64 / 100.0);
            s.latency_ms.moments.add(x);
            s.latency_ms.sketch.add(x);
        }
        s
    }

    #[test]
    fn estimates_carry_value_and_interval() {
        let e = VariantEstimates::from_stats(&stats(1000, 50, 400.0));
        let sr = e.success_rate.expect("requests");
        assert!((sr.value - 0.95).abs() < 1e-12);
        assert!((sr.se - (0.95f64 * 0.05 / 1000.0).sqrt()).abs() < 1e-12);
        assert!(sr.lower() < 0.95 && sr.upper() > 0.95);
        let p95 = e.latency_p95_ms.expect("latency");
        assert!((p95.value - 580.0).abs() < 15.0, "{p95:?}");
        assert!(e.ttft_p95_ms.is_none());
    }

    #[test]
    fn a_slower_candidate_is_worse_with_an_interval_above_zero() {
        let spec = seed_experiment();
        let obs = Observations::from_stats(
            &spec,
            vec![stats(5000, 50, 400.0), stats(5000, 50, 600.0)],
            0,
            1,
        );
        let names: Vec<String> = spec.variants.iter().map(|v| v.name.clone()).collect();
        let cmp = compare(&names, 0, &obs);
        let p95 = cmp
            .iter()
            .find(|c| c.metric == Metric::LatencyP95Ms)
            .expect("p95 compared");
        assert!((p95.relative - 0.5).abs() < 0.05, "{p95:?}");
        assert!(p95.absolute_interval[0] > 0.0, "{p95:?}");
        assert!(p95.relative_interval[0] > 0.0, "{p95:?}");
        assert!(p95.p_value < 1e-6, "{p95:?}");
        assert_eq!(p95.verdict, "worse");
        let sr = cmp
            .iter()
            .find(|c| c.metric == Metric::SuccessRate)
            .expect("success rate compared");
        assert_eq!(sr.verdict, "inconclusive");
        assert!(sr.absolute_interval[0] < 0.0 && sr.absolute_interval[1] > 0.0);
    }
}
