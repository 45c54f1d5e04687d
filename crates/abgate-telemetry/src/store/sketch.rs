//! A log-bucketed quantile sketch (DDSketch's mapping) with a stated relative error.
//!
//! Bucket `k` holds the values in `(γ^(k-1), γ^k]` with `γ = (1+α)/(1-α)`; a quantile is
//! answered with `2γ^k/(γ+1)`, which is within `α` (relative) of every value in the
//! bucket. The key range is fixed, `MIN_KEY..=MAX_KEY`, covering 0.001 to 3,600,000 in
//! the metric's unit (1 µs to 1 h for milliseconds): values below are counted in the
//! lowest bucket, values above in the highest, and lose the guarantee.

/// The relative accuracy α.
pub(crate) const ALPHA: f64 = 0.01;
/// γ = (1+α)/(1−α).
const GAMMA: f64 = (1.0 + ALPHA) / (1.0 - ALPHA);
/// ln γ = 2·atanh(α), written out (`f64::ln` is not `const`); a test checks it.
const LN_GAMMA: f64 = 0.020_000_666_706_669_524;
/// The smallest value with the full guarantee.
pub(crate) const MIN_VALUE: f64 = 0.001;
/// The largest value with the full guarantee.
pub(crate) const MAX_VALUE: f64 = 3_600_000.0;
/// ⌈log_γ MIN_VALUE⌉; a test checks it.
const MIN_KEY: i32 = -345;
/// ⌈log_γ MAX_VALUE⌉; a test checks it.
const MAX_KEY: i32 = 755;
/// Buckets per sketch.
pub(crate) const BUCKETS: usize = (MAX_KEY - MIN_KEY + 1) as usize;

/// The bucket (0-based, `key - MIN_KEY`) that counts `x`.
#[inline]
pub(crate) fn bucket_of(x: f64) -> usize {
    // NaN and everything at or below the floor go to the lowest bucket.
    if x.is_nan() || x <= MIN_VALUE {
        return 0;
    }
    if x >= MAX_VALUE {
        return BUCKETS - 1;
    }
    let key = (x.ln() / LN_GAMMA).ceil() as i32;
    (key.clamp(MIN_KEY, MAX_KEY) - MIN_KEY) as usize
}

/// The value reported for a bucket: the point within α of both its ends.
fn value_of(bucket: usize) -> f64 {
    let key = bucket as f64 + f64::from(MIN_KEY);
    (key * LN_GAMMA).exp() * 2.0 / (GAMMA + 1.0)
}

/// A quantile sketch of one metric: bucket counts over a fixed logarithmic grid.
///
/// Merging adds counts, so the sketch of a union of samples is the merge of their
/// sketches, exactly, whatever the order (windows, replicas). Quantiles are within
/// [`Sketch::RELATIVE_ACCURACY`] of the true sample quantile for values in
/// [`Sketch::MIN_VALUE`]..=[`Sketch::MAX_VALUE`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sketch {
    /// Bucket index of `counts[0]`; 0 when empty.
    offset: usize,
    /// Counts from the lowest to the highest non-empty bucket (so equal sketches compare
    /// equal).
    counts: Vec<u64>,
}

