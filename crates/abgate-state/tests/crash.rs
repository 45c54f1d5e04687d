//! `kill -9` at random moments loses no committed decision and records none twice.
//!
//! The test binary runs itself again as a child (`crash_writer_child`, switched on by an
//! environment variable) that records decisions as fast as it can, revision-checked,
//! printing each one once committed and again once marked applied. The parent reads a
//! random number of lines, waits a random moment, sends SIGKILL, reopens the file and
//! checks it against everything the child printed. Five children in turn on one file,
//! each resuming from the stored revision as the controller does after a crash.

#![cfg(unix)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abgate_state::{DecisionRow, SplitChange, Store};
use serde_json::json;

/// Set in the child's environment to the database path: runs the writer.
const CHILD_ENV: &str = "ABGATE_STATE_CRASH_DB";
/// Set to rerun with a seed printed by an earlier failure.
const SEED_ENV: &str = "ABGATE_STATE_CRASH_SEED";
const EXPERIMENT: &str = "crash";
const CHILDREN: usize = 5;

/// The writer the test kills: it runs in a child process, which is this test binary
/// started again with the database path in `CHILD_ENV`.
fn crash_writer_child(path: &std::ffi::OsStr) {
    let store = Store::open(Path::new(path)).expect("child opens the database");
    let mut out = std::io::stdout().lock();
    // A closed pipe means the parent is gone: stop quietly.
    let mut say = |line: String| writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();

    // What the controller does on startup: apply again whatever was recorded but not
    // marked applied (here applying is only the marking).
    for (id, _, seq) in store.unapplied().expect("unapplied") {
        store.mark_applied(&id, seq).expect("mark_applied");
        if !say(format!("applied {seq}")) {
            return;
        }
    }
    for _ in 0..1_000_000 {
        let current = store.experiment(EXPERIMENT).expect("read").expect("exists");
        let step = current.state["decisions"].as_u64().expect("decisions") + 1;
        let before: Vec<u32> =
            serde_json::from_value(current.state["weights"].clone()).expect("weights");
        // Every third decision holds, so the split history skips it.
        let after = if step.is_multiple_of(3) {
            before.clone()
        } else {
            let candidate = (step * 7 % 101) as u32;
            vec![100 - candidate, candidate]
        };
        let decision = DecisionRow {
            at: step,
            kind: if before == after {
                "Hold"
            } else {
                "SetWeights"
            }
            .to_owned(),
            reason: format!("step {step}"),
            summary: format!("step {step}"),
            weights_before: before,
            weights_after: after.clone(),
            observations: json!({"step": step}),
        };
        let new_state = json!({"decisions": step, "weights": after});
        let seq = store
            .record_decision(EXPERIMENT, current.revision, &decision, &new_state)
            .expect("record_decision");
        if !say(format!("committed {seq}")) {
            return;
        }
        store.mark_applied(EXPERIMENT, seq).expect("mark_applied");
        if !say(format!("applied {seq}")) {
            return;
        }
    }
}

