//! The experiments API on the admin listener: JSON, described by the OpenAPI document it
//! serves at `/api/v1/openapi.json` (made from the routes below); every mutation needs
//! the bearer token.

use std::path::Path;
use std::sync::Arc;

use abgate_config::model::Experiment;
use abgate_config::{Config, SourceFile};
use abgate_control::{ControlError, Controller};
use abgate_experiment::Decision;
use abgate_proxy::{error_response, AdminApi, ApiFuture, ApiRequest, Control, ProxyBody};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};
use subtle::ConstantTimeEq as _;
use utoipa::ToSchema;

use crate::openapi::bodies::{
    CreateRequest, ErrorBody, FeedbackRecorded, Report, SplitRequest, Summary,
};

/// The API handler installed on the admin listener. Cheap to clone.
#[derive(Clone)]
pub struct ExperimentsApi {
    controller: Arc<Controller>,
    control: Arc<Control>,
    token: Arc<str>,
}

impl ExperimentsApi {
    /// An API over `controller`, guarded by `token`.
    pub fn new(controller: Arc<Controller>, control: Arc<Control>, token: String) -> Self {
        Self {
            controller,
            control,
            token: token.into(),
        }
    }
}

/// Why a request was not carried out. Each kind has its status and its `code` here and
/// nowhere else.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A change without the admin token.
    #[error("{0}")]
    Unauthorized(String),
    /// No such route, or no such experiment.
    #[error("{0}")]
    NotFound(String),
    /// The experiment exists already.
    #[error("{0}")]
    Conflict(String),
    /// The request cannot be carried out as given.
    #[error("{0}")]
    BadRequest(String),
    /// Carrying it out failed on the gateway's side.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn bad(why: impl std::fmt::Display) -> Self {
        Self::BadRequest(why.to_string())
    }

    /// The status and the machine-readable code of the error body.
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let (status, code) = self.status();
        error_response(status, "-", &self.to_string(), code)
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            e @ ControlError::NotFound(_) => Self::NotFound(e.to_string()),
            e @ ControlError::Exists(_) => Self::Conflict(e.to_string()),
            ControlError::Invalid(why) => Self::BadRequest(why),
            ControlError::Internal(e) => Self::Internal(format!("{e:#}")),
        }
    }
}

type ApiResult<T = Value> = Result<T, ApiError>;

fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn text_response(body: String, content_type: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// The value of `name` in a query string (`format=html&x=1`), as written.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A request body as JSON.
fn json_body(body: &[u8]) -> ApiResult {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))
}

impl AdminApi for ExperimentsApi {
    fn call(&self, request: ApiRequest) -> ApiFuture {
        let api = self.clone();
        Box::pin(async move {
            match api.handle(&request).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        })
    }
}

/// The one API version served; `/api/vN/...` for any other N is a 404.
const API_PREFIX: &str = "/api/v1";

