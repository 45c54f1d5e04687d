//! The experiment controller (the seed's monitor loop): every interval, read each running
//! experiment's variants from its [`MetricSource`], `step`, record the decision, then put
//! it in force through the [`Actuator`]. A decision is in the state store before it takes
//! effect, so a restart resumes every experiment where it was.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use abgate_config::model::{BanditReward, Experiment, GateKind, Strategy};
use abgate_experiment::{
    advance, after_confirm_promotion, after_failure, after_pre_rollout, after_rollback_gates,
    all_to, judge_gates, past_progress_deadline, step, Decision, DecisionRecord, ExperimentState,
    Gated, Observations, Phase, Report, RewardTotals,
};
use abgate_outbound::Client;
use abgate_state::{DecisionRow, Store};
use anyhow::Context as _;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::gates::{self, has_gate, tell_event_gates};
use crate::{Actuator, Clock, ControlError, MetricSource};

type Result<T, E = ControlError> = std::result::Result<T, E>;

/// One experiment under control.
struct Tracked {
    spec: Experiment,
    state: ExperimentState,
    revision: u64,
    /// Consecutive failed analyses (metric source errors, refused pre-rollout gates).
    failures: u32,
    /// A pre-rollout gate has yet to pass: the baseline takes everything until it does.
    pre_rollout_pending: bool,
    last_analysis: u64,
    /// The latest observations, for progress displays.
    last_observations: Option<Observations>,
    last_reason: String,
    last_summary: String,
}

/// Drives every experiment the gateway runs.
pub struct Controller {
    actuator: Arc<dyn Actuator>,
    metrics: Arc<dyn MetricSource>,
    store: Store,
    /// What gates and event hooks are called with.
    webhooks: Client,
    tracked: Mutex<BTreeMap<String, Tracked>>,
    clock: Clock,
}

/// What a controller works with.
pub struct Parts {
    /// Puts splits in force.
    pub actuator: Arc<dyn Actuator>,
    /// Reads each experiment's observations.
    pub metrics: Arc<dyn MetricSource>,
    /// Where experiments' state and decisions are kept.
    pub store: Store,
    /// What gates and event hooks are called with.
    pub webhooks: Client,
    /// The time.
    pub clock: Clock,
}

/// A summary of one experiment, as the API and the CLI show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Id.
    pub id: String,
    /// Host.
    pub host: String,
    /// Strategy.
    pub strategy: &'static str,
    /// Where it stands.
    pub phase: Phase,
    /// Variant name and the share it gets, in percent.
    pub split: Vec<(String, u32)>,
    /// The declared baseline.
    pub baseline: String,
    /// The winner, when there is one.
    pub winner: Option<String>,
    /// Weight changes made so far.
    pub steps: u32,
    /// The latest reason the controller gave.
    pub last_reason: String,
    /// The latest decision (or analysis) in one line.
    pub last_summary: String,
    /// The latest observations.
    pub observations: Option<Observations>,
}

