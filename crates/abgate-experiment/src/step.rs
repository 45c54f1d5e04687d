//! The controller as a function: [`step`] decides, [`apply`] changes the state.

use abgate_config::model::{Experiment, Strategy};
use serde::{Deserialize, Serialize};

use crate::fmt;
use crate::observe::Observations;
use crate::policy::{candidates, fold, policy_for, Policy, Verdict};
use crate::split::{all_to, next_canary_weight, ramp};
use crate::state::{ExperimentState, Phase};

/// What the controller does at one interval. Each carries its reason, in words and the
/// numbers behind it, and a one-line `summary` to read at a glance: the action and the
/// one or two figures that decided it (`ramp v1-1 20% → 30%: no harm shown; p95 -34%
/// (upper bound -30%); n 111/412`). Decisions recorded before summaries existed read
/// back with an empty one; [`Decision::summary`] then gives the reason.
#[must_use = "a decision does nothing until it is recorded and applied"]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Change nothing.
    Hold {
        /// Why.
        reason: String,
        /// The decision in one line.
        #[serde(default)]
        summary: String,
    },
    /// Put a new split in force (a canary step, a blue-green switch). Percentages,
    /// indexed like `Experiment::variants`. Starts a new period.
    SetWeights {
        /// The new split.
        weights: Vec<u32>,
        /// Why.
        reason: String,
        /// The decision in one line.
        #[serde(default)]
        summary: String,
    },
    /// Send all traffic to `variant`; the experiment ends promoted.
    Promote {
        /// The variant's name.
        variant: String,
        /// Why.
        reason: String,
        /// The decision in one line.
        #[serde(default)]
        summary: String,
    },
    /// Send all traffic to the declared baseline; the experiment ends rolled back.
    Rollback {
        /// Why.
        reason: String,
        /// The decision in one line.
        #[serde(default)]
        summary: String,
    },
    /// The planned end: a verdict naming the winner the policy found ([`Policy::winner`]:
    /// the seed's score for `classic`, the goal metric's confidence sequence for
    /// `sequential`), or none. The split is left as it is: ending the experiment's
    /// routing (or promoting the winner) is the manager's call, never automatic.
    Finish {
        /// The winner, if the policy found one.
        winner: Option<String>,
        /// Why.
        reason: String,
        /// The decision in one line.
        #[serde(default)]
        summary: String,
    },
}

impl Decision {
    /// `hold`, `set_weights`, `promote`, `rollback` or `finish` (as serialized).
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Hold { .. } => "hold",
            Decision::SetWeights { .. } => "set_weights",
            Decision::Promote { .. } => "promote",
            Decision::Rollback { .. } => "rollback",
            Decision::Finish { .. } => "finish",
        }
    }

    /// Why this decision was taken.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Hold { reason, .. }
            | Decision::SetWeights { reason, .. }
            | Decision::Promote { reason, .. }
            | Decision::Rollback { reason, .. }
            | Decision::Finish { reason, .. } => reason,
        }
    }

    /// The decision in one line; the reason when it has no summary (a decision recorded
    /// before summaries existed).
    pub fn summary(&self) -> &str {
        let summary = match self {
            Decision::Hold { summary, .. }
            | Decision::SetWeights { summary, .. }
            | Decision::Promote { summary, .. }
            | Decision::Rollback { summary, .. }
            | Decision::Finish { summary, .. } => summary,
        };
        if summary.is_empty() {
            self.reason()
        } else {
            summary
        }
    }

    /// [`Decision::Hold`].
    pub fn hold(summary: impl Into<String>, reason: impl Into<String>) -> Self {
        Decision::Hold {
            reason: reason.into(),
            summary: summary.into(),
        }
    }

    /// [`Decision::SetWeights`].
    pub fn set_weights(
        weights: Vec<u32>,
        summary: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Decision::SetWeights {
            weights,
            reason: reason.into(),
            summary: summary.into(),
        }
    }

    /// [`Decision::Promote`].
    pub fn promote(
        variant: impl Into<String>,
        summary: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Decision::Promote {
            variant: variant.into(),
            reason: reason.into(),
            summary: summary.into(),
        }
    }

    /// [`Decision::Rollback`].
    pub fn rollback(summary: impl Into<String>, reason: impl Into<String>) -> Self {
        Decision::Rollback {
            reason: reason.into(),
            summary: summary.into(),
        }
    }

    /// [`Decision::Finish`].
    pub fn finish(
        winner: Option<String>,
        summary: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Decision::Finish {
            winner,
            reason: reason.into(),
            summary: summary.into(),
        }
    }

    /// Whether [`apply`] can put this decision in force for `spec`: a split with one
    /// weight per variant and some weight, a variant that exists. (Decisions from
    /// [`step`] always can; this is for decisions made by people, through the API.)
    pub fn validate(&self, spec: &Experiment) -> Result<(), InvalidDecision> {
        let known = |name: &str| {
            if spec.variants.iter().any(|v| v.name == name) {
                Ok(())
            } else {
                Err(InvalidDecision::UnknownVariant(name.to_owned()))
            }
        };
        match self {
            Decision::Hold { .. } | Decision::Rollback { .. } => Ok(()),
            Decision::SetWeights { weights, .. } => {
                if weights.len() != spec.variants.len() {
                    Err(InvalidDecision::WeightCount {
                        weights: weights.len(),
                        variants: spec.variants.len(),
                    })
                } else if weights.iter().all(|&w| w == 0) {
                    Err(InvalidDecision::NoWeight)
                } else {
                    Ok(())
                }
            }
            Decision::Promote { variant, .. } => known(variant),
            Decision::Finish { winner, .. } => winner.as_deref().map_or(Ok(()), known),
        }
    }
}

