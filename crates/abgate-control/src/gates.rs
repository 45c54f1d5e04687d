//! An experiment's webhook gates: asked before a rollout, at each analysis and before a
//! promotion; event hooks told of each decision without waiting for them.

use abgate_config::model::{Experiment, GateKind};
use abgate_experiment::{Decision, DecisionRecord, ExperimentState};
use abgate_outbound::Client;
use serde_json::{json, Value};

/// Whether `spec` has a gate of `kind`.
pub fn has_gate(spec: &Experiment, kind: GateKind) -> bool {
    spec.gates.iter().any(|g| g.kind == kind)
}

/// Why a gate did not let the experiment go on.
#[derive(Debug)]
pub struct GateRefusal {
    /// The gate's name.
    pub name: String,
    /// The gate answered 2xx (for a rollback gate: "roll back").
    pub asked: bool,
    /// The gate answered at all (a refusal), rather than failing or timing out.
    pub answered: bool,
    /// What happened, in words.
    pub why: String,
}

impl std::fmt::Display for GateRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gate {} {}", self.name, self.why)
    }
}

/// The JSON a gate receives.
fn gate_payload(
    spec: &Experiment,
    kind: GateKind,
    state: &ExperimentState,
    decision: Option<&Decision>,
) -> Value {
    json!({
        "experiment_id": spec.id,
        "host": spec.host,
        "gate": format!("{kind:?}"),
        "phase": state.phase,
        "split": spec.variants.iter().map(|v| v.name.clone()).zip(state.percentages()).collect::<Vec<_>>(),
        "decision": decision.map(|d| json!({ "kind": d.kind(), "reason": d.reason() })),
    })
}

/// Asks every gate of a kind. Pre-rollout and confirm-promotion gates pass on a 2xx
/// answer and refuse otherwise; a rollback gate's 2xx answer is reported as a refusal
/// with `asked` set (it asks for a rollback), any other answer lets the experiment go on.
/// A gate of any kind that gives no answer (unreachable, refused by `--gate-allow`, past
/// its timeout, a body over the limit) is reported with `answered` unset: a failed
/// analysis.
pub async fn ask_gates(
    webhooks: &Client,
    spec: &Experiment,
    kind: GateKind,
    state: &ExperimentState,
    decision: Option<&Decision>,
) -> Result<(), GateRefusal> {
    for gate in spec.gates.iter().filter(|g| g.kind == kind) {
        let answer = webhooks
            .post_json(
                &gate.url,
                &gate_payload(spec, kind, state, decision),
                gate.timeout,
            )
            .await;
        match (kind, answer) {
            (_, Err(e)) => {
                return Err(GateRefusal {
                    name: gate.name.clone(),
                    asked: false,
                    answered: false,
                    why: format!("failed: {e}"),
                })
            }
            (GateKind::Rollback, Ok(status)) if status.is_success() => {
                return Err(GateRefusal {
                    name: gate.name.clone(),
                    asked: true,
                    answered: true,
                    why: format!("answered {status}: roll back"),
                })
            }
            (GateKind::Rollback, Ok(_)) => {}
            (_, Ok(status)) if status.is_success() => {}
            (_, Ok(status)) => {
                return Err(GateRefusal {
                    name: gate.name.clone(),
                    asked: false,
                    answered: true,
                    why: format!("refused ({status})"),
                })
            }
        }
    }
    Ok(())
}

/// Tells the event gates of a decision, without waiting for them.
pub fn tell_event_gates(
    webhooks: &Client,
    spec: &Experiment,
    state: &ExperimentState,
    record: &DecisionRecord,
) {
    for gate in spec.gates.iter().filter(|g| g.kind == GateKind::Event) {
        let mut payload = gate_payload(spec, GateKind::Event, state, None);
        payload["decision"] = json!({ "kind": record.kind, "reason": record.reason, "weights_after": record.weights_after });
        let (url, timeout, webhooks) = (gate.url.clone(), gate.timeout, webhooks.clone());
        let experiment = spec.id.clone();
        tokio::spawn(async move {
            if let Err(e) = webhooks.post_json(&url, &payload, timeout).await {
                tracing::warn!(%experiment, %url, "event gate: {e}");
            }
        });
    }
}
