//! Where splits go: the [`Actuator`] trait, and the routable check.

use abgate_config::model::Experiment;
use abgate_config::Config;
use abgate_experiment::all_to;

/// What puts the controller's decisions in force. Calls are synchronous and quick: an
/// implementation that talks to a remote API records the wanted routing and converges
/// on it in a task of its own.
pub trait Actuator: Send + Sync {
    /// The experiments the configuration declares (files and runtime additions), each
    /// with the split in force.
    fn experiments(&self) -> Vec<Experiment>;

    /// Adds (or replaces) an experiment created at runtime, with its declared split.
    fn add(&self, spec: Experiment) -> anyhow::Result<()>;

    /// Removes an experiment's routing: its host is as it was without it.
    fn remove(&self, id: &str);

    /// Puts `weights` (percentages, indexed like the variants) in force.
    fn set_split(&self, spec: &Experiment, weights: &[u32]) -> anyhow::Result<()>;

    /// Sends all traffic to `variant` (an index into the variants): a promotion.
    fn promote(&self, spec: &Experiment, variant: usize) -> anyhow::Result<()> {
        self.set_split(spec, &all_to(spec, variant))
    }

    /// Sends all traffic to the baseline: a rollback.
    fn roll_back(&self, spec: &Experiment) -> anyhow::Result<()> {
        self.set_split(spec, &all_to(spec, spec.baseline))
    }

    /// Whether `weights` can be put in force: every variant given traffic has somewhere
    /// to send it.
    fn check_routable(&self, spec: &Experiment, weights: &[u32]) -> Result<(), Unroutable>;
}

/// A split that gives traffic to a variant with nowhere to send it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subset {subset} of {host} has no endpoint; refusing to route traffic to it")]
pub struct Unroutable {
    /// The experiment's host.
    pub host: String,
    /// The variant's subset.
    pub subset: String,
}

/// Refuses `weights` when they give traffic to a variant whose subset has no endpoint
/// in `config`.
pub fn routable(config: &Config, spec: &Experiment, weights: &[u32]) -> Result<(), Unroutable> {
    for (variant, &weight) in spec.variants.iter().zip(weights) {
        if weight > 0
            && config
                .subset_endpoints(&spec.host, Some(&variant.subset))
                .is_none_or(|e| e.is_empty())
        {
            return Err(Unroutable {
                host: spec.host.clone(),
                subset: variant.subset.clone(),
            });
        }
    }
    Ok(())
}