/// A decision that cannot be put in force for an experiment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDecision {
    /// A split with the wrong number of weights.
    #[error("the split has {weights} weights but the experiment has {variants} variants")]
    WeightCount {
        /// Weights given.
        weights: usize,
        /// Variants in the experiment.
        variants: usize,
    },
    /// A split with every weight 0.
    #[error("every weight is 0: no variant would get traffic")]
    NoWeight,
    /// A variant the experiment does not have.
    #[error("`{0}` is not a variant of the experiment")]
    UnknownVariant(String),
}

/// The controller's pure step: what to do at `now` (unix ms) given `obs`, the
/// observations of the **current period** (from `state.period_started_at`; observations
/// starting earlier make it hold, since they would mix two splits), with the policy
/// [`policy_for`] gives `spec`.
///
/// By strategy:
/// - `canary`: a regressed candidate rolls back. A halted verdict (a sample ratio
///   mismatch) holds: no step, no promotion. A candidate that *holds* `maxWeight`
///   (after the step that reached it) and stays healthy for that whole next period,
///   with `minSamples`, is promoted. Otherwise a candidate the policy finds ready
///   ([`Policy::ready_to_ramp`]: improved for `classic`, healthy — no harm shown once
///   every guardrail has its minimum sample — for `sequential`) takes the next step
///   (`steps`, else + `stepWeight`, capped at `maxWeight`; the baseline gets what the
///   candidates leave); a candidate at 0% starts the ramp at its first step; anything
///   else holds. At the planned end (`started_at + duration`) it finishes with the
///   policy's winner ([`Policy::winner`]) and does not promote it.
/// - `abtest` and `featureflag` (the flagged subset sees only header-matched traffic;
///   its analysis is an A/B test's): the split is fixed; a regression rolls back; at
///   the planned end it finishes with the policy's winner (a verdict, not a promotion).
/// - `bandit`: Thompson sampling over `spec.bandit.reward` (success, goodput against
///   an SLO, or feedback scores), on the sums of every period. The guardrails come
///   first: a regression rolls back, a sample ratio mismatch holds. The weights move
///   only when the policy finds the period healthy (every guardrail tested, none
///   showing harm) and every arm has `bandit.minSamples` reward units in the period;
///   they become `minWeight + (100 − k·minWeight)·P(best)` percent. The winner rule
///   (an arm's probability of being best at `winnerProbability`, and its always-valid
///   interval against every other arm above 0) promotes; at the planned end it
///   finishes with the winner the rule names, if any. Every reason gives each arm's
///   reward, samples, probability of being best and weight.
/// - `bluegreen`: while blue (the baseline) has traffic, green (the first candidate)
///   gets a mirrored copy of blue's requests (the data plane's job; users see only
///   blue's answers), and each step compares green with blue on them
///   ([`Policy::compare`]). Green switches in only on the evidence a canary step needs
///   ([`Policy::ready_to_ramp`]): then all traffic moves to green at once. Regressed
///   rolls back (staying blue); halted or not enough evidence holds blue; the planned
///   end with no switch finishes without a winner. `skipAnalysis: true` switches at
///   the first step, unchecked. After the switch green is judged on its own
///   ([`Policy::check_alone`]): regressed switches back instantly (rollback); at the
///   planned end, healthy promotes green, inconclusive finishes without a winner.
/// - `mirror`: users see only the baseline (the split is kept all on it; the copy is the
///   data plane's job). The step compares the shadow's figures, holds (a shadow's
///   regression hurts no user, so it is reported, not rolled back) and finishes at the
///   planned end. Never promotes.
///
/// A paused or ended experiment holds.
pub fn step(spec: &Experiment, state: &ExperimentState, obs: &Observations, now: u64) -> Decision {
    step_with(&*policy_for(spec), spec, state, obs, now)
}