/// The credential of an `Authorization: Bearer TOKEN` header: the scheme is matched
/// without regard to case (RFC 9110), and an empty credential is no credential.
fn bearer_credential(value: &str) -> Option<&str> {
    let (scheme, credential) = value.trim().split_once(' ')?;
    let credential = credential.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

impl ExperimentsApi {
    fn authorized(&self, request: &ApiRequest) -> bool {
        let Some(given) = request
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credential)
        else {
            return false;
        };
        // Constant time: how long the comparison takes says nothing about the token.
        bool::from(given.as_bytes().ct_eq(self.token.as_bytes()))
    }

    async fn handle(&self, request: &ApiRequest) -> ApiResult<Response<ProxyBody>> {
        let Some(rest) = request
            .path
            .strip_prefix(API_PREFIX)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        else {
            return Err(ApiError::NotFound(format!(
                "no API route {} {}: this gateway serves the API under {API_PREFIX}/",
                request.method, request.path
            )));
        };
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').skip(1).collect();
        if request.method != Method::GET && !self.authorized(request) {
            return Err(ApiError::Unauthorized(
                "this change needs the admin bearer token (Authorization: Bearer TOKEN)".into(),
            ));
        }
        let body = &request.body;
        let answer = match (&request.method, segments.as_slice()) {
            (&Method::GET, ["openapi.json"]) => openapi_document(),
            (&Method::GET, ["experiments"]) => list_experiments(self),
            (&Method::POST, ["experiments"]) => create_experiment(self, body)?,
            (&Method::GET, ["experiments", id]) => get_experiment(self, id)?,
            (&Method::DELETE, ["experiments", id]) => delete_experiment(self, id)?,
            (&Method::POST, ["experiments", id, "split"]) => set_split(self, id, body).await?,
            (&Method::POST, ["experiments", id, "pause"]) => pause(self, id)?,
            (&Method::POST, ["experiments", id, "resume"]) => resume(self, id)?,
            (&Method::POST, ["experiments", id, "promote"]) => promote(self, id, body).await?,
            (&Method::POST, ["experiments", id, "rollback"]) => rollback(self, id).await?,
            (&Method::POST, ["experiments", id, "feedback"]) => feedback(self, id, body)?,
            (&Method::GET, ["experiments", id, "report"]) => {
                let format = match query_param(request.query.as_deref(), "format") {
                    None => ReportFormat::Json,
                    Some(name) => ReportFormat::named(&name).ok_or_else(|| {
                        ApiError::bad(format!("format {name} is not json, markdown or html"))
                    })?,
                };
                return report(self, id, format).await;
            }
            _ => {
                return Err(ApiError::NotFound(format!(
                    "no API route {} {}",
                    request.method, request.path
                )))
            }
        };
        Ok(json_response(StatusCode::OK, &answer))
    }
}

// The routes. Each one's `utoipa::path` is its entry in the OpenAPI document; the
// schemas of bodies other crates serialize are in `openapi::bodies`.

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "experiments",
    responses((status = 200, description = "This document", body = Object))
)]
pub(crate) fn openapi_document() -> Value {
    crate::openapi::document()
}

/// Every experiment.
#[utoipa::path(
    get,
    path = "/api/v1/experiments",
    tag = "experiments",
    responses((status = 200, description = "Experiment summaries", body = Vec<Summary>))
)]
pub(crate) fn list_experiments(api: &ExperimentsApi) -> Value {
    json!(api.controller.summaries())
}

/// Creates an experiment.
#[utoipa::path(
    post,
    path = "/api/v1/experiments",
    tag = "experiments",
    request_body = CreateRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new experiment", body = Summary),
        (status = 400, description = "Not an experiment, or not one this mesh can run", body = ErrorBody),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 409, description = "An experiment with this id exists", body = ErrorBody),
        (status = 500, description = "Recording it failed", body = ErrorBody),
    )
)]
pub(crate) fn create_experiment(api: &ExperimentsApi, body: &[u8]) -> ApiResult {
    let document = json_body(body)?;
    let spec = parse_experiment(&document, &api.control.config())
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    Ok(json!(api.controller.create(spec, document)?))
}

/// One experiment.
#[utoipa::path(
    get,
    path = "/api/v1/experiments/{id}",
    tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id")),
    responses(
        (status = 200, description = "The experiment", body = Summary),
        (status = 404, description = "No such experiment", body = ErrorBody),
    )
)]
pub(crate) fn get_experiment(api: &ExperimentsApi, id: &str) -> ApiResult {
    Ok(json!(api.controller.summary(id)?))
}

/// What a deletion answers.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct Deleted {
    /// The deleted experiment's id.
    deleted: String,
}

/// Deletes an experiment; its host is left as it was.
#[utoipa::path(
    delete,
    path = "/api/v1/experiments/{id}",
    tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 500, description = "Deleting it failed", body = ErrorBody),
    )
)]
pub(crate) fn delete_experiment(api: &ExperimentsApi, id: &str) -> ApiResult {
    api.controller.delete(id)?;
    Ok(json!(Deleted {
        deleted: id.to_owned()
    }))
}

