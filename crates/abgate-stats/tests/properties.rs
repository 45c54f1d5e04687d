//! Properties that hold for any input: intervals and p-values agree, adjustments only
//! ever raise p-values, the sequential boundary is wider than the fixed one.

use abgate_stats::{
    benjamini_hochberg, fixed_horizon, holm, sequential, srm_chi_squared, Alternative, Difference,
    Effect, SampleMean, SequentialSrm,
};
use proptest::prelude::*;

fn alternative() -> impl Strategy<Value = Alternative> {
    prop_oneof![
        Just(Alternative::TwoSided),
        Just(Alternative::Greater),
        Just(Alternative::Lesser),
    ]
}

fn effect(estimate: f64, standard_error: f64, units: u64, dof: f64) -> Effect {
    Effect {
        estimate,
        standard_error,
        units,
        dof,
        difference: Difference::Absolute,
    }
}

proptest! {
    #[test]
    fn sequential_p_below_alpha_iff_interval_excludes_zero(
        est in -2.0..2.0f64,
        se in 0.01..1.0f64,
        units in 10u64..1_000_000,
        tuning in 100.0..100_000.0f64,
        alpha in 0.001..0.3f64,
        alt in alternative(),
    ) {
        let r = sequential(&effect(est, se, units, f64::INFINITY), alt, alpha, tuning).unwrap();
        prop_assert!((0.0..=1.0).contains(&r.p_value));
        // Away from the boundary itself, where rounding decides.
        let edge = (r.interval.lower.abs().min(r.interval.upper.abs())) < 1e-9;
        if !edge {
            prop_assert_eq!(r.p_value < alpha, r.significant(), "{:?}", r);
        }
    }

    #[test]
    fn fixed_p_below_alpha_iff_interval_excludes_zero(
        est in -2.0..2.0f64,
        se in 0.01..1.0f64,
        dof in 3.0..1e6f64,
        alpha in 0.001..0.3f64,
        alt in alternative(),
    ) {
        let r = fixed_horizon(&effect(est, se, 100, dof), alt, alpha).unwrap();
        let edge = (r.interval.lower.abs().min(r.interval.upper.abs())) < 1e-9;
        if !edge {
            prop_assert_eq!(r.p_value < alpha, r.significant(), "{:?}", r);
        }
    }

    #[test]
    fn sequential_interval_is_wider_than_fixed_normal_interval(
        se in 0.01..1.0f64,
        units in 10u64..1_000_000,
        tuning in 100.0..100_000.0f64,
        alpha in 0.001..0.3f64,
    ) {
        let e = effect(0.0, se, units, f64::INFINITY);
        let seq = sequential(&e, Alternative::TwoSided, alpha, tuning).unwrap();
        let fixed = fixed_horizon(&e, Alternative::TwoSided, alpha).unwrap();
        prop_assert!(seq.interval.upper > fixed.interval.upper);
    }

    #[test]
    fn adjustments_raise_p_values_and_keep_their_order(
        ps in proptest::collection::vec(0.0..=1.0f64, 0..30),
    ) {
        let h = holm(&ps);
        let bh = benjamini_hochberg(&ps);
        for i in 0..ps.len() {
            prop_assert!(h[i] >= ps[i] && h[i] <= 1.0);
            prop_assert!(bh[i] >= ps[i] && bh[i] <= 1.0);
            prop_assert!(bh[i] <= h[i] + 1e-15);
            for j in 0..ps.len() {
                if ps[i] < ps[j] {
                    prop_assert!(h[i] <= h[j] && bh[i] <= bh[j]);
                }
            }
        }
    }

    #[test]
    fn swapping_arms_negates_the_absolute_effect(
        n_a in 2u64..10_000, n_b in 2u64..10_000,
        mean_a in -100.0..100.0f64, mean_b in -100.0..100.0f64,
        sd_a in 0.1..50.0f64, sd_b in 0.1..50.0f64,
    ) {
        let arm = |n: u64, mean: f64, sd: f64| {
            let nf = n as f64;
            SampleMean::new(n, mean * nf, sd * sd * (nf - 1.0) + mean * mean * nf).unwrap()
        };
        let (a, b) = (arm(n_a, mean_a, sd_a), arm(n_b, mean_b, sd_b));
        let ab = Effect::between(&a, &b, Difference::Absolute).unwrap();
        let ba = Effect::between(&b, &a, Difference::Absolute).unwrap();
        prop_assert!((ab.estimate + ba.estimate).abs() <= 1e-9 * (1.0 + ab.estimate.abs()));
        prop_assert!((ab.standard_error - ba.standard_error).abs() <= 1e-9 * ab.standard_error);
        prop_assert!((ab.dof - ba.dof).abs() <= 1e-6 * ab.dof);
    }

    #[test]
    fn srm_p_value_is_a_probability_and_one_at_the_weights(
        counts in proptest::collection::vec(0u64..100_000, 2..6),
    ) {
        let weights = vec![1.0; counts.len()];
        let r = srm_chi_squared(&counts, &weights).unwrap();
        prop_assert!((0.0..=1.0).contains(&r.p_value) && r.chi_squared >= 0.0);
        let equal = vec![counts[0]; counts.len()];
        prop_assert_eq!(srm_chi_squared(&equal, &weights).unwrap().p_value, 1.0);
    }

    #[test]
    fn sequential_srm_ignores_how_counts_were_batched(
        batches in proptest::collection::vec((0u64..500, 0u64..500), 1..10),
    ) {
        let mut batched = SequentialSrm::new(&[0.3, 0.7], 1000.0).unwrap();
        let mut total = [0u64; 2];
        for (x, y) in &batches {
            batched.add(&[*x, *y]).unwrap();
            total[0] += x;
            total[1] += y;
        }
        let mut once = SequentialSrm::new(&[0.3, 0.7], 1000.0).unwrap();
        once.update(&total).unwrap();
        let scale = 1.0 + once.log_bayes_factor().abs();
        prop_assert!((batched.log_bayes_factor() - once.log_bayes_factor()).abs() < 1e-9 * scale);
        prop_assert!(batched.p_value() <= once.p_value() + 1e-12);
    }
}
