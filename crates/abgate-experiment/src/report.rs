//! Decision records and the final report (the seed's `_generate_final_report`, with the
//! evidence behind it), as JSON and Markdown.

use std::fmt::Write as _;

use abgate_config::model::Experiment;
use abgate_telemetry::WindowStats;
use serde::{Deserialize, Serialize};

use crate::estimate::{compare, Comparison, Estimate, VariantEstimates, REPORT_ALPHA};
use crate::fmt;
use crate::observe::{Observations, VariantObservation};
use crate::policy::policy_for;
use crate::score::score;
use crate::split::percentages;
use crate::state::{ExperimentState, Phase};
use crate::step::{apply, Decision};
use crate::{policy_kind_name, strategy_name};

/// One decision as the state store keeps it: written *before* the decision takes
/// effect, so that a restart neither loses nor repeats it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When it was taken, unix ms.
    pub at: u64,
    /// The period it was taken in (the one its observations cover).
    pub period: u32,
    /// [`Decision::kind`].
    pub kind: String,
    /// [`Decision::reason`].
    pub reason: String,
    /// [`Decision::summary`] (empty in records written before summaries existed; see
    /// [`DecisionRecord::headline`]).
    #[serde(default)]
    pub summary: String,
    /// The split in force when it was taken.
    pub weights_before: Vec<u32>,
    /// The split once it is applied (the same for a hold or a finish).
    pub weights_after: Vec<u32>,
    /// What it was decided on.
    pub observations: Observations,
}

impl DecisionRecord {
    /// The record of `decision`, taken at `now` on `observations` while `state` (not
    /// yet changed by it) was in force.
    pub fn new(
        spec: &Experiment,
        state: &ExperimentState,
        decision: &Decision,
        observations: Observations,
        now: u64,
    ) -> Self {
        let mut after = state.clone();
        apply(spec, &mut after, decision, now);
        Self {
            at: now,
            period: state.period,
            kind: decision.kind().to_owned(),
            reason: decision.reason().to_owned(),
            summary: decision.summary().to_owned(),
            weights_before: state.weights.clone(),
            weights_after: after.weights,
            observations,
        }
    }

    /// The decision in one line: its summary, or its reason when it has none.
    pub fn headline(&self) -> &str {
        if self.summary.is_empty() {
            &self.reason
        } else {
            &self.summary
        }
    }

    /// Whether it changed the split.
    pub fn changed_split(&self) -> bool {
        self.weights_before != self.weights_after
    }
}

/// A variant's share of traffic, in percent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantWeight {
    /// The variant.
    pub variant: String,
    /// Its share, percent.
    pub weight: u32,
}

/// One variant's figures in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantReport {
    /// The variant.
    pub variant: String,
    /// The subset it routes to.
    pub subset: String,
    /// Whether it is the declared baseline.
    pub baseline: bool,
    /// Its final share of traffic, percent.
    pub weight: u32,
    /// Its figures in the last period (what the last decision was taken on).
    pub last_period: VariantObservation,
    /// The seed's score over the last period ([`crate::score`]); `None` without data.
    pub last_period_score: Option<f64>,
    /// Its figures over every period. Percentiles and the other means are there only
    /// when every period's raw windows were available (they merge exactly; p95s do not
    /// average); counts and the mean latency always are.
    pub overall: VariantObservation,
}

/// The split from one moment on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPoint {
    /// From when, unix ms.
    pub at: u64,
    /// The period it started.
    pub period: u32,
    /// Percentages, indexed like the variants.
    pub weights: Vec<u32>,
    /// `start`, or the kind of decision that put it in force.
    pub cause: String,
}

/// One point of the metrics' history: each variant's estimates over its period so far,
/// as a decision or an analysis saw them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// When, unix ms.
    pub at: u64,
    /// The period the estimates cover (from its start to `at`).
    pub period: u32,
    /// `analysis`, `now`, or the kind of decision taken on them.
    pub source: String,
    /// Each variant's estimates, indexed like the variants.
    pub estimates: Vec<VariantEstimates>,
}

