//! Adjusting p-values when several candidates and metrics are judged at once: Holm for
//! guardrails (the chance of any false alarm stays under alpha), Benjamini–Hochberg for
//! goal metrics (the expected share of false discoveries stays under alpha).
//!
//! Both return the adjusted p-values in the order given; compare each with alpha.

/// Holm–Bonferroni step-down adjustment (controls the family-wise error rate).
///
/// Sorted ascending, `p_(i) ← min(1, (m − i)·p_(i))` for 0-based `i`, then a running
/// maximum so the adjusted values keep the raw order.
///
/// Source: Holm (1979); GrowthBook `packages/shared/src/experiments/experiments.ts`,
/// `adjustPValuesHolmBonferroni`.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    let mut running = 0.0_f64;
    for (i, &idx) in order.iter().enumerate() {
        let p = (p_values[idx] * (m - i) as f64).min(1.0);
        running = running.max(p);
        adjusted[idx] = running;
    }
    adjusted
}

/// Benjamini–Hochberg step-up adjustment (controls the false discovery rate under
/// independence or positive dependence).
///
/// Sorted descending, `p_(i) ← min(1, p_(i)·m/(m − i))` for 0-based `i` (so the factor
/// is `m / rank`), then a running minimum.
///
/// Source: Benjamini & Hochberg (1995); GrowthBook
/// `packages/shared/src/experiments/experiments.ts`, `adjustPValuesBenjaminiHochberg`.
pub fn benjamini_hochberg(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[b].total_cmp(&p_values[a]));
    let mut adjusted = vec![0.0; m];
    let mut running = 1.0_f64;
    for (i, &idx) in order.iter().enumerate() {
        // m/rank ≥ 1; `max` keeps rounding from putting the result below the raw value.
        let p = (p_values[idx] * m as f64 / (m - i) as f64)
            .max(p_values[idx])
            .min(1.0);
        running = running.min(p);
        adjusted[idx] = running;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_single_are_unchanged() {
        assert!(holm(&[]).is_empty());
        assert_eq!(holm(&[0.03]), vec![0.03]);
        assert_eq!(benjamini_hochberg(&[0.03]), vec![0.03]);
    }
}
