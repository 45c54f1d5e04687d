//! The admin API's OpenAPI document against the API itself: a real gateway, every
//! route called (changes, reads, reports in each format, and the 400, 401, 404 and 409
//! answers), and every JSON answer validated against the schema the document declares
//! for its route, status and content type. Every operation the document lists must have
//! been answered; a body that drifts from its schema fails the test.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{chat, http, start_gateway, start_sim, write_mesh, Gateway, Processes, Reply};
use serde_json::{json, Value};

/// The document, and what the test has checked against it.
struct Contract {
    document: Value,
    /// `(method, path template, status)` answered and checked.
    answered: BTreeSet<(String, String, u16)>,
}

impl Contract {
    fn operation(&self, method: &str, template: &str) -> &Value {
        let operation = &self.document["paths"][template][method.to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "the document lists no {method} {template}"
        );
        operation
    }

    /// A validator for `schema`, whose `$ref`s point into the document's components.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let rooted = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.document["components"],
            "allOf": [schema],
        });
        jsonschema::validator_for(&rooted)
            .unwrap_or_else(|e| panic!("the document's schema does not compile: {e}\n{schema}"))
    }

    /// Errors of `body` against `schema`, one line each.
    fn errors(&self, schema: &Value, body: &Value) -> Vec<String> {
        self.validator(schema)
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect()
    }

    /// The schema the document declares for `status` of `method template` in
    /// `content_type`.
    fn response_schema(
        &self,
        method: &str,
        template: &str,
        status: u16,
        content_type: &str,
    ) -> Value {
        let response = &self.operation(method, template)["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "the document declares no {status} for {method} {template}"
        );
        let schema = &response["content"][content_type]["schema"];
        assert!(
            schema.is_object(),
            "the document declares no {content_type} schema for {status} of {method} {template}: {response}"
        );
        schema.clone()
    }

    /// Checks a live answer against the document: its status is declared for the
    /// route, its content type is, and (for JSON) its body fits the schema.
    fn check(&mut self, method: &str, template: &str, reply: &Reply) {
        let content_type = reply
            .header("content-type")
            .unwrap_or_else(|| panic!("{method} {template} answered without a content type"));
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let schema = self.response_schema(method, template, reply.status, media);
        if media == "application/json" {
            let body = reply.json();
            let errors = self.errors(&schema, &body);
            assert!(
                errors.is_empty(),
                "{method} {template} answered {} with a body that is not the declared {schema}:\n{}\n{body:#}",
                reply.status,
                errors.join("\n")
            );
        } else {
            assert_eq!(schema["type"], "string", "{method} {template} {media}");
            assert!(
                !reply.body.is_empty(),
                "{method} {template} {media} is empty"
            );
        }
        self.answered
            .insert((method.to_owned(), template.to_owned(), reply.status));
    }

    /// Checks a request body we are about to send against the declared request body.
    fn check_request(&self, method: &str, template: &str, body: &Value) {
        let schema = &self.operation(method, template)["requestBody"]["content"]
            ["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "the document declares no JSON request body for {method} {template}"
        );
        let errors = self.errors(schema, body);
        assert!(
            errors.is_empty(),
            "the request {body} does not fit the declared {schema}: {errors:?}"
        );
    }
}

/// One admin API call; `token` goes in `Authorization: Bearer`.
fn call(gw: &Gateway, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    http(gw.admin, method, path, &headers, body)
}

/// The seed's Experiment fields for `id`: a 70/30 split of v1-0 and v1-1.
fn seed_experiment(id: &str) -> Value {
    json!({
        "id": id,
        "description": "Compare v1.0 baseline against v1.1 candidate",
        "traffic_split": {"v1-0": 70, "v1-1": 30},
        "duration_hours": 24,
        "rollback_criteria": {"latency_degradation": 0.2, "success_rate_drop": 0.95}
    })
}

/// Sends requests through experiment `id` until the current period's figures, as the
/// report shows them, count requests for every variant (at most 10 s).
fn send_and_wait_for_figures(gw: &Gateway, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for _ in 0..20 {
            chat(gw.http, Some(id));
        }
        let report = gw.report(id);
        let now = report["timeline"]
            .as_array()
            .and_then(|t| t.last())
            .cloned()
            .unwrap_or_default();
        let counted = now["source"] == "now"
            && now["estimates"]
                .as_array()
                .is_some_and(|e| e.iter().all(|v| v["success_rate"]["n"].as_u64() > Some(0)));
        if counted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the requests never showed in the figures: {report:#}"
        );
    }
}