#[test]
fn kill_9_at_random_moments_loses_no_committed_decision() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        return crash_writer_child(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let initial = json!({"decisions": 0, "weights": [100, 0]});
    let spec = json!({"variants": ["stable", "canary"]});
    assert_eq!(
        Store::open(&path)
            .unwrap()
            .put_experiment(EXPERIMENT, &spec, &initial, 0)
            .unwrap(),
        1
    );

    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (rerun with {SEED_ENV}={seed})");
    let mut rng = SplitMix64(seed);

    let mut committed = BTreeSet::new();
    let mut applied = BTreeSet::new();
    let mut recorded_before = 0;
    for round in 0..CHILDREN {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "kill_9_at_random_moments_loses_no_committed_decision",
                "--exact",
                "--nocapture",
            ])
            .args(["--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let note = |line: &str, committed: &mut BTreeSet<u64>, applied: &mut BTreeSet<u64>| {
            // libtest prints its own lines around ours: ignore anything else.
            let mut words = line.split(' ');
            match (
                words.next(),
                words.next().and_then(|n| n.parse::<u64>().ok()),
            ) {
                (Some("committed"), Some(seq)) => {
                    assert!(committed.insert(seq), "seq {seq} committed twice")
                }
                (Some("applied"), Some(seq)) => {
                    applied.insert(seq);
                }
                _ => {}
            }
        };

        // A random moment: after 1 to 40 commits, then 0 to 3 ms more, so the kill lands
        // anywhere in the loop, including inside a commit and its fsync.
        let kill_after = 1 + rng.below(40) as usize;
        let committed_at_start = committed.len();
        while committed.len() < committed_at_start + kill_after {
            let line = lines
                .next()
                .expect("the child exited before it was killed (see its stderr above)")
                .unwrap();
            note(&line, &mut committed, &mut applied);
        }
        std::thread::sleep(Duration::from_micros(rng.below(3_000)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: killed by SIGKILL, got {status:?}"
        );
        // What the child printed before it died is committed (or applied) for sure.
        for line in lines {
            note(&line.unwrap(), &mut committed, &mut applied);
        }

        // Restart.
        let store = Store::open(&path).unwrap();
        let check: String = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "round {round}");

        let decisions = store.decisions(EXPERIMENT).unwrap();
        let n = decisions.len() as u64;
        let seqs: Vec<u64> = decisions.iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(
            seqs,
            (1..=n).collect::<Vec<_>>(),
            "round {round}: contiguous across restarts, none twice"
        );
        let last_printed = *committed.last().unwrap();
        assert!(
            committed.iter().all(|seq| *seq <= n),
            "round {round}: committed up to {last_printed}, stored only {n}"
        );
        // At most the one decision whose commit the kill interrupted after it reached the
        // disk and before its line reached the pipe.
        assert!(
            n <= last_printed + 1,
            "round {round}: {n} stored, {last_printed} printed"
        );
        assert!(
            n > recorded_before,
            "round {round}: the child made progress"
        );
        recorded_before = n;

        // State, revision and decisions moved together, one step per decision.
        let current = store.experiment(EXPERIMENT).unwrap().unwrap();
        assert_eq!(
            current.revision,
            n + 1,
            "round {round}: initial revision 1 plus one per decision"
        );
        assert_eq!(current.state["decisions"], json!(n), "round {round}");
        let mut weights = vec![100, 0];
        for (seq, decision, _) in &decisions {
            assert_eq!(
                decision.at, *seq,
                "decision {seq} made from the state its predecessor left"
            );
            assert_eq!(
                decision.weights_before,
                weights,
                "decision {seq} starts where {} ended",
                seq - 1
            );
            weights = decision.weights_after.clone();
        }
        assert_eq!(current.state["weights"], json!(weights), "round {round}");
        let expected_history: Vec<SplitChange> = decisions
            .iter()
            .filter(|(_, d, _)| d.weights_before != d.weights_after)
            .map(|(_, d, _)| SplitChange {
                at: d.at,
                weights: d.weights_after.clone(),
                reason: d.reason.clone(),
            })
            .collect();
        assert_eq!(
            store.split_history(EXPERIMENT).unwrap(),
            expected_history,
            "round {round}"
        );

        // Applied marks are durable too, and only the last decision can be unapplied: each
        // child applies the leftovers first and marks every decision right after it.
        for (seq, _, is_applied) in &decisions {
            if applied.contains(seq) {
                assert!(
                    is_applied,
                    "round {round}: decision {seq} printed applied, stored unapplied"
                );
            }
        }
        let unapplied: Vec<u64> = store
            .unapplied()
            .unwrap()
            .into_iter()
            .map(|(_, _, seq)| seq)
            .collect();
        let not_applied: Vec<u64> = decisions.iter().filter(|d| !d.2).map(|d| d.0).collect();
        assert_eq!(unapplied, not_applied, "round {round}");
        assert!(
            unapplied.iter().all(|seq| *seq == n),
            "round {round}: unapplied {unapplied:?} of {n}"
        );
        eprintln!(
            "round {round}: killed after {last_printed} printed commits; {n} stored, unapplied {unapplied:?}"
        );
    }
}

/// A seeded generator for the kill moments (Vigna's splitmix64), so that a failure's
/// printed seed reproduces the same schedule.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
