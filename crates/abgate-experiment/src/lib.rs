//! The pure core of abgate's experiments: state, analysis policies, the controller's step function, and reports.
//!
//! Nothing here does I/O, spawns, or reads a clock: time comes in as `now`, unix
//! milliseconds. The controller loop (elsewhere) does, at each interval:
//!
//! 1. read the observations of the **current period** (since
//!    [`ExperimentState::period_started_at`]) into [`Observations`];
//! 2. ask [`step`] what to do: a [`Decision`] carrying its reason in words and numbers;
//! 3. build a [`DecisionRecord`] and store it *before* acting on it;
//! 4. act (route table, Istio), then [`apply`] the decision to the state and store that.
//!
//! A period starts whenever the split changes, so every comparison is between variants
//! that shared one split for the whole of the data: ramps cannot bias a comparison.
//!
//! Two analysis policies judge the observations ([`policy_for`]): [`Sequential`], the
//! default, decides on evidence (always-valid confidence sequences over the raw
//! windows, a circuit breaker, a sample-ratio-mismatch halt, a winner only with
//! confidence); the seed's `ExperimentController._analyze_performance` lives on as the
//! [`Classic`] policy (its thresholds exactly, its defects fixed), and
//! `_generate_final_report` as [`pick_winner`] and [`Report`].
#![forbid(unsafe_code)]

mod bandit;
mod estimate;
mod fmt;
mod guard;
mod html;
mod observe;
mod policy;
mod report;
mod score;
mod sequential;
mod split;
mod state;
mod step;

pub use bandit::{period_rewards, DRAWS as BANDIT_DRAWS};
pub use estimate::{compare, Comparison, Estimate, Metric, VariantEstimates, REPORT_ALPHA};
pub use guard::{
    after_confirm_promotion, after_failure, after_pre_rollout, after_rollback_gates, judge_gates,
    past_progress_deadline, GateAnswer, GateReply, GateVerdict, Gated,
};
pub use observe::{Observations, RewardTotals, VariantObservation};
pub use policy::{fold, policy_for, Classic, Policy, Verdict};
pub use report::{
    DecisionRecord, Report, TimelinePoint, TrafficPoint, VariantReport, VariantWeight,
};
pub use score::{pick_winner, score, WinnerPick};
pub use sequential::{planned_periods, Sequential};
pub use split::{all_to, percentages};
pub use state::{ExperimentState, InvalidState, Phase};
pub use step::{advance, apply, step, step_with, Decision, InvalidDecision};

/// The name a strategy has in YAML (`canary`, `abtest`, ...).
pub fn strategy_name(strategy: abgate_config::model::Strategy) -> &'static str {
    use abgate_config::model::Strategy;
    match strategy {
        Strategy::Canary => "canary",
        Strategy::AbTest => "abtest",
        Strategy::BlueGreen => "bluegreen",
        Strategy::FeatureFlag => "featureflag",
        Strategy::Mirror => "mirror",
        Strategy::Bandit => "bandit",
    }
}

/// The name a policy has in YAML (`sequential`, `classic`).
pub fn policy_kind_name(kind: abgate_config::model::PolicyKind) -> &'static str {
    use abgate_config::model::PolicyKind;
    match kind {
        PolicyKind::Sequential => "sequential",
        PolicyKind::Classic => "classic",
    }
}

#[cfg(test)]
mod testing;
