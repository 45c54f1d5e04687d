//! The seed's configuration (`examples/seed`) loads, and the analyzer reports exactly its
//! real defects, each as its own diagnostic.

use std::path::PathBuf;

use abgate_config::Severity::{self, Error, Warning};

fn seed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed")
}

#[test]
fn seed_defects_are_reported_exactly() {
    let loaded = abgate_config::load(&[seed()]).expect("examples/seed is readable");
    let mut got: Vec<(String, Severity, String, String, String)> = loaded
        .diagnostics
        .iter()
        .map(|d| {
            let file = d
                .file
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default()
                .to_owned();
            (
                d.code.as_str().to_owned(),
                d.severity,
                file,
                d.name.clone(),
                d.field.to_string(),
            )
        })
        .collect();
    got.sort();
    let expected = [
        // The 70b rule's name is used twice: the later one would drop subset `canary`,
        // which the canary route uses, and relabel `stable`.
        (
            "ABG0010",
            Error,
            "destination-rules.yaml",
            "llama-3.1-70b-destinations",
            "metadata.name",
        ),
        // Subsets' connectionPool replaces the host's whole section (Istio does not merge in it).
        (
            "ABG0023",
            Warning,
            "destination-rules.yaml",
            "llama-3.1-8b-destinations",
            "spec.subsets[0].trafficPolicy.connectionPool",
        ),
        (
            "ABG0023",
            Warning,
            "destination-rules.yaml",
            "llama-3.1-8b-destinations",
            "spec.subsets[3].trafficPolicy.connectionPool",
        ),
        // `h2MaxRequests` is not a field: the API server would reject that rule.
        (
            "IST0106",
            Error,
            "destination-rules.yaml",
            "llama-3.1-70b-destinations",
            "spec.trafficPolicy.connectionPool.http.h2MaxRequests",
        ),
        // The premium route splits 80/20 between two identical destinations.
        (
            "ABG0021",
            Warning,
            "llm-gateway.yaml",
            "llm-routing",
            "spec.http[2].route[1].destination",
        ),
        // consistentHash on x-user-id does not keep a user on one side of the A/B split.
        (
            "ABG0022",
            Warning,
            "llm-gateway.yaml",
            "llm-routing",
            "spec.http[0].route",
        ),
    ];
    let mut expected: Vec<_> = expected
        .iter()
        .map(|(c, s, f, n, p)| {
            (
                (*c).to_owned(),
                *s,
                (*f).to_owned(),
                (*n).to_owned(),
                (*p).to_owned(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(got, expected);

    let duplicate = loaded
        .diagnostics
        .iter()
        .find(|d| d.code.as_str() == "ABG0010")
        .expect("ABG0010");
    assert!(
        duplicate.message.contains("removes subset `canary`"),
        "{}",
        duplicate.message
    );
    assert!(
        duplicate.message.contains("spec.http[1]"),
        "names the route that uses it"
    );
}

#[test]
fn seed_resources_take_effect_as_istio_would() {
    let loaded = abgate_config::load(&[seed()]).expect("examples/seed is readable");
    let config = &loaded.config;
    assert_eq!(config.gateways.len(), 1);
    assert_eq!(config.virtual_services[0].http.len(), 5);
    // The invalid second 70b rule is refused, so the first stays with its canary subset.
    let rule = config
        .destination_rule("llama-3.1-70b-service")
        .expect("70b rule");
    let names: Vec<_> = rule.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["stable", "canary"]);
    let canary = config
        .subset_endpoints("llama-3.1-70b-service", Some("canary"))
        .expect("canary endpoints");
    assert_eq!(canary.len(), 1);
    // The experiment route keeps the seed's response header and its fault, so no retries.
    let experiment_route = &config.virtual_services[0].http[0];
    assert_eq!(
        experiment_route.headers.response.set,
        [("x-model-version".to_owned(), "ab-test-v1".to_owned())]
    );
    assert_eq!(experiment_route.retries.attempts, 0);
    let delay = experiment_route
        .fault
        .as_ref()
        .and_then(|f| f.delay)
        .expect("delay");
    assert_eq!(delay, (std::time::Duration::from_secs(5), 0.1));
    // The long-context route keeps its 30s timeout and Istio's default retries.
    let long_context = &config.virtual_services[0].http[3];
    assert_eq!(
        long_context.timeout,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(long_context.retries.attempts, 2);
}