/// An experiment's report: the verdict and why, the variants' figures, traffic over time
/// and the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Experiment id.
    pub experiment_id: String,
    /// What it tests.
    pub description: Option<String>,
    /// The host whose subsets it compares.
    pub host: String,
    /// `canary`, `abtest`, ...
    pub strategy: String,
    /// The policy that analysed it ([`crate::Policy::name`]).
    pub policy: String,
    /// The policy the spec asked for: the same as `policy` (every configured policy
    /// exists); kept so that readers of earlier reports, written while `sequential` ran
    /// as `classic`, can tell the two apart.
    pub configured_policy: String,
    /// Where it stands.
    pub phase: Phase,
    /// When it started, unix ms.
    pub started_at: u64,
    /// When a decision last touched it, unix ms.
    pub updated_at: u64,
    /// Its planned duration, ms.
    pub planned_duration_ms: u64,
    /// The winner: promoted, or named by the final verdict.
    pub winner: Option<String>,
    /// Why it stands where it does: the reason of the decision that ended it, or of the
    /// last one while it runs.
    pub verdict: String,
    /// What to do next (the seed's "Promote X to production", ...).
    pub recommendations: Vec<String>,
    /// The split in force at the end (or now).
    pub final_weights: Vec<VariantWeight>,
    /// Every variant's figures.
    pub variants: Vec<VariantReport>,
    /// The split at the start and after every decision that changed it.
    pub traffic: Vec<TrafficPoint>,
    /// Every decision, oldest first.
    pub decisions: Vec<DecisionRecord>,
    /// Per metric and candidate, against the baseline, over the last period: both
    /// estimates, the absolute and relative effect with always-valid intervals at
    /// `comparison_alpha`, and the p-value.
    pub comparisons: Vec<Comparison>,
    /// The level of `comparisons`' intervals.
    pub comparison_alpha: f64,
    /// The metrics' history: the estimates every decision (and analysis, when given)
    /// was made on, oldest first.
    pub timeline: Vec<TimelinePoint>,
}

