//! The experiment controller (the seed's monitor loop): every interval, read each running
//! experiment's variants from the per-variant store, `step`, record the decision, then
//! apply it to the gateway. A decision is in the state store before it takes effect, so a
//! restart resumes every experiment where it was.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use abgate_config::model::{BanditReward, Experiment, GateKind, MetricSource, Strategy};
use abgate_experiment::{
    advance, all_to, step, Decision, DecisionRecord, ExperimentState, Observations, Phase, Report,
    RewardTotals,
};
use abgate_proxy::Control;
use abgate_state::{DecisionRow, Store};
use anyhow::Context as _;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http_client::WebhookClient;

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
}

/// Drives every experiment the gateway runs.
pub struct Controller {
    control: Arc<Control>,
    store: Store,
    /// What gates and event hooks are called with.
    webhooks: WebhookClient,
    tracked: Mutex<BTreeMap<String, Tracked>>,
    /// Maps unix ms onto the monotonic clock the sample store uses.
    anchor: (Instant, u64),
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
    /// The latest observations.
    pub observations: Option<Observations>,
}

impl Controller {
    /// Takes control of the gateway's experiments: each resumes from the state store, or
    /// starts now; decisions recorded but not applied before a crash are applied again.
    pub fn start(
        control: Arc<Control>,
        store: Store,
        webhooks: WebhookClient,
    ) -> anyhow::Result<Arc<Self>> {
        let now = now_ms();
        let controller = Arc::new(Self {
            control,
            store,
            webhooks,
            tracked: Mutex::new(BTreeMap::new()),
            anchor: (Instant::now(), now),
        });
        for spec in controller.control.experiments() {
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
        if let Err(e) = self.control.set_weights(&spec.id, &state.weights) {
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
            },
        );
        Ok(())
    }

