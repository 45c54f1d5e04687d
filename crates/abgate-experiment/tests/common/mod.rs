//! What the simulation tests and the A/A example share: Experiments on the seed's host,
//! loaded the way users write them, and the random draws the simulated servers use.
//! (The example includes this file by path.)
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use abgate_config::model::Experiment;
use abgate_config::SourceFile;
use rand::rngs::SmallRng;
use rand::Rng;

/// 2026-01-01T00:00:00Z in ms: when every simulated experiment starts.
pub const T0: u64 = 1_767_225_600_000;

/// The seed's host with subsets v1-0, v1-1 and v1-2.
pub const HOST: &str = include_str!("../fixtures/seed-host.yaml");

/// An Experiment named `name` of v1-0 (baseline) on the seed's host under the
/// `sequential` policy, with `spec` lines (strategy, variants, interval, duration ...).
/// Panics, with the diagnostics, when it does not load.
pub fn experiment(name: &str, spec: &str) -> Experiment {
    let lines: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let yaml = format!(
        "{HOST}---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: {name}, namespace: production}}
spec:
  host: llama-3.1-8b-service
  baseline: v1-0
  policy: sequential
{lines}"
    );
    let loaded = abgate_config::load_sources(&[SourceFile {
        path: Arc::from(Path::new("experiment.yaml")),
        text: yaml.clone(),
    }]);
    let diagnostics: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
    assert!(!loaded.has_errors(), "{yaml}\n{diagnostics:#?}");
    let mut experiments = loaded.config.experiments;
    assert_eq!(experiments.len(), 1);
    experiments.remove(0)
}

/// A standard normal draw (Box-Muller).
pub fn normal(rng: &mut SmallRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