/// [`step`] with a given policy.
pub fn step_with(
    policy: &dyn Policy,
    spec: &Experiment,
    state: &ExperimentState,
    obs: &Observations,
    now: u64,
) -> Decision {
    if state.phase.is_terminal() {
        return Decision::hold(
            format!("hold: ended ({})", state.phase),
            format!(
                "the experiment has ended ({}); nothing to decide",
                state.phase
            ),
        );
    }
    let cannot = |reason: String| Decision::hold("hold: cannot analyse", reason);
    if let Err(e) = state.check(spec) {
        return cannot(format!("cannot analyse: {e}"));
    }
    let cx = Cx {
        policy,
        spec,
        state,
        obs,
        now,
    };
    if state.phase == Phase::Paused {
        return Decision::hold(
            "hold: paused",
            format!(
                "paused; the split {} stays in force",
                cx.split(&state.percentages())
            ),
        );
    }
    if let Some(mismatch) = obs.mismatch(spec) {
        return cannot(format!("cannot analyse: {mismatch}"));
    }
    if obs.from < state.period_started_at {
        return cannot(format!(
            "cannot analyse: observations start at {}, before period {} began at {} (they would mix two splits)",
            fmt::iso(obs.from),
            state.period,
            fmt::iso(state.period_started_at)
        ));
    }
    match spec.strategy {
        Strategy::Canary => cx.canary(),
        Strategy::AbTest | Strategy::FeatureFlag => cx.abtest(),
        Strategy::Bandit => cx.bandit(),
        Strategy::BlueGreen => cx.bluegreen(),
        Strategy::Mirror => cx.mirror(),
    }
}

/// Applies `decision` to `state` at `now`: the split, the phase, the period (a changed
/// split starts a new one), the step count (each changed split by
/// [`Decision::SetWeights`]), the winner, `updated_at`.
///
/// An ended experiment ignores every decision. A decision that fails
/// [`Decision::validate`] is ignored too (check it first when it comes from a person).
/// Works while paused, so that people can still set a split, promote or roll back.
pub fn apply(spec: &Experiment, state: &mut ExperimentState, decision: &Decision, now: u64) {
    if state.phase.is_terminal() || decision.validate(spec).is_err() {
        return;
    }
    state.updated_at = now;
    match decision {
        Decision::Hold { .. } => {}
        Decision::SetWeights { weights, .. } => {
            if put_in_force(state, weights.clone(), now) {
                state.step += 1;
            }
        }
        Decision::Promote { variant, .. } => {
            let index = spec
                .variants
                .iter()
                .position(|v| &v.name == variant)
                .expect("validated: the variant exists");
            put_in_force(state, all_to(spec, index), now);
            state.phase = Phase::Promoted;
            state.winner = Some(variant.clone());
        }
        Decision::Rollback { .. } => {
            put_in_force(state, all_to(spec, spec.baseline), now);
            state.phase = Phase::RolledBack;
            state.winner = None;
        }
        Decision::Finish { winner, .. } => {
            state.phase = Phase::Finished;
            state.winner = winner.clone();
        }
    }
}

