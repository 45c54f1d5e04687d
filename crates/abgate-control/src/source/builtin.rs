//! Observations from the gateway's own per-variant store.

use std::sync::Arc;

use abgate_config::model::Experiment;
use abgate_experiment::{ExperimentState, Observations};
use abgate_telemetry::Telemetry;

use super::{MetricSource, Observing};
use crate::Clock;

/// The per-variant store the data plane fills, read in whole windows.
#[derive(Clone)]
pub struct Builtin {
    telemetry: Arc<Telemetry>,
    clock: Clock,
}

impl Builtin {
    /// Reads `telemetry`'s store; `clock` maps unix time onto its windows.
    pub fn new(telemetry: Arc<Telemetry>, clock: Clock) -> Self {
        Self { telemetry, clock }
    }

    /// The current period's observations: complete windows after the split took effect.
    pub fn read(&self, spec: &Experiment, state: &ExperimentState, now_ms: u64) -> Observations {
        let store = self.telemetry.store();
        // Nothing before the clock started was recorded in this process's store.
        let from_ms = state.period_started_at.max(self.clock.started_ms());
        // The window the split changed in mixes both splits: start after it.
        let from = store.window_of(self.clock.instant_of(from_ms)) + 1;
        let to = store.window_of(self.clock.instant_of(now_ms));
        let stats = spec
            .variants
            .iter()
            .map(|v| match store.get(&spec.id, &v.name) {
                Some(cell) if to > from => cell.snapshot(from, to),
                _ => Default::default(),
            })
            .collect();
        Observations::from_stats(spec, stats, from_ms, now_ms)
    }
}

impl MetricSource for Builtin {
    fn observe<'a>(
        &'a self,
        spec: &'a Experiment,
        state: &'a ExperimentState,
        now_ms: u64,
    ) -> Observing<'a> {
        let observations = self.read(spec, state, now_ms);
        Box::pin(async move { Ok(observations) })
    }
}
