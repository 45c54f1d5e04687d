//! GrowthBook's published test cases, reproduced.
//!
//! Inputs and expected outputs are copied from `growthbook/growthbook` at commit
//! 8f1db4456915a8e7b7faf23d5632ca7219d2f469 (file named at each case). Where the
//! published value is rounded (5 decimals in `packages/stats/tests`, 9 in
//! `packages/stats/tests/test_gbstats.py` and `packages/back-end/test/stats.test.ts`),
//! we check it to half a unit of its last digit, and check the unrounded value that
//! `gbstats` at the same commit computes for the same inputs (run locally with SciPy
//! 1.17.1) to 1e-9. The sequential-SRM cases come from Optimizely's `ssrm_test`, the
//! reference implementation of Lindon & Malek's test.

use abgate_stats::{
    benjamini_hochberg, fixed_horizon, holm, sequential, srm_chi_squared, Alternative,
    ArmStatistic, Difference, Effect, Inference, Proportion, QuantileEstimate, Ratio, SampleMean,
    SequentialSrm,
};

/// Absolute tolerance for unrounded reference values.
const EXACT: f64 = 1e-9;
/// Half a unit of the 5th decimal, for values published rounded to 5 decimals.
const DEC5: f64 = 5e-6 + 1e-12;
/// Half a unit of the 9th decimal.
const DEC9: f64 = 5e-10 + 1e-13;

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:.17}, want {want:.17} (tolerance {tol:e})"
    );
}

/// est, lower, upper, se, p.
type Row = (f64, f64, f64, f64, f64);

fn check(what: &str, r: &Inference, want: Row, tol: f64) {
    close(&format!("{what} estimate"), r.estimate, want.0, tol);
    if want.1.is_finite() {
        close(&format!("{what} lower"), r.interval.lower, want.1, tol);
    } else {
        assert_eq!(r.interval.lower, want.1, "{what} lower");
    }
    if want.2.is_finite() {
        close(&format!("{what} upper"), r.interval.upper, want.2, tol);
    } else {
        assert_eq!(r.interval.upper, want.2, "{what} upper");
    }
    close(&format!("{what} se"), r.standard_error, want.3, tol);
    close(&format!("{what} p"), r.p_value, want.4, tol);
}

fn mean(n: u64, sum: f64, sum_sq: f64) -> SampleMean {
    SampleMean::new(n, sum, sum_sq).expect("valid statistic")
}

fn effect<S: ArmStatistic>(a: &S, b: &S, d: Difference) -> Effect {
    Effect::between(a, b, d).expect("effect")
}

const INF: f64 = f64::INFINITY;

// packages/stats/tests/frequentist/test_tests.py, TestTwoSidedTTest: stat_a, stat_b.
fn a3407() -> SampleMean {
    mean(3407, 1396.87, 52377.9767)
}
fn b3461() -> SampleMean {
    mean(3461, 2422.7, 134698.29)
}
// TestSequentialTTest, TestOneSided*: stat_a with n = 3000.
fn a3000() -> SampleMean {
    mean(3000, 1396.87, 52377.9767)
}

#[test]
fn welch_t_test_two_sided() {
    // test_tests.py TestTwoSidedTTest.
    let cases = [
        (
            "relative",
            Difference::Relative,
            (0.70732, -0.03526, 1.44989, 0.37879, 0.06191),
            (
                0.7073170731707317,
                -0.03526008906611777,
                1.449894235407581,
                0.3787943616681428,
                0.06191182745618362,
            ),
        ),
        (
            "absolute",
            Difference::Absolute,
            (0.29, 0.04538, 0.53462, 0.12478, 0.02016),
            (
                0.29,
                0.04537789255929012,
                0.5346221074407098,
                0.12478363158758794,
                0.020158402643587037,
            ),
        ),
    ];
    for (name, d, published, exact) in cases {
        let r = fixed_horizon(&effect(&a3407(), &b3461(), d), Alternative::TwoSided, 0.05)
            .expect("test");
        check(name, &r, published, DEC5);
        check(name, &r, exact, EXACT);
    }
}

