//! Sticky variant assignment: the variant is a pure function of `(salt, key)`.
//!
//! Normally a split picks a variant at random per request, as Istio does. When a route or
//! experiment names a stickiness key (a header such as `x-user-id`, or a cookie), the choice
//! must instead be deterministic so that a user keeps one variant for the whole experiment and
//! every replica agrees without coordination. This module provides the two halves of that:
//!
//! * [`hash`] / [`bucket`]: GrowthBook-compatible hashing, so an experiment keyed the same way
//!   in GrowthBook and in abgate puts a user in the same bucket;
//! * [`StickySplit`]: relative weights laid out over 10 000 buckets in an order that keeps
//!   users out of the baseline once they are in a candidate, as a rollout ramps up.
//!
//! Everything here is pure and allocation-free on the request path.

use std::fmt;

/// Number of buckets a key can fall in: one per basis point.
pub const BUCKETS: u16 = 10_000;

const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a 32-bit over the concatenation of `parts`.
///
/// Taking the parts separately lets callers hash `seed + value` without allocating the
/// concatenated string: FNV-1a is a byte-at-a-time fold, so feeding the parts in sequence is
/// exactly hashing their concatenation.
fn fnv1a32(parts: &[&[u8]]) -> u32 {
    let mut h = FNV_OFFSET_BASIS;
    for part in parts {
        for &byte in *part {
            h ^= u32::from(byte);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h
}

/// Writes `n` in decimal (as JavaScript's `n + ""` does for a `u32`) into `buf` and returns
/// the digits; a `u32` has at most 10 digits, so the stack buffer avoids an allocation.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[start..]
}

/// The GrowthBook v2 hash as an integer in `0..10_000`, shared by [`hash`] and [`bucket`] so
/// the bucket is computed without a round trip through floating point.
fn v2_basis_points(seed: &str, value: &str) -> u16 {
    let inner = fnv1a32(&[seed.as_bytes(), value.as_bytes()]);
    let mut buf = [0u8; 10];
    let outer = fnv1a32(&[decimal(inner, &mut buf)]);
    // The remainder is below 10_000, so it fits in a u16.
    (outer % u32::from(BUCKETS)) as u16
}

/// GrowthBook-compatible hash in [0, 1); None for an unknown version.
///
/// Mirrors `hash(seed, value, version)` of GrowthBook's JavaScript SDK
/// (`packages/sdk-js/src/util.ts`):
///
/// * version 1 (GrowthBook's original, biased hash, kept for compatibility):
///   `(fnv1a32(value + seed) % 1000) / 1000`, note the order, `value` first;
/// * version 2 (unbiased): `(fnv1a32(decimal(fnv1a32(seed + value))) % 10000) / 10000`, where
///   `decimal` is the base-10 text of the unsigned 32-bit inner hash;
/// * any other version: `None` (the SDK returns `null`).
///
/// Strings are hashed as their UTF-8 bytes. The JavaScript SDK folds UTF-16 code units
/// (`charCodeAt`) instead; the two agree for ASCII input, which covers all of GrowthBook's
/// published test vectors and typical user ids, but differ for non-ASCII text. abgate picks
/// UTF-8 so the result does not depend on a language's internal string encoding.
#[must_use]
pub fn hash(seed: &str, value: &str, version: u32) -> Option<f64> {
    match version {
        1 => {
            let h = fnv1a32(&[value.as_bytes(), seed.as_bytes()]);
            Some(f64::from(h % 1000) / 1000.0)
        }
        2 => Some(f64::from(v2_basis_points(seed, value)) / f64::from(BUCKETS)),
        _ => None,
    }
}

/// The bucket 0..10_000 of a key under a salt: GrowthBook v2 hash scaled to basis points.
///
/// `f64::from(bucket(salt, key)) / 10_000.0 == hash(salt, key, 2)` exactly (it is the same
/// integer before the division, so no float round trip is involved); the salt plays the role of
/// GrowthBook's experiment seed, so changing the salt reshuffles every user independently of
/// other experiments. Version 2 is used because version 1 is biased and has only 1 000
/// distinct values.
#[must_use]
pub fn bucket(salt: &str, key: &str) -> u16 {
    v2_basis_points(salt, key)
}

/// Why a [`StickySplit`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidSplit {
    /// No variants were given.
    Empty,
    /// The baseline index is not an index into the weights.
    BaselineOutOfRange {
        /// The offending baseline index.
        baseline: usize,
        /// Number of variants.
        len: usize,
    },
    /// Every weight is zero, so there is nothing to send traffic to.
    AllZero,
}