/// Sets the split, as an operator's decision.
#[utoipa::path(
    post,
    path = "/api/v1/experiments/{id}/split",
    tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id")),
    request_body = SplitRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The experiment", body = Summary),
        (status = 400, description = "Unknown variants, weights that are not whole numbers, a split that routes nowhere, or an ended experiment", body = ErrorBody),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 500, description = "Recording or applying it failed", body = ErrorBody),
    )
)]
pub(crate) async fn set_split(api: &ExperimentsApi, id: &str, body: &[u8]) -> ApiResult {
    let summary = api.controller.summary(id)?;
    let body = json_body(body)?;
    // `{"weights": {"v1-0": 80, "v1-1": 20}}`, or the seed's bare map.
    let map = body.get("weights").unwrap_or(&body);
    let Value::Object(map) = map else {
        return Err(ApiError::bad("give weights as {\"variant\": weight, ...}"));
    };
    for name in map.keys() {
        if !summary.split.iter().any(|(v, _)| v == name) {
            return Err(ApiError::bad(format!(
                "experiment {id} has no variant {name}; its variants are {:?}",
                summary.split.iter().map(|(v, _)| v).collect::<Vec<_>>()
            )));
        }
    }
    let weights = summary
        .split
        .iter()
        .map(|(name, current)| match map.get(name) {
            Some(w) => w
                .as_u64()
                .map(|w| w as u32)
                .ok_or_else(|| ApiError::bad(format!("weight of {name} is not a whole number"))),
            None => Ok(*current),
        })
        .collect::<ApiResult<Vec<u32>>>()?;
    let decision = Decision::SetWeights {
        weights,
        reason: "split set by an operator".into(),
        summary: "split set by an operator".into(),
    };
    Ok(json!(api.controller.operate(id, decision).await?))
}

/// Pauses the controller's decisions; the split stays in force.
#[utoipa::path(
    post,
    path = "/api/v1/experiments/{id}/pause",
    tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The experiment", body = Summary),
        (status = 400, description = "The experiment has ended", body = ErrorBody),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 500, description = "Recording it failed", body = ErrorBody),
    )
)]
pub(crate) fn pause(api: &ExperimentsApi, id: &str) -> ApiResult {
    Ok(json!(api.controller.set_paused(id, true)?))
}

/// Resumes the controller's decisions.
#[utoipa::path(
    post,
    path = "/api/v1/experiments/{id}/resume",
    tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The experiment", body = Summary),
        (status = 400, description = "The experiment has ended", body = ErrorBody),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 500, description = "Recording it failed", body = ErrorBody),
    )
)]
pub(crate) fn resume(api: &ExperimentsApi, id: &str) -> ApiResult {
    Ok(json!(api.controller.set_paused(id, false)?))
}

/// What a promotion may name.
#[derive(serde::Deserialize, ToSchema)]
pub(crate) struct PromoteRequest {
    /// The variant to promote; optional when there is one candidate besides the
    /// baseline.
    variant: Option<String>,
}

