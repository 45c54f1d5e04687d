//! Seeded simulations: intervals cover at their stated rate, and always-valid tests
//! keep their false-positive rate at or under alpha however often they are looked at.
//!
//! Margins. Each check counts events (misses, false positives) among `n` independent
//! simulated experiments. If the true rate is `q`, the count is Binomial(n, q) with
//! standard deviation `sqrt(n·q(1−q))`. A check allows the count `n·α` plus three
//! standard deviations at `q = α` (and, for coverage, minus three), so a correct method
//! fails it with probability about 0.13% per side; the seeds are fixed, so the outcome
//! is the same every run. At n = 2,000 and α = 0.05: 100 ± 29.2, i.e. 71..=129.

use abgate_stats::{
    fixed_horizon, sequential, srm_chi_squared, Alternative, Difference, Effect, Proportion,
    SampleMean, SequentialSrm, SequentialTracker,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const ALPHA: f64 = 0.05;

/// Largest count of events allowed among `n` trials when the rate should be ≤ `alpha`.
fn upper_bound(n: usize, alpha: f64) -> usize {
    let n_f = n as f64;
    (n_f * alpha + 3.0 * (n_f * alpha * (1.0 - alpha)).sqrt()).floor() as usize
}

/// Smallest count allowed when the rate should be `alpha` (coverage not conservative
/// beyond chance).
fn lower_bound(n: usize, alpha: f64) -> usize {
    let n_f = n as f64;
    (n_f * alpha - 3.0 * (n_f * alpha * (1.0 - alpha)).sqrt())
        .ceil()
        .max(0.0) as usize
}

fn normal(rng: &mut SmallRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `m` values of N(mu, sd²) as moments.
fn add_normal(acc: &mut SampleMean, rng: &mut SmallRng, m: u64, mu: f64, sd: f64) {
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    for _ in 0..m {
        let x = mu + sd * normal(rng);
        sum += x;
        sum_sq += x * x;
    }
    acc.merge(&SampleMean::new(m, sum, sum_sq).expect("finite"));
}

fn add_bernoulli(acc: &mut Proportion, rng: &mut SmallRng, m: u64, p: f64) {
    let successes = (0..m).filter(|_| rng.random::<f64>() < p).count() as u64;
    acc.merge(&Proportion::new(m, successes).expect("valid"));
}

#[test]
fn fixed_horizon_intervals_cover_at_their_rate() {
    // 2,000 experiments, 200 units per arm, one look each; a true effect of +0.3 on a
    // mean of 10 (sd 2), and a proportion 0.2 vs 0.25.
    let experiments = 2000;
    let mut rng = SmallRng::seed_from_u64(0xC0FFEE);
    let (mut miss_abs, mut miss_rel, mut miss_prop) = (0, 0, 0);
    for _ in 0..experiments {
        let (mut a, mut b) = (SampleMean::default(), SampleMean::default());
        add_normal(&mut a, &mut rng, 200, 10.0, 2.0);
        add_normal(&mut b, &mut rng, 200, 10.3, 2.0);
        let ci = |d| {
            let e = Effect::between(&a, &b, d).expect("effect");
            fixed_horizon(&e, Alternative::TwoSided, ALPHA)
                .expect("test")
                .interval
        };
        miss_abs += usize::from(!ci(Difference::Absolute).contains(0.3));
        miss_rel += usize::from(!ci(Difference::Relative).contains(0.03));
        let (mut pa, mut pb) = (Proportion::default(), Proportion::default());
        add_bernoulli(&mut pa, &mut rng, 200, 0.2);
        add_bernoulli(&mut pb, &mut rng, 200, 0.25);
        let e = Effect::between(&pa, &pb, Difference::Absolute).expect("effect");
        let r = fixed_horizon(&e, Alternative::TwoSided, ALPHA).expect("test");
        miss_prop += usize::from(!r.interval.contains(0.05));
    }
    let (lo, hi) = (
        lower_bound(experiments, ALPHA),
        upper_bound(experiments, ALPHA),
    );
    eprintln!("fixed-horizon misses of 2000: abs {miss_abs}, rel {miss_rel}, prop {miss_prop} (allowed {lo}..={hi})");
    for (name, misses) in [("abs", miss_abs), ("rel", miss_rel), ("prop", miss_prop)] {
        assert!((lo..=hi).contains(&misses), "{name}: {misses} misses");
    }
}

/// The A/A simulation: 10,000 null experiments, each looked at 20 times (100 more units
/// per arm each look, N from 200 to 4,000, tuning N* = 4,000). Allowed: 500 + 3·21.8,
/// i.e. at most 565 false positives (5.65%).
#[test]
fn always_valid_tests_hold_alpha_across_twenty_looks() {
    let (experiments, looks, batch, tuning) = (10_000, 20, 100, 4000.0);
    let mut rng = SmallRng::seed_from_u64(0xA11CE);
    let mut fp_two_sided = 0;
    let mut fp_greater = 0;
    let mut fp_relative = 0;
    let mut fp_proportion = 0;
    let mut fp_peeking = 0;
    let mut fp_fixed_final = 0;
    for _ in 0..experiments {
        let (mut a, mut b) = (SampleMean::default(), SampleMean::default());
        let (mut pa, mut pb) = (Proportion::default(), Proportion::default());
        let mut two_sided = SequentialTracker::new();
        let mut greater = SequentialTracker::new();
        let mut relative = SequentialTracker::new();
        let mut proportion = SequentialTracker::new();
        let mut peeked = false;
        let mut last_fixed_p = 1.0;
        for _ in 0..looks {
            add_normal(&mut a, &mut rng, batch, 10.0, 2.0);
            add_normal(&mut b, &mut rng, batch, 10.0, 2.0);
            add_bernoulli(&mut pa, &mut rng, batch, 0.1);
            add_bernoulli(&mut pb, &mut rng, batch, 0.1);
            let abs = Effect::between(&a, &b, Difference::Absolute).expect("effect");
            let rel = Effect::between(&a, &b, Difference::Relative).expect("effect");
            let prop = Effect::between(&pa, &pb, Difference::Absolute).expect("effect");
            let seq = |e: &Effect, alt| sequential(e, alt, ALPHA, tuning).expect("test");
            two_sided.observe(&seq(&abs, Alternative::TwoSided));
            greater.observe(&seq(&abs, Alternative::Greater));
            relative.observe(&seq(&rel, Alternative::TwoSided));
            proportion.observe(&seq(&prop, Alternative::TwoSided));
            let fixed = fixed_horizon(&abs, Alternative::TwoSided, ALPHA).expect("test");
            peeked |= fixed.p_value < ALPHA;
            last_fixed_p = fixed.p_value;
        }
        fp_two_sided += usize::from(two_sided.rejects(ALPHA));
        fp_greater += usize::from(greater.rejects(ALPHA));
        fp_relative += usize::from(relative.rejects(ALPHA));
        fp_proportion += usize::from(proportion.rejects(ALPHA));
        fp_peeking += usize::from(peeked);
        fp_fixed_final += usize::from(last_fixed_p < ALPHA);
    }
    let hi = upper_bound(experiments, ALPHA);
    eprintln!(
        "A/A false positives of {experiments} after {looks} looks (allowed ≤ {hi}): \
         sequential two-sided {fp_two_sided}, one-sided {fp_greater}, relative {fp_relative}, \
         proportion {fp_proportion}; fixed-horizon peeked every look {fp_peeking}, \
         fixed-horizon once at the end {fp_fixed_final}"
    );
    for (name, fp) in [
        ("two-sided", fp_two_sided),
        ("one-sided", fp_greater),
        ("relative", fp_relative),
        ("proportion", fp_proportion),
    ] {
        assert!(fp <= hi, "{name}: {fp} false positives of {experiments}");
    }
    // The same data, judged by a fixed-horizon test once, is fine; judged at every look
    // it is not: the simulation is sensitive enough to see peeking.
    assert!(fp_fixed_final <= hi, "fixed once: {fp_fixed_final}");
    assert!(fp_peeking > 2 * hi, "peeking gave only {fp_peeking}");
}

/// The confidence sequence covers a nonzero true effect at every look at once.
#[test]
fn confidence_sequence_covers_the_effect_at_every_look() {
    let (experiments, looks, batch, tuning) = (2000, 20, 100, 4000.0);
    let mut rng = SmallRng::seed_from_u64(0x5EC);
    let (mut miss_two, mut miss_one) = (0, 0);
    for _ in 0..experiments {
        let (mut a, mut b) = (SampleMean::default(), SampleMean::default());
        let (mut missed_two, mut missed_one) = (false, false);
        for _ in 0..looks {
            add_normal(&mut a, &mut rng, batch, 10.0, 2.0);
            add_normal(&mut b, &mut rng, batch, 10.2, 2.0);
            let e = Effect::between(&a, &b, Difference::Absolute).expect("effect");
            let two = sequential(&e, Alternative::TwoSided, ALPHA, tuning).expect("test");
            let one = sequential(&e, Alternative::Lesser, ALPHA, tuning).expect("test");
            missed_two |= !two.interval.contains(0.2);
            missed_one |= !one.interval.contains(0.2);
        }
        miss_two += usize::from(missed_two);
        miss_one += usize::from(missed_one);
    }
    let hi = upper_bound(experiments, ALPHA);
    eprintln!("CS misses at any of {looks} looks, of {experiments}: two-sided {miss_two}, one-sided {miss_one} (allowed ≤ {hi})");
    assert!(miss_two <= hi, "two-sided: {miss_two}");
    assert!(miss_one <= hi, "one-sided: {miss_one}");
}

/// Sequential SRM: 1,000 correctly split experiments checked 20 times (200 units a
/// look, 50/50) stay under alpha; a 52/48 split over the same looks is caught.
#[test]
fn sequential_srm_holds_alpha_and_catches_a_skewed_split() {
    let (experiments, looks, batch) = (1000, 20, 200);
    let mut rng = SmallRng::seed_from_u64(0x5A5);
    let split = |share: f64, rng: &mut SmallRng| {
        let b = (0..batch).filter(|_| rng.random::<f64>() < share).count() as u64;
        [batch - b, b]
    };
    let (mut fp, mut fp_repeated_chi2) = (0, 0);
    for _ in 0..experiments {
        let mut t = SequentialSrm::new(&[0.5, 0.5], 1000.0).expect("valid");
        let mut chi2_fired = false;
        for _ in 0..looks {
            t.add(&split(0.5, &mut rng)).expect("valid");
            let chi2 = srm_chi_squared(t.counts(), &[0.5, 0.5]).expect("valid");
            chi2_fired |= chi2.p_value < ALPHA;
        }
        fp += usize::from(t.fires(ALPHA));
        fp_repeated_chi2 += usize::from(chi2_fired);
    }
    let hi = upper_bound(experiments, ALPHA);
    eprintln!("SRM A/A of {experiments}, {looks} looks: sequential {fp}, repeated chi-squared {fp_repeated_chi2} (allowed ≤ {hi})");
    assert!(fp <= hi, "sequential SRM: {fp}");
    assert!(
        fp_repeated_chi2 > hi,
        "repeated chi-squared: {fp_repeated_chi2}"
    );

    let mut caught = 0;
    for _ in 0..100 {
        let mut t = SequentialSrm::new(&[0.5, 0.5], 1000.0).expect("valid");
        for _ in 0..looks * 5 {
            t.add(&split(0.52, &mut rng)).expect("valid");
        }
        caught += usize::from(t.fires(0.001));
    }
    eprintln!("52/48 over 20,000 units caught at 0.001 in {caught} of 100");
    assert!(caught >= 80, "caught {caught}");
}

/// p95 differences from telemetry sketches (DDSketch mapping, 1% relative error):
/// 1,000 null experiments with lognormal latencies (median 200 ms, σ = 0.5), 2,000
/// requests per arm. The fixed-horizon test once at the end rejects at about alpha
/// (both sides of the binomial bound: 50 ± 20.7 → 30..=70); the sequential test looked
/// at after every 200 requests per arm stays under it.
#[test]
fn p95_comparisons_from_sketches_hold_alpha() {
    use abgate_stats::QuantileEstimate;
    use abgate_telemetry::Sketch;

    let (experiments, looks, batch) = (1000, 10, 200);
    let mut rng = SmallRng::seed_from_u64(0x95);
    let (mut fp_fixed, mut fp_sequential) = (0, 0);
    for _ in 0..experiments {
        let (mut a, mut b) = (Sketch::new(), Sketch::new());
        let mut tracker = SequentialTracker::new();
        let mut last = None;
        for _ in 0..looks {
            for _ in 0..batch {
                a.add((200f64.ln() + 0.5 * normal(&mut rng)).exp());
                b.add((200f64.ln() + 0.5 * normal(&mut rng)).exp());
            }
            let qa = QuantileEstimate::from_sketch(&a, 0.95).expect("events");
            let qb = QuantileEstimate::from_sketch(&b, 0.95).expect("events");
            let e = Effect::between(&qa, &qb, Difference::Absolute).expect("effect");
            tracker.observe(&sequential(&e, Alternative::TwoSided, ALPHA, 4000.0).expect("test"));
            last = Some(e);
        }
        let e = last.expect("looked");
        fp_fixed += usize::from(
            fixed_horizon(&e, Alternative::TwoSided, ALPHA)
                .expect("test")
                .p_value
                < ALPHA,
        );
        fp_sequential += usize::from(tracker.rejects(ALPHA));
    }
    let (lo, hi) = (
        lower_bound(experiments, ALPHA),
        upper_bound(experiments, ALPHA),
    );
    eprintln!("p95 A/A of {experiments}: fixed once {fp_fixed}, sequential over {looks} looks {fp_sequential} (allowed {lo}..={hi}, ≤ {hi})");
    assert!((lo..=hi).contains(&fp_fixed), "fixed: {fp_fixed}");
    assert!(fp_sequential <= hi, "sequential: {fp_sequential}");
}

/// Power of the one-sided sequential guardrail: error rate 1% on the baseline, 3% on
/// the candidate (2 points more), a look after every 100 requests per arm, tuning
/// N* = 10,000. Reports the requests per arm by which 50% and 90% of 500 simulated
/// rollouts had shown harm (1,000 and 1,600 at this seed), and checks the 90th
/// percentile stays under 2,000 (a regression check, not a bound).
#[test]
fn sequential_guardrail_detects_two_points_more_errors() {
    let (experiments, batch, max_looks) = (500, 100, 100);
    let mut rng = SmallRng::seed_from_u64(0xE44);
    let mut detected_at = Vec::with_capacity(experiments);
    for _ in 0..experiments {
        let (mut a, mut b) = (Proportion::default(), Proportion::default());
        let mut tracker = SequentialTracker::new();
        let mut at = None;
        for look in 1..=max_looks {
            add_bernoulli(&mut a, &mut rng, batch, 0.01);
            add_bernoulli(&mut b, &mut rng, batch, 0.03);
            let Ok(e) = Effect::between(&a, &b, Difference::Absolute) else {
                continue; // no errors in either arm yet
            };
            tracker.observe(&sequential(&e, Alternative::Greater, ALPHA, 10_000.0).expect("test"));
            if tracker.rejects(ALPHA) {
                at = Some(look * batch);
                break;
            }
        }
        detected_at.push(at.unwrap_or(u64::MAX));
    }
    detected_at.sort_unstable();
    let median = detected_at[experiments / 2];
    let p90 = detected_at[experiments * 9 / 10];
    eprintln!("1% → 3% errors shown harmful by {median} requests per arm (median), {p90} (90%)");
    assert!(p90 <= 2000, "90th percentile {p90}");
}