#[test]
fn every_answer_of_the_admin_api_fits_its_openapi_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let mut processes = Processes::new(dir.path());
    let v10 = start_sim(&mut processes, "v1-0", 1);
    let v11 = start_sim(&mut processes, "v1-1", 1);
    write_mesh(&config, v10, v11, false, "");
    let gw = start_gateway(
        &mut processes,
        "gateway",
        &config,
        &dir.path().join("state.db"),
        // Short sample windows: the traffic below is in the figures soon after.
        &["--analysis-window", "200ms"],
    );
    let token = gw.token();
    let token = Some(token.as_str());

    let reply = call(&gw, "GET", "/api/v1/openapi.json", None, "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let document = reply.json();
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        document["openapi"]
    );
    let mut api = Contract {
        document,
        answered: BTreeSet::new(),
    };
    api.check("GET", "/api/v1/openapi.json", &reply);

    let list = "/api/v1/experiments";
    let one = "/api/v1/experiments/{id}";
    let action = |name: &str| format!("/api/v1/experiments/{{id}}/{name}");
    let id = "openapi-a";
    let at = |id: &str, rest: &str| format!("/api/v1/experiments/{id}{rest}");

    // Empty, then created; created again is a conflict; not JSON, or no token, refused.
    let reply = call(&gw, "GET", list, None, "");
    assert_eq!(reply.json(), json!([]));
    api.check("GET", list, &reply);
    let create = seed_experiment(id);
    api.check_request("POST", list, &create);
    let reply = call(&gw, "POST", list, token, &create.to_string());
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("POST", list, &reply);
    let reply = call(&gw, "POST", list, token, &create.to_string());
    assert_eq!(reply.status, 409, "{}", reply.body);
    api.check("POST", list, &reply);
    let reply = call(&gw, "POST", list, token, "{not json");
    assert_eq!(reply.status, 400, "{}", reply.body);
    api.check("POST", list, &reply);

    // Every change without the token is refused, each as its route declares.
    for (method, template, path) in [
        ("POST", list.to_owned(), list.to_owned()),
        ("DELETE", one.to_owned(), at(id, "")),
        ("POST", action("split"), at(id, "/split")),
        ("POST", action("pause"), at(id, "/pause")),
        ("POST", action("resume"), at(id, "/resume")),
        ("POST", action("promote"), at(id, "/promote")),
        ("POST", action("rollback"), at(id, "/rollback")),
        ("POST", action("feedback"), at(id, "/feedback")),
    ] {
        let reply = call(&gw, method, &path, None, "{}");
        assert_eq!(reply.status, 401, "{method} {path}: {}", reply.body);
        api.check(method, &template, &reply);
    }

    // Traffic, so that the decisions below are taken on real figures.
    send_and_wait_for_figures(&gw, id);

    let reply = call(&gw, "GET", &at(id, ""), None, "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("GET", one, &reply);
    let reply = call(&gw, "GET", &at("nope", ""), None, "");
    assert_eq!(reply.status, 404, "{}", reply.body);
    api.check("GET", one, &reply);

    let split = json!({"weights": {"v1-0": 50, "v1-1": 50}});
    api.check_request("POST", &action("split"), &split);
    let reply = call(&gw, "POST", &at(id, "/split"), token, &split.to_string());
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("POST", &action("split"), &reply);
    // Traffic on the new split, for the figures of the next decision.
    send_and_wait_for_figures(&gw, id);
    let bare = json!({"v1-1": 40});
    api.check_request("POST", &action("split"), &bare);
    let reply = call(&gw, "POST", &at(id, "/split"), token, &bare.to_string());
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("POST", &action("split"), &reply);
    // And on the last split, for the report's comparisons of the period in force.
    send_and_wait_for_figures(&gw, id);
    let reply = call(
        &gw,
        "POST",
        &at(id, "/split"),
        token,
        r#"{"weights": {"v9": 100}}"#,
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    api.check("POST", &action("split"), &reply);
    let reply = call(
        &gw,
        "POST",
        &at("nope", "/split"),
        token,
        &split.to_string(),
    );
    assert_eq!(reply.status, 404, "{}", reply.body);
    api.check("POST", &action("split"), &reply);

    for name in ["pause", "resume"] {
        let reply = call(&gw, "POST", &at(id, &format!("/{name}")), token, "");
        assert_eq!(reply.status, 200, "{name}: {}", reply.body);
        api.check("POST", &action(name), &reply);
        let reply = call(&gw, "POST", &at("nope", &format!("/{name}")), token, "");
        assert_eq!(reply.status, 404, "{name}: {}", reply.body);
        api.check("POST", &action(name), &reply);
    }

    let score = json!({"variant": "v1-1", "score": 0.75, "request_id": "r-1"});
    api.check_request("POST", &action("feedback"), &score);
    let reply = call(&gw, "POST", &at(id, "/feedback"), token, &score.to_string());
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("POST", &action("feedback"), &reply);
    let reply = call(
        &gw,
        "POST",
        &at(id, "/feedback"),
        token,
        r#"{"variant": "v1-1"}"#,
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    api.check("POST", &action("feedback"), &reply);
    let reply = call(
        &gw,
        "POST",
        &at("nope", "/feedback"),
        token,
        &score.to_string(),
    );
    assert_eq!(reply.status, 404, "{}", reply.body);
    api.check("POST", &action("feedback"), &reply);

    // The report in each format; an unknown one is refused.
    let report = action("report");
    for (query, media) in [
        ("", "application/json"),
        ("?format=json", "application/json"),
        ("?format=markdown", "text/markdown"),
        ("?format=html", "text/html"),
    ] {
        let reply = call(&gw, "GET", &at(id, &format!("/report{query}")), None, "");
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        assert!(
            reply
                .header("content-type")
                .is_some_and(|t| t.starts_with(media)),
            "{query}: {reply:?}"
        );
        api.check("GET", &report, &reply);
    }
    let reply = call(&gw, "GET", &at(id, "/report"), None, "");
    let json_report = reply.json();
    assert!(
        json_report["decisions"]
            .as_array()
            .is_some_and(|d| d.len() == 2)
            && json_report["comparisons"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
            && json_report["timeline"]
                .as_array()
                .is_some_and(|t| !t.is_empty()),
        "the report checked above has decisions, comparisons and a timeline: {json_report:#}"
    );
    assert!(
        json_report["decisions"][0]["observations"]["variants"]
            .as_array()
            .is_some_and(|v| v.iter().all(|v| v["requests"].as_u64() > Some(0))),
        "the first split was decided on the traffic: {json_report:#}"
    );
    let reply = call(&gw, "GET", &at(id, "/report?format=pdf"), None, "");
    assert_eq!(reply.status, 400, "{}", reply.body);
    api.check("GET", &report, &reply);
    let reply = call(&gw, "GET", &at("nope", "/report"), None, "");
    assert_eq!(reply.status, 404, "{}", reply.body);
    api.check("GET", &report, &reply);

    // Promotion ends the experiment; a change after the end is refused.
    let promote = json!({"variant": "v1-1"});
    api.check_request("POST", &action("promote"), &promote);
    let reply = call(
        &gw,
        "POST",
        &at(id, "/promote"),
        token,
        &promote.to_string(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["phase"], "promoted", "{}", reply.body);
    api.check("POST", &action("promote"), &reply);
    let reply = call(&gw, "POST", &at(id, "/promote"), token, "");
    assert_eq!(reply.status, 400, "{}", reply.body);
    api.check("POST", &action("promote"), &reply);
    let reply = call(&gw, "POST", &at("nope", "/promote"), token, "");
    assert_eq!(reply.status, 404, "{}", reply.body);
    api.check("POST", &action("promote"), &reply);

    // A second experiment: rolled back, listed beside the first, deleted.
    let other = "openapi-b";
    let reply = call(
        &gw,
        "POST",
        list,
        token,
        &seed_experiment(other).to_string(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = call(&gw, "POST", &at(other, "/rollback"), token, "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["phase"], "rolled_back", "{}", reply.body);
    api.check("POST", &action("rollback"), &reply);
    let reply = call(&gw, "POST", &at(other, "/rollback"), token, "");
    assert_eq!(reply.status, 400, "{}", reply.body);
    api.check("POST", &action("rollback"), &reply);
    let reply = call(&gw, "POST", &at("nope", "/rollback"), token, "");
    assert_eq!(reply.status, 404, "{}", reply.body);
    api.check("POST", &action("rollback"), &reply);
    let reply = call(&gw, "GET", list, None, "");
    assert_eq!(
        reply.json().as_array().map(Vec::len),
        Some(2),
        "{}",
        reply.body
    );
    api.check("GET", list, &reply);
    let reply = call(&gw, "DELETE", &at(other, ""), token, "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({"deleted": other}));
    api.check("DELETE", one, &reply);
    let reply = call(&gw, "DELETE", &at(other, ""), token, "");
    assert_eq!(reply.status, 404, "{}", reply.body);
    api.check("DELETE", one, &reply);

    // Every operation the document lists was answered, and every error class was seen.
    let mut unanswered = Vec::new();
    for (path, item) in api.document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            let method = method.to_ascii_uppercase();
            if !api.answered.contains(&(method.clone(), path.clone(), 200)) {
                unanswered.push(format!("{method} {path}"));
            }
        }
    }
    assert!(unanswered.is_empty(), "never answered 200: {unanswered:?}");
    let statuses: BTreeSet<u16> = api.answered.iter().map(|(_, _, s)| *s).collect();
    assert_eq!(statuses, BTreeSet::from([200, 400, 401, 404, 409]));

    // And the check can fail: a summary with a field too many, or one missing, or a
    // phase the API does not have, does not fit.
    let schema = api.response_schema("GET", one, 200, "application/json");
    let (_, summary) = gw.get(&at(id, ""));
    assert!(api.errors(&schema, &summary).is_empty());
    let mut drifted = summary.clone();
    drifted["extra"] = json!(1);
    assert!(!api.errors(&schema, &drifted).is_empty(), "an extra field");
    let mut drifted = summary.clone();
    drifted.as_object_mut().expect("an object").remove("phase");
    assert!(!api.errors(&schema, &drifted).is_empty(), "a missing field");
    let mut drifted = summary;
    drifted["phase"] = json!("sleeping");
    assert!(
        !api.errors(&schema, &drifted).is_empty(),
        "an unknown phase"
    );
}