#[test]
fn welch_t_test_proportions() {
    // test_tests.py test_two_sided_ttest_binom: 14/28 vs 16/30, relative.
    let a = Proportion::new(28, 14).expect("valid");
    let b = Proportion::new(30, 16).expect("valid");
    let r = fixed_horizon(
        &effect(&a, &b, Difference::Relative),
        Alternative::TwoSided,
        0.05,
    )
    .expect("test");
    check(
        "binom",
        &r,
        (0.06667, -0.47767, 0.61101, 0.2717, 0.80707),
        DEC5,
    );
    check(
        "binom",
        &r,
        (
            0.06666666666666665,
            -0.4776740282706786,
            0.6110073616040119,
            0.27169855689735606,
            0.8070716832021887,
        ),
        EXACT,
    );
}

#[test]
fn welch_t_test_one_sided() {
    // test_tests.py TestOneSidedGreaterTTest / TestOneSidedLesserTTest (unrounded).
    let cases = [
        (
            Alternative::Greater,
            Difference::Relative,
            (
                0.5033610858562358,
                -0.045136675850396046,
                INF,
                0.3334122146400735,
                0.06558262868467746,
            ),
        ),
        (
            Alternative::Greater,
            Difference::Absolute,
            (
                0.23437666666666668,
                0.020791480063255735,
                INF,
                0.12983081254184736,
                0.03554272489873023,
            ),
        ),
        (
            Alternative::Lesser,
            Difference::Relative,
            (
                0.5033610858562358,
                -INF,
                1.0518588475628676,
                0.3334122146400735,
                0.9344173713153225,
            ),
        ),
        (
            Alternative::Lesser,
            Difference::Absolute,
            (
                0.23437666666666668,
                -INF,
                0.44796185327007765,
                0.12983081254184736,
                0.9644572751012698,
            ),
        ),
    ];
    for (alt, d, want) in cases {
        let r = fixed_horizon(&effect(&a3000(), &b3461(), d), alt, 0.05).expect("test");
        check(&format!("{alt:?} {d:?}"), &r, want, EXACT);
    }
}

#[test]
fn sequential_two_sided() {
    // test_tests.py test_sequential_test_runs: means, relative, tuning 1000.
    let r = sequential(
        &effect(&a3000(), &b3461(), Difference::Relative),
        Alternative::TwoSided,
        0.05,
        1000.0,
    )
    .expect("test");
    check(
        "means",
        &r,
        (0.50336, -0.55844, 1.56516, 0.33341, 1.0),
        DEC5,
    );
    check(
        "means",
        &r,
        (
            0.5033610858562358,
            -0.5584405051077315,
            1.5651626768202032,
            0.3334122146400735,
            1.0,
        ),
        EXACT,
    );

    // test_sequential_test_runs_prop: proportions, relative, default tuning 5000.
    let a = Proportion::new(3000, 1396).expect("valid");
    let b = Proportion::new(3461, 2422).expect("valid");
    let r = sequential(
        &effect(&a, &b, Difference::Relative),
        Alternative::TwoSided,
        0.05,
        5000.0,
    )
    .expect("test");
    check(
        "proportions",
        &r,
        (0.50386, 0.40098, 0.60675, 0.03386, 0.0),
        DEC5,
    );
    check(
        "proportions",
        &r,
        (
            0.5038633516821496,
            0.4009784966859415,
            0.6067482066783576,
            0.033860214798231224,
            5.174716682839778e-44,
        ),
        EXACT,
    );
    // The p-value itself, relative to its size.
    close("p relative", r.p_value / 5.174716682839778e-44, 1.0, 1e-6);

    // test_sequential_test_tuning_as_expected: N* = 10 and 10000 are both wider than
    // N* = 6461 (the actual N).
    let e = effect(&a3000(), &b3461(), Difference::Relative);
    let ci = |tuning| {
        sequential(&e, Alternative::TwoSided, 0.05, tuning)
            .expect("test")
            .interval
    };
    let (below, near, above) = (ci(10.0), ci(6461.0), ci(10_000.0));
    assert!(below.lower < above.lower && below.upper > above.upper);
    assert!(below.lower < near.lower && below.upper > near.upper);
    assert!(above.lower < near.lower && above.upper > near.upper);
}