impl fmt::Display for InvalidSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("a split needs at least one variant"),
            Self::BaselineOutOfRange { baseline, len } => write!(
                f,
                "baseline index {baseline} is out of range for {len} variant(s)"
            ),
            Self::AllZero => f.write_str("all variant weights are zero"),
        }
    }
}

impl std::error::Error for InvalidSplit {}

/// One variant's slice of the bucket space: buckets `[previous end, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slice {
    end: u16,
    variant: usize,
}

/// Variants laid over 10_000 buckets by cumulative relative weight, candidates first in the
/// given order and the baseline last, so that growing any candidate's weight only ever moves
/// users from the baseline into a candidate, never from a candidate back to the baseline.
///
/// # Layout and rounding
///
/// Let `W` be the total weight and `C_k` the summed weight of the first `k + 1` candidates
/// (all variants except the baseline, in index order). Candidate `k` ends at bucket
/// `e_k = round_half_up(10_000 * C_k / W)`, computed exactly in integers, and starts where the
/// previous candidate ended (the first at 0). The baseline takes the rest,
/// `[e_last, 10_000)`.
///
/// Hence each variant's share in basis points is the floor or the ceiling of its exact
/// proportional share `10_000 * w_i / W` (both of its boundaries are within half a basis
/// point of exact, so its width is strictly within 1 basis point of exact), the shares total
/// exactly 10_000, and a variant with weight 0 gets no buckets at all. This is the quota
/// property that largest-remainder rounding is usually chosen for. It is obtained here by
/// rounding *cumulative* boundaries instead of flooring each share and handing the leftover
/// basis points to the largest remainders, because then every boundary depends on nothing
/// but the exact share to its left. Largest remainder only keeps the baseline from growing
/// while *every* candidate's share grows; when candidates trade weight it can hand the
/// baseline a leftover point: `[1, 1, 4]` (baseline last) gives `[1667, 1667, 6666]` but
/// `[0, 2, 4]` gives `[0, 3333, 6667]`, moving a candidate's user to the baseline although
/// the candidates' total share stayed 1/3. Here both give the baseline 6667.
///
/// # Stickiness guarantee
///
/// `round_half_up` is monotone, so each boundary `e_k` is a non-decreasing function of the
/// exact cumulative share `C_k / W` alone. In particular, the candidates' region
/// `[0, sum of candidate bps)` only depends on the candidates' total share. Therefore, for a
/// fixed salt, when the weights change from `w` to `w'`:
///
/// * if every candidate's share `w_i / W` is unchanged or grows (or, more weakly, the
///   candidates' total share does not shrink), no user assigned to a candidate under `w` is
///   assigned to the baseline under `w'`: the only users who change region move from the
///   baseline into a candidate;
/// * more precisely, if the summed share of candidates `0..=k` does not shrink, no user in
///   one of those candidates moves to a later candidate or to the baseline.
///
/// It does *not* promise that a user stays in the same candidate: when an earlier candidate
/// grows, its end moves right and takes the first buckets of the next candidate. Users also
/// stay put only while the set of variants, their order and the baseline index stay the same;
/// adding, removing or reordering variants re-lays the ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickySplit {
    /// Slices in bucket order, zero-width ones dropped; the last one ends at 10_000.
    slices: Vec<Slice>,
    /// Basis points per variant, indexed like the input weights.
    basis_points: Vec<u16>,
    baseline: usize,
}