/// [`apply`], and for a bandit whose period the decision ends, the period's reward
/// sums (from `obs`, the observations the decision was taken on) added to
/// [`ExperimentState::rewards`], so that the posterior keeps them. The controller calls
/// this; a decision applied with plain [`apply`] drops the period's rewards.
pub fn advance(
    spec: &Experiment,
    state: &mut ExperimentState,
    decision: &Decision,
    obs: &Observations,
    now: u64,
) {
    let (period, ended) = (state.period, state.phase.is_terminal());
    apply(spec, state, decision, now);
    if spec.strategy != Strategy::Bandit || ended || state.period == period {
        return;
    }
    if let Ok(rewards) = crate::bandit::period_rewards(spec, obs) {
        state.rewards = crate::bandit::totals(state, &rewards);
    }
}

/// Puts `weights` in force; a change starts a new period. Whether they changed.
fn put_in_force(state: &mut ExperimentState, weights: Vec<u32>, now: u64) -> bool {
    if state.weights == weights {
        return false;
    }
    state.weights = weights;
    state.period += 1;
    state.period_started_at = now;
    true
}

/// `finish: winner v1-1`, `finish: no winner`.
fn finish_summary(winner: Option<&str>) -> String {
    match winner {
        Some(w) => format!("finish: winner {w}"),
        None => "finish: no winner".to_owned(),
    }
}

/// One step's inputs.
struct Cx<'a> {
    policy: &'a dyn Policy,
    spec: &'a Experiment,
    state: &'a ExperimentState,
    obs: &'a Observations,
    now: u64,
}