impl Report {
    /// The report of `spec` in `state`, from its decision log (oldest first) and its
    /// per-period observations (one per period, oldest first: each the fullest the
    /// period had). With no `periods`, each period's last decision record's
    /// observations stand in.
    pub fn new(
        spec: &Experiment,
        state: &ExperimentState,
        decisions: &[DecisionRecord],
        periods: &[Observations],
    ) -> Self {
        let periods: Vec<Observations> = if periods.is_empty() {
            last_per_period(decisions)
        } else {
            periods.to_vec()
        };
        let last = periods.last().cloned();
        let overall = merge(spec, &periods);
        let in_force = percentages(&state.weights);
        let variants = spec
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let last_period = last
                    .as_ref()
                    .and_then(|o| o.variants.get(i).cloned())
                    .unwrap_or_else(|| VariantObservation::empty(&v.name));
                let enough = last_period.requests >= spec.min_samples.max(1);
                VariantReport {
                    variant: v.name.clone(),
                    subset: v.subset.clone(),
                    baseline: i == spec.baseline,
                    weight: in_force.get(i).copied().unwrap_or(0),
                    last_period_score: score(&last_period).filter(|_| enough),
                    last_period,
                    overall: overall[i].clone(),
                }
            })
            .collect();
        let final_weights = spec
            .variants
            .iter()
            .zip(&in_force)
            .map(|(v, &weight)| VariantWeight {
                variant: v.name.clone(),
                weight,
            })
            .collect();
        let mut traffic = vec![TrafficPoint {
            at: state.started_at,
            period: 0,
            weights: percentages(
                decisions
                    .first()
                    .map_or(&state.weights, |d| &d.weights_before),
            ),
            cause: "start".to_owned(),
        }];
        traffic.extend(
            decisions
                .iter()
                .filter(|d| d.changed_split())
                .map(|d| TrafficPoint {
                    at: d.at,
                    period: d.period + 1,
                    weights: percentages(&d.weights_after),
                    cause: d.kind.clone(),
                }),
        );
        let baseline = &spec.variants[spec.baseline].name;
        let names: Vec<String> = spec.variants.iter().map(|v| v.name.clone()).collect();
        let comparisons = last
            .as_ref()
            .map_or_else(Vec::new, |o| compare(&names, spec.baseline, o));
        let mut timeline: Vec<TimelinePoint> = decisions
            .iter()
            .filter(|d| !d.observations.variants.is_empty())
            .map(|d| TimelinePoint {
                at: d.at,
                period: d.period,
                source: d.kind.clone(),
                estimates: d.observations.estimates_or_counts(),
            })
            .collect();
        if !state.phase.is_terminal() {
            if let Some(o) = periods.last().filter(|o| !o.variants.is_empty()) {
                if timeline.last().is_none_or(|p| p.at < o.to) {
                    timeline.push(TimelinePoint {
                        at: o.to,
                        period: state.period,
                        source: "now".to_owned(),
                        estimates: o.estimates_or_counts(),
                    });
                }
            }
        }
        Self {
            experiment_id: spec.id.clone(),
            description: spec.description.clone(),
            host: spec.host.clone(),
            strategy: strategy_name(spec.strategy).to_owned(),
            policy: policy_for(spec).name().to_owned(),
            configured_policy: policy_kind_name(spec.policy).to_owned(),
            phase: state.phase,
            started_at: state.started_at,
            updated_at: state.updated_at,
            planned_duration_ms: u64::try_from(spec.duration.as_millis()).unwrap_or(u64::MAX),
            winner: state.winner.clone(),
            verdict: verdict(state, decisions),
            recommendations: recommendations(spec, state, baseline),
            final_weights,
            variants,
            traffic,
            decisions: decisions.to_vec(),
            comparisons,
            comparison_alpha: REPORT_ALPHA,
            timeline,
        }
    }

    /// Adds the analyses that led to no decision (`(at, observations)`, as the state
    /// store keeps them) to the timeline, each in the period whose split was then in
    /// force.
    pub fn with_analyses(mut self, analyses: &[(u64, Observations)]) -> Self {
        for (at, obs) in analyses {
            if obs.variants.len() != self.variants.len() || *at < self.started_at {
                continue;
            }
            let period = self
                .traffic
                .iter()
                .rev()
                .find(|p| p.at <= *at)
                .map_or(0, |p| p.period);
            self.timeline.push(TimelinePoint {
                at: *at,
                period,
                source: "analysis".to_owned(),
                estimates: obs.estimates_or_counts(),
            });
        }
        self.timeline.sort_by_key(|p| p.at);
        self
    }

    /// Replaces the overall figures with `overall`, for a metric source that can
    /// query the whole experiment's range at once (Prometheus over `started_at..now`).
    pub fn with_overall(mut self, overall: &Observations) -> Self {
        for (v, o) in self.variants.iter_mut().zip(&overall.variants) {
            v.overall = o.clone();
        }
        self
    }

    /// The report as Markdown: summary, verdict, variants table, traffic over time and
    /// the decision log.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let t = |at: u64| format!("t+{}", fmt::duration(at.saturating_sub(self.started_at)));
        let _ = writeln!(md, "# Experiment `{}`\n", self.experiment_id);
        if let Some(d) = &self.description {
            let _ = writeln!(md, "{}\n", cell(d));
        }
        let names: Vec<&str> = self.variants.iter().map(|v| v.variant.as_str()).collect();
        let weights: Vec<u32> = self.final_weights.iter().map(|w| w.weight).collect();
        let policy = if self.policy == self.configured_policy {
            self.policy.clone()
        } else {
            format!("{} (configured: {})", self.policy, self.configured_policy)
        };
        let rows = [
            ("Host", format!("`{}`", self.host)),
            ("Strategy", self.strategy.clone()),
            ("Policy", policy),
            ("Phase", self.phase.to_string()),
            (
                "Winner",
                self.winner
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), |w| format!("**{w}**")),
            ),
            ("Final weights", fmt::split(&names, &weights)),
            ("Started", fmt::iso(self.started_at)),
            (
                "Last decision",
                format!("{} ({})", fmt::iso(self.updated_at), t(self.updated_at)),
            ),
            ("Planned duration", fmt::duration(self.planned_duration_ms)),
        ];
        md.push_str("| | |\n|---|---|\n");
        for (k, v) in rows {
            let _ = writeln!(md, "| {k} | {} |", cell(&v));
        }
        let _ = writeln!(md, "\n## Verdict\n\n{}", self.verdict);
        if !self.recommendations.is_empty() {
            md.push('\n');
            for r in &self.recommendations {
                let _ = writeln!(md, "- {r}");
            }
        }

        md.push_str("\n## Variants\n\n");
        md.push_str("| Variant | Subset | Role | Weight | Window | Requests | Errors | Success rate | p95 | TTFT p95 | Tokens/s | Output tokens | Score |\n");
        md.push_str("|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or_else(|| "—".to_owned(), f);
        for v in &self.variants {
            let role = if v.baseline { "baseline" } else { "candidate" };
            for (window, o, score) in [
                ("last period", &v.last_period, v.last_period_score),
                ("overall", &v.overall, None),
            ] {
                let head = if window == "last period" {
                    format!(
                        "{} | {} | {role} | {}%",
                        cell(&v.variant),
                        cell(&v.subset),
                        v.weight
                    )
                } else {
                    " | | | ".to_owned()
                };
                let _ = writeln!(
                    md,
                    "| {head} | {window} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    o.requests,
                    o.errors,
                    opt(o.success_rate(), &fmt::rate),
                    opt(o.latency_p95_ms, &fmt::ms),
                    opt(o.ttft_p95_ms, &fmt::ms),
                    opt(o.tokens_per_second, &|x| fmt::num(x, 1)),
                    opt(o.completion_tokens_mean, &|x| fmt::num(x, 1)),
                    opt(score, &|x| fmt::num(x, 4)),
                );
            }
        }

        md.push_str("\n## Metrics, last period\n\n");
        if self.comparisons.is_empty() {
            md.push_str("No comparison yet: the last period has too little data.\n");
        } else {
            let _ = writeln!(
                md,
                "Each candidate against the baseline; intervals of the effects are always-valid at α {} (valid however often the report is read), the variants' own are 95% intervals.\n",
                fmt::num(self.comparison_alpha, 4)
            );
            md.push_str("| Metric | Candidate | Candidate [95%] | Baseline [95%] | Absolute effect [interval] | Relative effect [interval] | p-value | Verdict |\n");
            md.push_str("|---|---|--:|--:|--:|--:|--:|---|\n");
            for c in &self.comparisons {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} [{}, {}] | {} | {} | {} |",
                    c.metric.label(),
                    cell(&c.candidate),
                    estimate_cell(c.metric, &c.candidate_value),
                    estimate_cell(c.metric, &c.baseline_value),
                    metric_value(c.metric, c.absolute, true),
                    metric_value(c.metric, c.absolute_interval[0], true),
                    metric_value(c.metric, c.absolute_interval[1], true),
                    if c.relative.is_finite() {
                        format!(
                            "{} [{}, {}]",
                            fmt::signed_pct(c.relative),
                            fmt::signed_pct(c.relative_interval[0]),
                            fmt::signed_pct(c.relative_interval[1])
                        )
                    } else {
                        "—".to_owned()
                    },
                    fmt::pval(c.p_value),
                    c.verdict
                );
            }
        }

        md.push_str("\n## Traffic over time\n\n| At | Period |");
        for n in &names {
            let _ = write!(md, " {} |", cell(n));
        }
        md.push_str(" Cause |\n|---|--:|");
        md.push_str(&"--:|".repeat(names.len()));
        md.push_str("---|\n");
        for p in &self.traffic {
            let _ = write!(md, "| {} | {} |", t(p.at), p.period);
            for w in &p.weights {
                let _ = write!(md, " {w}% |");
            }
            let _ = writeln!(md, " {} |", p.cause);
        }

        md.push_str("\n## Decision log\n\n");
        if self.decisions.is_empty() {
            md.push_str("No decision yet.\n");
        } else {
            md.push_str("| # | At | Summary | Period | Decision | Split before → after | Reason |\n|--:|---|---|--:|---|---|---|\n");
            for (i, d) in self.decisions.iter().enumerate() {
                let split = |w: &[u32]| {
                    percentages(w)
                        .iter()
                        .map(|p| format!("{p}"))
                        .collect::<Vec<_>>()
                        .join("/")
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} → {} | {} |",
                    i + 1,
                    t(d.at),
                    cell(d.headline()),
                    d.period,
                    d.kind,
                    split(&d.weights_before),
                    split(&d.weights_after),
                    cell(&d.reason)
                );
            }
        }
        md
    }
}

