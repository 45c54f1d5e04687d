//! The controller on tokio's paused clock, with a recording actuator, a scripted metric
//! source and a real (in-memory SQLite) state store.

use std::sync::{Arc, Mutex};

use abgate_config::model::Experiment;
use abgate_control::controller::Parts;
use abgate_control::source::Observing;
use abgate_control::{Actuator, Clock, Controller, MetricSource, Unroutable};
use abgate_experiment::{ExperimentState, Observations, Phase};
use tokio::sync::{mpsc, watch};

/// Unix ms the tests' clock starts at.
const EPOCH: u64 = 1_800_000_000_000;

/// What the actuator was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Applied {
    Split(Vec<u32>),
    Promote(usize),
    RollBack,
}

/// Records every change, and tells the test of it.
struct Recording {
    spec: Experiment,
    applied: mpsc::UnboundedSender<(Applied, u64)>,
    clock: Clock,
}

impl Actuator for Recording {
    fn experiments(&self) -> Vec<Experiment> {
        vec![self.spec.clone()]
    }
    fn add(&self, _: Experiment) -> anyhow::Result<()> {
        Ok(())
    }
    fn remove(&self, _: &str) {}
    fn set_split(&self, _: &Experiment, weights: &[u32]) -> anyhow::Result<()> {
        let _ = self
            .applied
            .send((Applied::Split(weights.to_vec()), self.clock.now_ms()));
        Ok(())
    }
    fn promote(&self, _: &Experiment, variant: usize) -> anyhow::Result<()> {
        let _ = self
            .applied
            .send((Applied::Promote(variant), self.clock.now_ms()));
        Ok(())
    }
    fn roll_back(&self, _: &Experiment) -> anyhow::Result<()> {
        let _ = self.applied.send((Applied::RollBack, self.clock.now_ms()));
        Ok(())
    }
    fn check_routable(&self, _: &Experiment, _: &[u32]) -> Result<(), Unroutable> {
        Ok(())
    }
}

/// A source that has seen nothing, or that cannot be read at all.
struct Scripted {
    fails: bool,
    reads: Mutex<u32>,
}

impl MetricSource for Scripted {
    fn observe<'a>(
        &'a self,
        spec: &'a Experiment,
        state: &'a ExperimentState,
        now_ms: u64,
    ) -> Observing<'a> {
        *self.reads.lock().unwrap() += 1;
        let fails = self.fails;
        Box::pin(async move {
            if fails {
                anyhow::bail!("connection refused");
            }
            Ok(Observations::empty(spec, state.period_started_at, now_ms))
        })
    }
}

fn experiment(extra: &str) -> Experiment {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: m, namespace: default}}
spec:
  hosts: [model]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: 18001}}, labels: {{version: a}}}}
  - {{address: 127.0.0.1, ports: {{http: 18002}}, labels: {{version: b}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: m, namespace: default}}
spec:
  host: model
  subsets:
  - {{name: stable, labels: {{version: a}}}}
  - {{name: next, labels: {{version: b}}}}
---
apiVersion: abgate.dev/v1alpha1
kind: Experiment
metadata: {{name: e, namespace: default}}
spec:
  host: model
  strategy: canary
  baseline: stable
  variants:
  - {{name: stable, subset: stable, weight: 90}}
  - {{name: next, subset: next, weight: 10}}
  interval: 10s
{extra}
"#
    );
    let loaded = abgate_config::load_sources(&[abgate_config::SourceFile {
        path: std::sync::Arc::from(std::path::Path::new("e.yaml")),
        text: yaml,
    }]);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    loaded.config.experiments.into_iter().next().unwrap()
}

struct Running {
    controller: Arc<Controller>,
    applied: mpsc::UnboundedReceiver<(Applied, u64)>,
    source: Arc<Scripted>,
    _stop: watch::Sender<bool>,
}

fn run(spec: Experiment, fails: bool) -> Running {
    let clock = Clock::starting_at(EPOCH);
    let (tx, applied) = mpsc::unbounded_channel();
    let source = Arc::new(Scripted {
        fails,
        reads: Mutex::new(0),
    });
    let controller = Controller::start(Parts {
        actuator: Arc::new(Recording {
            spec,
            applied: tx,
            clock,
        }),
        metrics: Arc::clone(&source) as Arc<dyn MetricSource>,
        store: abgate_state::Store::open_in_memory().unwrap(),
        webhooks: abgate_outbound::Client::unrestricted(),
        clock,
    })
    .unwrap();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(Arc::clone(&controller).run(stopped));
    Running {
        controller,
        applied,
        source,
        _stop: stop,
    }
}

#[tokio::test(start_paused = true)]
async fn a_progress_deadline_rolls_back_once_it_has_passed() {
    let mut running = run(experiment("  progressDeadline: 45s"), false);
    // The stored split is put in force at the start.
    assert_eq!(
        running.applied.recv().await.unwrap(),
        (Applied::Split(vec![90, 10]), EPOCH)
    );
    // Nothing observed: every analysis holds, until the deadline.
    let (applied, at) = running.applied.recv().await.unwrap();
    assert_eq!(applied, Applied::RollBack);
    assert!(
        (EPOCH + 45_000..EPOCH + 46_000).contains(&at),
        "rolled back {} ms after the start",
        at - EPOCH
    );
    let summary = running.controller.summary("e").unwrap();
    assert_eq!(summary.phase, Phase::RolledBack);
    assert!(
        summary.last_reason.contains("progress deadline of 45s"),
        "{}",
        summary.last_reason
    );
    // Analyses ran at each interval before it: 10 s, 20 s, 30 s, 40 s.
    assert_eq!(*running.source.reads.lock().unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn failed_analyses_roll_back_at_the_failure_limit() {
    let mut running = run(experiment("  failureLimit: 3"), true);
    assert_eq!(
        running.applied.recv().await.unwrap().0,
        Applied::Split(vec![90, 10])
    );
    let (applied, at) = running.applied.recv().await.unwrap();
    assert_eq!(applied, Applied::RollBack);
    // The third failed analysis, at 30 s, is the last.
    assert!(
        (EPOCH + 30_000..EPOCH + 31_000).contains(&at),
        "rolled back {} ms after the start",
        at - EPOCH
    );
    assert_eq!(*running.source.reads.lock().unwrap(), 3);
    let summary = running.controller.summary("e").unwrap();
    assert!(
        summary.last_reason.contains("3 analyses in a row failed"),
        "{}",
        summary.last_reason
    );
    assert!(
        summary.last_reason.contains("connection refused"),
        "{}",
        summary.last_reason
    );
}