impl StickySplit {
    /// `weights[i]` is the relative weight of variant i; `baseline` indexes the baseline.
    ///
    /// Only the ratios of the weights matter: `[1, 3]` and `[25, 75]` lay out identically.
    /// The baseline may have weight 0 (everyone goes to the candidates).
    ///
    /// # Errors
    ///
    /// [`InvalidSplit::Empty`] if `weights` is empty, [`InvalidSplit::BaselineOutOfRange`] if
    /// `baseline >= weights.len()`, [`InvalidSplit::AllZero`] if every weight is 0.
    pub fn new(weights: &[u32], baseline: usize) -> Result<Self, InvalidSplit> {
        if weights.is_empty() {
            return Err(InvalidSplit::Empty);
        }
        if baseline >= weights.len() {
            return Err(InvalidSplit::BaselineOutOfRange {
                baseline,
                len: weights.len(),
            });
        }
        // u128 so neither the sum of any number of u32 weights nor `20_000 * sum` can overflow.
        let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        if total == 0 {
            return Err(InvalidSplit::AllZero);
        }

        // Candidates first, in the given order, then the baseline, so that the baseline's
        // range is the tail and the candidates' region is a prefix.
        let order = (0..weights.len())
            .filter(|&i| i != baseline)
            .chain(std::iter::once(baseline));

        let mut slices = Vec::with_capacity(weights.len());
        let mut basis_points = vec![0u16; weights.len()];
        let mut cumulative: u128 = 0;
        let mut start: u16 = 0;
        for variant in order {
            cumulative += u128::from(weights[variant]);
            let end = round_share(cumulative, total);
            let width = end - start;
            basis_points[variant] = width;
            // Zero-width slices (weight 0, or a share so small that both of its boundaries
            // round to the same bucket) are dropped so `pick` can never land on them.
            if width > 0 {
                slices.push(Slice { end, variant });
            }
            start = end;
        }
        Ok(Self {
            slices,
            basis_points,
            baseline,
        })
    }

    /// The variant index for a bucket. A zero-weight variant is never returned.
    ///
    /// Buckets at or above 10_000 (not produced by [`bucket`]) are reduced modulo 10_000 so
    /// the function is total and still never returns a variant without buckets.
    #[must_use]
    pub fn pick(&self, bucket: u16) -> usize {
        let b = bucket % BUCKETS;
        // The first slice ending after `b` contains it; slices are sorted by `end`.
        let i = self.slices.partition_point(|s| s.end <= b);
        // The last slice ends at 10_000 > b, so `i` is in range; `new` guarantees at least one
        // slice (the total weight is positive), so the fallbacks are unreachable.
        self.slices
            .get(i)
            .or_else(|| self.slices.last())
            .map_or(self.baseline, |s| s.variant)
    }

    /// The variant for `key` under `salt`: `self.pick(bucket(salt, key))`.
    #[must_use]
    pub fn assign(&self, salt: &str, key: &str) -> usize {
        self.pick(bucket(salt, key))
    }

    /// Buckets (basis points) allotted to each variant, indexed like the weights; they sum to
    /// exactly 10_000.
    #[must_use]
    pub fn basis_points(&self) -> &[u16] {
        &self.basis_points
    }

    /// The baseline's index, as given to [`StickySplit::new`].
    #[must_use]
    pub fn baseline(&self) -> usize {
        self.baseline
    }

    /// Number of variants, including zero-weight ones.
    #[must_use]
    pub fn variant_count(&self) -> usize {
        self.basis_points.len()
    }
}