impl Cx<'_> {
    fn name(&self, i: usize) -> &str {
        &self.spec.variants[i].name
    }

    fn split(&self, weights: &[u32]) -> String {
        let names: Vec<&str> = self.spec.variants.iter().map(|v| v.name.as_str()).collect();
        fmt::split(&names, weights)
    }

    fn deadline(&self) -> u64 {
        let ms = u64::try_from(self.spec.duration.as_millis()).unwrap_or(u64::MAX);
        self.state.started_at.saturating_add(ms)
    }

    fn ended(&self) -> bool {
        self.now >= self.deadline()
    }

    /// `planned end in 23h50m00s (2026-05-02T12:00:00Z)`.
    fn time_left(&self) -> String {
        format!(
            "planned end in {} ({})",
            fmt::duration(self.deadline().saturating_sub(self.now)),
            fmt::iso(self.deadline())
        )
    }

    fn end_reached(&self) -> String {
        format!(
            "planned duration {} reached",
            fmt::duration(self.deadline().saturating_sub(self.state.started_at))
        )
    }

    fn rollback(&self, verdict: &Verdict) -> Decision {
        Decision::rollback(
            format!("roll back: {}", verdict.summary()),
            format!(
                "{}; rolling back: all traffic to baseline {}",
                verdict.reason(),
                self.name(self.spec.baseline)
            ),
        )
    }

    /// `hold 90/10: not enough data (v1-1 23/40 requests)`.
    fn hold(&self, verdict: &Verdict, reason: String) -> Decision {
        Decision::hold(format!("hold: {}", verdict.summary()), reason)
    }

    fn finish(&self, extra: &str) -> Decision {
        let pick = self.policy.winner(self.spec, self.state, self.obs);
        let winner = pick.winner.map(|i| self.name(i).to_owned());
        Decision::finish(
            winner.clone(),
            finish_summary(winner.as_deref()),
            format!("{}: {}{extra}", self.end_reached(), pick.reason),
        )
    }

    fn canary(&self) -> Decision {
        let plan = &self.spec.canary;
        let verdicts: Vec<(usize, Verdict)> = candidates(self.spec)
            .map(|c| (c, self.policy.judge(self.spec, self.state, self.obs, c)))
            .collect();
        if let Some((_, v)) = verdicts.iter().find(|(_, v)| v.is_regressed()) {
            return self.rollback(v);
        }
        let in_force = self.state.percentages();
        if !self.ended() {
            if let Some((_, v)) = verdicts.iter().find(|(_, v)| v.is_halted()) {
                return self.hold(
                    v,
                    format!(
                        "{}; holding {}; {}",
                        v.reason(),
                        self.split(&in_force),
                        self.time_left()
                    ),
                );
            }
        }
        if let Some((c, v)) = verdicts
            .iter()
            .find(|(c, v)| in_force[*c] >= plan.max_weight && v.is_healthy())
        {
            return Decision::promote(
                self.name(*c),
                format!("promote {}: {}", self.name(*c), v.summary()),
                format!(
                    "candidate {} held {}% (maxWeight {}) through period {} and stayed healthy: {}",
                    self.name(*c),
                    in_force[*c],
                    plan.max_weight,
                    self.state.period,
                    v.reason()
                ),
            );
        }
        if self.ended() {
            return self.finish("");
        }
        let mut split = in_force.clone();
        let mut moves = Vec::new();
        let mut briefs = Vec::new();
        for (c, v) in &verdicts {
            let current = split[*c];
            let (target, why, brief) = if current == 0 {
                (
                    next_canary_weight(plan, 0),
                    format!(
                        "candidate {} has no traffic yet: starting the ramp",
                        self.name(*c)
                    ),
                    "starting the ramp".to_owned(),
                )
            } else if self.policy.ready_to_ramp(v) {
                (
                    next_canary_weight(plan, current),
                    v.reason().to_owned(),
                    v.summary().to_owned(),
                )
            } else {
                continue;
            };
            let Some(target) = target else { continue };
            if let Some(next) = ramp(&split, self.spec.baseline, *c, target) {
                briefs.push(format!(
                    "ramp {} {current}% → {}%: {brief}",
                    self.name(*c),
                    next[*c]
                ));
                moves.push(format!(
                    "{why}; {} {current}% → {}% ({})",
                    self.name(*c),
                    next[*c],
                    if plan.steps.is_empty() {
                        format!(
                            "stepWeight {}, maxWeight {}",
                            plan.step_weight, plan.max_weight
                        )
                    } else {
                        format!("steps {:?}, maxWeight {}", plan.steps, plan.max_weight)
                    }
                ));
                split = next;
            }
        }
        if !moves.is_empty() {
            let reason = format!("{}; new split {}", moves.join("; "), self.split(&split));
            return Decision::set_weights(split, briefs.join("; "), reason);
        }
        let verdict = fold(verdicts.into_iter().map(|(_, v)| v));
        self.hold(
            &verdict,
            format!(
                "{}; holding {}; {}",
                verdict.reason(),
                self.split(&in_force),
                self.time_left()
            ),
        )
    }

    fn abtest(&self) -> Decision {
        let verdict = self.policy.analyze(self.spec, self.state, self.obs);
        if verdict.is_regressed() {
            return self.rollback(&verdict);
        }
        if self.ended() {
            return self.finish("");
        }
        self.hold(
            &verdict,
            format!(
                "{}; fixed split {}; {}",
                verdict.reason(),
                self.split(&self.state.percentages()),
                self.time_left()
            ),
        )
    }

    fn bandit(&self) -> Decision {
        let plan = &self.spec.bandit;
        let verdict = self.policy.analyze(self.spec, self.state, self.obs);
        if verdict.is_regressed() {
            return self.rollback(&verdict);
        }
        let in_force = self.state.percentages();
        let head = format!(
            "bandit on reward {}",
            crate::bandit::reward_name(&plan.reward)
        );
        let period = match crate::bandit::period_rewards(self.spec, self.obs) {
            Ok(p) => p,
            Err(why) => {
                return if self.ended() {
                    Decision::finish(
                        None,
                        finish_summary(None),
                        format!("{}: no winner: {why}", self.end_reached()),
                    )
                } else {
                    Decision::hold(
                        "hold: no rewards to update on",
                        format!("{head}: {why}; holding {}", self.split(&in_force)),
                    )
                };
            }
        };
        let ended = self.ended();
        if verdict.is_halted() {
            let why = format!("{}; no weight update and no winner", verdict.reason());
            return if ended {
                Decision::finish(
                    None,
                    format!("finish: no winner; {}", verdict.summary()),
                    format!("{}: {why}", self.end_reached()),
                )
            } else {
                self.hold(
                    &verdict,
                    format!("{head}: {why}; holding {}", self.split(&in_force)),
                )
            };
        }
        let short: Vec<String> = period
            .iter()
            .enumerate()
            .filter(|(_, p)| p.n < plan.min_samples)
            .map(|(i, p)| format!("{} {}", self.name(i), p.n))
            .collect();
        if !ended && (!short.is_empty() || !verdict.is_healthy()) {
            let totals = crate::bandit::totals(self.state, &period);
            let sums: Vec<String> = totals
                .iter()
                .zip(&period)
                .enumerate()
                .map(|(i, (t, p))| {
                    format!("{} {}", self.name(i), crate::bandit::describe_reward(t, p))
                })
                .collect();
            let (why, brief) = if short.is_empty() {
                (
                    format!("guardrails first: {}", verdict.reason()),
                    format!("hold: {}", verdict.summary()),
                )
            } else {
                (
                    format!(
                        "reward units this period {}, fewer than bandit.minSamples {} for every arm",
                        short.join(", "),
                        plan.min_samples
                    ),
                    format!(
                        "hold: not enough data ({} of bandit.minSamples {})",
                        short.join(", "),
                        plan.min_samples
                    ),
                )
            };
            return Decision::hold(
                brief,
                format!(
                    "{head}: not updating ({why}); rewards {}; holding {}; {}",
                    sums.join(", "),
                    self.split(&in_force),
                    self.time_left()
                ),
            );
        }
        let look = match crate::bandit::look(self.spec, self.state, period) {
            Ok(l) => l,
            Err(why) => {
                return Decision::hold(
                    "hold: cannot sample the posterior",
                    format!("{head}: {why}; holding {}", self.split(&in_force)),
                )
            }
        };
        let best: Vec<String> = (0..self.spec.variants.len())
            .map(|i| format!("{} {}", self.name(i), fmt::num(look.probability_best[i], 2)))
            .collect();
        let best = format!("P(best) {}", best.join(", "));
        let arms: Vec<String> = (0..self.spec.variants.len())
            .map(|i| {
                format!(
                    "{} reward {}, P(best) {}, weight {}% → {}%",
                    self.name(i),
                    crate::bandit::describe_reward(&look.totals[i], &look.period[i]),
                    fmt::num(look.probability_best[i], 4),
                    in_force[i],
                    look.weights[i]
                )
            })
            .collect();
        let numbers = format!(
            "{head} (Thompson sampling, {} posterior draws, floor {}%): {}; {}",
            crate::bandit::DRAWS,
            plan.min_weight,
            arms.join("; "),
            look.rule
        );
        if ended {
            let winner = look.winner.map(|w| self.name(w).to_owned());
            return Decision::finish(
                winner.clone(),
                format!("{}; {best}", finish_summary(winner.as_deref())),
                format!(
                    "{}: {}; guardrails: {}",
                    self.end_reached(),
                    numbers,
                    verdict.reason()
                ),
            );
        }
        if let Some(w) = look.winner {
            return Decision::promote(
                self.name(w),
                format!("promote {}: {best}", self.name(w)),
                format!(
                    "winner {}: {numbers}; guardrails: {}",
                    self.name(w),
                    verdict.reason()
                ),
            );
        }
        if look.weights != in_force {
            let reason = format!(
                "{numbers}; new split {}; guardrails: {}",
                self.split(&look.weights),
                verdict.reason()
            );
            return Decision::set_weights(
                look.weights.clone(),
                format!(
                    "reweight {} → {}: {best}",
                    self.split(&in_force),
                    self.split(&look.weights)
                ),
                reason,
            );
        }
        Decision::hold(
            format!("hold {}: {best}", self.split(&in_force)),
            format!(
                "{numbers}; the split {} stays; guardrails: {}; {}",
                self.split(&in_force),
                verdict.reason(),
                self.time_left()
            ),
        )
    }

    fn bluegreen(&self) -> Decision {
        let blue = self.spec.baseline;
        let Some(green) = candidates(self.spec).next() else {
            return Decision::hold("hold: no green variant", "no green variant to switch to");
        };
        let in_force = self.state.percentages();
        if in_force[green] < 100 && self.spec.skip_analysis {
            return Decision::set_weights(
                all_to(self.spec, green),
                format!("switch to green {}: skipAnalysis", self.name(green)),
                format!(
                    "skipAnalysis: switching all traffic from blue {} to green {} at once, without a pre-switch check",
                    self.name(blue),
                    self.name(green)
                ),
            );
        }
        let verdict = self.policy.judge(self.spec, self.state, self.obs, green);
        if in_force[green] < 100 {
            if verdict.is_regressed() {
                return Decision::rollback(
                    format!("roll back (stay blue): {}", verdict.summary()),
                    format!(
                        "pre-switch check of green {}: {}; rolling back: all traffic to baseline {}",
                        self.name(green),
                        verdict.reason(),
                        self.name(blue)
                    ),
                );
            }
            if !verdict.is_halted() && self.policy.ready_to_ramp(&verdict) {
                return Decision::set_weights(
                    all_to(self.spec, green),
                    format!("switch to green {}: {}", self.name(green), verdict.summary()),
                    format!(
                        "pre-switch check of green {} passed: {}; switching all traffic from blue {} to green {} at once",
                        self.name(green),
                        verdict.reason(),
                        self.name(blue),
                        self.name(green)
                    ),
                );
            }
            let why = format!(
                "pre-switch check of green {}: {}; no switch without the evidence a canary step needs",
                self.name(green),
                verdict.reason()
            );
            if self.ended() {
                return Decision::finish(
                    None,
                    format!("finish: never switched; {}", verdict.summary()),
                    format!(
                        "{} before green showed evidence ({why}); blue {} keeps all traffic",
                        self.end_reached(),
                        self.name(blue)
                    ),
                );
            }
            return Decision::hold(
                format!("hold blue: {}", verdict.summary()),
                format!(
                    "{why}; blue {} keeps all traffic; {}",
                    self.name(blue),
                    self.time_left()
                ),
            );
        }
        if verdict.is_regressed() {
            return Decision::rollback(
                format!("switch back to blue: {}", verdict.summary()),
                format!(
                    "{}; switching back: all traffic to blue {}",
                    verdict.reason(),
                    self.name(blue)
                ),
            );
        }
        if self.ended() {
            return match verdict {
                Verdict::Healthy {
                    reason, summary, ..
                } => Decision::promote(
                    self.name(green),
                    format!("promote {}: {summary}", self.name(green)),
                    format!(
                        "{}, green {} healthy on all traffic: {reason}",
                        self.end_reached(),
                        self.name(green)
                    ),
                ),
                v => Decision::finish(
                    None,
                    format!("finish: no winner; {}", v.summary()),
                    format!(
                        "{} without evidence on green {} ({}); green keeps all traffic until someone promotes or rolls back",
                        self.end_reached(),
                        self.name(green),
                        v.reason()
                    ),
                ),
            };
        }
        self.hold(
            &verdict,
            format!(
                "green {} has all traffic: {}; {}",
                self.name(green),
                verdict.reason(),
                self.time_left()
            ),
        )
    }

    fn mirror(&self) -> Decision {
        let baseline = self.spec.baseline;
        if self.state.percentages()[baseline] != 100 {
            return Decision::set_weights(
                all_to(self.spec, baseline),
                format!("all users to baseline {} (mirror)", self.name(baseline)),
                format!(
                    "mirror: users see only baseline {}; the candidates get a shadow copy",
                    self.name(baseline)
                ),
            );
        }
        let verdict = self.policy.analyze(self.spec, self.state, self.obs);
        let outputs: Vec<String> = self
            .obs
            .variants
            .iter()
            .map(|v| match v.completion_tokens_mean {
                Some(t) => format!("{} {}", v.variant, fmt::num(t, 1)),
                None => format!("{} —", v.variant),
            })
            .collect();
        let outputs = format!("mean output tokens: {}", outputs.join(", "));
        if self.ended() {
            return self.finish(&format!(
                "; shadow comparison: {}; {outputs}; not promoted automatically (mirror)",
                verdict.reason()
            ));
        }
        let note = if verdict.is_regressed() {
            " (shadow traffic only: no user saw it, so no rollback)"
        } else {
            ""
        };
        Decision::hold(
            format!("hold: shadow {}", verdict.summary()),
            format!(
                "shadow comparison: {}{note}; {outputs}; {}",
                verdict.reason(),
                self.time_left()
            ),
        )
    }
}

#[cfg(test)]
mod tests;