#[test]
fn sequential_one_sided() {
    // test_tests.py TestSequentialOneSided{Greater,Lesser}TTest, default tuning 5000.
    // GrowthBook reports 0.4999 (the top of its bisection bracket) when the bound does
    // not cross 0 within [1e-5, 0.4999]; our closed-form p-value is then at least that.
    let cases = [
        (
            Alternative::Greater,
            Difference::Relative,
            -0.42356454602790883,
            INF,
            0.4999,
        ),
        (
            Alternative::Greater,
            Difference::Absolute,
            -0.12656844172804982,
            INF,
            0.46316491943359384,
        ),
        (
            Alternative::Lesser,
            Difference::Relative,
            -INF,
            1.4302867177403806,
            0.4999,
        ),
        (
            Alternative::Lesser,
            Difference::Absolute,
            -INF,
            0.5953217750613832,
            0.4999,
        ),
    ];
    for (alt, d, lower, upper, gb_p) in cases {
        let e = effect(&a3000(), &b3461(), d);
        let r = sequential(&e, alt, 0.05, 5000.0).expect("test");
        let what = format!("{alt:?} {d:?}");
        if lower.is_finite() {
            close(&what, r.interval.lower, lower, EXACT);
        } else {
            assert_eq!(r.interval.lower, lower);
        }
        if upper.is_finite() {
            close(&what, r.interval.upper, upper, EXACT);
        } else {
            assert_eq!(r.interval.upper, upper);
        }
        if gb_p == 0.4999 {
            assert!(r.p_value >= 0.4999, "{what}: {}", r.p_value);
        } else {
            // GrowthBook stops its bisection when the bound at the probe is within 1e-6
            // of 0 and returns the next midpoint: after 11 halvings of [1e-5, 0.4999]
            // that is within (0.4999 − 1e-5)/2¹¹ ≈ 2.44e-4 of the root. Our value is the
            // root: the bound at our p-value is 0.
            assert!(
                (r.p_value - gb_p).abs() <= (0.4999 - 1e-5) / 2048.0,
                "{what}: {}",
                r.p_value
            );
            // ρ is held at its alpha = 0.05 value in the inversion.
            let rho = abgate_stats::mixture_rho(0.05, 5000.0, alt);
            let hw =
                abgate_stats::sequential_halfwidth(e.standard_error, e.units, rho, r.p_value, alt);
            close(&format!("{what} bound at p"), e.estimate - hw, 0.0, 1e-12);
        }
    }
}

#[test]
fn gbstats_pipeline_means_and_ratios() {
    // packages/stats/tests/test_gbstats.py (values rounded to 9 decimals):
    // QUERY_OUTPUT dimension "one", variation "zero" is the baseline.
    let a = mean(100, 270.0, 848.79);
    let b = mean(120, 300.0, 869.0);
    let e = effect(&a, &b, Difference::Relative);
    // test_get_metric_dfs_frequentist.
    let r = fixed_horizon(&e, Alternative::TwoSided, 0.05).expect("test");
    close("fixed estimate", r.estimate, -0.074074074, DEC9);
    close("fixed p", r.p_value, 0.145219005, DEC9);
    check(
        "fixed",
        &r,
        (
            -0.07407407407407414,
            -0.17395718516868802,
            0.025809037020539743,
            0.050657045137700016,
            0.14521900541814636,
        ),
        EXACT,
    );
    // test_analyze_metric_df_sequential: tuning 600.
    let r = sequential(&e, Alternative::TwoSided, 0.05, 600.0).expect("test");
    close("sequential p", r.p_value, 0.892332229, DEC9);
    close("sequential lower", r.interval.lower, -0.233322085, DEC9);
    check(
        "sequential",
        &r,
        (
            -0.07407407407407414,
            -0.23332208516976455,
            0.08517393702161626,
            0.050657045137700016,
            0.8923322285852284,
        ),
        EXACT,
    );

    // test_get_metric_dfs_frequentist_ratio: RATIO_STATISTICS_DF.
    let ratio = |n, ms, mss, ds, dss, sp| {
        Ratio::new(mean(n, ms, mss), mean(n, ds, dss), sp).expect("valid ratio")
    };
    let a = ratio(100, 270.0, 848.79, 510.0, 810.0, -900.0);
    let b = ratio(120, 300.0, 869.0, 500.0, 800.0, -905.0);
    close("ratio cr a", a.mean(), 0.529411765, DEC9);
    close("ratio cr b", b.mean(), 0.6, DEC9);
    let r = fixed_horizon(
        &effect(&a, &b, Difference::Relative),
        Alternative::TwoSided,
        0.05,
    )
    .expect("test");
    close("ratio estimate", r.estimate, 0.133333333, DEC9);
    close("ratio p", r.p_value, 0.610663339, DEC9);
    check(
        "ratio",
        &r,
        (
            0.13333333333333328,
            -0.38207581731519935,
            0.648742483981866,
            0.2615080376577792,
            0.6106633393932221,
        ),
        EXACT,
    );
}

