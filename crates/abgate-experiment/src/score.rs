//! The seed's winner score, from `_generate_final_report`.

use abgate_config::model::Experiment;

use crate::fmt::{ms, num, rate};
use crate::observe::{Observations, VariantObservation};

/// The seed's score of a variant: success rate × 0.6 + (1 / max(p95 ms, 1)) × 1000 ×
/// 0.4. `None` when either figure is missing (the seed scored a missing success rate
/// as 0 and a missing p95 as 999999 ms).
pub fn score(v: &VariantObservation) -> Option<f64> {
    let sr = v.success_rate()?;
    let p95 = v.latency_p95_ms.filter(|p| p.is_finite())?;
    Some(sr * 0.6 + (1.0 / p95.max(1.0)) * 1000.0 * 0.4)
}

/// The variant with the best [`score`], and why.
#[derive(Debug, Clone, PartialEq)]
pub struct WinnerPick {
    /// Index of the winner in `spec.variants`; `None` when no variant could be scored.
    pub winner: Option<usize>,
    /// Every variant's score (or why it has none), with the numbers.
    pub reason: String,
}

/// Picks the winner by [`score`] among variants with at least `min_samples` requests
/// (and a p95) in `obs`. Ties go to the baseline, then to the earlier variant: a
/// candidate must do strictly better to win. No variant with enough data: no winner.
pub fn pick_winner(spec: &Experiment, obs: &Observations) -> WinnerPick {
    let needed = spec.min_samples.max(1);
    // The baseline first, so that it keeps a tie.
    let order = std::iter::once(spec.baseline)
        .chain((0..spec.variants.len()).filter(|&i| i != spec.baseline));
    let mut best: Option<(usize, f64)> = None;
    let mut parts = Vec::new();
    for i in order {
        let Some(v) = obs.variants.get(i) else {
            continue;
        };
        if v.requests < needed {
            parts.push(format!(
                "{} not scored ({} requests < minSamples {needed})",
                v.variant, v.requests
            ));
            continue;
        }
        let (Some(s), Some(sr), Some(p95)) = (score(v), v.success_rate(), v.latency_p95_ms) else {
            parts.push(format!("{} not scored (no p95 latency)", v.variant));
            continue;
        };
        parts.push(format!(
            "{} {} = {} × 0.6 + 1000 / {} × 0.4",
            v.variant,
            num(s, 4),
            rate(sr),
            ms(p95.max(1.0))
        ));
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    let winner = best.map(|(i, _)| i);
    let head = match winner {
        Some(i) => format!("winner {} by score", spec.variants[i].name),
        None => "no winner: no variant has enough data to score".to_owned(),
    };
    WinnerPick {
        winner,
        reason: if parts.is_empty() {
            head
        } else {
            format!("{head} ({})", parts.join("; "))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{observed, seed_experiment, variant};

    #[test]
    fn score_is_the_seeds_formula() {
        let v = variant("v", 1000, 10, 500.0);
        let expected = 0.99 * 0.6 + (1.0 / 500.0) * 1000.0 * 0.4;
        assert!((score(&v).expect("scored") - expected).abs() < 1e-12);
        // p95 below 1 ms counts as 1 ms.
        let fast = variant("v", 1000, 0, 0.5);
        assert!((score(&fast).expect("scored") - (0.6 + 400.0)).abs() < 1e-9);
    }

    #[test]
    fn winner_only_among_variants_with_enough_samples() {
        let spec = seed_experiment();
        // The candidate would score higher but has too few requests.
        let obs = observed(
            &spec,
            vec![
                variant("v1-0", 1000, 0, 600.0),
                variant("v1-1", 10, 0, 100.0),
            ],
        );
        let pick = pick_winner(&spec, &obs);
        assert_eq!(pick.winner, Some(0));
        assert!(
            pick.reason
                .contains("v1-1 not scored (10 requests < minSamples 100)"),
            "{}",
            pick.reason
        );
    }

    #[test]
    fn no_data_no_winner() {
        let spec = seed_experiment();
        let obs = Observations::empty(&spec, 0, 1);
        let pick = pick_winner(&spec, &obs);
        assert_eq!(pick.winner, None);
        assert!(pick.reason.starts_with("no winner"), "{}", pick.reason);
    }

    #[test]
    fn tie_goes_to_the_baseline() {
        let spec = seed_experiment();
        let obs = observed(
            &spec,
            vec![
                variant("v1-0", 1000, 0, 600.0),
                variant("v1-1", 1000, 0, 600.0),
            ],
        );
        assert_eq!(pick_winner(&spec, &obs).winner, Some(0));
    }
}
