//! The experiments API on the admin listener: JSON, described by the OpenAPI document it
//! serves at `/api/v1/openapi.json`; every mutation needs the bearer token.

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
        let controller = &self.controller;
        let body = match (&request.method, segments.as_slice()) {
            (&Method::GET, ["openapi.json"]) => openapi(),
            (&Method::GET, ["experiments"]) => json!(controller.summaries()),
            (&Method::POST, ["experiments"]) => self.create(&request.body)?,
            (&Method::GET, ["experiments", id]) => json!(controller.summary(id)?),
            (&Method::DELETE, ["experiments", id]) => {
                controller.delete(id)?;
                json!({ "deleted": id })
            }
            (&Method::POST, ["experiments", id, "split"]) => {
                self.set_split(id, &request.body).await?
            }
            (&Method::POST, ["experiments", id, "pause"]) => {
                json!(controller.set_paused(id, true)?)
            }
            (&Method::POST, ["experiments", id, "resume"]) => {
                json!(controller.set_paused(id, false)?)
            }
            (&Method::POST, ["experiments", id, "promote"]) => {
                self.promote(id, &request.body).await?
            }
            (&Method::POST, ["experiments", id, "rollback"]) => {
                let rollback = Decision::Rollback {
                    reason: "rolled back by an operator".into(),
                    summary: "roll back: by an operator".into(),
                };
                json!(controller.operate(id, rollback).await?)
            }
            (&Method::POST, ["experiments", id, "feedback"]) => self.feedback(id, &request.body)?,
            (&Method::GET, ["experiments", id, "report"]) => {
                let format = query_param(request.query.as_deref(), "format");
                let report = controller.report(id).await?;
                return match format.as_deref() {
                    Some("markdown") => Ok(text_response(
                        report.to_markdown(),
                        "text/markdown; charset=utf-8",
                    )),
                    Some("html") => Ok(text_response(report.to_html(), "text/html; charset=utf-8")),
                    None | Some("json") => Ok(json_response(StatusCode::OK, &json!(report))),
                    Some(other) => Err(ApiError::bad(format!(
                        "format {other} is not json, markdown or html"
                    ))),
                };
            }
            _ => {
                return Err(ApiError::NotFound(format!(
                    "no API route {} {}",
                    request.method, request.path
                )))
            }
        };
        Ok(json_response(StatusCode::OK, &body))
    }

    fn feedback(&self, id: &str, body: &[u8]) -> ApiResult {
        let body = json_body(body)?;
        let variant = body.get("variant").and_then(Value::as_str).ok_or_else(|| {
            ApiError::bad("give the variant: {\"variant\": NAME, \"score\": 0..1}")
        })?;
        let score = body
            .get("score")
            .and_then(Value::as_f64)
            .ok_or_else(|| ApiError::bad("give the score, a number from 0 to 1"))?;
        let request_id = body.get("request_id").and_then(Value::as_str);
        Ok(self.controller.feedback(id, variant, score, request_id)?)
    }

    fn create(&self, body: &[u8]) -> ApiResult {
        let document = json_body(body)?;
        let spec = parse_experiment(&document, &self.control.config())
            .map_err(|e| ApiError::bad(format!("{e:#}")))?;
        Ok(json!(self.controller.create(spec, document)?))
    }

    async fn set_split(&self, id: &str, body: &[u8]) -> ApiResult {
        let summary = self.controller.summary(id)?;
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
                Some(w) => w.as_u64().map(|w| w as u32).ok_or_else(|| {
                    ApiError::bad(format!("weight of {name} is not a whole number"))
                }),
                None => Ok(*current),
            })
            .collect::<ApiResult<Vec<u32>>>()?;
        let decision = Decision::SetWeights {
            weights,
            reason: "split set by an operator".into(),
            summary: "split set by an operator".into(),
        };
        Ok(json!(self.controller.operate(id, decision).await?))
    }

    async fn promote(&self, id: &str, body: &[u8]) -> ApiResult {
        let summary = self.controller.summary(id)?;
        let asked: Option<String> = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|b| b.get("variant").and_then(Value::as_str).map(str::to_owned));
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
        Ok(json!(self.controller.operate(id, decision).await?))
    }
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

/// The OpenAPI document of this API.
fn openapi() -> Value {
    let id =
        json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } });
    let ok = |description: &str| json!({ "200": { "description": description, "content": { "application/json": {} } } });
    let secured = json!([{ "bearer": [] }]);
    json!({
        "openapi": "3.0.3",
        "info": { "title": "abgate admin API", "version": env!("CARGO_PKG_VERSION") },
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
        "paths": {
            "/api/v1/experiments": {
                "get": { "summary": "List experiments", "responses": ok("experiment summaries") },
                "post": { "summary": "Create an experiment (an Experiment resource, its spec, or the seed's Experiment fields)", "security": secured, "responses": ok("the new experiment") },
            },
            "/api/v1/experiments/{id}": {
                "get": { "summary": "One experiment", "parameters": [id], "responses": ok("the experiment") },
                "delete": { "summary": "Delete an experiment; its host is left as it was", "parameters": [id], "security": secured, "responses": ok("deleted") },
            },
            "/api/v1/experiments/{id}/split": { "post": { "summary": "Set the split: {\"weights\": {variant: weight}}", "parameters": [id], "security": secured, "responses": ok("the experiment") } },
            "/api/v1/experiments/{id}/pause": { "post": { "summary": "Pause the controller's decisions", "parameters": [id], "security": secured, "responses": ok("the experiment") } },
            "/api/v1/experiments/{id}/resume": { "post": { "summary": "Resume", "parameters": [id], "security": secured, "responses": ok("the experiment") } },
            "/api/v1/experiments/{id}/promote": { "post": { "summary": "Send all traffic to a variant: {\"variant\": name}", "parameters": [id], "security": secured, "responses": ok("the experiment") } },
            "/api/v1/experiments/{id}/rollback": { "post": { "summary": "Send all traffic to the declared baseline, from the next request on", "parameters": [id], "security": secured, "responses": ok("the experiment") } },
            "/api/v1/experiments/{id}/feedback": { "post": {
                "summary": "Post a feedback score for a variant: the reward of a bandit with reward feedback",
                "parameters": [id],
                "security": secured,
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object",
                    "required": ["variant", "score"],
                    "properties": {
                        "variant": { "type": "string", "description": "the variant that served the request (its x-variant header)" },
                        "score": { "type": "number", "minimum": 0, "maximum": 1, "description": "1 for a thumbs-up, 0 for a thumbs-down, or a rating scaled to [0, 1]" },
                        "request_id": { "type": "string", "description": "the request's x-request-id, kept for audits" }
                    }
                } } } },
                "responses": ok("the score as recorded")
            } },
            "/api/v1/experiments/{id}/report": { "get": {
                "summary": "The report: JSON, Markdown (?format=markdown) or a self-contained HTML page with charts (?format=html)",
                "parameters": [id, { "name": "format", "in": "query", "required": false, "schema": { "type": "string", "enum": ["json", "markdown", "html"] } }],
                "responses": { "200": { "description": "the report", "content": { "application/json": {}, "text/markdown": {}, "text/html": {} } } }
            } },
        }
    })
}