#[test]
fn quantile_difference() {
    // packages/stats/tests/bayesian/test_tests.py TestEffectBayesianABTest: p90 with
    // an improper flat prior, where the posterior is the likelihood, so the published
    // interval is est ± z₀.₉₇₅·se of the frequentist moments (unrounded).
    let q = |n, hat, lo, hi| QuantileEstimate::new(n, n, 0.9, hat, lo, hi).expect("valid");
    let c = q(
        11054,
        7.157987489967789,
        7.098780136176828,
        7.217194843758751,
    );
    let t = q(
        10861,
        7.694499927525767,
        7.64180598628119,
        7.747193868770344,
    );
    let z = 1.959963984540054;
    let abs = effect(&c, &t, Difference::Absolute);
    close("abs estimate", abs.estimate, 0.5365124375579775, EXACT);
    close(
        "abs lower",
        abs.estimate - z * abs.standard_error,
        0.4572559589115422,
        EXACT,
    );
    close(
        "abs upper",
        abs.estimate + z * abs.standard_error,
        0.6157689162044128,
        EXACT,
    );
    // The relative case was published with a proper prior of variance 1e6, which moves
    // it by about 1e-11 from the improper one.
    let rel = effect(&c, &t, Difference::Relative);
    close("rel estimate", rel.estimate, 0.07495297222736319, EXACT);
    close(
        "rel lower",
        rel.estimate - z * rel.standard_error,
        0.06341005842481906,
        EXACT,
    );
    close(
        "rel upper",
        rel.estimate + z * rel.standard_error,
        0.08649588602990732,
        EXACT,
    );
    // Per-event variances as gbstats computes them (QuantileStatistic.variance).
    close("variance c", c.variance(), 10.086379172635016, EXACT);
    close("variance t", t.variance(), 7.8497352407290535, EXACT);
    // And the frequentist t interval gbstats gives for the same statistics.
    let r = fixed_horizon(&abs, Alternative::TwoSided, 0.05).expect("test");
    check(
        "quantile t",
        &r,
        (
            0.5365124375579775,
            0.45725153061125173,
            0.6157733445047033,
            0.040437721953872775,
            0.0,
        ),
        EXACT,
    );
}

#[test]
fn srm_chi_squared_cases() {
    // packages/back-end/test/stats.test.ts (rounded to 9 decimals), and the unrounded
    // value of gbstats/utils.py check_srm for the same input.
    // observed, weights, published (9 decimals), unrounded.
    type Case<'a> = (&'a [u64], &'a [f64], f64, Option<f64>);
    let cases: [Case; 9] = [
        (
            &[1000, 1200],
            &[0.5, 0.5],
            0.000020079,
            Some(2.007865612426481e-05),
        ),
        (
            &[135, 115],
            &[0.5, 0.5],
            0.205903211,
            Some(0.20590321073206466),
        ),
        (
            &[310, 98],
            &[0.75, 0.25],
            0.647434186,
            Some(0.647434185701797),
        ),
        (&[1000, 900, 800], &[1.0, 0.0, 0.0], 1.0, None),
        (
            &[1000, 1200, 900],
            &[0.5, 0.5, 0.0],
            0.000020079,
            Some(2.007865612426481e-05),
        ),
        (&[0, 0, 0], &[0.34, 0.33, 0.33], 1.0, None),
        (
            &[0, 10, 10],
            &[0.34, 0.33, 0.33],
            0.005790624,
            Some(0.0057906244034232005),
        ),
        (
            &[500, 500, 600],
            &[0.34, 0.33, 0.33],
            0.000592638,
            Some(0.0005926379315273186),
        ),
        (&[500, 500], &[0.5, 0.5], 1.0, Some(1.0)),
    ];
    for (observed, weights, published, exact) in cases {
        let r = srm_chi_squared(observed, weights).expect("valid");
        close(&format!("{observed:?}"), r.p_value, published, DEC9);
        if let Some(exact) = exact {
            close(&format!("{observed:?} exact"), r.p_value, exact, 1e-12);
        }
    }
    // stats.test.ts also gives `checkSrm([1000], [0.5, 0.5]) == 1` (a missing count is
    // skipped); we refuse mismatched lengths as bad input instead.
    assert!(srm_chi_squared(&[1000], &[0.5, 0.5]).is_err());
}