/// Sends all traffic to a variant.
#[utoipa::path(
    post,
    path = "/api/v1/experiments/{id}/promote",
    tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id")),
    request_body(content = Option<PromoteRequest>, description = "The variant; without a body, the one candidate"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The experiment", body = Summary),
        (status = 400, description = "No variant named where several could be, an unknown variant, or an ended experiment", body = ErrorBody),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 500, description = "Recording or applying it failed", body = ErrorBody),
    )
)]
pub(crate) async fn promote(api: &ExperimentsApi, id: &str, body: &[u8]) -> ApiResult {
    let summary = api.controller.summary(id)?;
    // Any body that names no variant asks for the one candidate.
    let asked = serde_json::from_slice::<PromoteRequest>(body)
        .ok()
        .and_then(|b| b.variant);
    // Without a name, the one candidate (a two-variant experiment's non-baseline).
    let variant = match asked {
        Some(v) => v,
        None => {
            let candidates: Vec<&String> = summary
                .split
                .iter()
                .map(|(v, _)| v)
                .filter(|v| **v != summary.baseline)
                .collect();
            match candidates.as_slice() {
                [one] => (*one).clone(),
                _ => {
                    return Err(ApiError::bad(
                        "name the variant to promote: {\"variant\": NAME}",
                    ))
                }
            }
        }
    };
    let decision = Decision::Promote {
        variant,
        reason: "promoted by an operator".into(),
        summary: "promote: by an operator".into(),
    };
    Ok(json!(api.controller.operate(id, decision).await?))
}

/// Sends all traffic to the declared baseline, from the next request on.
#[utoipa::path(
    post,
    path = "/api/v1/experiments/{id}/rollback",
    tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The experiment", body = Summary),
        (status = 400, description = "The experiment has ended", body = ErrorBody),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 500, description = "Recording or applying it failed", body = ErrorBody),
    )
)]
pub(crate) async fn rollback(api: &ExperimentsApi, id: &str) -> ApiResult {
    let rollback = Decision::Rollback {
        reason: "rolled back by an operator".into(),
        summary: "roll back: by an operator".into(),
    };
    Ok(json!(api.controller.operate(id, rollback).await?))
}

/// A feedback score for the variant that served a request.
#[derive(serde::Deserialize, ToSchema)]
pub(crate) struct FeedbackRequest {
    /// The variant that served the request (its x-variant header).
    variant: String,
    /// 1 for a thumbs-up, 0 for a thumbs-down, or a rating scaled to [0, 1].
    #[schema(minimum = 0, maximum = 1)]
    score: f64,
    /// The request's x-request-id, kept for audits.
    request_id: Option<String>,
}

/// Records a feedback score: the reward of a bandit with reward feedback.
#[utoipa::path(
    post,
    path = "/api/v1/experiments/{id}/feedback",
    tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id")),
    request_body = FeedbackRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The score as recorded", body = FeedbackRecorded),
        (status = 400, description = "No variant or score, an unknown variant, or a score outside [0, 1]", body = ErrorBody),
        (status = 401, description = "No admin token", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 500, description = "Recording it failed", body = ErrorBody),
    )
)]
pub(crate) fn feedback(api: &ExperimentsApi, id: &str, body: &[u8]) -> ApiResult {
    let given: FeedbackRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "give {{\"variant\": NAME, \"score\": 0..1}} (and optionally \"request_id\"): {e}"
        ))
    })?;
    Ok(api
        .controller
        .feedback(id, &given.variant, given.score, given.request_id.as_deref())?)
}

/// The forms a report comes in.
#[derive(Clone, Copy, ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum ReportFormat {
    /// The report as JSON.
    Json,
    /// Markdown.
    Markdown,
    /// A self-contained HTML page with charts.
    Html,
}

impl ReportFormat {
    fn named(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "markdown" => Some(Self::Markdown),
            "html" => Some(Self::Html),
            _ => None,
        }
    }
}

/// The report: JSON, Markdown or a self-contained HTML page with charts.
#[utoipa::path(
    get,
    path = "/api/v1/experiments/{id}/report",
    tag = "experiments",
    params(
        ("id" = String, Path, description = "The experiment's id"),
        ("format" = Option<ReportFormat>, Query, description = "json (the default), markdown or html"),
    ),
    responses(
        (status = 200, description = "The report", content(
            (Report = "application/json"),
            (String = "text/markdown"),
            (String = "text/html"),
        )),
        (status = 400, description = "An unknown format", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 500, description = "Reading the decision log failed", body = ErrorBody),
    )
)]
pub(crate) async fn report(
    api: &ExperimentsApi,
    id: &str,
    format: ReportFormat,
) -> ApiResult<Response<ProxyBody>> {
    let report = api.controller.report(id).await?;
    Ok(match format {
        ReportFormat::Json => json_response(StatusCode::OK, &json!(report)),
        ReportFormat::Markdown => {
            text_response(report.to_markdown(), "text/markdown; charset=utf-8")
        }
        ReportFormat::Html => text_response(report.to_html(), "text/html; charset=utf-8"),
    })
}