impl Controller {
    /// Takes control of the gateway's experiments: each resumes from the state store, or
    /// starts now; decisions recorded but not applied before a crash are applied again.
    pub fn start(parts: Parts) -> anyhow::Result<Arc<Self>> {
        let now = parts.clock.now_ms();
        let controller = Arc::new(Self {
            actuator: parts.actuator,
            metrics: parts.metrics,
            store: parts.store,
            webhooks: parts.webhooks,
            tracked: Mutex::new(BTreeMap::new()),
            clock: parts.clock,
        });
        for spec in controller.actuator.experiments() {
            controller.track(spec, None, now)?;
        }
        // Weights are re-applied from each state above; what is left is the bookkeeping.
        for (id, _, seq) in controller.store.unapplied()? {
            controller.store.mark_applied(&id, seq)?;
        }
        Ok(controller)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Tracked>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking `spec`: resumes its stored state, or stores a new one. `document`
    /// is the resource as created through the API (kept so a restart can rebuild it).
    fn track(&self, spec: Experiment, document: Option<Value>, now: u64) -> anyhow::Result<()> {
        let stored = self.store.experiment(&spec.id)?.filter(|s| !s.deleted);
        let (state, revision) = match stored.and_then(|s| {
            let state: ExperimentState = s.state_as().ok()?;
            state.check(&spec).ok()?;
            Some((state, s.revision))
        }) {
            Some(resumed) => resumed,
            None => {
                let mut state = ExperimentState::new(&spec, now);
                if has_gate(&spec, GateKind::PreRollout) {
                    // The candidate gets no traffic before the pre-rollout gate passes.
                    state.weights = all_to(&spec, spec.baseline);
                }
                let spec_doc = document.unwrap_or_else(
                    || json!({ "source": "file", "id": spec.id, "host": spec.host }),
                );
                let revision = self.store.put_experiment(
                    &spec.id,
                    &spec_doc,
                    &serde_json::to_value(&state)?,
                    now,
                )?;
                (state, revision)
            }
        };
        if let Err(e) = self.actuator.set_split(&spec, &state.weights) {
            tracing::warn!(experiment = %spec.id, "cannot apply the stored split: {e}");
        }
        let pre_rollout_pending = has_gate(&spec, GateKind::PreRollout)
            && state.phase == Phase::Running
            && state.step == 0
            && state.weights == all_to(&spec, spec.baseline);
        self.lock().insert(
            spec.id.clone(),
            Tracked {
                spec,
                state,
                revision,
                failures: 0,
                pre_rollout_pending,
                last_analysis: now,
                last_observations: None,
                last_reason: String::new(),
                last_summary: String::new(),
            },
        );
        Ok(())
    }

    /// Starts tracking experiments that appeared in the files since (after a reload).
    pub fn sync(&self) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        for spec in self.actuator.experiments() {
            if !self.lock().contains_key(&spec.id) {
                self.track(spec, None, now)?;
            }
        }
        Ok(())
    }