#[test]
fn multiple_testing_adjustments() {
    // packages/shared/test/experiments.test.ts "pvalue correction method": the
    // published lists are sorted, with the original indices alongside.
    let holm_adj = holm(&[0.01, 0.04, 0.03, 0.005, 0.55, 0.6]);
    let (sorted, idx) = ([0.03, 0.05, 0.12, 0.12, 1.0, 1.0], [3, 0, 2, 1, 4, 5]);
    for (want, i) in sorted.iter().zip(idx) {
        close(&format!("holm[{i}]"), holm_adj[i], *want, 1e-12);
    }
    let bh = benjamini_hochberg(&[0.898, 0.138, 0.007, 0.964, 0.538, 0.006, 0.138]);
    let (sorted, idx) = (
        [0.964, 0.964, 0.7532, 0.2415, 0.2415, 0.0245, 0.0245],
        [3, 0, 4, 1, 6, 2, 5],
    );
    for (want, i) in sorted.iter().zip(idx) {
        // Published with toFixed(8).
        close(&format!("bh[{i}]"), bh[i], *want, 5e-9);
    }
    // "pvalue correction on results": two p-values 0.025 and 0.03 → Holm 0.05 each.
    assert_eq!(holm(&[0.025, 0.03]), vec![0.05, 0.05]);
}

#[test]
fn sequential_srm_matches_optimizely_ssrm() {
    // pythonhubdev/ssrm (a copy of optimizely/ssrm) @
    // 3d0adfc605035613501fc539b1ab333a14db10fb, ssrm_test/test_ssrm_test.py,
    // test_sequential_posteriors: null [0.4, 0.4, 0.2], Dirichlet prior [1, 1, 1].
    // ln BF = log_marginal_likelihood_M1 − log_marginal_likelihood_M0 at each step.
    let unit_level: [([u64; 3], f64, f64); 5] = [
        ([1, 0, 0], -1.0986122886681096, -0.916290731874155),
        ([0, 1, 0], -2.4849066497880004, -1.83258146374831),
        ([1, 0, 0], -3.401197381662155, -2.748872195622465),
        ([0, 1, 0], -4.499809670330265, -3.66516292749662),
        ([0, 0, 1], -6.4457198193855785, -5.27460083993072),
    ];
    let aggregated: [([u64; 3], f64, f64); 4] = [
        ([20, 17, 9], -7.028201432058012, -4.0776406466061985),
        ([18, 21, 8], -11.947847738358888, -8.265946861099877),
        ([4, 6, 4], -15.471401950257842, -11.610743519545139),
        ([18, 19, 11], -19.96484521090386, -15.781031228536165),
    ];
    for steps in [&unit_level[..], &aggregated[..]] {
        let mut t =
            SequentialSrm::with_prior(&[0.4, 0.4, 0.2], vec![1.0, 1.0, 1.0]).expect("valid");
        let mut min_p = 1.0_f64;
        for (batch, m1, m0) in steps {
            let p = t.add(batch).expect("valid");
            close("ln BF", t.log_bayes_factor(), m1 - m0, 1e-9);
            min_p = min_p.min((m0 - m1).exp());
            close("running p", p, min_p, 1e-12);
        }
    }
}
