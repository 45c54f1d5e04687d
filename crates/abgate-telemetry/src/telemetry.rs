//! The registry: destination series by label set, gateway stats and the variant store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::gateway::GatewayStats;
use crate::labels::DestinationLabels;
use crate::render;
use crate::series::DestinationSeries;
use crate::store::VariantStore;

/// How a [`Telemetry`] is set up.
#[derive(Clone, Debug)]
pub struct TelemetryOptions {
    /// Length of an analysis window (default 10 s; at least 1 ms).
    pub window: Duration,
    /// Windows each variant keeps (default 360: an hour of 10 s windows; at least 4).
    pub windows: usize,
    /// The namespace abgate runs in: `source_workload_namespace` (default `default`).
    pub source_workload_namespace: String,
    /// The instant window 0 begins (default: when the telemetry is made).
    pub origin: Option<Instant>,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            windows: 360,
            source_workload_namespace: "default".to_owned(),
            origin: None,
        }
    }
}

/// Everything the gateway measures: per-destination request and LLM series, gateway
/// health, and the per-variant sample store. Shared through `Arc`.
pub struct Telemetry {
    source_namespace: String,
    /// Series by labels; sorted, so that rendering is stable. Touched when a route table
    /// is built and when rendering, never per request.
    series: Mutex<BTreeMap<DestinationLabels, Arc<DestinationSeries>>>,
    gateway: GatewayStats,
    store: VariantStore,
}

impl Telemetry {
    /// Telemetry with the default options.
    pub fn new() -> Arc<Self> {
        Self::with_options(TelemetryOptions::default())
    }

    /// Telemetry whose analysis windows last `window`.
    pub fn with_window(window: Duration) -> Arc<Self> {
        Self::with_options(TelemetryOptions {
            window,
            ..TelemetryOptions::default()
        })
    }

    /// Telemetry set up by `options`.
    pub fn with_options(options: TelemetryOptions) -> Arc<Self> {
        let origin = options.origin.unwrap_or_else(Instant::now);
        Arc::new(Self {
            source_namespace: options.source_workload_namespace,
            series: Mutex::new(BTreeMap::new()),
            gateway: GatewayStats::default(),
            store: VariantStore::new(options.window, options.windows, origin),
        })
    }

    /// The series block for one destination (a cluster's endpoints that share these
    /// labels). Called when a route table is built, not per request; the same labels
    /// return the same series, so a reload keeps its counters. Labels with an experiment
    /// variant also feed that variant's [`crate::VariantCell`]. Series are kept for the
    /// life of the telemetry: their number is bounded by the configuration's label sets.
    pub fn destination(&self, labels: DestinationLabels) -> Arc<DestinationSeries> {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = series.get(&labels) {
            return existing.clone();
        }
        let cell = labels
            .has_experiment()
            .then(|| self.store.cell(&labels.experiment_id, &labels.variant));
        let made = Arc::new(DestinationSeries::new(
            labels.clone(),
            &self.source_namespace,
            cell,
        ));
        series.insert(labels, made.clone());
        made
    }

    /// Prometheus text exposition format 0.0.4 of every metric, with `# HELP` and
    /// `# TYPE` lines. Reads the counters without stopping recorders.
    pub fn render(&self) -> String {
        let series: Vec<Arc<DestinationSeries>> = {
            let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
            series.values().cloned().collect()
        };
        render::render(&series, &self.gateway)
    }

    /// Gateway health counters and gauges.
    pub fn gateway(&self) -> &GatewayStats {
        &self.gateway
    }

    /// The per-variant sample store.
    pub fn store(&self) -> &VariantStore {
        &self.store
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}
