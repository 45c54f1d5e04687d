//! The admin API's OpenAPI document, generated from the routes in `api.rs` and the
//! types of the bodies they take and give.
//!
//! Objects in the document are closed (`additionalProperties: false`): a field the API
//! starts to send, or stops sending, is a change of the contract, and the test that
//! checks live answers against the document says so.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "abgate admin API",
        description = "Experiments on the admin listener. Reads are open; every change needs \
                       the admin bearer token (Authorization: Bearer TOKEN)."
    ),
    paths(
        api::openapi_document,
        api::list_experiments,
        api::create_experiment,
        api::get_experiment,
        api::delete_experiment,
        api::set_split,
        api::pause,
        api::resume,
        api::promote,
        api::rollback,
        api::feedback,
        api::report,
    ),
    components(schemas(
        api::FeedbackRequest,
        api::PromoteRequest,
        api::Deleted,
        api::ReportFormat,
        bodies::ErrorBody,
        bodies::ErrorDetail,
        bodies::CreateRequest,
        bodies::SplitRequest,
        bodies::Summary,
        bodies::Phase,
        bodies::Observations,
        bodies::VariantObservation,
        bodies::RewardTotals,
        bodies::VariantEstimates,
        bodies::Estimate,
        bodies::FeedbackRecorded,
        bodies::Report,
        bodies::VariantWeight,
        bodies::VariantReport,
        bodies::TrafficPoint,
        bodies::DecisionRecord,
        bodies::Comparison,
        bodies::Metric,
        bodies::TimelinePoint,
    )),
    modifiers(&BearerToken),
    tags((name = "experiments", description = "Experiments and the decisions taken on them"))
)]
struct ApiDoc;

/// The `bearer` security scheme the changing routes name.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token: from --admin-token-file, else ABGATE_ADMIN_TOKEN, \
                         else the admin.token the gateway wrote beside its state file",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document served at `/api/v1/openapi.json`.
pub fn document() -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).expect("the document is JSON");
    document["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
    if let Some(schemas) = document.pointer_mut("/components/schemas") {
        close_objects(schemas);
    }
    document
}

/// Every object schema with declared properties admits no others.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(fields) => {
            if fields.contains_key("properties") && !fields.contains_key("additionalProperties") {
                fields.insert("additionalProperties".into(), Value::Bool(false));
            }
            fields.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Bodies whose values are not built here: the lower crates serialize their own types
/// (which know nothing of OpenAPI), the proxy writes the error body, and the create and
/// split routes read free-form JSON. These describe that JSON; the live test holds them
/// to it.
#[allow(dead_code)] // Descriptions only: never built, only read by the derive.
pub(crate) mod bodies {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use utoipa::ToSchema;

    /// An error, OpenAI style.
    #[derive(Deserialize, ToSchema)]
    pub struct ErrorBody {
        pub error: ErrorDetail,
    }

    /// What went wrong.
    #[derive(Deserialize, ToSchema)]
    pub struct ErrorDetail {
        /// What went wrong and what to do, in words.
        pub message: String,
        /// `invalid_request_error` (4xx) or `server_error` (5xx).
        #[serde(rename = "type")]
        pub kind: String,
        /// Always null.
        #[schema(value_type = Option<String>, required = true)]
        pub param: Option<String>,
        /// `unauthorized`, `not_found`, `conflict`, `invalid_request` or `internal_error`.
        pub code: String,
    }

    /// An Experiment: a whole `abgate.dev/v1alpha1` resource, just its spec, or the
    /// seed's Experiment fields (`id`, `traffic_split`, `duration_hours`,
    /// `rollback_criteria`, ...). Without a host, the one whose DestinationRule defines
    /// every variant is taken; without a match, requests carrying the id in
    /// `x-experiment-id`.
    #[derive(Deserialize, ToSchema)]
    #[schema(value_type = Object)]
    pub struct CreateRequest(serde_json::Map<String, serde_json::Value>);

    /// Weights by variant, whole numbers; variants left out keep theirs. Either
    /// `{"weights": {...}}` or the bare map.
    #[derive(Deserialize, ToSchema)]
    #[serde(untagged)]
    pub enum SplitRequest {
        Wrapped { weights: BTreeMap<String, u32> },
        Bare(BTreeMap<String, u32>),
    }

