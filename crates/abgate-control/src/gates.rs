//! An experiment's webhook gates: asked before a rollout, at each analysis and before a
//! promotion; event hooks told of each decision without waiting for them.

use abgate_config::model::{Experiment, GateKind};
use abgate_experiment::{
    judge_gates, Decision, DecisionRecord, ExperimentState, GateAnswer, GateReply, GateVerdict,
};
use abgate_outbound::Client;
use serde_json::{json, Value};

/// Whether `spec` has a gate of `kind`.
pub fn has_gate(spec: &Experiment, kind: GateKind) -> bool {
    spec.gates.iter().any(|g| g.kind == kind)
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

/// Asks the gates of `kind` in order, until one does not let the experiment go on
/// ([`judge_gates`] says what each reply means); the replies gathered.
pub async fn ask(
    webhooks: &Client,
    spec: &Experiment,
    kind: GateKind,
    state: &ExperimentState,
    decision: Option<&Decision>,
) -> Vec<GateReply> {
    let mut replies = Vec::new();
    for gate in spec.gates.iter().filter(|g| g.kind == kind) {
        let answer = webhooks
            .post_json(
                &gate.url,
                &gate_payload(spec, kind, state, decision),
                gate.timeout,
            )
            .await;
        replies.push(GateReply {
            gate: gate.name.clone(),
            answer: match answer {
                Ok(status) => GateAnswer::Status(status.as_u16()),
                Err(e) => GateAnswer::Failed(e.to_string()),
            },
        });
        if judge_gates(kind, &replies) != GateVerdict::Proceed {
            break;
        }
    }
    replies
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
