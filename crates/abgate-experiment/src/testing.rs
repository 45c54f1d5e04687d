//! Fixtures: experiments loaded from YAML the way users write them, and observations.

use std::path::Path;
use std::sync::Arc;

use abgate_config::model::Experiment;
use abgate_config::SourceFile;

use crate::observe::{Observations, VariantObservation};

/// The seed's model host: a ServiceEntry whose endpoints carry the labels of subsets
/// `v1-0`, `v1-1` and `v1-2`, and the DestinationRule defining them.
const HOST: &str = include_str!("../tests/fixtures/seed-host.yaml");

/// An Experiment on the seed's host, written as the seed's `run_model_comparison_experiment`
/// (`traffic_split: {v1-0: 70, v1-1: 30}`, 24 hours, its rollback criteria) and judged
/// by the seed's rules (`policy: classic`, which these fixtures' summary-only
/// observations suit), with `extra` lines added to its spec (`strategy: abtest`,
/// `variants:` replacing the split, `policy: sequential`).
pub(crate) fn experiment(extra: &str) -> Experiment {
    let mut spec = String::new();
    if !extra.contains("policy:") {
        spec.push_str("  policy: classic\n");
    }
    if !extra.contains("variants:") && !extra.contains("traffic_split:") {
        spec.push_str("  traffic_split: {v1-0: 70, v1-1: 30}\n");
    }
    if !extra.contains("rollback_criteria:") {
        spec.push_str("  rollback_criteria: {latency_degradation: 0.2, success_rate_drop: 0.95}\n");
    }
    if !extra.contains("target_metrics:") {
        spec.push_str(
            "  target_metrics: {latency_p95_ms: 2000, success_rate: 0.99, tokens_per_second: 150}\n",
        );
    }
    for line in extra.lines() {
        spec.push_str("  ");
        spec.push_str(line);
        spec.push('\n');
    }
    let yaml = format!(
        r#"{HOST}---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: llama-3-1-8b-v1-1-comparison, namespace: production}}
spec:
  id: llama-3.1-8b-v1-1-comparison
  description: Compare v1.0 baseline against v1.1 candidate
  host: llama-3.1-8b-service
  duration_hours: 24
  success_criteria: {{latency_improvement: 0.1, success_rate_maintained: 0.99}}
{spec}"#
    );
    let loaded = abgate_config::load_sources(&[SourceFile {
        path: Arc::from(Path::new("experiment.yaml")),
        text: yaml.clone(),
    }]);
    assert!(
        !loaded.has_errors(),
        "{yaml}\n{:#?}",
        loaded
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    let mut experiments = loaded.config.experiments;
    assert_eq!(experiments.len(), 1);
    experiments.remove(0)
}

/// The seed's experiment as written, under the seed's rules (`policy: classic`).
pub(crate) fn seed_experiment() -> Experiment {
    experiment("")
}

/// A variant with `requests`, `errors` and a p95 (and a mean at 80% of it).
pub(crate) fn variant(name: &str, requests: u64, errors: u64, p95: f64) -> VariantObservation {
    VariantObservation {
        variant: name.to_owned(),
        requests,
        errors,
        latency_p95_ms: (requests > 0).then_some(p95),
        latency_mean_ms: (requests > 0).then_some(p95 * 0.8),
        ttft_p95_ms: (requests > 0).then_some(p95 / 4.0),
        tokens_per_second: (requests > 0).then_some(50.0),
        completion_tokens_mean: (requests > 0).then_some(200.0),
    }
}

/// Observations of `variants` over `[0, 0)`, for tests of analysis alone.
pub(crate) fn observed(spec: &Experiment, variants: Vec<VariantObservation>) -> Observations {
    assert_eq!(variants.len(), spec.variants.len());
    Observations {
        variants,
        from: 0,
        to: 0,
        stats: Vec::new(),
        feedback: Vec::new(),
        estimates: Vec::new(),
    }
}
