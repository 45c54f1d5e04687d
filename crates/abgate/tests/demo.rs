//! `abgate demo` as a person runs it: one process with simulated models, the gateway,
//! load and a canary, which ends rolled back (a worse candidate) or promoted (a better
//! one), shows its progress and prints the report.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Kills the demo if the test ends first (a panic, a timeout).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `abgate demo --scenario SCENARIO` to the end; its exit code and stdout.
fn demo(scenario: &str, tmp: &Path) -> (Option<i32>, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_abgate"))
        .args(["demo", "--scenario", scenario])
        // The demo keeps its state under the temporary directory.
        .env("TMPDIR", tmp)
        .env("NO_COLOR", "1")
        .env("ABGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("abgate demo starts");
    let mut guard = Guard(child);
    let mut stdout = guard.0.stdout.take().expect("piped stdout");
    let mut stderr = guard.0.stderr.take().expect("piped stderr");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // The contract: the demo ends in under two minutes.
    let deadline = Instant::now() + Duration::from_secs(130);
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = guard.0.kill();
            let _ = guard.0.wait();
            panic!(
                "abgate demo --scenario {scenario} did not end in 60 s:\n{}",
                out.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    (
        status.code(),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// The progress lines, `[  3 s] ███░░ v1-0  90% | v1-1  10%  requests ... running`, as
/// (v1-0 %, v1-1 %, requests, phase).
fn progress(stdout: &str) -> Vec<(u32, u32, u64, String)> {
    stdout
        .lines()
        .filter(|l| l.starts_with('[') && l.contains(" s] "))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |name: &str| -> &str {
                let at = words
                    .iter()
                    .position(|w| *w == name)
                    .unwrap_or_else(|| panic!("{name} in {line:?}"));
                words[at + 1]
            };
            let percent = |name: &str| -> u32 {
                after(name)
                    .strip_suffix('%')
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("a percentage after {name} in {line:?}"))
            };
            let requests = after("requests")
                .parse()
                .unwrap_or_else(|_| panic!("a request count in {line:?}"));
            let phase = (*words.last().expect("a phase")).to_owned();
            (percent("v1-0"), percent("v1-1"), requests, phase)
        })
        .collect()
}

/// The Markdown report's decision log rows: (decision kind, "before → after" split).
fn decision_log(stdout: &str) -> Vec<(String, String)> {
    let section = stdout
        .split("## Decision log")
        .nth(1)
        .unwrap_or_else(|| panic!("a `## Decision log` section in:\n{stdout}"));
    section
        .lines()
        .filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[5].to_owned(), cells[6].to_owned())
        })
        .collect()
}

fn last_line(stdout: &str) -> &str {
    stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[test]
fn demo_regression_rolls_back_to_the_baseline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let (code, stdout, stderr) = demo("regression", tmp.path());
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(code, Some(0), "{context}");
    assert!(
        last_line(&stdout).starts_with("outcome: rolled back to v1-0"),
        "{context}"
    );
    assert!(started.elapsed() < Duration::from_secs(120), "{context}");

    // Progress: the canary's starting split, then all back on the baseline.
    let lines = progress(&stdout);
    assert!(lines.len() >= 2, "{context}");
    assert_eq!(
        (lines[0].0, lines[0].1, lines[0].3.as_str()),
        (90, 10, "running"),
        "{context}"
    );
    let last = lines.last().expect("a progress line");
    assert_eq!(
        (last.0, last.1, last.3.as_str()),
        (100, 0, "rolled_back"),
        "{context}"
    );
    assert!(
        lines.windows(2).all(|w| w[0].2 <= w[1].2) && last.2 > 0,
        "the request count grows: {context}"
    );
    assert!(
        stdout.contains("decision: roll back: ") && stdout.contains("rolling back"),
        "{context}"
    );

    // The report: the verdict and a decision log ending in the rollback.
    assert!(stdout.contains("# Experiment `demo-canary`"), "{context}");
    assert!(stdout.contains("| Phase | rolled_back |"), "{context}");
    let log = decision_log(&stdout);
    let (kind, split) = log.last().expect("a decision");
    assert_eq!(kind, "rollback", "{context}");
    assert!(split.ends_with("→ 100/0"), "{context}");
    // A step decides at the first look with `minSamples`; on a loaded machine that look
    // has few requests and may not show the harm yet, so a step up before the rollback
    // is within the policy. Never past the first steps, and never a promotion.
    assert!(log.iter().all(|(k, _)| k != "promote"), "{log:?}");
    assert!(
        log.iter().filter(|(k, _)| k == "set_weights").count() <= 2,
        "a worse candidate is caught within two steps: {log:?}"
    );
    // The demo removes its state.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("tmp").collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn demo_improvement_ramps_and_promotes_the_candidate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let (code, stdout, stderr) = demo("improvement", tmp.path());
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(code, Some(0), "{context}");
    assert!(
        last_line(&stdout).starts_with("outcome: promoted v1-1"),
        "{context}"
    );
    assert!(started.elapsed() < Duration::from_secs(120), "{context}");

    // Progress: the split shown climbs from 10% through the ramp to 100%.
    let lines = progress(&stdout);
    assert_eq!((lines[0].0, lines[0].1), (90, 10), "{context}");
    let mut shown: Vec<u32> = lines.iter().map(|l| l.1).collect();
    shown.dedup();
    assert_eq!(shown, vec![10, 20, 30, 40, 50, 100], "{context}");
    assert!(
        lines.iter().all(|l| l.0 + l.1 == 100),
        "each line's split sums to 100: {context}"
    );
    assert_eq!(
        lines.last().map(|l| l.3.as_str()),
        Some("promoted"),
        "{context}"
    );

    // The report's decision log: four steps of 10 points, then the promotion.
    assert!(stdout.contains("| Winner | **v1-1** |"), "{context}");
    let log = decision_log(&stdout);
    let log: Vec<(&str, &str)> = log.iter().map(|(k, s)| (k.as_str(), s.as_str())).collect();
    assert_eq!(
        log,
        vec![
            ("set_weights", "90/10 → 80/20"),
            ("set_weights", "80/20 → 70/30"),
            ("set_weights", "70/30 → 60/40"),
            ("set_weights", "60/40 → 50/50"),
            ("promote", "50/50 → 0/100"),
        ],
        "{context}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("tmp").collect();
    assert!(left.is_empty(), "{left:?}");
}
