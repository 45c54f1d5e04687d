//! `abgate analyze` as scripts use it: exit codes, JSON shape, text lines.

use std::path::PathBuf;
use std::process::{Command, Output};

fn abgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_abgate"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("abgate runs")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> String {
    format!("crates/abgate-config/tests/fixtures/{name}")
}

#[test]
fn seed_has_errors_so_exit_is_1_and_json_has_every_field() {
    let out = abgate(&["analyze", "-f", "examples/seed", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let diagnostics: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("one JSON array");
    assert_eq!(diagnostics.len(), 6);
    for d in &diagnostics {
        for key in [
            "code", "severity", "file", "line", "kind", "name", "field", "message",
        ] {
            assert!(d.get(key).is_some(), "{key} missing in {d}");
        }
        assert!(["error", "warning", "info"].contains(&d["severity"].as_str().unwrap_or_default()));
        assert!(d["line"].as_u64().unwrap_or(0) >= 1);
    }
    let unknown = diagnostics
        .iter()
        .find(|d| d["code"] == "IST0106")
        .expect("the seed's unknown field");
    assert_eq!(
        unknown["field"],
        "spec.trafficPolicy.connectionPool.http.h2MaxRequests"
    );
    assert_eq!(unknown["file"], "examples/seed/destination-rules.yaml");
    assert_eq!(unknown["line"], 80);
    assert_eq!(unknown["kind"], "DestinationRule");
    assert_eq!(unknown["name"], "llama-3.1-70b-destinations");
}

#[test]
fn warnings_only_exit_0_and_text_is_one_line_each_then_a_summary() {
    let out = abgate(&[
        "analyze",
        "-f",
        &fixture("base-service.yaml"),
        "-f",
        &fixture("base-rule.yaml"),
        "-f",
        &fixture("weights-not-100.yaml"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let expected = format!(
        "{}:9: warning[ABG0020] VirtualService/relative spec.http[0].route: weights sum to 4",
        fixture("weights-not-100.yaml")
    );
    assert!(lines[0].starts_with(&expected), "{}", lines[0]);
    assert_eq!(lines[1], "0 errors, 1 warning, 0 infos");
}

#[test]
fn clean_configuration_exits_0_with_an_empty_array() {
    let out = abgate(&[
        "analyze",
        "-f",
        &fixture("base-service.yaml"),
        "-f",
        &fixture("base-rule.yaml"),
        "-f",
        &fixture("clean.yaml"),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let diagnostics: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(diagnostics.is_empty());
}

#[test]
fn unreadable_path_exits_2() {
    let out = abgate(&["analyze", "-f", "no/such/path.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no/such/path.yaml"), "{stderr}");
}
