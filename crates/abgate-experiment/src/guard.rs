//! The decisions around an analysis: what a gate's answer means, when a progress
//! deadline or a run of failed analyses rolls back. Pure, like [`step`](crate::step):
//! the controller asks the gates and counts the failures; these say what follows.

use abgate_config::model::{Experiment, GateKind};

use crate::fmt;
use crate::state::{ExperimentState, Phase};
use crate::step::Decision;

/// What one gate answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateAnswer {
    /// An HTTP status.
    Status(u16),
    /// No answer: unreachable, refused by the allow-list, past its timeout, too large.
    Failed(String),
}

/// One gate's reply, as the controller gathered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateReply {
    /// The gate's name.
    pub gate: String,
    /// What it answered.
    pub answer: GateAnswer,
}

/// What the replies of one kind's gates mean, in gate order: the first that does not
/// let the experiment go on decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// Every gate lets the experiment go on.
    Proceed,
    /// A pre-rollout or confirm-promotion gate answered, and not 2xx.
    Refused(String),
    /// A rollback gate answered 2xx: roll back.
    RollBack(String),
    /// A gate gave no answer: the analysis failed (a "no" is not assumed).
    NoAnswer(String),
}

/// Judges the replies of the gates of `kind`: pre-rollout and confirm-promotion gates
/// pass on 2xx and refuse otherwise; a rollback gate's 2xx asks for a rollback, any
/// other status lets the experiment go on; a gate of any kind without an answer is a
/// failed analysis.
pub fn judge_gates(kind: GateKind, replies: &[GateReply]) -> GateVerdict {
    for reply in replies {
        let gate = &reply.gate;
        match (&reply.answer, kind) {
            (GateAnswer::Failed(why), _) => {
                return GateVerdict::NoAnswer(format!("gate {gate} failed: {why}"))
            }
            (GateAnswer::Status(s), GateKind::Rollback) if is_success(*s) => {
                return GateVerdict::RollBack(format!("gate {gate} answered {s}: roll back"))
            }
            (GateAnswer::Status(_), GateKind::Rollback | GateKind::Event) => {}
            (GateAnswer::Status(s), _) if is_success(*s) => {}
            (GateAnswer::Status(s), _) => {
                return GateVerdict::Refused(format!("gate {gate} refused ({s})"))
            }
        }
    }
    GateVerdict::Proceed
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// What follows a gate's verdict: a decision, or a failed analysis (counted towards the
/// failure limit, see [`after_failure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gated {
    /// Take this decision.
    Decide(Decision),
    /// The analysis failed, for this reason.
    Failed(String),
}

/// After the pre-rollout gates: the candidate gets its declared split once they all
/// pass; a refusal or no answer is a failed analysis (the baseline keeps all traffic,
/// and the failure limit rolls back).
pub fn after_pre_rollout(spec: &Experiment, verdict: &GateVerdict) -> Gated {
    match verdict {
        GateVerdict::Proceed => Gated::Decide(Decision::set_weights(
            spec.variants.iter().map(|v| v.weight).collect(),
            "start: pre-rollout gates passed",
            "pre-rollout gates passed; the candidate gets its first traffic",
        )),
        GateVerdict::Refused(why) | GateVerdict::RollBack(why) | GateVerdict::NoAnswer(why) => {
            Gated::Failed(format!("pre-rollout {why}"))
        }
    }
}

/// After the rollback gates: `None` lets the analysis go on.
pub fn after_rollback_gates(spec: &Experiment, verdict: &GateVerdict) -> Option<Gated> {
    match verdict {
        GateVerdict::Proceed | GateVerdict::Refused(_) => None,
        GateVerdict::RollBack(why) => Some(Gated::Decide(Decision::rollback(
            format!("roll back: {why}"),
            format!(
                "rollback {why}; rolling back: all traffic to baseline {}",
                spec.variants[spec.baseline].name
            ),
        ))),
        GateVerdict::NoAnswer(why) => Some(Gated::Failed(format!("rollback {why}"))),
    }
}

