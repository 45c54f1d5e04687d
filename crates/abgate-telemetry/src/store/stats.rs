//! What a read of the variant store returns: plain data that merges by adding.

use super::sketch::Sketch;

/// Count, sum and sum of squares of one metric: enough for mean, variance and the
/// statistics built on them, and mergeable by adding.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    /// How many values.
    pub n: u64,
    /// Σx.
    pub sum: f64,
    /// Σx².
    pub sum_sq: f64,
}

impl Moments {
    /// Moments of `values`.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut m = Self::default();
        for v in values {
            m.add(v);
        }
        m
    }

    /// Counts one value.
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    /// Adds `other`'s values to these.
    pub fn merge(&mut self, other: &Moments) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    /// The mean, `None` without values.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The sample variance (divided by n−1), `None` under two values. Computed as
    /// (Σx² − (Σx)²/n)/(n−1), clamped at 0 against rounding.
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        Some(((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0))
    }

    /// The sample standard deviation, `None` under two values.
    pub fn std_dev(&self) -> Option<f64> {
        self.variance().map(f64::sqrt)
    }
}

/// A metric kept both as moments and as a quantile sketch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Distribution {
    /// Count, Σx, Σx².
    pub moments: Moments,
    /// Quantiles to within [`Sketch::RELATIVE_ACCURACY`].
    pub sketch: Sketch,
}

impl Distribution {
    /// Adds `other`'s values to these.
    pub fn merge(&mut self, other: &Distribution) {
        self.moments.merge(&other.moments);
        self.sketch.merge(&other.sketch);
    }
}

/// One variant's figures over one or more analysis windows (and replicas): merge by
/// adding.
///
/// `count`/`errors` come from every finished request; the LLM metrics only from
/// successful responses that carried usage or a stream (TTFT also from failed ones that
/// had produced a first token).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WindowStats {
    /// Finished requests.
    pub count: u64,
    /// Of those, errors: a 5xx status or any response flag other than `DI`.
    pub errors: u64,
    /// Request duration (request start to response end), milliseconds, every request.
    pub latency_ms: Distribution,
    /// Time to first token, milliseconds.
    pub ttft_ms: Distribution,
    /// Time per output token after the first, milliseconds: (e2e − ttft)/(tokens − 1).
    pub tpot_ms: Distribution,
    /// Completion tokens per response.
    pub completion_tokens: Moments,
    /// Completion tokens per second of end-to-end time, per response.
    pub tokens_per_second: Moments,
}

impl WindowStats {
    /// Adds `other`'s figures to these (another window, or another replica's).
    pub fn merge(&mut self, other: &WindowStats) {
        self.count += other.count;
        self.errors += other.errors;
        self.latency_ms.merge(&other.latency_ms);
        self.ttft_ms.merge(&other.ttft_ms);
        self.tpot_ms.merge(&other.tpot_ms);
        self.completion_tokens.merge(&other.completion_tokens);
        self.tokens_per_second.merge(&other.tokens_per_second);
    }

    /// errors / count, `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.count > 0).then(|| self.errors as f64 / self.count as f64)
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
            && self.latency_ms.moments.n == 0
            && self.ttft_ms.moments.n == 0
            && self.tpot_ms.moments.n == 0
            && self.completion_tokens.n == 0
            && self.tokens_per_second.n == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_exact_on_small_inputs() {
        let m = Moments::of([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m.n, 8);
        assert_eq!(m.sum, 40.0);
        assert_eq!(m.sum_sq, 232.0);
        assert_eq!(m.mean(), Some(5.0));
        // Σ(x−5)² = 32, over n−1 = 7.
        assert_eq!(m.variance(), Some(32.0 / 7.0));
        assert_eq!(Moments::of([3.0]).variance(), None);
        assert_eq!(Moments::default().mean(), None);
    }

    #[test]
    fn merged_moments_equal_moments_of_union() {
        let mut a = Moments::of([1.0, 2.0, 3.0]);
        a.merge(&Moments::of([10.0, 20.0]));
        assert_eq!(a, Moments::of([1.0, 2.0, 3.0, 10.0, 20.0]));
    }

    #[test]
    fn constant_values_have_zero_variance_not_negative() {
        let m = Moments::of(std::iter::repeat_n(0.1, 1000));
        let v = m.variance().expect("n ≥ 2");
        assert!((0.0..1e-12).contains(&v), "{v}");
    }

    #[test]
    fn stats_merge_adds_counts() {
        let mut a = WindowStats {
            count: 10,
            errors: 1,
            ..Default::default()
        };
        let b = WindowStats {
            count: 30,
            errors: 3,
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!((a.count, a.errors), (40, 4));
        assert_eq!(a.error_rate(), Some(0.1));
        assert_eq!(WindowStats::default().error_rate(), None);
    }
}
