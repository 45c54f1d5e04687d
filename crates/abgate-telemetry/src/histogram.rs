//! Fixed-bucket Prometheus histograms on atomics, and the bucket bounds each family uses.
//!
//! Bounds are integers in the unit recorded (nanoseconds for durations, bytes for sizes),
//! so placing a sample is integer comparison, and each bound carries its `le` text as
//! Prometheus' Go client would print it (`1.8e+06`), so rendering formats no float.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// One bucket's upper bound: `value <= at` counts in it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bound {
    /// The `le` label value.
    pub le: &'static str,
    /// The bound in the recorded unit.
    pub at: u64,
}

const fn b(le: &'static str, at: u64) -> Bound {
    Bound { le, at }
}

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// Istio's default duration buckets, in milliseconds (bounds in ns).
pub(crate) const DURATION_MS: [Bound; 19] = [
    b("0.5", MS / 2),
    b("1", MS),
    b("5", 5 * MS),
    b("10", 10 * MS),
    b("25", 25 * MS),
    b("50", 50 * MS),
    b("100", 100 * MS),
    b("250", 250 * MS),
    b("500", 500 * MS),
    b("1000", 1_000 * MS),
    b("2500", 2_500 * MS),
    b("5000", 5_000 * MS),
    b("10000", 10_000 * MS),
    b("30000", 30_000 * MS),
    b("60000", 60_000 * MS),
    b("300000", 300_000 * MS),
    b("600000", 600_000 * MS),
    b("1.8e+06", 1_800_000 * MS),
    b("3.6e+06", 3_600_000 * MS),
];

/// Decade byte buckets, 1 B to 10 MB: Istio's `requestsize`/`responsesize` defaults
/// (exponential, scale 1, growth factor 10, 8 finite buckets).
pub(crate) const BYTES: [Bound; 8] = [
    b("1", 1),
    b("10", 10),
    b("100", 100),
    b("1000", 1_000),
    b("10000", 10_000),
    b("100000", 100_000),
    b("1e+06", 1_000_000),
    b("1e+07", 10_000_000),
];

/// Time to first token, 1 ms to 120 s (vLLM's low end, trimmed at two minutes).
pub(crate) const TTFT_S: [Bound; 20] = [
    b("0.001", MS),
    b("0.005", 5 * MS),
    b("0.01", 10 * MS),
    b("0.02", 20 * MS),
    b("0.04", 40 * MS),
    b("0.06", 60 * MS),
    b("0.08", 80 * MS),
    b("0.1", 100 * MS),
    b("0.25", 250 * MS),
    b("0.5", 500 * MS),
    b("0.75", 750 * MS),
    b("1", S),
    b("2.5", 2_500 * MS),
    b("5", 5 * S),
    b("7.5", 7_500 * MS),
    b("10", 10 * S),
    b("20", 20 * S),
    b("40", 40 * S),
    b("80", 80 * S),
    b("120", 120 * S),
];

/// Per-token and per-chunk gaps, 1 ms to 10 s (vLLM's TPOT buckets plus 1, 2.5 and 5 ms
/// for small fast models).
pub(crate) const TOKEN_GAP_S: [Bound; 18] = [
    b("0.001", MS),
    b("0.0025", 2_500_000),
    b("0.005", 5 * MS),
    b("0.01", 10 * MS),
    b("0.025", 25 * MS),
    b("0.05", 50 * MS),
    b("0.075", 75 * MS),
    b("0.1", 100 * MS),
    b("0.15", 150 * MS),
    b("0.2", 200 * MS),
    b("0.3", 300 * MS),
    b("0.4", 400 * MS),
    b("0.5", 500 * MS),
    b("0.75", 750 * MS),
    b("1", S),
    b("2.5", 2_500 * MS),
    b("5", 5 * S),
    b("10", 10 * S),
];

