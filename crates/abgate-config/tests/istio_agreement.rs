//! Agreement with Istio's own verdicts: every case of `tests/istio_cases/` is a resource
//! taken from a table-driven test of Istio's `pkg/config/validation`, labelled with the
//! verdict Istio's test expects. Each case is loaded on its own, and abgate must refuse it
//! exactly when Istio does, except for the deliberate differences listed below (the same
//! ones `docs/configuration.md` tabulates).
//!
//! `cargo test -p abgate-config --test istio_agreement -- --nocapture` prints the figure.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use abgate_config::{Diagnostic, SourceFile};

/// Cases where abgate's verdict differs from Istio's on purpose, with the reason. Each
/// must still disagree: an entry that agrees again is stale and fails the test.
const DELIBERATE: &[(&str, &str)] = &[
    (
        r#"TestValidateVirtualService/"wildcard for mesh gateway""#,
        "abgate's mesh view (`serve --listen` with no Gateway) serves every host with `*`; \
         accepted with warning ABG0005, which says Istio rejects it in a cluster",
    ),
    (
        r#"TestValidateRootHTTPRoute/"simple""#,
        "abgate does not follow `delegate`; a route that delegates would lose its rules, so \
         it is refused (ABG0004 as an error) rather than served without them",
    ),
    (
        r#"rule ValidateServiceEntry/"endpoints with no resolution (NONE by default)""#,
        "endpoints without `resolution` are taken as STATIC, with warning ABG0005, so \
         configurations written for abgate before it checked this keep loading",
    ),
    (
        r#"TestValidateHTTPStatus/"600""#,
        "600 is not an HTTP status: abgate takes 200-599 for abort and direct response statuses",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Valid,
    /// Valid, and Istio warns.
    Warning,
    Invalid,
}

impl Verdict {
    fn accepts(self) -> bool {
        self != Verdict::Invalid
    }
}

struct Case {
    /// `TestValidateVirtualService/"duplicate hosts"`.
    id: String,
    verdict: Verdict,
    file: PathBuf,
    /// The case's text, preceded by blank lines so that lines match the file's.
    text: String,
}

fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/istio_cases")
}

fn parse_header(line: &str) -> Option<(String, Verdict)> {
    let rest = line.strip_prefix("# istio: ")?;
    let (id, verdict) = rest.rsplit_once(": ")?;
    let verdict = match verdict.trim() {
        "valid" => Verdict::Valid,
        "warning" => Verdict::Warning,
        "invalid" => Verdict::Invalid,
        other => panic!("unknown verdict {other:?} in {line:?}"),
    };
    Some((id.to_owned(), verdict))
}

/// Splits one file of cases: each document that has an `# istio:` header is a case.
fn cases_of(file: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(file).expect("case file is readable");
    let mut cases = Vec::new();
    let mut start = 0usize;
    let lines: Vec<&str> = text.lines().collect();
    for end in (0..=lines.len()).filter(|&i| i == lines.len() || lines[i] == "---") {
        let document = &lines[start..end];
        if let Some((id, verdict)) = document.iter().find_map(|l| parse_header(l)) {
            let mut body = "\n".repeat(start);
            body.push_str(&document.join("\n"));
            body.push('\n');
            cases.push(Case {
                id,
                verdict,
                file: file.to_owned(),
                text: body,
            });
        }
        start = end + 1;
    }
    cases
}

fn all_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("istio_cases exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| cases_of(f)).collect()
}

/// abgate's verdict on one case loaded alone: refused when a finding refuses the resource
/// as Istio's validation would (references to resources outside the case do not count:
/// Istio's validation does not look at other resources either).
fn diagnostics_of(case: &Case) -> Vec<Diagnostic> {
    let file = SourceFile {
        path: Arc::from(case.file.as_path()),
        text: case.text.clone(),
    };
    abgate_config::load_sources(&[file]).diagnostics
}

fn kind_of(case: &Case) -> String {
    case.file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn abgate_refuses_exactly_what_istio_refuses() {
    let cases = all_cases();
    assert!(cases.len() >= 150, "only {} cases", cases.len());
    let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    for pair in ids.windows(2) {
        assert_ne!(pair[0], pair[1], "case named twice");
    }
    for (id, reason) in DELIBERATE {
        assert!(
            ids.binary_search(id).is_ok(),
            "allow-list names no case: {id}"
        );
        assert!(!reason.is_empty(), "{id} needs a reason");
    }

    let mut disagreements = Vec::new();
    let mut agreed = 0usize;
    let mut per_kind: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for case in &cases {
        let diagnostics = diagnostics_of(case);
        let accepted = !diagnostics.iter().any(Diagnostic::rejects_resource);
        let agrees = accepted == case.verdict.accepts();
        let entry = per_kind.entry(kind_of(case)).or_default();
        entry.1 += 1;
        if agrees {
            agreed += 1;
            entry.0 += 1;
        }
        let deliberate = DELIBERATE.iter().any(|(id, _)| *id == case.id);
        match (agrees, deliberate) {
            (true, true) => disagreements.push(format!(
                "{}: listed as a deliberate difference, but abgate now agrees with Istio",
                case.id
            )),
            (false, false) => {
                let found: Vec<String> = diagnostics.iter().map(|d| format!("  {d}")).collect();
                disagreements.push(format!(
                    "{}: Istio says {:?}, abgate {}\n{}",
                    case.id,
                    case.verdict,
                    if accepted { "accepts" } else { "refuses" },
                    found.join("\n")
                ));
            }
            _ => {}
        }
    }
    println!(
        "agreement with Istio: {agreed}/{} cases ({:.1}%), {} deliberate differences",
        cases.len(),
        100.0 * agreed as f64 / cases.len() as f64,
        DELIBERATE.len()
    );
    for (kind, (agreed, total)) in &per_kind {
        println!("  {kind}: {agreed}/{total}");
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