impl Sketch {
    /// The relative error bound α of [`Sketch::quantile`]: 1%.
    pub const RELATIVE_ACCURACY: f64 = ALPHA;
    /// Values at or below this (in the metric's unit) are reported as about this.
    pub const MIN_VALUE: f64 = MIN_VALUE;
    /// Values at or above this are reported as about this.
    pub const MAX_VALUE: f64 = MAX_VALUE;

    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sketch of `values`.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut s = Self::new();
        for v in values {
            s.add(v);
        }
        s
    }

    /// Counts one value.
    pub fn add(&mut self, x: f64) {
        self.add_to_bucket(bucket_of(x), 1);
    }

    /// Builds a sketch from dense bucket counts (`BUCKETS` of them).
    pub(crate) fn from_dense(dense: impl IntoIterator<Item = u64>) -> Self {
        let dense: Vec<u64> = dense.into_iter().collect();
        let Some(first) = dense.iter().position(|&c| c > 0) else {
            return Self::new();
        };
        let last = dense.iter().rposition(|&c| c > 0).unwrap_or(first);
        Self {
            offset: first,
            counts: dense[first..=last].to_vec(),
        }
    }

    fn add_to_bucket(&mut self, bucket: usize, n: u64) {
        if n == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.offset = bucket;
            self.counts.push(n);
            return;
        }
        if bucket < self.offset {
            let grow = self.offset - bucket;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = bucket;
        }
        let i = bucket - self.offset;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += n;
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Sketch) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.clone_from(other);
            return;
        }
        // Extend the range once, then add in place.
        let lo = self.offset.min(other.offset);
        let hi = (self.offset + self.counts.len()).max(other.offset + other.counts.len());
        if lo < self.offset {
            self.counts
                .splice(0..0, std::iter::repeat_n(0, self.offset - lo));
            self.offset = lo;
        }
        self.counts.resize(hi - lo, 0);
        let start = other.offset - self.offset;
        for (mine, theirs) in self.counts[start..].iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Whether no value was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The `q`-quantile (0 ≤ q ≤ 1): an estimate within α (relative) of the value of
    /// rank ⌊q·(n−1)⌋ in the sorted sample. `None` when empty or `q` is out of range.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) || self.counts.is_empty() {
            return None;
        }
        let n = self.count();
        // The 0-based rank of the wanted value; the bucket holding it is the first whose
        // running count passes it.
        let rank = (q * (n - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Some(value_of(self.offset + i));
            }
        }
        self.counts
            .len()
            .checked_sub(1)
            .map(|i| value_of(self.offset + i))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A lognormal-ish sample: exp(μ + σ·N(0,1)) by Box–Muller, latencies around 200 ms
    /// with a long tail.
    fn lognormal(rng: &mut SmallRng, mu: f64, sigma: f64) -> f64 {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (mu + sigma * z).exp()
    }

    #[test]
    fn mapping_constants_follow_from_alpha() {
        let gamma = (1.0 + ALPHA) / (1.0 - ALPHA);
        assert!((LN_GAMMA - gamma.ln()).abs() < 1e-15);
        assert_eq!(MIN_KEY, (MIN_VALUE.ln() / gamma.ln()).ceil() as i32);
        assert_eq!(MAX_KEY, (MAX_VALUE.ln() / gamma.ln()).ceil() as i32);
        assert_eq!(BUCKETS, 1101);
    }

    #[test]
    fn each_bucket_value_is_within_alpha_of_its_ends() {
        for bucket in 1..BUCKETS {
            let key = bucket as f64 + f64::from(MIN_KEY);
            let (lo, hi) = (GAMMA.powf(key - 1.0), GAMMA.powf(key));
            let v = value_of(bucket);
            assert!((v - lo) / lo <= ALPHA + 1e-12);
            assert!((hi - v) / hi <= ALPHA + 1e-12);
        }
    }

    #[test]
    fn sketch_quantiles_within_relative_error_of_exact_quantiles() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut sample: Vec<f64> = (0..50_000)
            .map(|_| lognormal(&mut rng, 200f64.ln(), 1.0))
            .collect();
        let sketch = Sketch::of(sample.iter().copied());
        sample.sort_by(f64::total_cmp);
        assert_eq!(sketch.count(), sample.len() as u64);
        for q in [
            0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0,
        ] {
            let exact = sample[(q * (sample.len() - 1) as f64).floor() as usize];
            let estimate = sketch.quantile(q).expect("non-empty");
            let error = (estimate - exact).abs() / exact;
            // α, plus room for one rounding of ln() at a bucket edge.
            assert!(
                error <= Sketch::RELATIVE_ACCURACY + 1e-9,
                "q={q}: {estimate} vs {exact} ({error})"
            );
        }
    }

    #[test]
    fn merged_sketches_equal_sketch_of_union() {
        let mut rng = SmallRng::seed_from_u64(42);
        let a: Vec<f64> = (0..5_000).map(|_| lognormal(&mut rng, 3.0, 0.5)).collect();
        let b: Vec<f64> = (0..7_000).map(|_| lognormal(&mut rng, 6.0, 2.0)).collect();
        let mut merged = Sketch::of(a.iter().copied());
        merged.merge(&Sketch::of(b.iter().copied()));
        let union = Sketch::of(a.iter().chain(&b).copied());
        assert_eq!(merged, union);
        // And the other way round, and with empties.
        let mut other = Sketch::of(b.iter().copied());
        other.merge(&Sketch::new());
        other.merge(&Sketch::of(a.iter().copied()));
        assert_eq!(other, union);
        let mut empty = Sketch::new();
        empty.merge(&union);
        assert_eq!(empty, union);
    }

    #[test]
    fn values_outside_the_range_are_clamped() {
        let s = Sketch::of([0.0, -1.0, f64::NAN, 1e-9]);
        let low = s.quantile(0.5).expect("non-empty");
        assert!((low - MIN_VALUE).abs() / MIN_VALUE <= ALPHA);
        let s = Sketch::of([1e12]);
        let high = s.quantile(0.5).expect("non-empty");
        assert!((high - MAX_VALUE).abs() / MAX_VALUE <= ALPHA);
    }

    #[test]
    fn empty_sketch_has_no_quantile() {
        assert_eq!(Sketch::new().quantile(0.5), None);
        assert_eq!(Sketch::of([1.0]).quantile(1.5), None);
        assert_eq!(Sketch::of([1.0]).quantile(f64::NAN), None);
    }
}