/// A value of `metric` as reports print it: a rate with four decimals (a difference
/// of rates in points), else with one decimal; `signed` for effects.
pub(crate) fn metric_value(metric: crate::Metric, x: f64, signed: bool) -> String {
    if !x.is_finite() {
        return "—".to_owned();
    }
    let s = if metric == crate::Metric::SuccessRate {
        if signed {
            fmt::signed_points(x)
        } else {
            fmt::num(x, 4)
        }
    } else {
        fmt::num(x, 1)
    };
    if signed && x > 0.0 && !s.starts_with('+') {
        format!("+{s}")
    } else {
        s
    }
}

/// An estimate with its 95% interval: `0.9912 [0.9901, 0.9923]`.
pub(crate) fn estimate_cell(metric: crate::Metric, e: &Estimate) -> String {
    format!(
        "{} [{}, {}] (n {})",
        metric_value(metric, e.value, false),
        metric_value(metric, e.lower(), false),
        metric_value(metric, e.upper(), false),
        e.n
    )
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Each period's last record's observations, oldest period first.
fn last_per_period(decisions: &[DecisionRecord]) -> Vec<Observations> {
    let mut out: Vec<(u32, Observations)> = Vec::new();
    for d in decisions {
        match out.last_mut() {
            Some((p, o)) if *p == d.period => *o = d.observations.clone(),
            _ => out.push((d.period, d.observations.clone())),
        }
    }
    out.into_iter().map(|(_, o)| o).collect()
}

/// Every variant's figures over all `periods`: exact from the raw windows when every
/// period has them; otherwise counts and the request-weighted mean latency only.
fn merge(spec: &Experiment, periods: &[Observations]) -> Vec<VariantObservation> {
    (0..spec.variants.len())
        .map(|i| {
            let name = &spec.variants[i].name;
            if !periods.is_empty() && periods.iter().all(|p| p.stats.len() > i) {
                let mut all = WindowStats::default();
                for p in periods {
                    all.merge(&p.stats[i]);
                }
                return VariantObservation::from_stats(name, &all);
            }
            let mut v = VariantObservation::empty(name);
            let mut weighted = Some(0.0);
            for o in periods.iter().filter_map(|p| p.variants.get(i)) {
                v.requests += o.requests;
                v.errors += o.errors;
                if o.requests > 0 {
                    weighted = weighted
                        .zip(o.latency_mean_ms)
                        .map(|(sum, mean)| sum + mean * o.requests as f64);
                }
            }
            v.latency_mean_ms = weighted
                .filter(|_| v.requests > 0)
                .map(|sum| sum / v.requests as f64);
            v
        })
        .collect()
}

/// The reason of the decision that put the experiment in its phase.
fn verdict(state: &ExperimentState, decisions: &[DecisionRecord]) -> String {
    let kind = match state.phase {
        Phase::Promoted => Some("promote"),
        Phase::RolledBack => Some("rollback"),
        Phase::Finished => Some("finish"),
        Phase::Running | Phase::Paused => None,
    };
    let found = match kind {
        Some(k) => decisions.iter().rev().find(|d| d.kind == k),
        None => decisions.last(),
    };
    match (kind, found) {
        (Some(_), Some(d)) => d.reason.clone(),
        (Some(_), None) => format!("{} (no recorded decision says why)", state.phase),
        (None, Some(d)) => format!("still {}; last decision: {}", state.phase, d.reason),
        (None, None) => format!("still {}; no decision yet", state.phase),
    }
}

/// What to do next: the seed's two recommendations for a winner, and their
/// counterparts for the other outcomes.
fn recommendations(spec: &Experiment, state: &ExperimentState, baseline: &str) -> Vec<String> {
    match (state.phase, &state.winner) {
        (Phase::Promoted, Some(w)) => vec![
            format!("{w} now takes all traffic"),
            format!("Update baseline deployment to use {w}"),
        ],
        (Phase::Finished, Some(w)) if w != baseline => vec![
            format!("Promote {w} to production"),
            format!("Update baseline deployment to use {w}"),
        ],
        (Phase::Finished, Some(_)) => vec![format!("Keep baseline {baseline}")],
        (Phase::Finished, None) => vec![
            "No clear winner: no variant had enough data, or none was better with confidence (see the verdict); run longer or with more traffic"
                .to_owned(),
        ],
        (Phase::RolledBack, _) => {
            let others: Vec<&str> = spec
                .variants
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != spec.baseline)
                .map(|(_, v)| v.name.as_str())
                .collect();
            vec![format!(
                "Keep baseline {baseline}; investigate {}",
                others.join(", ")
            )]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use abgate_telemetry::{Distribution, Moments, Sketch};

    use super::*;
    use crate::step::step;
    use crate::testing::{seed_experiment, variant};

    const T0: u64 = 1_767_225_600_000;
    const MINUTE: u64 = 60_000;

    /// Runs the seed's canary to promotion, recording every decision as the controller
    /// would: record first, then apply.
    fn promoted_canary() -> (Experiment, ExperimentState, Vec<DecisionRecord>) {
        let spec = seed_experiment();
        let mut state = ExperimentState::new(&spec, T0);
        let mut log = Vec::new();
        let mut now = T0;
        while !state.phase.is_terminal() {
            now += 5 * MINUTE;
            let obs = Observations {
                variants: vec![
                    variant("v1-0", 1000, 5, 600.0),
                    variant("v1-1", 1000, 1, 500.0),
                ],
                from: state.period_started_at,
                to: now,
                stats: Vec::new(),
                feedback: Vec::new(),
                estimates: Vec::new(),
            };
            let d = step(&spec, &state, &obs, now);
            log.push(DecisionRecord::new(&spec, &state, &d, obs, now));
            apply(&spec, &mut state, &d, now);
        }
        (spec, state, log)
    }

    #[test]
    fn record_is_taken_before_the_decision_applies() {
        let (_, _, log) = promoted_canary();
        let kinds: Vec<&str> = log.iter().map(|d| d.kind.as_str()).collect();
        assert_eq!(kinds, ["set_weights", "set_weights", "promote"]);
        assert_eq!(log[0].weights_before, vec![70, 30]);
        assert_eq!(log[0].weights_after, vec![60, 40]);
        assert_eq!(log[2].weights_after, vec![0, 100]);
        assert_eq!(log.iter().map(|d| d.period).collect::<Vec<_>>(), [0, 1, 2]);
        let json = serde_json::to_string(&log).expect("serializes");
        let back: Vec<DecisionRecord> = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, log);
    }

    #[test]
    fn report_names_winner_traffic_and_decisions() {
        let (spec, state, log) = promoted_canary();
        let report = Report::new(&spec, &state, &log, &[]);
        assert_eq!(report.winner.as_deref(), Some("v1-1"));
        assert_eq!(report.phase, Phase::Promoted);
        assert!(
            report
                .verdict
                .starts_with("candidate v1-1 held 50% (maxWeight 50)"),
            "{}",
            report.verdict
        );
        assert_eq!(report.policy, "classic");
        assert_eq!(report.configured_policy, "classic");
        let traffic: Vec<Vec<u32>> = report.traffic.iter().map(|p| p.weights.clone()).collect();
        assert_eq!(
            traffic,
            [vec![70, 30], vec![60, 40], vec![50, 50], vec![0, 100]]
        );
        assert_eq!(
            report.final_weights[1],
            VariantWeight {
                variant: "v1-1".into(),
                weight: 100
            }
        );
        // Three periods of 1000 requests each, from the decision records.
        assert_eq!(report.variants[1].overall.requests, 3000);
        assert_eq!(report.variants[1].overall.errors, 3);
        assert_eq!(report.variants[1].last_period.requests, 1000);
        assert!(report.variants[1].last_period_score.is_some());
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["phase"], "promoted");
        assert_eq!(json["winner"], "v1-1");
    }

    #[test]
    fn report_markdown_contains_the_decision_log() {
        let (spec, state, log) = promoted_canary();
        let md = Report::new(&spec, &state, &log, &[]).to_markdown();
        assert!(
            md.starts_with("# Experiment `llama-3.1-8b-v1-1-comparison`"),
            "{md}"
        );
        assert!(md.contains("| Winner | **v1-1** |"), "{md}");
        assert!(
            md.contains("| Final weights | v1-0 0%, v1-1 100% |"),
            "{md}"
        );
        assert!(md.contains("| Policy | classic |"), "{md}");
        assert!(md.contains("## Decision log"), "{md}");
        assert!(
            md.contains(
                "| 1 | t+5m00s | ramp v1-1 30% → 40%: improved; p95 -16.7%, success rate 0.999; n 1000/1000 | 0 | set_weights | 70/30 → 60/40 | candidate v1-1 vs baseline v1-0"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 3 | t+15m00s | promote v1-1: improved; p95 -16.7%, success rate 0.999; n 1000/1000 | 2 | promote | 50/50 → 0/100 | candidate v1-1 held 50%"),
            "{md}"
        );
        assert!(md.contains("## Traffic over time"), "{md}");
        assert!(
            md.contains("| t+10m00s | 2 | 50% | 50% | set_weights |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| v1-1 | v1-1 | candidate | 100% | last period | 1000 | 1 | 0.999 | 500 ms |"
            ),
            "{md}"
        );
        assert!(
            md.contains("- Update baseline deployment to use v1-1"),
            "{md}"
        );
    }

    #[test]
    fn overall_merges_raw_windows_exactly() {
        let spec = seed_experiment();
        let state = ExperimentState::new(&spec, T0);
        let stats = |lat: &[f64], errors| WindowStats {
            count: lat.len() as u64,
            errors,
            latency_ms: Distribution {
                moments: Moments::of(lat.iter().copied()),
                sketch: Sketch::of(lat.iter().copied()),
            },
            ..WindowStats::default()
        };
        let p1: Vec<f64> = (1..=50).map(f64::from).collect();
        let p2: Vec<f64> = (51..=100).map(f64::from).collect();
        let periods = [
            Observations::from_stats(&spec, vec![stats(&p1, 1), stats(&p1, 0)], T0, T0 + 1),
            Observations::from_stats(&spec, vec![stats(&p2, 2), stats(&p2, 0)], T0 + 1, T0 + 2),
        ];
        let report = Report::new(&spec, &state, &[], &periods);
        let overall = &report.variants[0].overall;
        assert_eq!((overall.requests, overall.errors), (100, 3));
        assert_eq!(overall.latency_mean_ms, Some(50.5));
        let p95 = overall.latency_p95_ms.expect("merged sketches");
        assert!((p95 - 95.0).abs() <= 1.0, "{p95}");
        // Without raw windows the p95s cannot be merged, and are not made up.
        let summaries: Vec<Observations> = periods
            .iter()
            .map(|p| Observations {
                stats: Vec::new(),
                ..p.clone()
            })
            .collect();
        let report = Report::new(&spec, &state, &[], &summaries);
        let overall = &report.variants[0].overall;
        assert_eq!((overall.requests, overall.errors), (100, 3));
        assert_eq!(overall.latency_mean_ms, Some(50.5));
        assert_eq!(overall.latency_p95_ms, None);
    }

    #[test]
    fn running_report_without_decisions() {
        let spec = seed_experiment();
        let state = ExperimentState::new(&spec, T0);
        let report = Report::new(&spec, &state, &[], &[]);
        assert_eq!(report.verdict, "still running; no decision yet");
        assert_eq!(report.traffic.len(), 1);
        let md = report.to_markdown();
        assert!(md.contains("No decision yet."), "{md}");
        assert!(md.contains("| Winner | none |"), "{md}");
    }
}