/// An Experiment from an API body: a whole `abgate.dev/v1alpha1` resource, or just its
/// spec, or the seed's `Experiment` dataclass as JSON (`id`, `traffic_split`,
/// `duration_hours`, `rollback_criteria`, ...). The seed's fields name no host: the host
/// is the one whose DestinationRule defines every variant as a subset. Without a
/// `match`, an experiment created this way takes the requests that carry its id in
/// `x-experiment-id`, as the seed's generated VirtualService did.
pub fn parse_experiment(document: &Value, config: &Config) -> anyhow::Result<Experiment> {
    let mut spec = document
        .get("spec")
        .cloned()
        .unwrap_or_else(|| document.clone());
    let Value::Object(fields) = &mut spec else {
        anyhow::bail!("an experiment is a JSON object")
    };
    let id = fields
        .get("id")
        .and_then(Value::as_str)
        .or_else(|| document.pointer("/metadata/name").and_then(Value::as_str))
        .ok_or_else(|| anyhow::anyhow!("an experiment needs an id (or metadata.name)"))?
        .to_owned();
    let namespace = document
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    if !fields.contains_key("host") {
        let names: Vec<String> = match (
            fields.get("traffic_split").or(fields.get("trafficSplit")),
            fields.get("variants"),
        ) {
            (Some(Value::Object(split)), _) => split.keys().cloned().collect(),
            (_, Some(Value::Array(variants))) => variants
                .iter()
                .filter_map(|v| {
                    v.get("subset")
                        .or(v.get("name"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect(),
            _ => Vec::new(),
        };
        let hosts: Vec<&str> = config
            .destination_rules
            .iter()
            .filter(|r| names.iter().all(|n| r.subset(n).is_some()))
            .map(|r| r.host.as_str())
            .collect();
        match hosts.as_slice() {
            [host] => {
                fields.insert("host".into(), json!(host));
            }
            [] => anyhow::bail!("no DestinationRule defines all of {names:?} as subsets; give the experiment a host"),
            _ => anyhow::bail!("several hosts define {names:?} as subsets ({hosts:?}); give the experiment a host"),
        }
    }
    if !fields.contains_key("match") {
        fields.insert(
            "match".into(),
            json!([{ "headers": { "x-experiment-id": { "exact": id } } }]),
        );
    }
    // The seed's `name` is a display name, not metadata.
    let resource = json!({
        "apiVersion": "abgate.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": { "name": sanitize(&id), "namespace": namespace },
        "spec": spec,
    });
    let file = SourceFile {
        path: Arc::from(Path::new("api")),
        text: resource.to_string(),
    };
    let loaded = abgate_config::load_sources(&[file]);
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.rejects_resource())
        .map(|d| format!("{} {}: {}", d.code, d.field, d.message))
        .collect();
    if !errors.is_empty() {
        anyhow::bail!("invalid experiment: {}", errors.join("; "));
    }
    let experiment = loaded
        .config
        .experiments
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no experiment in the body"))?;
    let rule = config.destination_rule(&experiment.host);
    if let Some(missing) = experiment
        .variants
        .iter()
        .find(|v| rule.as_ref().and_then(|r| r.subset(&v.subset)).is_none())
    {
        anyhow::bail!(
            "variant {} is not a subset of {} in any DestinationRule",
            missing.subset,
            experiment.host
        );
    }
    Ok(experiment)
}

/// A Kubernetes-style name from an id.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}
