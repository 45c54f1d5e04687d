//! Where an experiment stands: its phase and the split in force. Persisted as JSON by
//! the state store, so every field is plain data.

use abgate_config::model::{Experiment, Strategy};
use serde::{Deserialize, Serialize};

use crate::observe::RewardTotals;
use crate::split::all_to;

/// An experiment's phase. `Promoted`, `RolledBack` and `Finished` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The controller analyses at every interval.
    Running,
    /// The split stays in force but the controller takes no decision.
    Paused,
    /// A variant took all traffic; ended.
    Promoted,
    /// The declared baseline took all traffic back; ended.
    RolledBack,
    /// The planned duration ran out (or the verdict was given); ended.
    Finished,
}

impl Phase {
    /// Whether the experiment has ended: no decision applies any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Finished)
    }

    /// The serialized name (`running`, `rolled_back`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Finished => "finished",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An experiment's live state: what [`crate::apply`] changes and the state store keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentState {
    /// The experiment's id (`Experiment::id`).
    pub id: String,
    /// Where it stands.
    pub phase: Phase,
    /// The split in force, one relative weight per variant, indexed like
    /// `Experiment::variants`. Analysis and ramps read this, never the spec's initial
    /// split (the seed read the initial one, so it ramped from the same point forever).
    pub weights: Vec<u32>,
    /// When the experiment started, unix ms.
    pub started_at: u64,
    /// When the current weights took effect, unix ms: observations count from here.
    pub period_started_at: u64,
    /// 0-based number of the current period; every weight change starts a new one.
    pub period: u32,
    /// How many weight changes the controller made (canary steps, a blue-green switch).
    pub step: u32,
    /// The variant that won (promoted, or named by the final verdict).
    pub winner: Option<String>,
    /// When a decision last touched this state, unix ms.
    pub updated_at: u64,
    /// A bandit's reward sums over its completed periods, one per variant (empty for
    /// other strategies, and before the first period ends): Thompson sampling's
    /// posterior is over every period, while guardrails judge each period alone.
    /// [`crate::advance`] adds a period's sums when a decision ends it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewards: Vec<RewardTotals>,
}

impl ExperimentState {
    /// A running experiment starting at `now`, with the spec's split in force, except
    /// for `bluegreen` and `mirror`, which start with all traffic on the baseline (blue
    /// before the switch; a mirror's users see only the baseline).
    pub fn new(spec: &Experiment, now: u64) -> Self {
        let weights = match spec.strategy {
            Strategy::BlueGreen | Strategy::Mirror => all_to(spec, spec.baseline),
            _ => spec.variants.iter().map(|v| v.weight).collect(),
        };
        Self {
            id: spec.id.clone(),
            phase: Phase::Running,
            weights,
            started_at: now,
            period_started_at: now,
            period: 0,
            step: 0,
            winner: None,
            updated_at: now,
            rewards: Vec::new(),
        }
    }

    /// Checks that this state (read back from storage, say) fits `spec`: same id, one
    /// weight per variant, some weight in force, a known winner.
    pub fn check(&self, spec: &Experiment) -> Result<(), InvalidState> {
        if self.id != spec.id {
            return Err(InvalidState::Id {
                state: self.id.clone(),
                spec: spec.id.clone(),
            });
        }
        if self.weights.len() != spec.variants.len() {
            return Err(InvalidState::WeightCount {
                weights: self.weights.len(),
                variants: spec.variants.len(),
            });
        }
        if self.weights.iter().all(|&w| w == 0) {
            return Err(InvalidState::NoWeight);
        }
        if let Some(w) = &self.winner {
            if !spec.variants.iter().any(|v| &v.name == w) {
                return Err(InvalidState::UnknownWinner(w.clone()));
            }
        }
        Ok(())
    }

    /// Stops the controller's decisions (the split stays in force). `false` when the
    /// experiment is not running.
    pub fn pause(&mut self, now: u64) -> bool {
        if self.phase != Phase::Running {
            return false;
        }
        self.phase = Phase::Paused;
        self.updated_at = now;
        true
    }

    /// Lets the controller decide again. The period goes on: the split never changed,
    /// so the data gathered while paused is still comparable. `false` when not paused.
    pub fn resume(&mut self, now: u64) -> bool {
        if self.phase != Phase::Paused {
            return false;
        }
        self.phase = Phase::Running;
        self.updated_at = now;
        true
    }

    /// The split in force as percentages summing to 100.
    pub fn percentages(&self) -> Vec<u32> {
        crate::split::percentages(&self.weights)
    }
}

/// A state that does not fit its experiment's spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidState {
    /// The state belongs to another experiment.
    #[error("state is for experiment `{state}`, not `{spec}`")]
    Id {
        /// The state's id.
        state: String,
        /// The spec's id.
        spec: String,
    },
    /// The variants changed since the state was written.
    #[error("state has {weights} weights but the experiment has {variants} variants")]
    WeightCount {
        /// Weights in the state.
        weights: usize,
        /// Variants in the spec.
        variants: usize,
    },
    /// No variant has any weight.
    #[error("state's weights are all 0: no variant would get traffic")]
    NoWeight,
    /// The winner is not a variant.
    #[error("state's winner `{0}` is not a variant of the experiment")]
    UnknownWinner(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{experiment, seed_experiment};

    #[test]
    fn new_state_takes_the_spec_split() {
        let spec = seed_experiment();
        let s = ExperimentState::new(&spec, 1_000);
        assert_eq!(s.weights, vec![70, 30]);
        assert_eq!((s.phase, s.period, s.step), (Phase::Running, 0, 0));
        assert_eq!((s.started_at, s.period_started_at), (1_000, 1_000));
        assert_eq!(s.check(&spec), Ok(()));
    }

    #[test]
    fn bluegreen_and_mirror_start_all_on_baseline() {
        for strategy in ["bluegreen", "mirror"] {
            let spec = experiment(&format!("strategy: {strategy}"));
            assert_eq!(ExperimentState::new(&spec, 0).weights, vec![100, 0]);
        }
    }

    #[test]
    fn phase_serializes_snake_case() {
        assert_eq!(
            serde_json::to_string(&Phase::RolledBack).expect("serializes"),
            "\"rolled_back\""
        );
        let s = ExperimentState::new(&seed_experiment(), 5);
        let json = serde_json::to_string(&s).expect("serializes");
        let back: ExperimentState = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, s);
    }

    #[test]
    fn state_that_does_not_fit_the_spec_is_refused() {
        let spec = seed_experiment();
        let mut s = ExperimentState::new(&spec, 0);
        s.weights.push(0);
        assert_eq!(
            s.check(&spec),
            Err(InvalidState::WeightCount {
                weights: 3,
                variants: 2
            })
        );
        let mut s = ExperimentState::new(&spec, 0);
        s.weights = vec![0, 0];
        assert_eq!(s.check(&spec), Err(InvalidState::NoWeight));
    }

    #[test]
    fn pause_and_resume_keep_the_period() {
        let spec = seed_experiment();
        let mut s = ExperimentState::new(&spec, 0);
        assert!(s.pause(10));
        assert!(!s.pause(11));
        assert_eq!(s.phase, Phase::Paused);
        assert!(s.resume(20));
        assert_eq!(
            (s.phase, s.period, s.period_started_at),
            (Phase::Running, 0, 0)
        );
    }
}