/// End-to-end request latency, 100 ms to 16 min (vLLM's, from 0.1 s).
pub(crate) const E2E_S: [Bound; 20] = [
    b("0.1", 100 * MS),
    b("0.25", 250 * MS),
    b("0.5", 500 * MS),
    b("0.8", 800 * MS),
    b("1", S),
    b("1.5", 1_500 * MS),
    b("2", 2 * S),
    b("2.5", 2_500 * MS),
    b("5", 5 * S),
    b("10", 10 * S),
    b("15", 15 * S),
    b("20", 20 * S),
    b("30", 30 * S),
    b("40", 40 * S),
    b("50", 50 * S),
    b("60", 60 * S),
    b("120", 120 * S),
    b("240", 240 * S),
    b("480", 480 * S),
    b("960", 960 * S),
];

/// A duration in whole nanoseconds, saturating (at 584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A duration in whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Per-bucket (not cumulative) counts and a sum. The `+Inf` bucket is not stored: it is
/// the count, which the owner keeps (one count serves several histograms of a slot).
pub(crate) struct AtomicHistogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> AtomicHistogram<N> {
    pub(crate) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts `value` in the first bucket whose bound is at least `value` (none when it
    /// is above them all: `+Inf` only), and adds `sum` to the sum.
    #[inline]
    pub(crate) fn record(&self, bounds: &[Bound; N], value: u64, sum: u64) {
        let i = bounds.partition_point(|b| b.at < value);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Relaxed);
        }
        self.sum.fetch_add(sum, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot<N> {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum: self.sum.load(Relaxed),
        }
    }
}

/// Plain copies of an [`AtomicHistogram`]'s counters, taken for rendering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HistogramSnapshot<const N: usize> {
    pub buckets: [u64; N],
    pub sum: u64,
}

/// A count and a histogram, for families whose histogram has no sibling sharing a count.
pub(crate) struct Timer<const N: usize> {
    count: AtomicU64,
    histogram: AtomicHistogram<N>,
}

impl<const N: usize> Timer<N> {
    pub(crate) fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            histogram: AtomicHistogram::new(),
        }
    }

    /// Records a duration: bucket by nanoseconds, sum in microseconds.
    #[inline]
    pub(crate) fn record(&self, bounds: &[Bound; N], d: Duration) {
        self.histogram.record(bounds, nanos(d), micros(d));
        self.count.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> (u64, HistogramSnapshot<N>) {
        let count = self.count.load(Relaxed);
        (count, self.histogram.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_into_le_buckets_inclusively() {
        let h = AtomicHistogram::<19>::new();
        h.record(&DURATION_MS, nanos(Duration::from_micros(500)), 500); // le 0.5
        h.record(&DURATION_MS, nanos(Duration::from_micros(501)), 501); // le 1
        h.record(&DURATION_MS, nanos(Duration::from_secs(3_600)), 0); // le 3.6e+06
        h.record(&DURATION_MS, nanos(Duration::from_secs(3_601)), 0); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[18], 1);
        assert_eq!(s.buckets.iter().sum::<u64>(), 3);
        assert_eq!(s.sum, 1001);
    }

    #[test]
    fn bounds_increase_strictly() {
        fn check<const N: usize>(bounds: &[Bound; N]) {
            assert!(bounds.windows(2).all(|w| w[0].at < w[1].at));
        }
        check(&DURATION_MS);
        check(&BYTES);
        check(&TTFT_S);
        check(&TOKEN_GAP_S);
        check(&E2E_S);
    }

    #[test]
    fn le_text_states_the_bound() {
        // Each `le` parses to the bound in the rendered unit.
        fn check<const N: usize>(bounds: &[Bound; N], unit: f64) {
            for b in bounds {
                let le: f64 = b.le.parse().expect("le is a number");
                let at = b.at as f64 / unit;
                assert!((le - at).abs() <= at * 1e-12, "{} vs {}", b.le, at);
            }
        }
        check(&DURATION_MS, 1e6);
        check(&BYTES, 1.0);
        check(&TTFT_S, 1e9);
        check(&TOKEN_GAP_S, 1e9);
        check(&E2E_S, 1e9);
    }
}
