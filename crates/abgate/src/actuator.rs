//! The gateway's own route table as the controller's [`Actuator`].

use std::sync::Arc;

use abgate_config::model::Experiment;
use abgate_control::{routable, Actuator, Unroutable};
use abgate_proxy::Control;

/// Puts splits in force in this process's route table: the next request takes them.
pub struct Gateway(pub Arc<Control>);

impl Actuator for Gateway {
    fn experiments(&self) -> Vec<Experiment> {
        self.0.experiments()
    }

    fn add(&self, spec: Experiment) -> anyhow::Result<()> {
        Ok(self.0.upsert_experiment(spec)?)
    }

    fn remove(&self, id: &str) {
        self.0.remove_experiment(id);
    }

    fn set_split(&self, spec: &Experiment, weights: &[u32]) -> anyhow::Result<()> {
        Ok(self.0.set_weights(&spec.id, weights)?)
    }

    fn check_routable(&self, spec: &Experiment, weights: &[u32]) -> Result<(), Unroutable> {
        routable(&self.0.config(), spec, weights)
    }
}

/// Starts the controller of the gateway behind `control`: its splits go to the route
/// table, each experiment reads the gateway's own store or its Prometheus, and gates are
/// called through `webhooks`.
pub fn start_controller(
    control: Arc<Control>,
    store: abgate_state::Store,
    webhooks: abgate_outbound::Client,
) -> anyhow::Result<Arc<abgate_control::Controller>> {
    use abgate_control::source::{Builtin, BySpec, Prometheus};
    let clock = abgate_control::Clock::start();
    let metrics = BySpec {
        builtin: Builtin::new(Arc::clone(control.telemetry()), clock),
        // Prometheus is the operator's own: not held to the gates' allow-list.
        prometheus: Prometheus::new(abgate_outbound::Client::unrestricted()),
    };
    abgate_control::Controller::start(abgate_control::controller::Parts {
        actuator: Arc::new(Gateway(control)),
        metrics: Arc::new(metrics),
        store,
        webhooks,
        clock,
    })
}
