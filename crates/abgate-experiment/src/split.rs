//! Split arithmetic: percentages of a relative split, all-to-one splits, a canary's next
//! weight.

use abgate_config::model::{CanaryPlan, Experiment};

/// Weights sending all traffic to `variant` (an index of `spec.variants`): 100 there, 0
/// elsewhere. Rollback is `all_to(spec, spec.baseline)`: the *declared* baseline's index,
/// so it cannot depend on what the variants are called (the seed's rollback named
/// `baseline` and `candidate`, which did not exist, and silently changed nothing). An
/// index out of range gives all zeros, which [`crate::apply`] refuses to put in force.
pub fn all_to(spec: &Experiment, variant: usize) -> Vec<u32> {
    debug_assert!(variant < spec.variants.len(), "variant index out of range");
    (0..spec.variants.len())
        .map(|i| if i == variant { 100 } else { 0 })
        .collect()
}

/// A relative split as whole percentages summing to exactly 100 (largest remainder:
/// each gets the floor of its share, then the largest remainders get the points left,
/// earlier variants first on ties). All zeros (or nothing) give all zeros.
pub fn percentages(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut out: Vec<u32> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let scaled = u64::from(w) * 100;
        // ≤ 100 because w ≤ total.
        out.push(u32::try_from(scaled / total).unwrap_or(100));
        remainders.push((scaled % total, i));
    }
    let given: u32 = out.iter().sum();
    // Largest remainder first; on ties the earlier variant.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((100 - given) as usize) {
        out[i] += 1;
    }
    out
}

/// The candidate weight (percent) the next healthy canary step reaches from `current`:
/// the first of `plan.steps` above `current` (or `max_weight` past the last step), else
/// `current + step_weight`; never above `max_weight`. `None` once `current` holds
/// `max_weight`: the next healthy period promotes instead.
pub fn next_canary_weight(plan: &CanaryPlan, current: u32) -> Option<u32> {
    if current >= plan.max_weight {
        return None;
    }
    let next = if plan.steps.is_empty() {
        current.saturating_add(plan.step_weight.max(1))
    } else {
        plan.steps
            .iter()
            .copied()
            .find(|&s| s > current)
            .unwrap_or(plan.max_weight)
    };
    Some(next.min(plan.max_weight))
}

/// A new split in percentages: `candidate` gets `target` (as much of it as the other
/// candidates leave room for), the other candidates keep their share of `in_force`, and
/// the baseline gets the rest, as the seed computed it: `100 − other candidates −
/// candidate`. `None` when the candidate would not gain anything.
pub fn ramp(in_force: &[u32], baseline: usize, candidate: usize, target: u32) -> Option<Vec<u32>> {
    let mut split = percentages(in_force);
    let others: u32 = split
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != baseline && i != candidate)
        .map(|(_, &w)| w)
        .sum();
    let target = target.min(100u32.saturating_sub(others));
    if target <= split[candidate] {
        return None;
    }
    split[candidate] = target;
    split[baseline] = 100 - others - target;
    Some(split)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn percentages_of_relative_weights() {
        assert_eq!(percentages(&[70, 30]), vec![70, 30]);
        assert_eq!(percentages(&[7, 3]), vec![70, 30]);
        assert_eq!(percentages(&[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(percentages(&[0, 0]), vec![0, 0]);
        assert_eq!(percentages(&[0, 5]), vec![0, 100]);
    }

    #[test]
    fn canary_steps_by_step_weight_or_list() {
        let plan = CanaryPlan::default();
        assert_eq!(next_canary_weight(&plan, 30), Some(40));
        assert_eq!(next_canary_weight(&plan, 45), Some(50));
        assert_eq!(next_canary_weight(&plan, 50), None);
        let listed = CanaryPlan {
            steps: vec![5, 20, 60],
            max_weight: 60,
            ..CanaryPlan::default()
        };
        assert_eq!(next_canary_weight(&listed, 0), Some(5));
        assert_eq!(next_canary_weight(&listed, 10), Some(20));
        assert_eq!(next_canary_weight(&listed, 20), Some(60));
        assert_eq!(next_canary_weight(&listed, 60), None);
    }

    #[test]
    fn ramp_gives_the_rest_to_the_baseline() {
        assert_eq!(ramp(&[70, 30], 0, 1, 40), Some(vec![60, 40]));
        assert_eq!(ramp(&[60, 20, 20], 0, 1, 30), Some(vec![50, 30, 20]));
        // No room left: the other candidate holds 80.
        assert_eq!(ramp(&[0, 20, 80], 0, 1, 30), None);
        assert_eq!(ramp(&[50, 50], 0, 1, 50), None);
    }

    proptest! {
        #[test]
        fn percentages_always_sum_to_100(weights in prop::collection::vec(0u32..1000, 1..6)) {
            let p = percentages(&weights);
            prop_assert_eq!(p.len(), weights.len());
            if weights.iter().any(|&w| w > 0) {
                prop_assert_eq!(p.iter().sum::<u32>(), 100);
            }
            for (w, p) in weights.iter().zip(&p) {
                if *w == 0 { prop_assert_eq!(*p, 0); }
            }
        }

        #[test]
        fn ramp_sums_to_100_and_only_moves_baseline_to_candidate(
            weights in prop::collection::vec(0u32..1000, 2..5),
            target in 0u32..=100,
        ) {
            prop_assume!(weights.iter().any(|&w| w > 0));
            let before = percentages(&weights);
            if let Some(after) = ramp(&weights, 0, 1, target) {
                prop_assert_eq!(after.iter().sum::<u32>(), 100);
                prop_assert!(after[1] > before[1]);
                prop_assert!(after[0] < before[0]);
                prop_assert_eq!(&after[2..], &before[2..]);
            }
        }
    }
}