/// After the confirm-promotion gates, for `proposed` (a promotion): it stands if they
/// pass; a refusal holds (the progress deadline then decides); no answer is a failed
/// analysis.
pub fn after_confirm_promotion(proposed: Decision, verdict: &GateVerdict) -> Gated {
    let Decision::Promote {
        variant, reason, ..
    } = &proposed
    else {
        return Gated::Decide(proposed);
    };
    match verdict {
        GateVerdict::Proceed => Gated::Decide(proposed),
        GateVerdict::Refused(why) | GateVerdict::RollBack(why) => Gated::Decide(Decision::hold(
            format!("hold: {variant} ready, but confirm-promotion {why}"),
            format!("{reason}; but confirm-promotion {why}, so {variant} is not promoted yet"),
        )),
        GateVerdict::NoAnswer(why) => Gated::Failed(format!("confirm-promotion {why}")),
    }
}

/// A rollback when no decision has moved a running or paused experiment on within its
/// `progressDeadline` (since its last change, or its start) at `now`.
pub fn past_progress_deadline(
    spec: &Experiment,
    state: &ExperimentState,
    now: u64,
) -> Option<Decision> {
    if !matches!(state.phase, Phase::Running | Phase::Paused) {
        return None;
    }
    let deadline = spec.progress_deadline?;
    let since = state.updated_at.max(state.started_at);
    let limit = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
    (now.saturating_sub(since) > limit).then(|| {
        Decision::rollback(
            format!(
                "roll back: no progress within progressDeadline {}",
                fmt::duration(limit)
            ),
            format!(
                "no decision moved the experiment on within its progress deadline of {}; rolling back",
                fmt::duration(limit)
            ),
        )
    })
}

/// After `failures` analyses in a row failed (the last for `why`): a rollback at the
/// experiment's `failureLimit`, else nothing (the next interval tries again).
pub fn after_failure(spec: &Experiment, failures: u32, why: &str) -> Option<Decision> {
    (failures >= spec.failure_limit).then(|| {
        Decision::rollback(
            format!(
                "roll back: {failures} analyses failed in a row (failureLimit {})",
                spec.failure_limit
            ),
            format!(
                "{failures} analyses in a row failed (failureLimit {}); the last: {why}; rolling back",
                spec.failure_limit
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(gate: &str, answer: GateAnswer) -> GateReply {
        GateReply {
            gate: gate.to_owned(),
            answer,
        }
    }

    #[test]
    fn gates_pass_refuse_or_fail_by_kind() {
        let ok = reply("a", GateAnswer::Status(204));
        let no = reply("b", GateAnswer::Status(403));
        let down = reply("c", GateAnswer::Failed("timed out".into()));
        assert_eq!(
            judge_gates(GateKind::PreRollout, std::slice::from_ref(&ok)),
            GateVerdict::Proceed
        );
        assert_eq!(
            judge_gates(GateKind::ConfirmPromotion, &[ok.clone(), no.clone()]),
            GateVerdict::Refused("gate b refused (403)".into())
        );
        // A rollback gate's "no" lets the experiment go on; its "yes" rolls back.
        assert_eq!(
            judge_gates(GateKind::Rollback, std::slice::from_ref(&no)),
            GateVerdict::Proceed
        );
        assert_eq!(
            judge_gates(GateKind::Rollback, &[no, ok]),
            GateVerdict::RollBack("gate a answered 204: roll back".into())
        );
        assert_eq!(
            judge_gates(GateKind::Rollback, &[down]),
            GateVerdict::NoAnswer("gate c failed: timed out".into())
        );
    }

    #[test]
    fn a_refused_promotion_holds_and_an_unanswered_one_fails() {
        let promote = Decision::Promote {
            summary: String::new(),
            variant: "next".into(),
            reason: "healthy".into(),
        };
        let held = after_confirm_promotion(
            promote.clone(),
            &GateVerdict::Refused("gate g refused (409)".into()),
        );
        let Gated::Decide(Decision::Hold { reason, .. }) = held else {
            panic!("{held:?}")
        };
        assert!(reason.contains("next is not promoted yet"), "{reason}");
        assert_eq!(
            after_confirm_promotion(promote.clone(), &GateVerdict::Proceed),
            Gated::Decide(promote.clone())
        );
        assert_eq!(
            after_confirm_promotion(promote, &GateVerdict::NoAnswer("gate g failed: x".into())),
            Gated::Failed("confirm-promotion gate g failed: x".into())
        );
    }
}