    /// Rebuilds the experiments created through the API before a restart.
    pub fn restore_api_experiments(
        &self,
        parse: impl Fn(&Value) -> anyhow::Result<Experiment>,
    ) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        for stored in self.store.experiments()? {
            if self.lock().contains_key(&stored.id) || stored.spec.get("resource").is_none() {
                continue;
            }
            let spec = parse(&stored.spec["resource"])?;
            self.actuator.add(spec.clone())?;
            self.track(spec, Some(stored.spec.clone()), now)?;
        }
        Ok(())
    }

    /// Runs analyses until `stop` changes. Each experiment's work runs in a task of its
    /// own, so a slow gate or metric source delays only its experiment; an experiment
    /// whose work is still under way is not started again.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut working: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            working.retain(|_, task| !task.is_finished());
            let now = self.clock.now_ms();
            for id in self.due(now) {
                if working.contains_key(&id) {
                    continue;
                }
                let controller = Arc::clone(&self);
                let task_id = id.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = controller.tick(&task_id, now).await {
                        tracing::error!(experiment = %task_id, "experiment controller: {e:#}");
                    }
                });
                working.insert(id, task);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => break,
            }
        }
        // A decision is written and applied without a pause: stopping at an await point
        // leaves none half-made.
        for task in working.into_values() {
            task.abort();
        }
    }

    /// The experiments with work to do at `now`: past their progress deadline (running
    /// or paused), or running with their interval passed.
    fn due(&self, now: u64) -> Vec<String> {
        self.lock()
            .values()
            .filter(|t| {
                past_progress_deadline(&t.spec, &t.state, now).is_some()
                    || Self::analysis_due(t, now)
            })
            .map(|t| t.spec.id.clone())
            .collect()
    }

    fn analysis_due(t: &Tracked, now: u64) -> bool {
        t.state.phase == Phase::Running
            && now.saturating_sub(t.last_analysis) >= t.spec.interval.as_millis() as u64
    }

    /// One experiment's work at `now`: a rollback past its progress deadline, else its
    /// analysis when its interval has passed.
    async fn tick(&self, id: &str, now: u64) -> Result<()> {
        let (overdue, due) = {
            let tracked = self.lock();
            let Some(t) = tracked.get(id) else {
                return Ok(());
            };
            (
                past_progress_deadline(&t.spec, &t.state, now),
                Self::analysis_due(t, now),
            )
        };
        if let Some(rollback) = overdue {
            return self.force(id, rollback, now);
        }
        if due {
            self.analyze(id, now).await?;
        }
        Ok(())
    }

    /// Takes `decision` (a rollback for a deadline, a gate, a failure limit) without an
    /// analysis.
    fn force(&self, id: &str, decision: Decision, now: u64) -> Result<()> {
        let (spec, mut state, revision) = self.snapshot(id)?;
        if state.phase == Phase::Paused {
            // Apply ignores nothing in Paused, but say it plainly in the state too.
            state.resume(now);
        }
        let observations = Observations::empty(&spec, state.period_started_at, now);
        self.decide(&spec, state, revision, decision, observations, now)
    }

    /// Takes what a gate's verdict calls for: a decision, or a failed analysis.
    fn gated(&self, spec: &Experiment, gated: Gated, now: u64) -> Result<()> {
        match gated {
            Gated::Decide(decision) => self.force(&spec.id, decision, now),
            Gated::Failed(why) => self.fail(spec, now, why),
        }
    }

    /// The current period's observations, with the feedback posted in it.
    async fn observe(
        &self,
        spec: &Experiment,
        state: &ExperimentState,
        now: u64,
    ) -> anyhow::Result<Observations> {
        let observations = self.metrics.observe(spec, state, now).await?;
        Ok(self.with_feedback(spec, observations))
    }

    /// `obs` with the feedback scores posted in its range, for a bandit rewarded by
    /// feedback (others do not read them).
    fn with_feedback(&self, spec: &Experiment, obs: Observations) -> Observations {
        if spec.strategy != Strategy::Bandit || spec.bandit.reward != BanditReward::Feedback {
            return obs;
        }
        let rows = match self.store.feedback_totals(&spec.id, obs.from, obs.to) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(experiment = %spec.id, "cannot read feedback: {e}");
                return obs;
            }
        };
        let feedback = spec
            .variants
            .iter()
            .map(|v| {
                rows.iter().find(|(name, ..)| name == &v.name).map_or_else(
                    RewardTotals::default,
                    |&(_, n, sum, sum_sq)| RewardTotals { n, sum, sum_sq },
                )
            })
            .collect();
        obs.with_feedback(feedback)
    }

    /// Records a feedback score in [0, 1] for `variant` of experiment `id` (the reward
    /// of a bandit with `reward: feedback`; kept for the report otherwise).
    pub fn feedback(
        &self,
        id: &str,
        variant: &str,
        score: f64,
        request_id: Option<&str>,
    ) -> Result<Value> {
        let (spec, state, _) = self.snapshot(id)?;
        if !spec.variants.iter().any(|v| v.name == variant) {
            return Err(ControlError::Invalid(format!(
                "experiment {id} has no variant {variant}; its variants are {:?}",
                spec.variants.iter().map(|v| &v.name).collect::<Vec<_>>()
            )));
        }
        if !(0.0..=1.0).contains(&score) {
            return Err(ControlError::Invalid(format!(
                "a feedback score is between 0 and 1, got {score}"
            )));
        }
        let now = self.clock.now_ms();
        self.store
            .record_feedback(id, now, variant, score, request_id)?;
        let read =
            spec.strategy == Strategy::Bandit && spec.bandit.reward == BanditReward::Feedback;
        Ok(json!({
            "experiment_id": id,
            "variant": variant,
            "score": score,
            "at": now,
            "period": state.period,
            "rewards_bandit": read,
        }))
    }

    async fn analyze(&self, id: &str, now: u64) -> Result<()> {
        let (spec, state, revision, pre_rollout_pending) = {
            let tracked = self.lock();
            let Some(t) = tracked.get(id) else {
                return Ok(());
            };
            (
                t.spec.clone(),
                t.state.clone(),
                t.revision,
                t.pre_rollout_pending,
            )
        };
        self.note_analysis(id, now, None, None);

        if pre_rollout_pending {
            let replies =
                gates::ask(&self.webhooks, &spec, GateKind::PreRollout, &state, None).await;
            let gated = after_pre_rollout(&spec, &judge_gates(GateKind::PreRollout, &replies));
            if let Gated::Decide(_) = gated {
                if let Some(t) = self.lock().get_mut(id) {
                    t.pre_rollout_pending = false;
                }
            }
            return self.gated(&spec, gated, now);
        }

        let replies = gates::ask(&self.webhooks, &spec, GateKind::Rollback, &state, None).await;
        if let Some(gated) = after_rollback_gates(&spec, &judge_gates(GateKind::Rollback, &replies))
        {
            return self.gated(&spec, gated, now);
        }

        let observations = match self.observe(&spec, &state, now).await {
            Ok(o) => o,
            Err(e) => return self.fail(&spec, now, format!("metric source: {e:#}")),
        };
        let mut decision = step(&spec, &state, &observations, now);
        if let Decision::Promote { .. } = &decision {
            let kind = GateKind::ConfirmPromotion;
            let replies = gates::ask(&self.webhooks, &spec, kind, &state, Some(&decision)).await;
            decision = match after_confirm_promotion(decision, &judge_gates(kind, &replies)) {
                Gated::Decide(decision) => decision,
                Gated::Failed(why) => return self.fail(&spec, now, why),
            };
        }
        // A whole analysis went through: the run of failures is over.
        if let Some(t) = self.lock().get_mut(id) {
            t.failures = 0;
        }
        self.note_analysis(id, now, Some(observations.clone()), Some(&decision));
        if let Decision::Hold { reason, .. } = &decision {
            self.store.record_analysis(
                id,
                now,
                &json!({
                    "observations": observations,
                    "reason": reason,
                    "summary": decision.summary(),
                }),
            )?;
            return Ok(());
        }
        self.decide(&spec, state, revision, decision, observations, now)
    }

    fn note_analysis(
        &self,
        id: &str,
        now: u64,
        observations: Option<Observations>,
        decision: Option<&Decision>,
    ) {
        if let Some(t) = self.lock().get_mut(id) {
            t.last_analysis = now;
            if observations.is_some() {
                t.last_observations = observations;
            }
            if let Some(decision) = decision {
                decision.reason().clone_into(&mut t.last_reason);
                decision.summary().clone_into(&mut t.last_summary);
            }
        }
    }

    /// Counts a failed analysis; at the experiment's failure limit, rolls back.
    fn fail(&self, spec: &Experiment, now: u64, why: String) -> Result<()> {
        let failures = {
            let mut tracked = self.lock();
            let Some(t) = tracked.get_mut(&spec.id) else {
                return Ok(());
            };
            t.failures += 1;
            t.last_reason = format!(
                "analysis failed ({} of {}): {why}",
                t.failures, spec.failure_limit
            );
            t.last_summary = format!("analysis failed ({} of {})", t.failures, spec.failure_limit);
            t.failures
        };
        tracing::warn!(experiment = %spec.id, failures, "analysis failed: {why}");
        self.store.record_analysis(
            &spec.id,
            now,
            &json!({ "failed": why, "failures": failures }),
        )?;
        match after_failure(spec, failures, &why) {
            Some(rollback) => self.force(&spec.id, rollback, now),
            None => Ok(()),
        }
    }

    /// Records a decision, applies it to the gateway, then marks it applied.
    fn decide(
        &self,
        spec: &Experiment,
        state: ExperimentState,
        revision: u64,
        decision: Decision,
        observations: Observations,
        now: u64,
    ) -> Result<()> {
        let mut next = state.clone();
        // A bandit's period that ends keeps its rewards in the state.
        advance(spec, &mut next, &decision, &observations, now);
        let record = DecisionRecord::new(spec, &state, &decision, observations, now);
        // Only a split the gateway can put in force is recorded: a recorded decision
        // that then fails to apply would leave the store ahead of the gateway (and of
        // the revision held here, so every later decision would conflict).
        if next.weights != state.weights {
            self.actuator
                .check_routable(spec, &next.weights)
                .map_err(ControlError::invalid)?;
        }
        let row = DecisionRow {
            at: now,
            kind: record.kind.clone(),
            reason: record.reason.clone(),
            summary: record.summary.clone(),
            weights_before: record.weights_before.clone(),
            weights_after: record.weights_after.clone(),
            observations: serde_json::to_value(&record)?,
        };
        let seq = self
            .store
            .record_decision(&spec.id, revision, &row, &serde_json::to_value(&next)?)
            .with_context(|| format!("recording a decision for {}", spec.id))?;
        if next.weights != state.weights {
            self.put_in_force(spec, &decision, &next.weights)
                .map_err(|e| ControlError::Invalid(format!("{e:#}")))?;
        }
        self.store.mark_applied(&spec.id, seq)?;
        tracing::info!(
            experiment = %spec.id,
            decision = record.kind,
            reason = %record.reason,
            "{}",
            record.headline()
        );
        tell_event_gates(&self.webhooks, spec, &next, &record);
        if let Some(t) = self.lock().get_mut(&spec.id) {
            t.state = next;
            t.revision = revision + 1;
            t.last_summary = record.headline().to_owned();
            t.last_reason = record.reason;
        }
        Ok(())
    }

    /// Puts a decision's split in force: a promotion and a rollback as such, so that an
    /// actuator may do more for them than set weights.
    fn put_in_force(
        &self,
        spec: &Experiment,
        decision: &Decision,
        weights: &[u32],
    ) -> anyhow::Result<()> {
        match decision {
            Decision::Promote { variant, .. } => {
                match spec.variants.iter().position(|v| &v.name == variant) {
                    Some(index) => self.actuator.promote(spec, index),
                    None => self.actuator.set_split(spec, weights),
                }
            }
            Decision::Rollback { .. } => self.actuator.roll_back(spec),
            _ => self.actuator.set_split(spec, weights),
        }
    }

    /// Applies an operator's decision (set split, promote, rollback) at once.
    /// The period's observations go with the decision into the log; a source that cannot
    /// be read does not stop an operator (the decision is logged without them).
    pub async fn operate(&self, id: &str, decision: Decision) -> Result<Summary> {
        let now = self.clock.now_ms();
        let (spec, state, _) = self.snapshot(id)?;
        if state.phase.is_terminal() {
            return Err(ControlError::Invalid(format!(
                "experiment {id} has ended ({}); nothing to change",
                state.phase
            )));
        }
        decision.validate(&spec).map_err(ControlError::invalid)?;
        let observations = match self.observe(&spec, &state, now).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(experiment = %id, "metric source: {e:#}; the operator's decision is logged without observations");
                Observations::empty(&spec, state.period_started_at, now)
            }
        };
        // Read again: the experiment may have moved on while the source was read.
        let (spec, state, revision) = self.snapshot(id)?;
        if state.phase.is_terminal() {
            return Err(ControlError::Invalid(format!(
                "experiment {id} has ended ({}); nothing to change",
                state.phase
            )));
        }
        self.decide(&spec, state, revision, decision, observations, now)?;
        self.summary(id)
    }

    /// Pauses or resumes an experiment.
    pub fn set_paused(&self, id: &str, paused: bool) -> Result<Summary> {
        let now = self.clock.now_ms();
        let (_, mut state, revision) = self.snapshot(id)?;
        let changed = if paused {
            state.pause(now)
        } else {
            state.resume(now)
        };
        if !changed {
            return Err(ControlError::Invalid(format!(
                "experiment {id} is {}; cannot {}",
                state.phase,
                if paused { "pause" } else { "resume" }
            )));
        }
        let verb = if paused { "paused" } else { "resumed" };
        let row = DecisionRow {
            at: now,
            kind: if paused { "pause" } else { "resume" }.to_owned(),
            reason: format!("{verb} by an operator"),
            summary: format!("{verb} by an operator"),
            weights_before: state.weights.clone(),
            weights_after: state.weights.clone(),
            observations: Value::Null,
        };
        let seq = self
            .store
            .record_decision(id, revision, &row, &serde_json::to_value(&state)?)?;
        self.store.mark_applied(id, seq)?;
        if let Some(t) = self.lock().get_mut(id) {
            t.state = state;
            t.revision = revision + 1;
            t.last_reason = row.reason;
            t.last_summary = row.summary;
        }
        self.summary(id)
    }

    /// Starts an experiment created through the API.
    pub fn create(&self, spec: Experiment, document: Value) -> Result<Summary> {
        if self.lock().contains_key(&spec.id) {
            return Err(ControlError::Exists(spec.id));
        }
        self.actuator
            .add(spec.clone())
            .map_err(|e| ControlError::Invalid(format!("{e:#}")))?;
        let id = spec.id.clone();
        // A new experiment starts from scratch, even if a deleted one had its id.
        if self.store.experiment(&id)?.is_some_and(|s| !s.deleted) {
            self.store.delete_experiment(&id, self.clock.now_ms())?;
        }
        self.track(
            spec,
            Some(json!({ "source": "api", "resource": document })),
            self.clock.now_ms(),
        )?;
        self.summary(&id)
    }

    /// Removes an experiment: its rule goes, the host is as it was; its history stays.
    pub fn delete(&self, id: &str) -> Result<()> {
        if self.lock().remove(id).is_none() {
            return Err(ControlError::NotFound(id.to_owned()));
        }
        self.actuator.remove(id);
        self.store.delete_experiment(id, self.clock.now_ms())?;
        Ok(())
    }

    fn snapshot(&self, id: &str) -> Result<(Experiment, ExperimentState, u64)> {
        let tracked = self.lock();
        let t = tracked
            .get(id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        Ok((t.spec.clone(), t.state.clone(), t.revision))
    }

    /// One experiment's summary.
    pub fn summary(&self, id: &str) -> Result<Summary> {
        let tracked = self.lock();
        let t = tracked
            .get(id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        let shares = t.state.percentages();
        Ok(Summary {
            id: t.spec.id.clone(),
            host: t.spec.host.clone(),
            strategy: abgate_experiment::strategy_name(t.spec.strategy),
            phase: t.state.phase,
            split: t
                .spec
                .variants
                .iter()
                .map(|v| v.name.clone())
                .zip(shares)
                .collect(),
            baseline: t.spec.variants[t.spec.baseline].name.clone(),
            winner: t.state.winner.clone(),
            steps: t.state.step,
            last_reason: t.last_reason.clone(),
            last_summary: t.last_summary.clone(),
            observations: t.last_observations.clone(),
        })
    }

    /// Every experiment's summary.
    pub fn summaries(&self) -> Vec<Summary> {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.iter().filter_map(|id| self.summary(id).ok()).collect()
    }

    /// The experiment's report, from its decision log and the current period (left out
    /// when the metric source cannot be read).
    pub async fn report(&self, id: &str) -> Result<Report> {
        let (spec, state, _) = self.snapshot(id)?;
        let decisions: Vec<DecisionRecord> = self
            .store
            .decisions(id)?
            .into_iter()
            // A deleted experiment's history stays in the store under its id; one
            // created again with that id starts from scratch.
            .filter(|(_, row, _)| row.at >= state.started_at)
            .filter_map(|(_, row, _)| serde_json::from_value(row.observations).ok())
            .collect();
        let mut periods: Vec<Observations> =
            decisions.iter().map(|d| d.observations.clone()).collect();
        if !state.phase.is_terminal() {
            match self.observe(&spec, &state, self.clock.now_ms()).await {
                Ok(current) => periods.push(current),
                Err(e) => {
                    tracing::warn!(experiment = %id, "report without the current period: {e:#}")
                }
            }
        }
        Ok(Report::new(&spec, &state, &decisions, &periods))
    }
}