    /// One experiment, as the list and the changes answer.
    #[derive(Deserialize, ToSchema)]
    pub struct Summary {
        pub id: String,
        /// The host whose subsets it compares.
        pub host: String,
        /// `canary`, `abtest`, `bluegreen`, `bandit`, ...
        pub strategy: String,
        pub phase: Phase,
        /// Each variant and its share of traffic, percent: `[[name, weight], ...]`.
        pub split: Vec<(String, u32)>,
        /// The declared baseline.
        pub baseline: String,
        /// The winner, once there is one.
        #[schema(required = true)]
        pub winner: Option<String>,
        /// Weight changes so far.
        pub steps: u32,
        /// The latest reason the controller gave.
        pub last_reason: String,
        /// The latest decision (or analysis) in one line.
        pub last_summary: String,
        /// The latest observations, once there are any.
        #[schema(required = true)]
        pub observations: Option<Observations>,
    }

    /// Where an experiment stands; `promoted`, `rolled_back` and `finished` are ends.
    #[derive(Deserialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Phase {
        Running,
        Paused,
        Promoted,
        RolledBack,
        Finished,
    }

    /// The variants' figures over a range of time.
    #[derive(Deserialize, ToSchema)]
    pub struct Observations {
        /// Indexed like the experiment's variants.
        pub variants: Vec<VariantObservation>,
        /// Start, unix ms.
        pub from: u64,
        /// End, unix ms.
        pub to: u64,
        /// Feedback rewards per variant, when there are any.
        #[serde(default)]
        pub feedback: Vec<RewardTotals>,
        /// Estimates with standard errors per variant, when computed.
        #[serde(default)]
        pub estimates: Vec<VariantEstimates>,
    }

    /// One variant's figures; a figure without data is null.
    #[derive(Deserialize, ToSchema)]
    pub struct VariantObservation {
        pub variant: String,
        /// Finished requests.
        pub requests: u64,
        /// Failed ones among them.
        pub errors: u64,
        #[schema(required = true)]
        pub latency_p95_ms: Option<f64>,
        #[schema(required = true)]
        pub latency_mean_ms: Option<f64>,
        #[schema(required = true)]
        pub ttft_p95_ms: Option<f64>,
        #[schema(required = true)]
        pub tokens_per_second: Option<f64>,
        #[schema(required = true)]
        pub completion_tokens_mean: Option<f64>,
    }

    /// Sums of one variant's rewards in [0, 1].
    #[derive(Deserialize, ToSchema)]
    pub struct RewardTotals {
        pub n: u64,
        pub sum: f64,
        pub sum_sq: f64,
    }

    /// One variant's estimates; a metric without data is absent.
    #[derive(Deserialize, ToSchema)]
    pub struct VariantEstimates {
        #[serde(default)]
        #[schema(nullable = false)]
        pub success_rate: Option<Estimate>,
        #[serde(default)]
        #[schema(nullable = false)]
        pub latency_p95_ms: Option<Estimate>,
        #[serde(default)]
        #[schema(nullable = false)]
        pub ttft_p95_ms: Option<Estimate>,
        #[serde(default)]
        #[schema(nullable = false)]
        pub latency_mean_ms: Option<Estimate>,
        #[serde(default)]
        #[schema(nullable = false)]
        pub tokens_per_second: Option<Estimate>,
    }

    /// An estimate, its standard error, and the units behind it.
    #[derive(Deserialize, ToSchema)]
    pub struct Estimate {
        pub value: f64,
        pub se: f64,
        pub n: u64,
    }

    /// A feedback score as recorded.
    #[derive(Deserialize, ToSchema)]
    pub struct FeedbackRecorded {
        pub experiment_id: String,
        pub variant: String,
        pub score: f64,
        /// When it was recorded, unix ms.
        pub at: u64,
        /// The period it counts in.
        pub period: u32,
        /// Whether it is the reward of the experiment's bandit.
        pub rewards_bandit: bool,
    }

    /// An experiment's report: the verdict and why, the variants' figures, traffic over
    /// time and the decision log.
    #[derive(Deserialize, ToSchema)]
    pub struct Report {
        pub experiment_id: String,
        #[schema(required = true)]
        pub description: Option<String>,
        pub host: String,
        pub strategy: String,
        /// The policy that analysed it.
        pub policy: String,
        /// The policy the spec asked for.
        pub configured_policy: String,
        pub phase: Phase,
        /// Unix ms.
        pub started_at: u64,
        /// Unix ms.
        pub updated_at: u64,
        pub planned_duration_ms: u64,
        #[schema(required = true)]
        pub winner: Option<String>,
        /// Why it stands where it does.
        pub verdict: String,
        /// What to do next.
        pub recommendations: Vec<String>,
        pub final_weights: Vec<VariantWeight>,
        pub variants: Vec<VariantReport>,
        pub traffic: Vec<TrafficPoint>,
        /// Every decision, oldest first.
        pub decisions: Vec<DecisionRecord>,
        /// Each candidate against the baseline, per metric, over the last period.
        pub comparisons: Vec<Comparison>,
        /// The level of the comparisons' intervals.
        pub comparison_alpha: f64,
        /// The estimates every decision was made on, oldest first.
        pub timeline: Vec<TimelinePoint>,
    }

    /// A variant's share of traffic, percent.
    #[derive(Deserialize, ToSchema)]
    pub struct VariantWeight {
        pub variant: String,
        pub weight: u32,
    }

    /// One variant's figures in a report.
    #[derive(Deserialize, ToSchema)]
    pub struct VariantReport {
        pub variant: String,
        pub subset: String,
        pub baseline: bool,
        /// Final share, percent.
        pub weight: u32,
        pub last_period: VariantObservation,
        /// The seed's score over the last period; null without enough data.
        #[schema(required = true)]
        pub last_period_score: Option<f64>,
        pub overall: VariantObservation,
    }

    /// The split from one moment on.
    #[derive(Deserialize, ToSchema)]
    pub struct TrafficPoint {
        /// Unix ms.
        pub at: u64,
        pub period: u32,
        /// Percentages, indexed like the variants.
        pub weights: Vec<u32>,
        /// `start`, or the kind of decision that put it in force.
        pub cause: String,
    }

    /// One decision, as recorded before it took effect.
    #[derive(Deserialize, ToSchema)]
    pub struct DecisionRecord {
        /// Unix ms.
        pub at: u64,
        pub period: u32,
        /// `hold`, `set_weights`, `promote`, `rollback`, `finish`.
        pub kind: String,
        /// Why, in words and numbers.
        pub reason: String,
        /// The decision in one line (empty for decisions recorded before summaries).
        pub summary: String,
        pub weights_before: Vec<u32>,
        pub weights_after: Vec<u32>,
        /// What it was decided on.
        pub observations: Observations,
    }

    /// A candidate against the baseline on one metric.
    #[derive(Deserialize, ToSchema)]
    pub struct Comparison {
        pub metric: Metric,
        pub candidate: String,
        pub baseline: String,
        pub candidate_value: Estimate,
        pub baseline_value: Estimate,
        /// Candidate − baseline.
        pub absolute: f64,
        pub absolute_interval: [f64; 2],
        /// (Candidate − baseline) / baseline.
        pub relative: f64,
        pub relative_interval: [f64; 2],
        /// The always-valid p-value of no difference.
        pub p_value: f64,
        /// `better`, `worse` or `inconclusive`.
        pub verdict: String,
    }

    /// A compared metric.
    #[derive(Deserialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Metric {
        SuccessRate,
        LatencyP95Ms,
        TtftP95Ms,
        LatencyMeanMs,
        TokensPerSecond,
    }

    /// The variants' estimates at one moment.
    #[derive(Deserialize, ToSchema)]
    pub struct TimelinePoint {
        /// Unix ms.
        pub at: u64,
        pub period: u32,
        /// `analysis`, `now`, or the kind of decision taken on them.
        pub source: String,
        /// Indexed like the variants.
        pub estimates: Vec<VariantEstimates>,
    }
}