    /// Starts tracking experiments that appeared in the files since (after a reload).
    pub fn sync(&self) -> anyhow::Result<()> {
        let now = now_ms();
        for spec in self.control.experiments() {
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
        let now = now_ms();
        for stored in self.store.experiments()? {
            if self.lock().contains_key(&stored.id) || stored.spec.get("resource").is_none() {
                continue;
            }
            let spec = parse(&stored.spec["resource"])?;
            self.control.upsert_experiment(spec.clone())?;
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
            let now = now_ms();
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
            .filter(|t| Self::overdue(t, now).is_some() || Self::analysis_due(t, now))
            .map(|t| t.spec.id.clone())
            .collect()
    }

    /// The progress deadline `t` has passed, if it has.
    fn overdue(t: &Tracked, now: u64) -> Option<Duration> {
        if !matches!(t.state.phase, Phase::Running | Phase::Paused) {
            return None;
        }
        let deadline = t.spec.progress_deadline?;
        let since = t.state.updated_at.max(t.state.started_at);
        (now.saturating_sub(since) > deadline.as_millis() as u64).then_some(deadline)
    }

    fn analysis_due(t: &Tracked, now: u64) -> bool {
        t.state.phase == Phase::Running
            && now.saturating_sub(t.last_analysis) >= t.spec.interval.as_millis() as u64
    }

    /// One experiment's work at `now`: a rollback past its progress deadline, else its
    /// analysis when its interval has passed.
    async fn tick(&self, id: &str, now: u64) -> anyhow::Result<()> {
        let (overdue, due) = {
            let tracked = self.lock();
            let Some(t) = tracked.get(id) else {
                return Ok(());
            };
            (Self::overdue(t, now), Self::analysis_due(t, now))
        };
        if let Some(deadline) = overdue {
            let reason = format!(
                "no decision moved the experiment on within its progress deadline of {}; rolling back",
                humantime::format_duration(deadline)
            );
            return self.force_rollback(id, reason, now);
        }
        if due {
            self.analyze(id, now).await?;
        }
        Ok(())
    }

    /// Rolls back whatever the policy would say (a deadline, a gate, a failure limit).
    fn force_rollback(&self, id: &str, reason: String, now: u64) -> anyhow::Result<()> {
        let (spec, mut state, revision) = self.snapshot(id)?;
        if state.phase == Phase::Paused {
            // Apply ignores nothing in Paused, but say it plainly in the state too.
            state.resume(now);
        }
        let observations = Observations::empty(&spec, state.period_started_at, now);
        self.decide(
            &spec,
            state,
            revision,
            Decision::Rollback { reason },
            observations,
            now,
        )
    }

    fn instant_of(&self, ms: u64) -> Instant {
        let (instant, anchor) = self.anchor;
        if ms >= anchor {
            instant + Duration::from_millis(ms - anchor)
        } else {
            instant
                .checked_sub(Duration::from_millis(anchor - ms))
                .unwrap_or(instant)
        }
    }

    /// The current period's observations: complete windows after the split took effect.
    fn observe(&self, spec: &Experiment, state: &ExperimentState, now: u64) -> Observations {
        let store = self.control.telemetry().store();
        let from_ms = state.period_started_at.max(self.anchor.1);
        // The window the split changed in mixes both splits: start after it.
        let from = store.window_of(self.instant_of(from_ms)) + 1;
        let to = store.window_of(self.instant_of(now));
        let stats = spec
            .variants
            .iter()
            .map(|v| match store.get(&spec.id, &v.name) {
                Some(cell) if to > from => cell.snapshot(from, to),
                _ => Default::default(),
            })
            .collect();
        self.with_feedback(spec, Observations::from_stats(spec, stats, from_ms, now))
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
    ) -> anyhow::Result<Value> {
        let (spec, state, _) = self.snapshot(id)?;
        if !spec.variants.iter().any(|v| v.name == variant) {
            anyhow::bail!(
                "experiment {id} has no variant {variant}; its variants are {:?}",
                spec.variants.iter().map(|v| &v.name).collect::<Vec<_>>()
            );
        }
        if !(0.0..=1.0).contains(&score) {
            anyhow::bail!("a feedback score is between 0 and 1, got {score}");
        }
        let now = now_ms();
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

    async fn analyze(&self, id: &str, now: u64) -> anyhow::Result<()> {
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
            return match ask_gates(&self.webhooks, &spec, GateKind::PreRollout, &state, None).await
            {
                Ok(()) => {
                    if let Some(t) = self.lock().get_mut(id) {
                        t.pre_rollout_pending = false;
                    }
                    let weights = spec.variants.iter().map(|v| v.weight).collect();
                    let reason =
                        "pre-rollout gates passed; the candidate gets its first traffic".to_owned();
                    let observations = Observations::empty(&spec, state.period_started_at, now);
                    self.decide(
                        &spec,
                        state,
                        revision,
                        Decision::SetWeights { weights, reason },
                        observations,
                        now,
                    )
                }
                Err(refusal) => self.fail(&spec, now, format!("pre-rollout {refusal}")),
            };
        }

        if let Err(refusal) =
            ask_gates(&self.webhooks, &spec, GateKind::Rollback, &state, None).await
        {
            // A rollback gate that answers yes (2xx) asks for a rollback; one that gives
            // no answer leaves the analysis incomplete.
            if refusal.asked {
                return self.force_rollback(id, format!("rollback {refusal}"), now);
            }
            return self.fail(&spec, now, format!("rollback {refusal}"));
        }

        let observations = match &spec.metric_source {
            MetricSource::Builtin => self.observe(&spec, &state, now),
            MetricSource::Prometheus { address, queries } => {
                match crate::prometheus_source::observe(&spec, &state, address, queries, now).await
                {
                    Ok(o) => self.with_feedback(&spec, o),
                    Err(e) => return self.fail(&spec, now, format!("metric source: {e:#}")),
                }
            }
        };
        let mut decision = step(&spec, &state, &observations, now);
        if let Decision::Promote { variant, reason } = &decision {
            if let Err(refusal) = ask_gates(
                &self.webhooks,
                &spec,
                GateKind::ConfirmPromotion,
                &state,
                Some(&decision),
            )
            .await
            {
                if !refusal.answered {
                    // A gate that cannot be reached is a failed analysis, not a "no".
                    return self.fail(&spec, now, format!("confirm-promotion {refusal}"));
                }
                decision = Decision::Hold {
                    reason: format!("{reason}; but confirm-promotion {refusal}, so {variant} is not promoted yet"),
                };
            }
        }
        // A whole analysis went through: the run of failures is over.
        if let Some(t) = self.lock().get_mut(id) {
            t.failures = 0;
        }
        self.note_analysis(
            id,
            now,
            Some(observations.clone()),
            Some(decision.reason().to_owned()),
        );
        if let Decision::Hold { reason } = &decision {
            self.store.record_analysis(
                id,
                now,
                &json!({ "observations": observations, "reason": reason }),
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
        reason: Option<String>,
    ) {
        if let Some(t) = self.lock().get_mut(id) {
            t.last_analysis = now;
            if observations.is_some() {
                t.last_observations = observations;
            }
            if let Some(reason) = reason {
                t.last_reason = reason;
            }
        }
    }

    /// Counts a failed analysis; at the experiment's failure limit, rolls back.
    fn fail(&self, spec: &Experiment, now: u64, why: String) -> anyhow::Result<()> {
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
            t.failures
        };
        tracing::warn!(experiment = %spec.id, failures, "analysis failed: {why}");
        self.store.record_analysis(
            &spec.id,
            now,
            &json!({ "failed": why, "failures": failures }),
        )?;
        if failures >= spec.failure_limit {
            let reason = format!(
                "{failures} analyses in a row failed (failureLimit {}); the last: {why}; rolling back",
                spec.failure_limit
            );
            return self.force_rollback(&spec.id, reason, now);
        }
        Ok(())
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
    ) -> anyhow::Result<()> {
        let mut next = state.clone();
        // A bandit's period that ends keeps its rewards in the state.
        advance(spec, &mut next, &decision, &observations, now);
        let record = DecisionRecord::new(spec, &state, &decision, observations, now);
        // Only a split the gateway can put in force is recorded: a recorded decision
        // that then fails to apply would leave the store ahead of the gateway (and of
        // the revision held here, so every later decision would conflict).
        if next.weights != state.weights {
            self.check_routable(spec, &next.weights)?;
        }
        let row = DecisionRow {
            at: now,
            kind: record.kind.clone(),
            reason: record.reason.clone(),
            weights_before: record.weights_before.clone(),
            weights_after: record.weights_after.clone(),
            observations: serde_json::to_value(&record)?,
        };
        let seq = self
            .store
            .record_decision(&spec.id, revision, &row, &serde_json::to_value(&next)?)
            .with_context(|| format!("recording a decision for {}", spec.id))?;
        if next.weights != state.weights {
            self.control.set_weights(&spec.id, &next.weights)?;
        }
        self.store.mark_applied(&spec.id, seq)?;
        tracing::info!(experiment = %spec.id, decision = record.kind, "{}", record.reason);
        tell_event_gates(&self.webhooks, spec, &next, &record);
        if let Some(t) = self.lock().get_mut(&spec.id) {
            t.state = next;
            t.revision = revision + 1;
            t.last_reason = record.reason;
        }
        Ok(())
    }

    /// Refuses `weights` when they give traffic to a variant whose subset has no
    /// endpoint (what `Control::set_weights` would refuse).
    fn check_routable(&self, spec: &Experiment, weights: &[u32]) -> anyhow::Result<()> {
        let config = self.control.config();
        for (variant, &weight) in spec.variants.iter().zip(weights) {
            if weight > 0
                && config
                    .subset_endpoints(&spec.host, Some(&variant.subset))
                    .is_none_or(|e| e.is_empty())
            {
                anyhow::bail!(
                    "subset {} of {} has no endpoint; refusing to route traffic to it",
                    variant.subset,
                    spec.host
                );
            }
        }
        Ok(())
    }

    /// Applies an operator's decision (set split, promote, rollback) at once.
    pub fn operate(&self, id: &str, decision: Decision) -> anyhow::Result<Summary> {
        let now = now_ms();
        let (spec, state, revision) = self.snapshot(id)?;
        if state.phase.is_terminal() {
            anyhow::bail!(
                "experiment {id} has ended ({}); nothing to change",
                state.phase
            );
        }
        decision
            .validate(&spec)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let observations = self.observe(&spec, &state, now);
        self.decide(&spec, state, revision, decision, observations, now)?;
        self.summary(id)
    }

    /// Pauses or resumes an experiment.
    pub fn set_paused(&self, id: &str, paused: bool) -> anyhow::Result<Summary> {
        let now = now_ms();
        let (_, mut state, revision) = self.snapshot(id)?;
        let changed = if paused {
            state.pause(now)
        } else {
            state.resume(now)
        };
        if !changed {
            anyhow::bail!(
                "experiment {id} is {}; cannot {}",
                state.phase,
                if paused { "pause" } else { "resume" }
            );
        }
        let row = DecisionRow {
            at: now,
            kind: if paused { "pause" } else { "resume" }.to_owned(),
            reason: format!(
                "{} by an operator",
                if paused { "paused" } else { "resumed" }
            ),
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
        }
        self.summary(id)
    }

    /// Starts an experiment created through the API.
    pub fn create(&self, spec: Experiment, document: Value) -> anyhow::Result<Summary> {
        if self.lock().contains_key(&spec.id) {
            anyhow::bail!("experiment {} exists", spec.id);
        }
        self.control.upsert_experiment(spec.clone())?;
        let id = spec.id.clone();
        // A new experiment starts from scratch, even if a deleted one had its id.
        if self.store.experiment(&id)?.is_some_and(|s| !s.deleted) {
            self.store.delete_experiment(&id, now_ms())?;
        }
        self.track(
            spec,
            Some(json!({ "source": "api", "resource": document })),
            now_ms(),
        )?;
        self.summary(&id)
    }

    /// Removes an experiment: its rule goes, the host is as it was; its history stays.
    pub fn delete(&self, id: &str) -> anyhow::Result<()> {
        if self.lock().remove(id).is_none() {
            anyhow::bail!("no experiment {id}");
        }
        self.control.remove_experiment(id);
        self.store.delete_experiment(id, now_ms())?;
        Ok(())
    }

    fn snapshot(&self, id: &str) -> anyhow::Result<(Experiment, ExperimentState, u64)> {
        let tracked = self.lock();
        let t = tracked
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("no experiment {id}"))?;
        Ok((t.spec.clone(), t.state.clone(), t.revision))
    }

    /// One experiment's summary.
    pub fn summary(&self, id: &str) -> anyhow::Result<Summary> {
        let tracked = self.lock();
        let t = tracked
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("no experiment {id}"))?;
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
            observations: t.last_observations.clone(),
        })
    }

    /// Every experiment's summary.
    pub fn summaries(&self) -> Vec<Summary> {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.iter().filter_map(|id| self.summary(id).ok()).collect()
    }

    /// The experiment's report, from its decision log and the current period.
    pub fn report(&self, id: &str) -> anyhow::Result<Report> {
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
        let current = self.observe(&spec, &state, now_ms());
        let mut periods: Vec<Observations> =
            decisions.iter().map(|d| d.observations.clone()).collect();
        if !state.phase.is_terminal() {
            periods.push(current);
        }
        Ok(Report::new(&spec, &state, &decisions, &periods))
    }
}

fn has_gate(spec: &Experiment, kind: GateKind) -> bool {
    spec.gates.iter().any(|g| g.kind == kind)
}

/// Why a gate did not let the experiment go on.
#[derive(Debug)]
struct GateRefusal {
    name: String,
    /// The gate answered 2xx (for a rollback gate: "roll back").
    asked: bool,
    /// The gate answered at all (a refusal), rather than failing or timing out.
    answered: bool,
    why: String,
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
async fn ask_gates(
    webhooks: &WebhookClient,
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
fn tell_event_gates(
    webhooks: &WebhookClient,
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