/// `round_half_up(10_000 * part / total)` in exact integer arithmetic, for
/// `0 <= part <= total`, `total > 0`: `floor((20_000 * part + total) / (2 * total))`.
///
/// Exact arithmetic matters: the result is then a monotone function of the rational
/// `part / total`, whatever the scale of the weights, which is what the stickiness guarantee
/// rests on. Floating point could round two equal ratios differently.
fn round_share(part: u128, total: u128) -> u16 {
    let scaled = (2 * u128::from(BUCKETS) * part + total) / (2 * total);
    // `part <= total` bounds the result by 10_000; clamp rather than trust a caller.
    u16::try_from(scaled.min(u128::from(BUCKETS))).unwrap_or(BUCKETS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    fn split(weights: &[u32], baseline: usize) -> StickySplit {
        StickySplit::new(weights, baseline).expect("valid split")
    }

    /// Variant of every bucket, in bucket order.
    fn layout(s: &StickySplit) -> Vec<usize> {
        (0..BUCKETS).map(|b| s.pick(b)).collect()
    }

    // ---- hashing -------------------------------------------------------------------------

    #[test]
    fn fnv1a32_matches_reference_values() {
        // Standard FNV-1a 32-bit check values.
        assert_eq!(fnv1a32(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1a32(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a32(&[b"foobar"]), 0xbf9c_f968);
    }

    #[test]
    fn fnv1a32_of_parts_is_fnv1a32_of_concatenation() {
        assert_eq!(fnv1a32(&[b"foo", b"", b"bar"]), fnv1a32(&[b"foobar"]));
    }

    #[test]
    fn decimal_writes_base_ten() {
        let mut buf = [0u8; 10];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(7, &mut buf), b"7");
        assert_eq!(decimal(1_234_567_890, &mut buf), b"1234567890");
        assert_eq!(decimal(u32::MAX, &mut buf), b"4294967295");
    }

    #[test]
    fn unknown_hash_version_is_none() {
        assert_eq!(hash("abc", "def", 0), None);
        assert_eq!(hash("abc", "def", 3), None);
        assert_eq!(hash("abc", "def", 99), None);
    }

    #[test]
    fn bucket_is_v2_hash_in_basis_points() {
        for i in 0..1_000 {
            let key = format!("user-{i}");
            let h = hash("exp-salt", &key, 2).expect("v2 is known");
            assert_eq!(f64::from(bucket("exp-salt", &key)) / 10_000.0, h);
        }
    }

    #[test]
    fn hash_is_over_utf8_bytes() {
        // "é" is U+00E9: UTF-8 bytes C3 A9, a single UTF-16 code unit 0x00E9. We fold the two
        // bytes. Expected values computed independently (Python, over `str.encode("utf-8")`);
        // GrowthBook's JS SDK, folding UTF-16 units, gives 0.94 and 0.8917 instead.
        let expected = fnv1a32(&[&[0xc3, 0xa9]]) % 1000;
        assert_eq!(hash("", "é", 1), Some(f64::from(expected) / 1000.0));
        assert_eq!(hash("", "é", 1), Some(0.217));
        assert_eq!(hash("", "é", 2), Some(0.6427));
        // Astral-plane and CJK text too (JS: 0.7646 and 0.7506 for v2).
        assert_eq!(hash("exp", "用户", 2), Some(0.4347));
        assert_eq!(hash("exp", "😀", 2), Some(0.5448));
    }

    #[test]
    fn salt_changes_the_bucket() {
        let differing = (0..100)
            .filter(|i| {
                let key = format!("user-{i}");
                bucket("salt-a", &key) != bucket("salt-b", &key)
            })
            .count();
        assert!(differing > 90, "only {differing} of 100 keys moved");
    }

    // ---- construction --------------------------------------------------------------------

    #[test]
    fn empty_split_is_rejected() {
        assert_eq!(StickySplit::new(&[], 0), Err(InvalidSplit::Empty));
    }

    #[test]
    fn baseline_out_of_range_is_rejected() {
        assert_eq!(
            StickySplit::new(&[1, 1], 2),
            Err(InvalidSplit::BaselineOutOfRange {
                baseline: 2,
                len: 2
            })
        );
    }

    #[test]
    fn all_zero_weights_are_rejected() {
        assert_eq!(StickySplit::new(&[0, 0, 0], 0), Err(InvalidSplit::AllZero));
    }

    #[test]
    fn basis_points_sum_to_ten_thousand() {
        for (weights, baseline) in [
            (&[1u32, 1, 1][..], 0),
            (&[1, 2, 3, 4, 5, 6, 7][..], 3),
            (&[u32::MAX, u32::MAX, 1][..], 2),
        ] {
            let s = split(weights, baseline);
            let sum: u32 = s.basis_points().iter().map(|&b| u32::from(b)).sum();
            assert_eq!(sum, 10_000, "{weights:?}");
        }
    }

    #[test]
    fn thirds_round_within_one_basis_point() {
        // Exact shares are 3333.33… each; boundaries at 3333 and 6667.
        let s = split(&[1, 1, 1], 2);
        assert_eq!(s.basis_points(), &[3333, 3334, 3333]);
    }

    #[test]
    fn only_weight_ratios_matter() {
        assert_eq!(split(&[1, 3], 0), split(&[25, 75], 0));
        assert_eq!(split(&[70, 30], 1).basis_points(), &[7000, 3000]);
    }

    // ---- picking -------------------------------------------------------------------------

    #[test]
    fn single_variant_gets_everyone() {
        let s = split(&[5], 0);
        assert!(layout(&s).iter().all(|&v| v == 0));
        assert_eq!(s.basis_points(), &[10_000]);
    }

    #[test]
    fn zero_weight_variant_never_chosen() {
        let s = split(&[0, 3, 0, 1, 0], 2);
        assert_eq!(s.basis_points(), &[0, 7500, 0, 2500, 0]);
        assert!(layout(&s).iter().all(|&v| v == 1 || v == 3));
        // Out-of-range buckets too.
        assert!((BUCKETS..=u16::MAX).all(|b| matches!(s.pick(b), 1 | 3)));
    }

    #[test]
    fn zero_weight_baseline_sends_everyone_to_candidates() {
        let s = split(&[0, 1], 0);
        assert!(layout(&s).iter().all(|&v| v == 1));
    }

    #[test]
    fn candidate_range_comes_first() {
        // Baseline is index 0, so the layout is candidate 1, candidate 2, then baseline.
        let s = split(&[50, 20, 30], 0);
        let l = layout(&s);
        assert!(l[..2000].iter().all(|&v| v == 1));
        assert!(l[2000..5000].iter().all(|&v| v == 2));
        assert!(l[5000..].iter().all(|&v| v == 0));
    }

    #[test]
    fn candidates_keep_their_given_order() {
        let s = split(&[10, 10, 10, 70], 3);
        assert_eq!(s.pick(0), 0);
        assert_eq!(s.pick(999), 0);
        assert_eq!(s.pick(1000), 1);
        assert_eq!(s.pick(2000), 2);
        assert_eq!(s.pick(3000), 3);
        assert_eq!(s.pick(9999), 3);
    }

    #[test]
    fn tiny_share_below_half_a_basis_point_gets_no_buckets() {
        // 1 / 1_000_001 of traffic is 0.01 bp: rounds to 0 and is never chosen.
        let s = split(&[1, 1_000_000], 1);
        assert_eq!(s.basis_points(), &[0, 10_000]);
        assert!(layout(&s).iter().all(|&v| v == 1));
    }

    #[test]
    fn moving_weight_between_candidates_keeps_baseline_range() {
        // Candidates' total share is 2/3 in both, so the baseline keeps exactly its buckets;
        // rounding of the individual candidates cannot leak into the baseline's boundary.
        let before = split(&[1, 1, 1], 2);
        let after = split(&[2, 0, 1], 2);
        for b in 0..BUCKETS {
            assert_eq!(before.pick(b) == 2, after.pick(b) == 2, "bucket {b}");
        }
    }

    #[test]
    fn candidate_region_never_shrinks_when_candidate_share_grows_exhaustive() {
        // Every two-variant split with total weight up to 60, compared pairwise: whenever the
        // candidate's exact share is at least as large, its region is at least as large. This
        // covers rounding ties (exact half basis points) and equal shares at different scales.
        let mut splits = Vec::new();
        for total in 1u32..=60 {
            for c in 0..=total {
                let end = split(&[c, total - c], 1).basis_points()[0];
                splits.push(((c, total - c), end));
            }
        }
        for &(a, end_a) in &splits {
            for &(b, end_b) in &splits {
                if share_le(a, b) {
                    assert!(end_a <= end_b, "{a:?} -> {end_a} bp, {b:?} -> {end_b} bp");
                }
            }
        }
    }

    #[test]
    fn candidates_trading_weight_keep_baseline_range_where_largest_remainder_would_not() {
        // Largest remainder gives [1667, 1667, 6666] then [0, 3333, 6667]: one more baseline
        // bucket although the candidates' total share is 1/3 in both.
        let before = split(&[1, 1, 4], 2);
        let after = split(&[0, 2, 4], 2);
        assert_eq!(before.basis_points(), &[1667, 1666, 6667]);
        assert_eq!(after.basis_points(), &[0, 3333, 6667]);
        for b in 0..BUCKETS {
            assert_eq!(before.pick(b) == 2, after.pick(b) == 2, "bucket {b}");
        }
    }

    #[test]
    fn assign_is_pick_of_bucket() {
        let s = split(&[1, 2, 3], 0);
        for i in 0..100 {
            let key = format!("user-{i}");
            assert_eq!(s.assign("salt", &key), s.pick(bucket("salt", &key)));
        }
    }

    #[test]
    fn invalid_split_displays() {
        assert_eq!(
            InvalidSplit::BaselineOutOfRange {
                baseline: 4,
                len: 2
            }
            .to_string(),
            "baseline index 4 is out of range for 2 variant(s)"
        );
    }

    // ---- properties ----------------------------------------------------------------------

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            // Deterministic runs, and no regression files written into the source tree.
            rng_seed: RngSeed::Fixed(0x5eed_ab6a),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// `a.0 / (a.0 + a.1) <= b.0 / (b.0 + b.1)`, exactly.
    fn share_le(a: (u32, u32), b: (u32, u32)) -> bool {
        let (ac, at) = (u64::from(a.0), u64::from(a.0) + u64::from(a.1));
        let (bc, bt) = (u64::from(b.0), u64::from(b.0) + u64::from(b.1));
        u128::from(ac) * u128::from(bt) <= u128::from(bc) * u128::from(at)
    }

    /// Two-variant weights with the candidate at `candidate`, the baseline the other index.
    fn two(candidate: usize, c: u32, base: u32) -> StickySplit {
        if candidate == 0 {
            split(&[c, base], 1)
        } else {
            split(&[base, c], 0)
        }
    }

    /// Keys drawn at random, plus the whole bucket space for exhaustiveness.
    fn check_no_candidate_to_baseline(
        before: &StickySplit,
        after: &StickySplit,
        salt: &str,
        keys: &[String],
    ) -> Result<(), TestCaseError> {
        let baseline = before.baseline();
        for key in keys {
            if before.assign(salt, key) != baseline {
                prop_assert_ne!(after.assign(salt, key), baseline, "key {}", key);
            }
        }
        for b in 0..BUCKETS {
            if before.pick(b) != baseline {
                prop_assert_ne!(after.pick(b), baseline, "bucket {}", b);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config(64))]

        /// Two variants, total fixed at 100: the candidate grows from w1 to w2 >= w1.
        #[test]
        fn candidate_growth_out_of_100_never_returns_users_to_baseline(
            (w1, w2) in (0u32..=100).prop_flat_map(|w1| (Just(w1), w1..=100)),
            candidate in 0usize..2,
            salt in "[a-z0-9]{0,12}",
            keys in prop::collection::vec("[ -~]{0,16}", 200),
        ) {
            let before = two(candidate, w1, 100 - w1);
            let after = two(candidate, w2, 100 - w2);
            check_no_candidate_to_baseline(&before, &after, &salt, &keys)?;
        }

        /// Two variants with arbitrary relative totals, ordered so the candidate's share grows.
        #[test]
        fn candidate_share_growth_never_returns_users_to_baseline(
            a in (0u32..=1_000_000, 0u32..=1_000_000),
            b in (0u32..=1_000_000, 0u32..=1_000_000),
            candidate in 0usize..2,
            salt in "[a-z0-9]{0,12}",
            keys in prop::collection::vec("[ -~]{0,16}", 200),
        ) {
            prop_assume!(a.0 + a.1 > 0 && b.0 + b.1 > 0);
            let (lo, hi) = if share_le(a, b) { (a, b) } else { (b, a) };
            let before = two(candidate, lo.0, lo.1);
            let after = two(candidate, hi.0, hi.1);
            check_no_candidate_to_baseline(&before, &after, &salt, &keys)?;
        }

        /// Two variants, small steps: the candidate's share grows by a little (possibly less
        /// than a basis point) while the total is rescaled, which is where rounding bites.
        #[test]
        fn small_candidate_share_steps_never_return_users_to_baseline(
            c in 0u32..=100_000,
            base in 1u32..=100_000,
            scale in 1u32..=1000,
            grow in 0u32..=20,
            shrink in 0u32..=20,
            candidate in 0usize..2,
            salt in "[a-z0-9]{0,12}",
            keys in prop::collection::vec("[ -~]{0,16}", 200),
        ) {
            let before = two(candidate, c, base);
            let base_after = base * scale - shrink.min(base * scale);
            let after = two(candidate, c * scale + grow, base_after);
            check_no_candidate_to_baseline(&before, &after, &salt, &keys)?;
        }

        /// Three variants (baseline at any index): both candidates' shares grow, taken from the
        /// baseline at a fixed total, then every weight rescaled by an arbitrary factor.
        #[test]
        fn all_candidates_growing_never_returns_users_to_baseline(
            (c1, c2, d1, d2) in (0u32..=1000, 0u32..=1000).prop_flat_map(|(c1, c2)| {
                let room = 2000 - c1 - c2;
                // Half the cases take small steps, where rounding matters most.
                let d1 = prop_oneof![0..=room.min(3), 0..=room];
                (Just(c1), Just(c2), d1).prop_flat_map(move |(c1, c2, d1)| {
                    let left = room - d1;
                    (Just(c1), Just(c2), Just(d1), prop_oneof![0..=left.min(3), 0..=left])
                })
            }),
            baseline in 0usize..3,
            scale in prop_oneof![Just(1u32), 1u32..=1000],
            salt in "[a-z0-9]{0,12}",
            keys in prop::collection::vec("[ -~]{0,16}", 200),
        ) {
            const TOTAL: u32 = 2000;
            let lay = |x: u32, y: u32, base: u32| -> Vec<u32> {
                let mut cand = [x, y].into_iter();
                (0..3)
                    .map(|i| if i == baseline { base } else { cand.next().unwrap_or(0) })
                    .collect()
            };
            let w1 = lay(c1, c2, TOTAL - c1 - c2);
            let w2: Vec<u32> = lay(c1 + d1, c2 + d2, TOTAL - c1 - c2 - d1 - d2)
                .into_iter()
                .map(|w| w * scale)
                .collect();
            let before = split(&w1, baseline);
            let after = split(&w2, baseline);
            check_no_candidate_to_baseline(&before, &after, &salt, &keys)?;

            // Stronger, per-prefix: the first candidate's share grew, so its users stay in it.
            let first = usize::from(baseline == 0);
            for b in 0..BUCKETS {
                if before.pick(b) == first {
                    prop_assert_eq!(after.pick(b), first, "bucket {}", b);
                }
            }
        }

        /// Every variant's share is the floor or ceiling of its exact share, and the total is
        /// exactly 10_000.
        #[test]
        fn shares_are_within_one_basis_point(
            weights in prop::collection::vec(0u32..=u32::MAX, 1..8),
            baseline_seed in any::<usize>(),
        ) {
            prop_assume!(weights.iter().any(|&w| w > 0));
            let baseline = baseline_seed % weights.len();
            let s = split(&weights, baseline);
            let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
            let mut sum = 0u32;
            for (i, (&w, &bp)) in weights.iter().zip(s.basis_points()).enumerate() {
                let exact_num = 10_000 * u128::from(w); // exact share = exact_num / total
                let floor = exact_num / total;
                let ceil = exact_num.div_ceil(total);
                prop_assert!(
                    u128::from(bp) == floor || u128::from(bp) == ceil,
                    "variant {} weight {} got {} bp, exact {}/{}", i, w, bp, exact_num, total
                );
                if w == 0 {
                    prop_assert_eq!(bp, 0);
                }
                sum += u32::from(bp);
            }
            prop_assert_eq!(sum, 10_000);
        }

        /// Over 20_000 distinct keys with a fixed salt, each variant's count is within 5
        /// binomial standard deviations of n * p, p being its allotted share of buckets.
        #[test]
        fn observed_counts_match_weights(
            weights in prop::collection::vec(0u32..=100, 2..=5),
            baseline_seed in any::<usize>(),
        ) {
            prop_assume!(weights.iter().any(|&w| w > 0));
            let baseline = baseline_seed % weights.len();
            let s = split(&weights, baseline);
            let buckets = balance_buckets();
            let mut counts = vec![0u32; weights.len()];
            for &b in buckets {
                counts[s.pick(b)] += 1;
            }
            let n = buckets.len() as f64;
            for (i, (&count, &bp)) in counts.iter().zip(s.basis_points()).enumerate() {
                let p = f64::from(bp) / 10_000.0;
                let expected = n * p;
                let sd = (n * p * (1.0 - p)).sqrt();
                prop_assert!(
                    (f64::from(count) - expected).abs() <= 5.0 * sd,
                    "variant {} of {:?}: {} observed, {} expected, sd {}",
                    i, weights, count, expected, sd
                );
            }
        }
    }

    /// Buckets of `user-0` .. `user-19999` under one salt, hashed once for all cases.
    fn balance_buckets() -> &'static [u16] {
        static BUCKETS_OF_KEYS: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
        BUCKETS_OF_KEYS.get_or_init(|| {
            (0..20_000)
                .map(|i| bucket("balance-salt", &format!("user-{i}")))
                .collect()
        })
    }

    #[test]
    fn seventy_thirty_over_100_000_keys_is_balanced() {
        let s = split(&[70, 30], 1);
        let n = 100_000u32;
        let candidate = (0..n)
            .filter(|i| s.assign("exp-70-30", &format!("user-{i}")) == 0)
            .count();
        let (nf, p) = (f64::from(n), 0.7);
        let sd = (nf * p * (1.0 - p)).sqrt(); // ≈ 144.9
        let observed = candidate as f64;
        assert!(
            (observed - nf * p).abs() <= 5.0 * sd,
            "{observed} in candidate, expected {} ± {}",
            nf * p,
            5.0 * sd
        );
    }
}
