//! Where observations come from: the [`MetricSource`] trait and its implementations.

mod builtin;
mod prometheus;

use std::future::Future;
use std::pin::Pin;

use abgate_config::model::{self, Experiment};
use abgate_experiment::{ExperimentState, Observations};

pub use builtin::Builtin;
pub use prometheus::{Prometheus, QUERY_TIMEOUT};

/// A source's answer, in the making.
pub type Observing<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Observations>> + Send + 'a>>;

/// Observations of one experiment's variants over its current period (from
/// `state.period_started_at` to `now_ms`, unix milliseconds). An `Err` is a failed
/// analysis (the source could not be read), never "nothing was observed".
pub trait MetricSource: Send + Sync {
    /// Reads the period's observations.
    fn observe<'a>(
        &'a self,
        spec: &'a Experiment,
        state: &'a ExperimentState,
        now_ms: u64,
    ) -> Observing<'a>;
}

/// Each experiment's own source, as its `metrics.source` says: the built-in store, or
/// Prometheus at the address it names.
pub struct BySpec {
    /// For `source: builtin`.
    pub builtin: Builtin,
    /// For `source: prometheus`.
    pub prometheus: Prometheus,
}

impl MetricSource for BySpec {
    fn observe<'a>(
        &'a self,
        spec: &'a Experiment,
        state: &'a ExperimentState,
        now_ms: u64,
    ) -> Observing<'a> {
        match spec.metric_source {
            model::MetricSource::Builtin => self.builtin.observe(spec, state, now_ms),
            model::MetricSource::Prometheus { .. } => self.prometheus.observe(spec, state, now_ms),
        }
    }
}
